// The scheduler on the catalog: every case runs against SQLite (a temporary file) and against a
// real PostgreSQL server started for this file (src/testing/postgres.ts), each with an empty
// catalog of its own and a fake clock driving both the loop and the catalog. The in-memory store
// (src/scheduler/memory-store.ts) is the reference: on the same schedules and the same clock the
// catalog's store must queue the same slots.

import { after, before, describe, it } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCatalog, type Catalog } from '../catalog/catalog.ts';
import type { Job } from '../catalog/jobs.ts';
import type { PolicyDocument } from '../policy/index.ts';
import { SchedulerLoop, type SchedulerLoopOptions, type ScheduleStore } from '../scheduler/loop.ts';
import { MemoryScheduleStore } from '../scheduler/memory-store.ts';
import { planRow } from '../scheduler/plan.ts';
import { FakeClock } from '../testing/fake-clock.ts';
import { startPostgres, type PostgresServer } from '../testing/postgres.ts';
import { CatalogScheduleStore, scheduleTimingFrom, syncPolicySchedules, upcoming } from './schedule-store.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const at = (iso: string) => Date.parse(iso);
const iso = (t: number) => new Date(t).toISOString().replace('.000Z', 'Z');

interface Backend {
  name: 'sqlite' | 'postgres';
  fresh(): Promise<string>;
}

interface Fixture {
  catalog: Catalog;
  clock: FakeClock;
  /** A second server on the same catalog (PostgreSQL: its own pool; SQLite allows one process, so the same catalog). */
  second(): Promise<Catalog>;
}

const backends: Backend[] = [];
let sqliteDir = '';
let pgServer: PostgresServer | undefined;
let counter = 0;
backends.push({ name: 'sqlite', fresh: async () => join(sqliteDir, `catalog-${++counter}.db`) });
backends.push({
  name: 'postgres',
  fresh: async () => {
    if (pgServer === undefined) throw new Error('PostgreSQL did not start (see the error of the before hook)');
    return pgServer.createSchema(`sched_${++counter}`);
  },
});

before(async () => {
  sqliteDir = await mkdtemp(join(tmpdir(), 'coffer-sched-'));
});

after(async () => {
  await pgServer?.stop();
  await rm(sqliteDir, { recursive: true, force: true });
});

const doc = (kind: string, name: string, spec: Record<string, unknown>) => ({ apiVersion: 'coffer/v1', kind, metadata: { name }, spec });

type PolicySchedules = PolicyDocument['spec']['schedules'];

function policy(name: string, clients: string[], schedules: PolicySchedules): PolicyDocument {
  return { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name }, spec: { clients, selections: [{ paths: ['/srv'] }], schedules, lifecycle: 'gold' } };
}

async function setup(t: TestContext, backend: Backend, start: string, clients = ['alpha']): Promise<Fixture> {
  const url = await backend.fresh();
  const clock = new FakeClock(at(start));
  const catalog = await openCatalog(url, { now: () => clock.now() });
  const opened = [catalog];
  t.after(async () => { for (const c of opened) await c.close(); });
  await catalog.storageUnits.apply(doc('StorageUnit', 'vault', { url: '/srv/vault', priority: 7 }));
  await catalog.lifecycles.apply(doc('Lifecycle', 'gold', { copies: [{ operation: 'backup', storageUnit: 'vault', retention: '30d' }] }));
  for (const name of clients) await catalog.clients.upsert({ name, platform: 'linux' });
  return {
    catalog, clock,
    second: async () => {
      if (backend.name === 'sqlite') return catalog;
      const c = await openCatalog(url, { now: () => clock.now() });
      opened.push(c);
      return c;
    },
  };
}

/** Applies a policy document and makes its schedules, as the apply route will. */
async function apply(catalog: Catalog, document: PolicyDocument, now: number) {
  return catalog.transaction(async (tx) => {
    await tx.policies.apply(document);
    return syncPolicySchedules(tx, document, { now });
  });
}

/** Runs a loop on `clock` from its now until `until`, as a running server would (ticks at every wake-up). */
async function runLoop(store: ScheduleStore, clock: FakeClock, until: number, options: Partial<SchedulerLoopOptions> = {}): Promise<void> {
  const errors: unknown[] = [];
  const loop = new SchedulerLoop(store, clock, { timezone: 'UTC', maxSleepMs: 6 * HOUR, onError: (e) => errors.push(e), ...options });
  const stop = new AbortController();
  const running = loop.run({ signal: stop.signal });
  await clock.runUntil(until);
  stop.abort();
  await running;
  assert.deepEqual(errors, []);
}

