import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { compileCalendar, type ScheduleTiming } from './calendar.ts';
import { TimeZone } from './time-zone.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const at = (iso: string) => Date.parse(iso);

/** The slots in [from, to). */
function slots(timing: ScheduleTiming, from: number, to: number): number[] {
  const calendar = compileCalendar(timing, { timezone: 'UTC' });
  const out: number[] = [];
  for (let t = calendar.nextSlot(from - 1); t !== null && t < to; t = calendar.nextSlot(t)) out.push(t);
  return out;
}

// Each case: the zone, the local date, and for daily 01:30, 02:30 and 03:00 the one instant each runs.
const DST_DAYS = [
  // Berlin, spring: 02:00 CET becomes 03:00 CEST; 02:30 runs at the first instant after the gap.
  { zone: 'Europe/Berlin', date: '2026-03-29', hours: 23, runs: ['2026-03-29T00:30:00Z', '2026-03-29T01:00:00Z', '2026-03-29T01:00:00Z'] },
  // Berlin, autumn: 03:00 CEST becomes 02:00 CET; 02:30 runs at its first occurrence only.
  { zone: 'Europe/Berlin', date: '2026-10-25', hours: 24, runs: ['2026-10-24T23:30:00Z', '2026-10-25T00:30:00Z', '2026-10-25T02:00:00Z'] },
  // Berlin on New York's change days: nothing special.
  { zone: 'Europe/Berlin', date: '2026-03-08', hours: 24, runs: ['2026-03-08T00:30:00Z', '2026-03-08T01:30:00Z', '2026-03-08T02:00:00Z'] },
  { zone: 'Europe/Berlin', date: '2026-11-01', hours: 24, runs: ['2026-11-01T00:30:00Z', '2026-11-01T01:30:00Z', '2026-11-01T02:00:00Z'] },
  // New York, spring: 02:00 EST becomes 03:00 EDT.
  { zone: 'America/New_York', date: '2026-03-08', hours: 23, runs: ['2026-03-08T06:30:00Z', '2026-03-08T07:00:00Z', '2026-03-08T07:00:00Z'] },
  // New York, autumn: 02:00 EDT becomes 01:00 EST; 01:30 runs at its first occurrence (EDT) only.
  { zone: 'America/New_York', date: '2026-11-01', hours: 24, runs: ['2026-11-01T05:30:00Z', '2026-11-01T07:30:00Z', '2026-11-01T08:00:00Z'] },
  { zone: 'America/New_York', date: '2026-03-29', hours: 24, runs: ['2026-03-29T05:30:00Z', '2026-03-29T06:30:00Z', '2026-03-29T07:00:00Z'] },
  { zone: 'America/New_York', date: '2026-10-25', hours: 24, runs: ['2026-10-25T05:30:00Z', '2026-10-25T06:30:00Z', '2026-10-25T07:00:00Z'] },
];

