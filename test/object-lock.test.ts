// A repository on S3 with Object Lock (a real Ceph RADOS Gateway, src/testing/ceph-rgw.ts):
// prune never deletes a locked pack or index file, keeps the repository consistent while it
// leaves them (a locked pack stays indexed; a locked superseded index file stays superseded
// through later prunes), reports what it left and until when, and deletes it once the lock has
// passed; extendLocks moves a shared pack's lock to the longest-lived snapshot that needs it,
// never shortens a lock, and on a second run asks the storage for nothing. Locks last seconds.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { check } from '../src/repository/check.ts';
import { DATA_PREFIX, INDEX_PREFIX, SNAPSHOTS_PREFIX, packName } from '../src/repository/layout.ts';
import { extendLocks, isLockedObject } from '../src/repository/object-lock.ts';
import { prune } from '../src/repository/prune.ts';
import { Repository } from '../src/repository/repository.ts';
import { loadSnapshot } from '../src/repository/snapshot.ts';
import { walkTree } from '../src/repository/walk.ts';
import { fromHex, toHex } from '../src/engine/hash.ts';
import { isCofferError } from '../src/core/errors.ts';
import { listAll } from '../src/storage/backend.ts';
import { S3Backend } from '../src/storage/s3.ts';
import { startCephRgw } from '../src/testing/ceph-rgw.ts';
import { backup } from '../src/testing/jobs.ts';
import { randomBytes } from '../src/testing/random.ts';
import { TEST_PASSWORD, makeTestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';

const rgw = await startCephRgw();
after(() => rgw.stop());
const sdk = rgw.client();
after(() => sdk.destroy());
await sdk.send(new CreateBucketCommand({ Bucket: 'vault', ObjectLockEnabledForBucket: true }));

let prefixes = 0;
/** A backend on one prefix of the bucket that locks what it writes until `until`, or for `minimumMs` from each write. */
function locking(prefix: string, until: number | undefined, minimumMs?: number): S3Backend {
  return new S3Backend({
    bucket: 'vault', prefix, endpoint: rgw.endpoint, region: rgw.region, forcePathStyle: true,
    credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey },
    objectLock: { ...(until === undefined ? {} : { retainUntil: until }), ...(minimumMs === undefined ? {} : { minimumMs }), lockName: isLockedObject },
  });
}

/** Opens the repository through a backend that locks for `minimumMs` (as a prune job gets it). */
async function openLocking(prefix: string, minimumMs: number, t: { after(fn: () => unknown): void }): Promise<Repository> {
  const backend = locking(prefix, undefined, minimumMs);
  const cacheDir = await mkdtemp(join(tmpdir(), 'coffer-cache-'));
  const repo = await Repository.open(backend, TEST_PASSWORD, { cacheDir });
  t.after(async () => {
    await repo.close();
    await backend.close();
    await rm(cacheDir, { recursive: true, force: true });
  });
  return repo;
}

async function writeSet(dir: string, seed: number): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < 3; i++) await writeFile(join(dir, `f${i}.bin`), randomBytes(seed * 100 + i, 100_000));
  return dir;
}

/** The packs a snapshot's trees and data are in. */
async function packsOf(repo: Repository, snapshot: string): Promise<Set<string>> {
  const out = new Set<string>();
  const snap = await loadSnapshot(repo, snapshot);
  const add = (type: 'tree' | 'data', id: string) => {
    for (const h of repo.index.lookupAll(fromHex(id), type)) out.add(toHex(h.packId));
  };
  await walkTree(repo, snap.tree, { enterTree: (id) => (add('tree', id), true), node: (_p, n) => n.content?.forEach((c) => add('data', c)) });
  return out;
}

const sleepUntil = (time: number) => new Promise((r) => setTimeout(r, Math.max(0, time - Date.now())));

