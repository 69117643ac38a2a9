// Sparse files: a backup reads only their data regions (SEEK_DATA / SEEK_HOLE), yet stores exactly
// the chunks a full read gives (the same ids, so dedup and restore stay byte-identical), whatever
// the holes' sizes and alignment; a file that changes while read is still caught.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackupOptions } from '../src/jobs/backup.ts';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { loadTree } from '../src/repository/walk.ts';
import type { TreeNode } from '../src/repository/tree.ts';
import { HoleMap } from '../src/jobs/sparse-read.ts';
import { makeTestRepo, TEST_CHUNKER, type TestRepo } from '../src/testing/repo.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Writes `pieces` (offset, length) of random data into a file of `size` bytes that is otherwise a hole. */
async function sparseFile(path: string, size: number, pieces: Array<[number, number]>, seed: number): Promise<number> {
  const fh = await open(path, 'w');
  let data = 0;
  try {
    for (const [i, [at, n]] of pieces.entries()) {
      await fh.write(randomBytes(seed * 100 + i, n), 0, n, at);
      data += n;
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
  return data;
}

/** The same bytes, every block allocated: a backup reads it all. */
async function denseCopy(from: string, to: string): Promise<void> {
  await writeFile(to, await readFile(from));
  const st = await stat(to);
  assert.ok(st.blocks * 512 >= st.size, 'the copy has no holes');
}

async function fileNode(tr: TestRepo, tree: string, path: string): Promise<TreeNode> {
  let nodes = (await loadTree(tr.repo, tree)).nodes;
  const segs = path.split('/').filter(Boolean);
  for (const [i, seg] of segs.entries()) {
    const n = nodes.find((x) => x.name === seg)!;
    if (i === segs.length - 1) return n;
    nodes = (await loadTree(tr.repo, n.subtree!)).nodes;
  }
  throw new Error('not found');
}

// Holes of every kind against TEST_CHUNKER (4 / 16 / 64 KiB): a leading one, short ones (under the
// smallest chunk), ones of a few chunks, long ones of many max-size chunks at odd offsets, data of
// a single byte, and a trailing hole; file-system blocks are 4 KiB, so some zeros next to data are
// data to the file system and others are holes.
const LAYOUTS: Array<{ size: number; pieces: Array<[number, number]> }> = [
  { size: 3 * MiB + 12_345, pieces: [[100 * KiB + 7, 30_000], [140 * KiB, 1], [150 * KiB + 3, 5_000], [1 * MiB + 4097, 200 * KiB], [2 * MiB + 999, 70_001], [3 * MiB - 1, 2]] },
  { size: 5 * MiB, pieces: [[0, 64 * KiB], [64 * KiB + 8 * KiB, 4 * KiB], [4 * MiB + 65_536 * 3, 12_288], [5 * MiB - 10, 10]] },
  { size: 2 * MiB + 1, pieces: [[777_777, 333_333]] },
];

describe('sparse files', () => {
  it('HoleMap gives the hole and data ends around each position', () => {
    const m = new HoleMap([[10, 20], [30, 35]], 50);
    assert.equal(m.holeBytes, 35);
    assert.deepEqual([0, 9, 10, 19, 20, 29, 30, 34, 35, 49, 50, 60].map((p) => [m.holeEnd(p), m.dataEnd(p)]), [
      [10, 0], [10, 9], [10, 20], [19, 20], [30, 20], [30, 29], [30, 35], [34, 35], [50, 35], [50, 49], [50, Infinity], [60, Infinity],
    ]);
  });

  for (const [name, extra] of [['files', {}], ['images in fixed blocks', { images: true, imageChunking: 'fixed' }], ['images cut content-defined', { images: true }]] as const) {
    it(`${name}: only the data is read, and the chunks are those of a full read, whatever the holes`, async (t) => {
      const dir = await tempDir(t);
      const tr = await makeTestRepo();
      t.after(() => tr.close());
      for (const [i, layout] of LAYOUTS.entries()) {
        const sparse = join(dir, `sparse-${i}`);
        const dense = join(dir, `dense-${i}`);
        const data = await sparseFile(sparse, layout.size, layout.pieces, i + 1);
        const st = await stat(sparse);
        if (st.blocks * 512 >= st.size) return t.skip('this file system does not keep holes');
        await denseCopy(sparse, dense);
        const opts: Partial<BackupOptions> = { parent: 'none', ...extra };
        const a = await backup(tr.repo, tr.pool, [sparse], opts);
        // File-system blocks are 4 KiB: a data region may start and end up to a block away.
        assert.ok(a.summary.bytesRead! <= data + layout.pieces.length * 8 * KiB, `read ${a.summary.bytesRead} bytes of ${layout.size} (${data} of data)`);
        const b = await backup(tr.repo, tr.pool, [dense], opts);
        assert.equal(b.summary.bytesRead, layout.size, 'the dense copy is read whole');
        const na = await fileNode(tr, a.snapshot.tree, sparse);
        const nb = await fileNode(tr, b.snapshot.tree, dense);
        assert.deepEqual(na.content, nb.content, `layout ${i}: the same chunk ids`);
        assert.equal(na.size, layout.size);
        // A file with holes is marked sparse; an image is when it has zero chunks, as when read whole.
        if ('images' in extra) assert.equal(na.sparse, nb.sparse);
        else assert.equal(na.sparse, true);
        assert.equal(na.changedWhileRead, undefined);
        const out = join(dir, `out-${name.replace(/ /g, '-')}-${i}`);
        await restore(tr.repo, a.snapshot, out, { pool: tr.pool });
        assert.ok((await readFile(join(out, sparse))).equals(await readFile(sparse)), 'restored byte for byte');
      }
    });
  }

  it('a sparse file written to while it is read is flagged as changed', async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'busy.img');
    await sparseFile(path, 4 * MiB, [[MiB, 100_000]], 9);
    if ((await stat(path)).blocks * 512 >= 4 * MiB) return t.skip('this file system does not keep holes');
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const r = await backup(tr.repo, tr.pool, [path], {
      afterFileRead: async (p) => {
        // Into a hole that was skipped: only the file's times can tell.
        const fh = await open(p, 'r+');
        await fh.write(Buffer.from('late'), 0, 4, 3 * MiB);
        await fh.close();
      },
    });
    assert.deepEqual(r.warnings.map((w) => w.path), [path]);
    assert.match(r.warnings[0]!.problem, /changed while it was read/);
    assert.equal((await fileNode(tr, r.snapshot.tree, path)).changedWhileRead, true);
  });
});

// Keeps TEST_CHUNKER in view: the layouts above are sized against it.
assert.deepEqual(TEST_CHUNKER, { minSize: 4 * KiB, avgSize: 16 * KiB, maxSize: 64 * KiB });
