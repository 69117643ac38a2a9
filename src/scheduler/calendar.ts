// When a schedule's runs fall due: its slots (calendar or frequency), their windows, and the DST
// rules. Pure: times are epoch milliseconds passed in, nothing reads the clock or the process's
// time zone, and nothing here imports node:*.
//
// The model (docs/server.md has no scheduling section yet; this is where the rules are stated):
// - A schedule has slots, instants at which a run is meant to happen. A calendar (cron, croner's
//   syntax) names wall-clock times in the schedule's time zone; a frequency (`every`) names
//   elapsed time, slots at anchor + k * every (the anchor defaults to the epoch), so restarts and
//   time zones never move them.
// - DST, for calendars: every wall-clock time the calendar names runs once. A time that occurs
//   twice (clocks go back) runs at its first occurrence only; a time that does not occur (clocks
//   go forward) runs at the first instant after the gap (02:30 in Berlin's spring gap runs at
//   03:00 CEST), and several times that land on the same instant are one slot. So an hourly
//   calendar runs 23 times on the spring day (no hour is lost: 01:00 CET to 03:00 CEST is one
//   hour) and 24 times on the 25-hour autumn day, leaving one two-hour gap after the repeated
//   hour's first pass. Whoever wants a run every real hour writes `every: 1h`.
//   (croner's own rule runs wildcard patterns on both passes and skips their gap times; the
//   calendar here asks croner about wall times only, in UTC, and applies the rule above itself.)
// - A slot is due during one interval: with a window, from the slot (or the window's opening, if
//   the slot falls outside a window) until the window closes or the next slot comes; without a
//   window, from the slot until the next slot or the grace (default one hour) has passed. A slot
//   whose next slot comes before its window opens has no due interval: it is not a run at all (an
//   hourly frequency with a window from 22:00 to 06:00 runs at 22:00, 23:00, ..., 05:00).
// - A window opens daily at a wall-clock time (by the same DST rule) and lasts `durationMs` of
//   elapsed time: an 8-hour window from 22:00 closes at 05:00 or 07:00 on DST nights.
import { Cron } from 'croner';
import { CofferError } from '../core/errors.ts';
import { TimeZone } from './time-zone.ts';

const MINUTE = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
/** Without a window, how long after its time a slot may still start (at most until the next slot). */
export const DEFAULT_GRACE_MS = HOUR;

/** When a schedule runs: a policy's schedule without what it runs. */
export interface ScheduleTiming {
  /** Cron, 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, in croner's syntax. */
  calendar?: string;
  /** A frequency: one slot every this many milliseconds of elapsed time (at least one second). */
  every?: number;
  /** The instant `every` slots are counted from (epoch milliseconds); default 0, the epoch. */
  anchor?: number;
  /** IANA name; default the server's. */
  timezone?: string;
  /** Runs start only inside this daily window: opening at `start` (local "HH:MM"), lasting `durationMs`. */
  window?: { start: string; durationMs: number };
}

/** A half-open interval of instants: [start, end). */
export interface Interval {
  start: number;
  end: number;
}

export interface CalendarOptions {
  /** The server's time zone, for timings without one. */
  timezone: string;
  /** Without a window, how long a slot stays due at most; default DEFAULT_GRACE_MS. */
  graceMs?: number;
}

/** A compiled schedule timing: its slots, windows and due intervals. */
export interface Calendar {
  readonly timezone: string;
  readonly hasWindow: boolean;
  /** The first slot after t, or null if there is none. */
  nextSlot(t: number): number | null;
  /** The last slot at or before t, or null if there is none. */
  prevSlot(t: number): number | null;
  /** The window that is open at t, or else the next one to open; null without a window. */
  windowAt(t: number): Interval | null;
  /** The last window that closed at or before t; null without a window. */
  windowBefore(t: number): Interval | null;
  /** When `slot` may start, given the slot after it (looked up when left out); null if never. */
  due(slot: number, next?: number | null): Interval | null;
}

// Compiling parses cron (~50 µs in croner) and checks the zone; 30,000 schedules share a few
// hundred timings, so compiled calendars are kept, up to a bound.
const compiled = new Map<string, Calendar>();
const MAX_COMPILED = 10_000;

