// `coffer backup now`: a backup through a policy, now, for its clients (or one): one job each.
// With --wait it follows them to the end and exits as they ended (the worst of them).

import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { output } from './context.ts';
import { waitAndReport } from './cmd_jobs.ts';
import { apiFor, describeJob, serverOption, type Job } from './remote.ts';

export function register(program: Command): void {
  const backup = program.command('backup').description('backups on the server');
  serverOption(backup
    .command('now')
    .description('back up now through a policy (its clients, or one)')
    .requiredOption('--policy <name>', 'the policy')
    .option('--client <name>', 'only this client of the policy')
    .option('--schedule <name>', 'as this schedule of the policy would (its level and lifecycle)')
    .option('--level <level>', 'full or incremental (default incremental)')
    .option('--wait', 'wait until the backups end; exit 0 succeeded, 3 with warnings, 1 failed, 130 cancelled'))
    .action(async (o: { policy: string; client?: string; schedule?: string; level?: string; wait?: boolean }, cmd: Command) => {
      const out = output(cmd);
      if (o.schedule !== undefined && o.level !== undefined) throw new CofferError('USAGE', 'Cannot use --schedule and --level together: a schedule has its own level');
      if (o.level !== undefined && o.level !== 'full' && o.level !== 'incremental') throw new CofferError('USAGE', `Cannot use --level ${o.level}: give full or incremental`);
      const api = apiFor(cmd);
      const r = await api.request<{ jobs: Job[] }>('POST', '/api/v1/backups', { body: { policy: o.policy, ...(o.client ? { client: o.client } : {}), ...(o.schedule ? { schedule: o.schedule } : {}), ...(o.level ? { level: o.level } : {}) } });
      if (o.wait) return waitAndReport(api, out, r.jobs, (ended) => ({ jobs: ended }));
      out.summary({ jobs: r.jobs }, () => [...r.jobs.map((j) => `queued ${describeJob(j)}`), `Follow with: coffer jobs logs ${r.jobs[0]?.id ?? 'ID'} --follow`]);
    });
}
