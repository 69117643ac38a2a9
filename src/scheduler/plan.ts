// What the scheduler does at one moment: for each schedule and its stored state, which slot to
// queue now, which slots were missed, and when the schedule next needs a look. Pure and
// deterministic: the same rows and `now` always give the same decisions, and a slot at or before
// the state's lastSlot is never queued again, so double ticks, restarts and two schedulers racing
// (the store's compare-and-set settles that race) never queue one slot twice.
//
// The rules (slots and due intervals are calendar.ts's):
// - A slot is queued when a tick falls inside its due interval, with the slot as its identity and
//   the interval's end as the latest time the queue may start it.
// - A slot whose due interval ended before any tick saw it was missed (downtime, or a paused
//   server). Every missed slot is reported, up to `maxMissed` per decision (the latest ones).
// - After missed slots, `missed: skip` waits for the next slot. `missed: catch-up` runs the latest
//   missed slot once, as soon as a window is open (at once without a window), unless a regular
//   slot is due now or becomes due before that window closes (without a window: within the grace),
//   in which case that run is the catch-up.
// - Slots whose due interval ended before the schedule took effect (`since`) do not count: a new
//   schedule reports nothing missed from before it existed, and runs a slot that is due when it
//   is applied.
import { CofferError, toCofferError } from '../core/errors.ts';
import { compileCalendar, DEFAULT_GRACE_MS, type Calendar, type Interval, type ScheduleTiming } from './calendar.ts';

export type MissedPolicy = 'catch-up' | 'skip';
/** What happened to a schedule's lastSlot: queued in time, missed (not caught up), or queued late as the catch-up. */
export type SlotState = 'queued' | 'missed' | 'caught-up';

/** A policy's schedule, as far as timing goes. */
export interface Schedule extends ScheduleTiming {
  missed: MissedPolicy;
}

/** The stored state of one (policy, client, schedule) row. */
export interface ScheduleState {
  /** When the schedule took effect (created or changed), epoch ms. */
  since: number;
  /** The latest slot decided (queued, missed or caught up); no slot at or before it is queued again. */
  lastSlot: number | null;
  lastState: SlotState | null;
  /** When the schedule next needs planning: its next run, or the opening of the window a catch-up
   * waits for. null: never (a calendar with no future slot). A new row starts with `since`. */
  nextRun: number | null;
}

export interface ScheduleRow {
  /** The row's identity, e.g. "policy/client/schedule"; decisions carry it back. */
  id: string;
  schedule: Schedule;
  state: ScheduleState;
}

export interface QueuedSlot {
  /** The slot's instant: the job's identity together with the row's id. */
  slot: number;
  /** The queue must not start the job before this instant (the window opens); at most the tick's now. */
  notBefore: number;
  /** The queue must not start the job at or after this instant (the window closes); a job not
   * started by then is a missed run. */
  notAfter: number;
  /** True when this runs a missed slot late, after downtime. */
  catchUp: boolean;
}

export interface Decision {
  id: string;
  /** The `now` the decision was made at (when the job was queued, the slots found missed). */
  at: number;
  /** The state the decision was made from: the store applies the decision only if the row still has it. */
  previous: ScheduleState;
  /** The state to store. */
  state: ScheduleState;
  /** The job to queue, if any (at most one per row and call). */
  queue: QueuedSlot | null;
  /** Slots newly missed, latest first. */
  missed: number[];
  /** True when more slots were missed than `missed` lists. */
  missedTruncated: boolean;
  /** A schedule that cannot be planned (bad calendar or zone); its nextRun is null. */
  error: CofferError | null;
}

export interface PlanOptions {
  now: number;
  /** The server's time zone, for schedules without one. */
  timezone: string;
  /** Without a window, how long after its time a slot may still start; default one hour. */
  graceMs?: number;
  /** At most this many missed slots are listed per decision; default 1000. */
  maxMissed?: number;
}

