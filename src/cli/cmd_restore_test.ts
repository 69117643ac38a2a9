// `coffer restore-test --policy P [--client C] [--wait]`: a policy's restore test now, for its
// clients (or one): the newest good image of each is restored to a fresh scratch directory,
// compared with the snapshot and timed against the policy's rto (src/server/restore-test.ts).
// With --wait it follows the jobs to the end and exits as they ended (the worst of them).

import type { Command } from 'commander';
import { formatBytes, output } from './context.ts';
import { apiFor, describeJob, humanDuration, jobsExitCode, serverOption, waitForJobs, type Job } from './remote.ts';

/** What a person reads about an ended restore test, below its job line. */
function describeTest(job: Job): string[] {
  const r = (job.result ?? {}) as Record<string, unknown>;
  if (typeof r.image !== 'string') return [];
  const lines = [`  image ${r.image} from ${String(r.copy)} onto ${String(r.scratchClient)}: ${String(r.checkedFiles)} file(s), ${formatBytes(Number(r.checkedBytes ?? 0))} compared${r.sample === 'all' ? '' : ` (a sample of ${String(r.sample)})`}`];
  lines.push(`  restore time ${humanDuration(Number(r.restoreMs))}${typeof r.rtoMs === 'number' ? ` against an rto of ${humanDuration(r.rtoMs)}: ${r.withinRto ? 'within' : 'TOO SLOW'}` : ''}`);
  for (const m of (r.mismatches as Array<{ path: string; problem: string }> | undefined) ?? []) lines.push(`  differs: ${m.path}: ${m.problem}`);
  return lines;
}

export function register(program: Command): void {
  serverOption(program
    .command('restore-test')
    .description('test a restore now: restore the newest good image of a policy\'s clients (or one) to a scratch directory, compare it with the snapshot, time it against the rto')
    .requiredOption('--policy <name>', 'the policy')
    .option('--client <name>', 'only this client of the policy')
    .option('--wait', 'wait until the tests end; exit 0 passed, 3 slower than the rto, 1 failed, 130 cancelled'))
    .action(async (o: { policy: string; client?: string; wait?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const r = await api.request<{ jobs: Job[] }>('POST', '/api/v1/restore-tests', { body: { policy: o.policy, ...(o.client ? { client: o.client } : {}) } });
      if (!o.wait) {
        out.summary({ jobs: r.jobs }, () => [...r.jobs.map((j) => `queued ${describeJob(j)}`), `Follow with: coffer jobs logs ${r.jobs[0]?.id ?? 'ID'} --follow`]);
        return;
      }
      const ended = await waitForJobs(api, out, r.jobs);
      out.summary({ jobs: ended }, () => ended.flatMap((j) => [describeJob(j), ...describeTest(j)]));
      out.setExitCode(jobsExitCode(ended));
    });
}
