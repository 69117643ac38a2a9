// Storage lifecycles end to end on a real server with a fake clock (issue #10): the gold
// lifecycle (backup to primary 14d; duplicate to offsite 1y in a 06:00+12h window; stage to
// archive 7y after 30d from offsite) on three local storage units. The duplicate waits for its
// window and runs in it, one that missed its window runs in the next; the primary copy expires at
// 14 days and leaves storage (snapshot forgotten, unit pruned); after 30 days the stage copies to
// archive and releases offsite, which the expiry forgets and prunes; a restore then reads from
// archive. An image on legal hold keeps every copy, the new ones included, through all of it.
// Asserted on the catalog and on what each unit's repository holds. A second test: a stage with a
// high-water mark stages the oldest images early while the source unit is too full.
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseDocuments } from '../src/policy/index.ts';
import { runOnAgent } from '../src/server/services.ts';
import { startTestServer, TEST_ADMIN_PASSWORD, type TestServer } from '../src/server/test-server.ts';
import { FakeClock } from '../src/testing/fake-clock.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';

type Json = Record<string, any>;
const H = 3_600_000;
const D = 24 * H;
/** Monday 2 March 2026, 01:00 UTC: no Feb 29 (the policies' only calendar day) in what follows. */
const T0 = Date.UTC(2026, 2, 2, 1, 0);

/** Moves the server's clock, and logs in again (a session lasts 12 h of that clock). */
async function setClock(ts: TestServer, clock: FakeClock, t: number): Promise<void> {
  clock.set(t);
  ts.adminToken = await ts.login('admin', TEST_ADMIN_PASSWORD);
}

async function jobs(ts: TestServer, query: Record<string, string>): Promise<Json[]> {
  return (await ts.api<Json>('GET', '/api/v1/jobs', { query: { limit: '1000', ...query } })).body.items;
}

async function copiesOf(ts: TestServer, image: string): Promise<Json[]> {
  const r = await ts.api<Json>('GET', `/api/v1/images/${image}`);
  return r.status === 404 ? [] : (r.body.copies as Json[]).sort((a, b) => (a.storageUnit < b.storageUnit ? -1 : 1));
}

const states = (copies: Json[]) => copies.map((c) => `${c.storageUnit}:${c.state}${c.hold ? ' held' : ''}`);

/** The snapshot ids a unit's repository holds (a local repository: snapshots/<id>). */
async function stored(dir: string): Promise<string[]> {
  return (await readdir(join(dir, 'snapshots'))).sort();
}

