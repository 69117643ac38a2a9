import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type CofferError } from '../core/errors.ts';
import { FakeClock } from '../testing/fake-clock.ts';
import { SchedulerLoop, type SchedulerLoopOptions } from './loop.ts';
import { MemoryScheduleStore } from './memory-store.ts';
import { upcomingRuns, windowState, type Schedule } from './plan.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const at = (iso: string) => Date.parse(iso);
const iso = (t: number) => new Date(t).toISOString().replace('.000Z', 'Z');

/** Runs a loop on `clock` from its now until `until`, as a running server would (ticks at every wake-up). */
async function runLoop(store: MemoryScheduleStore, clock: FakeClock, until: number, options: Partial<SchedulerLoopOptions> = {}): Promise<SchedulerLoop> {
  const loop = new SchedulerLoop(store, clock, { timezone: 'UTC', ...options });
  const stop = new AbortController();
  const running = loop.run({ signal: stop.signal });
  await clock.runUntil(until);
  stop.abort();
  await running;
  return loop;
}

function setup(schedules: Record<string, Schedule>, start: string): { store: MemoryScheduleStore; clock: FakeClock } {
  const clock = new FakeClock(at(start));
  const store = new MemoryScheduleStore();
  for (const [id, s] of Object.entries(schedules)) store.put(id, s, { since: clock.now() });
  return { store, clock };
}

const slotsOf = (store: MemoryScheduleStore, id: string) => store.jobs.filter((j) => j.schedule === id).map((j) => iso(j.slot));

describe('the loop across DST changes', () => {
  const cases = [
    { zone: 'Europe/Berlin', start: '2026-03-27T12:00:00Z', end: '2026-03-31T11:59:00Z', hourly: 96 },
    { zone: 'Europe/Berlin', start: '2026-10-23T12:00:00Z', end: '2026-10-27T11:59:00Z', hourly: 95 },
    { zone: 'America/New_York', start: '2026-03-06T12:00:00Z', end: '2026-03-10T11:59:00Z', hourly: 96 },
    { zone: 'America/New_York', start: '2026-10-30T12:00:00Z', end: '2026-11-03T11:59:00Z', hourly: 95 },
  ];
  for (const c of cases) {
    test(`${c.zone} from ${c.start.slice(0, 10)}: daily calendars run once a day, hourly never twice for one wall-clock hour`, async () => {
      const { store, clock } = setup({
        d0130: { calendar: '30 1 * * *', timezone: c.zone, missed: 'catch-up' },
        d0230: { calendar: '30 2 * * *', timezone: c.zone, missed: 'catch-up' },
        d0300: { calendar: '0 3 * * *', timezone: c.zone, missed: 'catch-up' },
        hourly: { calendar: '0 * * * *', timezone: c.zone, missed: 'catch-up' },
        every12h: { every: 12 * HOUR, timezone: c.zone, missed: 'catch-up' },
      }, c.start);
      await runLoop(store, clock, at(c.end));
      for (const id of ['d0130', 'd0230', 'd0300']) {
        const days = store.jobs.filter((j) => j.schedule === id).map((j) => new Intl.DateTimeFormat('en-CA', { timeZone: c.zone }).format(j.slot));
        assert.equal(days.length, 4, `${id}: ${slotsOf(store, id).join(', ')}`);
        assert.equal(new Set(days).size, 4, `${id} ran twice on one day: ${days.join(', ')}`);
      }
      const hourly = store.jobs.filter((j) => j.schedule === 'hourly');
      assert.equal(hourly.length, c.hourly);
      const walls = hourly.map((j) => new Intl.DateTimeFormat('en-GB', { timeZone: c.zone, dateStyle: 'short', timeStyle: 'short' }).format(j.slot));
      assert.equal(new Set(walls).size, walls.length);
      const every = store.jobs.filter((j) => j.schedule === 'every12h').map((j) => j.slot);
      assert.equal(every.length, 8);
      for (let i = 1; i < every.length; i++) assert.equal(every[i]! - every[i - 1]!, 12 * HOUR);
      // Every job was queued at its slot (the loop wakes for it), none caught up, none missed.
      for (const j of store.jobs) assert.equal(j.queuedAt, j.slot, `${j.schedule} ${iso(j.slot)} queued at ${iso(j.queuedAt)}`);
      assert.deepEqual(store.missed, []);
    });
  }

  test('02:30 in Berlin on the spring-forward day is queued once, at 03:00 CEST', async () => {
    const { store, clock } = setup({ s: { calendar: '30 2 * * *', timezone: 'Europe/Berlin', missed: 'skip' } }, '2026-03-28T12:00:00Z');
    await runLoop(store, clock, at('2026-03-29T12:00:00Z'));
    assert.deepEqual(slotsOf(store, 's'), ['2026-03-29T01:00:00Z']);
  });

  test('02:30 in Berlin on the fall-back day is queued once, at 02:30 CEST, not again at 02:30 CET', async () => {
    const { store, clock } = setup({ s: { calendar: '30 2 * * *', timezone: 'Europe/Berlin', missed: 'skip' } }, '2026-10-24T12:00:00Z');
    await runLoop(store, clock, at('2026-10-25T12:00:00Z'));
    assert.deepEqual(slotsOf(store, 's'), ['2026-10-25T00:30:00Z']);
  });
});

