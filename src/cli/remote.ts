// What the server-side commands (login, apply, get, jobs, images, restore, users, ...) share: the
// API client for a command (--server, COFFER_SERVER/COFFER_TOKEN, the saved login), times and
// durations for people, aligned tables, reading a secret from stdin or the terminal, and waiting
// for jobs with the exit code their end means (succeeded 0, warnings 3, failed 1, cancelled 130).

import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import type { Job } from '../catalog/jobs.ts';
import { parseDuration } from '../policy/durations.ts';
import { ApiClient } from './api.ts';
import { formatBytes, prompt, type Output } from './context.ts';
import type { EventLine } from './json-schema.ts';

export type { Job };

/** Adds --server to an API command. */
export function serverOption(cmd: Command): Command {
  return cmd.option('--server <url>', 'the Coffer server (default: COFFER_SERVER with COFFER_TOKEN, else the saved login)');
}

/** The API client of a command: its --server, then COFFER_SERVER + COFFER_TOKEN, then the saved login. */
export function apiFor(cmd: Command): ApiClient {
  return ApiClient.fromLogin(process.env, (cmd.opts() as { server?: string }).server);
}

const pad2 = (n: number) => String(n).padStart(2, '0');

/** "2026-12-05 14:03:22" in local time; "-" for none. */
export function localTime(ms: number | undefined | null): string {
  if (ms === undefined || ms === null) return '-';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** "850ms", "12s", "3m05s", "2h03m", "3d04h". */
export function humanDuration(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) return '-';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${pad2(s % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${pad2(m % 60)}m`;
  return `${Math.floor(h / 24)}d${pad2(h % 24)}h`;
}

/** Columns aligned with two spaces; the last column is not padded. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

/** An instant `--since 7d` means: now minus the duration (ms since the epoch). */
export function sinceOption(value: string | undefined, name = '--since'): number | undefined {
  if (value === undefined) return undefined;
  try {
    return Date.now() - parseDuration(value);
  } catch (e) {
    throw new CofferError('USAGE', `Cannot use ${name} ${JSON.stringify(value)}: ${(e as Error).message}`, { hint: 'Give a duration such as 30m, 12h or 7d.' });
  }
}

/** A password: all of stdin with --password-stdin (without its final newline), else asked on the terminal. */
export async function readSecret(options: { stdin?: boolean; label: string; confirm?: boolean; flag?: string }): Promise<string> {
  let value: string;
  if (options.stdin) {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    value = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
  } else {
    if (!process.stdin.isTTY) throw new CofferError('USAGE', `Cannot ask for the ${options.label}: no terminal to ask on`, { hint: `Pass it on standard input with ${options.flag ?? '--password-stdin'}.` });
    value = await prompt(`${options.label[0]!.toUpperCase()}${options.label.slice(1)}: `);
    if (options.confirm && (await prompt('Again: ')) !== value) throw new CofferError('USAGE', `Cannot use the ${options.label}: the two entries differ`);
  }
  if (value === '') throw new CofferError('USAGE', `Cannot use an empty ${options.label}`);
  return value;
}

export const ENDED = ['succeeded', 'warnings', 'failed', 'cancelled', 'interrupted', 'missed'];

/** The exit code a job's end means: succeeded 0, warnings 3, cancelled 130, anything else 1. */
export function jobExitCode(state: string): number {
  return state === 'succeeded' ? 0 : state === 'warnings' ? 3 : state === 'cancelled' ? 130 : ENDED.includes(state) ? 1 : 0;
}

/** The exit code of several jobs: the worst end (failed over cancelled over warnings). */
export function jobsExitCode(jobs: readonly Job[]): number {
  const codes = jobs.map((j) => jobExitCode(j.state));
  return codes.includes(1) ? 1 : codes.includes(130) ? 130 : codes.includes(3) ? 3 : 0;
}

/** The bytes a job moved, for tables: scanned for a backup, written for a restore. */
export function jobBytes(job: Job): number | undefined {
  const r = (job.result ?? {}) as Record<string, unknown>;
  const p = (job.progress ?? {}) as Record<string, unknown>;
  const v = r.scannedBytes ?? r.bytes ?? p.bytes;
  return typeof v === 'number' ? v : undefined;
}

export function jobDuration(job: Job): number | undefined {
  if (job.started === undefined) return undefined;
  return (job.ended ?? Date.now()) - job.started;
}

/** One line about a job: "backup 01J... of web1 by web-server: succeeded in 12s (2.0 MiB)". */
export function describeJob(job: Job): string {
  const what = [job.client && `of ${job.client}`, job.policy && `by ${job.policy}`].filter(Boolean).join(' ');
  const bytes = jobBytes(job);
  const ended = ENDED.includes(job.state);
  const time = ended ? ` in ${humanDuration(jobDuration(job))}` : '';
  const err = job.error && !['succeeded'].includes(job.state) && ended ? `: ${String(job.error.message ?? job.error.code)}` : '';
  return `${job.kind} job ${job.id}${what ? ` ${what}` : ''}: ${job.state}${time}${bytes !== undefined ? ` (${formatBytes(bytes)})` : ''}${err}`;
}

/** "12 files, 3.4 MiB (1.2 MiB new)": what a progress event says. */
export function describeProgress(p: Record<string, unknown>): string {
  const parts: string[] = [];
  if (typeof p.files === 'number') parts.push(`${p.files} files`);
  if (typeof p.bytes === 'number') parts.push(`${formatBytes(p.bytes)}${typeof p.bytesTotal === 'number' ? ` of ${formatBytes(p.bytesTotal)}` : ''}`);
  if (typeof p.bytesNew === 'number') parts.push(`${formatBytes(p.bytesNew)} new`);
  if (typeof p.rate === 'number') parts.push(`${formatBytes(p.rate)}/s`);
  if (typeof p.etaMs === 'number') parts.push(`ETA ${humanDuration(p.etaMs)}`);
  return parts.join(', ');
}

/**
 * Waits until each job has ended and returns them as they ended. On a terminal (human output)
 * it follows the job's events and redraws one progress line on stderr; otherwise it asks the
 * server to answer when the job ends (long polls).
 */
export async function waitForJobs(api: ApiClient, out: Output, jobs: readonly Job[], options: { signal?: AbortSignal } = {}): Promise<Job[]> {
  const done: Job[] = [];
  const tty = !out.json && process.stderr.isTTY;
  for (const first of jobs) {
    let job = first;
    if (tty && !ENDED.includes(job.state)) {
      let drawn = false;
      await api.events(`/api/v1/jobs/${job.id}/events`, (event, data) => {
        if (event === 'progress') {
          const text = `${job.kind} ${job.id}: ${describeProgress(data as Record<string, unknown>)}`;
          process.stderr.write(`\r\x1b[K${text.slice(0, (process.stderr.columns || 100) - 1)}`);
          drawn = true;
        } else if (event === 'end') job = data as Job;
      }, { signal: options.signal });
      if (drawn) process.stderr.write('\r\x1b[K');
    }
    while (!ENDED.includes(job.state)) {
      job = await api.request<Job>('GET', `/api/v1/jobs/${job.id}`, { query: { waitMs: 60_000 }, signal: options.signal });
    }
    done.push(job);
  }
  return done;
}

/**
 * A line carrying an API object: the server's objects are typed by the catalog, the contract
 * checks their documented fields when tests run (json-schema.ts), not the compiler.
 */
export function apiLine(line: { type: EventLine['type'] } & Record<string, unknown>): EventLine {
  return line as EventLine;
}
