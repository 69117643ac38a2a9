// TreeLoader: trees asked for together are read together (fewer backend reads than trees), each
// is verified, and a missing or damaged tree fails alone.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { isCofferError } from '../src/core/errors.ts';
import { backup } from '../src/testing/jobs.ts';
import { TreeLoader } from '../src/jobs/tree-loader.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import type { GetOptions } from '../src/storage/backend.ts';
import { loadTree, walkTree } from '../src/repository/walk.ts';
import { packName } from '../src/repository/layout.ts';
import { fromHex, toHex } from '../src/engine/hash.ts';
import { makeTestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { makeSourceTree } from './helpers.ts';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';

class CountingBackend extends MemoryBackend {
  gets = 0;
  override async get(name: string, options?: GetOptions): Promise<Buffer> {
    if (name.startsWith('data/')) this.gets++;
    return super.get(name, options);
  }
}

async function repoWithTrees(t: Parameters<typeof tempDir>[0]) {
  const dir = await tempDir(t);
  for (let i = 0; i < 12; i++) {
    await mkdir(join(dir, `d${i}`));
    await makeSourceTree(join(dir, `d${i}`), i + 1, 0.01);
  }
  const backend = new CountingBackend();
  const tr = await makeTestRepo({ backend });
  t.after(() => tr.close());
  const r = await backup(tr.repo, tr.pool, [dir]);
  const ids: string[] = [];
  await walkTree(tr.repo, r.snapshot.tree, { enterTree: (id) => (ids.push(id), true) });
  return { tr, backend, ids: [...new Set(ids)] };
}

describe('TreeLoader', () => {
  for (const decoder of [true, false]) {
    it(`loads trees asked for in one turn with fewer reads than trees (${decoder ? 'decoded in workers' : 'decoded here'})`, async (t) => {
      const { tr, backend, ids } = await repoWithTrees(t);
      assert.ok(ids.length > 30, `${ids.length} trees`);
      const loader = new TreeLoader(tr.repo, { decoder: decoder ? tr.pool : undefined });
      backend.gets = 0;
      const trees = await Promise.all(ids.map((id) => loader.get(id)));
      // Trees of one pack come in one read unless data blobs lie between them: at most one read
      // per pack and stretch of trees, far fewer than one per tree.
      const packs = new Set(ids.map((id) => toHex(tr.repo.index.lookup(fromHex(id), 'tree')!.packId)));
      assert.ok(backend.gets < ids.length / 2, `${backend.gets} reads for ${ids.length} trees`);
      assert.ok(backend.gets >= packs.size, `at least one read per pack (${packs.size})`);
      for (let i = 0; i < ids.length; i++) assert.deepEqual(trees[i], await loadTree(tr.repo, ids[i]!));
    });
  }

  it('keeps a prefetched tree until get() took it as often as it was prefetched', async (t) => {
    const { tr, backend, ids } = await repoWithTrees(t);
    const loader = new TreeLoader(tr.repo, { decoder: tr.pool });
    loader.prefetch([ids[0]!, ids[0]!, ids[1]!]);
    await new Promise((r) => setTimeout(r, 50));
    backend.gets = 0;
    await loader.get(ids[0]!);
    await loader.get(ids[0]!);
    await loader.get(ids[1]!);
    assert.equal(backend.gets, 0, 'all three from the prefetch');
    await loader.get(ids[0]!);
    assert.equal(backend.gets, 1, 'a third get() reads again');
  });

  it('a tree missing from the index or damaged fails alone; the others load', async (t) => {
    const { tr, backend, ids } = await repoWithTrees(t);
    // Damage one tree's bytes in its pack.
    const victim = ids[5]!;
    const hit = tr.repo.index.lookup(fromHex(victim), 'tree')!;
    const name = packName(toHex(hit.packId));
    const pack = await backend.get(name);
    pack[hit.entry.offset + 3]! ^= 0x40;
    await backend.put(name, pack);
    const missing = 'ab'.repeat(32);
    const loader = new TreeLoader(tr.repo, { decoder: tr.pool });
    const results = await Promise.allSettled([...ids, missing].map((id) => loader.get(id)));
    results.forEach((r, i) => {
      const id = [...ids, missing][i];
      if (id === victim) assert.ok(r.status === 'rejected' && isCofferError(r.reason, 'CORRUPT'), `damaged: ${String((r as PromiseRejectedResult).reason)}`);
      else if (id === missing) assert.ok(r.status === 'rejected' && isCofferError(r.reason, 'NOT_FOUND'));
      else assert.equal(r.status, 'fulfilled', `tree ${id} of the same pack still loads`);
    });
  });
});
