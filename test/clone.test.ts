// Clone: snapshots copied between repositories with only the missing blobs sent, under the same
// keys (one deduplication domain) and under different keys; resumable; damage fails it cleanly.
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { isCofferError } from '../src/core/errors.ts';
import { chunkId, fromHex, toHex } from '../src/engine/hash.ts';
import { cloneSnapshots, type CloneResult } from '../src/jobs/clone.ts';
import { check } from '../src/repository/check.ts';
import { DATA_PREFIX, packName, snapshotName } from '../src/repository/layout.ts';
import { prune } from '../src/repository/prune.ts';
import { Session } from '../src/repository/session.ts';
import { WorkerPool } from '../src/engine/pool.ts';
import type { Repository } from '../src/repository/repository.ts';
import { listSnapshotIds, loadSnapshot } from '../src/repository/snapshot.ts';
import { walkTree } from '../src/repository/walk.ts';
import { listAll } from '../src/storage/backend.ts';
import { FaultyBackend } from '../src/storage/faulty.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import { backup, restore } from '../src/testing/jobs.ts';
import { randomBytes, rng } from '../src/testing/random.ts';
import { makeTestRepo, type TestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { listTree, makeSourceTree } from './helpers.ts';

async function writeSet(dir: string, seed: number, files: number, size: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < files; i++) await writeFile(join(dir, `f${i}.bin`), randomBytes(seed * 100 + i, size));
}

async function repos(t: TestContext, sameKeys: boolean, targetBackend?: MemoryBackend | FaultyBackend): Promise<{ src: TestRepo; dst: TestRepo }> {
  const src = await makeTestRepo();
  t.after(() => src.close());
  const dst = await makeTestRepo({ master: sameKeys ? src.repo.masterKeyForDomain : undefined, backend: targetBackend });
  t.after(() => dst.close());
  return { src, dst };
}

function clone(src: TestRepo, dst: TestRepo, ids: string[], extra: Partial<Parameters<typeof cloneSnapshots>[3]> = {}): Promise<CloneResult> {
  return cloneSnapshots(src.repo, dst.repo, ids, { sourcePool: src.pool, targetPool: dst.pool, ...extra });
}

async function restoresAs(repo: Repository, snapshotId: string, srcDir: string, out: string): Promise<void> {
  await repo.loadIndex();
  await restore(repo, await loadSnapshot(repo, snapshotId), out);
  assert.deepEqual(await listTree(join(out, ...srcDir.split('/').filter(Boolean))), await listTree(srcDir));
}

async function checked(repo: Repository): Promise<void> {
  const c = await check(repo, { readData: true });
  assert.ok(c.ok, JSON.stringify(c.problems));
}

/** Every blob a snapshot references in `repo`: type + hex → its index entry's stored length and raw length. */
async function blobsOf(repo: Repository, snapshotId: string): Promise<Map<string, { stored: number; raw: number }>> {
  const out = new Map<string, { stored: number; raw: number }>();
  const note = (type: 'data' | 'tree', hex: string) => {
    const hit = repo.locate(type, fromHex(hex))!;
    out.set(type + hex, { stored: hit.entry.length, raw: hit.entry.rawLength });
  };
  const snap = await loadSnapshot(repo, snapshotId);
  note('tree', snap.tree);
  await walkTree(repo, snap.tree, {
    node: (_p, n) => {
      if (n.subtree) note('tree', n.subtree);
      for (const c of n.content ?? []) note('data', c);
    },
  });
  return out;
}

/**
 * Bytes (as stored in the source) of the data blobs of `snapshotId` that `target` lacks, computed
 * from the two indexes alone; with other keys each blob's id under the target's key is computed
 * here from its plaintext.
 */
async function missingDataBytes(source: Repository, target: Repository, snapshotId: string): Promise<number> {
  await target.loadIndex();
  const same = source.keys.chunkIdKey.equals(target.keys.chunkIdKey);
  let missing = 0;
  for (const [key, { stored }] of await blobsOf(source, snapshotId)) {
    if (!key.startsWith('data')) continue;
    let id = fromHex(key.slice(4));
    if (!same) id = chunkId(target.keys.chunkIdKey, await source.readBlob('data', id));
    if (!target.hasBlob('data', id)) missing += stored;
  }
  return missing;
}

