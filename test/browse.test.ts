// Browsing snapshots: ls, find across snapshots, diff (skipping unchanged subtrees) and dump
// (byte-exact to stdout through the real CLI).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { chmod, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { isCofferError } from '../src/core/errors.ts';
import { backup } from '../src/testing/jobs.ts';
import { diffTrees, dumpFile, findInSnapshots, listSnapshot, lookupPath, modeString } from '../src/jobs/browse.ts';
import type { Repository } from '../src/repository/repository.ts';
import type { SnapshotRef } from '../src/repository/snapshot.ts';
import { setTimesNs } from '../src/sources/metadata.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { makeTestRepo, TEST_PASSWORD, type TestRepo } from '../src/testing/repo.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { MAIN, runCli } from './cli.ts';

interface Fixture {
  dir: string;
  src: string;
  tr: TestRepo;
  repoDir: string;
  s1: SnapshotRef;
  s2: SnapshotRef;
}

/** Two snapshots of one tree: between them files change, go, come, and change mode or mtime only. */
async function fixture(t: { after(fn: () => unknown): void }): Promise<Fixture> {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  for (let i = 0; i < 8; i++) {
    await mkdir(join(src, 'keep', `k${i}`), { recursive: true });
    await writeFile(join(src, 'keep', `k${i}`, 'f.txt'), `keep ${i}`);
  }
  await mkdir(join(src, 'sub'));
  await writeFile(join(src, 'a.txt'), 'alpha');
  await writeFile(join(src, 'b.txt'), 'bravo');
  await writeFile(join(src, 'mode.txt'), 'mode');
  await writeFile(join(src, 'touch.txt'), 'touch');
  await writeFile(join(src, 'sub', 'db.sql'), randomBytes(11, 300_000));
  await symlink('a.txt', join(src, 'link'));
  const repoDir = join(dir, 'repo');
  const tr = await makeTestRepo({ backend: new LocalBackend(repoDir) });
  t.after(() => tr.close());
  const r1 = await backup(tr.repo, tr.pool, [src]);
  await writeFile(join(src, 'a.txt'), 'alpha, longer now');
  await rm(join(src, 'b.txt'));
  await writeFile(join(src, 'new.txt'), 'new');
  await mkdir(join(src, 'newdir'));
  await writeFile(join(src, 'newdir', 'x.sql'), 'select 1;');
  await chmod(join(src, 'mode.txt'), 0o600);
  setTimesNs(join(src, 'touch.txt'), { mtimeNs: '1234567890000000000' });
  await rm(join(src, 'link'));
  await mkdir(join(src, 'link'));
  await writeFile(join(src, 'link', 'inner'), 'inner');
  const r2 = await backup(tr.repo, tr.pool, [src]);
  await tr.repo.loadIndex();
  return { dir, src, tr, repoDir, s1: { id: r1.snapshotId!, snapshot: r1.snapshot }, s2: { id: r2.snapshotId!, snapshot: r2.snapshot } };
}

/** Counts the trees a repository reads. */
function countTreeReads(repo: Repository): { count: number } {
  const counter = { count: 0 };
  const original = repo.readBlob.bind(repo);
  repo.readBlob = (type, id, options) => {
    if (type === 'tree') counter.count++;
    return original(type, id, options);
  };
  return counter;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function runRaw(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => chunks.push(d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(chunks), stderr }));
  });
}

