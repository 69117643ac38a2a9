// Shared plumbing for CLI commands: global options, passwords, opening repositories, the worker
// pool, cancellation on Ctrl-C, and output (human text or --json).

import { execSync } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import type { Backend } from '../storage/backend.ts';
import { openBackend } from '../storage/url.ts';
import { RetryBackend } from '../storage/retry.ts';
import { Repository, type OpenOptions } from '../repository/repository.ts';
import { DEFAULT_TIMING, type SessionTiming } from '../repository/session.ts';
import { describeUnreadable, type SnapshotFilter, type UnreadableSnapshot } from '../repository/snapshot.ts';
import { WorkerPool } from '../engine/pool.ts';
import type { EventLine } from './json-schema.ts';

export interface GlobalOptions {
  repo?: string;
  passwordFile?: string;
  cacheDir?: string;
  cache?: boolean;
  json?: boolean;
  debug?: boolean;
  workers?: string;
}

export function globals(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals() as GlobalOptions;
}

/**
 * Everything a command prints goes through here. Without --json: results on stdout, events
 * (progress, warnings, notes) and diagnostics on stderr. With --json (the contract is
 * docs/json.md and json-schema.ts): stdout carries only JSON lines, each with a `type`, and every
 * run ends with exactly one final line, a `summary` (exit code 0 or 3) or an `error`, carrying the
 * exit code; end() writes it once main() knows how the command ended. stderr then carries no
 * JSON and no messages, only what is meant for a person at a terminal (a password prompt, the
 * Ctrl-C notice, --debug stack traces).
 */
export class Output {
  readonly json: boolean;
  private pending: Record<string, unknown> | undefined;
  private ended = false;
  /**
   * The exit code of a run that did its job but whose result says something a script acts on
   * (`coffer diff`: 1 when there are changes; a command that waited for a job: that job's end).
   * Such a run ends with its summary, never an error line. 0 unless setExitCode() changed it.
   */
  private result = 0;
  constructor(json: boolean) {
    this.json = json;
  }
  private line(value: Record<string, unknown>): void {
    process.stdout.write(JSON.stringify(value) + '\n');
  }
  /**
   * One item of the command's result (a snapshot, a key): a JSON line, or human text on stdout
   * (none when the human rendering is a table that the summary prints whole).
   */
  item(value: EventLine, human?: string): void {
    if (this.json) this.line(value);
    else if (human !== undefined) process.stdout.write(human + '\n');
  }
  /** The text of one item for a writer that waits on its reader (ls, find, diff): no newline. */
  render(value: EventLine, human: string): string {
    return this.json ? JSON.stringify(value) : human;
  }
  /** Something that happens while the command runs (progress, a warning): a JSON line, or human text on stderr. */
  event(value: EventLine, human?: string): void {
    if (this.json) this.line(value);
    else if (human !== undefined) process.stderr.write(human + '\n');
  }
  warning(path: string, problem: string): void {
    this.event({ type: 'warning', path, problem }, `warning: ${path}: ${problem}`);
  }
  /**
   * The command's result. Human text is printed now; the JSON summary waits for end(), which adds
   * the exit code: a command that goes on to throw WARNINGS still ends with this summary.
   */
  summary(value: Record<string, unknown>, human?: () => string | string[]): void {
    if (this.json) {
      this.pending = value;
      return;
    }
    const h = human?.();
    const text = Array.isArray(h) ? h.join('\n') : h;
    if (text) process.stdout.write(text + '\n');
  }
  /** Sets the exit code of a run that succeeds with a result that is not plain success (see `result`). */
  setExitCode(code: number): void {
    this.result = code;
  }
  get exitCode(): number {
    return this.result;
  }
  /** A message for a person (human mode only, on stderr). */
  info(text: string): void {
    if (!this.json) process.stderr.write(text + '\n');
  }
  /**
   * Ends the run (main() calls it once): with --json the final line, otherwise the error message
   * and hint on stderr. Completed with warnings (WARNINGS) ends with the summary and exit code 3;
   * any other error with one `error` line. If the command had its result before a later step
   * failed, the error's details.summary keeps it.
   */
  end(exitCode: number, error?: CofferError): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.json) {
      if (error) {
        process.stderr.write(`coffer: ${error.message}\n`);
        if (error.hint) process.stderr.write(`  ${error.hint}\n`);
      }
      return;
    }
    if (!error || error.code === 'WARNINGS') {
      this.line({ type: 'summary', ...this.pending, exitCode });
      return;
    }
    const details = this.pending ? { ...error.details, summary: { type: 'summary', ...this.pending } } : error.details;
    this.line({ type: 'error', ...error.toJSON(), ...(details ? { details } : {}), exitCode });
  }
  /** A final `help` or `version` line (--json) for what commander would have printed. */
  endWith(value: { type: 'help'; text: string } | { type: 'version'; version: string }): void {
    if (this.ended || !this.json) return;
    this.ended = true;
    this.line({ ...value, exitCode: 0 });
  }
}

