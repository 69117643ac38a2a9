// The compliance report's catalog aggregates (compliance.ts) on SQLite and on a real PostgreSQL
// (src/testing/postgres.ts): the newest ok image and the newest ended restore test per (policy,
// client), the images of a time range and lifecycle that lack a live copy on some units, grouped
// by client, and the images on hold. Never skipped: without PostgreSQL its cases fail.

import { after, before, describe, it } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostgres, type PostgresServer } from '../testing/postgres.ts';
import { openCatalog, type Catalog } from './catalog.ts';

const T0 = Date.UTC(2026, 11, 1, 12, 0, 0);
const HOUR = 3_600_000;

let sqliteDir = '';
let pgServer: PostgresServer | undefined;
let counter = 0;
const backends = [
  { name: 'sqlite', fresh: async () => join(sqliteDir, `catalog-${++counter}.db`) },
  {
    name: 'postgres',
    fresh: async () => {
      if (pgServer === undefined) throw new Error('PostgreSQL did not start (see the error of the before hook)');
      return pgServer.createSchema(`compliance_${++counter}`);
    },
  },
] as const;

before(async () => {
  sqliteDir = await mkdtemp(join(tmpdir(), 'coffer-compliance-'));
});
after(async () => {
  await pgServer?.stop();
  await rm(sqliteDir, { recursive: true, force: true });
});

const doc = (kind: string, name: string, spec: Record<string, unknown>) => ({ apiVersion: 'coffer/v1', kind, metadata: { name }, spec });

async function setup(t: TestContext, fresh: () => Promise<string>): Promise<Catalog> {
  const catalog = await openCatalog(await fresh(), { now: () => T0 });
  t.after(() => catalog.close());
  for (const name of ['primary', 'second', 'vault']) await catalog.storageUnits.apply(doc('StorageUnit', name, { url: `/srv/${name}` }));
  for (const name of ['web', 'db']) await catalog.policies.apply(doc('Policy', name, {}));
  for (const name of ['alpha', 'beta', 'gamma']) await catalog.clients.upsert({ name });
  // The pairs the report knows: the schedules of registered clients.
  const timing = { every: 86_400_000, missed: 'catch-up' };
  await catalog.schedules.sync('web', [{ client: 'alpha', name: 'daily', timing, level: 'full' }, { client: 'beta', name: 'daily', timing, level: 'full' }]);
  await catalog.schedules.sync('db', [{ client: 'alpha', name: 'daily', timing, level: 'full' }, { client: 'alpha', name: '@restore-test', timing, level: 'restore-test' }]);
  return catalog;
}