describe('windows and missed runs', () => {
  test('a slot outside its window is queued when the window opens, with the window\'s close as notAfter', async () => {
    const { store, clock } = setup({ s: { calendar: '0 18 * * *', timezone: 'UTC', window: { start: '22:00', durationMs: 6 * HOUR }, missed: 'skip' } }, '2026-06-01T12:00:00Z');
    await runLoop(store, clock, at('2026-06-02T12:00:00Z'));
    assert.equal(store.jobs.length, 1);
    const job = store.jobs[0]!;
    assert.equal(iso(job.queuedAt), '2026-06-01T22:00:00Z');
    assert.equal(iso(job.notAfter), '2026-06-02T04:00:00Z');
  });

  test('a window crossing midnight queues each slot inside it, and none outside it', async () => {
    const { store, clock } = setup({ s: { every: HOUR, timezone: 'UTC', window: { start: '23:00', durationMs: 3 * HOUR }, missed: 'skip' } }, '2026-06-01T12:00:00Z');
    await runLoop(store, clock, at('2026-06-03T12:00:00Z'));
    assert.deepEqual(slotsOf(store, 's'), [
      '2026-06-01T23:00:00Z', '2026-06-02T00:00:00Z', '2026-06-02T01:00:00Z',
      '2026-06-02T23:00:00Z', '2026-06-03T00:00:00Z', '2026-06-03T01:00:00Z',
    ]);
    assert.deepEqual(store.missed, []);
  });

  test('a job the queue could not start before its window closed is a missed run (windowState is closed)', async () => {
    const schedule: Schedule = { calendar: '0 22 * * *', timezone: 'Europe/Berlin', window: { start: '22:00', durationMs: HOUR }, missed: 'skip' };
    const { store, clock } = setup({ s: schedule }, '2026-06-01T12:00:00Z');
    await runLoop(store, clock, at('2026-06-01T20:00:01Z'));
    const job = store.jobs[0]!;
    const state = (now: number) => windowState(schedule, { slot: job.slot, catchUp: job.catchUp, queuedAt: job.queuedAt }, { now, timezone: 'UTC' });
    assert.equal(state(at('2026-06-01T19:59:59Z')), 'before');
    assert.equal(state(at('2026-06-01T20:30:00Z')), 'open');
    // The queue waited 90 minutes for a free slot: longer than the window.
    assert.equal(state(at('2026-06-01T21:30:00Z')), 'closed');
    assert.equal(state(job.notAfter), 'closed');
    assert.equal(windowState(schedule, job.slot, { now: job.notAfter - 1, timezone: 'UTC' }), 'open');
  });

  test('after 3 days of downtime, catch-up queues exactly one run and records the missed slots', async () => {
    const { store, clock } = setup({ s: { calendar: '0 1 * * *', timezone: 'UTC', missed: 'catch-up' } }, '2026-06-01T12:00:00Z');
    await runLoop(store, clock, at('2026-06-02T12:00:00Z'));
    assert.deepEqual(slotsOf(store, 's'), ['2026-06-02T01:00:00Z']);
    clock.set(at('2026-06-05T12:00:00Z')); // the server was down
    await runLoop(store, clock, at('2026-06-06T12:00:00Z'));
    assert.deepEqual(store.missed.map((m) => iso(m.slot)).sort(), ['2026-06-03T01:00:00Z', '2026-06-04T01:00:00Z', '2026-06-05T01:00:00Z']);
    const catchUps = store.jobs.filter((j) => j.catchUp);
    assert.equal(catchUps.length, 1);
    assert.equal(iso(catchUps[0]!.slot), '2026-06-05T01:00:00Z');
    assert.equal(iso(catchUps[0]!.queuedAt), '2026-06-05T12:00:00Z');
    assert.deepEqual(slotsOf(store, 's'), ['2026-06-02T01:00:00Z', '2026-06-05T01:00:00Z', '2026-06-06T01:00:00Z']);
    assert.equal(store.get('s')!.state.lastState, 'queued');
  });

  test('after 3 days of downtime, skip queues nothing until the next slot, and records the missed slots', async () => {
    const { store, clock } = setup({ s: { calendar: '0 1 * * *', timezone: 'UTC', missed: 'skip' } }, '2026-06-01T12:00:00Z');
    await runLoop(store, clock, at('2026-06-02T12:00:00Z'));
    clock.set(at('2026-06-05T12:00:00Z'));
    await runLoop(store, clock, at('2026-06-06T00:59:00Z'));
    assert.deepEqual(slotsOf(store, 's'), ['2026-06-02T01:00:00Z']);
    assert.equal(store.missed.length, 3);
    assert.equal(store.get('s')!.state.lastState, 'missed');
    await runLoop(store, clock, at('2026-06-06T12:00:00Z'));
    assert.deepEqual(slotsOf(store, 's'), ['2026-06-02T01:00:00Z', '2026-06-06T01:00:00Z']);
  });

  test('a catch-up waits for the window to open, and a regular slot due in that window is the catch-up', async () => {
    const window = { start: '22:00', durationMs: 4 * HOUR };
    const { store, clock } = setup({
      daily: { calendar: '0 22 * * *', timezone: 'UTC', window, missed: 'catch-up' },
      weekly: { calendar: '0 22 * * 1', timezone: 'UTC', window, missed: 'catch-up' },
    }, '2026-06-01T12:00:00Z');
    await runLoop(store, clock, at('2026-06-01T23:00:00Z'));
    clock.set(at('2026-06-09T10:00:00Z')); // down across Monday 2026-06-08 22:00
    await runLoop(store, clock, at('2026-06-10T10:00:00Z'));
    // daily: the slot at 22:00 on the 9th is its catch-up; no extra run.
    assert.deepEqual(slotsOf(store, 'daily'), ['2026-06-01T22:00:00Z', '2026-06-09T22:00:00Z']);
    // weekly: caught up once, when the window opened on the 9th.
    const weekly = store.jobs.filter((j) => j.schedule === 'weekly');
    assert.deepEqual(weekly.map((j) => [iso(j.slot), iso(j.queuedAt), j.catchUp]), [
      ['2026-06-01T22:00:00Z', '2026-06-01T22:00:00Z', false],
      ['2026-06-08T22:00:00Z', '2026-06-09T22:00:00Z', true],
    ]);
  });

  test('a schedule added now reports nothing missed from before it existed', async () => {
    const { store, clock } = setup({ s: { every: HOUR, timezone: 'UTC', missed: 'catch-up' } }, '2026-06-01T12:30:00Z');
    await runLoop(store, clock, at('2026-06-01T14:30:00Z'));
    assert.deepEqual(store.missed, []);
    // 12:00 was still within its hour of grace when the schedule was added.
    assert.deepEqual(slotsOf(store, 's'), ['2026-06-01T12:00:00Z', '2026-06-01T13:00:00Z', '2026-06-01T14:00:00Z']);
  });
});