/** Decides, for each row, what to queue, what was missed, and when to look again. */
export function plan(rows: readonly ScheduleRow[], options: PlanOptions): Decision[] {
  return rows.map((row) => planRow(row, options));
}

/** plan() for one row. */
export function planRow(row: ScheduleRow, options: PlanOptions): Decision {
  const { state } = row;
  try {
    if (row.schedule.missed !== 'catch-up' && row.schedule.missed !== 'skip') {
      throw new CofferError('INVALID_CONFIG', `Cannot use the schedule: missed is '${String(row.schedule.missed)}'`, {
        hint: 'Write missed: catch-up (one run after downtime) or missed: skip (wait for the next slot).',
      });
    }
    const calendar = compileCalendar(row.schedule, { timezone: options.timezone, graceMs: options.graceMs });
    return decide(row, calendar, options);
  } catch (e) {
    return {
      id: row.id, at: options.now, previous: state, state: { ...state, nextRun: null }, queue: null,
      missed: [], missedTruncated: false, error: toCofferError(e),
    };
  }
}

interface DueSlot {
  slot: number;
  due: Interval;
}

function decide(row: ScheduleRow, calendar: Calendar, options: PlanOptions): Decision {
  const { now } = options;
  const { state } = row;
  const maxMissed = options.maxMissed ?? 1000;
  const firstAfter = calendar.nextSlot(now);
  let nextDue = firstDue(calendar, firstAfter);

  // Walk back from now over the slots not yet decided: the one due now, those missed.
  let dueNow: DueSlot | null = null;
  const missed: number[] = [];
  let missedTruncated = false;
  let later = firstAfter;
  let slot = calendar.prevSlot(now);
  while (slot !== null && (state.lastSlot === null || slot > state.lastSlot)) {
    const due = calendar.due(slot, later);
    if (due === null) {
      // No window between this slot and the next: neither are the slots back to the last window
      // that closed (their window is the same one, which opens after their next slot).
      const window = calendar.windowBefore(slot)!;
      if (window.end <= state.since) break;
      const earlier = calendar.prevSlot(Math.min(window.end, slot) - 1);
      later = earlier === null ? null : calendar.nextSlot(earlier);
      slot = earlier;
      continue;
    }
    // Due intervals follow the slots' order: all earlier ones ended before the schedule began too.
    if (due.end <= state.since) break;
    if (due.start > now) nextDue = { slot, due };
    else if (due.end > now) dueNow = { slot, due };
    else if (missed.length === maxMissed) {
      missedTruncated = true;
      break;
    } else missed.push(slot);
    later = slot;
    slot = calendar.prevSlot(slot - 1);
  }

  let lastSlot = state.lastSlot;
  let lastState = state.lastState;
  if (missed.length > 0) {
    lastSlot = missed[0]!;
    lastState = 'missed';
  }
  let queue: QueuedSlot | null = null;
  let nextRun = nextDue?.due.start ?? null;
  if (dueNow) {
    queue = { slot: dueNow.slot, notBefore: dueNow.due.start, notAfter: dueNow.due.end, catchUp: false };
    lastSlot = dueNow.slot;
    lastState = 'queued';
  } else if (row.schedule.missed === 'catch-up' && lastState === 'missed' && lastSlot !== null) {
    const chance = catchUpInterval(calendar, now, options.graceMs);
    const absorbed = nextDue !== null && nextDue.due.start < chance.end;
    if (!absorbed) {
      if (chance.start <= now) {
        queue = { slot: lastSlot, notBefore: now, notAfter: chance.end, catchUp: true };
        lastState = 'caught-up';
      } else {
        nextRun = chance.start;
      }
    }
  }
  return {
    id: row.id, at: now, previous: state, state: { since: state.since, lastSlot, lastState, nextRun },
    queue, missed, missedTruncated, error: null,
  };
}