describe('browse', () => {
  it('ls lists a directory, everything below it, or one file; bad paths fail cleanly', async (t) => {
    const { src, tr, s1 } = await fixture(t);
    const tree = s1.snapshot.tree;
    const top = await collect(listSnapshot(tr.repo, tree, src));
    assert.deepEqual(top.map((e) => e.path), ['a.txt', 'b.txt', 'keep', 'link', 'mode.txt', 'sub', 'touch.txt'].map((n) => `${src}/${n}`));
    assert.equal(top.find((e) => e.path.endsWith('/link'))!.node.linkTarget, 'a.txt');
    const all = await collect(listSnapshot(tr.repo, tree, src + '/', { recursive: true }));
    assert.equal(all.length, 7 + 16 + 1);
    assert.ok(all.findIndex((e) => e.path === `${src}/keep/k0`) < all.findIndex((e) => e.path === `${src}/keep/k0/f.txt`), 'depth first');
    const one = await collect(listSnapshot(tr.repo, tree, `${src}/sub/db.sql`));
    assert.deepEqual(one.map((e) => [e.path, e.node.size]), [[`${src}/sub/db.sql`, 300_000]]);
    assert.equal((await lookupPath(tr.repo, tree, '/')).tree, tree);
    await assert.rejects(lookupPath(tr.repo, tree, `${src}/nope`), (e) => isCofferError(e, 'NOT_FOUND') && e.message.includes('/nope'));
    await assert.rejects(lookupPath(tr.repo, tree, `${src}/a.txt/x`), (e) => isCofferError(e, 'NOT_FOUND') && /is a file/.test(e.message));
    await assert.rejects(lookupPath(tr.repo, tree, `${src}/../etc`), (e) => isCofferError(e, 'USAGE'));
    assert.equal(modeString({ type: 'dir', mode: 0o1755 }), 'drwxr-xr-t');
    assert.equal(modeString({ type: 'file', mode: 0o4644 }), '-rwSr--r--');
  });

  it('find searches every snapshot by name, glob or path, and skips subtrees it searched before', async (t) => {
    const { src, tr, s1, s2 } = await fixture(t);
    const found = async (pattern: string) => (await collect(findInSnapshots(tr.repo, [s1, s2], pattern))).map((m) => `${m.snapshot === s1.id ? 1 : 2} ${m.path.slice(src.length)}`);
    assert.deepEqual(await found('*.sql'), ['1 /sub/db.sql', '2 /newdir/x.sql', '2 /sub/db.sql']);
    assert.deepEqual(await found('b.txt'), ['1 /b.txt']);
    assert.deepEqual(await found(`${src}/*/*.sql`), ['1 /sub/db.sql', '2 /newdir/x.sql', '2 /sub/db.sql']);
    assert.deepEqual(await found('**/keep/k[0-1]'), ['1 /keep/k0', '1 /keep/k1', '2 /keep/k0', '2 /keep/k1']);
    assert.deepEqual(await found('link'), ['1 /link', '2 /link']);
    assert.deepEqual(await found('nothing-like-this'), []);
    // The unchanged keep/ subtree (9 trees) is searched in the first snapshot only: the second
    // reads the trees down to src/, then sub/ (it holds a match), newdir/ and link/.
    const levels = src.split('/').filter(Boolean).length + 1;
    const reads = countTreeReads(tr.repo);
    await collect(findInSnapshots(tr.repo, [s1], '*.sql'));
    const once = reads.count;
    assert.equal(once, levels + 9 + 1);
    reads.count = 0;
    await collect(findInSnapshots(tr.repo, [s1, s2], '*.sql'));
    assert.equal(reads.count - once, levels + 3);
  });

  it('diff reports added, removed, modified and metadata-only changes, and skips identical subtrees', async (t) => {
    const { src, tr, s1, s2 } = await fixture(t);
    const reads = countTreeReads(tr.repo);
    const changes = (await collect(diffTrees(tr.repo, s1.snapshot.tree, s2.snapshot.tree))).map((d) => `${d.change} ${d.path.slice(src.length)}${d.what ? ` ${d.what.join(',')}` : ''}`);
    assert.deepEqual(changes, [
      'modified /a.txt size,content,mtime',
      'removed /b.txt',
      'modified /link type symlink → dir',
      'added /link/inner',
      'metadata /mode.txt mode',
      'added /new.txt',
      'added /newdir',
      'added /newdir/x.sql',
      'metadata /touch.txt mtime',
    ]);
    // The path down to src/ (one tree per level) and the new directories: never keep/ or sub/.
    const levels = src.split('/').filter(Boolean).length + 1;
    assert.equal(reads.count, 2 * levels + 2);
    reads.count = 0;
    assert.deepEqual(await collect(diffTrees(tr.repo, s2.snapshot.tree, s2.snapshot.tree)), []);
    assert.equal(reads.count, 0);
    const back = await collect(diffTrees(tr.repo, s2.snapshot.tree, s1.snapshot.tree));
    assert.deepEqual(back.filter((d) => d.change === 'removed').map((d) => d.path.slice(src.length)), ['/link/inner', '/new.txt', '/newdir', '/newdir/x.sql']);
  });

  it('dump streams a file blob by blob and refuses directories and links', async (t) => {
    const { src, tr, s1 } = await fixture(t);
    const at = await lookupPath(tr.repo, s1.snapshot.tree, `${src}/sub/db.sql`);
    const parts: Buffer[] = [];
    const n = await dumpFile(tr.repo, at.node!, at.path, (b) => void parts.push(b), { readAhead: 2 });
    assert.equal(n, 300_000);
    assert.ok(parts.length > 3, 'several blobs, written one at a time');
    assert.ok(Buffer.concat(parts).equals(randomBytes(11, 300_000)));
    const dir = await lookupPath(tr.repo, s1.snapshot.tree, `${src}/sub`);
    await assert.rejects(dumpFile(tr.repo, dir.node!, dir.path, () => {}), (e) => isCofferError(e, 'USAGE') && /is a directory/.test(e.message) && /coffer repo ls/.test(e.hint!));
    const link = await lookupPath(tr.repo, s1.snapshot.tree, `${src}/link`);
    await assert.rejects(dumpFile(tr.repo, link.node!, link.path, () => {}), (e) => isCofferError(e, 'USAGE') && /a\.txt/.test(e.message));
  });

  it('the CLI: dump is byte-exact on stdout; ls, find and diff print JSON lines', async (t) => {
    const { dir, src, repoDir, s1, s2 } = await fixture(t);
    const env = { COFFER_PASSWORD: TEST_PASSWORD, COFFER_REPOSITORY: repoDir, COFFER_CACHE_DIR: join(dir, 'cache') };
    const dump = await runRaw(['repo', 'dump', s1.id.slice(0, 8), `${src}/sub/db.sql`], env);
    assert.equal(dump.code, 0, dump.stderr);
    assert.ok(dump.stdout.equals(randomBytes(11, 300_000)), `dump gave ${dump.stdout.length} bytes`);
    const dirDump = await runRaw(['repo', 'dump', 'latest', `${src}/sub`], env);
    assert.equal(dirDump.code, 2);
    assert.match(dirDump.stderr, /Cannot dump .*\/sub: it is a directory\n.*coffer repo ls/);
    assert.equal(dirDump.stdout.length, 0);

    const ls = await runCli(['--json', 'repo', 'ls', 'latest', src, '--recursive'], { env });
    assert.equal(ls.code, 0, ls.stderr);
    const entries = ls.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(entries.some((e) => e.path === `${src}/newdir/x.sql` && e.type === 'node' && e.nodeType === 'file' && e.size === 9 && e.permissions === '-rw-r--r--'));
    const long = await runCli(['repo', 'ls', 'latest', `${src}/mode.txt`, '--long'], { env });
    assert.match(long.stdout, /^-rw------- .* 4 {2}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d {2}.*\/mode\.txt\n$/);
    const find = await runCli(['--json', 'repo', 'find', '*.sql'], { env });
    assert.equal(find.code, 0, find.stderr);
    assert.deepEqual(find.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'match').map((m) => [m.snapshot, m.path.slice(src.length)]), [
      [s1.id, '/sub/db.sql'],
      [s2.id, '/newdir/x.sql'],
      [s2.id, '/sub/db.sql'],
    ]);
    const diff = await runCli(['--json', 'repo', 'diff', s1.id, s2.id], { env });
    assert.equal(diff.code, 0, diff.stderr);
    const lines = diff.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.at(-1), { type: 'summary', from: s1.id, to: s2.id, added: 4, removed: 1, modified: 2, metadata: 2, exitCode: 0 });
    assert.ok(lines.some((l) => l.change === 'removed' && l.path === `${src}/b.txt`));
  });
});
