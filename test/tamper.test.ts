// Tamper tests: a flipped byte anywhere in a pack, index file or snapshot is detected and
// reported (by pack, blob, snapshot and file), and never restored as if it were good data.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { isCofferError } from '../src/core/errors.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { listAll } from '../src/storage/backend.ts';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { check } from '../src/repository/check.ts';
import { loadAllSnapshots } from '../src/repository/snapshot.ts';
import { DATA_PREFIX, INDEX_PREFIX, SNAPSHOTS_PREFIX } from '../src/repository/layout.ts';
import { makeTestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { rng } from '../src/testing/random.ts';
import { makeSourceTree } from './helpers.ts';

async function setup(t: { after(fn: () => unknown): void }) {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await makeSourceTree(src, 3);
  const repoDir = join(dir, 'repo');
  const tr = await makeTestRepo({ backend: new LocalBackend(repoDir) });
  t.after(() => tr.close());
  await backup(tr.repo, tr.pool, [src]);
  return { dir, src, repoDir, tr };
}

async function flip(path: string, pos: number): Promise<void> {
  const b = await readFile(path);
  b[pos % b.length] ^= 0x40;
  await writeFile(path, b);
}

describe('tamper detection', () => {
  it('a flipped byte in any region of a pack is reported by pack, blob and affected file', async (t) => {
    const { dir, repoDir, tr } = await setup(t);
    const packs = (await listAll(tr.backend, DATA_PREFIX)).sort((a, b) => b.size - a.size);
    const victim = packs[0]!;
    const r = rng(7);
    // Flip a byte inside the blob area: a blob is damaged.
    await flip(join(repoDir, victim.name), 100 + Math.floor(r() * (victim.size / 2)));
    const r2 = await tr.reopen();
    const c = await check(r2, { readData: true });
    assert.equal(c.ok, false);
    const packHex = victim.name.split('/').at(-1)!;
    assert.ok(c.problems.some((p) => p.kind === 'pack-damaged' && p.pack === packHex), 'pack reported');
    const damagedBlob = c.problems.find((p) => p.kind === 'blob-damaged' && p.pack === packHex);
    assert.ok(damagedBlob, 'blob reported');
    assert.ok(c.affected.length > 0 && c.affected.every((a) => a.path.length > 1 && a.snapshot), 'affected files reported');
    // A restore never writes the damaged file as if it were good: it fails with CORRUPT.
    const [snap] = await loadAllSnapshots(r2);
    await assert.rejects(restore(r2, snap!.snapshot.tree, join(dir, 'out')), (e) => isCofferError(e, 'CORRUPT'));
  });

  it('flipping each of many positions of a pack (header, blobs, trailer, footer) is always detected', async (t) => {
    const { repoDir, tr } = await setup(t);
    const [victim] = (await listAll(tr.backend, DATA_PREFIX)).sort((a, b) => a.size - b.size);
    const path = join(repoDir, victim!.name);
    const original = await readFile(path);
    const positions = [0, 5, 9, 20, 43, 44, 60, original.length - 1, original.length - 5, original.length - 12, original.length - 20, original.length - 60, Math.floor(original.length / 2)];
    for (const pos of positions) {
      const b = Buffer.from(original);
      b[pos] ^= 0x01;
      await writeFile(path, b);
      const r2 = await tr.reopen();
      const c = await check(r2, { readData: true });
      assert.equal(c.ok, false, `flip at ${pos} of ${original.length} went unnoticed`);
    }
    await writeFile(path, original);
    const c = await check(await tr.reopen(), { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
  });

  it('a flipped byte in an index file or a snapshot is reported and not trusted', async (t) => {
    const { repoDir, tr } = await setup(t);
    const [idx] = await listAll(tr.backend, INDEX_PREFIX);
    await flip(join(repoDir, idx!.name), 77);
    let c = await check(await tr.reopen());
    assert.ok(c.problems.some((p) => p.kind === 'index-unreadable'));
    const [snap] = await listAll(tr.backend, SNAPSHOTS_PREFIX);
    await flip(join(repoDir, snap!.name), 50);
    c = await check(await tr.reopen());
    assert.ok(c.problems.some((p) => p.kind === 'snapshot-unreadable'));
    assert.equal(c.ok, false);
  });
});
