// The scheduler's store on the catalog (src/scheduler/loop.ts, ScheduleStore), and the mapping
// from applied Policy documents to the catalog's schedule rows.
//
// A row's identity for the scheduler is the catalog's schedules.id; its job's identity is
// (policy, client, schedule name, slot), which a unique index on jobs enforces. record() applies
// a call's decisions in one transaction, each one only if its row's state is still the one it was
// decided from (schedules.setState, a compare-and-set); it queues with INSERT ... ON CONFLICT DO
// NOTHING, so a decision applied twice (two servers at the same instant, a state put back after
// a crash) queues once. One transaction per call rather than per decision: the loop hands over up
// to 1000 decisions at a time, and on SQLite (synchronous=FULL) a commit each would cost a sync
// each, 30,000 of them when every row is due. Likewise one compare-and-set statement for the
// call's rows (schedules.setStates), which locks them in id order so that two servers recording
// the same rows on PostgreSQL wait for each other rather than deadlock. Measured with 30,000 rows
// all due (bench/scheduler-catalog.ts): an UPDATE per row made the tick 9 s on PostgreSQL.
import type { Catalog, CatalogQueries } from '../catalog/catalog.ts';
import type { Schedule as CatalogSchedule, ScheduleEntry } from '../catalog/schedules.ts';
import type { SlotJobInput } from '../catalog/jobs.ts';
import type { Page } from '../catalog/page.ts';
import { CofferError, throwIfAborted } from '../core/errors.ts';
import { DEFAULTS, parseDuration, parseWindow, formatTimeOfDay, type PolicyDocument, type Schedule as PolicySchedule } from '../policy/index.ts';
import type { ScheduleStore } from '../scheduler/loop.ts';
import { upcomingRuns, type Decision, type Schedule, type ScheduleRow, type SlotState, type UpcomingRun } from '../scheduler/plan.ts';

/**
 * A policy's restore tests (spec.restoreTests) are scheduled as one more schedule row per client,
 * under a name no policy schedule can have (names start with a letter or digit), with this level:
 * the scheduler plans them like backups (missed runs, catch-up, one job per slot) and record()
 * queues a `restore-test` job for them (src/server/restore-test.ts).
 */
export const RESTORE_TEST_SCHEDULE = '@restore-test';
export const RESTORE_TEST_LEVEL = 'restore-test';
export const RESTORE_TEST_KIND = 'restore-test';

/** Due rows read per query: loadDue() pages through the index on next_run. */
const PAGE = 1000;

export interface CatalogScheduleStoreOptions {
  /** Attempts of a scheduled backup job, the first included (default 3). */
  maxAttempts?: number;
}

/** Where a backup of a lifecycle goes, for the job's storage unit (the queue's limits) and priority. */
interface Target {
  storageUnit: string | undefined;
  priority: number;
}

export class CatalogScheduleStore implements ScheduleStore {
  private readonly catalog: CatalogQueries;
  private readonly options: CatalogScheduleStoreOptions;

  constructor(catalog: CatalogQueries, options: CatalogScheduleStoreOptions = {}) {
    this.catalog = catalog;
    this.options = options;
  }

  async loadDue(t: number, options: { signal?: AbortSignal } = {}): Promise<ScheduleRow[]> {
    const rows: ScheduleRow[] = [];
    let after: { nextRun: number; id: string } | undefined;
    for (;;) {
      throwIfAborted(options.signal);
      const page = await this.catalog.schedules.due(t, { limit: PAGE, ...(after === undefined ? {} : { after }) });
      for (const s of page) rows.push(toRow(s));
      if (page.length < PAGE) return rows;
      const last = page[page.length - 1]!;
      after = { nextRun: last.state.nextRun!, id: last.id };
    }
  }

