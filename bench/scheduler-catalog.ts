// The scheduler loop at scale on the catalog (issue #9: 30,000 schedules): the wall time of one
// tick with CatalogScheduleStore, on an SQLite file and on a real PostgreSQL (started through
// src/testing/postgres.ts, with fsync off as in the tests: its commits cost less than on a
// production server). The same schedules as bench/scheduler.ts (the in-memory store's CPU time).
// Cases: every row due at once (a fresh catalog: every schedule new), a day of ticks one a minute
// (the normal tick), and after 3 days of downtime (every row due, with its missed slots recorded
// as missed jobs).
//   npx node bench/scheduler-catalog.ts [schedules] [sqlite|postgres|both]
//
// 2026-12-06, 30,000 schedules, wall ms per tick (SQLite file / PostgreSQL 15 on loopback):
//   all due (every row new, 6,025 queued)          1036 / 2369
//   normal tick (mean over a day, 49 rows due)      4.6 / 7.6   (slowest 502 / 545: the hour
//                                                                 when the every-N-hours rows fall due)
//   after 3 days down (217,211 missed slots)       6442 / 13224 (dominated by the missed job rows)
// With one UPDATE per row instead of schedules.setStates(), all due took 9040 ms on PostgreSQL.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCatalog, type Catalog } from '../src/catalog/catalog.ts';
import { SchedulerLoop, type TickReport } from '../src/scheduler/loop.ts';
import type { Schedule } from '../src/scheduler/plan.ts';
import { CatalogScheduleStore } from '../src/server/schedule-store.ts';
import { FakeClock } from '../src/testing/fake-clock.ts';
import { startPostgres } from '../src/testing/postgres.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const count = Number(process.argv[2] ?? 30_000);
const which = process.argv[3] ?? 'both';
const CLIENTS = 1000;
const zones = ['Europe/Berlin', 'America/New_York', 'UTC', 'Asia/Tokyo', 'Australia/Sydney'];

/** As bench/scheduler.ts: nightly calendars at many minutes, weekly fulls, frequencies, windows. */
function scheduleOf(i: number): Schedule {
  const timezone = zones[i % zones.length]!;
  const missed = i % 3 === 0 ? 'skip' : 'catch-up';
  switch (i % 4) {
    case 0: return { calendar: `${i % 60} ${(i >> 6) % 24} * * *`, timezone, missed };
    case 1: return { calendar: `${i % 60} 22 * * ${i % 7}`, timezone, missed, window: { start: '22:00', durationMs: 6 * HOUR } };
    case 2: return { every: ((i % 12) + 1) * HOUR, timezone, missed };
    default: return { calendar: `${i % 60} */4 * * *`, timezone, missed, window: { start: '20:00', durationMs: 10 * HOUR } };
  }
}

async function fill(catalog: Catalog, now: number): Promise<void> {
  await catalog.storageUnits.apply({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'vault' }, spec: { url: '/srv/vault', priority: 1 } });
  await catalog.lifecycles.apply({ apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'gold' }, spec: { copies: [{ operation: 'backup', storageUnit: 'vault', retention: '30d' }] } });
  await catalog.policies.apply({ apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'fleet' }, spec: {} });
  await catalog.transaction(async (tx) => {
    for (let c = 0; c < CLIENTS; c++) await tx.clients.upsert({ name: `host${c}` });
  });
  const entries = Array.from({ length: count }, (_, i) => ({
    client: `host${i % CLIENTS}`, name: `s${i}`, level: i % 7 === 0 ? 'full' : 'incremental', lifecycle: 'gold',
    timing: scheduleOf(i) as unknown as Record<string, unknown>,
  }));
  await catalog.schedules.sync('fleet', entries, { now });
}

function line(label: string, report: TickReport, ms: number): void {
  const queued = report.decisions.filter((d) => d.queue !== null).length;
  const missed = report.decisions.reduce((n, d) => n + d.missed.length, 0);
  console.log(`  ${label.padEnd(46)} ${report.loaded.toString().padStart(6)} due  ${ms.toFixed(1).padStart(9)} ms  (${queued} queued, ${missed} missed slots)`);
}

async function timed(loop: SchedulerLoop): Promise<[TickReport, number]> {
  const t0 = performance.now();
  const report = await loop.tick();
  return [report, performance.now() - t0];
}

async function bench(name: string, url: string): Promise<void> {
  const start = Date.parse('2026-10-24T12:00:00Z');
  const clock = new FakeClock(start - DAY);
  const catalog = await openCatalog(url, { now: () => clock.now() });
  try {
    const t0 = performance.now();
    await fill(catalog, clock.now());
    console.log(`${name}: ${count} schedules of ${CLIENTS} clients (made in ${(performance.now() - t0).toFixed(0)} ms)`);
    const loop = new SchedulerLoop(new CatalogScheduleStore(catalog), clock, { timezone: 'UTC' });
    const [first, firstMs] = await timed(loop);
    line('all due: every row new', first, firstMs);
    // A day of ticks one a minute up to `start`, then a measured day (across Berlin's fall-back).
    for (clock.advance(MINUTE); clock.now() < start; clock.advance(MINUTE)) await loop.tick();
    let worst = 0, total = 0, ticks = 0, loaded = 0;
    for (clock.set(start); clock.now() < start + DAY; clock.advance(MINUTE)) {
      const [report, ms] = await timed(loop);
      worst = Math.max(worst, ms);
      total += ms;
      loaded += report.loaded;
      ticks++;
    }
    console.log(`  normal ticks, one a minute for a day: mean ${(total / ticks).toFixed(2)} ms, slowest ${worst.toFixed(1)} ms, ${(loaded / ticks).toFixed(1)} rows due per tick`);
    clock.set(start + 4 * DAY);
    const [down, downMs] = await timed(loop);
    line('all due after 3 days of downtime', down, downMs);
    const counts = await catalog.jobs.counts();
    console.log(`  jobs: ${counts.queued} queued, ${counts.missed} missed`);
  } finally {
    await catalog.close();
  }
}

if (which === 'sqlite' || which === 'both') {
  const dir = await mkdtemp(join(tmpdir(), 'coffer-bench-'));
  try {
    await bench('SQLite', join(dir, 'catalog.db'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
if (which === 'postgres' || which === 'both') {
  const server = await startPostgres();
  try {
    await bench('PostgreSQL', server.url);
  } finally {
    await server.stop();
  }
}
