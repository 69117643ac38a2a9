// Duplicates through the real server: units the server creates share one deduplication domain
// (packs copied as they are), a backup's due duplicates go in one job with several targets,
// `POST /api/v1/clones` takes several units and a number of copies, a unit whose repository has
// its own keys is cloned to by re-encrypting (and within its bandwidth limit), and a duplicate job queued in the old form still runs.
import assert from 'node:assert/strict';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseDocuments } from '../src/policy/index.ts';
import { Repository } from '../src/repository/repository.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { randomBytes } from '../src/testing/random.ts';
import { TEST_KDF } from '../src/testing/repo.ts';
import { startTestServer } from '../src/server/test-server.ts';
import { tempDir } from '../src/testing/tmp.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

async function packNames(unitDir: string): Promise<string[]> {
  const out: string[] = [];
  for (const sub of await readdir(join(unitDir, 'data'))) for (const name of await readdir(join(unitDir, 'data', sub))) out.push(name);
  return out.sort();
}

test('duplicates between the server\'s units copy packs as they are, several targets per job, and clone on demand to several units', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'data');
  await mkdir(src);
  for (let i = 0; i < 5; i++) await writeFile(join(src, `f${i}.bin`), randomBytes(70 + i, 300_000));
  const ts = await startTestServer(t);
  const client = ts.server.clientName;
  const unit = (name: string) => join(dir, name);
  // A repository made elsewhere, with its own keys: the server is given its password.
  const foreignPassword = join(dir, 'foreign.pw');
  await writeFile(foreignPassword, 'foreign password\n', { mode: 0o600 });
  const foreign = await Repository.init(new LocalBackend(unit('foreign')), 'foreign password', { kdf: TEST_KDF, cacheDir: join(dir, 'cache') });
  await foreign.close();
  const docs = parseDocuments(`
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: primary }
spec: { url: ${unit('primary')} }
---
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: offsite }
spec: { url: ${unit('offsite')} }
---
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: archive }
spec: { url: ${unit('archive')} }
---
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: foreign }
spec: { url: ${unit('foreign')}, passwordFrom: "file:${foreignPassword}", bandwidth: 1MB/s }
---
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: three }
spec:
  copies:
    - { operation: backup, storageUnit: primary, retention: 14d }
    - { operation: duplicate, storageUnit: offsite, retention: 1y }
    - { operation: duplicate, storageUnit: archive, retention: 7y }
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: p }
spec:
  clients: [${client}]
  selections: [{ paths: [${src}] }]
  schedules: [{ name: leap, level: full, calendar: "0 1 29 2 *" }]
  lifecycle: three
`).map((d) => d.document);
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  const backup: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'p' } })).body.jobs[0].id);
  assert.equal(backup.state, 'succeeded', JSON.stringify(backup));

  // One job for both due copies, from one read; the server's units share keys: packs copied whole.
  const dupJobs = (await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'duplicate' } })).body.items;
  assert.equal(dupJobs.length, 1);
  assert.deepEqual(dupJobs[0].spec.targets.map((x: Json) => x.to), ['offsite', 'archive']);
  const dup: Json = await ts.waitJob(dupJobs[0].id);
  assert.equal(dup.state, 'succeeded', JSON.stringify(dup));
  assert.equal(dup.result.sameKeys, true, JSON.stringify(dup.result));
  assert.deepEqual(dup.result.targets.map((x: Json) => x.to), ['offsite', 'archive']);
  const primaryPacks = await packNames(unit('primary'));
  assert.deepEqual(await packNames(unit('offsite')), primaryPacks);
  assert.deepEqual(await packNames(unit('archive')), primaryPacks);
  const image = (await ts.api<Json>('GET', '/api/v1/images', { query: { client, policy: 'p' } })).body.items[0];
  const copies = (await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body.copies;
  assert.deepEqual(copies.map((c: Json) => c.storageUnit).sort(), ['archive', 'offsite', 'primary']);
  const archive = copies.find((c: Json) => c.storageUnit === 'archive');
  assert.ok(archive.expires - image.time > 6 * 365 * 86_400_000, 'each copy has its own retention');

  // On demand: two units listed, one new copy asked for: the first that lacks it (foreign).
  const where = { client, policy: 'p' };
  const tooMany = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: ['offsite', 'foreign'], copies: 3 } });
  assert.equal(tooMany.status, 400);
  assert.match(tooMany.body.error.message, /3 copies .* 2 storage unit/);
  const dry = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: ['offsite', 'foreign'], copies: 1, retention: '30d', dryRun: true } });
  assert.equal(dry.status, 202, JSON.stringify(dry.body));
  assert.deepEqual([dry.body.to, dry.body.copies, dry.body.images[0].targets, dry.body.jobs.length], [['offsite', 'foreign'], 1, [{ to: 'foreign', retention: '30d' }], 0]);
  const cl = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: ['offsite', 'foreign'], copies: 1, retention: '30d' } });
  const clJob: Json = await ts.waitJob(cl.body.jobs[0].id);
  assert.equal(clJob.state, 'succeeded', JSON.stringify(clJob));
  assert.equal(clJob.result.sameKeys, false, 'the foreign unit has its own keys: re-encrypted');
  assert.ok(clJob.result.newBytes >= 1_500_000, JSON.stringify(clJob.result));
  // The foreign unit's bandwidth (1MB/s) held the upload back: its stored bytes, less a quarter second's burst.
  const seconds = (clJob.ended - clJob.started) / 1000;
  assert.ok(seconds >= (clJob.result.storedBytes - 250_000) / 1_000_000, `${clJob.result.storedBytes} bytes in ${seconds} s`);
  const again = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: 'offsite', retention: '30d' } });
  assert.deepEqual([again.body.images.length, again.body.skipped[0].reason], [0, 'already has a copy in offsite']);

  // A duplicate job in the old form ({ from, to, retention }), as a server before this one queued it.
  const scratch = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [{ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'scratch' }, spec: { url: unit('scratch') } }] } });
  assert.equal(scratch.status, 200, JSON.stringify(scratch.body));
  const old = await ts.server.catalog.jobs.enqueue({ kind: 'duplicate', client, policy: 'p', storageUnit: 'scratch', priority: 0, maxAttempts: 5, spec: { image: image.id, from: 'primary', to: 'scratch', retention: '1d' } });
  ts.server.dispatcher.wake();
  const oldDone: Json = await ts.waitJob(old.id);
  assert.equal(oldDone.state, 'succeeded', JSON.stringify(oldDone));
  assert.equal(oldDone.result.to, 'scratch');
  assert.deepEqual(await packNames(unit('scratch')), primaryPacks);
  const final = (await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body.copies;
  assert.deepEqual(final.map((c: Json) => c.storageUnit).sort(), ['archive', 'foreign', 'offsite', 'primary', 'scratch']);
});
