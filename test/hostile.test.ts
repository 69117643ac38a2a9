// Hostile and damaged input: truncated, garbage and crafted objects in a repository give a
// clean CofferError (never a crash, a hang or a write outside the restore target).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readdir, mkdir, symlink } from 'node:fs/promises';
import { CofferError, isCofferError } from '../src/core/errors.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import { listAll } from '../src/storage/backend.ts';
import { chunkId, toHex } from '../src/engine/hash.ts';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { check } from '../src/repository/check.ts';
import { repairIndex } from '../src/repository/repair.ts';
import { BlobSaver } from '../src/repository/packer.ts';
import { Repository } from '../src/repository/repository.ts';
import { decodeTree } from '../src/repository/tree.ts';
import { makeTestRepo, TEST_PASSWORD } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { makeSourceTree } from './helpers.ts';

function mutations(original: Buffer): Buffer[] {
  const cuts = [0, 1, 7, 16, 31, 44, 60, Math.floor(original.length / 2), original.length - 1];
  return [
    ...cuts.filter((c) => c < original.length).map((c) => original.subarray(0, c)),
    randomBytes(9, original.length),
    Buffer.concat([original, randomBytes(10, 33)]),
    Buffer.from('{"nodes": [' + '{"name": "x"},'.repeat(1000) + ']}'),
    Buffer.from('\0'.repeat(100)),
  ];
}

async function expectClean(what: string, fn: () => Promise<unknown>): Promise<void> {
  const t0 = Date.now();
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof CofferError, `${what}: threw a ${(e as Error)?.constructor?.name}: ${(e as Error)?.stack}`);
  }
  assert.ok(Date.now() - t0 < 20_000, `${what}: took too long`);
}

describe('hostile input', () => {
  it('damaged config, key files, index files, snapshots and packs give clean errors', async (t) => {
    const dir = await tempDir(t);
    await makeSourceTree(join(dir, 'src'), 4, 0.2);
    const backend = new MemoryBackend();
    const tr = await makeTestRepo({ backend });
    t.after(() => tr.close());
    await backup(tr.repo, tr.pool, [join(dir, 'src')]);
    const names = (await listAll(backend, '')).map((o) => o.name).filter((n) => !n.startsWith('sessions/'));
    // repair index repairs the repository; every mutation starts again from this state.
    const saved = new Map<string, Buffer>();
    for (const n of names) saved.set(n, await backend.get(n));
    const resetState = async () => {
      for (const o of await listAll(backend, '')) if (!saved.has(o.name)) await backend.delete(o.name);
      for (const [n, b] of saved) await backend.put(n, b);
    };
    const pick = (prefix: string) => names.find((n) => n.startsWith(prefix))!;
    for (const name of ['config', pick('keys/'), pick('index/'), pick('snapshots/'), pick('data/')]) {
      const original = await backend.get(name);
      for (const [i, bad] of mutations(original).entries()) {
        await resetState();
        await backend.put(name, bad);
        const what = `${name} mutation ${i}`;
        await expectClean(what, async () => {
          const r = await Repository.open(backend, TEST_PASSWORD, { noCache: true });
          try {
            const c = await check(r, { readData: true });
            if (name !== 'config' && !name.startsWith('keys/')) assert.equal(c.ok, false, `${what} went unnoticed`);
            await repairIndex(r).catch((e) => {
              if (!(e instanceof CofferError)) throw e;
            });
          } finally {
            await r.close();
          }
        });
      }
      await backend.put(name, original);
    }
  });

  it('decodeTree() rejects traversal names, duplicates, bad ids and wrong types', () => {
    const base = { type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: '0', size: 0, content: [] };
    const bad = [
      [{ ...base, name: '..' }],
      [{ ...base, name: '.' }],
      [{ ...base, name: '' }],
      [{ ...base, name: 'a/b' }],
      [{ ...base, name: '/etc' }],
      [{ ...base, name: 'a\0b' }],
      [{ ...base, name: 'x', rawName: Buffer.from('../../x').toString('base64') }],
      [{ ...base, name: 'a' }, { ...base, name: 'a' }],
      [{ ...base, name: 'b' }, { ...base, name: 'a' }],
      [{ ...base, name: 'x', content: ['../../etc/passwd'] }],
      [{ ...base, name: 'x', type: 'dir', content: undefined, subtree: 'nope' }],
      [{ ...base, name: 'x', type: 'weird' }],
      [{ ...base, name: 'x', mode: -1 }],
      [{ ...base, name: 'x', size: -5 }],
    ];
    for (const nodes of bad) {
      assert.throws(() => decodeTree(Buffer.from(JSON.stringify({ nodes }))), (e) => isCofferError(e, 'CORRUPT'), JSON.stringify(nodes));
    }
    assert.throws(() => decodeTree(Buffer.from('{"nodes": 5}')), (e) => isCofferError(e, 'CORRUPT'));
    assert.throws(() => decodeTree(Buffer.from('not json')), (e) => isCofferError(e, 'CORRUPT'));
  });

  it('restoring a crafted snapshot writes nothing outside the target', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const saver = new BlobSaver(tr.repo, tr.pool);
    const data = Buffer.from('owned\n');
    const dataId = chunkId(tr.repo.keys.chunkIdKey, data);
    await saver.save('data', dataId, data);
    const file = (name: string) => ({ name, type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: '0', size: data.length, content: [toHex(dataId)] });
    const saveRawTree = async (nodes: unknown[]) => {
      const raw = Buffer.from(JSON.stringify({ nodes }));
      const id = chunkId(tr.repo.keys.chunkIdKey, raw);
      await saver.save('tree', id, raw);
      return toHex(id);
    };
    const traversal = await saveRawTree([file('../escaped')]);
    const absolute = await saveRawTree([file('/tmp/escaped-abs')]);
    const link = await saveRawTree([{ name: 'evil', type: 'symlink', mode: 0o777, uid: 0, gid: 0, mtimeNs: '0', linkTarget: join(dir, 'outside') }]);
    const fileUnderLink = await saveRawTree([file('x')]);
    await saver.flush();
    await tr.repo.loadIndex();
    const target = join(dir, 'target');
    for (const tree of [traversal, absolute]) {
      await assert.rejects(restore(tr.repo, tree, target), (e) => isCofferError(e, 'CORRUPT'));
    }
    // A symlink in the snapshot is restored as a link, and nothing is written through it.
    await mkdir(join(dir, 'outside'));
    await restore(tr.repo, link, target);
    // A pre-existing symlinked directory in the target is never followed.
    await symlink(join(dir, 'outside'), join(target, 'sub'));
    const parent = await saveRawTree([{ name: 'sub', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: '0', subtree: fileUnderLink }]);
    await saver.flush();
    await tr.repo.loadIndex();
    await assert.rejects(restore(tr.repo, parent, target), (e) => isCofferError(e, 'REFUSED'));
    assert.deepEqual(await readdir(join(dir, 'outside')), []);
    assert.deepEqual((await readdir(dir)).sort(), ['outside', 'target']);
  });
});
