// The target directory of a restore is the snapshot's root: it gets the root's mode, owner,
// times and extended attributes like any restored directory, checked here with the real rsync
// (`rsync -naHAXc --numeric-ids` lists every difference in content or metadata) and with lstat.
// A restore of some paths only leaves an existing target's metadata as it was.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, chown, lstat, mkdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { validateSnapshot, type Snapshot } from '../src/repository/snapshot.ts';
import { readXattrs, writeXattrs } from '../src/sources/metadata.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { runCli } from './cli.ts';

const asRoot = process.getuid?.() === 0;
const OLD = new Date('2020-02-03T04:05:06Z');

/** What rsync would change to make `out` like `src`: one line per difference, none when equal. */
function rsyncDifferences(src: string, out: string): string[] {
  const r = spawnSync('rsync', ['-naHAXc', '--numeric-ids', '-i', `${src}/`, `${out}/`], { encoding: 'utf8' });
  assert.equal(r.error, undefined, 'rsync must be installed (.ci/run installs it)');
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter((l) => l !== '');
}

/** The metadata rsync -aAX compares, of one directory. */
async function meta(p: string) {
  const st = await lstat(p, { bigint: true });
  return { mode: st.mode & 0o7777n, uid: st.uid, gid: st.gid, mtimeNs: st.mtimeNs, xattrs: readXattrs(p) ?? [] };
}

/** A source tree whose root has a mode, owner (as root), mtime and xattr of its own. */
async function makeSource(dir: string): Promise<string> {
  const src = join(dir, 'src');
  await mkdir(join(src, 'a', 'b'), { recursive: true });
  await writeFile(join(src, 'a', 'f'), 'some content\n');
  await writeFile(join(src, 'top'), 'x'.repeat(100_000));
  await utimes(join(src, 'a', 'b'), OLD, OLD);
  await utimes(join(src, 'a'), OLD, OLD);
  writeXattrs(src, [{ name: 'user.coffer-test', value: Buffer.from('root of the snapshot').toString('base64') }]);
  if (asRoot) await chown(src, 1234, 5678);
  await chmod(src, 0o751);
  await utimes(src, OLD, OLD);
  return src;
}

async function setUp(t: { after(fn: () => unknown): void }) {
  const dir = await tempDir(t);
  const src = await makeSource(dir);
  const env = { COFFER_PASSWORD: 'x', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: join(dir, 'repo') };
  assert.equal((await runCli(['repo', 'init'], { env })).code, 0);
  const cli = async (args: string[], cwd?: string) => {
    const r = await runCli(args, { env, cwd });
    assert.equal(r.code, 0, r.stderr);
    return r;
  };
  return { dir, src, cli };
}

describe('restore gives the target directory the metadata of the snapshot root', () => {
  it('a backup of "." restores into a new directory that rsync finds identical, root included', async (t) => {
    const { dir, src, cli } = await setUp(t);
    await cli(['repo', 'backup', '.'], src);
    const out = join(dir, 'out');
    await cli(['repo', 'restore', 'latest', '--target', out]);
    assert.deepEqual(rsyncDifferences(src, out), []);
    assert.deepEqual(await meta(out), await meta(src));
  });

  it('a restore into an existing directory gives it the root metadata too, after the entries', async (t) => {
    const { dir, src, cli } = await setUp(t);
    await cli(['repo', 'backup', '.'], src);
    const out = join(dir, 'out');
    await mkdir(out, { mode: 0o700 });
    await cli(['repo', 'restore', 'latest', '--target', out]);
    assert.deepEqual(rsyncDifferences(src, out), []);
    // Again over the finished restore: nothing changes, the root's times included.
    await cli(['repo', 'restore', 'latest', '--target', out]);
    assert.deepEqual(rsyncDifferences(src, out), []);
  });

  it('a backup by absolute path restores that directory exactly, and the target gets the metadata of /', async (t) => {
    const { dir, src, cli } = await setUp(t);
    await cli(['repo', 'backup', src]);
    const out = join(dir, 'out');
    await cli(['repo', 'restore', 'latest', '--target', out]);
    assert.deepEqual(rsyncDifferences(src, join(out, ...src.split('/').filter(Boolean))), []);
    const [got, root] = [await meta(out), await meta('/')];
    assert.deepEqual({ ...got, xattrs: [] }, { ...root, xattrs: [] });
  });

  it('a restore of some paths (--include) or with --overwrite never leaves an existing target as it was', async (t) => {
    const { dir, src, cli } = await setUp(t);
    await cli(['repo', 'backup', '.'], src);
    const out = join(dir, 'out');
    await mkdir(out, { mode: 0o705 });
    const before = await meta(out);
    await cli(['repo', 'restore', 'latest', '--target', out, '--include', '/a']);
    assert.deepEqual(rsyncDifferences(join(src, 'a'), join(out, 'a')), []);
    assert.deepEqual({ ...(await meta(out)), mtimeNs: 0n }, { ...before, mtimeNs: 0n }, 'mode, owner and xattrs of the target unchanged');
    const out2 = join(dir, 'out2');
    await mkdir(out2, { mode: 0o705 });
    await utimes(out2, OLD, OLD);
    const before2 = await meta(out2);
    await cli(['repo', 'restore', 'latest', '--target', out2, '--overwrite', 'never']);
    assert.deepEqual({ ...(await meta(out2)), mtimeNs: 0n }, { ...before2, mtimeNs: 0n });
    // A path selection into a directory the restore creates: it is made as the root, like the
    // directories on the way to what was selected.
    const out3 = join(dir, 'out3');
    await cli(['repo', 'restore', 'latest', '--target', out3, '--include', '/a/f']);
    assert.deepEqual(await meta(out3), await meta(src));
  });

  it('a snapshot whose root metadata is malformed is refused as damaged', () => {
    const good: Snapshot = { version: 1, time: new Date().toISOString(), tree: 'a'.repeat(64), paths: ['/x'], host: { hostname: 'h', os: 'linux', arch: 'x64' }, username: 'u', tags: [], program: 'coffer', root: { mode: 0o755, uid: 0, gid: 0, mtimeNs: '1' } };
    assert.equal(validateSnapshot(good, 'id').root?.mode, 0o755);
    for (const root of [{ ...good.root, mode: 0o10000 }, { ...good.root, uid: -1 }, { ...good.root, mtimeNs: 'soon' }, { ...good.root, xattrs: [{ name: '', value: '' }] }, 'root']) {
      assert.throws(() => validateSnapshot({ ...good, root }, 'id'), (e: Error & { code?: string }) => e.code === 'CORRUPT' && /bad root metadata/.test(e.message));
    }
  });
});
