// `coffer lock-extend`: runs the server's lock-extend job now. In immutable storage units (S3
// with Object Lock) it moves the lock of every object live copies need to the latest expiry among
// them (docs/server.md "Immutable copies"); the server also runs it every 6 hours. --wait exits
// as the job ended.

import type { Command } from 'commander';
import { output } from './context.ts';
import { waitAndReport } from './cmd_jobs.ts';
import { apiFor, describeJob, serverOption, type Job } from './remote.ts';

export function register(program: Command): void {
  serverOption(program.command('lock-extend').description('extend the Object Locks of immutable storage units to their copies\' expiry now (operator)')
    .option('--unit <name>', 'only this storage unit')
    .option('--wait', 'wait until the job ends, and exit as it ended'))
    .action(async (o: { unit?: string; wait?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const job = await api.request<Job>('POST', '/api/v1/lock-extend', { body: o.unit === undefined ? {} : { unit: o.unit } });
      if (o.wait) return waitAndReport(api, out, [job], (ended) => ({ jobs: ended }));
      out.summary({ jobs: [job] }, () => `queued ${describeJob(job)}`);
    });
}