/** One Output per program run, shared by main() and the command's action. */
const outputs = new WeakMap<Command, Output>();

function rootOf(cmd: Command): Command {
  let c = cmd;
  while (c.parent) c = c.parent;
  return c;
}

export function attachOutput(program: Command, out: Output): void {
  outputs.set(rootOf(program), out);
}

export function output(cmd: Command): Output {
  const root = rootOf(cmd);
  let out = outputs.get(root);
  if (!out) outputs.set(root, (out = new Output(!!globals(cmd).json)));
  return out;
}

export function repoUrl(cmd: Command): string {
  const url = globals(cmd).repo ?? process.env.COFFER_REPOSITORY;
  if (!url) throw new CofferError('USAGE', 'Cannot find the repository: no --repo given and COFFER_REPOSITORY is not set', { hint: 'Pass --repo /path/or/s3://bucket/prefix, or set COFFER_REPOSITORY.' });
  return url;
}

export async function backendFor(url: string): Promise<Backend> {
  return new RetryBackend(await openBackend(url));
}

function readPasswordFile(path: string): string {
  try {
    return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
  } catch (e) {
    throw new CofferError('USAGE', `Cannot read the password file ${path}: ${(e as Error).message}`);
  }
}

/** Asks on the terminal without echoing what is typed (passwords). */
export async function prompt(question: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(question);
  return new Promise((resolve, reject) => {
    let value = '';
    stdin.setRawMode?.(true);
    stdin.resume();
    stdin.setEncoding('utf8');
    const onData = (ch: string) => {
      for (const c of ch) {
        if (c === '\r' || c === '\n') {
          done();
          resolve(value);
          return;
        }
        if (c === '\u0003') {
          done();
          reject(new CofferError('CANCELLED', 'Cancelled at the password prompt'));
          return;
        }
        if (c === '\u007f') value = value.slice(0, -1);
        else value += c;
      }
    };
    const done = () => {
      stdin.off('data', onData);
      stdin.setRawMode?.(false);
      stdin.pause();
      process.stderr.write('\n');
    };
    stdin.on('data', onData);
  });
}

/** The repository password: --password-file, COFFER_PASSWORD, COFFER_PASSWORD_COMMAND or a prompt. */
export async function getPassword(cmd: Command, options: { confirm?: boolean; envVar?: string; fileOption?: string; label?: string } = {}): Promise<string> {
  const g = globals(cmd) as GlobalOptions & Record<string, unknown>;
  const file = options.fileOption ? (g[options.fileOption] as string | undefined) : g.passwordFile;
  if (file) return readPasswordFile(file);
  const envVar = options.envVar ?? 'COFFER_PASSWORD';
  if (process.env[envVar]) return process.env[envVar]!;
  if (!options.envVar && process.env.COFFER_PASSWORD_COMMAND) {
    try {
      return execSync(process.env.COFFER_PASSWORD_COMMAND, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).replace(/\r?\n$/, '');
    } catch (e) {
      throw new CofferError('USAGE', `Cannot get the password: COFFER_PASSWORD_COMMAND failed (${(e as Error).message.split('\n')[0]})`);
    }
  }
  if (!process.stdin.isTTY) {
    throw new CofferError('USAGE', `Cannot get the ${options.label ?? 'repository password'}: no terminal to ask on`, { hint: `Set ${envVar}, pass a password file${options.envVar ? '' : ', or set COFFER_PASSWORD_COMMAND'}.` });
  }
  const pw = await prompt(`Enter ${options.label ?? 'repository password'}: `);
  if (options.confirm) {
    const again = await prompt('Enter it again: ');
    if (again !== pw) throw new CofferError('USAGE', 'Cannot use the password: the two entries differ');
  }
  if (pw.length === 0) throw new CofferError('USAGE', 'Cannot use an empty password');
  return pw;
}

/** The cache directory when none is given: $COFFER_CACHE_DIR, else $XDG_CACHE_HOME/coffer or ~/.cache/coffer. */
export function defaultCacheDir(): string {
  return process.env.COFFER_CACHE_DIR || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'coffer');
}

