// Prune: frees what no snapshot needs; safe alongside concurrent backups (no global lock);
// deletes nothing when a listing fails.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile, mkdir, rm } from 'node:fs/promises';
import { isCofferError } from '../src/core/errors.ts';
import { listAll } from '../src/storage/backend.ts';
import { FaultyBackend } from '../src/storage/faulty.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { check } from '../src/repository/check.ts';
import { prune } from '../src/repository/prune.ts';
import type { Repository } from '../src/repository/repository.ts';
import { loadAllSnapshots, saveSnapshot } from '../src/repository/snapshot.ts';
import { DATA_PREFIX, SNAPSHOTS_PREFIX } from '../src/repository/layout.ts';
import { WorkerPool } from '../src/engine/pool.ts';
import { Session, isSessionGap } from '../src/repository/session.ts';
import { makeTestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { walkTree } from '../src/repository/walk.ts';
import { listTree } from './helpers.ts';

async function writeSet(dir: string, seed: number, files = 6, size = 120_000): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < files; i++) await writeFile(join(dir, `f${i}.bin`), randomBytes(seed * 100 + i, size));
}

async function restoresIntact(repo: Repository, snapTree: string, src: string, out: string): Promise<void> {
  await restore(repo, snapTree, out);
  assert.deepEqual(await listTree(join(out, ...src.split('/').filter(Boolean))), await listTree(src));
}

