// Backup behaviour: incremental runs read only what changed, excludes, files that change while
// read, streams from commands, names that are not UTF-8, disk images, Ctrl-C.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { appendFile, chmod, mkdir, readdir, readFile, realpath, stat, writeFile, open as fsOpen, truncate, symlink, unlink } from 'node:fs/promises';
import { isCofferError } from '../src/core/errors.ts';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { loadAllSnapshots } from '../src/repository/snapshot.ts';
import { loadTree } from '../src/repository/walk.ts';
import type { Repository } from '../src/repository/repository.ts';
import type { TreeNode } from '../src/repository/tree.ts';
import { writeXattrs } from '../src/sources/metadata.ts';
import { listAll } from '../src/storage/backend.ts';
import { makeTestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { runCli } from './cli.ts';

/** The node at a snapshot path like "/a/b" (names as UTF-8). */
async function nodeAt(repo: Repository, tree: string, path: string): Promise<TreeNode | undefined> {
  let nodes = (await loadTree(repo, tree)).nodes;
  const segs = path.split('/').filter(Boolean);
  for (let i = 0; i < segs.length; i++) {
    const n = nodes.find((x) => x.name === segs[i]);
    if (!n || i === segs.length - 1) return n;
    nodes = (await loadTree(repo, n.subtree!)).nodes;
  }
  return undefined;
}

/** Runs `fn` with `dir` as the working directory (relative backup paths). */
async function inDir<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const before = process.cwd();
  process.chdir(dir);
  try {
    return await fn();
  } finally {
    process.chdir(before);
  }
}

/** sl/real/inner/f and sl/link -> real: the layout of issue #8's report. */
async function linkLayout(dir: string) {
  const sl = join(dir, 'sl');
  await mkdir(join(sl, 'real', 'inner'), { recursive: true });
  await writeFile(join(sl, 'real', 'inner', 'f'), 'data below the link');
  await chmod(join(sl, 'real'), 0o750);
  await symlink('real', join(sl, 'link'));
  return { sl, link: join(sl, 'link'), inner: join(sl, 'link', 'inner'), realInner: await realpath(join(sl, 'real', 'inner')) };
}

