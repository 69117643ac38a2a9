// Damage tolerance (issue #8): a damaged or odd repository must never make Coffer lose what can
// still be read, stop unrelated work, or report success for data it did not store. Each test
// replays one reproduction from the issue through the real command line.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { spawn } from 'node:child_process';
import { MAIN, runCli, type CliResult } from './cli.ts';
import { checkJsonOutput } from '../src/cli/json-schema.ts';
import { listTree } from './helpers.ts';
import { Repository } from '../src/repository/repository.ts';
import { LocalBackend } from '../src/storage/local.ts';
import type { IndexEntry } from '../src/repository/index/index-file.ts';

/** Runs `coffer repo ...` against one repository in `dir`. */
function repoEnv(dir: string, extra: Record<string, string> = {}): Record<string, string> {
  return { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: join(dir, 'repo'), ...extra };
}

function repoCli(dir: string, extra: Record<string, string> = {}): (...args: string[]) => Promise<CliResult> {
  const env = repoEnv(dir, extra);
  return (...args) => runCli(['repo', ...args], { env });
}

function ok(r: CliResult, what: string): CliResult {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stderr}`);
  return r;
}

describe('damage tolerance', () => {
  it('a damaged snapshot object is reported and skipped by listings and backups, blocks prune with a clear message, and can be forgotten by id', async (t) => {
    const dir = await tempDir(t);
    const c = repoCli(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'f'), randomBytes(1, 300_000));
    ok(await c('init'), 'init');
    ok(await c('backup', src), 'first backup');
    ok(await c('backup', src), 'second backup');
    const ids = (await readdir(join(dir, 'repo', 'snapshots'))).sort();
    assert.equal(ids.length, 2);
    const bad = ids[0]!;
    await writeFile(join(dir, 'repo', 'snapshots', bad), randomBytes(2, 300));

    let r = await c('snapshots');
    assert.equal(r.code, 3, 'listed with a warning');
    assert.match(r.stdout, new RegExp(ids[1]!.slice(0, 12)), 'the readable snapshot is listed');
    assert.match(r.stderr, new RegExp(`snapshot ${bad.slice(0, 12)} is unreadable.*forget ${bad.slice(0, 12)}`));

    r = ok(await c('backup', src), 'a backup with a damaged snapshot in the repository');
    assert.match(r.stderr, new RegExp(`note: snapshot ${bad.slice(0, 12)} is unreadable`));
    assert.match(r.stdout, /parent/, 'the parent search found the readable snapshot');

    r = await c('prune');
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`Cannot prune: snapshot ${bad.slice(0, 12)} is unreadable`));
    assert.match(r.stderr, /nothing was deleted/);

    ok(await c('forget', bad), 'forget the damaged snapshot by its full id');
    ok(await c('prune'), 'prune after the damaged snapshot is gone');
    r = ok(await c('snapshots'), 'listing');
    assert.match(r.stdout, /2 snapshot\(s\)/);
    ok(await c('check', '--read-data'), 'check');
  });

  it('a backup process stopped (SIGSTOP) longer than the stale time while a prune runs fails clearly when continued, and the repository stays whole', async (t) => {
    const dir = await tempDir(t);
    // Seconds instead of minutes: heartbeats every 0.3 s, stale after 3 s.
    const timing = { COFFER_SESSION_HEARTBEAT_MS: '300', COFFER_SESSION_STALE_MS: '3000' };
    const c = repoCli(dir, timing);
    const old = join(dir, 'old');
    const src = join(dir, 'src');
    await mkdir(old);
    await mkdir(src);
    const reused = randomBytes(11, 8_000_000);
    await writeFile(join(old, 'reused'), reused);
    await writeFile(join(src, 'reused'), reused);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `new${i}`), randomBytes(20 + i, 8_000_000));
    ok(await c('init'), 'init');
    ok(await c('backup', old), 'backup of the data the next backup reuses');
    ok(await c('forget', (await readdir(join(dir, 'repo', 'snapshots')))[0]!), 'forget it');

    const child = spawn(process.execPath, [MAIN, '--json', 'repo', 'backup', src], { env: { ...process.env, ...repoEnv(dir, timing) }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (d) => {
        stdout += d;
        if (stdout.includes('"progress"') && !child.killed) {
          child.kill('SIGSTOP');
          resolve();
        }
      });
    });
    await new Promise((r) => setTimeout(r, 4000));
    const p = ok(await c('prune'), 'prune while the backup is stopped');
    assert.match(p.stdout, /deleted [1-9]\d* pack/, 'the prune took the stopped backup for dead');
    child.kill('SIGCONT');
    assert.equal(await exited, 1, `the continued backup must fail: ${stdout}\n${stderr}`);
    // With --json the error is the output's final line (docs/json.md), not text on stderr.
    const final = checkJsonOutput('repo backup', stdout, 1).at(-1)!;
    assert.equal(final.type, 'error');
    assert.match(String(final.message), /Cannot commit: this backup was paused or cut off from the repository/);
    assert.equal((await readdir(join(dir, 'repo', 'snapshots'))).length, 0, 'nothing was committed');
    ok(await c('check', '--read-data'), 'the repository is whole: no index lists a deleted pack');
    ok(await c('backup', src), 'the backup run again');
    const out = join(dir, 'out');
    ok(await c('restore', 'latest', '--target', out), 'restore');
    assert.deepEqual(await listTree(join(out, ...src.split('/').filter(Boolean))), await listTree(src));
    ok(await c('check', '--read-data'), 'check after');
  });

  it('one truncated pack no longer stops a restore: every readable file comes back, each lost one is named with its pack and blob, and --salvage writes NAME.damaged', async (t) => {
    const dir = await tempDir(t);
    const c = repoCli(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 93; i++) await writeFile(join(src, `f${i}`), randomBytes(100 + i, 3000 + ((i * 7919) % 30000)));
    await writeFile(join(src, 'big'), randomBytes(99, 5_000_000));
    ok(await c('init', '--pack-size', '1'), 'init');
    ok(await c('backup', src), 'backup');
    const largest = await largestDataPack(dir);
    await truncate(largest.path, Math.floor(largest.size / 2));

    const out = join(dir, 'out');
    let r = await c('restore', 'latest', '--target', out);
    assert.equal(r.code, 1, r.stderr);
    const lostNames = [...r.stderr.matchAll(/^warning: (\S+): .*in pack ([0-9a-f]{12})/gm)];
    assert.ok(lostNames.length >= 1, r.stderr);
    for (const m of lostNames) assert.equal(m[2], largest.hex.slice(0, 12), 'the damaged pack is named');
    assert.match(r.stderr, /data blob [0-9a-f]{12} in pack/);
    const restored = join(out, ...src.split('/').filter(Boolean));
    const lost = new Set(lostNames.map((m) => m[1]!.split('/').at(-1)!));
    const want = await listTree(src);
    const got = await listTree(restored);
    for (const [name, e] of want) {
      if (lost.has(name)) assert.ok(!got.has(name), `${name} is not written under its name`);
      else assert.deepEqual(got.get(name), e, `${name} is restored intact`);
    }
    assert.equal(got.size + lost.size, 94, 'every file is either restored intact or named as lost');
    assert.deepEqual([...got.keys()].filter((n) => n.startsWith('.coffer-restore-')), [], 'no temporary file is left');

    const out2 = join(dir, 'out2');
    r = await c('restore', 'latest', '--target', out2, '--salvage');
    assert.equal(r.code, 1, 'a salvaging restore still fails');
    const salvaged = await listTree(join(out2, ...src.split('/').filter(Boolean)));
    for (const name of lost) {
      assert.ok(!salvaged.has(name));
      assert.equal(salvaged.get(name + '.damaged')?.size, want.get(name)!.size, `${name}.damaged has the file's size`);
    }
  });

  it('damage found by check leaves the index for writers: the next backup stores the data again, and old snapshots restore again', async (t) => {
    const dir = await tempDir(t);
    const c = repoCli(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'rand'), randomBytes(5, 5_000_000));
    ok(await c('init'), 'init');
    ok(await c('backup', src), 'backup');
    const first = (await readdir(join(dir, 'repo', 'snapshots')))[0]!;
    // Four bytes inside data chunks (a damaged tree heals only if a backup makes the same tree again).
    const [pack] = await listPacks(join(dir, 'repo'));
    const data = (await indexEntries(dir)).filter((e) => e.type === 'data').sort((a, b) => b.length - a.length);
    const bytes = await readFile(pack!.path);
    for (const e of data.slice(0, 2)) for (const at of [e.offset + 10, e.offset + 11]) bytes[at]! ^= 0x55;
    await writeFile(pack!.path, bytes);

    let r = await c('check', '--read-data');
    assert.equal(r.code, 1);
    assert.match(r.stdout, /blob [0-9a-f]{12} in pack [0-9a-f]{12} is damaged/);
    assert.match(r.stdout, /recorded the damage/);
    r = ok(await c('backup', '--force', src), 'backup --force of the intact source');
    assert.doesNotMatch(r.stdout, /new after dedup 0 B/, 'the damaged chunks are stored again');
    for (const snap of [first.slice(0, 12), 'latest']) {
      const out = join(dir, `out-${snap}`);
      ok(await c('restore', snap, '--target', out), `restore ${snap}`);
      assert.deepEqual(await listTree(join(out, ...src.split('/').filter(Boolean))), await listTree(src), `snapshot ${snap} restores whole`);
    }
    r = ok(await c('check', '--read-data'), 'check: the damaged pack has a good copy of everything');
    assert.match(r.stdout, /warning: .*nothing is lost/);
  });

  it('a pack deleted from storage: once check has seen it, the next backup stores its data again instead of referencing the missing pack', async (t) => {
    const dir = await tempDir(t);
    const c = repoCli(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a'), randomBytes(6, 3_000_000));
    ok(await c('init', '--pack-size', '1'), 'init');
    ok(await c('backup', src), 'backup');
    await rm((await largestDataPack(dir)).path);
    const r = await c('check');
    assert.equal(r.code, 1);
    assert.match(r.stdout, /missing from storage/);
    ok(await c('backup', src), 'backup without --force: the unchanged file is read again, as its data is gone');
    const out = join(dir, 'out');
    ok(await c('restore', 'latest', '--target', out), 'restore latest');
    assert.deepEqual(await listTree(join(out, ...src.split('/').filter(Boolean))), await listTree(src));
    ok(await c('check'), 'check after: the old snapshot is whole again');
  });

  it('rebuild-index (repair index) keeps what a truncated pack still holds: the snapshot restores all but the files it names', async (t) => {
    const dir = await tempDir(t);
    const c = repoCli(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 93; i++) await writeFile(join(src, `f${i}`), randomBytes(200 + i, 3000 + ((i * 7919) % 30000)));
    await writeFile(join(src, 'big'), randomBytes(299, 5_000_000));
    ok(await c('init', '--pack-size', '1'), 'init');
    ok(await c('backup', src), 'backup');
    const largest = await largestDataPack(dir);
    await truncate(largest.path, Math.floor(largest.size / 2));
    const report = join(dir, 'report.json');
    const r = await c('rebuild-index', '--report', report);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, new RegExp(`pack ${largest.hex.slice(0, 12)}: trailer unreadable .* kept \\d+ of the \\d+ blobs`));
    const named = JSON.parse(await readFile(report, 'utf8')).lostFiles.map((f: { path: string }) => f.path.split('/').at(-1));
    const out = join(dir, 'out');
    const restored = await c('restore', 'latest', '--target', out);
    const want = await listTree(src);
    const got = await listTree(join(out, ...src.split('/').filter(Boolean)));
    for (const [name, e] of want) {
      if (named.includes(name)) assert.ok(!got.has(name));
      else assert.deepEqual(got.get(name), e, `${name} restores after the index repair`);
    }
    assert.equal(restored.code, named.length ? 1 : 0);
    assert.ok(got.size > 0, 'the snapshot is restorable');
  });
});


