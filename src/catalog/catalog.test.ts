// The catalog suite: every case runs against SQLite (a temporary file) and against a real
// PostgreSQL server started once for this file (src/testing/postgres.ts). Each case gets an empty
// catalog of its own (a new file; a new schema, which is faster to make than a database) and a
// fake clock. Cases run one at a time: run side by side on two CPUs they were slower.

import { after, before, describe, it } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isCofferError } from '../core/errors.ts';
import { startPostgres, type PostgresServer } from '../testing/postgres.ts';
import { openCatalog, parseCatalogUrl, type Catalog, type OpenCatalogOptions } from './catalog.ts';
import { redactUrl } from './db-error.ts';
import { CATALOG_VERSION, MIGRATIONS } from './migrate.ts';
import type { Page } from './page.ts';
import { expectCode } from '../testing/errors.ts';

const T0 = Date.UTC(2026, 11, 1, 12, 0, 0);

interface Backend {
  name: 'sqlite' | 'postgres';
  /** The URL of a new, empty catalog. */
  fresh(): Promise<string>;
}

interface Fixture {
  catalog: Catalog;
  url: string;
  clock: { t: number };
  /** Opens the same catalog again (another pool / connection), closed at the end of the test. */
  reopen(options?: OpenCatalogOptions): Promise<Catalog>;
}


/** Every item of a paginated list, following `next` with pages of `limit`. */
async function walk<T>(list: (options: { limit: number; cursor?: string }) => Promise<Page<T>>, limit: number): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | undefined;
  for (let pages = 0; ; pages++) {
    assert.ok(pages < 10_000, 'the cursor never ends');
    const page = await list({ limit, ...(cursor === undefined ? {} : { cursor }) });
    assert.ok(page.items.length <= limit);
    out.push(...page.items);
    if (page.next === undefined) return out;
    assert.equal(page.items.length, limit, 'a page before the last is full');
    cursor = page.next;
  }
}

const doc = (kind: string, name: string, spec: Record<string, unknown>, labels?: Record<string, string>) =>
  ({ apiVersion: 'coffer/v1', kind, metadata: { name, ...(labels === undefined ? {} : { labels }) }, spec });

const backends: Backend[] = [];
let sqliteDir = '';
let pgServer: PostgresServer | undefined;
let counter = 0;

backends.push({ name: 'sqlite', fresh: async () => join(sqliteDir, `catalog-${++counter}.db`) });
backends.push({
  name: 'postgres',
  fresh: async () => {
    // No skip: if PostgreSQL could not start, every PostgreSQL case fails with the reason.
    if (pgServer === undefined) throw new Error('PostgreSQL did not start (see the error of the before hook)');
    return pgServer.createSchema(`catalog_${++counter}`);
  },
});

before(async () => {
  sqliteDir = await mkdtemp(join(tmpdir(), 'coffer-catalog-'));
});

after(async () => {
  await pgServer?.stop();
  await rm(sqliteDir, { recursive: true, force: true });
});

/** The query plan of `sql` (as the catalog ran it) on one line. */
async function explain(backend: Backend, url: string, sql: string, parameters: readonly unknown[]): Promise<string> {
  if (backend.name === 'sqlite') {
    const { DatabaseSync } = await import('node:sqlite');
    const db = new DatabaseSync(url, { readOnly: true });
    try {
      const rows = db.prepare(`explain query plan ${sql}`).all(...(parameters as (string | number | null)[]));
      return rows.map((r) => r.detail).join(' | ');
    } finally {
      db.close();
    }
  }
  const pg = (await import('pg')).default;
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    // The test tables are tiny, where a scan is cheapest: ask whether an index can serve the
    // query in its order at all.
    await client.query('set enable_seqscan = off');
    await client.query('set enable_sort = off');
    const result = await client.query(`explain ${sql}`, parameters as unknown[]);
    return result.rows.map((r: Record<string, string>) => r['QUERY PLAN']!.trim()).join(' | ');
  } finally {
    await client.end();
  }
}

async function setup(t: TestContext, backend: Backend, options: OpenCatalogOptions = {}): Promise<Fixture> {
  const url = await backend.fresh();
  const clock = { t: T0 };
  const opts: OpenCatalogOptions = { now: () => clock.t, retry: { baseMs: 1000, maxMs: 10_000 }, ...options };
  const catalog = await openCatalog(url, opts);
  const opened: Catalog[] = [catalog];
  t.after(async () => { for (const c of opened) await c.close(); });
  return {
    catalog, url, clock,
    reopen: async (more = {}) => {
      const c = await openCatalog(url, { ...opts, ...more });
      opened.push(c);
      return c;
    },
  };
}

/** A storage unit, a policy and a client, which images and jobs refer to. */
async function basics(catalog: Catalog, clients = ['alpha']): Promise<void> {
  await catalog.storageUnits.apply(doc('StorageUnit', 'vault', { url: 's3://bucket/vault', maxJobs: 2 }));
  await catalog.storageUnits.apply(doc('StorageUnit', 'offsite', { url: '/mnt/offsite' }));
  await catalog.policies.apply(doc('Policy', 'nightly', { schedules: [{ name: 'daily', calendar: '0 1 * * *' }] }));
  for (const name of clients) await catalog.clients.upsert({ name, platform: 'linux' });
}

