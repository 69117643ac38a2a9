// The job queue's runner: takes queued jobs from the catalog as the limits allow (a storage
// unit's maxJobs, a client's maxStreams, a global limit: catalog.jobs.claimNext checks them in
// one transaction), runs each through its kind's executor, keeps its progress and log in the
// catalog and on an in-memory bus for followers, and records how it ended. Failures that may
// pass are retried with backoff by the catalog. Stopping tells running jobs to stop and records
// them as interrupted: they are queued again at the next start.

import { EventEmitter } from 'node:events';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { Catalog } from '../catalog/catalog.ts';
import type { Job, JobOutcome, JobResult } from '../catalog/jobs.ts';
import type { JobEvent, LogLevel } from '../jobs/events.ts';

export interface JobContext {
  job: Job;
  signal: AbortSignal;
  /** Reports an event: logs go to the job's log, progress to its progress, all to followers. */
  emit(event: JobEvent): void;
  log(level: LogLevel, message: string, data?: Record<string, unknown>): void;
}

export interface JobEnd {
  state: JobOutcome | 'interrupted';
  result?: JobResult;
  error?: { code: string; message: string; hint?: string };
  /** A failure that may pass (storage or agent unavailable): queue it again if attempts are left. */
  retry?: boolean;
  /** It did not run: queue it again for this time without using an attempt (catalog JobEnd.waitUntil). */
  waitUntil?: number;
}

export type JobExecutor = (ctx: JobContext) => Promise<JobEnd>;

export interface DispatcherOptions {
  catalog: Catalog;
  executors: Record<string, JobExecutor>;
  /** Running jobs in all (default 16). */
  globalLimit?: number;
  /** Running jobs per client without a maxStreams of its own (default 4). */
  clientStreams?: number;
  /** Recorded as the jobs' claimedBy: this server. */
  name: string;
  /** How often to look for due jobs without being woken (default 1 s; retries' backoffs end on their own). */
  pollMs?: number;
  onError?: (e: CofferError, job?: Job) => void;
}

/** What followers of a job receive: its events, and its end. */
export type BusMessage = { type: 'event'; event: JobEvent } | { type: 'end'; job: Job };

/** Progress is written to the catalog at most this often per job. */
const PROGRESS_EVERY_MS = 1000;

export class Dispatcher {
  readonly bus = new EventEmitter();
  private readonly options: DispatcherOptions;
  private readonly running = new Map<string, { controller: AbortController; done: Promise<void> }>();
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  private loop: Promise<void> | undefined;

  constructor(options: DispatcherOptions) {
    this.options = options;
    this.bus.setMaxListeners(0);
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Look at the queue now (a job was queued or ended). */
  wake(): void {
    this.wakeUp?.();
  }

  get runningJobs(): string[] {
    return [...this.running.keys()];
  }

  /** Cancels a job: a queued one at once, a running one is told to stop. */
  async cancel(id: string): Promise<Job> {
    const run = this.running.get(id);
    if (run) {
      run.controller.abort(new CofferError('CANCELLED', 'cancelled by a user'));
      await run.done;
      return this.options.catalog.jobs.get(id);
    }
    const job = await this.options.catalog.jobs.cancel(id);
    this.bus.emit(id, { type: 'end', job } satisfies BusMessage);
    return job;
  }

  /** Stops taking jobs, tells running ones to stop, and waits until they are recorded. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    for (const r of this.running.values()) r.controller.abort(new CofferError('CANCELLED', 'the server is stopping'));
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
    await this.loop;
  }

  private async run(): Promise<void> {
    const { catalog } = this.options;
    while (!this.stopped) {
      let job: Job | undefined;
      try {
        job = await catalog.jobs.claimNext({
          global: this.options.globalLimit ?? 16,
          clientStreams: this.options.clientStreams ?? 4,
          kinds: Object.keys(this.options.executors),
          by: this.options.name,
        });
      } catch (e) {
        this.options.onError?.(toCofferError(e));
      }
      if (job && !this.stopped) {
        this.launch(job);
        continue;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.options.pollMs ?? 1000);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = undefined;
    }
  }

  private launch(job: Job): void {
    const { catalog } = this.options;
    const controller = new AbortController();
    const executor = this.options.executors[job.kind]!;
    let lastProgress = 0;
    let pendingProgress: Record<string, unknown> | undefined;
    let logs = Promise.resolve();
    const writeLog = (level: LogLevel, message: string, data?: Record<string, unknown>) => {
      logs = logs.then(() => catalog.jobs.appendLog(job.id, { level, message, data }).then(() => {}), () => {}).catch((e) => this.options.onError?.(toCofferError(e), job));
    };
    const flushProgress = () => {
      if (!pendingProgress) return;
      const progress = pendingProgress;
      pendingProgress = undefined;
      lastProgress = Date.now();
      catalog.jobs.update(job.id, { progress }).catch(() => {
        /* the job may have ended meanwhile */
      });
    };
    const ctx: JobContext = {
      job,
      signal: controller.signal,
      emit: (event) => {
        this.bus.emit(job.id, { type: 'event', event } satisfies BusMessage);
        if (event.type === 'progress') {
          const { type: _t, ...progress } = event;
          pendingProgress = progress;
          if (Date.now() - lastProgress >= PROGRESS_EVERY_MS) flushProgress();
        } else if (event.type === 'log') writeLog(event.level, event.message, event.data);
        else if (event.type === 'warning') writeLog('warn', event.path ? `${event.path}: ${event.problem}` : event.problem);
      },
      log: (level, message, data) => ctx.emit({ type: 'log', level, message, ...(data ? { data } : {}) }),
    };
    const done = (async () => {
      let end: JobEnd;
      try {
        end = await executor(ctx);
      } catch (e) {
        const err = toCofferError(e);
        end = controller.signal.aborted || err.code === 'CANCELLED'
          ? { state: this.stopped ? 'interrupted' : 'cancelled', error: { code: 'CANCELLED', message: err.message } }
          : { state: 'failed', error: { code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}) }, retry: err.transient };
      }
      if (this.stopped && end.state === 'cancelled') end = { ...end, state: 'interrupted' };
      flushProgress();
      if (end.error) writeLog(end.state === 'failed' ? 'error' : 'warn', end.error.message + (end.error.hint ? `\n${end.error.hint}` : ''));
      await logs;
      let finished: Job;
      try {
        // An interrupted job stays running in the catalog: interruptRunning() at the next start
        // records it and queues it again (also when this process dies before getting here).
        if (end.state === 'interrupted') finished = await catalog.jobs.get(job.id);
        else finished = await catalog.jobs.finish(job.id, { state: end.state, result: end.result, error: end.error, retry: end.retry, ...(end.waitUntil !== undefined ? { waitUntil: end.waitUntil } : {}) });
      } catch (e) {
        this.options.onError?.(toCofferError(e), job);
        finished = { ...job, state: end.state === 'interrupted' ? 'running' : end.state };
      }
      this.running.delete(job.id);
      this.bus.emit(job.id, { type: 'end', job: finished } satisfies BusMessage);
      this.wake();
    })();
    this.running.set(job.id, { controller, done });
  }
}