describe('prune', () => {
  it('removes the packs of forgotten snapshots and keeps everything the others need', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await writeSet(a, 1);
    await writeSet(b, 2);
    const ra = await backup(tr.repo, tr.pool, [a]);
    const rb = await backup(tr.repo, tr.pool, [b]);
    const before = await listAll(tr.backend, DATA_PREFIX);
    await tr.backend.delete(SNAPSHOTS_PREFIX + ra.snapshotId);
    const res = await prune(tr.repo, { encoder: tr.pool });
    assert.ok(res.packsDeleted > 0, 'something was deleted');
    const after = await listAll(tr.backend, DATA_PREFIX);
    assert.ok(after.length < before.length);
    const r2 = await tr.reopen();
    const c = await check(r2, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await r2.loadIndex();
    await restoresIntact(r2, rb.snapshot.tree, b, join(dir, 'out'));
  });

  it('frees the packs it repacked: after forget and prune only the live data stays, and a second prune changes nothing', async (t) => {
    const dir = await tempDir(t);
    // One pack for everything (the default size here is 256 KiB): the random file's pack also
    // holds the text file, which the second snapshot still uses.
    const tr = await makeTestRepo({ packSize: 16 * 1024 * 1024 });
    t.after(() => tr.close());
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'rand'), randomBytes(77, 3_000_000));
    await writeFile(join(src, 'text'), Buffer.from(Array.from({ length: 10_000 }, (_, i) => `${i + 1}\n`).join('')));
    const first = await backup(tr.repo, tr.pool, [src]);
    await rm(join(src, 'rand'));
    const second = await backup(tr.repo, tr.pool, [src]);
    await tr.backend.delete(SNAPSHOTS_PREFIX + first.snapshotId);
    const size = async () => (await listAll(tr.backend, '')).filter((o) => !o.name.startsWith('sessions/')).reduce((n, o) => n + o.size, 0);
    const res = await prune(tr.repo, { encoder: tr.pool });
    assert.equal(res.packsRepacked, 1);
    assert.equal(res.packsKept, 0, 'a repacked pack is not kept for the blobs that were copied out of it');
    assert.ok(res.packsDeleted >= 1);
    const after = await size();
    assert.ok(after < 200_000, `the repository holds ${after} bytes for 49 kB of live data`);
    for (let i = 0; i < 2; i++) {
      const again = await prune(tr.repo, { encoder: tr.pool });
      assert.deepEqual([again.packsCondemned, again.packsRepacked, again.packsDeleted, again.indexFilesDeleted], [0, 0, 0, 0], 'a second prune changes nothing');
      assert.equal(await size(), after);
    }
    const r2 = await tr.reopen();
    const c = await check(r2, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await r2.loadIndex();
    await restoresIntact(r2, second.snapshot.tree, src, join(dir, 'out'));
  });

  it('writes the new index in bounded files; a crash between them leaves a readable repository', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo({ packSize: 64 * 1024 });
    t.after(() => tr.close());
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await writeSet(a, 11, 8);
    await writeSet(b, 12, 8);
    const ra = await backup(tr.repo, tr.pool, [a]);
    const rb = await backup(tr.repo, tr.pool, [b]);
    await tr.backend.delete(SNAPSHOTS_PREFIX + ra.snapshotId);
    // First run dies after the first part of the new index (and before anything is deleted).
    const died = new Error('crash after a part');
    await assert.rejects(prune(tr.repo, { encoder: tr.pool, indexFileEntries: 10, onStep: (s) => { if (s === 'index-part-written') throw died; } }), (e) => e === died);
    let r2 = await tr.reopen();
    let c = await check(r2, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    // Then a whole prune: the index ends up in several files of at most 10 entries each.
    const res = await prune(r2, { encoder: tr.pool, indexFileEntries: 10 });
    assert.ok(res.packsDeleted > 0);
    r2 = await tr.reopen();
    const files = await r2.listIndexFiles();
    assert.ok(files.length > 2, `${files.length} index files`);
    for (const id of files) {
      const f = await r2.loadIndexFile(id);
      const entries = f.packs.reduce((n, p) => n + p.entries.length, 0);
      assert.ok(entries <= 10 || f.packs.length === 1, `${entries} entries in one file`);
    }
    c = await check(r2, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await r2.loadIndex();
    await restoresIntact(r2, rb.snapshot.tree, b, join(dir, 'out'));
  });

  it('keeps a condemned pack that a backup running during the mark reuses', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const a = join(dir, 'a');
    await writeSet(a, 3);
    const first = await backup(tr.repo, tr.pool, [a]);
    // A writer in another process opens the repository and loads the index: it knows the blobs.
    const writer = await tr.reopen();
    const session = await Session.start(writer, 'backup');
    await writer.loadIndex();
    // The only snapshot is forgotten and prune marks everything; the writer is live, so the
    // sweep must wait.
    await tr.backend.delete(SNAPSHOTS_PREFIX + first.snapshotId);
    const pruner = await tr.reopen();
    const p1 = await prune(pruner, { encoder: tr.pool });
    assert.equal(p1.packsDeleted, 0);
    assert.equal(p1.plansWaiting, 1);
    // The pre-mark writer commits a snapshot that reuses every blob it knew (an unchanged backup).
    await session.assertAlive();
    const sid = await saveSnapshot(writer, { ...first.snapshot, time: new Date().toISOString() });
    await session.assertAlive();
    await session.end();
    // Now prune sweeps: the packs are used again, so they are kept.
    const p2 = await prune(await tr.reopen(), { encoder: tr.pool });
    assert.ok(p2.packsKept > 0, 'the reused packs were kept');
    const r = await tr.reopen();
    const c = await check(r, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await r.loadIndex();
    const snap = (await loadAllSnapshots(r)).find((x) => x.id === sid)!;
    await restoresIntact(r, snap.snapshot.tree, a, join(dir, 'out'));
  });

  it('a backup that starts after the mark stores condemned blobs again; the sweep then deletes the old packs and the new snapshot restores', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const a = join(dir, 'a');
    await writeSet(a, 3);
    const first = await backup(tr.repo, tr.pool, [a]);
    const before = new Set((await listAll(tr.backend, DATA_PREFIX)).map((o) => o.name));
    // A live session makes the sweep wait after the mark.
    const other = await tr.reopen();
    const session = await Session.start(other, 'backup');
    await tr.backend.delete(SNAPSHOTS_PREFIX + first.snapshotId);
    const p1 = await prune(await tr.reopen(), { encoder: tr.pool });
    assert.equal(p1.plansWaiting, 1);
    const late = await backup(await tr.reopen(), tr.pool, [a]);
    assert.ok(late.summary.bytesNew > 0, 'a post-mark writer stores the data again');
    await session.end();
    const p2 = await prune(await tr.reopen(), { encoder: tr.pool });
    assert.equal(p2.packsKept, 0, 'every used blob has a copy outside the condemned packs');
    const after = new Set((await listAll(tr.backend, DATA_PREFIX)).map((o) => o.name));
    assert.ok([...before].every((n) => !after.has(n)), 'the old packs are gone');
    const r = await tr.reopen();
    const c = await check(r, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await r.loadIndex();
    await restoresIntact(r, late.snapshot.tree, a, join(dir, 'out'));
  });

  /**
   * A backup of a tree that reuses a forgotten snapshot's data and adds new data, held at its
   * last file (as if the process were stopped there) until `release()`.
   */
  async function heldBackup(dir: string, backend: MemoryBackend) {
    const tr = await makeTestRepo({ backend });
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await writeSet(a, 21);
    const first = await backup(tr.repo, tr.pool, [a]);
    await tr.backend.delete(SNAPSHOTS_PREFIX + first.snapshotId);
    await writeSet(b, 21);
    await writeSet(join(b, 'new'), 22, 6);
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let held!: () => void;
    const holding = new Promise<void>((r) => (held = r));
    let reads = 0;
    const running = backup(await tr.reopen(), tr.pool, [b], {
      afterFileRead: async () => {
        if (++reads === 12) {
          held();
          await released;
        }
      },
    });
    running.catch(() => {});
    await holding;
    return { tr, b, running, release };
  }

  it('a prune on a host whose clock is 45 and 90 minutes ahead still waits for a running backup: staleness is by the storage clock', async (t) => {
    const dir = await tempDir(t);
    const realNow = Date.now;
    const { tr, b, running, release } = await heldBackup(dir, new MemoryBackend({ now: () => realNow() }));
    t.after(() => tr.close());
    for (const ahead of [45, 90]) {
      Date.now = () => realNow() + ahead * 60_000;
      try {
        const p = await prune(await tr.reopen(), { encoder: tr.pool });
        assert.equal(p.packsDeleted, 0, `a prune ${ahead} min ahead deleted packs of a live backup`);
      } finally {
        Date.now = realNow;
      }
    }
    release();
    const res = await running;
    await prune(await tr.reopen(), { encoder: tr.pool });
    const r = await tr.reopen();
    const c = await check(r, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await r.loadIndex();
    await restoresIntact(r, res.snapshot.tree, b, join(dir, 'out'));
  });

  it('a backup paused longer than the stale time by the storage clock commits nothing and leaves no index entry for what prune deleted', async (t) => {
    const dir = await tempDir(t);
    let storageAhead = 0;
    const backend = new MemoryBackend({ now: () => Date.now() + storageAhead });
    const { tr, b, running, release } = await heldBackup(dir, backend);
    t.after(() => tr.close());
    // 20 minutes pass for the storage (and every other host); the held backup writes nothing.
    storageAhead = 20 * 60_000;
    const p = await prune(await tr.reopen(), { encoder: tr.pool });
    assert.ok(p.packsDeleted > 0, 'the prune took the paused backup for dead and deleted what it reused and uploaded');
    release();
    await assert.rejects(running, (e) => isSessionGap(e) && /paused or cut off from the repository for 20 min/.test((e as Error).message));
    assert.equal((await listAll(backend, SNAPSHOTS_PREFIX)).length, 0, 'no snapshot was committed');
    const r = await tr.reopen();
    const c = await check(r, { readData: true });
    assert.ok(c.ok, `the index lists no deleted pack: ${JSON.stringify(c.problems)}`);
    // Running the backup again stores what is gone and restores whole.
    const again = await backup(r, tr.pool, [b]);
    assert.ok(again.summary.bytesNew > 0);
    const r2 = await tr.reopen();
    assert.ok((await check(r2, { readData: true })).ok);
    await r2.loadIndex();
    await restoresIntact(r2, again.snapshot.tree, b, join(dir, 'out'));
  });

  it('concurrent backups and prunes leave every snapshot restorable', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const sets: string[] = [];
    for (let i = 0; i < 4; i++) {
      sets.push(join(dir, `s${i}`));
      await writeSet(sets[i]!, 10 + i, 4, 80_000);
    }
    // Old snapshots to forget, so that prune has work while the writers run.
    const old = await backup(tr.repo, tr.pool, [sets[0]!]);
    await tr.backend.delete(SNAPSHOTS_PREFIX + old.snapshotId);
    const writers = await Promise.all([0, 1].map(async () => {
      const r = await tr.reopen();
      const pool = await WorkerPool.create({ keys: r.keys, chunker: r.config.chunker, level: 3, workers: 1 });
      t.after(() => pool.close());
      return { r, pool };
    }));
    const results = await Promise.all([
      ...writers.map(async ({ r, pool }, w) => {
        const out = [];
        for (const s of sets) out.push({ src: s, res: await backup(r, pool, [s], { tags: [`w${w}`] }) });
        return out;
      }),
      (async () => {
        const pr = await tr.reopen();
        for (let i = 0; i < 3; i++) {
          try {
            await prune(pr, { encoder: tr.pool });
          } catch (e) {
            if (!isCofferError(e, 'CONFLICT')) throw e;
          }
        }
        return [];
      })(),
    ]);
    // Once the writers are done, a final prune can sweep everything marked.
    await prune(await tr.reopen(), { encoder: tr.pool });
    const r = await tr.reopen();
    const c = await check(r, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await r.loadIndex();
    let n = 0;
    for (const list of results) for (const { src, res } of list) await restoresIntact(r, res.snapshot.tree, src, join(dir, `out${n++}`));
    assert.equal(n, 8);
  });

  it('leaves damaged packs to repair packs: a blob that does not read while repacking is recorded, the prune goes on, and nothing damaged is deleted', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo({ packSize: 16 * 1024 * 1024 });
    t.after(() => tr.close());
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'gone'), randomBytes(41, 600_000));
    await writeFile(join(src, 'kept'), randomBytes(42, 100_000));
    const first = await backup(tr.repo, tr.pool, [src]);
    await rm(join(src, 'gone'));
    await backup(tr.repo, tr.pool, [src]);
    await tr.backend.delete(SNAPSHOTS_PREFIX + first.snapshotId);
    // Damage a blob of `kept` in the first pack, which prune wants to repack.
    await tr.repo.loadIndex();
    const [pack] = (await listAll(tr.backend, DATA_PREFIX)).sort((a, b) => b.size - a.size);
    const packHex = pack!.name.split('/').at(-1)!;
    const entries = [...tr.repo.index.entries()].filter((e) => e.packId.toString('hex') === packHex && e.entry.type === 'data');
    const used = new Set<string>();
    for (const s of await loadAllSnapshots(tr.repo)) {
      await walkTree(tr.repo, s.snapshot.tree, { node: (_p, n) => { for (const c of n.content ?? []) used.add(c); } });
    }
    const victim = entries.find((e) => used.has(e.entry.id.toString('hex')))!.entry;
    const bytes = Buffer.from(await tr.backend.get(pack!.name));
    bytes[victim.offset + 5] ^= 1;
    await tr.backend.put(pack!.name, bytes);

    const res = await prune(await tr.reopen(), { encoder: tr.pool });
    assert.equal(res.packsRepacked, 0, 'the damaged pack was not repacked');
    assert.ok((await listAll(tr.backend, DATA_PREFIX)).some((o) => o.name === pack!.name), 'the damaged pack is still there');
    const r = await tr.reopen();
    await r.loadIndex();
    assert.ok(r.damage.isDamaged(packHex, 'data', victim.id.toString('hex')), 'the damage was recorded');
    const again = await prune(await tr.reopen(), { encoder: tr.pool });
    assert.deepEqual([again.packsRepacked, again.packsDeleted], [0, 0], 'a known damaged pack is left alone');
  });

  it('deletes nothing when a listing fails', async (t) => {
    const dir = await tempDir(t);
    const inner = new MemoryBackend();
    const faulty = new FaultyBackend(inner);
    const tr = await makeTestRepo({ backend: faulty });
    t.after(() => tr.close());
    const a = join(dir, 'a');
    await writeSet(a, 5);
    const res = await backup(tr.repo, tr.pool, [a]);
    await inner.delete(SNAPSHOTS_PREFIX + res.snapshotId);
    const before = (await listAll(inner, '')).map((o) => o.name).filter((n) => !n.startsWith('sessions/')).sort();
    for (const prefix of [DATA_PREFIX, SNAPSHOTS_PREFIX, 'index/', 'gc/', 'sessions/']) {
      for (const after of prefix === DATA_PREFIX ? [0, 1] : [0]) {
        if (after === 0) faulty.add({ kind: 'error', ops: ['list'], name: prefix, error: 'transient' });
        else faulty.add({ kind: 'failList', name: prefix, after, error: 'transient' });
        await assert.rejects(prune(tr.repo, { encoder: tr.pool }), Error, `a failing listing of ${prefix} after ${after} was not noticed`);
        faulty.clear();
      }
      const now = (await listAll(inner, '')).map((o) => o.name).filter((n) => !n.startsWith('sessions/') && !n.startsWith('gc/')).sort();
      assert.deepEqual(now, before, `a failing listing of ${prefix} deleted something`);
    }
  });
});
