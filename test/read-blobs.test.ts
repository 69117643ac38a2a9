// readBlobs() with reused buffers (ReadBuffers): pack ranges read straight into recycled shared
// buffers by the local backend, blobs decoded into others, on this thread or in the workers; the
// same bytes as without, damage still confined to the damaged blob.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkId } from '../src/engine/hash.ts';
import { ReadBuffers, planRequests, readBlobs, type BlobResult } from '../src/jobs/read-blobs.ts';
import { packName } from '../src/repository/layout.ts';
import { BlobSaver } from '../src/repository/packer.ts';
import type { IndexHit } from '../src/repository/index/chunk-index.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { randomBytes, textBytes } from '../src/testing/random.ts';
import { makeTestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';

async function setUp(t: { after(fn: () => unknown): void }) {
  const dir = await tempDir(t);
  const tr = await makeTestRepo({ backend: new LocalBackend(join(dir, 'repo')) });
  t.after(() => tr.close());
  const saver = new BlobSaver(tr.repo, tr.pool);
  const raws: Buffer[] = [];
  for (let i = 0; i < 60; i++) raws.push(i % 3 === 0 ? randomBytes(i, 20_000 + i * 100) : textBytes(i, 30_000 + i * 1000));
  const ids = raws.map((r) => chunkId(tr.repo.keys.chunkIdKey, r));
  for (let i = 0; i < raws.length; i++) await saver.save('data', ids[i]!, raws[i]!);
  await saver.flush();
  await tr.repo.loadIndex();
  const hits = ids.map((id) => tr.repo.locate('data', id)!);
  return { dir, tr, raws, hits };
}

/** Reads every hit; copies each result (the buffers are reused once deliver() returns). */
async function readAll(tr: Awaited<ReturnType<typeof setUp>>['tr'], hits: IndexHit[], options: Parameters<typeof readBlobs>[3]) {
  const got: Array<Buffer | string> = new Array(hits.length);
  await readBlobs(tr.repo, hits, (indexes, results: BlobResult[]) => {
    indexes.forEach((i, k) => {
      const r = results[k]!;
      got[i] = r.data ? Buffer.from(r.data) : r.error.code;
    });
  }, options);
  return got;
}

describe('readBlobs() with reused buffers', () => {
  it('delivers the same bytes, on this thread and in the workers, and reuses its buffers from call to call', async (t) => {
    const { tr, raws, hits } = await setUp(t);
    // Small requests: many of them, so that buffers go round.
    const maxRequest = 64 * 1024;
    assert.ok(planRequests(hits, undefined, maxRequest).length > 10);
    for (const decoder of [undefined, tr.pool]) {
      const buffers = new ReadBuffers({ maxRequest, concurrency: 2 });
      const seen = new Set<ArrayBufferLike>();
      await readBlobs(tr.repo, hits, (_indexes, results) => {
        for (const r of results) {
          assert.ok(r.data, 'every blob reads');
          assert.ok(r.data.buffer instanceof SharedArrayBuffer, 'a view of a reused buffer');
          seen.add(r.data.buffer);
        }
      }, { decoder, maxRequest, concurrency: 2, buffers });
      assert.ok(seen.size <= 3, `${seen.size} output buffers for ${planRequests(hits, undefined, maxRequest).length} requests`);
      assert.ok(buffers.outputs.idle >= 1 && buffers.ranges.idle >= 1);
      assert.deepEqual(await readAll(tr, hits, { decoder, maxRequest, concurrency: 2, buffers }), raws);
      assert.deepEqual(await readAll(tr, hits, { decoder, maxRequest, concurrency: 2 }), raws);
    }
  });

  it('a damaged blob is delivered as CORRUPT and its neighbours as usual', async (t) => {
    const { dir, tr, raws, hits } = await setUp(t);
    const victim = 7;
    const h = hits[victim]!;
    const path = join(dir, 'repo', packName(Buffer.from(h.packId).toString('hex')));
    const pack = await readFile(path);
    pack[h.entry.offset + 5]! ^= 0xff;
    await writeFile(path, pack);
    for (const decoder of [undefined, tr.pool]) {
      const got = await readAll(tr, hits, { decoder, buffers: new ReadBuffers() });
      assert.equal(got[victim], 'CORRUPT');
      got.forEach((g, i) => i !== victim && assert.deepEqual(g, raws[i]));
    }
  });
});