async function treeBytes(repo: Repository, snapshotId: string): Promise<number> {
  let n = 0;
  for (const [key, { stored }] of await blobsOf(repo, snapshotId)) if (key.startsWith('tree')) n += stored;
  return n;
}

for (const sameKeys of [true, false]) {
  describe(`cloneSnapshots() with ${sameKeys ? 'the same' : 'different'} keys`, () => {
    it('copies a snapshot into an empty repository: the target restores it and checks clean', async (t) => {
      const dir = await tempDir(t);
      const srcDir = join(dir, 'src');
      await makeSourceTree(srcDir, 3);
      const { src, dst } = await repos(t, sameKeys);
      const b = await backup(src.repo, src.pool, [srcDir]);
      const started = performance.now();
      const r = await clone(src, dst, [b.snapshotId!]);
      const ms = performance.now() - started;
      assert.equal(r.sameKeys, sameKeys);
      assert.equal(r.snapshots.length, 1);
      const c = r.snapshots[0]!;
      assert.equal(c.existed, false);
      assert.equal(c.counts.blobsPresent, 0);
      assert.equal(c.counts.blobsSent, c.counts.blobsExamined);
      const all = await blobsOf(src.repo, b.snapshotId!);
      assert.equal(c.counts.blobsExamined, all.size);
      assert.equal(c.counts.bytesExamined, [...all.values()].reduce((s, v) => s + v.raw, 0));
      // Same plaintext, same compression level: the same stored size as in the source.
      const storedInSource = [...all.values()].reduce((s, v) => s + v.stored, 0);
      if (sameKeys) assert.equal(c.counts.bytesSent, storedInSource);
      else assert.ok(Math.abs(c.counts.bytesSent - storedInSource) < storedInSource * 0.01, 'rewritten trees compress a little differently');
      const copy = await loadSnapshot(dst.repo, c.targetId);
      const orig = await loadSnapshot(src.repo, b.snapshotId!);
      if (sameKeys) assert.equal(copy.tree, orig.tree, 'trees are copied as they are');
      else assert.notEqual(copy.tree, orig.tree, 'trees are rewritten with the new ids');
      assert.deepEqual({ ...copy, tree: '', parent: undefined }, { ...orig, tree: '', parent: undefined });
      await checked(dst.repo);
      await restoresAs(dst.repo, c.targetId, srcDir, join(dir, 'out'));
      t.diagnostic(`first clone: ${c.counts.blobsSent} blobs, ${c.counts.bytesSent} bytes sent in ${ms.toFixed(0)} ms`);
    });

    it('sends for a second snapshot only what the target lacks, and nothing when run again', async (t) => {
      const dir = await tempDir(t);
      const srcDir = join(dir, 'src');
      await writeSet(srcDir, 1, 8, 200_000);
      const { src, dst } = await repos(t, sameKeys);
      const b1 = await backup(src.repo, src.pool, [srcDir]);
      // Most data shared: one file replaced, one appended to.
      await writeFile(join(srcDir, 'f2.bin'), randomBytes(77, 200_000));
      await writeFile(join(srcDir, 'f5.bin'), Buffer.concat([randomBytes(105, 200_000), randomBytes(78, 50_000)]));
      const b2 = await backup(src.repo, src.pool, [srcDir]);
      const t1 = performance.now();
      const r1 = await clone(src, dst, [b1.snapshotId!]);
      const firstMs = performance.now() - t1;
      await checked(dst.repo);

      const missing = await missingDataBytes(src.repo, dst.repo, b2.snapshotId!);
      const total = [...(await blobsOf(src.repo, b2.snapshotId!)).values()].reduce((s, v) => s + v.stored, 0);
      assert.ok(missing > 0 && missing < total / 3, `missing ${missing} of ${total}`);
      const t2 = performance.now();
      const r2 = await clone(src, dst, [b2.snapshotId!]);
      const secondMs = performance.now() - t2;
      const sent = r2.totals.bytesSent;
      // Trees are rewritten (their ids change with their content): they may be sent too.
      const slack = await treeBytes(src.repo, b2.snapshotId!);
      assert.ok(sent >= missing && sent <= missing * 1.03 + slack, `sent ${sent}, missing data ${missing}, trees ${slack}`);
      assert.ok(r2.totals.blobsPresent > 0 && r2.totals.bytesPresent > r2.totals.bytesSentRaw);
      // Cloned separately: the parent is not in this call, so the copy names none.
      assert.equal((await loadSnapshot(dst.repo, r2.snapshots[0]!.targetId)).parent, undefined);
      await checked(dst.repo);
      await restoresAs(dst.repo, r2.snapshots[0]!.targetId, srcDir, join(dir, 'out'));

      const before = await listAll(dst.backend, '');
      const r3 = await clone(src, dst, [b1.snapshotId!, b2.snapshotId!]);
      assert.equal(r3.totals.bytesSent, 0);
      assert.equal(r3.totals.blobsSent, 0);
      assert.deepEqual(r3.snapshots.map((s) => [s.existed, s.targetId]), [[true, r1.snapshots[0]!.targetId], [true, r2.snapshots[0]!.targetId]]);
      const after = await listAll(dst.backend, '');
      assert.deepEqual(after.map((o) => o.name).filter((n) => !n.startsWith('sessions/')), before.map((o) => o.name).filter((n) => !n.startsWith('sessions/')));
      // Cloned together, oldest first: the copy of b2 names the copy of b1 as its parent.
      assert.equal((await loadSnapshot(src.repo, b2.snapshotId!)).parent, b1.snapshotId);
      const third = await makeTestRepo({ master: sameKeys ? src.repo.masterKeyForDomain : undefined });
      t.after(() => third.close());
      const both = await clone(src, third, [b2.snapshotId!, b1.snapshotId!]);
      assert.deepEqual(both.snapshots.map((s) => s.sourceId), [b1.snapshotId, b2.snapshotId]);
      assert.equal((await loadSnapshot(third.repo, both.snapshots[1]!.targetId)).parent, both.snapshots[0]!.targetId);
      assert.ok(both.snapshots[1]!.counts.bytesSent < both.snapshots[0]!.counts.bytesSent / 3, 'the second sends only its new data');
      t.diagnostic(`second snapshot: sent ${sent} bytes, missing data ${missing} (+ ${slack} tree bytes) of ${total}; first clone ${firstMs.toFixed(0)} ms, second ${secondMs.toFixed(0)} ms`);
    });
  });
}

