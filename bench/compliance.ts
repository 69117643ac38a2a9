// The compliance report at scale (issue #10, "Compliance"): how long GET /api/v1/reports/compliance
// takes to compute (src/server/compliance.ts over src/catalog/compliance.ts) on a catalog of
// 10,000 clients in 100 policies, 1,000,000 images (one a day per client for 100 days), their
// copies (a backup copy kept 30 days, an offsite duplicate kept a year, 1 % of them missing),
// 1,000,000 backup jobs and a restore test per client, on SQLite or a real PostgreSQL
// (src/testing/postgres.ts).
//
//   npx node bench/compliance.ts [--catalog sqlite|postgres] [--scale 1] [--runs 3] [--keep FILE]
//
// Prints the fill time, then each report's wall time, what it found, and the statements that
// took the most time in all. --keep FILE (SQLite): fill FILE once and report on it again later.
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Kysely, PostgresDialect, sql, type Insertable } from 'kysely';
import { openCatalog, type Catalog } from '../src/catalog/catalog.ts';
import type { Database } from '../src/catalog/schema.ts';
import { NodeSqliteDialect, openNodeSqlite } from '../src/catalog/sqlite-dialect.ts';
import { ulid } from '../src/core/ulid.ts';
import type { PolicyDocument } from '../src/policy/index.ts';
import { complianceReport } from '../src/server/compliance.ts';
import { RESTORE_TEST_KIND, syncPolicySchedules } from '../src/server/schedule-store.ts';
import { AgentRegistry, type Services } from '../src/server/services.ts';
import { NodeRegistry } from '../src/server/nodes.ts';
import { startPostgres, type PostgresServer } from '../src/testing/postgres.ts';

const DAY = 86_400_000;
const MINUTE = 60_000;

function args(): { backend: 'sqlite' | 'postgres'; scale: number; runs: number; keep?: string } {
  const o: { backend: 'sqlite' | 'postgres'; scale: number; runs: number; keep?: string } = { backend: 'sqlite', scale: 1, runs: 3 };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) {
    if (a[i] === '--catalog' && (a[i + 1] === 'sqlite' || a[i + 1] === 'postgres')) o.backend = a[i + 1] as 'sqlite' | 'postgres';
    else if (a[i] === '--scale') o.scale = Number(a[i + 1]);
    else if (a[i] === '--runs') o.runs = Number(a[i + 1]);
    else if (a[i] === '--keep') o.keep = a[i + 1];
    else throw new Error('usage: npx node bench/compliance.ts [--catalog sqlite|postgres] [--scale 1] [--runs 3] [--keep FILE]');
  }
  return o;
}

async function timed<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const t = performance.now();
  const r = await fn();
  console.log(`  ${what}: ${(performance.now() - t).toFixed(0)} ms`);
  return r;
}