  async record(decisions: readonly Decision[], options: { signal?: AbortSignal } = {}): Promise<boolean[]> {
    throwIfAborted(options.signal);
    return this.catalog.transaction(async (tx) => {
      // One decision per row and call: of two for the same row, the second was decided from a
      // state the first replaces, so it is refused, as it would be in a later call.
      const first = new Map<string, number>();
      decisions.forEach((d, i) => { if (!first.has(d.id)) first.set(d.id, i); });
      const changes = [...first.values()].map((i) => {
        const d = decisions[i]!;
        return { id: d.id, previous: d.previous, next: d.state, ...(d.error === null ? {} : { error: d.error.toJSON() }) };
      });
      const rows = await tx.schedules.setStates(changes);
      const applied = decisions.map(() => false);
      const targets = new Map<string, Target>();
      const queued: SlotJobInput[] = [];
      const catchUps: SlotJobInput[] = [];
      const missed: SlotJobInput[] = [];
      for (const [k, i] of [...first.values()].entries()) {
        const d = decisions[i]!;
        const row = rows[k];
        if (row === undefined) continue;
        applied[i] = true;
        const base = { kind: row.level === RESTORE_TEST_LEVEL ? RESTORE_TEST_KIND : 'backup', policy: row.policy, client: row.client, schedule: row.name };
        const maxAttempts = this.options.maxAttempts === undefined ? {} : { maxAttempts: this.options.maxAttempts };
        const caughtUp = d.queue?.catchUp === true ? d.queue.slot : null;
        // Oldest first, so that the jobs' time-ordered ids follow their slots.
        for (const slot of [...d.missed].reverse()) {
          // The slot the catch-up runs is run late, not missed.
          if (slot === caughtUp) continue;
          missed.push({
            ...base, ...maxAttempts, slot,
            spec: { level: row.level, slot, ...(row.lifecycle === undefined ? {} : { lifecycle: row.lifecycle }), missedAt: d.at },
          });
        }
        if (d.queue === null) continue;
        const target = await targetOf(tx, row.lifecycle, targets);
        const job: SlotJobInput = {
          ...base, ...maxAttempts, slot: d.queue.slot, priority: target.priority, notBefore: d.queue.notBefore,
          ...(target.storageUnit === undefined ? {} : { storageUnit: target.storageUnit }),
          spec: {
            level: row.level, slot: d.queue.slot, catchUp: d.queue.catchUp, notBefore: d.queue.notBefore, notAfter: d.queue.notAfter,
            ...(row.lifecycle === undefined ? {} : { lifecycle: row.lifecycle }),
          },
        };
        (d.queue.catchUp ? catchUps : queued).push(job);
      }
      for (const job of catchUps) await tx.jobs.catchUp(job);
      if (queued.length > 0) await tx.jobs.enqueueSlots(queued);
      if (missed.length > 0) await tx.jobs.enqueueSlots(missed, { state: 'missed' });
      return applied;
    });
  }

  async nextRun(options: { signal?: AbortSignal } = {}): Promise<number | null> {
    throwIfAborted(options.signal);
    return this.catalog.schedules.nextRun();
  }
}

/** The scheduler's row of a catalog schedule. */
function toRow(s: CatalogSchedule): ScheduleRow {
  return {
    id: s.id,
    // Written by syncPolicySchedules() from scheduleTimingFrom(); plan() reports a bad one as the row's error.
    schedule: s.timing as unknown as Schedule,
    state: { ...s.state, lastState: s.state.lastState as SlotState | null },
  };
}

/** The storage unit of a lifecycle's backup copy (its first) and that unit's queue priority. */
async function targetOf(tx: CatalogQueries, lifecycle: string | undefined, cache: Map<string, Target>): Promise<Target> {
  if (lifecycle === undefined) return { storageUnit: undefined, priority: 0 };
  const known = cache.get(lifecycle);
  if (known) return known;
  const copies = (await tx.lifecycles.find(lifecycle))?.spec.copies;
  const first = Array.isArray(copies) ? copies[0] as { storageUnit?: unknown } | undefined : undefined;
  const storageUnit = typeof first?.storageUnit === 'string' ? first.storageUnit : undefined;
  const priority = storageUnit === undefined ? undefined : (await tx.storageUnits.find(storageUnit))?.spec.priority;
  const target = { storageUnit, priority: typeof priority === 'number' ? priority : DEFAULTS.storageUnit.priority };
  cache.set(lifecycle, target);
  return target;
}

/**
 * A policy document's schedule as the scheduler's: `every` and the window's duration in
 * milliseconds, the calendar with its spacing normalised (so re-applying it respaced is no
 * change), `missed` with its default. Throws INVALID_CONFIG for a duration or window that does not
 * parse (apply has validated the document; this is the last guard).
 */
export function scheduleTimingFrom(schedule: PolicySchedule): Schedule {
  const out: Schedule = { missed: schedule.missed ?? DEFAULTS.schedule.missed };
  if (schedule.calendar !== undefined) out.calendar = schedule.calendar.trim().split(/\s+/).join(' ');
  if (schedule.every !== undefined) out.every = parseDuration(schedule.every);
  if (schedule.timezone !== undefined) out.timezone = schedule.timezone;
  if (schedule.window !== undefined) {
    const window = parseWindow(schedule.window);
    out.window = { start: formatTimeOfDay(window.startMinutes), durationMs: window.durationMs };
  }
  return out;
}

export interface SyncPolicySchedulesResult {
  created: number;
  /** Timing changed: planned again from now. */
  changed: number;
  /** Unchanged timing: state kept. */
  kept: number;
  removed: number;
  /**
   * The policy's clients that are not in the catalog yet (no agent registered): they get no
   * schedules now; sync again when one registers.
   */
  unknownClients: string[];
}

/**
 * Makes the catalog's schedules those of an applied Policy document: one row per (client,
 * schedule name) for each of its clients the catalog knows. A row whose timing is unchanged keeps
 * its state (a re-apply queues nothing again and forgets no missed run); one whose timing changed
 * starts again at `now`; the policy's other rows go. Pass the transaction that applies the
 * document as `catalog`, so that both commit together. Wake the scheduler loop afterwards.
 */
