// An in-memory ScheduleStore, for tests and the scheduler benchmark; the server's store is the
// catalog's. It keeps the contract strictly: a decision applies only to an unchanged row, and a
// second job for the same (row, slot) is refused loudly, as the catalog's unique index would.
import { CofferError } from '../core/errors.ts';
import type { ScheduleStore } from './loop.ts';
import type { Decision, Schedule, ScheduleRow, ScheduleState } from './plan.ts';

export interface QueuedJob {
  schedule: string;
  slot: number;
  notAfter: number;
  catchUp: boolean;
  /** The tick's time when it was queued. */
  queuedAt: number;
}

export class MemoryScheduleStore implements ScheduleStore {
  readonly rows = new Map<string, ScheduleRow>();
  readonly jobs: QueuedJob[] = [];
  readonly missed: Array<{ schedule: string; slot: number; at: number }> = [];
  private readonly jobKeys = new Set<string>();
  /** Called before each record(); tests use it to change rows under a running tick. */
  beforeRecord: (() => void) | undefined;

  /** Adds or replaces a schedule; it takes effect at `since` (and is planned from then on). */
  put(id: string, schedule: Schedule, options: { since: number }): void {
    const old = this.rows.get(id)?.state;
    const state: ScheduleState = {
      since: options.since, lastSlot: old?.lastSlot ?? null, lastState: old?.lastState ?? null, nextRun: options.since,
    };
    this.rows.set(id, { id, schedule, state });
  }

  async loadDue(t: number): Promise<ScheduleRow[]> {
    const due: ScheduleRow[] = [];
    for (const row of this.rows.values()) {
      if (row.state.nextRun !== null && row.state.nextRun <= t) due.push({ ...row, state: { ...row.state } });
    }
    return due;
  }

  async record(decisions: readonly Decision[]): Promise<boolean[]> {
    this.beforeRecord?.();
    return decisions.map((d) => {
      const row = this.rows.get(d.id);
      if (!row || !sameState(row.state, d.previous)) return false;
      if (d.queue) {
        const key = `${d.id}\u0000${d.queue.slot}`;
        if (this.jobKeys.has(key)) {
          throw new CofferError('CONFLICT', `Cannot queue slot ${new Date(d.queue.slot).toISOString()} of ${d.id}: it was queued before`, {
            hint: 'This is a bug in the scheduler: a slot must be queued once.',
          });
        }
        this.jobKeys.add(key);
        this.jobs.push({ schedule: d.id, ...d.queue, queuedAt: d.at });
      }
      for (const slot of d.missed) this.missed.push({ schedule: d.id, slot, at: d.at });
      row.state = { ...d.state };
      return true;
    });
  }

  async nextRun(): Promise<number | null> {
    let min: number | null = null;
    for (const row of this.rows.values()) {
      const t = row.state.nextRun;
      if (t !== null && (min === null || t < min)) min = t;
    }
    return min;
  }
}

function sameState(a: ScheduleState, b: ScheduleState): boolean {
  return a.since === b.since && a.lastSlot === b.lastSlot && a.lastState === b.lastState && a.nextRun === b.nextRun;
}
