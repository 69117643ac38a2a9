// Restores use the best copy, through the real server and its embedded agent (issue #10): a
// primary copy with flipped bytes in some of its packs is restored completely from its clone
// with no user action, byte for byte, and the job result says which chunks came from where, with
// the offsite repository in the same dedup domain (same keys) and with other keys. A higher
// priority unit's copy is read first; a unit marked unavailable is passed over, and a restore
// whose only copies are on unavailable units fails naming them and how to bring one back.
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { newMasterKey } from '../src/engine/keys.ts';
import { parseDocuments } from '../src/policy/index.ts';
import { packName } from '../src/repository/layout.ts';
import { Repository } from '../src/repository/repository.ts';
import { startTestServer, type TestServer } from '../src/server/test-server.ts';
import { openBackend } from '../src/storage/url.ts';
import { randomBytes } from '../src/testing/random.ts';
import { TEST_CHUNKER, TEST_KDF } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';

type Json = Record<string, any>;

/** A repository made here (small chunks and packs, so that the data spans many of each), its password in a file. */
async function initRepo(dir: string, password: string, master?: Buffer): Promise<void> {
  await writeFile(`${dir}.password`, password, { mode: 0o600 });
  const backend = await openBackend(dir);
  const repo = await Repository.init(backend, password, { kdf: TEST_KDF, chunker: TEST_CHUNKER, packSize: 128 * 1024, master, cacheDir: `${dir}.cache` });
  await repo.close();
  await backend.close();
}

async function sourceFiles(src: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  await mkdir(join(src, 'db'), { recursive: true });
  for (let i = 0; i < 6; i++) files.set(join(src, i % 2 ? 'db' : '', `f${i}.bin`), randomBytes(900 + i, 180_000 + i * 10_007));
  files.set(join(src, 'notes.txt'), Buffer.from('the restore must give these back\n'));
  for (const [p, b] of files) await writeFile(p, b);
  return files;
}

/** Applies two units (primary, offsite) with a lifecycle duplicating to offsite, and a policy; returns the image once both copies exist. */
async function backedUp(ts: TestServer, units: { primary: string; offsite: string; passwords?: boolean; primaryPriority?: number; offsitePriority?: number }, src: string): Promise<Json> {
  const client = ts.server.clientName;
  const unit = (name: string, url: string, priority: number | undefined) => `apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: ${name} }
spec: { url: ${url}${units.passwords ? `, passwordFrom: "file:${url}.password"` : ''}${priority !== undefined ? `, priority: ${priority}` : ''} }
---
`;
  const docs = parseDocuments(`${unit('primary', units.primary, units.primaryPriority)}${unit('offsite', units.offsite, units.offsitePriority)}apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: two-copies }
spec:
  copies:
    - { operation: backup, storageUnit: primary, retention: 14d }
    - { operation: duplicate, storageUnit: offsite, retention: 1y }
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: files }
spec:
  clients: [${client}]
  selections: [{ paths: [${src}] }]
  schedules: [{ name: leap, level: full, calendar: "0 1 29 2 *" }]
  lifecycle: two-copies
`).map((d) => d.document);
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  const backup: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'files' } })).body.jobs[0].id);
  assert.equal(backup.state, 'succeeded', JSON.stringify(backup));
  const dup: Json = await ts.waitJob((await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'duplicate' } })).body.items[0].id);
  assert.equal(dup.state, 'succeeded', JSON.stringify(dup));
  const image = (await ts.api<Json>('GET', '/api/v1/images', { query: { client, policy: 'files' } })).body.items[0];
  return { ...image, sameKeys: dup.result.sameKeys };
}

