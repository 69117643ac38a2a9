// Crash safety: a backup process killed with SIGKILL at random points leaves a repository that
// passes check, and the next backup succeeds and restores intact.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { LocalBackend } from '../src/storage/local.ts';
import { Repository } from '../src/repository/repository.ts';
import { check } from '../src/repository/check.ts';
import { restore } from '../src/testing/jobs.ts';
import { loadAllSnapshots } from '../src/repository/snapshot.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes, rng } from '../src/testing/random.ts';
import { runCli } from './cli.ts';
import { listTree } from './helpers.ts';

describe('crash safety', () => {
  it('a writer killed with SIGKILL at random points never leaves a repository that fails check', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 24; i++) await writeFile(join(src, `f${i}.bin`), randomBytes(500 + i, 1_000_000 + i * 7919));
    const repoDir = join(dir, 'repo');
    const env = { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_WORKERS: '2' };
    const init = await runCli(['repo', 'init', '--repo', repoDir, '--chunk-min', '16384', '--chunk-avg', '65536', '--chunk-max', '262144', '--pack-size', '1'], { env });
    assert.equal(init.code, 0, init.stderr);
    const r = rng(42);
    let killed = 0;
    for (let round = 0; round < 6; round++) {
      // Die at a random point: early rounds after a random delay (start-up, session, index
      // loading), later ones once a random share of the data has gone through (progress events),
      // which does not depend on how fast the machine is.
      const delay = 100 + Math.floor(r() * 600);
      const threshold = Math.floor(r() * 20_000_000);
      const what = round < 2 ? `${delay} ms` : `${threshold} bytes read`;
      const res = round < 2
        ? await runCli(['repo', 'backup', '--repo', repoDir, src], { env, killAfterMs: delay })
        : await runCli(['--json', 'repo', 'backup', '--repo', repoDir, src], {
            env,
            signal: 'SIGKILL',
            signalWhen: (out) => [...out.matchAll(/"bytesScanned":(\d+)/g)].some((m) => Number(m[1]) >= threshold),
          });
      if (res.signal === 'SIGKILL') killed++;
      else assert.equal(res.code, 0, res.stderr);
      const repo = await Repository.open(new LocalBackend(repoDir), 'pw', { noCache: true });
      const c = await check(repo);
      await repo.close();
      assert.ok(c.ok, `after a kill at ${what}: ${JSON.stringify(c.problems.filter((p) => p.severity === 'error'))}`);
    }
    assert.ok(killed >= 4, `only ${killed} of 6 runs were killed mid-way: the data set is too small to test anything`);
    const final = await runCli(['repo', 'backup', '--repo', repoDir, src], { env });
    assert.equal(final.code, 0, final.stderr);
    const repo = await Repository.open(new LocalBackend(repoDir), 'pw', { noCache: true });
    t.after(() => repo.close());
    const c = await check(repo, { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    const snaps = await loadAllSnapshots(repo);
    await repo.loadIndex();
    await restore(repo, snaps.at(-1)!.snapshot.tree, join(dir, 'out'));
    assert.deepEqual(await listTree(join(dir, 'out', ...src.split('/').filter(Boolean))), await listTree(src));
  });
});
