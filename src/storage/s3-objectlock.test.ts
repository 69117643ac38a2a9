// S3Backend with Object Lock against a real Ceph RADOS Gateway (src/testing/ceph-rgw.ts): the
// conformance suite in a versioned, lock-enabled bucket (deletes remove versions, not hide them),
// and the locks themselves: what is written is locked in compliance mode, a locked object cannot
// be deleted (by this backend, or by anyone with the SDK), a lock is extended but never shortened,
// and once it has passed the delete leaves nothing behind. Locks here last seconds: the gateway
// cannot empty a bucket with locked versions, and the whole cluster is thrown away after.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { CreateBucketCommand, DeleteObjectCommand, GetObjectRetentionCommand, ListObjectVersionsCommand } from '@aws-sdk/client-s3';
import { isCofferError } from '../core/errors.ts';
import { startCephRgw } from '../testing/ceph-rgw.ts';
import { lockedUntilOf } from './backend.ts';
import { runConformanceSuite } from './conformance.ts';
import { S3Backend, type S3ObjectLockOptions } from './s3.ts';

const rgw = await startCephRgw();
after(() => rgw.stop());
const sdk = rgw.client();
after(() => sdk.destroy());
await sdk.send(new CreateBucketCommand({ Bucket: 'locked', ObjectLockEnabledForBucket: true }));
await sdk.send(new CreateBucketCommand({ Bucket: 'plain' }));

let prefixes = 0;
function backend(bucket: string, objectLock?: S3ObjectLockOptions): S3Backend {
  return new S3Backend({
    bucket, prefix: `t${++prefixes}`, endpoint: rgw.endpoint, region: rgw.region, forcePathStyle: true,
    credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey },
    ...(objectLock ? { objectLock } : {}),
  });
}

async function versions(b: S3Backend, name: string): Promise<number> {
  const key = `${b.location.slice('s3://locked/'.length)}/${name}`;
  const out = await sdk.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: key }));
  return [...(out.Versions ?? []), ...(out.DeleteMarkers ?? [])].filter((v) => v.Key === key).length;
}

runConformanceSuite('S3Backend on Ceph RGW with Object Lock (nothing locked)', async () => {
  const b = backend('locked', {});
  return { backend: b, cleanup: () => b.close() };
});

describe('S3Backend with Object Lock on Ceph RGW', () => {
  it('checks that the bucket has Object Lock: a bucket without it is refused with what to do', async () => {
    const good = backend('locked', {});
    const bad = backend('plain', {});
    try {
      await good.locks!.check();
      await assert.rejects(bad.locks!.check(), (e) => isCofferError(e, 'REFUSED') && /does not have Object Lock enabled/.test(e.message) && /object-lock-enabled-for-bucket/.test(e.hint ?? ''));
      // Writing with a lock to such a bucket says the same.
      const writer = backend('plain', { retainUntil: Date.now() + 60_000 });
      await assert.rejects(writer.put('data/x', Buffer.from('x')), (e) => isCofferError(e, 'REFUSED') && /Object Lock/.test(e.message + (e.hint ?? '')));
      await writer.close();
      assert.equal(new S3Backend({ bucket: 'plain', endpoint: rgw.endpoint }).locks, undefined, 'no locks without the objectLock option');
    } finally {
      await good.close();
      await bad.close();
    }
  });

  it('locks what it writes in compliance mode; a locked object cannot be deleted, by the backend or with the SDK; after the lock it goes without a trace', async () => {
    const until = Date.now() + 6000;
    const b = backend('locked', { retainUntil: until, lockName: (n) => !n.startsWith('sessions/') });
    try {
      await b.put('data/pack', Buffer.from('pack bytes'));
      await b.put('sessions/heartbeat', Buffer.from('mutable'));
      const lockedUntil = await b.locks!.lockedUntil('data/pack');
      assert.ok(lockedUntil !== undefined && Math.abs(lockedUntil - until) < 1000, `locked until ${lockedUntil}, wanted ${until}`);
      assert.equal(await b.locks!.lockedUntil('sessions/heartbeat'), undefined, 'names lockName refuses are not locked');
      await b.delete('sessions/heartbeat');
      assert.equal(await versions(b, 'sessions/heartbeat'), 0, 'an unlocked object is deleted with all its versions, no delete marker');

      // The backend refuses, saying until when; the object is still there.
      const refused = await b.delete('data/pack').then(() => undefined, (e: unknown) => e);
      assert.ok(isCofferError(refused, 'REFUSED'), String(refused));
      assert.ok(Math.abs((lockedUntilOf(refused) ?? 0) - until) < 1000);
      assert.equal((await b.get('data/pack')).toString(), 'pack bytes');
      // Anyone with the bucket's credentials fails the same way on the locked version.
      const key = `${b.location.slice('s3://locked/'.length)}/data/pack`;
      const listed = await sdk.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: key }));
      const versionId = listed.Versions!.find((v) => v.Key === key)!.VersionId!;
      await assert.rejects(sdk.send(new DeleteObjectCommand({ Bucket: 'locked', Key: key, VersionId: versionId })), (e: Error) => e.name === 'AccessDenied');
      const retention = await sdk.send(new GetObjectRetentionCommand({ Bucket: 'locked', Key: key }));
      assert.equal(retention.Retention?.Mode, 'COMPLIANCE');
      assert.equal((await b.get('data/pack')).toString(), 'pack bytes');

      // Extended, never shortened.
      assert.equal(await b.locks!.extend('data/pack', until + 2000), until + 2000);
      assert.ok(Math.abs((await b.locks!.extend('data/pack', until - 3000)) - (until + 2000)) < 1000, 'a shorter date leaves the lock as it is');
      assert.ok(Math.abs((await b.locks!.lockedUntil('data/pack'))! - (until + 2000)) < 1000);
      await assert.rejects(b.locks!.extend('data/missing', until), (e) => isCofferError(e, 'NOT_FOUND'));
      assert.ok(Math.abs((await b.locks!.extend('data/pack', Date.now() - 1000)) - (until + 2000)) < 1000, 'a date already past changes nothing');

      // Once the lock has passed, the delete removes every version.
      await new Promise((r) => setTimeout(r, until + 2000 - Date.now() + 1500));
      await b.delete('data/pack');
      assert.equal(await versions(b, 'data/pack'), 0);
      await assert.rejects(b.get('data/pack'), (e) => isCofferError(e, 'NOT_FOUND'));
    } finally {
      await b.close();
    }
  });

  it('locks multipart uploads too', async () => {
    const until = Date.now() + 5000;
    const b = new S3Backend({
      bucket: 'locked', prefix: `t${++prefixes}`, endpoint: rgw.endpoint, region: rgw.region, forcePathStyle: true,
      credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey }, multipartThreshold: 5 * 1024 * 1024, partSize: 5 * 1024 * 1024,
      objectLock: { retainUntil: until },
    });
    try {
      await b.put('data/big', Buffer.alloc(11 * 1024 * 1024, 7));
      const lockedUntil = await b.locks!.lockedUntil('data/big');
      assert.ok(lockedUntil !== undefined && Math.abs(lockedUntil - until) < 1000);
      await assert.rejects(b.delete('data/big'), (e) => isCofferError(e, 'REFUSED'));
      await new Promise((r) => setTimeout(r, until - Date.now() + 1500));
      await b.delete('data/big');
    } finally {
      await b.close();
    }
  });
});