async function restoreJob(ts: TestServer, image: string, to: string): Promise<Json> {
  const r = await ts.api<Json>('POST', '/api/v1/restores', { body: { image, toClient: ts.server.clientName, toPath: to } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return ts.waitJob(r.body.id);
}

async function logOf(ts: TestServer, job: string): Promise<string> {
  return (await ts.api<Json>('GET', `/api/v1/jobs/${job}/logs`)).body.items.map((l: Json) => l.message).join('\n');
}

async function assertRestored(files: Map<string, Buffer>, to: string): Promise<void> {
  for (const [p, b] of files) assert.ok((await readFile(join(to, p))).equals(b), `${p} is restored byte for byte`);
}

/**
 * Flips bytes in every other data pack of the repository: some packs are damaged, not all. Packs
 * of trees are left whole: a lost directory tree under other keys is the whole-restore fallback's
 * case (test/server.test.ts), and a tree under the same keys is test/restore-fallback.test.ts's.
 */
async function flipSomePacks(dir: string, password: string): Promise<{ damaged: number; total: number }> {
  const backend = await openBackend(dir);
  const repo = await Repository.open(backend, password, { cacheDir: `${dir}.cache` });
  await repo.loadIndex();
  const data = [...repo.indexedPacks().values()].filter((p) => p.entries.every((e) => e.type === 'data')).map((p) => p.packId.toString('hex')).sort();
  await repo.close();
  await backend.close();
  let damaged = 0;
  for (let i = 0; i < data.length; i += 2) {
    const path = join(dir, packName(data[i]!));
    const bytes = await readFile(path);
    // Past the header, a few bytes spread over the pack: several blobs in it fail verification.
    for (let at = 200; at < bytes.length - 200; at += 20_011) bytes[at]! ^= 0x5a;
    await writeFile(path, bytes);
    damaged++;
  }
  return { damaged, total: data.length };
}

async function damagedPrimaryRestoredFromClone(t: TestContext, sameKeys: boolean): Promise<void> {
  const dir = await tempDir(t);
  const files = await sourceFiles(join(dir, 'src'));
  const primary = join(dir, 'primary');
  const offsite = join(dir, 'offsite');
  const master = newMasterKey();
  await initRepo(primary, 'primary password', master);
  await initRepo(offsite, 'offsite password', sameKeys ? master : undefined);
  const ts = await startTestServer(t);
  const image = await backedUp(ts, { primary, offsite, passwords: true, primaryPriority: 10 }, join(dir, 'src'));
  assert.equal(image.sameKeys, sameKeys, 'the clone saw the keys the test made');

  const flipped = await flipSomePacks(primary, 'primary password');
  assert.ok(flipped.damaged >= 2 && flipped.damaged < flipped.total, JSON.stringify(flipped));
  const to = join(dir, 'restored');
  const r = await restoreJob(ts, image.id, to);
  assert.equal(r.state, 'succeeded', JSON.stringify(r));
  await assertRestored(files, to);
  // Read from the primary, continued chunk by chunk from the offsite copy: no second pass.
  assert.deepEqual(r.result.copies, ['primary']);
  const { primary: fromPrimary, offsite: fromOffsite } = r.result.sources;
  assert.ok(fromPrimary.chunks > 0 && fromOffsite.chunks > 0, JSON.stringify(r.result.sources));
  const total = [...files.values()].reduce((n, b) => n + b.length, 0);
  assert.equal(fromPrimary.bytes + fromOffsite.bytes, total, 'every byte came from one copy or the other, once');
  assert.ok(fromOffsite.fileCount >= 1 && fromOffsite.files.length === Math.min(fromOffsite.fileCount, 20), JSON.stringify(fromOffsite));
  for (const f of fromOffsite.files) assert.ok(files.has(f), `${f} is a file of the image`);
  const log = await logOf(ts, r.id);
  assert.match(log, new RegExp(`${fromOffsite.chunks} chunk\\(s\\), ${fromOffsite.bytes} bytes, could not be read from primary and were restored from offsite, for ${fromOffsite.fileCount} file\\(s\\): `), log);
  assert.match(log, /the copy in primary is damaged \(now suspect\)/, log);
  const copies = (await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body.copies;
  assert.deepEqual(copies.map((c: Json) => [c.storageUnit, c.state]).sort(), [['offsite', 'ok'], ['primary', 'suspect']]);

  // Again, now that the primary is suspect: the offsite copy (ok) is read first, all of it.
  const again = await restoreJob(ts, image.id, join(dir, 'again'));
  assert.equal(again.state, 'succeeded', JSON.stringify(again));
  await assertRestored(files, join(dir, 'again'));
  assert.deepEqual(Object.keys(again.result.sources), ['offsite']);
}

test('a primary copy with flipped bytes in some packs is restored completely from its clone, with no user action (same keys)', (t) => damagedPrimaryRestoredFromClone(t, true));

test('a primary copy with flipped bytes in some packs is restored completely from its clone, with no user action (other keys)', (t) => damagedPrimaryRestoredFromClone(t, false));

test('the higher-priority unit\'s copy is read first; an unavailable unit is passed over; only unavailable copies: a clear error', async (t) => {
  const dir = await tempDir(t);
  const files = await sourceFiles(join(dir, 'src'));
  const ts = await startTestServer(t);
  const image = await backedUp(ts, { primary: join(dir, 'primary'), offsite: join(dir, 'offsite'), offsitePriority: 50 }, join(dir, 'src'));

  const first = await restoreJob(ts, image.id, join(dir, 'r1'));
  assert.equal(first.state, 'succeeded', JSON.stringify(first));
  assert.deepEqual([first.result.copies, Object.keys(first.result.sources)], [['offsite'], ['offsite']], 'offsite has the higher priority');
  await assertRestored(files, join(dir, 'r1'));

  // Only an administrator marks a unit unavailable, with a reason, and it is audited.
  const op = await ts.api<Json>('POST', '/api/v1/users', { body: { name: 'op', role: 'operator', password: 'operator password 1' } });
  assert.equal(op.status, 201, JSON.stringify(op.body));
  const denied = await ts.api<Json>('POST', '/api/v1/units/offsite/unavailable', { body: { reason: 'x' }, token: await ts.login('op', 'operator password 1') });
  assert.equal(denied.status, 403);
  const noReason = await ts.api<Json>('POST', '/api/v1/units/offsite/unavailable', { body: { reason: ' ' } });
  assert.equal(noReason.status, 400, JSON.stringify(noReason.body));
  const down = await ts.api<Json>('POST', '/api/v1/units/offsite/unavailable', { body: { reason: 'volumes at the vault' } });
  assert.equal(down.status, 200, JSON.stringify(down.body));
  assert.deepEqual([down.body.available, down.body.reason, down.body.by], [false, 'volumes at the vault', 'admin']);
  const units = (await ts.api<Json>('GET', '/api/v1/units')).body.items;
  assert.deepEqual(units.map((u: Json) => [u.name, u.available, u.priority]).sort(), [['default', true, 0], ['offsite', false, 50], ['primary', true, 0]]);
  const shown = (await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body.copies;
  assert.equal(shown.find((c: Json) => c.storageUnit === 'offsite').unitUnavailable, 'volumes at the vault');
  assert.equal(shown.find((c: Json) => c.storageUnit === 'primary').unitUnavailable, undefined);

  const second = await restoreJob(ts, image.id, join(dir, 'r2'));
  assert.equal(second.state, 'succeeded', JSON.stringify(second));
  assert.deepEqual([second.result.copies, Object.keys(second.result.sources)], [['primary'], ['primary']]);
  await assertRestored(files, join(dir, 'r2'));
  assert.match(await logOf(ts, second.id), /passing over the copies on storage units marked unavailable: offsite \(volumes at the vault\)/);

  // Both unavailable: refused, naming the units and how to bring one back; nothing is queued.
  assert.equal((await ts.api<Json>('POST', '/api/v1/units/primary/unavailable', { body: { reason: 'disks offline' } })).status, 200);
  const jobsBefore = (await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'restore' } })).body.items.length;
  const refused = await ts.api<Json>('POST', '/api/v1/restores', { body: { image: image.id, toClient: ts.server.clientName, toPath: join(dir, 'r3') } });
  assert.equal(refused.status, 409, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'CONFLICT');
  assert.match(refused.body.error.message, /marked unavailable: .*offsite \(volumes at the vault\)/);
  assert.match(refused.body.error.message, /primary \(disks offline\)/);
  assert.match(refused.body.error.hint, /coffer units available (offsite|primary)/);
  assert.equal((await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'restore' } })).body.items.length, jobsBefore);

  // Available again: restores read it, and the changes are in the audit log.
  const up = await ts.api<Json>('POST', '/api/v1/units/offsite/available');
  assert.deepEqual([up.status, up.body.available, up.body.changed], [200, true, true]);
  const third = await restoreJob(ts, image.id, join(dir, 'r3'));
  assert.equal(third.state, 'succeeded', JSON.stringify(third));
  assert.deepEqual(third.result.copies, ['offsite']);
  const audit = (await ts.api<Json>('GET', '/api/v1/audit', { query: { target: 'StorageUnit/offsite' } })).body.items;
  assert.deepEqual(audit.filter((a: Json) => a.outcome === 'ok').map((a: Json) => a.action), ['unit.available', 'unit.unavailable']);
  const deniedAudit = (await ts.api<Json>('GET', '/api/v1/audit', { query: { action: 'unit.unavailable', outcome: 'denied' } })).body.items;
  assert.deepEqual(deniedAudit.map((a: Json) => a.actor), ['op']);
});