describe('idempotence', () => {
  const daily: Schedule = { calendar: '0 1 * * *', timezone: 'UTC', missed: 'catch-up' };

  test('two ticks at the same instant queue one job', async () => {
    const { store, clock } = setup({ s: daily }, '2026-06-01T01:00:00Z');
    const loop = new SchedulerLoop(store, clock, { timezone: 'UTC' });
    await loop.tick();
    await loop.tick();
    assert.equal(store.jobs.length, 1);
    assert.equal(store.duplicateQueues, 0);
  });

  test('two schedulers ticking at once on one store queue one job; the second one\'s decision is refused', async () => {
    const { store, clock } = setup({ s: daily }, '2026-06-01T01:00:00Z');
    const a = new SchedulerLoop(store, clock, { timezone: 'UTC' });
    const b = new SchedulerLoop(store, clock, { timezone: 'UTC' });
    const [ra, rb] = await Promise.all([a.tick(), b.tick()]);
    assert.equal(store.jobs.length, 1);
    assert.equal(ra.applied + rb.applied, 1);
    assert.equal(ra.conflicts + rb.conflicts, 1);
  });

  test('a crash between queuing the job and storing the next run does not queue the slot again', async () => {
    const { store, clock } = setup({ s: daily }, '2026-06-01T01:00:00Z');
    const loop = new SchedulerLoop(store, clock, { timezone: 'UTC' });
    store.crashAfterQueue = true;
    await assert.rejects(loop.tick(), /simulated crash/);
    assert.equal(store.jobs.length, 1);
    assert.equal(store.get('s')!.state.lastSlot, null); // the state did not advance
    clock.advance(5 * MINUTE);
    const report = await loop.tick();
    assert.equal(report.applied, 1);
    assert.equal(store.jobs.length, 1);
    assert.equal(store.duplicateQueues, 1);
    assert.equal(store.get('s')!.state.lastSlot, at('2026-06-01T01:00:00Z'));
    assert.equal(store.get('s')!.state.nextRun, at('2026-06-02T01:00:00Z'));
  });

  test('the running loop survives a crashed tick, and its retry queues the slot once', async () => {
    const { store, clock } = setup({ s: daily }, '2026-06-01T00:59:00Z');
    const errors: CofferError[] = [];
    await runLoop(store, clock, at('2026-06-01T00:59:30Z'), { onError: (e) => errors.push(e) });
    store.crashAfterQueue = true;
    await runLoop(store, clock, at('2026-06-01T02:00:00Z'), { onError: (e) => errors.push(e) });
    assert.deepEqual(errors.map((e) => e.code), ['STORAGE_UNAVAILABLE']);
    assert.deepEqual(slotsOf(store, 's'), ['2026-06-01T01:00:00Z']);
    assert.equal(store.duplicateQueues, 1);
    assert.equal(store.get('s')!.state.nextRun, at('2026-06-02T01:00:00Z'));
  });

  test('a clock set back does not queue a slot again', async () => {
    const { store, clock } = setup({ s: { every: HOUR, timezone: 'UTC', missed: 'catch-up' } }, '2026-06-01T10:00:00Z');
    await runLoop(store, clock, at('2026-06-01T12:30:00Z'));
    clock.set(at('2026-06-01T10:30:00Z'));
    await runLoop(store, clock, at('2026-06-01T13:30:00Z'));
    assert.deepEqual(slotsOf(store, 's'), ['2026-06-01T10:00:00Z', '2026-06-01T11:00:00Z', '2026-06-01T12:00:00Z', '2026-06-01T13:00:00Z']);
  });
});

