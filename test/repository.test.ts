// End-to-end tests of the repository engine: init/open, keys, backup → restore round trips,
// check, repair index.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { isCofferError } from '../src/core/errors.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import { Repository } from '../src/repository/repository.ts';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { check } from '../src/repository/check.ts';
import { repairIndex } from '../src/repository/repair.ts';
import { loadAllSnapshots } from '../src/repository/snapshot.ts';
import { INDEX_PREFIX } from '../src/repository/layout.ts';
import { listAll } from '../src/storage/backend.ts';
import { makeTestRepo, TEST_KDF, TEST_PASSWORD } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { listTree, makeSourceTree } from './helpers.ts';

describe('repository', () => {
  it('init() refuses a location that already holds a repository', async (t) => {
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    await assert.rejects(Repository.init(tr.backend, 'x', { kdf: TEST_KDF }), (e) => isCofferError(e, 'ALREADY_EXISTS'));
  });

  it('init() refuses a location that holds other files unless forced, and leaves them alone', async (t) => {
    const dir = await tempDir(t);
    const cacheDir = join(dir, 'cache');
    const memory = new MemoryBackend();
    await memory.put('notes.txt', Buffer.from('mine'));
    const local = new LocalBackend(join(dir, 'occupied'));
    await mkdir(join(dir, 'occupied', 'deep', 'er'), { recursive: true });
    await writeFile(join(dir, 'occupied', 'deep', 'er', 'photo.jpg'), 'jpeg');
    for (const backend of [memory, local]) {
      await assert.rejects(Repository.init(backend, 'x', { kdf: TEST_KDF, cacheDir }), (e) =>
        isCofferError(e, 'REFUSED') && /Cannot initialise a repository at .*: it already holds other files, e\.g\. "(notes\.txt|deep\/er\/photo\.jpg)"/.test(e.message) && /--force/.test(e.hint ?? ''));
      assert.equal((await listAll(backend, '')).length, 1, 'nothing was written');
      const repo = await Repository.init(backend, 'x', { kdf: TEST_KDF, cacheDir, force: true });
      await repo.close();
      assert.equal((await Repository.open(backend, 'x', { noCache: true })).id, repo.id);
    }
    assert.equal((await memory.get('notes.txt')).toString(), 'mine');
    // An empty directory, or one that does not exist yet, is fine.
    await mkdir(join(dir, 'empty'));
    for (const path of ['empty', 'new/below']) await (await Repository.init(new LocalBackend(join(dir, path)), 'x', { kdf: TEST_KDF, cacheDir })).close();
  });

  it('open() with a wrong password fails with WRONG_PASSWORD', async (t) => {
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    await assert.rejects(Repository.open(tr.backend, 'wrong', { noCache: true }), (e) => isCofferError(e, 'WRONG_PASSWORD'));
  });

  it('open() of an empty location says there is no repository', async () => {
    await assert.rejects(Repository.open(new MemoryBackend(), 'x', { noCache: true }), (e) => isCofferError(e, 'NOT_FOUND'));
  });

  it('a second key opens the repository and the first can then be removed', async (t) => {
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const second = await tr.repo.addKey('second passphrase', { kdf: TEST_KDF });
    assert.equal((await tr.repo.listKeys()).length, 2);
    const r2 = await Repository.open(tr.backend, 'second passphrase', { noCache: true });
    t.after(() => r2.close());
    assert.equal(r2.keyId, second);
    assert.equal(r2.id, tr.repo.id);
    await assert.rejects(r2.removeKey(second), (e) => isCofferError(e, 'REFUSED'));
    await r2.removeKey(tr.repo.keyId);
    await assert.rejects(Repository.open(tr.backend, TEST_PASSWORD, { noCache: true }), (e) => isCofferError(e, 'WRONG_PASSWORD'));
  });

  it('backup then restore gives back identical files, links and modes', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await makeSourceTree(src);
    const tr = await makeTestRepo({ backend: new LocalBackend(join(dir, 'repo')) });
    t.after(() => tr.close());
    const res = await backup(tr.repo, tr.pool, [src]);
    assert.ok(res.snapshotId);
    assert.equal(res.warnings.length, 0);
    assert.ok(res.stats.packs > 1, 'small packs: the data spans several packs');
    // A second backup of the same data stores no new data: at most the trees of ancestor
    // directories (such as /tmp, whose mtime other tests change) are new.
    const again = await backup(tr.repo, tr.pool, [src]);
    assert.ok(again.summary.bytesNew < 2048, `${again.summary.bytesNew} new bytes`);

    const r2 = await tr.reopen();
    await r2.loadIndex();
    const snaps = await loadAllSnapshots(r2);
    assert.equal(snaps.length, 2);
    const target = join(dir, 'restore');
    await restore(r2, snaps[0]!.snapshot.tree, target);
    const restored = join(target, ...src.split('/').filter(Boolean));
    assert.deepEqual(await listTree(restored), await listTree(src));

    const c = await check(r2, { readData: true });
    assert.deepEqual(c.problems, []);
    assert.ok(c.ok);
    assert.ok(c.stats.packsRead > 1);
  });

  it('one repository handle and one worker pool serve several jobs at once: backups, a restore and a check overlap', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const srcs = [1, 2, 3].map((i) => join(dir, `src${i}`));
    for (const [i, s] of srcs.entries()) await makeSourceTree(s, 10 + i, 0.3);
    const first = await backup(tr.repo, tr.pool, [srcs[0]!]);
    // Every job on the same Repository and pool, at the same time.
    const [b2, b3, restored, c] = await Promise.all([
      backup(tr.repo, tr.pool, [srcs[1]!]),
      backup(tr.repo, tr.pool, [srcs[2]!]),
      restore(tr.repo, first.snapshot, join(dir, 'out1')),
      check(tr.repo),
      tr.repo.loadIndex(),
      tr.repo.loadIndex(),
    ]);
    assert.ok(b2.snapshotId && b3.snapshotId && restored.created.files > 0);
    assert.ok(c.ok, JSON.stringify(c.problems));
    await tr.repo.loadIndex();
    for (const [i, res] of [[1, b2], [2, b3]] as const) {
      await restore(tr.repo, res.snapshot, join(dir, `out${i + 1}`));
      assert.deepEqual(await listTree(join(dir, `out${i + 1}`, ...srcs[i]!.split('/').filter(Boolean))), await listTree(srcs[i]!));
    }
    assert.deepEqual(await listTree(join(dir, 'out1', ...srcs[0]!.split('/').filter(Boolean))), await listTree(srcs[0]!));
  });

  it('repair index recreates a lost index from the packs alone', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await makeSourceTree(src, 2);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    await backup(tr.repo, tr.pool, ['.'].map(() => src));
    for (const o of await listAll(tr.backend, INDEX_PREFIX)) await tr.backend.delete(o.name);
    const r2 = await tr.reopen();
    const broken = await check(r2);
    assert.equal(broken.ok, false);
    const res = await repairIndex(r2);
    assert.deepEqual(res.damagedPacks, []);
    assert.equal(res.lostFileCount, 0);
    assert.ok(res.blobs > 10);
    const r3 = await tr.reopen();
    const c = await check(r3, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    const [snap] = await loadAllSnapshots(r3);
    await r3.loadIndex();
    const target = join(dir, 'out');
    await restore(r3, snap!.snapshot.tree, target);
    assert.deepEqual(await listTree(join(target, ...src.split('/').filter(Boolean))), await listTree(src));
  });
});