async function allJobs(catalog: Catalog): Promise<Job[]> {
  const out: Job[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await catalog.jobs.list({ limit: 1000, ...(cursor === undefined ? {} : { cursor }) });
    out.push(...page.items);
    if (page.next === undefined) return out.sort((a, b) => a.schedule! < b.schedule! ? -1 : a.schedule! > b.schedule! ? 1 : a.slot! - b.slot!);
    cursor = page.next;
  }
}

for (const backend of backends) {
  describe(`the scheduler on a ${backend.name} catalog`, () => {
    if (backend.name === 'postgres') before(async () => { pgServer ??= await startPostgres(); });

    const dstCases = [
      { day: '2026-03-29', start: '2026-03-28T12:00:00Z', end: '2026-03-30T12:00:00Z', hourly: 48, d0230: ['2026-03-29T01:00:00Z', '2026-03-30T00:30:00Z'] },
      { day: '2026-10-25', start: '2026-10-24T12:00:00Z', end: '2026-10-26T12:00:00Z', hourly: 47, d0230: ['2026-10-25T00:30:00Z', '2026-10-26T01:30:00Z'] },
    ];
    for (const c of dstCases) {
      it(`queues exactly one job per slot across Berlin's DST day ${c.day}, the same slots as the in-memory store`, async (t) => {
        const { catalog, clock } = await setup(t, backend, c.start);
        const schedules: PolicySchedules = [
          { name: 'd0230', level: 'incremental', calendar: '30 2 * * *', timezone: 'Europe/Berlin' },
          { name: 'hourly', level: 'incremental', calendar: '0 * * * *', timezone: 'Europe/Berlin' },
          { name: 'every6h', level: 'full', every: '6h', timezone: 'Europe/Berlin' },
          { name: 'night', level: 'full', calendar: '0 * * * *', timezone: 'Europe/Berlin', window: { start: '01:00', duration: '3h' }, missed: 'skip' },
        ];
        await apply(catalog, policy('berlin', ['alpha'], schedules), clock.now());
        await runLoop(new CatalogScheduleStore(catalog), clock, at(c.end) - 1);
        const jobs = await allJobs(catalog);
        const slots = (name: string) => jobs.filter((j) => j.schedule === name).map((j) => iso(j.slot!));

        const memory = new MemoryScheduleStore();
        const reference = new FakeClock(at(c.start));
        for (const s of schedules) memory.put(s.name, scheduleTimingFrom(s), { since: reference.now() });
        await runLoop(memory, reference, at(c.end) - 1);
        for (const s of schedules) {
          assert.deepEqual(slots(s.name), memory.jobs.filter((j) => j.schedule === s.name).map((j) => iso(j.slot)), s.name);
        }

        assert.deepEqual(slots('d0230'), c.d0230);
        assert.equal(slots('hourly').length, c.hourly);
        const walls = slots('hourly').map((s) => new Intl.DateTimeFormat('en-GB', { timeZone: 'Europe/Berlin', dateStyle: 'short', timeStyle: 'short' }).format(at(s)));
        assert.equal(new Set(walls).size, walls.length, 'one wall-clock hour ran twice');
        assert.equal(slots('every6h').length, 8);
        assert.ok(slots('night').length >= 5, slots('night').join(', '));
        for (const j of jobs) {
          assert.equal(j.state, 'queued');
          assert.equal(j.kind, 'backup');
          assert.equal(j.queued, j.slot, `${j.schedule} ${iso(j.slot!)} queued at ${iso(j.queued)}`);
        }
        assert.equal(new Set(jobs.map((j) => `${j.schedule} ${j.slot}`)).size, jobs.length);
        // What a scheduled job carries: the run's identity and window, what it backs up to.
        const first = jobs.find((j) => j.schedule === 'night')!;
        assert.deepEqual({ ...first, id: '', updated: 0 }, {
          id: '', kind: 'backup', state: 'queued', priority: 7, client: 'alpha', policy: 'berlin', schedule: 'night', storageUnit: 'vault',
          spec: { level: 'full', slot: first.slot, catchUp: false, notBefore: first.slot, notAfter: first.slot! + HOUR, lifecycle: 'gold' },
          attempt: 1, maxAttempts: 3, notBefore: first.slot, queued: first.slot, started: undefined, ended: undefined, updated: 0,
          progress: undefined, result: undefined, error: undefined, requestedBy: undefined, claimedBy: undefined, slot: first.slot,
        });
      });
    }

    it('after 3 days of downtime, catch-up queues one catch-up job and records the other missed slots as missed jobs', async (t) => {
      const { catalog, clock } = await setup(t, backend, '2026-06-01T12:00:00Z');
      await apply(catalog, policy('p', ['alpha'], [{ name: 'daily', level: 'incremental', calendar: '0 1 * * *', timezone: 'UTC' }]), clock.now());
      const store = new CatalogScheduleStore(catalog);
      await runLoop(store, clock, at('2026-06-02T12:00:00Z'));
      clock.set(at('2026-06-05T12:00:00Z')); // the server was down
      await runLoop(store, clock, at('2026-06-06T12:00:00Z'));
      const jobs = await allJobs(catalog);
      assert.deepEqual(jobs.map((j) => [iso(j.slot!), j.state, j.spec.catchUp ?? null]), [
        ['2026-06-02T01:00:00Z', 'queued', false],
        ['2026-06-03T01:00:00Z', 'missed', null],
        ['2026-06-04T01:00:00Z', 'missed', null],
        ['2026-06-05T01:00:00Z', 'queued', true],
        ['2026-06-06T01:00:00Z', 'queued', false],
      ]);
      const catchUp = jobs[3]!;
      assert.equal(catchUp.queued, at('2026-06-05T12:00:00Z'));
      assert.equal(catchUp.notBefore, at('2026-06-05T12:00:00Z'));
      assert.equal(catchUp.spec.notAfter, at('2026-06-05T13:00:00Z'));
      const missed = await catalog.jobs.list({ state: 'missed' });
      assert.deepEqual(missed.items.map((j) => [iso(j.slot!), iso(j.ended!), j.started]), [
        ['2026-06-04T01:00:00Z', '2026-06-05T12:00:00Z', undefined], ['2026-06-03T01:00:00Z', '2026-06-05T12:00:00Z', undefined],
      ]);
      assert.equal((await catalog.jobs.counts()).missed, 2);
      const [row] = (await catalog.schedules.list()).items;
      assert.equal(row!.state.lastState, 'queued');
      assert.equal(row!.state.lastSlot, at('2026-06-06T01:00:00Z'));
    });

    it('after 3 days of downtime, skip records the 3 missed slots as missed jobs and queues nothing until the next slot', async (t) => {
      const { catalog, clock } = await setup(t, backend, '2026-06-01T12:00:00Z');
      await apply(catalog, policy('p', ['alpha'], [{ name: 'daily', level: 'full', calendar: '0 1 * * *', timezone: 'UTC', missed: 'skip' }]), clock.now());
      const store = new CatalogScheduleStore(catalog);
      await runLoop(store, clock, at('2026-06-02T12:00:00Z'));
      clock.set(at('2026-06-05T12:00:00Z'));
      await runLoop(store, clock, at('2026-06-06T00:59:00Z'));
      assert.deepEqual((await allJobs(catalog)).map((j) => [iso(j.slot!), j.state]), [
        ['2026-06-02T01:00:00Z', 'queued'], ['2026-06-03T01:00:00Z', 'missed'], ['2026-06-04T01:00:00Z', 'missed'], ['2026-06-05T01:00:00Z', 'missed'],
      ]);
      await runLoop(store, clock, at('2026-06-06T12:00:00Z'));
      assert.deepEqual((await catalog.jobs.list({ state: 'queued' })).items.map((j) => iso(j.slot!)), ['2026-06-06T01:00:00Z', '2026-06-02T01:00:00Z']);
    });

    it('a crash between queuing and storing the state queues once: the decision applied again finds its job', async (t) => {
      const { catalog, clock } = await setup(t, backend, '2026-06-01T01:00:00Z');
      await apply(catalog, policy('p', ['alpha'], [{ name: 'daily', level: 'full', calendar: '0 1 * * *', timezone: 'UTC' }]), clock.now() - MINUTE);
      const store = new CatalogScheduleStore(catalog);
      const [row] = await store.loadDue(clock.now());
      const decision = planRow(row!, { now: clock.now(), timezone: 'UTC' });
      assert.equal(decision.queue?.slot, clock.now());
      // The queue part alone, as a store without transactions would have left it.
      await catalog.jobs.enqueueSlots([{ kind: 'backup', policy: 'p', client: 'alpha', schedule: 'daily', slot: decision.queue!.slot, spec: { level: 'full' } }]);
      assert.deepEqual(await store.record([decision]), [true]);
      assert.equal((await allJobs(catalog)).length, 1);
      // The state put back (the crash came after queuing, before the state was stored): the same decision again.
      assert.ok(await catalog.schedules.setState(decision.id, decision.state, decision.previous));
      assert.deepEqual(await store.record([decision]), [true]);
      assert.equal((await allJobs(catalog)).length, 1);
      // Twice without putting it back: the second is refused by the compare-and-set.
      assert.deepEqual(await store.record([decision]), [false]);
      assert.equal((await allJobs(catalog)).length, 1);
      assert.deepEqual((await catalog.schedules.get(decision.id)).state, decision.state);
    });

    it('two schedulers ticking on one catalog at the same instant queue each slot once', async (t) => {
      const clients = Array.from({ length: 40 }, (_, i) => `c${i}`);
      const { catalog, clock, second } = await setup(t, backend, '2026-06-01T00:30:00Z', clients);
      await apply(catalog, policy('p', clients, [
        { name: 'daily', level: 'full', calendar: '0 1 * * *', timezone: 'UTC' },
        { name: 'hourly', level: 'incremental', every: '1h' },
      ]), clock.now());
      const other = await second();
      const loops = [new CatalogScheduleStore(catalog), new CatalogScheduleStore(other)].map((s) => new SchedulerLoop(s, clock, { timezone: 'UTC', batchSize: 25 }));
      for (const t of ['2026-06-01T00:30:00Z', '2026-06-01T01:00:00Z', '2026-06-01T02:00:00Z']) {
        clock.set(at(t));
        const reports = await Promise.all(loops.map((l) => l.tick()));
        const applied = reports.reduce((n, r) => n + r.applied, 0);
        const conflicts = reports.reduce((n, r) => n + r.conflicts, 0);
        assert.equal(applied + conflicts, reports.reduce((n, r) => n + r.loaded, 0));
        assert.ok(applied >= clients.length, `${t}: ${applied} applied`);
      }
      const jobs = await allJobs(catalog);
      // 00:30: nothing due for daily; hourly's 00:00 slot is due (within its grace) and queued; then 01:00 both, 02:00 hourly.
      assert.equal(jobs.length, clients.length * 4);
      assert.equal(new Set(jobs.map((j) => `${j.client} ${j.schedule} ${j.slot}`)).size, jobs.length);
    });

    it('the compare-and-set refuses a stale decision: a newer one applied, a re-applied policy, a removed schedule', async (t) => {
      const { catalog, clock } = await setup(t, backend, '2026-06-01T01:00:00Z', ['alpha', 'beta']);
      const document = policy('p', ['alpha', 'beta'], [{ name: 'daily', level: 'full', calendar: '0 1 * * *', timezone: 'UTC' }]);
      await apply(catalog, document, clock.now() - MINUTE);
      const store = new CatalogScheduleStore(catalog);
      const rows = await store.loadDue(clock.now());
      assert.equal(rows.length, 2);
      const stale = rows.map((r) => planRow(r, { now: clock.now(), timezone: 'UTC' }));
      // Another scheduler went first for the first row.
      assert.deepEqual(await store.record([stale[0]!]), [true]);
      const first = await catalog.schedules.get(stale[0]!.id);
      // The policy is applied again with another calendar: both rows' state restarts.
      clock.advance(MINUTE);
      const changed = await apply(catalog, policy('p', ['alpha', 'beta'], [{ name: 'daily', level: 'full', calendar: '5 1 * * *', timezone: 'UTC' }]), clock.now());
      assert.deepEqual([changed.changed, changed.kept], [2, 0]);
      assert.deepEqual(await store.record(stale), [false, false]);
      assert.deepEqual((await allJobs(catalog)).map((j) => [j.client, j.slot]), [[first.client, at('2026-06-01T01:00:00Z')]]);
      // Decisions on the new state; then beta leaves the policy: its decision is refused, alpha's applies.
      const fresh = (await store.loadDue(clock.now())).map((r) => planRow(r, { now: clock.now(), timezone: 'UTC' }));
      assert.equal(fresh.length, 2);
      await apply(catalog, policy('p', ['alpha'], [{ name: 'daily', level: 'full', calendar: '5 1 * * *', timezone: 'UTC' }]), clock.now());
      const alphaId = (await catalog.schedules.list()).items[0]!.id;
      assert.deepEqual(await store.record(fresh), fresh.map((d) => d.id === alphaId));
    });

    it('syncPolicySchedules keeps the state on re-apply, restarts a changed timing, deletes removed schedules, and skips clients not registered', async (t) => {
      const { catalog, clock } = await setup(t, backend, '2026-06-01T12:00:00Z', ['alpha', 'beta']);
      const schedules: PolicySchedules = [
        { name: 'daily', level: 'incremental', calendar: '0 1 * * *', timezone: 'UTC' },
        { name: 'weekly', level: 'full', calendar: '0 3 * * 0', timezone: 'UTC', lifecycle: 'gold' },
      ];
      const made = await apply(catalog, policy('p', ['alpha', 'beta', 'gamma'], schedules), clock.now());
      assert.deepEqual(made, { created: 4, changed: 0, kept: 0, removed: 0, unknownClients: ['gamma'] });
      const store = new CatalogScheduleStore(catalog);
      await runLoop(store, clock, at('2026-06-02T12:00:00Z'));
      const before = new Map((await catalog.schedules.list()).items.map((s) => [`${s.client}/${s.name}`, s]));
      assert.equal(before.get('alpha/daily')!.state.lastSlot, at('2026-06-02T01:00:00Z'));
      const jobsBefore = (await allJobs(catalog)).length;
      assert.equal(jobsBefore, 2);

      // The same document again, reformatted: nothing changes, nothing is queued again.
      clock.advance(HOUR);
      const again = await apply(catalog, policy('p', ['alpha', 'beta', 'gamma'], [{ ...schedules[0]!, calendar: ' 0  1 * * * ' }, schedules[1]!]), clock.now());
      assert.deepEqual(again, { created: 0, changed: 0, kept: 4, removed: 0, unknownClients: ['gamma'] });
      for (const s of (await catalog.schedules.list()).items) assert.deepEqual(s.state, before.get(`${s.client}/${s.name}`)!.state);

      // daily moves to 13:00 for everyone, weekly goes, beta leaves the policy.
      const changed = await apply(catalog, policy('p', ['alpha'], [{ ...schedules[0]!, calendar: '0 13 * * *' }]), clock.now());
      assert.deepEqual(changed, { created: 0, changed: 1, kept: 0, removed: 3, unknownClients: [] });
      const [daily, ...rest] = (await catalog.schedules.list()).items;
      assert.deepEqual(rest, []);
      assert.equal(daily!.id, before.get('alpha/daily')!.id);
      assert.deepEqual(daily!.state, { since: clock.now(), lastSlot: at('2026-06-02T01:00:00Z'), lastState: 'queued', nextRun: clock.now() });
      assert.deepEqual(daily!.timing, { calendar: '0 13 * * *', timezone: 'UTC', missed: 'catch-up' });
      // Planned from now: today's 13:00 runs, the 01:00 slot of the old timing is not caught up.
      await runLoop(store, clock, at('2026-06-03T00:00:00Z'));
      assert.deepEqual((await allJobs(catalog)).filter((j) => j.client === 'alpha' && j.schedule === 'daily').map((j) => iso(j.slot!)),
        ['2026-06-02T01:00:00Z', '2026-06-02T13:00:00Z']);
    });

    it('loadDue() reads every due row, more than a page of them, and a tick queues them all', async (t) => {
      const { catalog, clock } = await setup(t, backend, '2026-06-01T01:00:00Z');
      await catalog.policies.apply(policy('many', ['alpha'], [{ name: 'x', level: 'full', every: '1h' }]));
      const n = 2500;
      await catalog.schedules.sync('many', Array.from({ length: n }, (_, i) => ({
        client: 'alpha', name: `s${i}`, level: 'full', timing: { every: HOUR, missed: 'skip' },
      })), { now: clock.now() });
      const store = new CatalogScheduleStore(catalog);
      const due = await store.loadDue(clock.now());
      assert.equal(due.length, n);
      assert.equal(new Set(due.map((r) => r.id)).size, n);
      assert.equal((await store.loadDue(clock.now() - 1)).length, 0);
      const report = await new SchedulerLoop(store, clock, { timezone: 'UTC' }).tick();
      assert.equal(report.applied, n);
      assert.equal((await catalog.jobs.counts()).queued, n);
      assert.equal(await store.nextRun(), clock.now() + HOUR);
      assert.equal((await store.loadDue(clock.now())).length, 0);
    });

    it('upcoming() lists each schedule\'s next runs and window; a schedule that cannot be planned shows why', async (t) => {
      const { catalog, clock } = await setup(t, backend, '2026-06-01T12:00:00Z', ['alpha', 'beta']);
      await apply(catalog, policy('p', ['alpha', 'beta'], [
        { name: 'night', level: 'incremental', calendar: '0 * * * *', window: { start: '22:00', duration: '2h' }, timezone: 'Europe/Berlin' },
      ]), clock.now());
      const page = await upcoming(catalog, { client: 'beta', now: clock.now(), timezone: 'UTC', count: 3 });
      assert.equal(page.items.length, 1);
      const s = page.items[0]!;
      assert.deepEqual([s.policy, s.client, s.name, s.timezone, s.calendar, s.every, s.window, s.missed, s.lifecycle],
        ['p', 'beta', 'night', 'Europe/Berlin', '0 * * * *', undefined, { start: '22:00', durationMs: 2 * HOUR }, 'catch-up', 'gold']);
      // 22:00 and 23:00 CEST, then 22:00 the next day.
      assert.deepEqual(s.runs.map((r) => [iso(r.slot), iso(r.start), iso(r.end)]), [
        ['2026-06-01T20:00:00Z', '2026-06-01T20:00:00Z', '2026-06-01T21:00:00Z'],
        ['2026-06-01T21:00:00Z', '2026-06-01T21:00:00Z', '2026-06-01T22:00:00Z'],
        ['2026-06-02T20:00:00Z', '2026-06-02T20:00:00Z', '2026-06-02T21:00:00Z'],
      ]);
      assert.equal(s.nextRun, clock.now());
      assert.equal((await upcoming(catalog, { policy: 'p', now: clock.now(), timezone: 'UTC', limit: 1 })).next !== undefined, true);
      // A timing the scheduler cannot run (written past the document checks): shown with its error, and the loop reports it.
      await catalog.schedules.sync('p', [{ client: 'alpha', name: 'bad', level: 'full', timing: { calendar: '0 1 * * *', timezone: 'Mars/Olympus', missed: 'skip' } }]);
      const bad = (await upcoming(catalog, { client: 'alpha', now: clock.now(), timezone: 'UTC' })).items[0]!;
      assert.equal(bad.error?.code, 'INVALID_CONFIG');
      const errors: string[] = [];
      await new SchedulerLoop(new CatalogScheduleStore(catalog), clock, { timezone: 'UTC', onError: (e, id) => errors.push(`${id}: ${e.code}`) }).tick();
      assert.deepEqual(errors, [`${bad.id}: INVALID_CONFIG`]);
      const stored = await catalog.schedules.get(bad.id);
      assert.equal(stored.state.nextRun, null);
      assert.equal(stored.error?.code, 'INVALID_CONFIG');
    });
  });
}

describe('scheduleTimingFrom', () => {
  it('maps a policy schedule onto the scheduler\'s: every and window durations in ms, the calendar respaced, missed defaulted', () => {
    assert.deepEqual(scheduleTimingFrom({ name: 'a', level: 'full', calendar: ' 0  1 * * * ' }), { calendar: '0 1 * * *', missed: 'catch-up' });
    assert.deepEqual(scheduleTimingFrom({ name: 'b', level: 'incremental', every: '12h', window: { start: '22:00', duration: '6h30m' }, timezone: 'Europe/Berlin', missed: 'skip' }),
      { every: 12 * HOUR, window: { start: '22:00', durationMs: 6.5 * HOUR }, timezone: 'Europe/Berlin', missed: 'skip' });
    assert.throws(() => scheduleTimingFrom({ name: 'c', level: 'full', every: 'often' }), /often/);
  });
});
