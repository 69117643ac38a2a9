// `coffer jobs`: the server's jobs (list, the default), one job, its log (--follow streams it
// with progress until the job ends), and cancel, wait and retry. `wait` exits as the job ended:
// succeeded 0, warnings 3, failed 1, cancelled 130.

import type { Command } from 'commander';
import { collect, formatBytes, output, parseIntOption, type Output } from './context.ts';
import type { ApiClient } from './api.ts';
import { apiFor, describeJob, describeProgress, ENDED, humanDuration, jobBytes, jobDuration, jobsExitCode, localTime, serverOption, table, waitForJobs, type Job, apiLine } from './remote.ts';

export interface JobFilter {
  state?: string[];
  client?: string;
  policy?: string;
  kind?: string;
  limit?: string;
}

/** Lists jobs (newest first) as `job` lines or a table; shared with `coffer get jobs`. */
export async function listJobs(api: ApiClient, out: Output, o: JobFilter): Promise<Job[]> {
  const max = o.limit === undefined ? 50 : parseIntOption('--limit', o.limit, 1, 100_000);
  const jobs = await api.listAll<Job>('/api/v1/jobs', { state: o.state, client: o.client, policy: o.policy, kind: o.kind }, max);
  for (const job of jobs) out.item(apiLine({ type: 'job', job }));
  out.summary({ jobs: jobs.length }, () => table(['ID', 'KIND', 'STATE', 'CLIENT', 'POLICY', 'STARTED', 'DURATION', 'BYTES'], jobs.map((j) => {
    const b = jobBytes(j);
    return [j.id, j.kind, j.state, j.client ?? '-', j.policy ?? '-', localTime(j.started), humanDuration(jobDuration(j)), b === undefined ? '-' : formatBytes(b)];
  })));
  return jobs;
}

export function jobFilterOptions(cmd: Command): Command {
  return cmd
    .option('--state <state>', 'only jobs in this state: queued, running, succeeded, warnings, failed, cancelled, interrupted, missed (repeatable)', collect)
    .option('--client <name>', 'only jobs of this client')
    .option('--policy <name>', 'only jobs of this policy')
    .option('--kind <kind>', 'only jobs of this kind: backup, restore, duplicate, stage, expire, reconcile, verify, repair, restore-test, lock-extend')
    .option('--limit <n>', 'at most this many, newest first (default 50)');
}

function showJob(job: Job): string[] {
  const lines = [
    `ID:         ${job.id}`,
    `Kind:       ${job.kind}`,
    `State:      ${job.state}${job.attempt > 1 || job.maxAttempts > 1 ? ` (attempt ${job.attempt} of ${job.maxAttempts})` : ''}`,
    ...(job.client ? [`Client:     ${job.client}`] : []),
    ...(job.policy ? [`Policy:     ${job.policy}${job.schedule ? ` (schedule ${job.schedule})` : ''}`] : []),
    ...(job.storageUnit ? [`Storage:    ${job.storageUnit}`] : []),
    `Queued:     ${localTime(job.queued)}${job.requestedBy ? ` by ${job.requestedBy}` : ''}`,
    `Started:    ${localTime(job.started)}`,
    `Ended:      ${localTime(job.ended)}`,
    `Duration:   ${humanDuration(jobDuration(job))}`,
  ];
  if (job.progress && !ENDED.includes(job.state)) lines.push(`Progress:   ${describeProgress(job.progress)}`);
  if (job.result) lines.push('Result:', ...Object.entries(job.result).map(([k, v]) => `  ${k}: ${/Bytes$/.test(k) && typeof v === 'number' ? formatBytes(v) : k === 'durationMs' && typeof v === 'number' ? humanDuration(v) : typeof v === 'object' ? JSON.stringify(v) : String(v)}`));
  if (job.error) lines.push(`Error:      ${String(job.error.message ?? job.error.code)}${job.error.hint ? `\n            ${String(job.error.hint)}` : ''}`);
  return lines;
}

interface LogLine {
  seq: number;
  time: number;
  level: string;
  message: string;
  data?: Record<string, unknown>;
}