/** The first slot from `slot` on that has a due interval. */
function firstDue(calendar: Calendar, slot: number | null): DueSlot | null {
  while (slot !== null) {
    const next = calendar.nextSlot(slot);
    const due = calendar.due(slot, next);
    if (due) return { slot, due };
    // The window opens after the next slot: skip to the last slot before it opens (never back).
    const skip = calendar.prevSlot(calendar.windowAt(slot)!.start);
    slot = skip !== null && skip > slot ? skip : next;
  }
  return null;
}

/** When a catch-up decided at `at` may run: the window open at `at` or the next one; without a window, the grace from `at`. */
function catchUpInterval(calendar: Calendar, at: number, graceMs = DEFAULT_GRACE_MS): Interval {
  return calendar.windowAt(at) ?? { start: at, end: at + graceMs };
}

/** A queued job as far as its timing goes. */
export interface JobSlot {
  slot: number;
  /** A catch-up runs a missed slot late: its interval is the one after `queuedAt`, not the slot's own. */
  catchUp?: boolean;
  /** When it was queued; needed for a catch-up. */
  queuedAt?: number;
}

export type WindowState = 'before' | 'open' | 'closed';

export interface WindowStateOptions {
  now: number;
  /** The server's time zone, for schedules without one. */
  timezone: string;
  /** As given to the loop; default one hour. */
  graceMs?: number;
}

/**
 * Whether a queued job of `schedule` may start at `options.now`: 'before' its window opens, 'open',
 * or 'closed' (its window has closed: it is a missed run, and the queue records it so). The queue
 * calls this before it starts a scheduled job. Throws INVALID_CONFIG for a schedule that cannot be
 * compiled.
 */
export function windowState(schedule: ScheduleTiming, job: number | JobSlot, options: WindowStateOptions): WindowState {
  const interval = dueInterval(schedule, job, options);
  if (interval === null || options.now >= interval.end) return 'closed';
  return options.now < interval.start ? 'before' : 'open';
}

/** The interval in which a queued job may start (see windowState()); null if it never may. */
export function dueInterval(schedule: ScheduleTiming, job: number | JobSlot, options: Omit<WindowStateOptions, 'now'>): Interval | null {
  const calendar = compileCalendar(schedule, { timezone: options.timezone, graceMs: options.graceMs });
  const { slot, catchUp, queuedAt } = typeof job === 'number' ? { slot: job } : job;
  if (!catchUp) return calendar.due(slot);
  if (queuedAt === undefined) {
    throw new CofferError('INTERNAL', 'Cannot tell the window of a catch-up run: it has no queuedAt', {
      hint: 'This is a bug in the job queue: pass the time the job was queued.',
    });
  }
  return catchUpInterval(calendar, queuedAt, options.graceMs);
}

/** One upcoming run of a schedule: its slot and when it may start. */
export interface UpcomingRun {
  slot: number;
  /** When the run may start: the slot, or its window's opening. */
  start: number;
  /** When it may start no more. */
  end: number;
}

/**
 * The next `count` runs that start after `from` (for `coffer get schedules`). Regular slots only: a
 * pending catch-up shows in the row's nextRun. Throws INVALID_CONFIG for a bad schedule.
 */
export function upcomingRuns(schedule: ScheduleTiming, options: { from: number; count: number; timezone: string; graceMs?: number }): UpcomingRun[] {
  const calendar = compileCalendar(schedule, { timezone: options.timezone, graceMs: options.graceMs });
  const runs: UpcomingRun[] = [];
  // A slot at or before `from` whose window opens later is upcoming too.
  const before = calendar.prevSlot(options.from);
  let next = before === null ? calendar.nextSlot(options.from) : before;
  while (runs.length < options.count) {
    const due = firstDue(calendar, next);
    if (due === null) break;
    if (due.due.start > options.from) runs.push({ slot: due.slot, start: due.due.start, end: due.due.end });
    next = calendar.nextSlot(due.slot);
  }
  return runs;
}
