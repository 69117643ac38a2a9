// Restores that continue from another copy: chunks that cannot be read from the repository being
// restored (flipped bytes in some of its packs, a pack gone) are fetched from a clone of the same
// snapshot, with the same keys (the same blob ids) and with other keys (other ids, other chunk
// boundaries: the byte range is read from the file's chunks there), verified against the
// snapshot's own chunk ids, and the job result says which chunks came from where.
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isCofferError } from '../src/core/errors.ts';
import { fromHex, toHex } from '../src/engine/hash.ts';
import { cloneSnapshots } from '../src/jobs/clone.ts';
import { AlternateSources, type AlternateCopy } from '../src/jobs/restore-fallback.ts';
import { packName } from '../src/repository/layout.ts';
import { loadSnapshot } from '../src/repository/snapshot.ts';
import { walkTree } from '../src/repository/walk.ts';
import { backup, restore } from '../src/testing/jobs.ts';
import { randomBytes } from '../src/testing/random.ts';
import { makeTestRepo, type TestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { listTree } from './helpers.ts';

interface Setup {
  srcDir: string;
  primary: TestRepo;
  offsite: TestRepo;
  primarySnap: string;
  offsiteSnap: string;
  /** Every file's data blobs in the primary, by path inside the snapshot. */
  content: Map<string, string[]>;
}

async function setup(t: TestContext, sameKeys: boolean): Promise<Setup> {
  const dir = await tempDir(t);
  const srcDir = join(dir, 'src');
  await mkdir(join(srcDir, 'sub'), { recursive: true });
  for (let i = 0; i < 8; i++) await writeFile(join(srcDir, i % 2 ? 'sub' : '', `f${i}.bin`), randomBytes(700 + i, 150_000 + i * 7919));
  await writeFile(join(srcDir, 'small.txt'), 'a small file\n');
  const primary = await makeTestRepo({ packSize: 96 * 1024 });
  t.after(() => primary.close());
  const offsite = await makeTestRepo({ master: sameKeys ? primary.repo.masterKeyForDomain : undefined });
  t.after(() => offsite.close());
  const b = await backup(primary.repo, primary.pool, [srcDir]);
  const c = await cloneSnapshots(primary.repo, offsite.repo, [b.snapshotId!], { sourcePool: primary.pool, targetPool: offsite.pool });
  assert.equal(c.sameKeys, sameKeys);
  const content = new Map<string, string[]>();
  await walkTree(primary.repo, (await loadSnapshot(primary.repo, b.snapshotId!)).tree, { node: (p, n) => void (n.type === 'file' && content.set(p, n.content ?? [])) });
  return { srcDir, primary, offsite, primarySnap: b.snapshotId!, offsiteSnap: c.snapshots[0]!.targetId, content };
}

/** The offsite copy as restore's fallback sees it. */
function alternate(s: Setup, name = 'offsite'): AlternateCopy {
  return {
    name,
    open: async () => {
      const repo = await s.offsite.reopen();
      await repo.loadIndex();
      return { repo, snapshot: await loadSnapshot(repo, s.offsiteSnap), decoder: undefined, close: async () => {} };
    },
  };
}

/** Flips a byte in each of the data blobs given (in the primary): their packs stay, the blobs fail verification. */
async function flip(s: Setup, ids: string[]): Promise<void> {
  for (const id of ids) {
    const hit = s.primary.repo.locate('data', fromHex(id))!;
    const name = packName(toHex(hit.packId));
    const bytes = Buffer.from(await s.primary.backend.get(name));
    bytes[hit.entry.offset + Math.floor(hit.entry.length / 2)]! ^= 0x10;
    await s.primary.backend.put(name, bytes);
  }
}

async function restoreWithFallback(s: Setup, out: string, alternates: AlternateCopy[]) {
  const repo = await s.primary.reopen();
  const fallback = new AlternateSources(repo.keys.chunkIdKey, alternates);
  try {
    return await restore(repo, await loadSnapshot(repo, s.primarySnap), out, { sourceName: 'primary', fallback });
  } finally {
    await fallback.close();
  }
}

describe('restore() with another copy to fall back on', () => {
  for (const sameKeys of [true, false]) {
    it(`restores every file byte for byte when some chunks are damaged, reading those from the other copy (${sameKeys ? 'same' : 'other'} keys)`, async (t) => {
      const s = await setup(t, sameKeys);
      // Damage two chunks of f2.bin (the first and the last) and the middle one of sub/f3.bin.
      const f2 = [...s.content].find(([p]) => p.endsWith('/f2.bin'))![1];
      const f3 = [...s.content].find(([p]) => p.endsWith('/sub/f3.bin'))![1];
      assert.ok(f2.length >= 3 && f3.length >= 3, 'the files span several chunks');
      const damaged = [f2[0]!, f2.at(-1)!, f3[Math.floor(f3.length / 2)]!];
      await flip(s, damaged);
      const out = join(await tempDir(t), 'out');
      const r = await restoreWithFallback(s, out, [alternate(s)]);
      assert.deepEqual(r.damaged, []);
      assert.deepEqual(await listTree(join(out, s.srcDir)), await listTree(s.srcDir));
      const all = new Set([...s.content.values()].flat());
      assert.deepEqual(r.sources.primary, { chunks: all.size - damaged.length, bytes: r.sources.primary!.bytes });
      const off = r.sources.offsite!;
      assert.equal(off.chunks, 3);
      assert.equal(off.fileCount, 2);
      assert.deepEqual(off.files!.map((f) => f.slice(s.srcDir.length)).sort(), ['/f2.bin', '/sub/f3.bin']);
      const total = (await Promise.all([...s.content.keys()].map(async (p) => (await readFile(p)).length))).reduce((a, b) => a + b, 0);
      assert.equal(r.sources.primary!.bytes + off.bytes, total, 'every byte came from one copy or the other');
    });
  }

  it('reads a damaged directory tree from another copy with the same keys; under other keys the directory is lost and named', async (t) => {
    for (const sameKeys of [true, false]) {
      const s = await setup(t, sameKeys);
      let sub: string | undefined;
      await walkTree(s.primary.repo, (await loadSnapshot(s.primary.repo, s.primarySnap)).tree, { node: (_p, n) => void (n.name === 'sub' && (sub = n.subtree)) });
      const hit = s.primary.repo.locate('tree', fromHex(sub!))!;
      const name = packName(toHex(hit.packId));
      const bytes = Buffer.from(await s.primary.backend.get(name));
      bytes[hit.entry.offset + 5]! ^= 0x01;
      await s.primary.backend.put(name, bytes);
      const out = join(await tempDir(t), 'out');
      if (sameKeys) {
        const r = await restoreWithFallback(s, out, [alternate(s)]);
        assert.deepEqual(r.damaged, []);
        assert.deepEqual(await listTree(join(out, s.srcDir)), await listTree(s.srcDir));
        assert.deepEqual([r.sources.offsite!.chunks, r.sources.offsite!.fileCount], [1, 0], 'one tree, no file data');
        continue;
      }
      await assert.rejects(restoreWithFallback(s, out, [alternate(s)]), (e) => {
        assert.ok(isCofferError(e, 'CORRUPT'), String(e));
        const d = e.details?.damaged as Array<{ path: string; problem: string }>;
        assert.deepEqual(d.map((x) => x.path), [join(s.srcDir, 'sub')]);
        assert.match(d[0]!.problem, /nor from another copy \(offsite: other keys, other tree ids\)/);
        return true;
      });
      assert.deepEqual(await readFile(join(out, s.srcDir, 'f0.bin')), await readFile(join(s.srcDir, 'f0.bin')));
    }
  });

  it('reads a pack that is gone from the other copy, and the damage is still recorded in the primary', async (t) => {
    const s = await setup(t, false);
    const f4 = [...s.content].find(([p]) => p.endsWith('/f4.bin'))![1];
    const hit = s.primary.repo.locate('data', fromHex(f4[1]!))!;
    await s.primary.backend.delete(packName(toHex(hit.packId)));
    const out = join(await tempDir(t), 'out');
    const r = await restoreWithFallback(s, out, [alternate(s)]);
    assert.deepEqual(r.damaged, []);
    assert.deepEqual(await listTree(join(out, s.srcDir)), await listTree(s.srcDir));
    assert.ok(r.sources.offsite!.chunks >= 1);
    assert.match(r.notices.join('\n'), /recorded the damage to 1 pack/);
  });

  it('fails the file naming both copies when the other copy cannot give the chunk either; the rest is restored', async (t) => {
    const s = await setup(t, true);
    const f6 = [...s.content].find(([p]) => p.endsWith('/f6.bin'))![1];
    await flip(s, [f6[0]!]);
    // The same blob in the offsite copy is damaged too.
    const hit = s.offsite.repo.locate('data', fromHex(f6[0]!))!;
    const name = packName(toHex(hit.packId));
    const bytes = Buffer.from(await s.offsite.backend.get(name));
    bytes[hit.entry.offset + 9]! ^= 0x01;
    await s.offsite.backend.put(name, bytes);
    const out = join(await tempDir(t), 'out');
    await assert.rejects(restoreWithFallback(s, out, [alternate(s)]), (e) => {
      assert.ok(isCofferError(e, 'CORRUPT'), String(e));
      const d = e.details?.damaged as Array<{ path: string; problem: string }>;
      assert.equal(d.length, 1);
      assert.match(d[0]!.path, /f6\.bin$/);
      assert.match(d[0]!.problem, /nor from another copy \(offsite: /);
      return true;
    });
    assert.deepEqual(await readFile(join(out, s.srcDir, 'f0.bin')), await readFile(join(s.srcDir, 'f0.bin')));
  });

  it('tries the alternates in order: one that cannot be opened is passed over for the next', async (t) => {
    const s = await setup(t, false);
    const f0 = [...s.content].find(([p]) => p.endsWith('/f0.bin'))![1];
    await flip(s, [f0[1]!]);
    const broken: AlternateCopy = { name: 'tape', open: async () => { throw new Error('the volume is not mounted'); } };
    const out = join(await tempDir(t), 'out');
    const r = await restoreWithFallback(s, out, [broken, alternate(s)]);
    assert.deepEqual(r.damaged, []);
    assert.equal(r.sources.offsite!.chunks, 1);
    assert.equal(r.sources.tape, undefined);
    assert.deepEqual(await readFile(join(out, s.srcDir, 'f0.bin')), await readFile(join(s.srcDir, 'f0.bin')));
  });
});
