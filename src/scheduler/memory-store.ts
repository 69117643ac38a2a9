// An in-memory ScheduleStore, for tests and the scheduler benchmark; the server's store is the
// catalog's. It keeps the contract as the catalog must: loadDue() finds due rows through an index
// on nextRun (a binary heap here, an index on schedules.next_run there), never by scanning every
// row; a decision applies only to an unchanged row; and a job is keyed by (row, slot), so queuing
// the same slot again adds nothing, as the catalog's unique index on jobs (schedule, slot) would.
import { CofferError } from '../core/errors.ts';
import type { ScheduleStore } from './loop.ts';
import type { Decision, Schedule, ScheduleRow, ScheduleState } from './plan.ts';

export interface QueuedJob {
  schedule: string;
  slot: number;
  notBefore: number;
  notAfter: number;
  catchUp: boolean;
  /** The tick's time when it was queued. */
  queuedAt: number;
}

export interface MissedRun {
  schedule: string;
  slot: number;
  /** The tick's time when it was found missed. */
  at: number;
}

interface Entry {
  row: ScheduleRow;
  /** The entry's place in the heap, or -1 when its nextRun is null. */
  heapIndex: number;
}

export class MemoryScheduleStore implements ScheduleStore {
  readonly jobs: QueuedJob[] = [];
  readonly missed: MissedRun[] = [];
  /** How many times a decision tried to queue a (row, slot) that was queued already. */
  duplicateQueues = 0;
  /** How many rows loadDue() has returned, over all calls (to show it does not return them all). */
  rowsLoaded = 0;
  /** Called before each record(); tests use it to change rows under a running tick. */
  beforeRecord: (() => void) | undefined;
  /**
   * When set, the next record() queues its jobs and then fails before storing anything else, as a
   * store that is not transactional would if the server died between the two. Tests of the crash.
   */
  crashAfterQueue = false;
  private readonly entries = new Map<string, Entry>();
  private readonly heap: Entry[] = [];
  private readonly jobKeys = new Set<string>();

  get size(): number {
    return this.entries.size;
  }

  /** Adds or replaces a schedule; it takes effect at `since` (and is planned from then on). */
  put(id: string, schedule: Schedule, options: { since: number }): void {
    const old = this.entries.get(id);
    const state: ScheduleState = {
      since: options.since, lastSlot: old?.row.state.lastSlot ?? null, lastState: old?.row.state.lastState ?? null, nextRun: options.since,
    };
    if (old) {
      old.row = { id, schedule, state };
      this.reindex(old);
      return;
    }
    const entry: Entry = { row: { id, schedule, state }, heapIndex: -1 };
    this.entries.set(id, entry);
    this.reindex(entry);
  }

  /** A copy of the row, or undefined. */
  get(id: string): ScheduleRow | undefined {
    const entry = this.entries.get(id);
    return entry && copy(entry.row);
  }

  delete(id: string): void {
    const entry = this.entries.get(id);
    if (!entry) return;
    entry.row = { ...entry.row, state: { ...entry.row.state, nextRun: null } };
    this.reindex(entry);
    this.entries.delete(id);
  }

  async loadDue(t: number): Promise<ScheduleRow[]> {
    const due: ScheduleRow[] = [];
    // Every heap node is at or after its parent: only the due nodes and their direct children are visited.
    const stack = this.heap.length > 0 ? [0] : [];
    while (stack.length > 0) {
      const i = stack.pop()!;
      const entry = this.heap[i]!;
      if (entry.row.state.nextRun! > t) continue;
      due.push(copy(entry.row));
      if (2 * i + 1 < this.heap.length) stack.push(2 * i + 1);
      if (2 * i + 2 < this.heap.length) stack.push(2 * i + 2);
    }
    this.rowsLoaded += due.length;
    return due;
  }

  async record(decisions: readonly Decision[]): Promise<boolean[]> {
    this.beforeRecord?.();
    if (this.crashAfterQueue) {
      this.crashAfterQueue = false;
      for (const d of decisions) {
        const entry = this.entries.get(d.id);
        if (entry && sameState(entry.row.state, d.previous)) this.queue(d);
      }
      throw new CofferError('STORAGE_UNAVAILABLE', 'Cannot record the scheduler\'s decisions: simulated crash after queuing');
    }
    return decisions.map((d) => {
      const entry = this.entries.get(d.id);
      if (!entry || !sameState(entry.row.state, d.previous)) return false;
      this.queue(d);
      for (const slot of d.missed) this.missed.push({ schedule: d.id, slot, at: d.at });
      entry.row = { ...entry.row, state: { ...d.state } };
      this.reindex(entry);
      return true;
    });
  }

  async nextRun(): Promise<number | null> {
    return this.heap[0]?.row.state.nextRun ?? null;
  }

  private queue(d: Decision): void {
    if (!d.queue) return;
    const key = `${d.id}\u0000${d.queue.slot}`;
    if (this.jobKeys.has(key)) {
      this.duplicateQueues++;
      return;
    }
    this.jobKeys.add(key);
    this.jobs.push({ schedule: d.id, ...d.queue, queuedAt: d.at });
  }

  /** Puts the entry where its nextRun belongs in the heap (out of it for a null nextRun). */
  private reindex(entry: Entry): void {
    const key = entry.row.state.nextRun;
    if (entry.heapIndex < 0) {
      if (key === null) return;
      entry.heapIndex = this.heap.length;
      this.heap.push(entry);
      this.up(entry.heapIndex);
      return;
    }
    if (key === null) {
      const i = entry.heapIndex;
      const last = this.heap.pop()!;
      entry.heapIndex = -1;
      if (last === entry) return;
      this.heap[i] = last;
      last.heapIndex = i;
      this.down(this.up(i));
      return;
    }
    this.down(this.up(entry.heapIndex));
  }

  private up(i: number): number {
    const heap = this.heap;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent]!.row.state.nextRun! <= heap[i]!.row.state.nextRun!) break;
      this.swap(i, parent);
      i = parent;
    }
    return i;
  }

  private down(i: number): void {
    const heap = this.heap;
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let least = i;
      if (l < heap.length && heap[l]!.row.state.nextRun! < heap[least]!.row.state.nextRun!) least = l;
      if (r < heap.length && heap[r]!.row.state.nextRun! < heap[least]!.row.state.nextRun!) least = r;
      if (least === i) return;
      this.swap(i, least);
      i = least;
    }
  }

  private swap(a: number, b: number): void {
    const heap = this.heap;
    const x = heap[a]!, y = heap[b]!;
    heap[a] = y;
    heap[b] = x;
    x.heapIndex = b;
    y.heapIndex = a;
  }
}

function copy(row: ScheduleRow): ScheduleRow {
  return { ...row, state: { ...row.state } };
}

function sameState(a: ScheduleState, b: ScheduleState): boolean {
  return a.since === b.since && a.lastSlot === b.lastSlot && a.lastState === b.lastState && a.nextRun === b.nextRun;
}