for (const backend of backends) {
  describe(`catalog on ${backend.name}`, () => {
    // Started here, not for the whole file, so that the SQLite cases run even when PostgreSQL
    // cannot start; its cases then fail with the reason (never skipped).
    if (backend.name === 'postgres') before(async () => { pgServer ??= await startPostgres(); });
    describe('opening and migrations', () => {
      it('migrates an empty catalog to the current version, and reopening changes nothing', async (t) => {
        const { catalog, reopen } = await setup(t, backend);
        assert.equal(catalog.dialect, backend.name);
        assert.equal(catalog.migratedFrom, 0);
        assert.equal(catalog.version, CATALOG_VERSION);
        await catalog.settings.set('limit', 5);
        const again = await reopen();
        assert.equal(again.migratedFrom, CATALOG_VERSION);
        assert.equal(again.version, CATALOG_VERSION);
        assert.equal(await again.settings.get('limit'), 5);
      });

      it('a migration that fails leaves the catalog at its old version, without its half-done changes', async (t) => {
        const { reopen } = await setup(t, backend);
        const broken = [...MIGRATIONS, {
          version: CATALOG_VERSION + 1, name: 'broken',
          up: async (db: import('kysely').Kysely<any>) => {
            await db.schema.createTable('extra').addColumn('x', 'integer').execute();
            await db.insertInto('settings').values({ key: 'half', value: '1', updated: 1 }).execute();
            throw new Error('the migration failed on purpose');
          },
        }];
        await assert.rejects(reopen({ migrations: broken }), /failed on purpose/);
        const same = await reopen();
        assert.equal(same.migratedFrom, CATALOG_VERSION);
        assert.equal(await same.settings.get('half'), undefined);
        // The table of the failed migration does not exist: a good one can create it.
        const good = [...MIGRATIONS, {
          version: CATALOG_VERSION + 1, name: 'good',
          up: async (db: import('kysely').Kysely<any>) => { await db.schema.createTable('extra').addColumn('x', 'integer').execute(); },
        }];
        const upgraded = await reopen({ migrations: good });
        assert.equal(upgraded.migratedFrom, CATALOG_VERSION);
        assert.equal(upgraded.version, CATALOG_VERSION + 1);
        // This Coffer's code now meets a newer catalog: refused, not guessed at.
        const e = await expectCode(reopen(), 'UNSUPPORTED', new RegExp(`schema version ${CATALOG_VERSION + 1}`));
        assert.match(e.hint ?? '', /newer Coffer/);
      });

      it('a call on a closed catalog is a CofferError that says so', async (t) => {
        const { reopen } = await setup(t, backend);
        const c = await reopen();
        await c.close();
        await expectCode(c.clients.list(), 'INTERNAL', /catalog is closed/);
      });
    });

    describe('transactions', () => {
      it('commits everything done through tx together, and nothing when fn throws', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const mistake = new Error('rolled back on purpose');
        await assert.rejects(catalog.transaction(async (tx) => {
          await tx.clients.upsert({ name: 'beta' });
          const image = await tx.images.add({ client: 'beta', policy: 'nightly', level: 'full', streams: { '/': 'snap1' } });
          await tx.copies.add(image.id, { storageUnit: 'vault', snapshots: { '/': 'snap1' } });
          await tx.jobs.enqueue({ kind: 'backup', client: 'beta' });
          await tx.transaction(async (inner) => inner.settings.set('k', 1)); // joins the outer one
          throw mistake;
        }), (e) => e === mistake);
        assert.equal(await catalog.clients.find('beta'), undefined);
        assert.equal((await catalog.images.list()).items.length, 0);
        assert.equal((await catalog.jobs.list()).items.length, 0);
        assert.equal(await catalog.settings.get('k'), undefined);

        const id = await catalog.transaction(async (tx) => {
          await tx.clients.upsert({ name: 'beta' });
          return (await tx.images.add({ client: 'beta', policy: 'nightly', level: 'full', streams: { '/': 's' } })).id;
        });
        assert.equal((await catalog.images.get(id)).client, 'beta');
      });
    });

    describe('clients', () => {
      it('registers, updates, lists by name with a cursor and records contact', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        const names = Array.from({ length: 23 }, (_, i) => `host-${String(i).padStart(2, '0')}`).reverse();
        for (const name of names) await catalog.clients.upsert({ name, platform: 'linux', hostIdentity: { machineId: name } });
        const c = await catalog.clients.upsert({ name: 'host-05', agentId: 'agent-5' });
        assert.equal(c.platform, 'linux', 'fields not given are kept');
        assert.equal(c.agentId, 'agent-5');
        assert.deepEqual(c.hostIdentity, { machineId: 'host-05' });
        const all = await walk((o) => catalog.clients.list(o), 5);
        assert.deepEqual(all.map((x) => x.name), [...names].sort());
        clock.t += 5000;
        await catalog.clients.seen('host-05');
        assert.equal((await catalog.clients.get('host-05')).lastSeen, T0 + 5000);
        await expectCode(catalog.clients.get('nobody'), 'NOT_FOUND', /client nobody/);
        await expectCode(catalog.clients.seen('nobody'), 'NOT_FOUND');
        await expectCode(catalog.clients.upsert({ name: 'x', maxStreams: 0 }), 'USAGE');
      });

      it('says which of many names are registered, in batches', async (t) => {
        const { catalog } = await setup(t, backend);
        for (const name of ['a', 'b', 'c']) await catalog.clients.upsert({ name });
        const asked = [...Array.from({ length: 1200 }, (_, i) => `missing-${i}`), 'c', 'a', 'a'];
        assert.deepEqual([...await catalog.clients.registered(asked)].sort(), ['a', 'c']);
        assert.equal((await catalog.clients.registered([])).size, 0);
      });

      it('applies Client documents as revisions, and refuses to remove a client that has images', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const r1 = await catalog.clients.apply(doc('Client', 'alpha', { maxStreams: 2 }, { site: 'paris' }), { by: 'ada' });
        assert.deepEqual(r1, { name: 'alpha', revision: 1, changed: true });
        assert.deepEqual(await catalog.clients.apply(doc('Client', 'alpha', { maxStreams: 2 }, { site: 'paris' })), { name: 'alpha', revision: 1, changed: false });
        const c = await catalog.clients.get('alpha');
        assert.equal(c.maxStreams, 2);
        assert.deepEqual(c.labels, { site: 'paris' });
        assert.equal(c.platform, 'linux');
        await expectCode(catalog.clients.apply(doc('Client', 'alpha', { maxStreams: -1 })), 'INVALID_CONFIG');
        await catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', streams: { '/': 's' } });
        await expectCode(catalog.clients.remove('alpha'), 'CONFLICT', /images/);
        await catalog.clients.upsert({ name: 'gone' });
        await catalog.clients.remove('gone');
        await expectCode(catalog.clients.remove('gone'), 'NOT_FOUND');
        const history = await catalog.clients.history('alpha');
        assert.deepEqual(history.items.map((r) => [r.revision, r.appliedBy]), [[1, 'ada']]);
      });
    });

    describe('documents and their history', () => {
      for (const [kind, module] of [['Policy', 'policies'], ['Lifecycle', 'lifecycles'], ['StorageUnit', 'storageUnits']] as const) {
        it(`${kind}: every change is a new revision; unchanged applies record nothing; removal is recorded`, async (t) => {
          const { catalog, clock } = await setup(t, backend);
          const m = catalog[module];
          const spec = (n: number) => ({ url: `/srv/unit${n}`, keep: { daily: n }, nested: { b: 1, a: [1, 2] } });
          for (let n = 1; n <= 12; n++) {
            clock.t = T0 + n * 1000;
            const r = await m.apply(doc(kind, 'main', spec(n), { tier: `t${n}` }), { by: `user${n}` });
            assert.deepEqual(r, { name: 'main', revision: n, changed: true });
          }
          // Same document, keys in another order: no new revision.
          const reordered = { metadata: { labels: { tier: 't12' }, name: 'main' }, spec: { nested: { a: [1, 2], b: 1 }, keep: { daily: 12 }, url: '/srv/unit12' }, kind, apiVersion: 'coffer/v1' };
          assert.deepEqual(await m.apply(reordered), { name: 'main', revision: 12, changed: false });
          const current = await m.get('main');
          assert.equal(current.revision, 12);
          assert.deepEqual(current.spec, spec(12));
          assert.deepEqual(current.labels, { tier: 't12' });
          assert.equal(current.updatedBy, 'user12');

          const history = await walk((o) => m.history('main', o), 5);
          assert.deepEqual(history.map((r) => r.revision), [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
          assert.deepEqual(history[11]!.document, doc(kind, 'main', spec(1), { tier: 't1' }));
          assert.equal(history[11]!.applied, T0 + 1000);
          assert.equal(history[11]!.appliedBy, 'user1');
          assert.deepEqual((await m.revision('main', 3)).document?.spec, spec(3));
          await expectCode(m.revision('main', 99), 'NOT_FOUND');

          await m.apply(doc(kind, 'other', spec(0)));
          assert.deepEqual((await walk((o) => m.list(o), 1)).map((d) => d.name), ['main', 'other']);
          await m.remove('main', { by: 'ada' });
          assert.equal(await m.find('main'), undefined);
          await expectCode(m.get('main'), 'NOT_FOUND');
          await expectCode(m.remove('main'), 'NOT_FOUND');
          const after = await m.history('main', { limit: 2 });
          assert.equal(after.items[0]!.revision, 13);
          assert.equal(after.items[0]!.document, undefined);
          assert.equal(after.items[0]!.appliedBy, 'ada');
          // Applied again after removal: the history goes on.
          assert.equal((await m.apply(doc(kind, 'main', spec(1)))).revision, 14);
          await expectCode(m.apply(doc(kind === 'Policy' ? 'Lifecycle' : 'Policy', 'x', {})), 'INVALID_CONFIG');
          await expectCode(m.history('main', { cursor: 'garbage' }), 'USAGE', /cursor/);
        });
      }

      it('StorageUnit: url, maxJobs and passwordRef are columns; a bad spec is INVALID_CONFIG; a unit with copies stays', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const unit = await catalog.storageUnits.get('vault');
        assert.equal(unit.url, 's3://bucket/vault');
        assert.equal(unit.maxJobs, 2);
        await catalog.storageUnits.setRepoId('vault', 'repo-123');
        assert.equal((await catalog.storageUnits.get('vault')).repoId, 'repo-123');
        await expectCode(catalog.storageUnits.setRepoId('none', 'x'), 'NOT_FOUND');
        await expectCode(catalog.storageUnits.apply(doc('StorageUnit', 'bad', { maxJobs: 1 })), 'INVALID_CONFIG', /url/);
        await expectCode(catalog.storageUnits.apply(doc('StorageUnit', 'bad', { url: '/x', maxJobs: 0 })), 'INVALID_CONFIG', /maxJobs/);
        const image = await catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', streams: { '/': 's' } });
        await catalog.copies.add(image.id, { storageUnit: 'vault', snapshots: { '/': 's' } });
        await expectCode(catalog.storageUnits.remove('vault'), 'CONFLICT', /copies/);
        assert.equal((await catalog.storageUnits.history('vault')).items.length, 1, 'the refused removal recorded nothing');
      });
    });

    describe('schedules', () => {
      const timing = (calendar: string) => ({ calendar, missed: 'catch-up' });
      const entry = (client: string, name: string, calendar = '0 1 * * *') => ({ client, name, timing: timing(calendar), level: 'incremental', lifecycle: 'gold' });

      it('sync makes a policy\'s schedules starting now; due() returns those with next_run <= t, earliest first, page by page', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        await basics(catalog, ['alpha', 'beta', 'gamma']);
        await catalog.policies.apply(doc('Policy', 'weekly', {}));
        const made = await catalog.schedules.sync('nightly', [entry('alpha', 'daily'), entry('beta', 'daily'), entry('gamma', 'daily'), entry('gamma', 'hourly', '0 * * * *')]);
        assert.deepEqual([made.created, made.changed, made.kept, made.removed], [4, 0, 0, 0]);
        const alpha = made.schedules[0]!;
        assert.deepEqual(alpha.state, { since: T0, lastSlot: null, lastState: null, nextRun: T0 });
        assert.deepEqual(alpha.timing, timing('0 1 * * *'));
        assert.equal(alpha.level, 'incremental');
        assert.equal(alpha.lifecycle, 'gold');
        clock.t = T0 + 1000;
        await catalog.schedules.sync('weekly', [{ client: 'alpha', name: 'sunday', timing: timing('0 2 * * 0'), level: 'full' }]);
        assert.equal((await catalog.schedules.due(T0 + 999)).length, 4);
        const due = await catalog.schedules.due(T0 + 1000);
        assert.deepEqual(due.map((s) => `${s.policy}/${s.client}/${s.name}`).slice(4), ['weekly/alpha/sunday']);
        assert.equal(due[4]!.lifecycle, undefined);
        // Keyset paging through rows with equal next_run: each once.
        const paged: string[] = [];
        let after: { nextRun: number; id: string } | undefined;
        for (;;) {
          const page = await catalog.schedules.due(T0 + 1000, { limit: 2, ...(after === undefined ? {} : { after }) });
          paged.push(...page.map((s) => s.id));
          if (page.length < 2) break;
          after = { nextRun: page[1]!.state.nextRun!, id: page[1]!.id };
        }
        assert.deepEqual(paged, due.map((s) => s.id));
        assert.equal(await catalog.schedules.nextRun(), T0);
      });

      it('setState() is a compare-and-set on the whole state: a stale previous state changes nothing', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const [s] = (await catalog.schedules.sync('nightly', [entry('alpha', 'daily')])).schedules;
        const next = { since: T0, lastSlot: T0 + 5, lastState: 'queued', nextRun: T0 + 86_400_000 };
        const set = await catalog.schedules.setState(s!.id, s!.state, next);
        assert.deepEqual(set?.state, next);
        assert.equal(set?.client, 'alpha');
        // The same previous state again: the row has moved on.
        assert.equal(await catalog.schedules.setState(s!.id, s!.state, { ...next, nextRun: 1 }), undefined);
        // Nulls compare too (IS NULL, not = NULL).
        const cleared = { since: T0, lastSlot: null, lastState: null, nextRun: null };
        assert.deepEqual((await catalog.schedules.setState(s!.id, next, cleared, { error: { code: 'INVALID_CONFIG' } }))?.error, { code: 'INVALID_CONFIG' });
        assert.deepEqual((await catalog.schedules.setState(s!.id, cleared, next))?.error, undefined);
        assert.equal(await catalog.schedules.setState('nonexistent', next, next), undefined);
        assert.equal(await catalog.schedules.nextRun(), T0 + 86_400_000);
      });

      it('setStates() sets many in one statement, each only from its previous state, nulls included', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const rows = (await catalog.schedules.sync('nightly', Array.from({ length: 1200 }, (_, i) => entry('alpha', `s${i}`)))).schedules;
        const fresh = { since: T0, lastSlot: null, lastState: null, nextRun: T0 };
        const next = (i: number) => ({ since: T0, lastSlot: T0 + i, lastState: i % 2 ? 'queued' : null, nextRun: i % 3 ? T0 + 1000 + i : null });
        // Row 5 has moved on: its change is refused, the others apply (over two statements of 1000).
        await catalog.schedules.setState(rows[5]!.id, fresh, { ...fresh, nextRun: T0 + 1 });
        const changes = rows.map((r, i) => ({ id: r.id, previous: fresh, next: next(i), ...(i === 7 ? { error: { code: 'INVALID_CONFIG' } } : {}) }));
        const result = await catalog.transaction((tx) => tx.schedules.setStates(changes.slice().reverse()));
        assert.equal(result.length, 1200);
        result.reverse().forEach((r, i) => assert.deepEqual(r?.state, i === 5 ? undefined : next(i), `row ${i}`));
        assert.deepEqual(result[7]!.error, { code: 'INVALID_CONFIG' });
        assert.deepEqual((await catalog.schedules.get(rows[5]!.id)).state, { ...fresh, nextRun: T0 + 1 });
        assert.deepEqual((await catalog.schedules.get(rows[11]!.id)).state, next(11));
        // Applying the same changes again: every row has moved on.
        assert.deepEqual((await catalog.schedules.setStates(changes)).filter((r) => r !== undefined), []);
        assert.deepEqual(await catalog.schedules.setStates([]), []);
        await expectCode(catalog.schedules.setStates([changes[0]!, changes[0]!]), 'USAGE', /twice/);
      });

      it('re-applying keeps the state of unchanged timings, restarts changed ones from now, removes the others; schedules go with their policy', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        await basics(catalog, ['alpha', 'beta', 'gamma']);
        await catalog.policies.apply(doc('Policy', 'weekly', {}));
        const first = (await catalog.schedules.sync('nightly', [entry('alpha', 'daily'), entry('beta', 'daily'), entry('gamma', 'daily')])).schedules;
        const moved = { since: T0, lastSlot: T0 - 5000, lastState: 'missed', nextRun: T0 + 9000 };
        for (const s of first) assert.ok(await catalog.schedules.setState(s.id, s.state, moved));
        clock.t = T0 + 60_000;
        const again = await catalog.schedules.sync('nightly', [
          { ...entry('alpha', 'daily'), level: 'full', lifecycle: undefined },
          entry('beta', 'daily', '0 3 * * *'),
        ]);
        assert.deepEqual([again.created, again.changed, again.kept, again.removed], [0, 1, 1, 1]);
        const [alpha, beta] = again.schedules;
        assert.equal(alpha!.id, first[0]!.id);
        assert.deepEqual(alpha!.state, moved);
        assert.equal(alpha!.level, 'full');
        assert.equal(alpha!.lifecycle, undefined);
        assert.equal(beta!.id, first[1]!.id);
        assert.deepEqual(beta!.state, { since: T0 + 60_000, lastSlot: T0 - 5000, lastState: 'missed', nextRun: T0 + 60_000 });
        assert.equal(await catalog.schedules.find(first[2]!.id), undefined);
        // Key order of the timing does not make it a change.
        const reordered = await catalog.schedules.sync('nightly', [
          { ...entry('alpha', 'daily'), level: 'full', lifecycle: undefined, timing: { missed: 'catch-up', calendar: '0 1 * * *' } },
          entry('beta', 'daily', '0 3 * * *'),
        ]);
        assert.equal(reordered.kept, 2);
        await catalog.schedules.sync('weekly', [{ client: 'alpha', name: 'sunday', timing: timing('0 2 * * 0'), level: 'full' }]);
        assert.deepEqual((await walk((o) => catalog.schedules.list(o), 1)).map((s) => `${s.policy}/${s.client}/${s.name}`),
          ['nightly/alpha/daily', 'nightly/beta/daily', 'weekly/alpha/sunday']);
        assert.deepEqual((await catalog.schedules.list({ client: 'alpha', policy: 'weekly' })).items.map((s) => s.name), ['sunday']);
        await expectCode(catalog.schedules.sync('nightly', [entry('nobody', 'x')]), 'NOT_FOUND');
        await expectCode(catalog.schedules.sync('nopolicy', [entry('alpha', 'x')]), 'NOT_FOUND');
        await expectCode(catalog.schedules.sync('nightly', [entry('alpha', 'x'), entry('alpha', 'x')]), 'USAGE', /given twice/);
        // A failed sync changed nothing.
        assert.equal((await catalog.schedules.list({ policy: 'nightly' })).items.length, 2);
        await catalog.policies.remove('weekly');
        assert.deepEqual((await catalog.schedules.list()).items.map((s) => s.policy), ['nightly', 'nightly']);
        await expectCode(catalog.schedules.get('nonexistent'), 'NOT_FOUND');
        await catalog.schedules.remove(alpha!.id);
        await expectCode(catalog.schedules.remove(alpha!.id), 'NOT_FOUND');
      });
    });

    describe('images', () => {
      it('lists newest first, filtered by client, policy, state, since and until; the cursor walks every row once, equal times included', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog, ['alpha', 'beta']);
        await catalog.policies.apply(doc('Policy', 'hourly', {}));
        const inputs: import('./images.ts').ImageInput[] = [];
        for (let i = 0; i < 60; i++) {
          inputs.push({
            client: i % 2 === 0 ? 'alpha' : 'beta',
            policy: i % 3 === 0 ? 'hourly' : 'nightly',
            level: i % 10 === 0 ? 'full' : 'incremental',
            // Three distinct times only: most rows share their time with many others.
            time: T0 + (i % 3) * 60_000,
            state: i % 7 === 0 ? 'partial' : 'ok',
            streams: { '/': `snap-${i}`, '/home': `home-${i}` },
            summary: { files: i },
          });
        }
        const ids = await catalog.images.addMany(inputs);
        assert.equal(new Set(ids).size, 60);
        const key = (x: { time: number; id: string }) => `${String(x.time).padStart(15, '0')}|${x.id}`;
        const expected = (pred: (i: (typeof inputs)[number]) => boolean) =>
          inputs.map((input, n) => ({ ...input, time: input.time!, id: ids[n]! })).filter(pred).sort((a, b) => (key(a) < key(b) ? 1 : -1)).map((x) => x.id);

        for (const limit of [1, 7, 60, 1000]) {
          assert.deepEqual((await walk((o) => catalog.images.list(o), limit)).map((x) => x.id), expected(() => true), `limit ${limit}`);
        }
        assert.deepEqual((await walk((o) => catalog.images.list({ ...o, client: 'alpha' }), 4)).map((x) => x.id), expected((x) => x.client === 'alpha'));
        assert.deepEqual((await walk((o) => catalog.images.list({ ...o, policy: 'hourly', client: 'beta' }), 3)).map((x) => x.id),
          expected((x) => x.policy === 'hourly' && x.client === 'beta'));
        assert.deepEqual((await walk((o) => catalog.images.list({ ...o, state: 'partial' }), 2)).map((x) => x.id), expected((x) => x.state === 'partial'));
        assert.deepEqual((await walk((o) => catalog.images.list({ ...o, since: T0 + 60_000, until: T0 + 120_000 }), 6)).map((x) => x.id),
          expected((x) => x.time === T0 + 60_000));
        const one = await catalog.images.get(ids[10]!);
        assert.deepEqual(one.streams, { '/': 'snap-10', '/home': 'home-10' });
        assert.deepEqual(one.summary, { files: 10 });
        assert.equal(one.level, 'full');

        await expectCode(catalog.images.list({ limit: 1001 }), 'USAGE', /limit/);
        await expectCode(catalog.images.list({ limit: 0 }), 'USAGE');
        const jobsCursor = (await catalog.jobs.enqueueMany([{ kind: 'a' }, { kind: 'b' }]), (await catalog.jobs.list({ limit: 1 })).next!);
        await expectCode(catalog.images.list({ cursor: jobsCursor }), 'USAGE', /cursor/);
      });

      it('a pending image becomes good only through complete(); latestGood() finds the parent for an incremental', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        await basics(catalog, ['alpha', 'beta']);
        const add = async (client: string, streams: Record<string, string>, state: 'ok' | 'pending' | 'partial' = 'ok') => {
          clock.t += 1000;
          return catalog.images.add({ client, policy: 'nightly', level: 'incremental', streams, state });
        };
        assert.equal(await catalog.images.latestGood('alpha', 'nightly', '/'), undefined);
        const a1 = await add('alpha', { '/': 's1', '/db': 'd1' });
        const a2 = await add('alpha', { '/': 's2' });
        await add('alpha', { '/': 's3' }, 'partial');
        await add('beta', { '/': 'b1' });
        const pending = await add('alpha', { '/': 's4' }, 'pending');
        assert.equal((await catalog.images.latestGood('alpha', 'nightly', '/'))?.id, a2.id, 'neither partial nor pending');
        assert.equal((await catalog.images.latestGood('alpha', 'nightly', '/db'))?.id, a1.id);
        assert.equal(await catalog.images.latestGood('alpha', 'other', '/'), undefined);
        await catalog.copies.add(a1.id, { storageUnit: 'offsite', snapshots: { '/': 'o1' } });
        await catalog.copies.add(a2.id, { storageUnit: 'vault', snapshots: { '/': 's2' } });
        assert.equal((await catalog.images.latestGood('alpha', 'nightly', '/', { storageUnit: 'offsite' }))?.id, a1.id);

        const done = await catalog.images.complete(pending.id, { state: 'ok', streams: { '/': 's4', '/db': 'd4' }, summary: { files: 4 } });
        assert.equal(done.state, 'ok');
        assert.equal((await catalog.images.latestGood('alpha', 'nightly', '/db'))?.id, pending.id);
        await expectCode(catalog.images.complete(pending.id, { state: 'failed' }), 'CONFLICT', /ok, not pending/);
        await expectCode(catalog.images.complete('nope', { state: 'ok' }), 'NOT_FOUND');
        await expectCode(catalog.images.add({ client: 'nobody', policy: 'nightly', level: 'full', streams: {} }), 'NOT_FOUND', /client/);
        await expectCode(catalog.images.add({ id: a1.id, client: 'alpha', policy: 'nightly', level: 'full', streams: {} }), 'ALREADY_EXISTS');
        await expectCode(catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', streams: {}, state: 'bogus' as 'ok' }), 'USAGE');

        // Many images of other selections in between: latestGood looks past its first batch.
        const older = await add('alpha', { '/rare': 'r1' });
        for (let i = 0; i < 120; i++) await add('alpha', { '/': `x${i}` });
        assert.equal((await catalog.images.latestGood('alpha', 'nightly', '/rare'))?.id, older.id);

        await catalog.images.remove(a2.id);
        await expectCode(catalog.images.get(a2.id), 'NOT_FOUND');
        assert.equal((await catalog.copies.list({ imageId: a2.id })).items.length, 0, 'its copies went with it');
      });
    });

    describe('copies', () => {
      it('records copies per storage unit; expiredCopies() lists due copies by expiry, without held, expired or lost ones', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        await basics(catalog);
        const image = await catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', streams: { '/': 's' } });
        const copies: import('./copies.ts').Copy[] = [];
        for (let i = 0; i < 30; i++) {
          // Expiry times shared by many copies; every fifth never expires.
          const expires = i % 5 === 4 ? null : T0 + (i % 3) * 1000;
          copies.push(await catalog.copies.add(image.id, { storageUnit: i % 2 ? 'vault' : 'offsite', snapshots: { '/': `s${i}` }, expires }));
        }
        await catalog.copies.hold(copies[0]!.id, 'case 42');
        await catalog.copies.update(copies[1]!.id, { state: 'expired' });
        await catalog.copies.update(copies[2]!.id, { state: 'lost' });
        await catalog.copies.update(copies[3]!.id, { state: 'suspect' });
        const due = (now: number) => copies
          .filter((c, i) => i > 2 && c.expires !== undefined && c.expires <= now)
          .sort((a, b) => (a.expires! - b.expires!) || (a.id < b.id ? -1 : 1)).map((c) => c.id);
        assert.deepEqual((await walk((o) => catalog.copies.expiredCopies(T0 + 1000, o), 4)).map((c) => c.id), due(T0 + 1000));
        clock.t = T0 + 5000;
        assert.deepEqual((await walk((o) => catalog.copies.expiredCopies(undefined, o), 3)).map((c) => c.id), due(T0 + 5000), 'default: the server clock');
        assert.ok(due(T0 + 5000).includes(copies[3]!.id), 'a suspect copy still expires');

        const released = await catalog.copies.release(copies[0]!.id);
        assert.equal(released.hold, undefined);
        assert.equal(released.updated, T0 + 5000);
        assert.ok((await walk((o) => catalog.copies.expiredCopies(T0 + 5000, o), 100)).some((c) => c.id === copies[0]!.id));
        assert.deepEqual((await walk((o) => catalog.copies.list({ ...o, storageUnit: 'vault' }), 4)).map((c) => c.id),
          copies.filter((_, i) => i % 2).map((c) => c.id));
        const changed = await catalog.copies.update(copies[5]!.id, { expires: null });
        assert.equal(changed.expires, undefined);
        assert.deepEqual((await catalog.copies.get(copies[6]!.id)).snapshots, { '/': 's6' });

        await expectCode(catalog.copies.hold(copies[0]!.id, ' '), 'USAGE');
        await expectCode(catalog.copies.add(image.id, { storageUnit: 'nowhere', snapshots: {} }), 'NOT_FOUND');
        await expectCode(catalog.copies.add('no-image', { storageUnit: 'vault', snapshots: {} }), 'NOT_FOUND');
        await expectCode(catalog.copies.update('no-copy', { state: 'ok' }), 'NOT_FOUND');
        await expectCode(catalog.copies.update(copies[0]!.id, { state: 'gone' as 'ok' }), 'USAGE');
        await catalog.copies.remove(copies[0]!.id);
        await expectCode(catalog.copies.get(copies[0]!.id), 'NOT_FOUND');
      });
    });

    describe('lifecycle scan', () => {
      it('new images are due at once; due() pages by (lifecycle_next, id); setNext() and lookAgain() move them; copiesOf() and imagesById() batch', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const images = [];
        for (let i = 0; i < 7; i++) images.push(await catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', time: T0 + i, streams: { '/': `s${i}` } }));
        const ids = images.map((i) => i.id);
        const due = async (now: number, limit = 2) => (await walk((o) => catalog.lifecycleScan.due(now, o), limit)).map((i) => i.id);
        assert.deepEqual(await due(T0), ids, 'a new image is due from time 0');
        assert.equal((await catalog.lifecycleScan.due(T0, { limit: 1 })).items[0]!.lifecycleNext, 0);
        await catalog.lifecycleScan.setNext(ids[0]!, null);
        await catalog.lifecycleScan.setNext(ids[1]!, T0 + 5000);
        await catalog.lifecycleScan.setNext(ids[2]!, T0 + 1000);
        assert.deepEqual(await due(T0), ids.slice(3));
        assert.deepEqual(await due(T0 + 5000, 3), [...ids.slice(3), ids[2], ids[1]], 'earliest first');
        // lookAgain() only brings a time forward, and wakes an image that was done.
        await catalog.lifecycleScan.lookAgain(ids[1]!, T0 + 9000);
        await catalog.lifecycleScan.lookAgain(ids[0]!, T0 + 100);
        assert.deepEqual(await due(T0 + 100), [...ids.slice(3), ids[0]]);
        assert.deepEqual(await due(T0 + 5000), [...ids.slice(3), ids[0], ids[2], ids[1]]);
        // With `expected`: set only if nothing moved it since it was read.
        assert.equal(await catalog.lifecycleScan.setNext(ids[3]!, T0 + 7000, { expected: 5 }), false);
        assert.equal(await catalog.lifecycleScan.setNext(ids[3]!, T0 + 7000, { expected: 0 }), true);
        assert.deepEqual(await due(T0 + 5000), [...ids.slice(4), ids[0], ids[2], ids[1]]);
        await catalog.lifecycleScan.setNext(ids[3]!, 0);
        await catalog.copies.add(ids[4]!, { storageUnit: 'vault', snapshots: { '/': 'a' } });
        await catalog.copies.add(ids[4]!, { storageUnit: 'offsite', snapshots: { '/': 'b' } });
        const copies = await catalog.lifecycleScan.copiesOf([ids[4]!, ids[5]!]);
        assert.deepEqual([...copies.keys()], [ids[4], ids[5]]);
        assert.deepEqual(copies.get(ids[4]!)!.map((c) => c.storageUnit), ['vault', 'offsite']);
        assert.deepEqual(copies.get(ids[5]!), []);
        const byId = await catalog.lifecycleScan.imagesById([ids[6]!, 'no-such-image']);
        assert.deepEqual([...byId.keys()], [ids[6]]);
        assert.equal(byId.get(ids[6]!)!.time, T0 + 6);
      });
    });

    describe('jobs', () => {
      it('lists newest first, filtered by state, client, policy and kind; the cursor walks every job once', async (t) => {
        const { catalog } = await setup(t, backend);
        const inputs = Array.from({ length: 45 }, (_, i) => ({
          kind: ['backup', 'restore', 'expire'][i % 3]!, client: i % 2 ? 'alpha' : 'beta', policy: i % 5 ? 'nightly' : 'weekly',
          spec: { n: i }, requestedBy: 'ada',
        }));
        const ids = await catalog.jobs.enqueueMany(inputs);
        for (let i = 0; i < 6; i++) await catalog.jobs.claimNext();
        const runningIds = ids.slice(0, 6);
        const expected = (pred: (n: number) => boolean) => ids.map((id, n) => [id, n] as const).filter(([, n]) => pred(n)).map(([id]) => id).reverse();
        assert.deepEqual((await walk((o) => catalog.jobs.list(o), 8)).map((j) => j.id), expected(() => true));
        assert.deepEqual((await walk((o) => catalog.jobs.list({ ...o, state: 'running' }), 4)).map((j) => j.id), [...runningIds].reverse());
        assert.deepEqual((await walk((o) => catalog.jobs.list({ ...o, state: ['running', 'queued'], client: 'alpha' }), 4)).map((j) => j.id), expected((n) => n % 2 === 1));
        assert.deepEqual((await walk((o) => catalog.jobs.list({ ...o, policy: 'weekly' }), 2)).map((j) => j.id), expected((n) => n % 5 === 0));
        assert.deepEqual((await walk((o) => catalog.jobs.list({ ...o, kind: 'restore', state: 'queued' }), 5)).map((j) => j.id), expected((n) => n % 3 === 1 && n >= 6));
        const counts = await catalog.jobs.counts();
        assert.equal(counts.running, 6);
        assert.equal(counts.queued, 39);
        assert.equal(counts.failed, 0);
        const job = await catalog.jobs.get(ids[7]!);
        assert.deepEqual(job.spec, { n: 7 });
        assert.equal(job.requestedBy, 'ada');
        await expectCode(catalog.jobs.list({ state: 'sleeping' as 'queued' }), 'USAGE');
        await expectCode(catalog.jobs.get('nope'), 'NOT_FOUND');
      });

      it('claimNext() takes the highest priority, then the oldest, past its not_before, within the limits', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        await basics(catalog, ['alpha', 'beta']);
        await catalog.clients.apply(doc('Client', 'beta', { maxStreams: 1 }));
        const low = await catalog.jobs.enqueue({ kind: 'backup', client: 'alpha', priority: 0 });
        clock.t += 10;
        const later = await catalog.jobs.enqueue({ kind: 'backup', client: 'alpha', priority: 5, notBefore: T0 + 1000 });
        const high = await catalog.jobs.enqueue({ kind: 'backup', client: 'alpha', priority: 5 });
        const high2 = await catalog.jobs.enqueue({ kind: 'backup', client: 'alpha', priority: 5 });
        assert.deepEqual((await walk((o) => catalog.jobs.runnable(o), 1)).map((j) => j.id), [high.id, high2.id, low.id]);
        assert.equal((await catalog.jobs.claimNext({ by: 'server-1' }))?.id, high.id);
        assert.equal((await catalog.jobs.get(high.id)).claimedBy, 'server-1');
        clock.t = T0 + 1000;
        assert.equal((await catalog.jobs.claimNext())?.id, later.id, 'its backoff is over; queued before high2');
        assert.equal((await catalog.jobs.claimNext({ kinds: ['restore'] })), undefined);
        assert.equal((await catalog.jobs.claimNext({ global: 2 })), undefined, 'global limit');
        assert.equal((await catalog.jobs.claimNext({ clientStreams: 2 })), undefined, 'client default limit');
        assert.equal((await catalog.jobs.claimNext())?.id, high2.id);
        assert.equal((await catalog.jobs.claimNext())?.id, low.id);

        // Storage unit maxJobs (2) and client maxStreams (beta: 1).
        const u = await catalog.jobs.enqueueMany([
          { kind: 'backup', client: 'alpha', storageUnit: 'vault' },
          { kind: 'backup', client: 'alpha', storageUnit: 'vault' },
          { kind: 'backup', client: 'alpha', storageUnit: 'vault' },
          { kind: 'backup', client: 'beta' },
          { kind: 'backup', client: 'beta' },
          { kind: 'expire', storageUnit: 'offsite' },
        ]);
        const claimed = [];
        for (let job = await catalog.jobs.claimNext(); job !== undefined; job = await catalog.jobs.claimNext()) claimed.push(job.id);
        assert.deepEqual(claimed, [u[0], u[1], u[3], u[5]]);
        await catalog.jobs.finish(u[0]!, { state: 'succeeded' });
        assert.equal((await catalog.jobs.claimNext())?.id, u[2]);
      });

      it('a copy between units counts against the unit it reads and each it writes, not against its client, and never shares a target with another copy', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const [b1, b2] = await catalog.jobs.enqueueMany([
          { kind: 'backup', client: 'alpha', storageUnit: 'vault' },
          { kind: 'backup', client: 'alpha', storageUnit: 'vault' },
        ]);
        assert.equal((await catalog.jobs.claimNext({ clientStreams: 1 }))?.id, b1);
        const dup = await catalog.jobs.enqueue({ kind: 'duplicate', client: 'alpha', storageUnit: 'offsite', spec: { image: 'i', from: 'vault', targets: [{ to: 'offsite', retention: '1y' }] } });
        // The client has its one stream busy; the copy does not run on the client.
        assert.equal((await catalog.jobs.claimNext({ clientStreams: 1 }))?.id, dup.id);
        // vault (maxJobs 2) is now read by the copy and written by the first backup: full.
        assert.equal(await catalog.jobs.claimNext({ clientStreams: 5 }), undefined);
        await catalog.jobs.finish(dup.id, { state: 'succeeded' });
        assert.equal((await catalog.jobs.claimNext({ clientStreams: 5 }))?.id, b2);
        // The old spec ({ from, to }) counts the same way: vault is full again, so it waits.
        const old = await catalog.jobs.enqueue({ kind: 'duplicate', client: 'alpha', storageUnit: 'offsite', spec: { image: 'i', from: 'vault', to: 'offsite', retention: '1y' } });
        assert.equal(await catalog.jobs.claimNext(), undefined);
        await catalog.jobs.finish(b1!, { state: 'succeeded' });
        assert.equal((await catalog.jobs.claimNext())?.id, old.id);
        // Two copies never write one unit at once (offsite has no maxJobs): the second waits for the first.
        const [c1, c2, c3] = await catalog.jobs.enqueueMany([
          { kind: 'duplicate', client: 'alpha', storageUnit: 'offsite', spec: { image: 'j', from: 'elsewhere', targets: [{ to: 'offsite', retention: '1y' }] } },
          { kind: 'duplicate', client: 'alpha', storageUnit: 'third', spec: { image: 'k', from: 'elsewhere', targets: [{ to: 'third', retention: '1y' }] } },
          { kind: 'restore', client: 'alpha', storageUnit: 'offsite' },
        ]);
        await catalog.jobs.finish(old.id, { state: 'succeeded' });
        assert.equal((await catalog.jobs.claimNext())?.id, c1);
        assert.equal((await catalog.jobs.claimNext())?.id, c2, 'a copy to another unit runs alongside');
        assert.equal((await catalog.jobs.claimNext())?.id, c3, 'other jobs on the unit are not held back');
        const c4 = await catalog.jobs.enqueue({ kind: 'duplicate', client: 'alpha', storageUnit: 'offsite', spec: { image: 'l', from: 'elsewhere', to: 'offsite', retention: '1y' } });
        assert.equal(await catalog.jobs.claimNext(), undefined);
        await catalog.jobs.finish(c1!, { state: 'succeeded' });
        assert.equal((await catalog.jobs.claimNext())?.id, c4.id);
      });

      it('two claimers racing for one job: exactly one starts it', async (t) => {
        const { catalog, reopen } = await setup(t, backend);
        // PostgreSQL: a second catalog (its own pool) is a second server. SQLite allows one
        // process; its claims race inside it.
        const other = backend.name === 'postgres' ? await reopen() : catalog;
        for (let round = 0; round < 5; round++) {
          const job = await catalog.jobs.enqueue({ kind: 'backup' });
          const results = await Promise.all([
            catalog.jobs.claim(job.id, { by: 'a' }), other.jobs.claim(job.id, { by: 'b' }),
            catalog.jobs.claimNext({ by: 'c' }), other.jobs.claimNext({ by: 'd' }),
          ]);
          const winners = results.filter((r) => r !== undefined);
          assert.equal(winners.length, 1, `round ${round}: ${winners.length} claimers started the job`);
          assert.equal((await catalog.jobs.get(job.id)).claimedBy, winners[0]!.claimedBy);
          await catalog.jobs.finish(job.id, { state: 'succeeded' });
        }
        await expectCode(catalog.jobs.claim('nope'), 'NOT_FOUND');
      });

      it('many concurrent claims never exceed a storage unit\'s maxJobs nor start a job twice', async (t) => {
        const { catalog, reopen } = await setup(t, backend);
        await basics(catalog);
        const other = backend.name === 'postgres' ? await reopen() : catalog;
        // Warm both pools, so that the claims below really run at once.
        await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? catalog : other).jobs.counts()));
        for (let round = 0; round < 3; round++) {
          await catalog.jobs.enqueueMany(Array.from({ length: 20 }, (_, i) => ({ kind: 'backup', storageUnit: i < 15 ? 'vault' : 'offsite' })));
          const claims = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? catalog : other).jobs.claimNext({ by: `w${i}` })));
          const started = claims.filter((c) => c !== undefined);
          assert.equal(new Set(started.map((j) => j.id)).size, started.length, 'no job started twice');
          const running = (await catalog.jobs.list({ state: 'running', limit: 1000 })).items;
          assert.equal(running.filter((j) => j.storageUnit === 'vault').length, 2, `round ${round}: vault allows 2`);
          assert.equal(started.length, 2 + 5, `round ${round}: the 2 vault places and the 5 offsite jobs`);
          for (const job of running) await catalog.jobs.finish(job.id, { state: 'succeeded' });
          for (const job of (await catalog.jobs.list({ state: 'queued', limit: 1000 })).items) await catalog.jobs.cancel(job.id);
        }
      });

      it('finish() ends a running job once; a failure with retry is queued again with exponential backoff', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        const job = await catalog.jobs.enqueue({ kind: 'backup', maxAttempts: 3 });
        await expectCode(catalog.jobs.finish(job.id, { state: 'succeeded' }), 'CONFLICT', /queued, not running/);
        await catalog.jobs.claimNext();
        await catalog.jobs.update(job.id, { progress: { files: 10, bytes: 2048 } });
        assert.deepEqual((await catalog.jobs.get(job.id)).progress, { files: 10, bytes: 2048 });
        const again = await catalog.jobs.finish(job.id, { state: 'failed', retry: true, error: { code: 'STORAGE_UNAVAILABLE', message: 'down' } });
        assert.equal(again.state, 'queued');
        assert.equal(again.attempt, 2);
        assert.equal(again.notBefore, T0 + 1000);
        assert.equal(again.progress, undefined);
        assert.deepEqual(again.error, { code: 'STORAGE_UNAVAILABLE', message: 'down' });
        await expectCode(catalog.jobs.update(job.id, { progress: {} }), 'CONFLICT', /queued/);
        assert.equal(await catalog.jobs.claimNext(), undefined, 'backing off');
        assert.equal(await catalog.jobs.claim(job.id), undefined, 'claim() respects the backoff too');
        clock.t = T0 + 1000;
        await catalog.jobs.claimNext();
        const third = await catalog.jobs.finish(job.id, { state: 'failed', retry: true });
        assert.equal(third.attempt, 3);
        assert.equal(third.notBefore, T0 + 1000 + 2000);
        clock.t = T0 + 3000;
        await catalog.jobs.claimNext();
        const failed = await catalog.jobs.finish(job.id, { state: 'failed', retry: true, error: { message: 'still down' } });
        assert.equal(failed.state, 'failed', 'out of attempts');
        assert.equal(failed.ended, T0 + 3000);

        const ok = await catalog.jobs.enqueue({ kind: 'backup' });
        await catalog.jobs.claimNext();
        const result = { scannedBytes: 1e9, newBytes: 1e8, storedBytes: 5e7, dedupRatio: 20 };
        const done = await catalog.jobs.finish(ok.id, { state: 'warnings', result });
        assert.deepEqual(done.result, result);
        assert.equal(done.state, 'warnings');
        await expectCode(catalog.jobs.finish(ok.id, { state: 'succeeded' }), 'CONFLICT');
        await expectCode(catalog.jobs.finish(ok.id, { state: 'running' as 'failed' }), 'USAGE');

        const c = await catalog.jobs.enqueue({ kind: 'backup' });
        assert.equal((await catalog.jobs.cancel(c.id)).state, 'cancelled');
        await expectCode(catalog.jobs.cancel(c.id), 'CONFLICT', /cancelled/);
        await expectCode(catalog.jobs.cancel('nope'), 'NOT_FOUND');
        const r = await catalog.jobs.enqueue({ kind: 'backup' });
        await catalog.jobs.claimNext();
        await expectCode(catalog.jobs.cancel(r.id), 'CONFLICT', /running/);
        assert.equal((await catalog.jobs.finish(r.id, { state: 'cancelled' })).state, 'cancelled');
      });

      it('interruptRunning() re-queues running jobs with attempts left (after a backoff) and leaves the others interrupted', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        const a = await catalog.jobs.enqueue({ kind: 'backup', maxAttempts: 3 });
        const b = await catalog.jobs.enqueue({ kind: 'backup', maxAttempts: 1 });
        const mine = await catalog.jobs.enqueue({ kind: 'backup', maxAttempts: 2 });
        const queued = await catalog.jobs.enqueue({ kind: 'backup' });
        await catalog.jobs.claim(a.id, { by: 's1' });
        await catalog.jobs.claim(b.id, { by: 's1' });
        await catalog.jobs.claim(mine.id, { by: 's2' });

        const only = await catalog.jobs.interruptRunning({ claimedBy: 's2' });
        assert.deepEqual(only.requeued.map((j) => j.id), [mine.id]);
        assert.equal((await catalog.jobs.get(a.id)).state, 'running', 'claimed by another server');

        const first = await catalog.jobs.interruptRunning();
        assert.deepEqual(first.requeued.map((j) => [j.id, j.attempt, j.notBefore]), [[a.id, 2, T0 + 1000]]);
        assert.deepEqual(first.interrupted.map((j) => j.id), [b.id]);
        const gone = await catalog.jobs.get(b.id);
        assert.equal(gone.state, 'interrupted');
        assert.equal(gone.error?.code, 'INTERRUPTED');
        assert.equal((await catalog.jobs.get(queued.id)).state, 'queued');

        assert.deepEqual((await catalog.jobs.runnable()).items.map((j) => j.id), [queued.id]);
        clock.t = T0 + 1000;
        assert.equal((await catalog.jobs.claim(a.id))?.attempt, 2);
        const second = await catalog.jobs.interruptRunning();
        assert.equal(second.requeued[0]!.notBefore, T0 + 1000 + 2000, 'the backoff doubles');
        clock.t = T0 + 3000;
        await catalog.jobs.claim(a.id);
        const last = await catalog.jobs.interruptRunning();
        assert.deepEqual(last.interrupted.map((j) => [j.id, j.attempt]), [[a.id, 3]]);
        const log = await catalog.jobs.logs(a.id);
        assert.equal(log.length, 3);
        assert.match(log[0]!.message, /queued again/);
        assert.match(log[2]!.message, /last attempt/);
        assert.deepEqual(await catalog.jobs.interruptRunning(), { requeued: [], interrupted: [] });
      });

      it('enqueueSlots() queues each (policy, client, schedule, slot) once, in any state, concurrent callers included', async (t) => {
        const { catalog, reopen } = await setup(t, backend);
        await basics(catalog);
        const run = (slot: number) => ({ kind: 'backup', policy: 'nightly', client: 'alpha', schedule: 'daily', slot, spec: { slot } });
        const made = await catalog.jobs.enqueueSlots([run(1000), run(2000)]);
        assert.deepEqual(made.map((j) => [j.state, j.slot]), [['queued', 1000], ['queued', 2000]]);
        assert.deepEqual((await catalog.jobs.get(made[0]!.id)).slot, 1000);
        // Again, with one new slot: only that one is made; a missed run of a queued slot is not recorded.
        assert.deepEqual((await catalog.jobs.enqueueSlots([run(2000), run(3000)])).map((j) => j.slot), [3000]);
        assert.deepEqual(await catalog.jobs.enqueueSlots([run(1000)], { state: 'missed' }), []);
        // Another schedule, client or policy with the same slot is another run; jobs without a slot never conflict.
        assert.equal((await catalog.jobs.enqueueSlots([{ ...run(1000), schedule: 'weekly' }])).length, 1);
        await catalog.jobs.enqueueMany([{ kind: 'backup', policy: 'nightly', client: 'alpha', schedule: 'daily' }, { kind: 'backup', policy: 'nightly', client: 'alpha', schedule: 'daily' }]);
        // Two servers queuing the same slots at once: each slot once. (PostgreSQL: a second catalog,
        // its own pool; SQLite allows one process, whose callers race inside it.)
        const other = backend.name === 'postgres' ? await reopen() : catalog;
        const slots = Array.from({ length: 50 }, (_, i) => 10_000 + i);
        const results = await Promise.all([catalog, other, catalog, other].map((c) => c.jobs.enqueueSlots(slots.map(run))));
        assert.equal(results.reduce((n, r) => n + r.length, 0), 50);
        const all = (await catalog.jobs.list({ limit: 1000 })).items;
        assert.equal(all.length, 3 + 1 + 2 + 50);
        // In a transaction that fails, nothing is queued.
        await assert.rejects(catalog.transaction(async (tx) => {
          await tx.jobs.enqueueSlots([run(99_000)]);
          throw new Error('rolled back on purpose');
        }), /on purpose/);
        assert.equal((await catalog.jobs.enqueueSlots([run(99_000)])).length, 1);
      });

      it('missed runs are jobs in state missed, listed by --state missed and counted; catchUp() queues a missed slot again, once', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        await basics(catalog);
        const run = (slot: number) => ({ kind: 'backup', policy: 'nightly', client: 'alpha', schedule: 'daily', slot, spec: { slot } });
        const missed = await catalog.jobs.enqueueSlots([run(1000), run(2000), run(3000)], { state: 'missed' });
        assert.deepEqual(missed.map((j) => [j.state, j.ended]), [['missed', T0], ['missed', T0], ['missed', T0]]);
        assert.equal((await catalog.jobs.counts()).missed, 3);
        assert.deepEqual((await catalog.jobs.list({ state: 'missed' })).items.map((j) => j.slot), [3000, 2000, 1000]);
        assert.equal(await catalog.jobs.claimNext(), undefined, 'a missed job is never started');
        clock.t = T0 + 500;
        const caught = await catalog.jobs.catchUp({ ...run(3000), priority: 5, storageUnit: 'vault', notBefore: T0 + 400, spec: { slot: 3000, catchUp: true } });
        assert.equal(caught?.id, missed[2]!.id);
        assert.deepEqual([caught?.state, caught?.priority, caught?.storageUnit, caught?.notBefore, caught?.queued, caught?.ended, caught?.spec],
          ['queued', 5, 'vault', T0 + 400, T0 + 500, undefined, { slot: 3000, catchUp: true }]);
        // Once: the slot's job is queued now, not missed.
        assert.equal(await catalog.jobs.catchUp(run(3000)), undefined);
        // A slot without a job: queued.
        assert.equal((await catalog.jobs.catchUp(run(4000)))?.state, 'queued');
        assert.deepEqual((await catalog.jobs.list({ state: 'missed' })).items.map((j) => j.slot), [2000, 1000]);
        // The queue marks a queued job missed when its window closed; only a queued one.
        const late = await catalog.jobs.miss(caught!.id, { error: { code: 'WINDOW_CLOSED' } });
        assert.deepEqual([late.state, late.ended, late.error], ['missed', T0 + 500, { code: 'WINDOW_CLOSED' }]);
        await expectCode(catalog.jobs.miss(caught!.id), 'CONFLICT', /it is missed/);
        await expectCode(catalog.jobs.miss('nonexistent'), 'NOT_FOUND');
        await expectCode(catalog.jobs.list({ state: 'late' as 'missed' }), 'USAGE', /missed/);
      });

      it('log lines get sequence numbers, concurrent appends included, and are read from a seq (follow)', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        const job = await catalog.jobs.enqueue({ kind: 'backup' });
        assert.equal(await catalog.jobs.appendLog(job.id, [
          { level: 'info', message: 'started' }, { level: 'debug', message: 'scanning', data: { path: '/' } },
        ]), 2);
        clock.t += 50;
        assert.equal(await catalog.jobs.appendLog(job.id, { level: 'warn', message: 'unreadable', data: { path: '/x' } }), 3);
        const lines = await catalog.jobs.logs(job.id);
        assert.deepEqual(lines.map((l) => [l.seq, l.level, l.message, l.time]), [[1, 'info', 'started', T0], [2, 'debug', 'scanning', T0], [3, 'warn', 'unreadable', T0 + 50]]);
        assert.deepEqual(lines[1]!.data, { path: '/' });
        assert.deepEqual(await catalog.jobs.logs(job.id, { afterSeq: 3 }), []);
        await Promise.all(Array.from({ length: 20 }, (_, i) => catalog.jobs.appendLog(job.id, { level: 'info', message: `line ${i}` })));
        const follow = await catalog.jobs.logs(job.id, { afterSeq: 3 });
        assert.deepEqual(follow.map((l) => l.seq), Array.from({ length: 20 }, (_, i) => i + 4));
        assert.equal(new Set(follow.map((l) => l.message)).size, 20);
        assert.deepEqual((await catalog.jobs.logs(job.id, { afterSeq: 10, limit: 2 })).map((l) => l.seq), [11, 12]);
        await expectCode(catalog.jobs.appendLog('nope', { level: 'info', message: 'x' }), 'NOT_FOUND');
        await expectCode(catalog.jobs.appendLog(job.id, { level: 'loud' as 'info', message: 'x' }), 'USAGE');
        await expectCode(catalog.jobs.logs('nope'), 'NOT_FOUND');
        await expectCode(catalog.jobs.enqueue({ kind: '' }), 'USAGE');
        await expectCode(catalog.jobs.enqueue({ kind: 'x', maxAttempts: 0 }), 'USAGE');
      });
    });

    describe('indexes', () => {
      it('the lists a large catalog leans on read an index in its order: no table scan, no sort', async (t) => {
        const queries: { sql: string; parameters: readonly unknown[] }[] = [];
        const { catalog, url } = await setup(t, backend, { onQuery: (q) => queries.push(q) });
        await basics(catalog);
        const cursor = (page: Page<unknown>) => page.next!;
        const image = await catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', streams: { '/': 's' } });
        await catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', streams: { '/': 's' } });
        await catalog.jobs.enqueueMany([{ kind: 'backup', client: 'alpha', policy: 'nightly' }, { kind: 'backup', client: 'alpha', policy: 'nightly' }]);
        await catalog.copies.add(image.id, { storageUnit: 'vault', snapshots: {}, expires: T0 });
        const calls: [string, () => Promise<unknown>][] = [
          ['images --client', async () => catalog.images.list({ client: 'alpha', limit: 1, cursor: cursor(await catalog.images.list({ client: 'alpha', limit: 1 })) })],
          ['images --policy', () => catalog.images.list({ policy: 'nightly', limit: 1 })],
          ['images', async () => catalog.images.list({ limit: 1, cursor: cursor(await catalog.images.list({ limit: 1 })) })],
          ['latestGood', () => catalog.images.latestGood('alpha', 'nightly', '/')],
          ['jobs --state running', () => catalog.jobs.list({ state: 'running' })],
          ['jobs --client', () => catalog.jobs.list({ client: 'alpha' })],
          ['jobs --policy', () => catalog.jobs.list({ policy: 'nightly' })],
          ['jobs', async () => catalog.jobs.list({ limit: 1, cursor: cursor(await catalog.jobs.list({ limit: 1 })) })],
          ['runnable', () => catalog.jobs.runnable()],
          ['due schedules', () => catalog.schedules.due(T0)],
          ['due schedules after', () => catalog.schedules.due(T0, { after: { nextRun: T0 - 1, id: '0' } })],
          ['next run', () => catalog.schedules.nextRun()],
          ['jobs --state missed', () => catalog.jobs.list({ state: 'missed' })],
          ['expired copies', () => catalog.copies.expiredCopies(T0)],
          ['lifecycle due', async () => catalog.lifecycleScan.due(T0, { limit: 1, cursor: cursor(await catalog.lifecycleScan.due(T0, { limit: 1 })) })],
          ['audit', () => catalog.audit.list()],
        ];
        const plans: string[] = [];
        for (const [name, call] of calls) {
          queries.length = 0;
          await call();
          const q = queries.at(-1)!;
          plans.push(`${name}: ${await explain(backend, url, q.sql, q.parameters)}`);
        }
        t.diagnostic(plans.join('\n'));
        for (const plan of plans) {
          if (backend.name === 'sqlite') {
            // (`SCAN audit` alone is its rowid, the INTEGER PRIMARY KEY, in order.)
            assert.doesNotMatch(plan, /SCAN (images|jobs|schedules|image_copies)(?! USING)/, plan);
            assert.doesNotMatch(plan, /TEMP B-TREE/, plan);
          } else {
            assert.doesNotMatch(plan, /Seq Scan|Sort/, plan);
          }
        }
      });
    });

    describe('users, tokens, audit, settings', () => {
      it('users: create, update, disable, list, remove (with their tokens)', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        const hash = '$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA';
        await catalog.users.create({ name: 'ada', passwordHash: hash, role: 'admin' });
        await catalog.users.create({ name: 'bob', role: 'restore', grants: { clients: ['alpha'], destinations: ['/restore'] } });
        await expectCode(catalog.users.create({ name: 'ada', role: 'auditor' }), 'ALREADY_EXISTS');
        assert.equal((await catalog.users.get('ada')).passwordHash, hash);
        assert.deepEqual((await catalog.users.get('bob')).grants, { clients: ['alpha'], destinations: ['/restore'] });
        clock.t += 1000;
        const changed = await catalog.users.update('bob', { role: 'operator', disabled: true });
        assert.equal(changed.role, 'operator');
        assert.equal(changed.disabled, T0 + 1000);
        assert.equal((await catalog.users.update('bob', { disabled: false })).disabled, undefined);
        assert.deepEqual((await walk((o) => catalog.users.list(o), 1)).map((u) => u.name), ['ada', 'bob']);
        const token = await catalog.tokens.create({ name: 'cli', user: 'bob', hash: 'a'.repeat(64), kind: 'session', expires: T0 + 10_000 });
        await catalog.users.remove('bob');
        await expectCode(catalog.users.get('bob'), 'NOT_FOUND');
        await expectCode(catalog.tokens.get(token.id), 'NOT_FOUND');
        await expectCode(catalog.users.update('bob', { role: 'admin' }), 'NOT_FOUND');
      });

      it('tokens: stored by hash, found by hash, used, revoked once, expired ones removed', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        await catalog.users.create({ name: 'ada', role: 'admin' });
        await catalog.users.create({ name: 'eve', role: 'auditor' });
        const made = [];
        for (let i = 0; i < 7; i++) {
          made.push(await catalog.tokens.create({ name: `t${i}`, user: i < 5 ? 'ada' : 'eve', hash: String(i).repeat(64), kind: 'api', ...(i % 2 ? { expires: T0 + i * 1000 } : {}) }));
        }
        assert.equal((await catalog.tokens.findByHash('3'.repeat(64)))?.id, made[3]!.id);
        assert.equal(await catalog.tokens.findByHash('f'.repeat(64)), undefined);
        await expectCode(catalog.tokens.create({ name: 'dup', user: 'ada', hash: '0'.repeat(64), kind: 'api' }), 'CONFLICT');
        await expectCode(catalog.tokens.create({ name: 'x', user: 'nobody', hash: 'e'.repeat(64), kind: 'api' }), 'NOT_FOUND');
        assert.deepEqual((await walk((o) => catalog.tokens.list({ ...o, user: 'ada' }), 2)).map((x) => x.id), made.slice(0, 5).map((x) => x.id).reverse());
        clock.t += 500;
        await catalog.tokens.touch(made[0]!.id);
        assert.equal((await catalog.tokens.get(made[0]!.id)).lastUsed, T0 + 500);
        const revoked = await catalog.tokens.revoke(made[0]!.id);
        assert.equal(revoked.revoked, T0 + 500);
        clock.t += 500;
        assert.equal((await catalog.tokens.revoke(made[0]!.id)).revoked, T0 + 500, 'the first revocation time stays');
        await expectCode(catalog.tokens.revoke('nope'), 'NOT_FOUND');
        assert.equal(await catalog.tokens.removeExpired(T0 + 3500), 2); // t1 (1000), t3 (3000)
        assert.equal((await catalog.tokens.list({ limit: 1000 })).items.length, 5);
      });

      it('audit: appended with monotonic ids, listed newest first with filters', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        const entries = [];
        for (let i = 0; i < 25; i++) {
          clock.t = T0 + Math.floor(i / 5) * 1000;
          entries.push(await catalog.audit.append({
            actor: i % 2 ? 'ada' : 'bob', source: '127.0.0.1', action: i % 3 ? 'policy.apply' : 'login',
            target: `Policy/p${i % 4}`, outcome: i % 6 ? 'ok' : 'denied', details: { i },
          }));
        }
        const ids = entries.map((e) => e.id);
        assert.deepEqual([...ids].sort((a, b) => a - b), ids);
        assert.equal(new Set(ids).size, 25);
        assert.deepEqual((await walk((o) => catalog.audit.list(o), 4)).map((e) => e.id), [...ids].reverse());
        assert.deepEqual((await walk((o) => catalog.audit.list({ ...o, actor: 'ada', outcome: 'ok' }), 3)).map((e) => e.details?.i),
          entries.filter((_, i) => i % 2 && i % 6).map((e) => e.details?.i).reverse());
        assert.deepEqual((await catalog.audit.list({ since: T0 + 1000, until: T0 + 2000, action: 'login' })).items.map((e) => e.details?.i), [9, 6]);
        assert.equal((await catalog.audit.list({ target: 'Policy/p1' })).items.length, 6);
      });

      it('settings: any JSON value by key', async (t) => {
        const { catalog } = await setup(t, backend);
        await catalog.settings.set('jobs.global', 8);
        await catalog.settings.set('console', { theme: 'dark', pages: [1, 2] });
        await catalog.settings.set('jobs.global', 12);
        assert.equal(await catalog.settings.get('jobs.global'), 12);
        assert.deepEqual(await catalog.settings.get('console'), { theme: 'dark', pages: [1, 2] });
        assert.deepEqual((await catalog.settings.list()).map((s) => s.key), ['console', 'jobs.global']);
        assert.equal(await catalog.settings.remove('console'), true);
        assert.equal(await catalog.settings.remove('console'), false);
        assert.equal(await catalog.settings.get('console'), undefined);
      });
    });

    describe('enrollment tokens and certificates (pki)', () => {
      it('a token is used once, at most, and not after it expired; two claims at once: one wins', async (t) => {
        const { catalog, reopen } = await setup(t, backend);
        const e = await catalog.pki.addEnrollment({ hash: 'h1', name: 'web1', role: 'agent', expires: T0 + 60_000, createdBy: 'admin' });
        assert.equal((await catalog.pki.findEnrollment('h1'))?.id, e.id);
        await expectCode(catalog.pki.addEnrollment({ hash: 'h1', name: 'x', role: 'agent', expires: T0 + 1, createdBy: 'admin' }), 'CONFLICT');
        const other = backend.name === 'postgres' ? await reopen() : catalog;
        const claims = await Promise.all([catalog.pki.claimEnrollment('h1', T0 + 1000), other.pki.claimEnrollment('h1', T0 + 1000)]);
        assert.deepEqual(claims.map((c) => c.ok).sort(), [false, true]);
        const lost = claims.find((c) => !c.ok)!;
        assert.equal(!lost.ok && lost.reason, 'used');
        await catalog.pki.addEnrollment({ hash: 'h2', name: 'web2', role: 'agent', expires: T0 + 60_000, createdBy: 'admin' });
        const late = await catalog.pki.claimEnrollment('h2', T0 + 60_000);
        assert.equal(!late.ok && late.reason, 'expired');
        const none = await catalog.pki.claimEnrollment('nope', T0);
        assert.equal(!none.ok && none.reason, 'unknown');
      });

      it('certificates: recorded, seen, listed by identity, revoked with the identity\'s unused tokens', async (t) => {
        const { catalog } = await setup(t, backend);
        await catalog.pki.addCertificate({ serial: 'AA01', name: 'store1', role: 'node', notBefore: T0, notAfter: T0 + 1000, issued: T0 });
        await catalog.pki.addCertificate({ serial: 'AA02', name: 'store1', role: 'node', notBefore: T0, notAfter: T0 + 2000, issued: T0 + 1 });
        await catalog.pki.addCertificate({ serial: 'AA03', name: 'store1', role: 'agent', notBefore: T0, notAfter: T0 + 3000, issued: T0 });
        await expectCode(catalog.pki.addCertificate({ serial: 'AA01', name: 'x', role: 'node', notBefore: T0, notAfter: T0, issued: T0 }), 'CONFLICT');
        await catalog.pki.seen('AA02', T0 + 500, '10.0.0.9:40000');
        await catalog.pki.addEnrollment({ hash: 'h3', name: 'store1', role: 'node', expires: T0 + 60_000, createdBy: 'admin' });
        assert.deepEqual(await catalog.pki.identities('node'), [{ name: 'store1', role: 'node', notAfter: T0 + 2000, lastSeen: T0 + 500, address: '10.0.0.9:40000', revoked: false }]);
        assert.equal(await catalog.pki.known('node', 'store1'), true);
        assert.equal(await catalog.pki.known('node', 'ghost'), false);
        assert.deepEqual(await catalog.pki.revokeIdentity('node', 'store1', 'admin', T0 + 900), { certificates: 2, enrollments: 1 });
        assert.deepEqual(await catalog.pki.revokeIdentity('node', 'store1', 'admin', T0 + 901), { certificates: 0, enrollments: 0 }, 'once');
        assert.equal((await catalog.pki.findCertificate('AA01'))?.revoked, T0 + 900);
        assert.equal((await catalog.pki.findCertificate('AA03'))?.revoked, undefined, 'the agent of the same name is another identity');
        const [node] = await catalog.pki.identities('node');
        assert.deepEqual([node!.revoked, node!.notAfter], [true, undefined]);
        const used = await catalog.pki.claimEnrollment('h3', T0 + 1000);
        assert.equal(!used.ok && used.reason, 'used', 'revocation voids unused tokens');
      });
    });

    describe('alerts', () => {
      it('raised open, listed newest first by state and unit, acknowledged (not once resolved), resolved with a note, changed', async (t) => {
        const { catalog, clock } = await setup(t, backend);
        const a = await catalog.alerts.add({ kind: 'damage', severity: 'error', storageUnit: 'primary', images: ['i1'], message: 'damage in primary', hint: 'wait for the repair', details: { packs: ['p1'], files: ['/a'] } });
        clock.t += 1000;
        const b = await catalog.alerts.add({ kind: 'damage', severity: 'warning', storageUnit: 'offsite', message: 'damage in offsite' });
        assert.deepEqual([a.state, a.images, a.details, a.hint, b.images, b.hint], ['open', ['i1'], { packs: ['p1'], files: ['/a'] }, 'wait for the repair', [], undefined]);
        assert.deepEqual((await catalog.alerts.list()).items.map((x) => x.id), [b.id, a.id]);
        assert.deepEqual((await catalog.alerts.list({ storageUnit: 'primary' })).items.map((x) => x.id), [a.id]);
        assert.deepEqual(await walk((o) => catalog.alerts.list(o), 1).then((l) => l.map((x) => x.id)), [b.id, a.id]);
        const acked = await catalog.alerts.acknowledge(a.id, 'olga');
        assert.deepEqual([acked.state, acked.resolvedBy, acked.resolved], ['acknowledged', 'olga', T0 + 1000]);
        assert.equal((await catalog.alerts.acknowledge(a.id, 'otto')).resolvedBy, 'olga', 'acknowledged once');
        assert.deepEqual((await catalog.alerts.list({ state: ['open', 'acknowledged'] })).items.map((x) => x.state), ['open', 'acknowledged']);
        clock.t += 1000;
        const changed = await catalog.alerts.update(a.id, { message: 'worse', images: ['i1', 'i2'], hint: null });
        assert.deepEqual([changed.message, changed.images, changed.hint, changed.updated], ['worse', ['i1', 'i2'], undefined, T0 + 2000]);
        const resolved = await catalog.alerts.resolve(a.id, 'server', 'repaired from offsite');
        assert.deepEqual([resolved.state, resolved.resolvedBy, resolved.resolution], ['resolved', 'server', 'repaired from offsite']);
        assert.equal((await catalog.alerts.resolve(a.id, 'someone', 'again')).resolution, 'repaired from offsite', 'a resolved alert stays as it was resolved');
        await expectCode(catalog.alerts.acknowledge(a.id, 'olga'), 'CONFLICT', /resolved by server/);
        await expectCode(catalog.alerts.get('nope'), 'NOT_FOUND');
        await expectCode(catalog.alerts.update('nope', { message: 'x' }), 'NOT_FOUND');
        await expectCode(catalog.alerts.list({ state: 'gone' as never }), 'USAGE');
        assert.deepEqual((await catalog.alerts.list({ state: 'resolved' })).items.map((x) => x.id), [a.id]);
      });

      it('a copy\'s snapshots can be changed (a repair that wrote new ones)', async (t) => {
        const { catalog } = await setup(t, backend);
        await basics(catalog);
        const image = await catalog.images.add({ client: 'alpha', policy: 'nightly', level: 'full', streams: { '/': 's1' } });
        const copy = await catalog.copies.add(image.id, { storageUnit: 'vault', snapshots: { '/': 's1' }, state: 'suspect' });
        const after = await catalog.copies.update(copy.id, { state: 'ok', snapshots: { '/': 's2' } });
        assert.deepEqual([after.state, after.snapshots], ['ok', { '/': 's2' }]);
      });
    });
  });
}