export async function syncPolicySchedules(catalog: CatalogQueries, policy: Pick<PolicyDocument, 'metadata' | 'spec'>, options: { now?: number } = {}): Promise<SyncPolicySchedulesResult> {
  const name = policy.metadata.name;
  const timings = policy.spec.schedules.map((s) => {
    try {
      return scheduleTimingFrom(s);
    } catch (e) {
      throw new CofferError('INVALID_CONFIG', `Cannot set the schedules of policy ${name}: schedule ${s.name}: ${(e as Error).message}`, { cause: e, hint: (e as CofferError).hint });
    }
  });
  const tests = policy.spec.restoreTests;
  let testTiming: Schedule | undefined;
  if (tests !== undefined) {
    try {
      testTiming = scheduleTimingFrom({ name: 'restore-test', level: 'full', every: tests.every, calendar: tests.calendar, timezone: tests.timezone, missed: tests.missed });
    } catch (e) {
      throw new CofferError('INVALID_CONFIG', `Cannot set the restore tests of policy ${name}: ${(e as Error).message}`, { cause: e, hint: (e as CofferError).hint });
    }
  }
  return catalog.transaction(async (tx) => {
    const registered = await tx.clients.registered(policy.spec.clients);
    const known: string[] = [];
    const unknownClients: string[] = [];
    for (const client of policy.spec.clients) (registered.has(client) ? known : unknownClients).push(client);
    const entries: ScheduleEntry[] = known.flatMap((client) => policy.spec.schedules.map((s, i) => {
      const lifecycle = s.lifecycle ?? policy.spec.lifecycle;
      return { client, name: s.name, timing: { ...timings[i]! }, level: s.level, ...(lifecycle === undefined ? {} : { lifecycle }) };
    }));
    if (testTiming !== undefined) {
      for (const client of known) entries.push({ client, name: RESTORE_TEST_SCHEDULE, timing: { ...testTiming }, level: RESTORE_TEST_LEVEL });
    }
    const { created, changed, kept, removed } = await tx.schedules.sync(name, entries, options);
    return { created, changed, kept, removed, unknownClients };
  });
}

/** A schedule as `coffer get schedules` shows it. */
export interface UpcomingSchedule {
  id: string;
  policy: string;
  client: string;
  name: string;
  level: string;
  lifecycle: string | undefined;
  /** The zone its calendar and window are read in (the server's when the schedule names none). */
  timezone: string;
  calendar: string | undefined;
  /** every, in ms. */
  every: number | undefined;
  window: { start: string; durationMs: number } | undefined;
  missed: string;
  /** The next regular runs after now: slot, and when each may start and may start no more. */
  runs: UpcomingRun[];
  /** When the scheduler next looks at it: the next run, or the opening of a pending catch-up's window; undefined: never. */
  nextRun: number | undefined;
  lastSlot: number | undefined;
  /** What became of the last slot: queued, missed or caught-up. */
  lastState: string | undefined;
  /** Why it cannot run (a bad calendar or time zone), as { code, message, hint }. */
  error: Record<string, unknown> | undefined;
}

export interface UpcomingOptions {
  policy?: string;
  client?: string;
  /** Runs after this instant. */
  now: number;
  /** The server's time zone, for schedules without one. */
  timezone: string;
  /** Runs listed per schedule (default 3). */
  count?: number;
  /** As given to the scheduler loop; default one hour. */
  graceMs?: number;
  /** Schedules per page (1..1000, default 100) and the previous page's `next`. */
  limit?: number;
  cursor?: string;
}

/** Each schedule's next runs and window, by policy, client and name, a page at a time. */
export async function upcoming(catalog: Pick<Catalog, 'schedules'>, options: UpcomingOptions): Promise<Page<UpcomingSchedule>> {
  const page = await catalog.schedules.list({
    ...(options.policy === undefined ? {} : { policy: options.policy }),
    ...(options.client === undefined ? {} : { client: options.client }),
    ...(options.limit === undefined ? {} : { limit: options.limit }),
    ...(options.cursor === undefined ? {} : { cursor: options.cursor }),
  });
  const items = page.items.map((s): UpcomingSchedule => {
    const timing = s.timing as unknown as Schedule;
    let runs: UpcomingRun[] = [];
    let error = s.error;
    try {
      runs = upcomingRuns(timing, { from: options.now, count: options.count ?? 3, timezone: options.timezone, ...(options.graceMs === undefined ? {} : { graceMs: options.graceMs }) });
    } catch (e) {
      error ??= e instanceof CofferError ? e.toJSON() : { code: 'INTERNAL', message: String(e) };
    }
    return {
      id: s.id, policy: s.policy, client: s.client, name: s.name, level: s.level, lifecycle: s.lifecycle,
      timezone: timing.timezone ?? options.timezone,
      calendar: timing.calendar, every: timing.every, window: timing.window, missed: timing.missed,
      runs,
      nextRun: s.state.nextRun ?? undefined, lastSlot: s.state.lastSlot ?? undefined, lastState: s.state.lastState ?? undefined,
      error,
    };
  });
  return page.next === undefined ? { items } : { items, next: page.next };
}