/** The local date of instant t in zone, as YYYY-MM-DD. */
function localDate(t: number, zone: string): string {
  return new Intl.DateTimeFormat('en-CA', { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(t);
}

describe('calendars across DST changes', () => {
  for (const c of DST_DAYS) {
    const from = at(`${c.date}T00:00:00Z`) - 2 * DAY;
    const to = from + 5 * DAY;
    ['30 1 * * *', '30 2 * * *', '0 3 * * *'].forEach((cron, k) => {
      test(`daily '${cron}' in ${c.zone} on ${c.date} runs once, at ${c.runs[k]}`, () => {
        const onDay = slots({ calendar: cron, timezone: c.zone }, from, to).filter((t) => localDate(t, c.zone) === c.date);
        assert.deepEqual(onDay.map((t) => new Date(t).toISOString()), [new Date(at(c.runs[k]!)).toISOString()]);
      });
    });
    test(`hourly in ${c.zone} on ${c.date} runs ${c.hours} times, never twice for one wall-clock hour`, () => {
      const onDay = slots({ calendar: '0 * * * *', timezone: c.zone }, from, to).filter((t) => localDate(t, c.zone) === c.date);
      assert.equal(onDay.length, c.hours);
      const walls = onDay.map((t) => new Intl.DateTimeFormat('en-GB', { timeZone: c.zone, timeStyle: 'short' }).format(t));
      assert.equal(new Set(walls).size, walls.length);
      for (let i = 1; i < onDay.length; i++) assert.ok(onDay[i]! > onDay[i - 1]!);
    });
  }

  test('every 12h stays 12 real hours apart across both Berlin changes', () => {
    for (const date of ['2026-03-29', '2026-10-25']) {
      const s = slots({ every: 12 * HOUR, timezone: 'Europe/Berlin' }, at(`${date}T00:00:00Z`) - 2 * DAY, at(`${date}T00:00:00Z`) + 2 * DAY);
      assert.equal(s.length, 8);
      for (let i = 1; i < s.length; i++) assert.equal(s[i]! - s[i - 1]!, 12 * HOUR);
    }
  });

  test('prevSlot() is the last slot at or before t, nextSlot() the first after it, around the changes', () => {
    for (const c of DST_DAYS) {
      const calendar = compileCalendar({ calendar: '*/30 * * * *', timezone: c.zone }, { timezone: 'UTC' });
      const all = slots({ calendar: '*/30 * * * *', timezone: c.zone }, at(`${c.date}T00:00:00Z`) - DAY, at(`${c.date}T00:00:00Z`) + 2 * DAY);
      for (let i = 1; i < all.length - 1; i++) {
        assert.equal(calendar.prevSlot(all[i]!), all[i]);
        assert.equal(calendar.prevSlot(all[i]! - 1), all[i - 1]);
        assert.equal(calendar.nextSlot(all[i]!), all[i + 1]);
        assert.equal(calendar.nextSlot(all[i]! - 1), all[i]);
      }
    }
  });
});

describe('windows', () => {
  test('a window crossing midnight holds a slot after midnight, and closes after its duration', () => {
    const calendar = compileCalendar({ calendar: '30 0 * * *', timezone: 'UTC', window: { start: '22:00', durationMs: 4 * HOUR } }, { timezone: 'UTC' });
    assert.deepEqual(calendar.due(at('2026-06-02T00:30:00Z')), { start: at('2026-06-02T00:30:00Z'), end: at('2026-06-02T02:00:00Z') });
  });

  test('a slot before its window waits for the window to open', () => {
    const calendar = compileCalendar({ calendar: '0 18 * * *', timezone: 'UTC', window: { start: '22:00', durationMs: 6 * HOUR } }, { timezone: 'UTC' });
    assert.deepEqual(calendar.due(at('2026-06-01T18:00:00Z')), { start: at('2026-06-01T22:00:00Z'), end: at('2026-06-02T04:00:00Z') });
  });

  test('an hourly frequency with a window from 22:00 to 02:00 runs at 22, 23, 00 and 01 only', () => {
    const timing = { every: HOUR, timezone: 'Europe/Berlin', window: { start: '22:00', durationMs: 4 * HOUR } };
    const calendar = compileCalendar(timing, { timezone: 'UTC' });
    const runs = slots(timing, at('2026-06-01T12:00:00Z'), at('2026-06-02T12:00:00Z')).filter((s) => calendar.due(s) !== null);
    const walls = runs.map((t) => new Intl.DateTimeFormat('en-GB', { timeZone: 'Europe/Berlin', timeStyle: 'short' }).format(t));
    assert.deepEqual(walls, ['22:00', '23:00', '00:00', '01:00']);
  });

  test('a window lasts its duration in elapsed time on a DST night (22:00 + 8h closes at 07:00 CEST in spring)', () => {
    const calendar = compileCalendar({ calendar: '0 23 * * *', timezone: 'Europe/Berlin', window: { start: '22:00', durationMs: 8 * HOUR } }, { timezone: 'UTC' });
    const w = calendar.windowAt(at('2026-03-28T22:30:00Z'))!;
    assert.equal(w.start, at('2026-03-28T21:00:00Z'));
    assert.equal(w.end, at('2026-03-29T05:00:00Z'));
  });
});

describe('invalid schedules', () => {
  const bad: Array<[string, ScheduleTiming, RegExp]> = [
    ['a cron with a bad field', { calendar: '61 * * * *' }, /calendar '61 \* \* \* \*' is not valid cron/],
    ['a cron with too few fields', { calendar: '0 1 *' }, /is not valid cron/],
    ['a cron with ?', { calendar: '? 1 * * *' }, /'\?' is not supported/],
    ['an unknown time zone', { calendar: '0 1 * * *', timezone: 'Europe/Atlantis' }, /time zone 'Europe\/Atlantis'/],
    ['both calendar and every', { calendar: '0 1 * * *', every: HOUR }, /exactly one of calendar and every/],
    ['neither calendar nor every', {}, /exactly one of calendar and every/],
    ['a frequency under a second', { every: 10 }, /at least one second/],
    ['a window start that is no time', { every: HOUR, window: { start: '25:00', durationMs: HOUR } }, /window start '25:00'/],
    ['a window of a day', { every: HOUR, window: { start: '22:00', durationMs: DAY } }, /between one minute and one day/],
  ];
  for (const [what, timing, message] of bad) {
    test(`${what} is an INVALID_CONFIG CofferError that says what is wrong and has a hint`, () => {
      assert.throws(() => compileCalendar(timing, { timezone: 'UTC' }), (e: unknown) => {
        assert.ok(isCofferError(e, 'INVALID_CONFIG'), String(e));
        assert.match(e.message, /^Cannot use /);
        assert.match(e.message, message);
        assert.ok(e.hint);
        return true;
      });
    });
  }

  test('time zone names resolve to one canonical zone', () => {
    assert.equal(TimeZone.of('europe/berlin').name, 'Europe/Berlin');
  });
});
