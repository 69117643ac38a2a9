// Damage tolerance (issue #8): a damaged or odd repository must never make Coffer lose what can
// still be read, stop unrelated work, or report success for data it did not store. Each test
// replays one reproduction from the issue through the real command line.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { spawn } from 'node:child_process';
import { MAIN, runCli, type CliResult } from './cli.ts';
import { checkJsonOutput } from '../src/cli/json-schema.ts';
import { listTree } from './helpers.ts';

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
});