async function fill(catalog: Catalog, backend: 'sqlite' | 'postgres', url: string, scale: number, now: number): Promise<void> {
  const CLIENTS = Math.max(10, Math.round(10_000 * scale));
  const POLICIES = Math.max(1, Math.round(100 * scale));
  const DAYS = 100;
  const client = (c: number) => `host${String(c).padStart(5, '0')}`;
  const policyOf = (c: number) => c % POLICIES;
  await timed(`clients (${CLIENTS})`, () => catalog.transaction(async (tx) => {
    for (let c = 0; c < CLIENTS; c++) await tx.clients.upsert({ name: client(c), platform: 'linux' });
  }));
  await timed(`storage units, lifecycle, ${POLICIES} policies and their schedules`, async () => {
    await catalog.storageUnits.apply({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'primary' }, spec: { url: '/srv/primary' } });
    await catalog.storageUnits.apply({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'offsite' }, spec: { url: '/srv/offsite', offsite: true } });
    await catalog.lifecycles.apply({ apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'gold' }, spec: { copies: [
      { operation: 'backup', storageUnit: 'primary', retention: '30d' },
      { operation: 'duplicate', storageUnit: 'offsite', retention: '1y' },
    ] } });
    for (let p = 0; p < POLICIES; p++) {
      const doc = {
        apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: `p${p}` },
        spec: {
          clients: Array.from({ length: CLIENTS }, (_, c) => c).filter((c) => policyOf(c) === p).map(client),
          selections: [{ paths: ['/etc', '/home'] }],
          schedules: [{ name: 'nightly', level: 'incremental', calendar: '0 1 * * *', timezone: 'UTC' }],
          lifecycle: 'gold', rpo: '1d', rto: '4h', offsiteRequired: p % 2 === 0,
          restoreTests: { every: '7d' },
        },
      };
      await catalog.policies.apply(doc);
      await syncPolicySchedules(catalog, doc as unknown as PolicyDocument, { now });
    }
  });
  const IMAGES = CLIENTS * DAYS;
  const ids: string[] = [];
  await timed(`images (${IMAGES})`, async () => {
    for (let d = 0; d < DAYS; d++) {
      const batch = [];
      for (let c = 0; c < CLIENTS; c++) {
        const time = now - (DAYS - d) * DAY + (c % 600) * MINUTE;
        const id = ulid(time);
        ids.push(id);
        batch.push({ id, client: client(c), policy: `p${policyOf(c)}`, schedule: 'nightly', level: 'incremental', time, state: 'ok' as const, streams: { a: 'b' } });
      }
      await catalog.images.addMany(batch);
    }
  });
  // Raw batched inserts: the catalog's copies.add and a finished job are one row per call.
  const db = await openKysely(backend, url);
  try {
    let copies = 0;
    await timed('copies (backup copies of the last 30 days, offsite duplicates of every image but 1 in 97)', async () => {
      let rows: Array<Insertable<Database['image_copies']>> = [];
      const flush = async () => {
        copies += rows.length;
        for (let i = 0; i < rows.length; i += 2000) await db.insertInto('image_copies').values(rows.slice(i, i + 2000)).execute();
        rows = [];
      };
      for (let d = 0; d < DAYS; d++) {
        for (let c = 0; c < CLIENTS; c++) {
          const k = d * CLIENTS + c;
          const time = now - (DAYS - d) * DAY;
          const copy = (unit: string, keep: number) => ({ id: ulid(time), image_id: ids[k]!, storage_unit: unit, snapshots: '{"a":"b"}', state: 'ok', expires: time + keep, hold: null, created: time, updated: time });
          if (d >= DAYS - 30) rows.push(copy('primary', 30 * DAY));
          if (k % 97 !== 7) rows.push(copy('offsite', 365 * DAY));
        }
        if (rows.length >= 50_000) await flush();
      }
      await flush();
    });
    console.log(`  (${copies} copies)`);
    await timed(`jobs (${IMAGES} backups, then a restore test per client)`, async () => {
      let rows: Array<Insertable<Database['jobs']>> = [];
      const job = (kind: string, c: number, time: number, result: unknown) => ({
        id: ulid(time), kind, state: 'succeeded', priority: 10, client: client(c), policy: `p${policyOf(c)}`, schedule: kind === 'backup' ? 'nightly' : '@restore-test',
        storage_unit: null, spec: '{}', attempt: 1, max_attempts: 3, not_before: null, queued: time, started: time, ended: time + MINUTE, updated: time + MINUTE,
        progress: null, result: JSON.stringify(result), error: null, requested_by: 'scheduler', claimed_by: 'bench', slot: time, log_seq: 0,
      });
      for (let d = 0; d < DAYS; d++) {
        for (let c = 0; c < CLIENTS; c++) rows.push(job('backup', c, now - (DAYS - d) * DAY + c, { scannedBytes: 1e9 }));
        if (d === DAYS - 3) for (let c = 0; c < CLIENTS; c++) rows.push(job(RESTORE_TEST_KIND, c, now - 3 * DAY + 3 * 3_600_000 + c, { image: ids[d * CLIENTS + c], restoreMs: 60_000 + c, passed: true, sample: 'all' }));
        if (rows.length >= 50_000) {
          const batch = rows;
          rows = [];
          for (let i = 0; i < batch.length; i += 1000) await db.insertInto('jobs').values(batch.slice(i, i + 1000)).execute();
        }
      }
      for (let i = 0; i < rows.length; i += 1000) await db.insertInto('jobs').values(rows.slice(i, i + 1000)).execute();
    });
  } finally {
    await db.destroy();
  }
}

