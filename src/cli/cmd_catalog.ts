// `coffer catalog reconcile` and `coffer expire`: the server's maintenance jobs, run now.
// Reconcile compares the catalog with every storage unit (--apply imports unknown snapshots);
// expire removes what is past its retention. --wait exits as the job ended.

import type { Command } from 'commander';
import { output } from './context.ts';
import { waitAndReport } from './cmd_jobs.ts';
import { apiFor, describeJob, serverOption, type Job } from './remote.ts';

export function register(program: Command): void {
  const catalog = program.command('catalog').description('the server\'s catalog');
  serverOption(catalog.command('reconcile').description('compare the catalog with every storage unit (a job)')
    .option('--apply', 'import snapshots the catalog does not know (admin)')
    .option('--wait', 'wait until the job ends, and exit as it ended'))
    .action(async (o: { apply?: boolean; wait?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const job = await api.request<Job>('POST', '/api/v1/catalog/reconcile', { body: { apply: !!o.apply } });
      if (o.wait) return waitAndReport(api, out, [job], (ended) => ({ jobs: ended }));
      out.summary({ jobs: [job] }, () => `queued ${describeJob(job)}`);
    });
  serverOption(program.command('expire').description('run the expiry job now: remove copies past their retention (admin)')
    .option('--wait', 'wait until the job ends, and exit as it ended'))
    .action(async (o: { wait?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const job = await api.request<Job>('POST', '/api/v1/expire');
      if (o.wait) return waitAndReport(api, out, [job], (ended) => ({ jobs: ended }));
      out.summary({ jobs: [job] }, () => `queued ${describeJob(job)}`);
    });
}