async function backup(ts: TestServer, policy: string): Promise<string> {
  const r = await ts.api<Json>('POST', '/api/v1/backups', { body: { policy } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  const job = await ts.waitJob(r.body.jobs[0].id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  return (job.result as Json).image;
}

/** Waits for every expire job queued or running to end, then runs one more and returns it. */
async function expire(ts: TestServer): Promise<Json> {
  for (const j of await jobs(ts, { kind: 'expire' })) if (j.state === 'queued' || j.state === 'running') await ts.waitJob(j.id);
  const job = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/expire')).body.id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  return job;
}

async function usedBytes(ts: TestServer, unit: string): Promise<number> {
  const r = await runOnAgent(ts.server.services.node(), 'usage', { storage: await ts.server.services.storageAccess(unit) });
  return r.bytes as number;
}

test('lifecycle end to end with a fake clock: backup → duplicate in its window → stage → expire, a held image keeps every copy, a restore reads the staged copy', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  const clock = new FakeClock(T0);
  const ts = await startTestServer(t, { clock, timezone: 'UTC', pruneIntervalMs: 0 });
  const client = ts.server.clientName;
  const unit = (name: string) => join(dir, name);
  const docs = parseDocuments(`
${['primary', 'offsite', 'archive'].map((u) => `apiVersion: coffer/v1\nkind: StorageUnit\nmetadata: { name: ${u} }\nspec: { url: ${unit(u)} }\n`).join('---\n')}
---
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: gold }
spec:
  copies:
    - { operation: backup,    storageUnit: primary, retention: 14d }
    - { operation: duplicate, storageUnit: offsite, retention: 1y, window: { start: "06:00", duration: 12h } }
    - { operation: stage,     storageUnit: archive, retention: 7y, after: 30d, from: offsite }
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: files }
spec:
  clients: [${client}]
  selections: [{ paths: [${src}] }]
  schedules: [{ name: leap, level: full, calendar: "0 1 29 2 *" }]
  lifecycle: gold
`).map((d) => d.document);
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));

  // Day 0, 01:00: image S (its own data). Its duplicate is queued for the window at 06:00 and
  // does not start before it.
  for (let i = 0; i < 3; i++) await writeFile(join(src, `s${i}.bin`), randomBytes(100 + i, 300_000));
  const S = await backup(ts, 'files');
  await ts.server.lifecycle.runNow();
  const [dupS, ...more] = await jobs(ts, { kind: 'duplicate' });
  assert.equal(more.length, 0, 'one duplicate job, however many passes');
  assert.deepEqual([dupS!.state, dupS!.spec.image, dupS!.spec.from, dupS!.spec.to, dupS!.notBefore, dupS!.spec.notAfter], ['queued', S, 'primary', 'offsite', T0 + 5 * H, T0 + 17 * H]);
  await new Promise((r) => setTimeout(r, 1500)); // the queue looks every second
  assert.equal((await ts.api<Json>('GET', `/api/v1/jobs/${dupS!.id}`)).body.state, 'queued', 'not before its window opens');
  assert.deepEqual(states(await copiesOf(ts, S)), ['primary:ok']);

  // 07:00: the window is open; the duplicate runs.
  await setClock(ts, clock, T0 + 6 * H);
  const dupDone = await ts.waitJob(dupS!.id);
  assert.equal(dupDone.state, 'succeeded', JSON.stringify(dupDone));
  assert.ok((dupDone.started as number) >= T0 + 5 * H);
  const sCopies = await copiesOf(ts, S);
  assert.deepEqual(states(sCopies), ['offsite:ok', 'primary:ok']);
  const sSnap = (u: string, copies = sCopies) => Object.values(copies.find((c) => c.storageUnit === u)!.snapshots)[0] as string;
  assert.deepEqual(await stored(unit('offsite')), [sSnap('offsite')]);
  assert.equal(sCopies.find((c) => c.storageUnit === 'offsite')!.expires, T0 + 365 * D, 'its own retention, from the backup');

  // 19:00, after the window: image K (other data), put on legal hold. Its duplicate waits for
  // tomorrow's window.
  for (let i = 0; i < 3; i++) await rm(join(src, `s${i}.bin`));
  for (let i = 0; i < 3; i++) await writeFile(join(src, `k${i}.bin`), randomBytes(200 + i, 300_000));
  await setClock(ts, clock, T0 + 18 * H);
  const K = await backup(ts, 'files');
  const held = await ts.api<Json>('POST', `/api/v1/images/${K}/hold`, { body: { reason: 'case 4711' } });
  assert.equal(held.status, 200, JSON.stringify(held.body));
  await ts.server.lifecycle.runNow();
  const dupK = (await jobs(ts, { kind: 'duplicate' })).filter((j) => j.spec.image === K);
  assert.deepEqual(dupK.map((j) => [j.state, j.notBefore, j.spec.notAfter]), [['queued', T0 + D + 5 * H, T0 + D + 17 * H]]);

  // Day 2, 07:00: the server was too busy (asleep) through day 1's window: that job is missed,
  // not lost. It is queued again for the window open now, and runs.
  await setClock(ts, clock, T0 + 2 * D + 6 * H);
  const missed = await ts.waitJob(dupK[0]!.id);
  assert.equal(missed.state, 'missed', JSON.stringify(missed));
  assert.match((missed.error as Json).message, /window of this copy closed/);
  await ts.server.lifecycle.runNow();
  const again = (await jobs(ts, { kind: 'duplicate' })).filter((j) => j.spec.image === K && j.id !== dupK[0]!.id);
  assert.equal(again.length, 1, JSON.stringify(again));
  assert.deepEqual([again[0]!.notBefore, again[0]!.spec.notAfter], [T0 + 2 * D + 6 * H, T0 + 2 * D + 17 * H]);
  const dupK2 = await ts.waitJob(again[0]!.id);
  assert.equal(dupK2.state, 'succeeded', JSON.stringify(dupK2));
  const kCopies = await copiesOf(ts, K);
  assert.deepEqual(states(kCopies), ['offsite:ok held', 'primary:ok held'], 'a copy of a held image is held too');
  const kSnap = (u: string) => Object.values(kCopies.find((c) => c.storageUnit === u)!.snapshots)[0] as string;

  // Day 15: S's primary copy (14d) expires: its snapshot leaves primary and the unit is pruned
  // (S's own data goes); K's is held and stays.
  const primaryBefore = await usedBytes(ts, 'primary');
  await setClock(ts, clock, T0 + 15 * D);
  const exp = await expire(ts);
  assert.ok((exp.result as Json).pruned.includes('primary'), JSON.stringify(exp.result));
  assert.deepEqual(states(await copiesOf(ts, S)), ['offsite:ok']);
  assert.deepEqual(states(await copiesOf(ts, K)), ['offsite:ok held', 'primary:ok held']);
  assert.deepEqual(await stored(unit('primary')), [kSnap('primary')]);
  const primaryAfter = await usedBytes(ts, 'primary');
  assert.ok(primaryBefore - primaryAfter > 800_000, `the prune removed S's data from primary: ${primaryBefore} → ${primaryAfter} bytes`);

  // Day 31: both images are 30 days old: the stages copy offsite to archive. S's offsite copy is
  // released (expired, then forgotten and pruned); K's is held and stays, and its archive copy
  // is held too.
  await setClock(ts, clock, T0 + 31 * D);
  await ts.server.lifecycle.runNow();
  const stages = await jobs(ts, { kind: 'stage' });
  assert.deepEqual(stages.map((j) => [j.spec.image, j.spec.from, j.spec.to]).sort(), [[K, 'offsite', 'archive'], [S, 'offsite', 'archive']].sort());
  const ended = new Map<string, Json>();
  for (const j of stages) ended.set(j.spec.image, await ts.waitJob(j.id));
  assert.deepEqual([ended.get(S)!.state, ended.get(S)!.result.released], ['succeeded', true], JSON.stringify(ended.get(S)));
  assert.deepEqual([ended.get(K)!.state, ended.get(K)!.result.released], ['succeeded', false], JSON.stringify(ended.get(K)));
  assert.match(ended.get(K)!.result.kept, /hold is released \(case 4711\)/);
  const sStaged = await copiesOf(ts, S);
  assert.ok(['archive:ok,offsite:expired', 'archive:ok'].includes(states(sStaged).join()), states(sStaged).join());

  // Staged images restore from wherever their data lives now: archive.
  const to = join(dir, 'restored');
  const restore = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/restores', { body: { image: S, toClient: client, toPath: to } })).body.id);
  assert.equal(restore.state, 'succeeded', JSON.stringify(restore));
  assert.deepEqual((restore.result as Json).copies, ['archive']);
  for (let i = 0; i < 3; i++) assert.deepEqual(await readFile(join(to, src, `s${i}.bin`)), randomBytes(100 + i, 300_000));

  const exp2 = await expire(ts);
  assert.deepEqual(states(await copiesOf(ts, S)), ['archive:ok']);
  assert.deepEqual(states(await copiesOf(ts, K)), ['archive:ok held', 'offsite:ok held', 'primary:ok held']);
  const offsiteJobs = (await jobs(ts, { kind: 'expire' })).filter((j) => (j.result?.pruned ?? []).includes('offsite'));
  assert.ok(offsiteJobs.length > 0, `offsite was pruned: ${JSON.stringify(exp2.result)}`);
  // What storage holds: S only in archive; K in all three units.
  const aS = sSnap('archive', await copiesOf(ts, S));
  const aK = Object.values((await copiesOf(ts, K)).find((c) => c.storageUnit === 'archive')!.snapshots)[0] as string;
  assert.deepEqual(await stored(unit('primary')), [kSnap('primary')]);
  assert.deepEqual(await stored(unit('offsite')), [kSnap('offsite')]);
  assert.deepEqual(await stored(unit('archive')), [aS, aK].sort());

  // Nothing is left to do; a year on, the hold still keeps K's copies past their retention.
  assert.deepEqual((await ts.server.lifecycle.runNow()).queued, []);
  await setClock(ts, clock, T0 + 400 * D);
  await expire(ts);
  assert.deepEqual(states(await copiesOf(ts, K)), ['archive:ok held', 'offsite:ok held', 'primary:ok held']);
  assert.deepEqual(states(await copiesOf(ts, S)), ['archive:ok']);
  assert.deepEqual((await ts.server.lifecycle.runNow()).queued, []);
  assert.equal((await jobs(ts, { state: 'failed' })).length, 0, JSON.stringify(await jobs(ts, { state: 'failed' })));
});

