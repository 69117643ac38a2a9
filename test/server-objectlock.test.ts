// Immutable copies through the real server, on a real Ceph RADOS Gateway with Object Lock
// (src/testing/ceph-rgw.ts): an immutable unit must be S3 with Object Lock (refused otherwise,
// saying what to do); a locked copy cannot be deleted before its time, by an administrator through
// the API nor by anyone with the SDK; the expiry keeps it while it is locked and says so; the
// lock-extend job moves the lock of a pack a short- and a long-lived copy share to the long one's
// expiry; the expiry and its prune leave objects whose locks last longer than the catalog
// expected, report them, and delete them at a later expiry once the locks have passed. Locks
// last seconds; the whole cluster is thrown away after.
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { CreateBucketCommand, DeleteObjectCommand, GetObjectRetentionCommand, ListObjectVersionsCommand, ListObjectsV2Command, PutObjectRetentionCommand } from '@aws-sdk/client-s3';
import { startCephRgw } from '../src/testing/ceph-rgw.ts';
import { startTestServer } from '../src/server/test-server.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';

type Json = Record<string, any>;
const sleepUntil = (time: number) => new Promise((r) => setTimeout(r, Math.max(0, time - Date.now())));

test('immutable copies on Ceph RGW: not deletable before their time, even by an admin; expiry and prune leave and report what is locked; lock-extend follows the longest copy', async (t) => {
  const rgw = await startCephRgw();
  t.after(() => rgw.stop());
  const sdk = rgw.client();
  t.after(() => sdk.destroy());
  await sdk.send(new CreateBucketCommand({ Bucket: 'vault', ObjectLockEnabledForBucket: true }));
  await sdk.send(new CreateBucketCommand({ Bucket: 'plain' }));
  const retentionOf = async (key: string) => (await sdk.send(new GetObjectRetentionCommand({ Bucket: 'vault', Key: key }))).Retention?.RetainUntilDate?.getTime();
  const setRetention = (key: string, until: number) => sdk.send(new PutObjectRetentionCommand({ Bucket: 'vault', Key: key, Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(until) } }));
  const packs = async () => ((await sdk.send(new ListObjectsV2Command({ Bucket: 'vault', Prefix: 'units/vault/data/' }))).Contents ?? []).map((o) => ({ key: o.Key!, modified: o.LastModified!.getTime() }));

  const dir = await tempDir(t);
  const shared = join(dir, 'shared');
  const own = join(dir, 'own');
  await mkdir(shared);
  await mkdir(own);
  await writeFile(join(shared, 'big.bin'), randomBytes(31, 1_200_000));
  await writeFile(join(own, 'only-short.bin'), randomBytes(32, 900_000));
  const ts = await startTestServer(t, { pruneIntervalMs: 0, env: { ...process.env, VAULT_KEY: rgw.accessKeyId, VAULT_SECRET: rgw.secretAccessKey, AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' } });
  const client = ts.server.clientName;
  const credentialsFrom = { accessKeyId: 'env:VAULT_KEY', secretAccessKey: 'env:VAULT_SECRET' };
  const unit = (name: string, spec: Json) => ({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name }, spec });
  const apply = (documents: Json[]) => ts.api<Json>('POST', '/api/v1/apply', { body: { documents } });

  // Immutable needs S3, and a bucket with Object Lock.
  const onDisk = await apply([unit('disk', { url: join(dir, 'repo'), immutable: true })]);
  assert.equal(onDisk.status, 422, JSON.stringify(onDisk.body));
  assert.match(JSON.stringify(onDisk.body.error), /immutable.*needs S3 storage with Object Lock/);
  const noLock = await apply([unit('plain', { url: `s3://plain/units/plain?endpoint=${encodeURIComponent(rgw.endpoint)}`, immutable: true, credentialsFrom })]);
  assert.equal(noLock.status, 422, JSON.stringify(noLock.body));
  assert.match(JSON.stringify(noLock.body.error), /does not have Object Lock enabled/);
  assert.match(JSON.stringify(noLock.body.error), /object-lock-enabled-for-bucket/);
  const minimumAlone = await apply([unit('plain', { url: `s3://plain/units/plain?endpoint=${encodeURIComponent(rgw.endpoint)}`, minimumLock: '1d', credentialsFrom })]);
  assert.equal(minimumAlone.status, 422);
  assert.match(JSON.stringify(minimumAlone.body.error), /minimumLock.*immutable storage units only/);

  // The unit: copies locked at least 15 s; a brief (4 s) and a long (45 s) lifecycle on it.
  const applied = await apply([
    unit('vault', { url: `s3://vault/units/vault?endpoint=${encodeURIComponent(rgw.endpoint)}`, immutable: true, minimumLock: '15s', credentialsFrom }),
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'brief' }, spec: { copies: [{ operation: 'backup', storageUnit: 'vault', retention: '4s' }] } },
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'long' }, spec: { copies: [{ operation: 'backup', storageUnit: 'vault', retention: '45s' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'short-p' }, spec: { clients: [client], selections: [{ paths: [shared] }, { paths: [own] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'brief' } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'long-p' }, spec: { clients: [client], selections: [{ paths: [shared] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'long' } },
  ]);
  assert.equal(applied.status, 200, JSON.stringify(applied.body));

  const backup = async (policy: string) => {
    const job = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy } })).body.jobs[0].id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    const image = (await ts.api<Json>('GET', '/api/v1/images', { query: { policy } })).body.items[0];
    return (await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body;
  };
  const shortStart = Date.now();
  const short = await backup('short-p');
  const shortPacks = await packs();
  const longStart = Date.now();
  const long = await backup('long-p');
  const longCopy = long.copies[0];
  const shortSnapshots: string[] = Object.values(short.copies[0].snapshots);
  const snapshotKey = (id: string) => `units/vault/snapshots/${id}`;

  // Written locked: the short copy's snapshot for 15 s from its write (its 4 s retention is shorter).
  const snapLock = await retentionOf(snapshotKey(shortSnapshots[0]!));
  assert.ok(snapLock !== undefined && snapLock >= shortStart + 15_000 && snapLock <= Date.now() + 15_000, `snapshot locked until ${snapLock}`);

  // An admin cannot delete it through the API...
  const refused = await ts.api<Json>('DELETE', `/api/v1/images/${short.id}`);
  assert.equal(refused.status, 403, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'REFUSED');
  assert.match(refused.body.error.message, /immutable storage unit vault is locked until/);
  assert.equal((await ts.api<Json>('GET', `/api/v1/images/${short.id}`)).body.copies[0].state, 'ok');
  // ...nor anyone with the bucket's credentials: DeleteObject of the locked version fails.
  const key = snapshotKey(shortSnapshots[0]!);
  const version = (await sdk.send(new ListObjectVersionsCommand({ Bucket: 'vault', Prefix: key }))).Versions!.find((v) => v.Key === key)!.VersionId!;
  await assert.rejects(sdk.send(new DeleteObjectCommand({ Bucket: 'vault', Key: key, VersionId: version })), (e: Error) => e.name === 'AccessDenied');
  const audit = (await ts.api<Json>('GET', '/api/v1/audit')).body.items as Json[];
  assert.ok(audit.some((a) => a.action === 'image.expire' && a.outcome === 'failed' && a.target === `image/${short.id}` && a.details.error === 'REFUSED'), JSON.stringify(audit.slice(0, 3)));

  // lock-extend: what both copies share is locked until the long copy's expiry.
  const extend = await ts.api<Json>('POST', '/api/v1/lock-extend', { body: {} });
  assert.equal(extend.status, 202, JSON.stringify(extend.body));
  const extended: Json = await ts.waitJob(extend.body.id);
  assert.equal(extended.state, 'succeeded', JSON.stringify(extended));
  assert.ok(extended.result.units[0].extended > 0, JSON.stringify(extended.result));
  const oldPacks = (await packs()).filter((p) => shortPacks.some((s) => s.key === p.key) && p.modified < longStart);
  const sharedPacks: string[] = [];
  const ownPacks: string[] = [];
  for (const p of oldPacks) {
    const until = (await retentionOf(p.key))!;
    if (Math.abs(until - longCopy.expires) < 1000) sharedPacks.push(p.key);
    else ownPacks.push(p.key);
  }
  assert.ok(sharedPacks.length > 0, 'a pack the short backup wrote is now locked until the long copy expires');
  assert.ok(ownPacks.length > 0, 'the short copy\'s own packs keep their lock');
  const notImmutable = await ts.api<Json>('POST', '/api/v1/lock-extend', { body: { unit: 'default' } });
  assert.equal(notImmutable.status, 400);
  assert.match(notImmutable.body.error.message, /not immutable/);

  // Past its 4 s retention but inside its 15 s lock: the expiry keeps it and says so.
  await sleepUntil(shortStart + 5000);
  assert.ok(Date.now() < short.copies[0].created + 14_000, 'the machine is too slow for this test\'s timing');
  const e1: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/expire')).body.id);
  assert.equal(e1.state, 'succeeded', JSON.stringify(e1));
  assert.equal(e1.result.locked.copies, 1, JSON.stringify(e1.result));
  assert.equal((await ts.api<Json>('GET', `/api/v1/images/${short.id}`)).body.copies[0].state, 'ok');

  // Locks longer than the catalog knows (set with the SDK, as a changed minimumLock would leave
  // them): the snapshot 6 s past its lock, the short copy's own packs 12 s past it.
  const snapUntil = snapLock! + 6000;
  const packsUntil = snapLock! + 12_000;
  for (const id of shortSnapshots) await setRetention(snapshotKey(id), snapUntil);
  for (const p of ownPacks) await setRetention(p, packsUntil);
  await sleepUntil(snapLock! + 1500);
  const e2: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/expire')).body.id);
  assert.equal(e2.state, 'succeeded', JSON.stringify(e2));
  assert.equal(e2.result.locked.snapshots, shortSnapshots.length, JSON.stringify(e2.result));
  assert.equal(e2.result.forgotten, 0);
  assert.equal((await ts.api<Json>('GET', `/api/v1/images/${short.id}`)).body.copies[0].state, 'expired', 'kept in the catalog while its snapshots are locked');

  await sleepUntil(snapUntil + 1500);
  const e3: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/expire')).body.id);
  assert.equal(e3.state, 'succeeded', JSON.stringify(e3));
  assert.equal(e3.result.forgotten, 1, JSON.stringify(e3.result));
  assert.equal((await ts.api<Json>('GET', `/api/v1/images/${short.id}`)).status, 404);
  const left = e3.result.lockedLeft[0];
  assert.equal(left.unit, 'vault');
  assert.equal(left.packs, ownPacks.length, JSON.stringify(e3.result));
  assert.ok(left.bytes > 0 && Math.abs(left.until - packsUntil) < 1500, JSON.stringify(left));
  const logs = JSON.stringify((await ts.api<Json>('GET', `/api/v1/jobs/${e3.id}/logs`)).body);
  assert.match(logs, /prune left \d+ locked pack/);
  const stored = new Set((await packs()).map((p) => p.key));
  for (const p of ownPacks) assert.ok(stored.has(p), 'a locked pack is still there');

  // A later expiry, once the locks have passed, prunes the unit again though nothing else expired.
  await sleepUntil(packsUntil + 1500);
  const e4: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/expire')).body.id);
  assert.equal(e4.state, 'succeeded', JSON.stringify(e4));
  assert.deepEqual(e4.result.pruned, ['vault']);
  // Left now: only superseded index files that list what the long copy needs (lock-extend moved
  // their locks too), until its expiry.
  for (const l of e4.result.lockedLeft as Json[]) {
    assert.equal(l.packs, 0, JSON.stringify(l));
    assert.ok(l.until <= longCopy.expires + 1000, JSON.stringify(l));
  }
  const after = new Set((await packs()).map((p) => p.key));
  for (const p of ownPacks) assert.ok(!after.has(p), 'deleted once its lock passed');
  for (const p of sharedPacks) assert.ok(after.has(p), 'what the long copy needs stays');

  // The long copy restores whole.
  const to = join(dir, 'restored');
  const r = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/restores', { body: { image: long.id, toClient: client, toPath: to } })).body.id);
  assert.equal(r.state, 'succeeded', JSON.stringify(r));
});