/** The packs of a local repository, with their ids. */
async function listPacks(repo: string): Promise<Array<{ path: string; hex: string; size: number }>> {
  const out: Array<{ path: string; hex: string; size: number }> = [];
  for (const d of await readdir(join(repo, 'data'))) {
    for (const f of await readdir(join(repo, 'data', d))) out.push({ path: join(repo, 'data', d, f), hex: f, size: (await stat(join(repo, 'data', d, f))).size });
  }
  return out;
}

/** Every blob location the repository's index lists (read through the library). */
async function indexEntries(dir: string): Promise<Array<IndexEntry & { pack: string }>> {
  const repo = await Repository.open(new LocalBackend(join(dir, 'repo')), 'pw', { noCache: true });
  try {
    await repo.loadIndex();
    return [...repo.index.entries()].map((e) => ({ ...e.entry, pack: e.packId.toString('hex') }));
  } finally {
    await repo.close();
  }
}

/** The largest pack that holds no tree (damaging trees makes whole directories go: another test). */
async function largestDataPack(dir: string): Promise<{ path: string; hex: string; size: number }> {
  const withTrees = new Set((await indexEntries(dir)).filter((e) => e.type === 'tree').map((e) => e.pack));
  return (await listPacks(join(dir, 'repo'))).filter((p) => !withTrees.has(p.hex)).sort((a, b) => b.size - a.size)[0]!;
}