// Page-structured files (a whole number of 4 KiB pages: databases, VM disks) are cut in fixed
// blocks on their page grid, so that pages rewritten in place cost a block each, not a
// content-defined chunk each; every other file is cut content-defined (src/jobs/file-chunking.ts).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, open, readFile, writeFile, stat } from 'node:fs/promises';
import { backup, restore } from '../src/testing/jobs.ts';
import { loadTree } from '../src/repository/walk.ts';
import type { Repository } from '../src/repository/repository.ts';
import type { TreeNode } from '../src/repository/tree.ts';
import { makeTestRepo, TEST_CHUNKER } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { fixedChunkSize, isPageStructured, pagedBlockSize, PAGED_MAX_BLOCK, PAGED_MIN_BLOCK } from '../src/jobs/file-chunking.ts';
import { DEFAULT_CHUNKER } from '../src/repository/repository.ts';
import { runCli } from './cli.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 8 * KiB;

/** `pages` database-like pages of compressible text (each page different), as one buffer. */
function pagesOf(pages: number, seed: number): Buffer {
  const buf = Buffer.alloc(pages * PAGE);
  for (let p = 0; p < pages; p++) {
    let row = '';
    for (let i = 0; row.length < PAGE - 64; i++) row += `${seed}|${p}|${i}|customer-${(p * 7919 + i * 104729 + seed) % 100000}@example.com|paid\n`;
    buf.write(row.slice(0, PAGE - 64), p * PAGE, 'latin1');
  }
  return buf;
}

async function fileNode(repo: Repository, tree: string, name: string): Promise<TreeNode> {
  let nodes = (await loadTree(repo, tree)).nodes;
  for (;;) {
    const hit = nodes.find((n) => n.name === name);
    if (hit) return hit;
    const dir = nodes.find((n) => n.type === 'dir');
    assert.ok(dir, `no ${name} in the snapshot`);
    nodes = (await loadTree(repo, dir.subtree!)).nodes;
  }
}