for (const backend of backends) {
  describe(`compliance aggregates on ${backend.name}`, () => {
    if (backend.name === 'postgres') before(async () => { pgServer ??= await startPostgres(); });

    it('lastBackups(): the newest ok image per policy and client, none where there is none', async (t) => {
      const catalog = await setup(t, backend.fresh);
      const add = (client: string, policy: string, time: number, state: 'ok' | 'failed' | 'partial' = 'ok') => catalog.images.add({ client, policy, level: 'full', time, state, streams: {} });
      await add('alpha', 'web', T0 - 3 * HOUR);
      const newest = await add('alpha', 'web', T0 - 2 * HOUR);
      await add('alpha', 'web', T0 - HOUR, 'failed');
      await add('alpha', 'web', T0 - HOUR, 'partial');
      await add('beta', 'db', T0 - HOUR);
      const rows = (await catalog.compliance.lastBackups(['web', 'db'])).sort((a, b) => `${a.policy}/${a.client}`.localeCompare(`${b.policy}/${b.client}`));
      assert.deepEqual(rows, [
        { policy: 'db', client: 'alpha', image: undefined, time: undefined },
        { policy: 'web', client: 'alpha', image: newest.id, time: T0 - 2 * HOUR },
        { policy: 'web', client: 'beta', image: undefined, time: undefined },
      ]);
      assert.deepEqual(await catalog.compliance.lastBackups([]), []);
    });

    it('lastRestoreTests(): the newest restore test that ended, with its result', async (t) => {
      const catalog = await setup(t, backend.fresh);
      const test = async (state: 'succeeded' | 'failed' | 'running', result: Record<string, unknown>) => {
        const job = await catalog.jobs.enqueue({ kind: 'restore-test', client: 'alpha', policy: 'db', spec: {} });
        await catalog.jobs.claim(job.id);
        if (state !== 'running') await catalog.jobs.finish(job.id, { state, result, ...(state === 'failed' ? { error: { code: 'CHECK_FAILED', message: 'bad' } } : {}) });
        return job;
      };
      await test('succeeded', { restoreMs: 10 });
      const last = await test('failed', { restoreMs: 20 });
      await test('running', {});
      await catalog.jobs.enqueue({ kind: 'backup', client: 'alpha', policy: 'db', spec: {} });
      const rows = await catalog.compliance.lastRestoreTests(['db', 'web'], 'restore-test');
      assert.equal(rows.length, 1);
      assert.deepEqual([rows[0]!.policy, rows[0]!.client, rows[0]!.job, rows[0]!.state, rows[0]!.result, rows[0]!.error?.code], ['db', 'alpha', last.id, 'failed', { restoreMs: 20 }, 'CHECK_FAILED']);
      assert.equal(rows[0]!.ended, T0);
    });

    it('missingCopies(): per client, the ok and partial images of a range and lifecycle without a live copy on the units', async (t) => {
      const catalog = await setup(t, backend.fresh);
      const image = async (client: string, time: number, schedule: string | undefined, copies: Array<[string, 'ok' | 'suspect' | 'lost' | 'expired']>, state: 'ok' | 'partial' | 'failed' = 'ok') => {
        const i = await catalog.images.add({ client, policy: 'web', level: 'full', time, state, streams: {}, ...(schedule ? { schedule } : {}) });
        for (const [unit, s] of copies) await catalog.copies.add(i.id, { storageUnit: unit, snapshots: {}, state: s });
        return i;
      };
      const a1 = await image('alpha', T0 - 10 * HOUR, 'daily', [['primary', 'ok']]);
      await image('alpha', T0 - 9 * HOUR, 'daily', [['primary', 'ok'], ['second', 'ok']]);
      await image('alpha', T0 - 8 * HOUR, 'daily', [['primary', 'ok'], ['second', 'suspect']]);
      await image('alpha', T0 - 7 * HOUR, 'daily', [['primary', 'ok'], ['second', 'lost']], 'partial');
      await image('alpha', T0 - 6 * HOUR, 'daily', [['primary', 'ok']], 'failed');
      const b1 = await image('beta', T0 - 5 * HOUR, undefined, [['primary', 'ok'], ['vault', 'expired']]);
      await image('beta', T0 - 4 * HOUR, 'weekly', [['primary', 'ok']]);
      await image('beta', T0 - 30 * 60_000, 'daily', [['primary', 'ok']]);
      const missing = (q: Partial<Parameters<Catalog['compliance']['missingCopies']>[0]>) =>
        catalog.compliance.missingCopies({ policy: 'web', units: ['second'], after: -Infinity, until: T0 - HOUR, ...q });
      assert.deepEqual(await missing({}), [
        { client: 'alpha', images: 2, oldestImage: a1.id, oldestTime: T0 - 10 * HOUR },
        { client: 'beta', images: 2, oldestImage: b1.id, oldestTime: T0 - 5 * HOUR },
      ]);
      // A copy on any of the units counts; a time range; the images of one lifecycle's schedules.
      assert.deepEqual((await missing({ units: ['second', 'vault'] })).map((m) => [m.client, m.images]), [['alpha', 2], ['beta', 2]]);
      assert.deepEqual((await missing({ after: T0 - 9 * HOUR })).map((m) => [m.client, m.images]), [['alpha', 1], ['beta', 2]]);
      assert.deepEqual((await missing({ schedules: { notIn: ['weekly'] } })).map((m) => [m.client, m.images]), [['alpha', 2], ['beta', 1]]);
      assert.deepEqual((await missing({ schedules: { in: ['weekly'] } })).map((m) => [m.client, m.images]), [['beta', 1]]);
      assert.deepEqual(await missing({ schedules: { in: [] } }), []);
      assert.deepEqual(await missing({ until: -Infinity }), []);
    });

    it('holds(): the images with a held copy, oldest first, and their number', async (t) => {
      const catalog = await setup(t, backend.fresh);
      const held = [];
      for (let i = 0; i < 3; i++) {
        const image = await catalog.images.add({ client: 'alpha', policy: 'web', level: 'full', time: T0 - i * HOUR, streams: {} });
        const c1 = await catalog.copies.add(image.id, { storageUnit: 'primary', snapshots: {} });
        const c2 = await catalog.copies.add(image.id, { storageUnit: 'second', snapshots: {} });
        if (i > 0) {
          await catalog.copies.hold(c1.id, `case ${i}`);
          await catalog.copies.hold(c2.id, `case ${i}`);
          held.push(image);
        }
      }
      const r = await catalog.compliance.holds(1);
      assert.equal(r.total, 2);
      assert.deepEqual(r.items, [{ image: held[1]!.id, client: 'alpha', policy: 'web', time: T0 - 2 * HOUR, reason: 'case 2', copies: 2 }]);
    });
  });
}