async function openKysely(backend: 'sqlite' | 'postgres', url: string): Promise<Kysely<Database>> {
  if (backend === 'sqlite') return new Kysely<Database>({ dialect: new NodeSqliteDialect({ database: openNodeSqlite(url, { busyTimeoutMs: 30_000 }) }) });
  const { default: pg } = await import('pg');
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 2 }) }) });
}

async function main(): Promise<void> {
  const o = args();
  const work = await mkdtemp(join(tmpdir(), 'coffer-bench-compliance-'));
  let pg: PostgresServer | undefined;
  try {
    const now = Date.UTC(2030, 0, 1);
    const url = o.backend === 'sqlite' ? o.keep ?? join(work, 'catalog.db') : await (pg = await startPostgres()).createSchema('bench');
    const filled = o.backend === 'sqlite' && o.keep !== undefined && await stat(o.keep).then(() => true, () => false);
    console.log(`compliance report, ${o.backend} catalog, scale ${o.scale}${filled ? `, ${url} as filled before` : ''}`);
    const spent = new Map<string, { ms: number; n: number }>();
    let counting = false;
    const catalog = await openCatalog(url, {
      now: () => now,
      onQuery: (q) => {
        if (!counting) return;
        const key = q.sql.replace(/\s+/g, ' ').slice(0, 90);
        const e = spent.get(key) ?? { ms: 0, n: 0 };
        e.ms += q.durationMs;
        e.n++;
        spent.set(key, e);
      },
    });
    try {
      if (!filled) await fill(catalog, o.backend, url, o.scale, now);
      // A catalog that has been in use has statistics and a visibility map (autovacuum): a bulk
      // load has neither until then.
      if (o.backend === 'postgres' && !filled) await timed('vacuum analyze (what autovacuum does in a catalog in use)', async () => {
        const db = await openKysely('postgres', url);
        try {
          await sql`vacuum analyze`.execute(db);
        } finally {
          await db.destroy();
        }
      });
      if (o.backend === 'sqlite') console.log(`  catalog file: ${((await stat(url)).size / 2 ** 20).toFixed(0)} MiB`);
      const services: Services = { catalog, now: () => now, agents: new AgentRegistry(),
      nodes: new NodeRegistry(), node: () => { throw new Error('no agent in this benchmark'); }, storageAccess: () => { throw new Error('no storage in this benchmark'); } };
      counting = true;
      for (let i = 0; i < o.runs; i++) {
        const t = performance.now();
        const r = await complianceReport(services);
        const ms = performance.now() - t;
        const copiesMissing = r.rows.reduce((n, row) => n + row.copies.reduce((m, g) => m + g.images, 0), 0);
        const offsiteMissing = r.rows.reduce((n, row) => n + (row.offsite?.images ?? 0), 0);
        console.log(`  report ${i + 1}: ${ms.toFixed(0)} ms: ${r.policies} policies, ${r.clients} clients, ${r.outOfCompliance} out of compliance, ${copiesMissing} images without their duplicate, ${offsiteMissing} without an offsite copy`);
      }
      console.log('  statements by time spent in all runs:');
      for (const [sqlText, e] of [...spent].sort((a, b) => b[1].ms - a[1].ms).slice(0, 6)) console.log(`    ${e.ms.toFixed(0).padStart(7)} ms  ${String(e.n).padStart(5)}x  ${sqlText}`);
    } finally {
      await catalog.close();
    }
  } finally {
    await pg?.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
