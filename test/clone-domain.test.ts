// Clones within one deduplication domain (src/jobs/clone-domain.ts): packs the target lacks whole
// are copied as they are, checked against their names; partly held packs are sent blob by blob;
// several targets are written from one read of the source; other-keys targets still work.
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { fromHex, toHex } from '../src/engine/hash.ts';
import { cloneToTargets } from '../src/jobs/clone.ts';
import { check } from '../src/repository/check.ts';
import { DATA_PREFIX, packName } from '../src/repository/layout.ts';
import type { Repository } from '../src/repository/repository.ts';
import { loadSnapshot } from '../src/repository/snapshot.ts';
import { walkTree } from '../src/repository/walk.ts';
import { listAll, type GetOptions } from '../src/storage/backend.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import { backup, restore } from '../src/testing/jobs.ts';
import { randomBytes } from '../src/testing/random.ts';
import { makeTestRepo, type TestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { listTree } from './helpers.ts';

/** A memory backend that counts the bytes read from packs. */
class CountingBackend extends MemoryBackend {
  packBytesRead = 0;
  override async get(name: string, options?: GetOptions): Promise<Buffer> {
    const b = await super.get(name, options);
    if (name.startsWith(DATA_PREFIX)) this.packBytesRead += b.length;
    return b;
  }
}

async function writeSet(dir: string, seed: number, files: number, size: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < files; i++) await writeFile(join(dir, `f${i}.bin`), randomBytes(seed * 100 + i, size));
}

async function repo(t: TestContext, options: Parameters<typeof makeTestRepo>[0] = {}): Promise<TestRepo> {
  const r = await makeTestRepo(options);
  t.after(() => r.close());
  return r;
}

const packNames = async (r: TestRepo): Promise<Set<string>> => new Set((await listAll(r.backend, DATA_PREFIX)).map((o) => o.name));

async function checked(r: Repository): Promise<void> {
  const c = await check(r, { readData: true });
  assert.ok(c.ok, JSON.stringify(c.problems));
}

async function restoresAs(r: Repository, snapshotId: string, srcDir: string, out: string): Promise<void> {
  await r.loadIndex();
  await restore(r, await loadSnapshot(r, snapshotId), out);
  assert.deepEqual(await listTree(join(out, ...srcDir.split('/').filter(Boolean))), await listTree(srcDir));
}

/** Stored bytes (in `source`) of the blobs of a snapshot, trees included, that `target` lacks. */
async function missingBytes(source: Repository, target: Repository, snapshotId: string): Promise<number> {
  await target.loadIndex();
  const seen = new Set<string>();
  let bytes = 0;
  const note = (type: 'data' | 'tree', hex: string) => {
    if (seen.has(type + hex)) return;
    seen.add(type + hex);
    if (!target.hasBlob(type, fromHex(hex))) bytes += source.locate(type, fromHex(hex))!.entry.length;
  };
  const snap = await loadSnapshot(source, snapshotId);
  note('tree', snap.tree);
  await walkTree(source, snap.tree, { node: (_p, n) => {
    if (n.subtree) note('tree', n.subtree);
    for (const c of n.content ?? []) note('data', c);
  } });
  return bytes;
}