describe('file chunking', () => {
  it('page-structured means a whole number of 4 KiB pages and at least the chunker minSize', () => {
    assert.equal(isPageStructured(DEFAULT_CHUNKER.minSize, DEFAULT_CHUNKER), true);
    assert.equal(isPageStructured(28 * MiB, DEFAULT_CHUNKER), true);
    assert.equal(isPageStructured(DEFAULT_CHUNKER.minSize - 4096, DEFAULT_CHUNKER), false, 'one chunk anyway');
    assert.equal(isPageStructured(28 * MiB + 100, DEFAULT_CHUNKER), false);
    assert.equal(isPageStructured(28 * MiB + 2048, DEFAULT_CHUNKER), false, 'half pages are not pages');
  });

  it('the block grows with the file: at most about 4096 blocks, from 128 KiB to 1 MiB', () => {
    assert.equal(PAGED_MIN_BLOCK, 128 * KiB);
    assert.equal(PAGED_MAX_BLOCK, MiB);
    const cases: Array<[number, number]> = [
      [256 * KiB, 128 * KiB],
      [28 * MiB, 128 * KiB],
      [512 * MiB, 128 * KiB],
      [512 * MiB + 4096, 256 * KiB],
      [1024 * MiB, 256 * KiB],
      [2048 * MiB, 512 * KiB],
      [2048 * MiB + 4096, MiB],
      [100 * 1024 * MiB, MiB],
    ];
    for (const [size, block] of cases) assert.equal(pagedBlockSize(size), block, `${size} bytes`);
  });

  it('images follow --image-chunking, files --file-chunking', () => {
    const base = { imageChunkSize: MiB, chunker: DEFAULT_CHUNKER };
    const db = 28 * MiB;
    assert.equal(fixedChunkSize(db, base), 128 * KiB, 'a page-structured file: fixed blocks by default');
    assert.equal(fixedChunkSize(db + 1, base), undefined, 'any other file: content-defined');
    assert.equal(fixedChunkSize(db, { ...base, fileChunking: 'cdc' }), undefined);
    assert.equal(fixedChunkSize(db, { ...base, fileChunking: 'auto' }), 128 * KiB);
    assert.equal(fixedChunkSize(db, { ...base, images: true }), undefined, 'images: content-defined by default');
    assert.equal(fixedChunkSize(db, { ...base, images: true, imageChunking: 'cdc' }), undefined);
    assert.equal(fixedChunkSize(db, { ...base, images: true, imageChunking: 'fixed' }), MiB, 'fixed: the repository imageChunkSize');
    assert.equal(fixedChunkSize(db + 1, { ...base, images: true, imageChunking: 'fixed' }), MiB);
  });

  it('a database with pages rewritten in place stores one block per rewritten page, and restores byte for byte', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    const db = join(src, 'app.db');
    const pages = 256; // 2 MiB: 16 blocks of 128 KiB
    await mkdir(src);
    await writeFile(db, pagesOf(pages, 1));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const first = await backup(tr.repo, tr.pool, [src]);
    const n1 = await fileNode(tr.repo, first.snapshot.tree, 'app.db');
    assert.equal(n1.content!.length, (pages * PAGE) / (128 * KiB), 'cut in 128 KiB blocks, not in the test chunker 16 KiB average');

    // Rewrite three pages in place, in three different blocks.
    const fh = await open(db, 'r+');
    for (const p of [3, 100, 250]) await fh.write(pagesOf(1, 1000 + p), 0, PAGE, p * PAGE);
    await fh.close();
    const second = await backup(tr.repo, tr.pool, [src]);
    const n2 = await fileNode(tr.repo, second.snapshot.tree, 'app.db');
    const changed = n2.content!.filter((id, i) => id !== n1.content![i]).length;
    assert.equal(changed, 3, 'three blocks changed');
    // Only they are new, with the two trees above them.
    assert.ok(second.summary.bytesNew >= 3 * 128 * KiB && second.summary.bytesNew < 3 * 128 * KiB + 16 * KiB, `${second.summary.bytesNew} new bytes`);

    const out = join(dir, 'out');
    await restore(tr.repo, second.snapshot, out);
    assert.deepEqual(await readFile(join(out, db)), await readFile(db));
  });

  it('--file-chunking cdc cuts the same file content-defined; a file that is not whole pages is too', async (t) => {
    const dir = await tempDir(t);
    const paged = join(dir, 'paged.bin');
    const odd = join(dir, 'odd.bin');
    await writeFile(paged, randomBytes(3, MiB));
    await writeFile(odd, randomBytes(3, MiB + 1));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const auto = await backup(tr.repo, tr.pool, [paged, odd]);
    assert.equal((await fileNode(tr.repo, auto.snapshot.tree, 'paged.bin')).content!.length, 8, '128 KiB blocks');
    const oddChunks = (await fileNode(tr.repo, auto.snapshot.tree, 'odd.bin')).content!.length;
    assert.ok(oddChunks > 8 && oddChunks <= MiB / TEST_CHUNKER.minSize + 1, `content-defined: ${oddChunks} chunks of the test chunker`);
    const cdc = await backup(tr.repo, tr.pool, [paged, odd], { fileChunking: 'cdc', parent: 'none' });
    const cdcChunks = (await fileNode(tr.repo, cdc.snapshot.tree, 'paged.bin')).content!.length;
    assert.ok(cdcChunks > 8, `content-defined: ${cdcChunks} chunks`);
  });

  it('a sparse page-structured file is still recorded as sparse and restored with its holes', async (t) => {
    const dir = await tempDir(t);
    const f = join(dir, 'sparse.db');
    const fh = await open(f, 'w');
    await fh.write(pagesOf(16, 5), 0, 16 * PAGE, 3 * MiB);
    await fh.truncate(4 * MiB);
    await fh.close();
    assert.ok((await stat(f)).blocks * 512 < 4 * MiB, 'the test file has holes');
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const r = await backup(tr.repo, tr.pool, [f]);
    const n = await fileNode(tr.repo, r.snapshot.tree, 'sparse.db');
    assert.equal(n.sparse, true);
    assert.equal(n.content!.length, 32, '128 KiB blocks, the zero ones one blob');
    const out = join(dir, 'out');
    await restore(tr.repo, r.snapshot, out);
    assert.deepEqual(await readFile(join(out, f)), await readFile(f));
    assert.ok((await stat(join(out, f))).blocks * 512 < 4 * MiB, 'restored sparse');
  });

  it('coffer repo backup refuses a bad --file-chunking, and --file-chunking with --image, before it opens the repository', async (t) => {
    const dir = await tempDir(t);
    const env = { COFFER_PASSWORD: 'pw', COFFER_REPOSITORY: join(dir, 'no-repo'), COFFER_CACHE_DIR: join(dir, 'cache') };
    const bad = await runCli(['repo', 'backup', '--file-chunking', 'small', dir], { env });
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /Cannot use --file-chunking "small": give auto or cdc/);
    const both = await runCli(['repo', 'backup', '--image', '--file-chunking', 'cdc', dir], { env });
    assert.equal(both.code, 2, both.stderr);
    assert.match(both.stderr, /Cannot use --file-chunking with --image/);
  });
});
