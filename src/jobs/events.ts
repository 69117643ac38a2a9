// One event model for every job (docs/server.md "Jobs"): backup, restore, expire and the rest
// report progress, warnings, log lines and their result in these shapes, whoever runs them (the
// CLI, an agent) and whoever listens (a terminal, the server's catalog, an API client following a
// job). The data path keeps its own callbacks (onProgress, onWarning, onNotice); the adapters
// here turn them into events, with rate and ETA computed in one place.

import type { BackupOptions, BackupProgress } from './backup.ts';
import type { RestoreOptions, RestoreProgress } from './restore.ts';

export interface ProgressEvent {
  type: 'progress';
  /** Files done so far. */
  files?: number;
  /** Bytes done so far (scanned for a backup, written for a restore). */
  bytes?: number;
  /** Bytes expected in all, when known. */
  bytesTotal?: number;
  /** Bytes that were new after deduplication (backups). */
  bytesNew?: number;
  /** Bytes per second since the job started. */
  rate?: number;
  /** Estimated milliseconds left, when bytesTotal is known. */
  etaMs?: number;
  /** What the job works on now (a path). */
  current?: string;
}

export interface WarningEvent {
  type: 'warning';
  path?: string;
  problem: string;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface LogEvent {
  type: 'log';
  level: LogLevel;
  message: string;
  data?: Record<string, unknown>;
}

export interface ResultEvent {
  type: 'result';
  result: Record<string, unknown>;
}

export type JobEvent = ProgressEvent | WarningEvent | LogEvent | ResultEvent;

export type EmitJobEvent = (event: JobEvent) => void;

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/**
 * Turns counters into progress events with rate and ETA, at most one per `intervalMs` (the data
 * path calls its onProgress often; a listener across a pipe or a network wants a few a second).
 */
export class ProgressReporter {
  private readonly emit: EmitJobEvent;
  private readonly started: number;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private last = -Infinity;

  constructor(emit: EmitJobEvent, options: { intervalMs?: number; now?: () => number } = {}) {
    this.emit = emit;
    this.now = options.now ?? Date.now;
    this.started = this.now();
    this.intervalMs = options.intervalMs ?? 500;
  }

  report(p: Omit<ProgressEvent, 'type' | 'rate' | 'etaMs'>, force = false): void {
    const t = this.now();
    if (!force && t - this.last < this.intervalMs) return;
    this.last = t;
    const seconds = Math.max((t - this.started) / 1000, 0.001);
    const event: ProgressEvent = { type: 'progress', ...p };
    if (p.bytes !== undefined) {
      event.rate = Math.round(p.bytes / seconds);
      if (p.bytesTotal !== undefined && p.bytes > 0 && p.bytes < p.bytesTotal) {
        event.etaMs = Math.round(((p.bytesTotal - p.bytes) / p.bytes) * seconds * 1000);
      }
    }
    this.emit(event);
  }
}

/** The callbacks of a backup, as events. */
export function backupEvents(emit: EmitJobEvent, options: { intervalMs?: number } = {}): Pick<BackupOptions, 'onProgress' | 'onWarning' | 'onNotice'> {
  const progress = new ProgressReporter(emit, options);
  return {
    onProgress: (p: BackupProgress) => progress.report({ files: p.files, bytes: p.bytesScanned, bytesTotal: p.bytesTotal, bytesNew: p.bytesNew, current: p.currentPath }),
    onWarning: (path, problem) => emit({ type: 'warning', path, problem }),
    onNotice: (message) => emit({ type: 'log', level: 'info', message }),
  };
}

/** The callbacks of a restore, as events. */
export function restoreEvents(emit: EmitJobEvent, options: { intervalMs?: number; bytesTotal?: number } = {}): Pick<RestoreOptions, 'onProgress' | 'onWarning'> {
  const progress = new ProgressReporter(emit, options);
  return {
    onProgress: (p: RestoreProgress) => progress.report({ files: p.files, bytes: p.bytes, bytesTotal: options.bytesTotal, current: p.currentPath }),
    onWarning: (path, problem) => emit({ type: 'warning', path, problem }),
  };
}

const isCount = (v: unknown) => v === undefined || (typeof v === 'number' && Number.isFinite(v) && v >= 0);
const isText = (v: unknown, max: number) => typeof v === 'string' && v.length <= max;
const isOptionalText = (v: unknown, max: number) => v === undefined || isText(v, max);
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Checks an event that came from elsewhere (an agent's pipe): the problem, or undefined when it
 * is a well-formed JobEvent. Texts are bounded so that one hostile line cannot fill the catalog.
 */
export function jobEventProblem(raw: unknown): string | undefined {
  if (!isRecord(raw)) return 'not an object';
  switch (raw.type) {
    case 'progress':
      for (const k of ['files', 'bytes', 'bytesTotal', 'bytesNew', 'rate', 'etaMs'] as const) if (!isCount(raw[k])) return `progress.${k} is not a count`;
      if (!isOptionalText(raw.current, 4096)) return 'progress.current is not a path';
      return undefined;
    case 'warning':
      if (!isText(raw.problem, 4096)) return 'warning.problem is not a text of at most 4096 characters';
      if (!isOptionalText(raw.path, 4096)) return 'warning.path is not a path';
      return undefined;
    case 'log':
      if (!LOG_LEVELS.includes(raw.level as LogLevel)) return `log.level is not one of ${LOG_LEVELS.join(', ')}`;
      if (!isText(raw.message, 8192)) return 'log.message is not a text of at most 8192 characters';
      if (raw.data !== undefined && !isRecord(raw.data)) return 'log.data is not an object';
      return undefined;
    case 'result':
      if (!isRecord(raw.result)) return 'result.result is not an object';
      return undefined;
    default:
      return `unknown event type ${JSON.stringify(raw.type)}`;
  }
}