/** Compiles a timing; throws INVALID_CONFIG for a bad calendar, frequency, time zone or window. */
export function compileCalendar(timing: ScheduleTiming, options: CalendarOptions): Calendar {
  const key = JSON.stringify([timing.calendar, timing.every, timing.anchor, timing.timezone,
    timing.window?.start, timing.window?.durationMs, options.timezone, options.graceMs]);
  const known = compiled.get(key);
  if (known) return known;
  const zone = TimeZone.of(timing.timezone ?? options.timezone);
  const graceMs = options.graceMs ?? DEFAULT_GRACE_MS;
  if (!(graceMs > 0)) throw invalid(`the grace of ${graceMs} ms is not positive`, 'Give graceMs in milliseconds, e.g. 3600000 for one hour.');
  const slots = slotsOf(timing, zone);
  const window = timing.window === undefined ? null : windowOf(timing.window);
  const calendar = new CompiledCalendar(zone, slots, window, graceMs);
  if (compiled.size >= MAX_COMPILED) compiled.clear();
  compiled.set(key, calendar);
  return calendar;
}

interface Slots {
  next(t: number): number | null;
  prev(t: number): number | null;
}

function invalid(problem: string, hint: string, details?: Record<string, unknown>): CofferError {
  return new CofferError('INVALID_CONFIG', `Cannot use the schedule: ${problem}`, { hint, details });
}

function slotsOf(timing: ScheduleTiming, zone: TimeZone): Slots {
  if ((timing.calendar === undefined) === (timing.every === undefined)) {
    throw invalid('it needs exactly one of calendar and every',
      'Write either calendar: "0 1 * * *" (cron) or every: 12h (a frequency), not both.');
  }
  if (timing.every !== undefined) {
    const { every } = timing;
    const anchor = timing.anchor ?? 0;
    if (!Number.isSafeInteger(every) || every < 1000) {
      throw invalid(`every ${every} ms is not a whole number of milliseconds of at least one second`,
        'Write a frequency such as every: 12h or every: 30m.', { every });
    }
    if (!Number.isSafeInteger(anchor)) throw invalid(`the anchor ${anchor} is not an instant in milliseconds`, 'Leave anchor out to count from the epoch.');
    return {
      next: (t) => anchor + (Math.floor((t - anchor) / every) + 1) * every,
      prev: (t) => anchor + Math.floor((t - anchor) / every) * every,
    };
  }
  return cronSlots(timing.calendar!, zone);
}

function cronSlots(pattern: string, zone: TimeZone): Slots {
  const hint = 'Write cron with 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, e.g. "0 1 * * *" for 01:00 every day.';
  // croner replaces '?' with the time the pattern is parsed, which would make slots depend on
  // when the server started.
  if (typeof pattern !== 'string' || pattern.includes('?')) {
    throw invalid(`the calendar '${pattern}' is not valid cron ('?' is not supported)`, hint, { calendar: pattern });
  }
  let cron: Cron;
  try {
    // UTC at offset 0: croner walks wall times only; the zone and its DST are applied here.
    cron = new Cron(pattern, { utcOffset: 0, mode: '5-or-6-parts' });
  } catch (e) {
    throw new CofferError('INVALID_CONFIG', `Cannot use the schedule: the calendar '${pattern}' is not valid cron (${(e as Error).message})`, {
      cause: e, hint, details: { calendar: pattern },
    });
  }
  const nextWall = (w: number) => cron.nextRun(new Date(w))?.getTime() ?? null;
  // The search for the next wall time is bounded by the DST shift around t: a wall time at or
  // before t + (smallest offset) stands for an instant at or before t, one after t + (largest
  // offset) for an instant after t. Between the two, resolving decides. This assumes at most one
  // offset change within a day of t.
  const offsets = (t: number) => {
    const a = zone.offsetAt(t - DAY), b = zone.offsetAt(t), c = zone.offsetAt(t + DAY);
    return { low: Math.min(a, b, c), high: Math.max(a, b, c) };
  };
  return {
    next(t) {
      let from = t + offsets(t).low;
      for (;;) {
        const wall = nextWall(from);
        if (wall === null) return null;
        const slot = zone.resolve(wall);
        if (slot > t) return slot;
        // `slot` is at or before t: every wall time up to t + (its offset) is too (the first pass
        // through a repeated hour, or a gap that closed before t).
        from = Math.max(wall, t + zone.offsetAt(slot));
      }
    },
    prev(t) {
      const { low, high } = offsets(t);
      const wall = cron.previousRuns(1, new Date(t + low + 1))[0]?.getTime() ?? null;
      let best = wall === null ? null : zone.resolve(wall);
      if (high === low) return best;
      let from = wall ?? t + low;
      for (;;) {
        const later = nextWall(from);
        if (later === null || later > t + high) return best;
        const slot = zone.resolve(later);
        if (slot > t) return best;
        best = slot;
        from = later;
      }
    },
  };
}