describe('cloning within a deduplication domain', () => {
  it('copies the packs a target lacks whole, under their own names, and sends blob by blob where it holds part of a pack', async (t) => {
    const dir = await tempDir(t);
    const srcDir = join(dir, 'src');
    await writeSet(srcDir, 21, 6, 300_000);
    const src = await repo(t);
    const empty = await repo(t, { master: src.repo.masterKeyForDomain });
    const partial = await repo(t, { master: src.repo.masterKeyForDomain });
    const b = await backup(src.repo, src.pool, [srcDir]);
    // The second target already holds a third of the files (backed up there directly: the same ids)
    const half = join(dir, 'half');
    await writeSet(half, 21, 2, 300_000);
    // ... and the first half of a third: its chunks but the last, so part of that file's pack.
    await writeFile(join(half, 'f2.bin'), randomBytes(21 * 100 + 2, 300_000).subarray(0, 150_000));
    await backup(partial.repo, partial.pool, [half]);
    const partialPacksBefore = await packNames(partial);
    const heldBefore = new Set<string>();
    for (const { entry } of partial.repo.index.entries()) heldBefore.add(entry.type + toHex(entry.id));
    const missing = await missingBytes(src.repo, partial.repo, b.snapshotId!);

    const [r1, r2] = await cloneToTargets(src.repo, [empty, partial].map((x) => ({ repo: x.repo, pool: x.pool })), [b.snapshotId!], { sourcePool: src.pool });
    assert.equal(r1!.sameKeys, true);
    const sourcePacks = await packNames(src);
    assert.deepEqual(await packNames(empty), sourcePacks, 'every pack copied as it is');
    assert.equal(r1!.totals.blobsPresent, 0);
    assert.equal(await missingBytes(src.repo, empty.repo, b.snapshotId!), 0);
    assert.ok(r2!.totals.blobsPresent > 0, 'the second target held part of the data');
    assert.ok(r2!.totals.bytesSent >= missing * 0.97 && r2!.totals.bytesSent <= missing * 1.03, `sent ${r2!.totals.bytesSent}, missing ${missing}`);
    let whole = 0;
    let rebuilt = 0;
    for (const name of await packNames(partial)) {
      if (partialPacksBefore.has(name)) continue;
      if (!sourcePacks.has(name)) {
        rebuilt++;
        continue;
      }
      whole++;
      // A pack copied whole is one the target lacked every blob of.
      const hex = name.split('/').pop()!;
      for (const e of src.repo.indexedPacks((h) => h === hex).get(hex)!.entries) assert.equal(heldBefore.has(e.type + toHex(e.id)), false);
    }
    t.diagnostic(`${[...sourcePacks].length} source packs; partial held ${partialPacksBefore.size}`);
    assert.ok(whole > 0 && rebuilt > 0, `${whole} packs copied whole, ${rebuilt} built from single blobs`);
    for (const [x, r] of [[empty, r1!], [partial, r2!]] as const) {
      await checked(x.repo);
      await restoresAs(x.repo, r.snapshots[0]!.targetId, srcDir, join(dir, `out-${x === empty ? 'empty' : 'partial'}`));
    }
  });

  it('writes several targets from one read of the source, and other-keys targets on their own', async (t) => {
    const dir = await tempDir(t);
    const srcDir = join(dir, 'src');
    await writeSet(srcDir, 31, 8, 250_000);
    const counting = new CountingBackend();
    const src = await repo(t, { backend: counting });
    const a = await repo(t, { master: src.repo.masterKeyForDomain });
    const b = await repo(t, { master: src.repo.masterKeyForDomain });
    const other = await repo(t);
    const snap = await backup(src.repo, src.pool, [srcDir]);
    const packBytes = (await listAll(src.backend, DATA_PREFIX)).reduce((n, o) => n + o.size, 0);

    counting.packBytesRead = 0;
    const rs = await cloneToTargets(src.repo, [a, b].map((x) => ({ repo: x.repo, pool: x.pool })), [snap.snapshotId!], { sourcePool: src.pool });
    // Once, plus the trees the walk reads: not twice.
    assert.ok(counting.packBytesRead < packBytes * 1.2, `two targets, read ${counting.packBytesRead} of ${packBytes} pack bytes`);
    assert.deepEqual(rs.map((r) => r.sameKeys), [true, true]);
    assert.equal(rs[0]!.totals.bytesSent, rs[1]!.totals.bytesSent);

    // An other-keys target alongside a domain target that already has everything.
    counting.packBytesRead = 0;
    const progress = new Set<number>();
    const [again, foreign] = await cloneToTargets(src.repo, [a, other].map((x) => ({ repo: x.repo, pool: x.pool })), [snap.snapshotId!], { sourcePool: src.pool, onProgress: (i) => progress.add(i) });
    assert.equal(again!.snapshots[0]!.existed, true);
    assert.equal(again!.totals.bytesSent, 0);
    assert.equal(foreign!.sameKeys, false);
    assert.ok(foreign!.totals.bytesSent > 0);
    assert.deepEqual([...progress].sort(), [0, 1]);
    for (const [x, r, label] of [[a, rs[0]!, 'a'], [b, rs[1]!, 'b'], [other, foreign!, 'other']] as const) {
      await checked(x.repo);
      await restoresAs(x.repo, r.snapshots[0]!.targetId, srcDir, join(dir, `out-${label}`));
    }
  });

  it('does not copy a pack whose bytes do not match its name: its blobs are read, verified and stored in new packs', async (t) => {
    const dir = await tempDir(t);
    const srcDir = join(dir, 'src');
    await writeSet(srcDir, 41, 4, 300_000);
    const src = await repo(t);
    const dst = await repo(t, { master: src.repo.masterKeyForDomain });
    const b = await backup(src.repo, src.pool, [srcDir]);
    // A flipped byte in the last bytes of a pack (its trailer): every blob still reads, the name no longer fits.
    const [victim] = [...src.repo.indexedPacks().values()];
    const name = packName(toHex(victim!.packId));
    const bytes = Buffer.from(await src.backend.get(name));
    bytes[bytes.length - 20]! ^= 0x01;
    await src.backend.put(name, bytes);
    const r = await cloneToTargets(src.repo, [{ repo: dst.repo, pool: dst.pool }], [b.snapshotId!], { sourcePool: src.pool });
    assert.equal((await packNames(dst)).has(name), false, 'the damaged pack is not copied');
    assert.ok((await packNames(dst)).size >= 2, 'the other packs are');
    for (const e of victim!.entries) assert.ok(dst.repo.index.has(e.id, e.type), 'its blobs arrived in new packs');
    await checked(dst.repo);
    await restoresAs(dst.repo, r[0]!.snapshots[0]!.targetId, srcDir, join(dir, 'out'));
  });

  it('walks a snapshot against the copy of its parent the target holds: shared directories are skipped, and only then', async (t) => {
    const dir = await tempDir(t);
    const srcDir = join(dir, 'src');
    for (const sub of ['a', 'b', 'c']) await writeSet(join(srcDir, sub), sub.charCodeAt(0), 3, 100_000);
    const src = await repo(t);
    const dst = await repo(t, { master: src.repo.masterKeyForDomain });
    const bare = await repo(t, { master: src.repo.masterKeyForDomain });
    const b1 = await backup(src.repo, src.pool, [srcDir]);
    await writeFile(join(srcDir, 'b', 'f1.bin'), randomBytes(999, 100_000));
    const b2 = await backup(src.repo, src.pool, [srcDir]);
    assert.equal((await loadSnapshot(src.repo, b2.snapshotId!)).parent, b1.snapshotId);
    const all = new Set<string>();
    await walkTree(src.repo, (await loadSnapshot(src.repo, b2.snapshotId!)).tree, { node: (_p, n) => {
      if (n.subtree) all.add('tree' + n.subtree);
      for (const c of n.content ?? []) all.add('data' + c);
    } });
    const target = (x: TestRepo) => [{ repo: x.repo, pool: x.pool }];
    await cloneToTargets(src.repo, target(dst), [b1.snapshotId!], { sourcePool: src.pool });
    const [r] = await cloneToTargets(src.repo, target(dst), [b2.snapshotId!], { sourcePool: src.pool });
    // a/ and c/ are the parent's: neither walked nor looked up; b/ changed.
    assert.ok(r!.totals.blobsExamined < all.size / 2, `${r!.totals.blobsExamined} of ${all.size + 1} blobs examined`);
    assert.ok(r!.totals.blobsSent >= 1);
    await checked(dst.repo);
    await restoresAs(dst.repo, r!.snapshots[0]!.targetId, srcDir, join(dir, 'out'));
    // A target without a copy of the parent is walked whole (the root tree counts too).
    const [whole] = await cloneToTargets(src.repo, target(bare), [b2.snapshotId!], { sourcePool: src.pool });
    assert.equal(whole!.totals.blobsExamined, all.size + 1);
    await checked(bare.repo);
  });
});
