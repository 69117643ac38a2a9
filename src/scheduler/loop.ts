// The scheduler loop: plans the schedules that are due, records the decisions, and sleeps until
// the earliest next run (at most a minute, so that a changed clock or a missed wake-up costs
// little), waking early on demand (a policy was applied). It keeps no state of its own: every
// decision is recorded in the store with a compare-and-set on the row's state, so a restart, a
// double tick or a second server never queues one slot twice. The clock is passed in so tests
// drive the loop with a fake one.
import { CofferError, toCofferError } from '../core/errors.ts';
import { plan, type Decision, type ScheduleRow } from './plan.ts';

export interface SchedulerClock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms` milliseconds, or early (never rejecting) when `signal` aborts. */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

/** The real clock. */
export const systemClock: SchedulerClock = {
  now: () => Date.now(),
  sleep: (ms, signal) => new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  }),
};

/**
 * What the scheduler needs from the catalog's `schedules` table (and its `jobs` table). The
 * server implements it on the catalog; `MemoryScheduleStore` is the in-memory one for tests.
 */
export interface ScheduleStore {
  /**
   * The rows whose state's nextRun is at or before t (rows with a null nextRun are never due),
   * found through an index on nextRun: the loop calls this every tick, and a tick must cost what
   * is due, not what is stored.
   */
  loadDue(t: number, options?: { signal?: AbortSignal }): Promise<ScheduleRow[]>;
  /**
   * Applies decisions. Each one atomically (one transaction), and only if its row's state still
   * equals `decision.previous` (and the row still exists): queue `decision.queue` as a job whose
   * identity is (row id, slot), record each of `decision.missed` as a missed run of the row, and
   * store `decision.state`. A decision whose row changed meanwhile (another scheduler, a re-applied
   * policy) changes nothing. Returns, in order, whether each was applied.
   *
   * Queuing MUST be idempotent by (row id, slot): when that job exists already, nothing is queued
   * (a unique index and INSERT ... ON CONFLICT DO NOTHING), and the rest of the decision applies.
   * With the compare-and-set this makes a crash between queuing and storing the state harmless,
   * even for a store that cannot do both in one transaction.
   */
  record(decisions: readonly Decision[], options?: { signal?: AbortSignal }): Promise<boolean[]>;
  /** The earliest non-null nextRun of any row, or null when there is none (from the same index). */
  nextRun(options?: { signal?: AbortSignal }): Promise<number | null>;
}

export interface SchedulerLoopOptions {
  /** The server's time zone, for schedules without one. */
  timezone: string;
  /** Without a window, how long after its time a slot may still start; default one hour. */
  graceMs?: number;
  /** The longest sleep between ticks; default one minute. */
  maxSleepMs?: number;
  /** Decisions recorded per store call; default 1000. Between calls the event loop is free. */
  batchSize?: number;
  /** Called after every tick. */
  onTick?: (report: TickReport) => void;
  /** Called for a tick that failed (the loop tries again after a pause) and for each schedule that cannot be planned. */
  onError?: (error: CofferError, scheduleId?: string) => void;
}

export interface TickReport {
  now: number;
  /** Rows loaded as due. */
  loaded: number;
  /** Decisions the store applied. */
  applied: number;
  /** Decisions the store refused because their row had changed meanwhile. */
  conflicts: number;
  /** The decisions that queued a job, or recorded missed slots, and were applied. */
  decisions: Decision[];
}

const DEFAULT_MAX_SLEEP_MS = 60_000;
// After a failed tick (the catalog unreachable), or a tick that could apply nothing while rows
// stay due, the loop waits this long rather than spinning.
const RETRY_MS = 5_000;

export class SchedulerLoop {
  private readonly store: ScheduleStore;
  private readonly clock: SchedulerClock;
  private readonly options: SchedulerLoopOptions;
  private sleeping: AbortController | null = null;
  private woken = false;

  constructor(store: ScheduleStore, clock: SchedulerClock, options: SchedulerLoopOptions) {
    this.store = store;
    this.clock = clock;
    this.options = options;
  }

  /** Makes the loop plan at once (a schedule was added or changed); it sleeps again afterwards. */
  wake(): void {
    this.woken = true;
    this.sleeping?.abort();
  }

  /** One pass: plans every due row at the clock's now and records the decisions. */
  async tick(options: { signal?: AbortSignal } = {}): Promise<TickReport> {
    const { signal } = options;
    const now = this.clock.now();
    const rows = await this.store.loadDue(now, { signal });
    const report: TickReport = { now, loaded: rows.length, applied: 0, conflicts: 0, decisions: [] };
    const batchSize = this.options.batchSize ?? 1000;
    for (let i = 0; i < rows.length; i += batchSize) {
      const decisions = plan(rows.slice(i, i + batchSize), {
        now, timezone: this.options.timezone, graceMs: this.options.graceMs,
      });
      const applied = await this.store.record(decisions, { signal });
      decisions.forEach((d, k) => {
        if (!applied[k]) {
          report.conflicts++;
          return;
        }
        report.applied++;
        if (d.queue || d.missed.length > 0) report.decisions.push(d);
        if (d.error) this.options.onError?.(d.error, d.id);
      });
    }
    this.options.onTick?.(report);
    return report;
  }

  /** Ticks and sleeps until `signal` aborts. Errors go to onError; the loop goes on. */
  async run(options: { signal: AbortSignal }): Promise<void> {
    const { signal } = options;
    const maxSleepMs = this.options.maxSleepMs ?? DEFAULT_MAX_SLEEP_MS;
    while (!signal.aborted) {
      this.woken = false;
      let wakeAt: number;
      try {
        const report = await this.tick({ signal });
        const next = await this.store.nextRun({ signal });
        const now = this.clock.now();
        wakeAt = Math.min(next ?? Infinity, now + maxSleepMs);
        if (wakeAt <= now && report.applied === 0) wakeAt = now + Math.min(RETRY_MS, maxSleepMs);
      } catch (e) {
        if (signal.aborted) break;
        this.options.onError?.(toCofferError(e));
        wakeAt = this.clock.now() + Math.min(RETRY_MS, maxSleepMs);
      }
      const delay = wakeAt - this.clock.now();
      if (delay <= 0 || this.woken || signal.aborted) continue;
      const controller = new AbortController();
      this.sleeping = controller;
      await this.clock.sleep(delay, AbortSignal.any([signal, controller.signal]));
      this.sleeping = null;
    }
  }
}
