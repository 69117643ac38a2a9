// A repository on a local directory and the local index cache are private to their owner: key
// files and the config would let anyone who copies them guess the passphrase offline, and the
// cache lists which chunks the repository holds. Files 0600, directories 0700, whatever the umask.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { backup } from '../src/testing/jobs.ts';
import { WorkerPool } from '../src/engine/pool.ts';
import { Repository } from '../src/repository/repository.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { TEST_CHUNKER, TEST_KDF, TEST_PASSWORD } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { makeSourceTree } from './helpers.ts';

/** `dir` and every path below it: permission bits and whether it is a directory. */
async function modes(dir: string): Promise<Map<string, { mode: number; isDir: boolean }>> {
  const out = new Map<string, { mode: number; isDir: boolean }>();
  for (const path of [dir, ...(await readdir(dir, { recursive: true })).map((name) => join(dir, name))]) {
    const st = await stat(path);
    out.set(path, { mode: st.mode & 0o777, isDir: st.isDirectory() });
  }
  return out;
}

describe('permissions', () => {
  it('init and backup create the repository and the index cache with files 0600 and directories 0700, whatever the umask', async (t) => {
    const dir = await tempDir(t);
    await makeSourceTree(join(dir, 'src'), 3, 0.2);
    const root = join(dir, 'repo');
    const cacheDir = join(dir, 'cache');
    const old = process.umask(0);
    t.after(() => process.umask(old));
    const repo = await Repository.init(new LocalBackend(root), TEST_PASSWORD, { kdf: TEST_KDF, chunker: TEST_CHUNKER, packSize: 256 * 1024, cacheDir });
    const pool = await WorkerPool.create({ keys: repo.keys, chunker: repo.config.chunker, level: repo.config.compressionLevel, workers: 1 });
    try {
      await backup(repo, pool, [join(dir, 'src')]);
    } finally {
      await pool.close();
      await repo.close();
    }
    // A second session loads the index files into the cache file.
    const again = await Repository.open(new LocalBackend(root), TEST_PASSWORD, { cacheDir });
    await again.loadIndex();
    await again.close();
    process.umask(old);
    for (const top of [root, cacheDir]) {
      const all = await modes(top);
      assert.ok([...all.values()].some((m) => !m.isDir), `${top} holds files`);
      for (const [path, { mode, isDir }] of all) assert.equal(mode.toString(8), isDir ? '700' : '600', path);
    }
    for (const name of ['config', 'keys', 'data', 'index', 'snapshots']) assert.ok((await modes(root)).has(join(root, name)), `${name} was written`);
  });
});