async function consistent(prefix: string, t: { after(fn: () => unknown): void }): Promise<void> {
  // A reader with an empty cache sees exactly the index files in force.
  const reader = await openLocking(prefix, 60_000, t);
  const c = await check(reader, {});
  assert.ok(c.ok, JSON.stringify(c.problems));
}

describe('prune on storage with Object Lock', () => {
  it('leaves locked packs and index files, indexed and superseded as they should be, reports them, and deletes them once the locks pass', async (t) => {
    const dir = await tempDir(t);
    const prefix = `prune${++prefixes}`;
    // Everything written is locked 3 s from its write (a fixed date could pass on a loaded machine).
    const tr = await makeTestRepo({ backend: locking(prefix, undefined, 3000) });
    t.after(() => tr.close());
    const a = await backup(tr.repo, tr.pool, [await writeSet(join(dir, 'a'), 1)]);
    const b = await backup(tr.repo, tr.pool, [await writeSet(join(dir, 'b'), 2)]);
    const c = await backup(tr.repo, tr.pool, [await writeSet(join(dir, 'c'), 3)]);
    const t0 = Date.now();
    await tr.repo.loadIndex();
    const aPacks = await packsOf(tr.repo, a.snapshotId!);
    const bPacks = await packsOf(tr.repo, b.snapshotId!);
    for (const p of aPacks) assert.ok(!bPacks.has(p), 'the test needs packs that only a uses');
    // a's packs (not its snapshot) and the index files of now are locked longer than the rest.
    const packsUntil = t0 + 20_000;
    const indexUntil = t0 + 26_000;
    for (const p of aPacks) await tr.backend.locks!.extend(packName(p), packsUntil);
    const firstIndexFiles = (await listAll(tr.backend, INDEX_PREFIX)).map((o) => o.name);
    for (const name of firstIndexFiles) await tr.backend.locks!.extend(name, indexUntil);

    // The snapshots' own locks end by t0 + 3 s (S3 keeps retention dates to the second: give it
    // two more before counting on them): a and b are forgotten.
    await sleepUntil(t0 + 5000);
    await assert.rejects(tr.backend.delete(packName([...aPacks][0]!)), (e) => isCofferError(e, 'REFUSED'));
    await tr.backend.delete(SNAPSHOTS_PREFIX + a.snapshotId!);
    await tr.backend.delete(SNAPSHOTS_PREFIX + b.snapshotId!);
    const p1 = await prune(await openLocking(prefix, 4000, t), { encoder: tr.pool });
    assert.equal(p1.packsDeleted, bPacks.size, 'the unlocked packs went');
    assert.equal(p1.packsLocked, aPacks.size, 'the locked packs were left');
    assert.ok(p1.bytesLocked > 0);
    assert.equal(p1.indexFilesLocked, firstIndexFiles.length, 'the locked superseded index files were left');
    assert.ok(p1.lockedUntil !== null && Math.abs(p1.lockedUntil - indexUntil) < 1500, `lockedUntil ${p1.lockedUntil}`);
    const stored = new Set((await listAll(tr.backend, DATA_PREFIX)).map((o) => o.name));
    for (const p of aPacks) assert.ok(stored.has(packName(p)), 'a locked pack is still stored');
    for (const p of bPacks) assert.ok(!stored.has(packName(p)));
    await consistent(prefix, t);

    // Another prune after the first one's new index file unlocks (t + 4 s): it supersedes that
    // file and deletes it, while the older, still locked files stay superseded.
    await sleepUntil(Date.now() + 6000); // 4 s, and S3's dates to the second
    await tr.backend.delete(SNAPSHOTS_PREFIX + c.snapshotId!);
    const p2 = await prune(await openLocking(prefix, 1000, t), { encoder: tr.pool });
    assert.ok(p2.packsDeleted > 0, 'c\'s packs went');
    assert.ok(p2.indexFilesDeleted >= 1, 'the first prune\'s index file went');
    assert.equal(p2.indexFilesLocked, firstIndexFiles.length);
    assert.equal(p2.packsLocked, aPacks.size, 'counted once though both the sweep and the mark met them');
    await consistent(prefix, t);

    // Once every lock has passed, the next prune deletes what was left.
    await sleepUntil(indexUntil + 2500);
    const p3 = await prune(await openLocking(prefix, 1000, t), { encoder: tr.pool });
    assert.equal(p3.packsLocked, 0);
    assert.equal(p3.indexFilesLocked, 0);
    assert.equal(p3.lockedUntil, null);
    assert.equal((await listAll(tr.backend, DATA_PREFIX)).length, 0, 'no snapshot is left, so no pack is');
    await consistent(prefix, t);
  });
});