describe('the loop', () => {
  test('sleeps until the earliest next run, and wake() makes it plan a new schedule at once', async () => {
    const { store, clock } = setup({ s: { calendar: '0 1 * * *', timezone: 'UTC', missed: 'skip' } }, '2026-06-01T00:00:00Z');
    const loop = new SchedulerLoop(store, clock, { timezone: 'UTC', maxSleepMs: DAY });
    const stop = new AbortController();
    const running = loop.run({ signal: stop.signal });
    await clock.idle();
    assert.equal(clock.nextWake(), at('2026-06-01T01:00:00Z'));
    store.put('now', { every: HOUR, timezone: 'UTC', missed: 'skip' }, { since: clock.now() });
    loop.wake();
    await new Promise((r) => setImmediate(r));
    await clock.idle();
    assert.deepEqual(slotsOf(store, 'now'), ['2026-06-01T00:00:00Z']);
    stop.abort();
    await running;
  });

  test('a schedule that cannot be planned is reported to onError and never due again; the others go on', async () => {
    const { store, clock } = setup({
      bad: { calendar: '0 1 * * *', timezone: 'Mars/Olympus', missed: 'skip' },
      good: { calendar: '0 1 * * *', timezone: 'UTC', missed: 'skip' },
    }, '2026-06-01T00:00:00Z');
    const errors: Array<[string | undefined, CofferError]> = [];
    await runLoop(store, clock, at('2026-06-02T00:00:00Z'), { onError: (e, id) => errors.push([id, e]) });
    assert.equal(errors.length, 1);
    assert.equal(errors[0]![0], 'bad');
    assert.equal(errors[0]![1].code, 'INVALID_CONFIG');
    assert.equal(store.get('bad')!.state.nextRun, null);
    assert.deepEqual(slotsOf(store, 'good'), ['2026-06-01T01:00:00Z']);
  });

  test('a tick loads only the due rows of 30,000 schedules', async () => {
    const clock = new FakeClock(at('2026-06-01T00:00:00Z'));
    const store = new MemoryScheduleStore();
    for (let i = 0; i < 30_000; i++) {
      store.put(`s${i}`, { calendar: `${i % 60} ${i % 24} * * *`, timezone: 'Europe/Berlin', missed: 'catch-up' }, { since: clock.now() - DAY });
    }
    const loop = new SchedulerLoop(store, clock, { timezone: 'UTC' });
    await loop.tick(); // every row is new: all are planned once
    store.rowsLoaded = 0;
    clock.advance(MINUTE);
    const report = await loop.tick();
    assert.equal(store.rowsLoaded, report.loaded);
    assert.ok(report.loaded < 100, `loaded ${report.loaded}`);
  });

  test('upcomingRuns() lists the next runs for `get schedules`, windows applied', () => {
    const runs = upcomingRuns({ calendar: '0 18 * * *', timezone: 'Europe/Berlin', window: { start: '22:00', durationMs: 2 * HOUR } },
      { from: at('2026-03-28T18:00:00Z'), count: 2, timezone: 'UTC' });
    assert.deepEqual(runs.map((r) => [iso(r.slot), iso(r.start), iso(r.end)]), [
      ['2026-03-28T17:00:00Z', '2026-03-28T21:00:00Z', '2026-03-28T23:00:00Z'],
      ['2026-03-29T16:00:00Z', '2026-03-29T20:00:00Z', '2026-03-29T22:00:00Z'],
    ]);
  });
});
