// Clone benchmark (not a test): one source repository and one target on local disk, default
// chunker and pack size. Backs up DIR (and DIR plus a new file of --new-mb random bytes) into the
// source, then clones into an empty target with the same keys and one with other keys, then the
// second snapshot into each (the target holds most of it already), then both again (a no-op).
// Prints wall time, MB/s of the snapshot's size, bytes sent and bytes the target truly lacked
// (computed from the two indexes).
//
//   node bench/clone.ts [--data DIR] [--new-mb 32] [--workers N]
//
// Not the 3×3 storage-unit benchmark: that needs the lifecycle layer's queue.

import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { WorkerPool } from '../src/engine/pool.ts';
import { chunkId, fromHex } from '../src/engine/hash.ts';
import { cloneSnapshots } from '../src/jobs/clone.ts';
import { Repository } from '../src/repository/repository.ts';
import { loadSnapshot } from '../src/repository/snapshot.ts';
import { walkTree } from '../src/repository/walk.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { backup } from '../src/testing/jobs.ts';

const { values: args } = parseArgs({
  options: {
    data: { type: 'string', default: '/tmp/bench-work/data/files-default/src/vm01' },
    'new-mb': { type: 'string', default: '32' },
    workers: { type: 'string' },
  },
});

const work = mkdtempSync(join(tmpdir(), 'coffer-bench-clone-'));
const kdf = { N: 1024, r: 8, p: 1 };
const pool = await WorkerPool.create({ workers: args.workers ? Number(args.workers) : undefined });
const open = async (name: string, master?: Buffer) => {
  const repo = await Repository.init(new LocalBackend(join(work, name)), 'bench', { kdf, cacheDir: join(work, 'cache'), master });
  const ctx = pool.context({ keys: repo.keys, chunker: repo.config.chunker, level: repo.config.compressionLevel });
  return { repo, ctx };
};
const mb = (n: number) => (n / 1e6).toFixed(1);

try {
  const src = await open('source');
  const extra = join(work, 'extra');
  mkdirSync(extra);
  const t0 = performance.now();
  const b1 = await backup(src.repo, src.ctx, [args.data!]);
  writeFileSync(join(extra, 'new.bin'), randomBytes(Number(args['new-mb']) << 20));
  const b2 = await backup(src.repo, src.ctx, [args.data!, extra]);
  console.log(`source: two backups of ${mb(b1.summary.bytesScanned)} MB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const same = await open('target-same', src.repo.masterKeyForDomain);
  const other = await open('target-other');

  /** Stored bytes (in the source) of the data blobs of `snapshot` that `target` lacks. */
  const missing = async (target: Repository, snapshot: string) => {
    await target.loadIndex();
    const sameKeys = target.keys.chunkIdKey.equals(src.repo.keys.chunkIdKey);
    const seen = new Set<string>();
    let bytes = 0;
    await walkTree(src.repo, (await loadSnapshot(src.repo, snapshot)).tree, {
      node: async (_p, n) => {
        for (const c of n.content ?? []) {
          if (seen.has(c)) continue;
          seen.add(c);
          const hit = src.repo.locate('data', fromHex(c))!;
          const id = sameKeys ? fromHex(c) : chunkId(target.keys.chunkIdKey, await src.repo.readBlob('data', fromHex(c)));
          if (!target.hasBlob('data', id)) bytes += hit.entry.length;
        }
      },
    });
    return bytes;
  };

  for (const [label, t] of [['same keys', same], ['other keys', other]] as const) {
    for (const [what, snap, size] of [['first clone', b1.snapshotId!, b1.summary.bytesScanned], ['second snapshot', b2.snapshotId!, b2.summary.bytesScanned], ['again (no-op)', b2.snapshotId!, b2.summary.bytesScanned]] as const) {
      const lacking = await missing(t.repo, snap);
      const start = performance.now();
      const r = await cloneSnapshots(src.repo, t.repo, [snap], { sourcePool: src.ctx, targetPool: t.ctx });
      const s = (performance.now() - start) / 1000;
      const c = r.totals;
      console.log(`${label}, ${what}: ${s.toFixed(2)} s, ${mb(size / s)} MB/s of snapshot; sent ${mb(c.bytesSent)} MB (${c.blobsSent} blobs), data missing ${mb(lacking)} MB (+${((c.bytesSent / Math.max(1, lacking) - 1) * 100).toFixed(2)} %), read ${mb(c.bytesRead)} MB from the source`);
    }
  }
  await src.repo.close();
  await same.repo.close();
  await other.repo.close();
} finally {
  await pool.close();
  rmSync(work, { recursive: true, force: true });
}