test('a stage with a high-water mark stages the oldest images early while the source unit is above it, and stops below it', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  const clock = new FakeClock(T0);
  const ts = await startTestServer(t, { clock, timezone: 'UTC', pruneIntervalMs: 0 });
  const client = ts.server.clientName;
  const primaryUnit = (capacity?: string) => ({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'primary' }, spec: { url: join(dir, 'primary'), ...(capacity ? { capacity } : {}) } });
  const applied = await ts.api<Json>('POST', '/api/v1/apply', {
    body: {
      documents: [
        primaryUnit(),
        { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'archive' }, spec: { url: join(dir, 'archive') } },
        { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'tiered' }, spec: { copies: [{ operation: 'backup', storageUnit: 'primary', retention: '30d' }, { operation: 'stage', storageUnit: 'archive', retention: '7y', after: '20d', highWater: '60%' }] } },
        { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'files' }, spec: { clients: [client], selections: [{ paths: [src] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'tiered' } },
      ],
    },
  });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  // Three images, each with 1 MB of its own (random, so stored as it is), an hour apart.
  const images: string[] = [];
  for (let i = 0; i < 3; i++) {
    await rm(join(src, `own-${i - 1}.bin`), { force: true });
    await writeFile(join(src, `own-${i}.bin`), randomBytes(300 + i, 1_000_000));
    await setClock(ts, clock, T0 + i * H);
    images.push(await backup(ts, 'files'));
  }
  // No capacity given: a path unit has its file system's size, far from 60% full here.
  const { statfs } = await import('node:fs/promises');
  const fs = await statfs(join(dir, 'primary'));
  await setClock(ts, clock, T0 + 4 * H); // a unit's use is measured at most once an hour
  const roomy = await ts.server.lifecycle.runNow();
  assert.deepEqual(roomy.units.map((u) => [u.unit, u.capacity, u.staged]), [['primary', fs.blocks * fs.bsize, 0]]);
  assert.deepEqual(roomy.queued, []);

  // A capacity that puts the unit half a megabyte above its mark: the oldest image is staged
  // early (at 4 hours, not 20 days) and its primary copy released; that brings it below.
  const used = await usedBytes(ts, 'primary');
  const capacity = Math.round((used - 500_000) / 0.6);
  assert.equal((await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [primaryUnit(`${capacity}B`)] } })).status, 200);
  const full = await ts.server.lifecycle.runNow();
  assert.deepEqual(full.units.map((u) => [u.unit, u.used, u.capacity, u.mark, u.staged]), [['primary', used, capacity, 0.6, 1]]);
  assert.deepEqual(full.queued.map((q) => [q.kind, q.image, q.to, q.early]), [['stage', images[0], 'archive', true]]);
  const stage = await ts.waitJob(full.queued[0]!.job);
  assert.deepEqual([stage.state, (stage.result as Json).released], ['succeeded', true], JSON.stringify(stage));
  await expire(ts);
  assert.deepEqual(states(await copiesOf(ts, images[0]!)), ['archive:ok']);
  for (const id of images.slice(1)) assert.deepEqual(states(await copiesOf(ts, id)), ['primary:ok']);
  const after = await usedBytes(ts, 'primary');
  assert.ok(after < 0.6 * capacity, `below the mark after the prune: ${after} of ${capacity}`);

  // Measured again an hour on: below the mark, nothing more is staged.
  await setClock(ts, clock, T0 + 6 * H);
  const below = await ts.server.lifecycle.runNow();
  assert.deepEqual(below.units.map((u) => [u.used, u.staged]), [[after, 0]]);
  assert.deepEqual(below.queued, []);
});
