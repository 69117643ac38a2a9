// Property-based tests of the scheduler (fast-check): one schedule, random DST-crossing periods of
// uptime (the loop ticking at each next run, plus stray ticks) and downtime (nothing runs).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { FakeClock } from '../testing/fake-clock.ts';
import { compileCalendar } from './calendar.ts';
import { SchedulerLoop } from './loop.ts';
import { MemoryScheduleStore } from './memory-store.ts';
import type { MissedPolicy, Schedule } from './plan.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const ZONES = ['Europe/Berlin', 'America/New_York', 'UTC', 'Australia/Lord_Howe'];
const CRONS = ['0 * * * *', '30 1 * * *', '30 2 * * *', '0 3 * * *', '*/20 * * * *', '15 1,2,3 * * *', '0 0 * * 0', '0 2 * * 1-5', '45 23 * * *'];
// Around the 2026 changes in Berlin, New York and Lord Howe (where clocks move by 30 minutes).
const STARTS = ['2026-03-07T00:00:00Z', '2026-03-28T00:00:00Z', '2026-04-04T00:00:00Z', '2026-10-03T00:00:00Z', '2026-10-24T00:00:00Z', '2026-10-31T00:00:00Z'].map(Date.parse);

const timingArb = fc.record({
  kind: fc.constantFrom('calendar', 'every'),
  calendar: fc.constantFrom(...CRONS),
  every: fc.constantFrom(30 * MINUTE, HOUR, 5 * HOUR, 12 * HOUR, DAY),
  timezone: fc.constantFrom(...ZONES),
  window: fc.option(fc.record({
    hour: fc.integer({ min: 0, max: 23 }), minute: fc.constantFrom(0, 15, 30, 45), durationMs: fc.integer({ min: 1, max: 16 }).map((h) => h * HOUR),
  }), { nil: undefined }),
  missed: fc.constantFrom<MissedPolicy>('catch-up', 'skip'),
}).map(({ kind, calendar, every, timezone, window, missed }): Schedule => ({
  ...(kind === 'calendar' ? { calendar } : { every }),
  timezone,
  missed,
  ...(window ? { window: { start: `${String(window.hour).padStart(2, '0')}:${String(window.minute).padStart(2, '0')}`, durationMs: window.durationMs } } : {}),
}));

/** Periods of uptime (with stray tick offsets) and the downtime after each, in minutes. */
const periodsArb = fc.array(fc.record({
  up: fc.integer({ min: 1, max: 3 * 24 * 60 }),
  stray: fc.array(fc.integer({ min: 0, max: 3 * 24 * 60 }), { maxLength: 5 }),
  down: fc.integer({ min: 0, max: 4 * 24 * 60 }),
}), { minLength: 1, maxLength: 4 });

interface Run {
  store: MemoryScheduleStore;
  start: number;
  lastTick: number;
  ticks: number[];
  /** [from, to] of each uptime period. */
  uptimes: Array<[number, number]>;
}

async function simulate(schedule: Schedule, start: number, periods: Array<{ up: number; stray: number[]; down: number }>): Promise<Run> {
  const clock = new FakeClock(start);
  const store = new MemoryScheduleStore();
  store.put('s', schedule, { since: start });
  const loop = new SchedulerLoop(store, clock, { timezone: 'UTC' });
  const ticks: number[] = [];
  const uptimes: Array<[number, number]> = [];
  const tick = async (t: number) => {
    clock.set(t);
    await loop.tick();
    ticks.push(t);
    const next = store.get('s')!.state.nextRun;
    assert.ok(next === null || next > t, `nextRun ${next && new Date(next).toISOString()} is not after the tick at ${new Date(t).toISOString()}`);
  };
  let t = start;
  for (const p of periods) {
    const end = t + p.up * MINUTE;
    uptimes.push([t, end]);
    const stray = p.stray.map((m) => t + m * MINUTE).filter((s) => s <= end).sort((a, b) => a - b);
    await tick(t);
    for (;;) {
      const next = store.get('s')!.state.nextRun;
      const wake = Math.min(next ?? Infinity, stray[0] ?? Infinity);
      if (wake > end) break;
      if (stray.length > 0 && stray[0]! <= wake) stray.shift();
      await tick(Math.max(wake, clock.now()));
    }
    t = end + p.down * MINUTE;
  }
  return { store, start, lastTick: ticks.at(-1)!, ticks, uptimes };
}

const iso = (t: number) => new Date(t).toISOString();