describe('cloneSnapshots() resumes', () => {
  for (const sameKeys of [true, false]) {
    it(`after an abort at random points (${sameKeys ? 'same' : 'different'} keys), sending again only what had not arrived`, async (t) => {
      const dir = await tempDir(t);
      const srcDir = join(dir, 'src');
      await writeSet(srcDir, 3, 6, 500_000);
      const { src, dst } = await repos(t, sameKeys);
      const b = await backup(src.repo, src.pool, [srcDir]);
      const total = [...(await blobsOf(src.repo, b.snapshotId!)).values()].reduce((s, v) => s + v.stored, 0);
      const random = rng(sameKeys ? 11 : 12);
      let sentBefore = 0;
      for (let round = 0; round < 3; round++) {
        const stopAfter = 1 + Math.floor(random() * 4);
        const ac = new AbortController();
        let packs = 0;
        const missing = await missingDataBytes(src.repo, dst.repo, b.snapshotId!);
        await assert.rejects(
          clone(src, dst, [b.snapshotId!], { signal: ac.signal, indexEvery: 2, onPackUploaded: () => void (++packs === stopAfter && ac.abort()) }),
          (e) => isCofferError(e, 'CANCELLED'),
        );
        assert.deepEqual(await listSnapshotIds(dst.repo), []);
        const left = await missingDataBytes(src.repo, dst.repo, b.snapshotId!);
        assert.ok(left < missing, `round ${round}: progress (${left} < ${missing})`);
        sentBefore += missing - left;
      }
      const left = await missingDataBytes(src.repo, dst.repo, b.snapshotId!);
      const r = await clone(src, dst, [b.snapshotId!]);
      const slack = await treeBytes(src.repo, b.snapshotId!);
      assert.ok(r.totals.bytesSent >= left && r.totals.bytesSent <= left * 1.03 + slack, `sent ${r.totals.bytesSent}, missing ${left}`);
      assert.ok(r.totals.bytesSent < total * 0.9, 'the aborted runs were not wasted');
      await checked(dst.repo);
      await restoresAs(dst.repo, r.snapshots[0]!.targetId, srcDir, join(dir, 'out'));
      t.diagnostic(`resume: ${sentBefore} bytes arrived before the last run, which sent ${r.totals.bytesSent} for ${left} missing of ${total}`);
    });
  }

  it('after the target storage failed mid-clone, index files included (a kill): packs never indexed are sent again', async (t) => {
    const dir = await tempDir(t);
    const srcDir = join(dir, 'src');
    await writeSet(srcDir, 5, 6, 500_000);
    const faulty = new FaultyBackend(new MemoryBackend());
    const { src, dst } = await repos(t, true, faulty);
    const b = await backup(src.repo, src.pool, [srcDir]);
    const rule = faulty.add({ kind: 'error', error: 'permanent', ops: ['put'], name: /^(data|index)\//, enabled: false });
    let packs = 0;
    await assert.rejects(
      clone(src, dst, [b.snapshotId!], { indexEvery: 3, onPackUploaded: () => void (++packs === 7 && (rule.enabled = true)) }),
      (e) => isCofferError(e, 'STORAGE_ERROR'),
    );
    rule.enabled = false;
    assert.deepEqual(await listSnapshotIds(dst.repo), []);
    const fresh = await dst.reopen();
    const left = await missingDataBytes(src.repo, fresh, b.snapshotId!);
    const total = [...(await blobsOf(src.repo, b.snapshotId!)).values()].reduce((s, v) => s + v.stored, 0);
    assert.ok(left < total * 0.8, `the indexed packs count (${left} of ${total} missing)`);
    const stored = (await listAll(faulty, DATA_PREFIX)).length;
    assert.ok(stored >= 7, 'packs uploaded before the fault are stored');
    const r = await cloneSnapshots(src.repo, fresh, [b.snapshotId!], { sourcePool: src.pool, targetPool: dst.pool });
    const slack = await treeBytes(src.repo, b.snapshotId!);
    assert.ok(r.totals.bytesSent >= left && r.totals.bytesSent <= left * 1.03 + slack, `sent ${r.totals.bytesSent}, missing ${left}`);
    const c = await check(fresh, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await restoresAs(fresh, r.snapshots[0]!.targetId, srcDir, join(dir, 'out'));
  });
});

describe('cloneSnapshots() and prune', () => {
  it('does not reuse blobs in packs a pending prune of the target condemned: it sends them again, and the sweep leaves a target that checks and restores', async (t) => {
    const dir = await tempDir(t);
    const srcDir = join(dir, 'src');
    await writeSet(srcDir, 13, 4, 200_000);
    const src = await makeTestRepo();
    t.after(() => src.close());
    const dst = await makeTestRepo({ master: src.repo.masterKeyForDomain });
    t.after(() => dst.close());
    // One pool for both repositories, as a server runs it: a context per repository.
    const shared = await WorkerPool.create({ workers: 2 });
    t.after(() => shared.close());
    const sourcePool = shared.context({ keys: src.repo.keys, chunker: src.repo.config.chunker, level: src.repo.config.compressionLevel });
    const targetPool = shared.context({ keys: dst.repo.keys, chunker: dst.repo.config.chunker, level: dst.repo.config.compressionLevel });
    const b = await backup(src.repo, src.pool, [srcDir]);
    const first = await cloneSnapshots(src.repo, dst.repo, [b.snapshotId!], { sourcePool, targetPool });
    const oldPacks = new Set((await listAll(dst.backend, DATA_PREFIX)).map((o) => o.name));
    // The copy is forgotten and a prune marks every pack; another writer is live, so the sweep waits.
    await dst.backend.delete(snapshotName(first.snapshots[0]!.targetId));
    const other = await dst.reopen();
    const session = await Session.start(other, 'backup');
    const p1 = await prune(await dst.reopen(), { encoder: dst.pool });
    assert.equal(p1.plansWaiting, 1);
    const again = await cloneSnapshots(src.repo, await dst.reopen(), [b.snapshotId!], { sourcePool, targetPool });
    assert.equal(again.snapshots[0]!.existed, false);
    assert.equal(again.totals.blobsPresent, 0, 'nothing is deduplicated against a condemned pack');
    assert.equal(again.totals.bytesSent, first.totals.bytesSent);
    await session.end();
    const p2 = await prune(await dst.reopen(), { encoder: dst.pool });
    assert.equal(p2.packsKept, 0);
    const after = new Set((await listAll(dst.backend, DATA_PREFIX)).map((o) => o.name));
    assert.ok([...oldPacks].every((n) => !after.has(n)), 'the condemned packs are gone');
    const r = await dst.reopen();
    await checked(r);
    await restoresAs(r, again.snapshots[0]!.targetId, srcDir, join(dir, 'out'));
  });
});

describe('cloneSnapshots() and damage', () => {
  for (const sameKeys of [true, false]) {
    it(`fails with CORRUPT naming the snapshot, file and blob when a source blob does not verify, and writes no snapshot (${sameKeys ? 'same' : 'different'} keys)`, async (t) => {
      const dir = await tempDir(t);
      const srcDir = join(dir, 'src');
      await writeSet(srcDir, 9, 4, 300_000);
      const { src, dst } = await repos(t, sameKeys);
      const b = await backup(src.repo, src.pool, [srcDir]);
      // Flip a byte inside the first data blob of f2.bin (stored once: the files are random).
      let victim: { path: string; id: string } | undefined;
      const snap = await loadSnapshot(src.repo, b.snapshotId!);
      await walkTree(src.repo, snap.tree, { node: (p, n) => void (n.name === 'f2.bin' && (victim = { path: p, id: n.content![0]! })) });
      assert.ok(victim);
      const hit = src.repo.locate('data', fromHex(victim.id))!;
      const name = packName(toHex(hit.packId));
      const bytes = Buffer.from(await src.backend.get(name));
      bytes[hit.entry.offset + 20]! ^= 0x40;
      await src.backend.put(name, bytes);
      await assert.rejects(clone(src, dst, [b.snapshotId!]), (e) => {
        assert.ok(isCofferError(e, 'CORRUPT'), String(e));
        assert.equal(e.details?.snapshot, b.snapshotId);
        assert.equal(e.details?.blob, victim!.id);
        assert.equal(e.details?.path, victim!.path);
        assert.match(e.message, /f2\.bin/);
        assert.deepEqual(e.details?.sourceDamageRecorded, [toHex(hit.packId)]);
        return true;
      });
      assert.deepEqual(await listSnapshotIds(dst.repo), []);
      // Recorded in the source, as a restore records it: its next backup stores the blob again.
      const again = await src.reopen();
      await again.loadIndex();
      assert.equal(again.hasBlob('data', fromHex(victim.id)), false);
      await checked(dst.repo);
    });
  }

  it('fails with CORRUPT naming the directory when a source tree does not verify', async (t) => {
    const dir = await tempDir(t);
    const srcDir = join(dir, 'src');
    await makeSourceTree(srcDir, 4);
    const { src, dst } = await repos(t, false);
    const b = await backup(src.repo, src.pool, [srcDir]);
    let victim: { path: string; id: string } | undefined;
    const snap = await loadSnapshot(src.repo, b.snapshotId!);
    await walkTree(src.repo, snap.tree, { node: (p, n) => void (n.name === 'deeper' && (victim = { path: p, id: n.subtree! })) });
    assert.ok(victim);
    const hit = src.repo.locate('tree', fromHex(victim.id))!;
    const name = packName(toHex(hit.packId));
    const bytes = Buffer.from(await src.backend.get(name));
    bytes[hit.entry.offset + 3]! ^= 0x01;
    await src.backend.put(name, bytes);
    await assert.rejects(clone(src, dst, [b.snapshotId!]), (e) => {
      assert.ok(isCofferError(e, 'CORRUPT'), String(e));
      assert.equal(e.details?.type, 'tree');
      assert.equal(e.details?.blob, victim!.id);
      assert.equal(e.details?.path, victim!.path);
      return true;
    });
    assert.deepEqual(await listSnapshotIds(dst.repo), []);
  });
});
