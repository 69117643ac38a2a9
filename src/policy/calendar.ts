// Checks the calendars and time zones of schedules with croner, the library the scheduler runs
// them with, so that a calendar apply accepts is one the scheduler can run: same dialect, same
// options (CRON_OPTIONS). Also the longest gap a set of schedules leaves, which is what a policy's
// RPO is checked against.

import { Cron, type CronOptions } from 'croner';
import { didYouMean } from './did-you-mean.ts';

/**
 * The cron dialect of `calendar:`: five fields (minute hour day-of-month month day-of-week) or six
 * with seconds first; names (SUN, JAN), ranges, lists, steps, L, W and # as croner reads them,
 * and the nicknames @yearly, @monthly, @weekly, @daily, @hourly. Day of month and day of week
 * combine with OR, as in Vixie cron. The scheduler must use these same options.
 */
export const CRON_OPTIONS = { mode: '5-or-6-parts', domAndDow: false } as const satisfies CronOptions;

/** A calendar that fires more often than this is a mistake (`* * * * * *` is every second). */
export const MIN_CALENDAR_INTERVAL_MS = 60_000;

export type CheckResult = { ok: true } | { ok: false; problem: string; hint?: string };

/** Whether `expression` is a calendar the scheduler can run, and if not, why. */
export function checkCalendar(expression: string, options: { timezone?: string } = {}): CheckResult {
  const shown = JSON.stringify(expression);
  let cron: Cron;
  try {
    cron = new Cron(expression, { ...CRON_OPTIONS, paused: true, ...(options.timezone === undefined ? {} : { timezone: options.timezone }) });
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).replace(/^Cron\w*:\s*/, '').replace(/dayOfWeek/g, 'day of week').replace(/dayOfMonth/g, 'day of month');
    return {
      ok: false,
      problem: `${shown} is not a valid cron expression (${why.charAt(0).toLowerCase()}${why.slice(1)})`,
      hint: 'Write five fields, minute hour day-of-month month day-of-week, e.g. "0 1 * * *" (01:00 every day) or "0 2 * * 0" (02:00 on Sundays); six with seconds first.',
    };
  }
  // A fixed reference time keeps validation the same whenever it runs.
  const from = new Date(Date.UTC(2026, 0, 1));
  const runs = cron.nextRuns(3, from);
  if (runs.length === 0) return { ok: false, problem: `${shown} never fires (no such date)`, hint: 'Check the day of month against the month, e.g. there is no 30 February.' };
  for (let i = 1; i < runs.length; i++) {
    if (runs[i]!.getTime() - runs[i - 1]!.getTime() < MIN_CALENDAR_INTERVAL_MS) {
      return { ok: false, problem: `${shown} fires more often than once a minute`, hint: 'Six fields put seconds first: "0 */5 * * * *" is every 5 minutes.' };
    }
  }
  return { ok: true };
}

let zones: string[] | undefined;

/** Whether `zone` is an IANA time zone name this runtime knows (Europe/Berlin, UTC), with a hint if not. */
export function checkTimezone(zone: string): CheckResult {
  // Intl also takes offsets such as "+01:00"; they do not follow daylight saving time, which is
  // the whole point of naming a zone, so only names are accepted.
  let known = /^[A-Za-z]/.test(zone);
  if (known) {
    try {
      new Intl.DateTimeFormat('en', { timeZone: zone });
    } catch {
      known = false;
    }
  }
  if (known) return { ok: true };
  zones ??= Intl.supportedValuesOf('timeZone');
  const guess = didYouMean(zone, [...zones, 'UTC']);
  return {
    ok: false,
    problem: `${JSON.stringify(zone)} is not a time zone`,
    hint: guess === undefined ? 'Write an IANA time zone name, e.g. Europe/Berlin, America/New_York or UTC.' : `Did you mean ${JSON.stringify(guess)}?`,
  };
}

/** The part of a schedule that says when it runs. */
export interface ScheduleTiming {
  calendar?: string;
  /** Milliseconds between runs, for `every:` schedules. */
  everyMs?: number;
  timezone?: string;
}

/**
 * The longest time between two runs of any of `schedules` together, looking `horizonMs` ahead of
 * `from` (a gap cut by either end counts as at least its visible length). `every` schedules count
 * as their interval, as their phase is not known in advance. Backup windows are not considered:
 * the scheduler may start a run later than its calendar says.
 */
export function longestGap(schedules: readonly ScheduleTiming[], options: { from: Date; horizonMs: number }): number {
  const start = options.from.getTime();
  let end = start + options.horizonMs;
  let everyGap = Infinity;
  const times: number[] = [];
  for (const s of schedules) {
    if (s.everyMs !== undefined) everyGap = Math.min(everyGap, s.everyMs);
    if (s.calendar === undefined) continue;
    let cron: Cron;
    try {
      cron = new Cron(s.calendar, { ...CRON_OPTIONS, paused: true, ...(s.timezone === undefined ? {} : { timezone: s.timezone }) });
    } catch {
      continue;
    }
    let prev: Date = options.from;
    // Enough runs for any gap that matters to show; a schedule that fires more often than this
    // within the horizon shortens the horizon instead, so that its last run is not taken for a gap.
    for (let n = 0; ; n++) {
      if (n === 5000) {
        end = Math.min(end, prev.getTime());
        break;
      }
      const next = cron.nextRun(prev);
      if (next === null || next.getTime() > end) break;
      times.push(next.getTime());
      prev = next;
    }
  }
  if (times.length === 0) return everyGap;
  times.sort((a, b) => a - b);
  while (times.length > 0 && times[times.length - 1]! > end) times.pop();
  let gap = Math.max(times[0]! - start, end - times[times.length - 1]!);
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!);
  return Math.min(gap, everyGap);
}
