// Damage tolerance (issue #8): a damaged or odd repository must never make Coffer lose what can
// still be read, stop unrelated work, or report success for data it did not store. Each test
// replays one reproduction from the issue through the real command line.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { runCli, type CliResult } from './cli.ts';

/** Runs `coffer repo ...` against one repository in `dir`. */
function repoCli(dir: string): (...args: string[]) => Promise<CliResult> {
  const env = { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: join(dir, 'repo') };
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
});