describe('catalog URLs and failures', () => {
  it('parses paths and URLs; other schemes are UNSUPPORTED and empty ones USAGE, without passwords', async () => {
    assert.deepEqual(parseCatalogUrl('/var/lib/coffer/catalog.db'), { dialect: 'sqlite', path: '/var/lib/coffer/catalog.db' });
    assert.deepEqual(parseCatalogUrl('sqlite:///var/lib/c.db'), { dialect: 'sqlite', path: '/var/lib/c.db' });
    assert.deepEqual(parseCatalogUrl('sqlite:rel.db'), { dialect: 'sqlite', path: 'rel.db' });
    assert.equal(parseCatalogUrl('postgresql://u@h/db').dialect, 'postgres');
    const e = await expectCode(() => parseCatalogUrl('mysql://coffer:hunter2@db/coffer'), 'UNSUPPORTED', /mysql:/);
    assert.doesNotMatch(JSON.stringify(e.toJSON()) + e.message, /hunter2/);
    await expectCode(() => parseCatalogUrl('sqlite://'), 'USAGE', /names no file/);
    await expectCode(() => parseCatalogUrl(''), 'USAGE');
    await expectCode(openCatalog('/nonexistent-dir-of-coffer/catalog.db'), 'NOT_FOUND', /directory does not exist/);
  });

  it('redactUrl() hides passwords, also in URLs the URL parser refuses', () => {
    assert.equal(redactUrl('postgres://coffer:s3cret@db:5432/coffer'), 'postgres://coffer:***@db:5432/coffer');
    assert.doesNotMatch(redactUrl('postgres://coffer@db/coffer?password=s3cret'), /s3cret/);
    assert.doesNotMatch(redactUrl('postgres://coffer:s3 cr#et@db/coffer'), /s3 cr/);
    assert.equal(redactUrl('postgres://coffer@db/coffer'), 'postgres://coffer@db/coffer');
  });

  it('a file that is not an SQLite database is CORRUPT', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'coffer-catalog-bad-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const { writeFile } = await import('node:fs/promises');
    await writeFile(join(dir, 'x.db'), 'this is not a database, but text long enough to fill a header page'.repeat(100));
    await expectCode(openCatalog(join(dir, 'x.db')), 'CORRUPT', /not an SQLite database/);
  });

  it('PostgreSQL that cannot be reached is STORAGE_UNAVAILABLE, with the password left out', async () => {
    const { createServer } = await import('node:net');
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
    });
    const e = await expectCode(openCatalog(`postgres://coffer:hunter2@127.0.0.1:${port}/coffer`, { connectTimeoutMs: 2000 }), 'STORAGE_UNAVAILABLE', /cannot be reached/);
    assert.equal(e.transient, true);
    assert.match(e.message, /coffer:\*\*\*@127\.0\.0\.1/);
    assert.doesNotMatch(`${e.message} ${e.hint} ${JSON.stringify(e.toJSON())}`, /hunter2/);
  });

  it('PostgreSQL: a missing database is NOT_FOUND; connections dropped by the server are STORAGE_UNAVAILABLE, and the catalog recovers', async (t) => {
    if (pgServer === undefined) throw new Error('PostgreSQL did not start (see the error of the before hook)');
    const base = pgServer.url.replace(/\/[^/]*$/, '');
    const missing = await expectCode(openCatalog(`${base.replace('coffer@', 'coffer:hunter2@')}/no_such_db`), 'NOT_FOUND', /does not exist/);
    assert.doesNotMatch(`${missing.message} ${missing.hint}`, /hunter2/);

    const url = await pgServer.createDatabase(`catalog_${++counter}`);
    const catalog = await openCatalog(url, { poolSize: 2 });
    t.after(() => catalog.close());
    await catalog.settings.set('a', 1);
    // The administrator (or a failover) ends every connection of the catalog.
    const pg = (await import('pg')).default;
    const admin = new pg.Client({ connectionString: `${base}/postgres` });
    await admin.connect();
    try {
      await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()`, [url.split('/').pop()]);
    } finally {
      await admin.end();
    }
    const results = await Promise.allSettled([catalog.settings.get('a'), catalog.settings.get('a')]);
    for (const r of results) {
      if (r.status === 'rejected') {
        assert.ok(isCofferError(r.reason, 'STORAGE_UNAVAILABLE'), `got ${r.reason?.code}: ${r.reason?.message}`);
      }
    }
    // The pool replaces the dead connections: the next calls work.
    assert.equal(await catalog.settings.get('a'), 1);
    assert.equal(await catalog.settings.get('a'), 1);
  });
});