describe('backup', () => {
  it('an incremental backup reads only the files that changed', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    for (let i = 0; i < 20; i++) await writeFile(join(src, 'd', `f${i}`), randomBytes(i, 50_000));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const first = await backup(tr.repo, tr.pool, [src]);
    assert.equal(first.summary.filesNew, 20);
    await appendFile(join(src, 'd', 'f3'), 'more');
    await writeFile(join(src, 'd', 'new'), 'brand new');
    const second = await backup(tr.repo, tr.pool, [src]);
    assert.equal(second.parent, first.snapshotId);
    assert.equal(second.summary.filesUnchanged, 19);
    assert.equal(second.summary.filesChanged, 1);
    assert.equal(second.summary.filesNew, 1);
    assert.equal(second.summary.bytesRead, 50_004 + 9);
    assert.equal(second.summary.bytesScanned, 20 * 50_000 + 4 + 9);
    // Nothing changed since: the directory's tree is the parent's, reused as it is.
    const third = await backup(tr.repo, tr.pool, [src]);
    assert.equal(third.summary.filesUnchanged, 21);
    assert.equal((await nodeAt(tr.repo, third.snapshot.tree, src))!.subtree, (await nodeAt(tr.repo, second.snapshot.tree, src))!.subtree);
    const forced = await backup(tr.repo, tr.pool, [src], { parent: 'none' });
    assert.equal(forced.summary.filesUnchanged, 0);
    assert.equal(forced.summary.bytesNew < 2048, true, 'nothing new to store');
  });

  it('an incremental backup keeps unchanged symlinks and sees a symlink replaced with another target', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await symlink('target-one', join(src, 'moving'));
    await symlink('/etc/steady', join(src, 'steady'));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    await backup(tr.repo, tr.pool, [src]);
    await unlink(join(src, 'moving'));
    await symlink('target-two', join(src, 'moving'));
    const r = await backup(tr.repo, tr.pool, [src]);
    assert.equal((await nodeAt(tr.repo, r.snapshot.tree, `${src}/moving`))?.linkTarget, 'target-two');
    assert.equal((await nodeAt(tr.repo, r.snapshot.tree, `${src}/steady`))?.linkTarget, '/etc/steady');
  });

  it('excludes patterns, cache directories and marked directories', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(join(src, 'logs'), { recursive: true });
    await mkdir(join(src, 'cache'), { recursive: true });
    await mkdir(join(src, 'private'), { recursive: true });
    await writeFile(join(src, 'keep.txt'), 'keep');
    await writeFile(join(src, 'logs', 'a.log'), 'log');
    await writeFile(join(src, 'logs', 'b.txt'), 'txt');
    await writeFile(join(src, 'cache', 'CACHEDIR.TAG'), 'Signature: 8a477f597d28d172789f06886806bc55\n');
    await writeFile(join(src, 'cache', 'blob'), 'cached');
    await writeFile(join(src, 'private', '.nobackup'), '');
    await writeFile(join(src, 'private', 'secret'), 'secret');
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const r = await backup(tr.repo, tr.pool, [src], { patterns: ['*.log'], excludeCaches: true, excludeIfPresent: ['.nobackup'] });
    const base = src;
    assert.ok(await nodeAt(tr.repo, r.snapshot.tree, `${base}/keep.txt`));
    assert.ok(await nodeAt(tr.repo, r.snapshot.tree, `${base}/logs/b.txt`));
    assert.equal(await nodeAt(tr.repo, r.snapshot.tree, `${base}/logs/a.log`), undefined);
    const cache = await nodeAt(tr.repo, r.snapshot.tree, `${base}/cache`);
    assert.equal(cache?.type, 'dir', 'the excluded directory itself is kept, empty');
    assert.equal(await nodeAt(tr.repo, r.snapshot.tree, `${base}/cache/blob`), undefined);
    assert.equal(await nodeAt(tr.repo, r.snapshot.tree, `${base}/private/secret`), undefined);
  });

  it('a file that changes while it is read is kept as read, flagged and reported', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'busy.db'), randomBytes(1, 300_000));
    await writeFile(join(src, 'calm.txt'), 'calm');
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const r = await backup(tr.repo, tr.pool, [src], {
      afterFileRead: async (p) => {
        if (p.endsWith('busy.db')) await appendFile(p, 'written during the backup');
      },
    });
    assert.ok(r.snapshotId, 'the snapshot is committed');
    assert.deepEqual(r.warnings.map((w) => w.path), [join(src, 'busy.db')]);
    assert.match(r.warnings[0]!.problem, /changed while it was read/);
    const n = await nodeAt(tr.repo, r.snapshot.tree, `${src}/busy.db`);
    assert.equal(n?.changedWhileRead, true);
    assert.equal(n?.size, 300_000, 'stored as read');
    // The next backup reads it again rather than trusting the flagged copy.
    const again = await backup(tr.repo, tr.pool, [src]);
    assert.equal(again.summary.filesChanged, 1);
  });

  it('a command that fails commits no snapshot; one that succeeds stores its output', async (t) => {
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    await assert.rejects(
      backup(tr.repo, tr.pool, [], { stream: { name: 'db.sql', command: 'echo partial dump; echo boom >&2; exit 3' } }),
      (e) => isCofferError(e) && /exited with code 3/.test(e.message) && /boom/.test(e.hint ?? ''),
    );
    assert.equal((await loadAllSnapshots(tr.repo)).length, 0);
    const ok = await backup(tr.repo, tr.pool, [], { stream: { name: 'db.sql', command: 'seq 1 100000' } });
    const n = await nodeAt(tr.repo, ok.snapshot.tree, '/db.sql');
    assert.equal(n?.type, 'file');
    const expected = Array.from({ length: 100000 }, (_, i) => `${i + 1}\n`).join('');
    assert.equal(n?.size, Buffer.byteLength(expected));
    const parts = await Promise.all(n!.content!.map((c) => tr.repo.readBlob('data', Buffer.from(c, 'hex'))));
    assert.equal(Buffer.concat(parts).toString(), expected);
  });

  it('names that are not valid UTF-8 keep their bytes', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    const raw = Buffer.concat([Buffer.from(src + '/'), Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74])]);
    await writeFile(raw, 'bytes');
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const r = await backup(tr.repo, tr.pool, [src]);
    const parent = await nodeAt(tr.repo, r.snapshot.tree, src);
    const kids = (await loadTree(tr.repo, parent!.subtree!)).nodes;
    assert.equal(kids.length, 1);
    assert.deepEqual(Buffer.from(kids[0]!.rawName!, 'base64'), Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74]));
  });

  it('a disk image is stored in fixed-size chunks (--image-chunking fixed) with its zero blocks as holes', async (t) => {
    const dir = await tempDir(t);
    const img = join(dir, 'disk.img');
    const fh = await fsOpen(img, 'w');
    await fh.write(randomBytes(5, 100_000), 0, 100_000, 0);
    await fh.write(randomBytes(6, 100_000), 0, 100_000, 3 * 1024 * 1024);
    await fh.close();
    await truncate(img, 8 * 1024 * 1024);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const r = await backup(tr.repo, tr.pool, [img], { images: true, imageChunking: 'fixed' });
    const n = await nodeAt(tr.repo, r.snapshot.tree, img);
    assert.equal(n?.size, 8 * 1024 * 1024);
    assert.equal(n?.sparse, true);
    assert.equal(n?.content?.length, 8, 'one chunk per 1 MiB block');
    // Two blocks with data and one zero block: the other five zero blocks are the same blob.
    assert.ok(r.summary.bytesNew <= 3 * 1024 * 1024 + 4096, `${r.summary.bytesNew} new bytes`);
  });

  it('images cut content-defined (the default) find data at other offsets that fixed blocks miss; restored images are the same bytes', async (t) => {
    const dir = await tempDir(t);
    const data = randomBytes(7, 3 * 1024 * 1024);
    const a = join(dir, 'a.img');
    const b = join(dir, 'b.img');
    // The same 3 MiB in both images, at offset 0 in one and 12 KiB in the other (block-aligned
    // for a file system, not for 1 MiB chunks); both 8 MiB with the rest a hole.
    for (const [path, at] of [[a, 0], [b, 12 * 1024]] as const) {
      const fh = await fsOpen(path, 'w');
      await fh.write(data, 0, data.length, at);
      await fh.close();
      await truncate(path, 8 * 1024 * 1024);
    }
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const fixed = await backup(tr.repo, tr.pool, [a, b], { images: true, imageChunking: 'fixed', parent: 'none' });
    assert.ok(fixed.summary.bytesNew > 5 * 1024 * 1024, `fixed blocks store the data twice: ${fixed.summary.bytesNew} new bytes`);
    const tr2 = await makeTestRepo();
    t.after(() => tr2.close());
    const cdc = await backup(tr2.repo, tr2.pool, [a, b], { images: true, parent: 'none' });
    assert.ok(cdc.summary.bytesNew < 4.5 * 1024 * 1024, `content-defined chunks store it about once: ${cdc.summary.bytesNew} new bytes`);
    for (const img of [a, b]) {
      const n = await nodeAt(tr2.repo, cdc.snapshot.tree, img);
      assert.equal(n?.size, 8 * 1024 * 1024);
      assert.equal(n?.sparse, true, 'the zero tail makes it sparse');
    }
    const out = join(dir, 'out');
    await restore(tr2.repo, cdc.snapshot, out);
    for (const img of [a, b]) {
      const back = join(out, img);
      assert.deepEqual(await readFile(back), await readFile(img), `${img} comes back byte for byte`);
      assert.ok((await stat(back)).blocks * 512 < 8 * 1024 * 1024, 'and sparse');
    }
  });

  it('a path below a symlink that is backed up too is refused before anything is read, naming both paths', async (t) => {
    const dir = await tempDir(t);
    const { sl, link, inner, realInner } = await linkLayout(dir);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const refused = async (paths: string[], outer: string, below: string) => {
      await assert.rejects(backup(tr.repo, tr.pool, paths), (e) => {
        assert.ok(isCofferError(e, 'USAGE'), String(e));
        assert.ok(e.message.startsWith(`Cannot back up ${below} together with ${outer}: `), e.message);
        assert.match(e.message, /is a symlink/);
        assert.ok(e.hint?.includes(realInner), e.hint);
        return true;
      }, paths.join(' '));
    };
    await refused([link, inner], link, inner);
    await refused([inner, link], link, inner);
    // Relative forms, and "." whose entry `link` is the symlink.
    await inDir(sl, async () => {
      await refused(['link', './link/inner'], 'link', './link/inner');
      await refused(['./link/', 'link/inner/'], './link/', 'link/inner/');
      await refused(['.', 'link/inner'], '.', 'link/inner');
    });
    assert.deepEqual(await loadAllSnapshots(tr.repo), [], 'no snapshot');
    assert.deepEqual(await listAll(tr.backend, 'data/'), [], 'nothing read or stored');
    // What the hint says works: the link as a link, and the data by its real path.
    const ok = await backup(tr.repo, tr.pool, [link, realInner]);
    assert.equal((await nodeAt(tr.repo, ok.snapshot.tree, link))?.type, 'symlink');
    assert.equal((await nodeAt(tr.repo, ok.snapshot.tree, join(realInner, 'f')))?.size, 19);
    // The path through the link alone: the link is stored as the directory it points to.
    const through = await backup(tr.repo, tr.pool, [inner]);
    const asDir = await nodeAt(tr.repo, through.snapshot.tree, link);
    assert.equal(asDir?.type, 'dir');
    assert.equal(asDir?.mode, 0o750, "the directory's own mode, not the link's");
    assert.equal((await nodeAt(tr.repo, through.snapshot.tree, join(inner, 'f')))?.type, 'file');
  });

  it('a wide root "." (thousands of entries, subdirectories, empty files, a path given below it) is stored whole, each entry once, in name order', async (t) => {
    const dir = await tempDir(t);
    const names: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const name = `e${(i * 7919) % 3000}`;
      names.push(name);
      if (i % 500 === 0) {
        await mkdir(join(dir, name, 'inner'), { recursive: true });
        await writeFile(join(dir, name, 'inner', 'f'), `file in ${name}`);
      } else await writeFile(join(dir, name), i % 3 === 0 ? `content ${i}` : '');
    }
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const given = names.find((n, i) => i % 500 === 0 && i > 0)!;
    const r = await inDir(dir, () => backup(tr.repo, tr.pool, ['.', `${given}/inner`], { parent: 'none' }));
    assert.equal(r.warnings.length, 0);
    const top = (await loadTree(tr.repo, r.snapshot.tree)).nodes;
    assert.deepEqual(top.map((n) => n.name), [...names].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))));
    assert.equal(top.filter((n) => n.type === 'dir').length, 6);
    assert.equal(r.summary.filesNew, 3000 - 6 + 6, 'every file once, the empty ones too');
    assert.equal((await nodeAt(tr.repo, r.snapshot.tree, `/${given}/inner/f`))?.size, `file in ${given}`.length);
    const empty = top.find((n) => n.type === 'file' && n.size === 0)!;
    assert.deepEqual(empty.content, []);
    // The same again from its parent: no entry changed, so every tree is the parent's.
    const again = await inDir(dir, () => backup(tr.repo, tr.pool, ['.', `${given}/inner`]));
    assert.equal(again.snapshot.tree, r.snapshot.tree);
    assert.equal(again.summary.filesUnchanged, 3000);
  });

  it('a directory backed up with paths below it stores them all, whatever the order, excludes or markers', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    const a = join(src, 'a');
    await mkdir(join(a, 'b', 'c'), { recursive: true });
    for (const f of ['keep.txt', 'x.log', 'other.log', 'b/bfile', 'b/.nobackup', 'b/c/f']) await writeFile(join(a, f), f);
    writeXattrs(a, [{ name: 'user.tag', value: Buffer.from('a').toString('base64') }]);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const alone = await backup(tr.repo, tr.pool, [a], { parent: 'none' });
    const subtree = async (r: { snapshot: { tree: string } }) => (await nodeAt(tr.repo, r.snapshot.tree, a))!.subtree;
    // Listed instead of walked, `a` holds the very same tree, in either order.
    for (const paths of [[a, join(a, 'b', 'c')], [join(a, 'b', 'c'), a], [join(a, 'b'), a, join(a, 'b', 'c', 'f')]]) {
      const r = await backup(tr.repo, tr.pool, paths, { parent: 'none' });
      assert.equal(await subtree(r), await subtree(alone), paths.join(' '));
      assert.equal(r.summary.filesNew, alone.summary.filesNew, 'each file read once');
      assert.deepEqual((await nodeAt(tr.repo, r.snapshot.tree, a))?.xattrs, [{ name: 'user.tag', value: Buffer.from('a').toString('base64') }]);
    }
    // Paths given are stored even where the outer walk's excludes and markers would leave them out.
    const ex = await backup(tr.repo, tr.pool, [a, join(a, 'x.log'), join(a, 'b', 'c')], { patterns: ['*.log'], excludeIfPresent: ['.nobackup'] });
    const has = async (p: string) => (await nodeAt(tr.repo, ex.snapshot.tree, join(a, p))) !== undefined;
    assert.deepEqual(await Promise.all(['keep.txt', 'x.log', 'other.log', 'b/c/f', 'b/bfile'].map(has)), [true, true, false, true, false]);
    // The same path in other forms is stored and read once.
    const twice = await backup(tr.repo, tr.pool, [a, `${a}/`, join(a, '.')], { parent: 'none' });
    assert.equal(twice.summary.filesNew, alone.summary.filesNew);
    // Relative paths and ".": the entries of the working directory, with a path below one of them.
    await inDir(src, async () => {
      const rel = await backup(tr.repo, tr.pool, ['.', 'a/b/c'], { parent: 'none' });
      assert.equal(await subtree(await backup(tr.repo, tr.pool, [a], { parent: 'none' })), await subtree(alone));
      assert.equal((await nodeAt(tr.repo, rel.snapshot.tree, '/a/b/c/f'))?.type, 'file');
      assert.equal((await nodeAt(tr.repo, rel.snapshot.tree, '/a/keep.txt'))?.type, 'file');
    });
    // Two different directories that would be one entry of the snapshot are refused.
    const cwd = join(dir, 'cwd');
    await mkdir(join(cwd, src.slice(1)), { recursive: true });
    await inDir(cwd, () => assert.rejects(backup(tr.repo, tr.pool, [src, src.slice(1)]), (e) => isCofferError(e, 'USAGE') && e.message.includes(`both would be ${src} in the snapshot`)));
  });

  it('the CLI refuses a symlink with a path beneath it (exit 2) and stores a directory with one beneath it', async (t) => {
    const dir = await tempDir(t);
    const { sl, link, inner, realInner } = await linkLayout(dir);
    const repoDir = join(dir, 'repo');
    const env = { COFFER_PASSWORD: 'pw', COFFER_REPOSITORY: repoDir, COFFER_CACHE_DIR: join(dir, 'cache') };
    assert.equal((await runCli(['repo', 'init'], { env })).code, 0);
    let r = await runCli(['repo', 'backup', link, inner], { env });
    assert.equal(r.code, 2, r.stderr);
    assert.ok(r.stderr.includes(`Cannot back up ${inner} together with ${link}: ${link} is a symlink`), r.stderr);
    assert.ok(r.stderr.includes(realInner), r.stderr);
    r = await runCli(['repo', 'backup', '.', 'link/inner'], { env, cwd: sl });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /Cannot back up link\/inner together with \.: .*\/link \(inside \.\) is a symlink/);
    assert.deepEqual(await readdir(join(repoDir, 'snapshots')).catch(() => []), [], 'no snapshot');
    r = await runCli(['repo', 'backup', join(sl, 'real'), realInner], { env });
    assert.equal(r.code, 0, r.stderr);
    r = await runCli(['repo', 'find', 'f'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes(join(realInner, 'f')), r.stdout);
  });

  it('Ctrl-C stops cleanly with exit code 130 and the next run reuses what was uploaded', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 80; i++) await writeFile(join(src, `f${i}`), randomBytes(900 + i, 1_000_000));
    const repoDir = join(dir, 'repo');
    const env = { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_WORKERS: '1' };
    assert.equal((await runCli(['repo', 'init', '--repo', repoDir, '--pack-size', '1'], { env })).code, 0);
    // Interrupt once a quarter of the data is stored (progress events on stdout).
    const r = await runCli(['--json', 'repo', 'backup', '--repo', repoDir, src], {
      env,
      signal: 'SIGINT',
      signalWhen: (out) => [...out.matchAll(/"bytesNew":(\d+)/g)].some((m) => Number(m[1]) > 20_000_000),
    });
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /stopping cleanly|Cancelled/);
    const next = await runCli(['--json', 'repo', 'backup', '--repo', repoDir, src], { env });
    assert.equal(next.code, 0, next.stderr);
    const summary = next.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((e) => e.type === 'summary');
    assert.ok(summary.bytesNew < 75_000_000, `the second run stored ${summary.bytesNew} bytes: nothing was reused`);
  });
});