/** Session heartbeat and stale times: the defaults, or COFFER_SESSION_HEARTBEAT_MS / COFFER_SESSION_STALE_MS (tests). */
export function sessionTimingFromEnv(): SessionTiming {
  const hb = Number(process.env.COFFER_SESSION_HEARTBEAT_MS);
  const st = Number(process.env.COFFER_SESSION_STALE_MS);
  return {
    heartbeatMs: Number.isFinite(hb) && hb > 0 ? hb : DEFAULT_TIMING.heartbeatMs,
    staleMs: Number.isFinite(st) && st > 0 ? st : DEFAULT_TIMING.staleMs,
  };
}

export function openOptions(cmd: Command, signal?: AbortSignal): OpenOptions {
  const g = globals(cmd);
  return { signal, cacheDir: g.cacheDir ?? defaultCacheDir(), noCache: g.cache === false, sessionTiming: sessionTimingFromEnv() };
}

export async function openRepo(cmd: Command, signal?: AbortSignal): Promise<Repository> {
  const backend = await backendFor(repoUrl(cmd));
  try {
    return await Repository.open(backend, await getPassword(cmd), openOptions(cmd, signal));
  } catch (e) {
    await backend.close();
    throw e;
  }
}

export async function withRepo<T>(cmd: Command, fn: (repo: Repository, signal: AbortSignal) => Promise<T>): Promise<T> {
  const signal = interruptSignal();
  const repo = await openRepo(cmd, signal);
  if (repo.configNote) output(cmd).event({ type: 'notice', message: repo.configNote }, `note: ${repo.configNote}`);
  try {
    return await fn(repo, signal);
  } finally {
    await repo.close();
    await repo.backend.close();
  }
}

export async function makePool(cmd: Command, repo: Repository): Promise<WorkerPool> {
  const w = globals(cmd).workers ?? process.env.COFFER_WORKERS;
  const workers = w ? Number(w) : undefined;
  if (workers !== undefined && (!Number.isInteger(workers) || workers < 1 || workers > 256)) throw new CofferError('USAGE', `Cannot use --workers ${w}: give a whole number from 1 to 256`);
  return WorkerPool.create({ keys: repo.keys, chunker: repo.config.chunker, level: repo.config.compressionLevel, workers });
}

let controller: AbortController | undefined;

/** An AbortSignal that fires on the first Ctrl-C (SIGINT) or SIGTERM; a second one exits at once. */
export function interruptSignal(): AbortSignal {
  if (!controller) {
    controller = new AbortController();
    const c = controller;
    const onSignal = (sig: NodeJS.Signals) => {
      if (c.signal.aborted) process.exit(130);
      process.stderr.write(`\n${sig}: stopping cleanly (press Ctrl-C again to stop at once)\n`);
      c.abort(new CofferError('CANCELLED', `Cancelled by ${sig}`));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  return controller.signal;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function parseIntOption(name: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new CofferError('USAGE', `Cannot use ${name} ${JSON.stringify(value)}: give a whole number from ${min} to ${max}`);
  return n;
}

/** Collects a repeatable option's values (commander's `.option(..., collect)`). */
export const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** What --host, --path and --tag gave. */
export interface SnapshotSelection {
  host?: string;
  path?: string[];
  tag?: string[];
}

/**
 * Adds --host, --path and --tag: which snapshot `latest` means (`use` 'latest'), or which
 * snapshots a listing covers ('filter').
 */
export function snapshotSelectionOptions(cmd: Command, use: 'latest' | 'filter'): Command {
  return use === 'latest'
    ? cmd
        .option('--host <name>', 'with latest: the newest snapshot of this host')
        .option('--path <path>', 'with latest: the newest snapshot of this path', collect)
        .option('--tag <tag>', 'with latest: the newest snapshot with this tag', collect)
    : cmd
        .option('--host <name>', 'only snapshots of this host')
        .option('--path <path>', 'only snapshots of this path (repeatable)', collect)
        .option('--tag <tag>', 'only snapshots with this tag (repeatable)', collect);
}

export function snapshotFilter(o: SnapshotSelection): SnapshotFilter {
  return { host: o.host, paths: o.path, tags: o.tag };
}

/** Reports a snapshot that `latest` skipped because it cannot be read (a notice: the command goes on). */
export function unreadableNotice(out: Output): (u: UnreadableSnapshot) => void {
  return (u) => out.event({ type: 'notice', snapshot: u.id, message: describeUnreadable(u) }, `note: ${describeUnreadable(u)}`);
}

/** For commands that only read: an unreadable index file is left out, with a notice, instead of stopping them. */
export function indexNotice(out: Output): (id: string, error: Error) => void {
  return (id, e) => {
    const message = `index file ${id.slice(0, 12)} is unreadable (${e.message}) and was left out: what only it knew is not found; \`coffer repo repair index\` repairs the index`;
    out.event({ type: 'notice', message }, `note: ${message}`);
  };
}