function logLine(out: Output, jobId: string, l: LogLine): void {
  out.item({ type: 'log', job: jobId, seq: l.seq, time: l.time, level: l.level, message: l.message, ...(l.data ? { data: l.data } : {}) }, `${localTime(l.time)}  ${l.level.toUpperCase().padEnd(5)}  ${l.message}`);
}

/** Waits for jobs, prints how they ended and sets the exit code their end means. */
export async function waitAndReport(api: ApiClient, out: Output, jobs: readonly Job[], summary: (ended: Job[]) => Record<string, unknown>): Promise<void> {
  const ended = await waitForJobs(api, out, jobs);
  out.summary(summary(ended), () => ended.map(describeJob));
  out.setExitCode(jobsExitCode(ended));
}

export function register(program: Command): void {
  const jobs = program.command('jobs').description('jobs on the server: list (the default), show, logs, cancel, wait, retry');
  serverOption(jobFilterOptions(jobs.command('list', { isDefault: true }).description('list jobs, newest first')))
    .action(async (o: JobFilter, cmd: Command) => {
      await listJobs(apiFor(cmd), output(cmd), o);
    });
  serverOption(jobs.command('show <id>').description('one job: state, times, result or error'))
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const job = await apiFor(cmd).request<Job>('GET', `/api/v1/jobs/${encodeURIComponent(id)}`);
      output(cmd).summary({ job }, () => showJob(job));
    });
  serverOption(jobs.command('logs <id>').description('a job\'s log; with --follow, its progress and log lines as they come, until it ends')
    .option('-f, --follow', 'keep printing until the job ends'))
    .action(async (id: string, o: { follow?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const path = `/api/v1/jobs/${encodeURIComponent(id)}`;
      let lines = 0;
      let state: string | undefined;
      if (o.follow) {
        const tty = !out.json && process.stderr.isTTY;
        await api.events(`${path}/events`, (event, data) => {
          if (event === 'log') {
            lines++;
            logLine(out, id, data as LogLine);
          } else if (event === 'progress') {
            const p = data as Record<string, unknown>;
            const { type: _t, ...rest } = p;
            if (out.json) out.event({ type: 'jobProgress', job: id, progress: rest });
            else if (tty) process.stderr.write(`progress: ${describeProgress(p)}\n`);
          } else if (event === 'end') state = (data as Job).state;
        }, { signal: undefined });
      } else {
        for (let after = 0; ;) {
          const page = await api.request<{ items: LogLine[]; state: string }>('GET', `${path}/logs`, { query: { after, limit: 1000 } });
          for (const l of page.items) logLine(out, id, l);
          lines += page.items.length;
          state = page.state;
          if (page.items.length < 1000) break;
          after = page.items.at(-1)!.seq;
        }
      }
      state ??= (await api.request<Job>('GET', path)).state;
      out.summary({ job: id, state, lines }, () => (o.follow ? `job ${id} ${state}` : ''));
    });
  serverOption(jobs.command('cancel <id>').description('cancel a queued or running job'))
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const job = await apiFor(cmd).request<Job>('POST', `/api/v1/jobs/${encodeURIComponent(id)}/cancel`);
      output(cmd).summary({ job }, () => describeJob(job));
    });
  serverOption(jobs.command('wait <id...>').description('wait until jobs end; exit 0 succeeded, 3 with warnings, 1 failed, 130 cancelled'))
    .action(async (ids: string[], _o: unknown, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const list: Job[] = [];
      for (const id of ids) list.push(await api.request<Job>('GET', `/api/v1/jobs/${encodeURIComponent(id)}`));
      await waitAndReport(api, out, list, (ended) => ({ jobs: ended }));
    });
  serverOption(jobs.command('retry <id>').description('run a failed, cancelled or interrupted job again (a new job)')
    .option('--wait', 'wait until the new job ends, and exit as it ended'))
    .action(async (id: string, o: { wait?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const job = await api.request<Job>('POST', `/api/v1/jobs/${encodeURIComponent(id)}/retry`);
      if (o.wait) return waitAndReport(api, out, [job], (ended) => ({ jobs: ended }));
      out.summary({ jobs: [job] }, () => `queued ${describeJob(job)}`);
    });
}