test('the next slot is strictly after t and the previous at or before it, for any t', () => {
  fc.assert(fc.property(timingArb, fc.integer({ min: Date.parse('2026-01-01T00:00:00Z'), max: Date.parse('2027-01-01T00:00:00Z') }), (schedule, t) => {
    const calendar = compileCalendar(schedule, { timezone: 'UTC' });
    const next = calendar.nextSlot(t)!;
    const prev = calendar.prevSlot(t)!;
    assert.ok(next > t && prev <= t);
    assert.equal(calendar.nextSlot(prev), next, `${iso(prev)} -> ${iso(next)} around ${iso(t)}`);
    assert.equal(calendar.prevSlot(next - 1), prev);
  }), { numRuns: 500 });
});

test('no slot is queued twice, and no calendar runs twice for one wall-clock time, whatever the ticks and downtimes', async () => {
  await fc.assert(fc.asyncProperty(timingArb, fc.constantFrom(...STARTS), periodsArb, async (schedule, start, periods) => {
    const { store } = await simulate(schedule, start, periods);
    assert.equal(store.duplicateQueues, 0);
    const slots = store.jobs.map((j) => j.slot);
    assert.equal(new Set(slots).size, slots.length);
    for (let i = 1; i < slots.length; i++) assert.ok(slots[i]! > slots[i - 1]!, 'jobs are queued in slot order');
    if (schedule.calendar !== undefined) {
      const fmt = new Intl.DateTimeFormat('en-GB', { timeZone: schedule.timezone, dateStyle: 'short', timeStyle: 'medium' });
      const walls = slots.map((s) => fmt.format(s));
      assert.equal(new Set(walls).size, walls.length, walls.join(', '));
    }
  }), { numRuns: 300 });
});

test('no slot is lost across downtimes: each is queued in time or recorded missed, and catch-up runs once per downtime at most', async () => {
  await fc.assert(fc.asyncProperty(timingArb, fc.constantFrom(...STARTS), periodsArb, async (schedule, start, periods) => {
    const run = await simulate(schedule, start, periods);
    const calendar = compileCalendar(schedule, { timezone: 'UTC' });
    const queued = new Set(run.store.jobs.filter((j) => !j.catchUp).map((j) => j.slot));
    const missed = new Set(run.store.missed.map((m) => m.slot));
    assert.equal(missed.size, run.store.missed.length, 'a slot was recorded missed twice');
    for (let slot = calendar.prevSlot(start); slot !== null && slot <= run.lastTick; slot = calendar.nextSlot(slot)) {
      const due = calendar.due(slot);
      if (due === null || due.end <= start) continue;
      const seen = run.uptimes.some(([from, to]) => Math.max(from, due.start) <= to && Math.max(from, due.start) < due.end);
      const label = `slot ${iso(slot)} due ${iso(due.start)}..${iso(due.end)}`;
      if (seen) {
        assert.ok(queued.has(slot), `${label} was up but not queued`);
        assert.ok(!missed.has(slot), `${label} was queued and missed`);
      } else if (due.end <= run.lastTick) {
        assert.ok(missed.has(slot), `${label} was lost: neither queued nor missed`);
        assert.ok(!queued.has(slot), `${label} was down but queued`);
      }
    }
    const catchUps = run.store.jobs.filter((j) => j.catchUp);
    if (schedule.missed === 'skip') assert.equal(catchUps.length, 0);
    assert.ok(catchUps.length <= periods.length - 1, `${catchUps.length} catch-ups after ${periods.length - 1} downtimes`);
    for (const j of catchUps) assert.ok(missed.has(j.slot), 'a catch-up runs a missed slot');
    // Without a window, a downtime that missed slots is followed within the grace by one run
    // (the catch-up, or a regular slot due within it), if the server stays up that long.
    if (schedule.missed === 'catch-up' && !schedule.window) {
      for (let i = 1; i < run.uptimes.length; i++) {
        const [from, to] = run.uptimes[i]!;
        const missedBefore = run.store.missed.some((m) => m.at === from);
        if (!missedBefore || to - from < HOUR) continue;
        const runs = run.store.jobs.filter((j) => j.queuedAt >= from && j.queuedAt <= from + HOUR);
        assert.ok(runs.length >= 1, `nothing ran within an hour of the restart at ${iso(from)}`);
        assert.ok(runs.filter((j) => j.catchUp).length <= 1);
      }
    }
  }), { numRuns: 300 });
});