interface Window {
  startMs: number;
  durationMs: number;
}

function windowOf(window: { start: string; durationMs: number }): Window {
  const m = /^(\d{1,2}):(\d{2})$/.exec(String(window.start));
  const hours = m ? Number(m[1]) : NaN;
  const minutes = m ? Number(m[2]) : NaN;
  if (!(hours <= 23 && minutes <= 59)) {
    throw invalid(`the window start '${window.start}' is not a time of day`, 'Write the window\'s start as HH:MM, e.g. "22:00".', { start: window.start });
  }
  const { durationMs } = window;
  if (!Number.isSafeInteger(durationMs) || durationMs < MINUTE || durationMs >= DAY) {
    throw invalid(`a window of ${durationMs} ms is not between one minute and one day`,
      'Give the window a duration such as 6h; a window of a day or more is no window: leave it out.', { durationMs });
  }
  return { startMs: hours * HOUR + minutes * MINUTE, durationMs };
}

class CompiledCalendar implements Calendar {
  readonly timezone: string;
  readonly hasWindow: boolean;
  private readonly zone: TimeZone;
  private readonly slots: Slots;
  private readonly window: Window | null;
  private readonly graceMs: number;
  // In one tick every row of a calendar asks about the same instants (now, its slots); croner's
  // search costs 5-30 µs, a lookup here well under one. See bench/scheduler.ts.
  private readonly nextMemo = new Map<number, number | null>();
  private readonly prevMemo = new Map<number, number | null>();

  constructor(zone: TimeZone, slots: Slots, window: Window | null, graceMs: number) {
    this.zone = zone;
    this.timezone = zone.name;
    this.slots = slots;
    this.window = window;
    this.hasWindow = window !== null;
    this.graceMs = graceMs;
  }

  nextSlot(t: number): number | null {
    return memo(this.nextMemo, t, this.slots.next);
  }

  prevSlot(t: number): number | null {
    return memo(this.prevMemo, t, this.slots.prev);
  }

  windowAt(t: number): Interval | null {
    if (!this.window) return null;
    const day = this.dayOf(t);
    // A window opened at most a day (plus a DST hour) before t: its wall date is at most two
    // before t's; tomorrow's window always closes after t.
    for (let k = -2; k <= 0; k++) {
      const w = this.windowOn(day + k * DAY);
      if (w.end > t) return w;
    }
    return this.windowOn(day + DAY);
  }

  windowBefore(t: number): Interval | null {
    if (!this.window) return null;
    const day = this.dayOf(t);
    for (let k = 0; k > -3; k--) {
      const w = this.windowOn(day + k * DAY);
      if (w.end <= t) return w;
    }
    return this.windowOn(day - 3 * DAY);
  }

  due(slot: number, next: number | null = this.nextSlot(slot)): Interval | null {
    const limit = next ?? Infinity;
    if (!this.window) return { start: slot, end: Math.min(limit, slot + this.graceMs) };
    const w = this.windowAt(slot)!;
    const start = Math.max(slot, w.start);
    const end = Math.min(w.end, limit);
    return start < end ? { start, end } : null;
  }

  /** The wall time of local midnight on t's local date. */
  private dayOf(t: number): number {
    return Math.floor(this.zone.wall(t) / DAY) * DAY;
  }

  /** The window opening on the local date whose midnight is `day` (a wall time). */
  private windowOn(day: number): Interval {
    const start = this.zone.resolve(day + this.window!.startMs);
    return { start, end: start + this.window!.durationMs };
  }
}

const MAX_MEMO = 256;

function memo(cache: Map<number, number | null>, t: number, compute: (t: number) => number | null): number | null {
  const known = cache.get(t);
  if (known !== undefined) return known;
  const value = compute(t);
  if (cache.size >= MAX_MEMO) cache.clear();
  cache.set(t, value);
  return value;
}