describe('extendLocks', () => {
  it('locks a pack shared by a short- and a long-lived snapshot until the later date, never shortens, and a second run asks the storage for nothing', async (t) => {
    const dir = await tempDir(t);
    const prefix = `extend${++prefixes}`;
    const tr = await makeTestRepo({ backend: locking(prefix, undefined, 3000) });
    t.after(() => tr.close());
    const data = await writeSet(join(dir, 'data'), 4);
    const short = await backup(tr.repo, tr.pool, [data]);
    const long = await backup(tr.repo, tr.pool, [data], { parent: short.snapshotId! });
    const t0 = Date.now();
    await tr.repo.loadIndex();
    const longPacks = await packsOf(tr.repo, long.snapshotId!);
    const shared = [...await packsOf(tr.repo, short.snapshotId!)].filter((p) => longPacks.has(p));
    assert.ok(shared.length > 0);

    const backend = tr.backend as S3Backend;
    let retentionCalls = 0;
    backend.client.middlewareStack.add((next, context) => async (args) => {
      if (context.commandName === 'PutObjectRetentionCommand') retentionCalls++;
      return next(args);
    }, { step: 'initialize', name: 'countRetention' });
    const ledgerPath = join(dir, 'ledger', 'object-locks.json');
    const shortUntil = t0 + 8000;
    const longUntil = t0 + 30_000;
    const targets = [{ snapshot: short.snapshotId!, until: shortUntil }, { snapshot: long.snapshotId!, until: longUntil }];
    const r1 = await extendLocks(tr.repo, targets, { ledgerPath });
    assert.equal(r1.snapshots, 2);
    assert.ok(r1.extended > 0 && r1.extended === retentionCalls, JSON.stringify(r1));
    assert.deepEqual(r1.missing, []);
    const near = (actual: number | undefined, expected: number) => assert.ok(actual !== undefined && Math.abs(actual - expected) < 1000, `${actual} is not ${expected}`);
    for (const p of shared) near(await backend.locks!.lockedUntil(packName(p)), longUntil);
    near(await backend.locks!.lockedUntil(SNAPSHOTS_PREFIX + short.snapshotId!), shortUntil);
    near(await backend.locks!.lockedUntil(SNAPSHOTS_PREFIX + long.snapshotId!), longUntil);
    near(await backend.locks!.lockedUntil('config'), longUntil);
    for (const o of await listAll(backend, INDEX_PREFIX)) near(await backend.locks!.lockedUntil(o.name), longUntil);

    // Nothing changed: the ledger answers, the storage is not asked.
    const before = retentionCalls;
    const r2 = await extendLocks(tr.repo, targets, { ledgerPath });
    assert.equal(r2.extended, 0);
    assert.equal(r2.alreadyLocked, r2.objects);
    assert.equal(retentionCalls, before);

    // A shorter date (a retention cut afterwards), without the ledger: asked, and nothing is shortened.
    const r3 = await extendLocks(tr.repo, [{ snapshot: long.snapshotId!, until: t0 + 10_000 }], {});
    assert.equal(r3.extended, 0);
    for (const p of shared) near(await backend.locks!.lockedUntil(packName(p)), longUntil);
  });
});
