// Temporary files of interrupted restores: the next restore into the same directories removes
// them and says how many, touches nothing else, and keeps those that a restore running at the same
// time may still be writing.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { Session } from '../src/repository/session.ts';
import { makeTestRepo } from '../src/testing/repo.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { runCli } from './cli.ts';
import { makeSourceTree } from './helpers.ts';

const TEMP = /^\.coffer-restore-[0-9a-f]{16}$/;

/** Every name below `dir` (relative) that looks like a restore's temporary file. */
async function temps(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).filter((p) => TEMP.test(p.split('/').at(-1)!)).sort();
}

describe('temporary files of interrupted restores', () => {
  it('a restore removes those in the directories it restores into, names exactly of their form only, and reports how many', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await makeSourceTree(src, 4, 0.1);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const snap = (await backup(tr.repo, tr.pool, [src])).snapshot;
    const out = join(dir, 'out');
    await restore(tr.repo, snap, out, { pool: tr.pool });
    const inside = join(out, ...src.split('/').filter(Boolean));
    const planted = [join(out, '.coffer-restore-00000000000000aa'), join(inside, '.coffer-restore-0123456789abcdef'), join(inside, 'sub', '.coffer-restore-fedcba9876543210')];
    await writeFile(planted[0]!, 'half a file');
    await writeFile(planted[1]!, 'half a file');
    await symlink('somewhere', planted[2]!);
    const strangers = ['.coffer-restore-0123456789abcde', '.coffer-restore-0123456789ABCDEF', '.coffer-restore-0123456789abcdef.keep', 'coffer-restore-0123456789abcdef'];
    for (const name of strangers) await writeFile(join(inside, name), 'not ours');
    await mkdir(join(inside, '.coffer-restore-1111111111111111'));
    await mkdir(join(out, 'elsewhere'));
    await writeFile(join(out, 'elsewhere', '.coffer-restore-2222222222222222'), 'not where the restore goes');

    const dry = await restore(tr.repo, snap, out, { pool: tr.pool, dryRun: true });
    assert.deepEqual(dry.staleTemps, { removed: 3, kept: 0 });
    assert.match(dry.notices.join('\n'), /would remove 3 temporary files \(\.coffer-restore-\*\)/);
    assert.equal((await temps(out)).length, 5, 'a dry run removes nothing');

    const res = await restore(tr.repo, snap, out, { pool: tr.pool });
    assert.deepEqual(res.staleTemps, { removed: 3, kept: 0 });
    assert.match(res.notices.join('\n'), /removed 3 temporary files \(\.coffer-restore-\*\) left by an earlier restore that was interrupted/);
    assert.deepEqual(res.warnings, []);
    assert.deepEqual(await temps(out), ['elsewhere/.coffer-restore-2222222222222222', `${inside.slice(out.length + 1)}/.coffer-restore-1111111111111111`].sort());
    for (const name of strangers) assert.equal((await readdir(inside)).includes(name), true, `${name} is kept`);

    const again = await restore(tr.repo, snap, out, { pool: tr.pool });
    assert.deepEqual(again.staleTemps, { removed: 0, kept: 0 });
    assert.equal(again.notices.length, 0);
  });

  it('while another restore of the repository runs, young ones are kept and reported, old ones removed', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a.txt'), 'a');
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const snap = (await backup(tr.repo, tr.pool, [src])).snapshot;
    const out = join(dir, 'out');
    await mkdir(out);
    const temp = join(out, '.coffer-restore-abcdefabcdefabcd');
    await writeFile(temp, 'being written by the other restore');
    const other = await Session.start(tr.repo, 'restore');
    const kept = await restore(tr.repo, snap, out, { pool: tr.pool });
    assert.deepEqual(kept.staleTemps, { removed: 0, kept: 1 });
    assert.match(kept.notices.join('\n'), /left 1 temporary file \(\.coffer-restore-\*\) in place: another restore of this repository is running/);
    assert.deepEqual(await temps(out), ['.coffer-restore-abcdefabcdefabcd']);
    // Older than the limit: stale whatever runs.
    const old = await restore(tr.repo, snap, out, { pool: tr.pool, staleTempMs: 0 });
    assert.deepEqual(old.staleTemps, { removed: 1, kept: 0 });
    assert.deepEqual(await temps(out), []);
    await other.end();
  });

  it('the restore after one killed with SIGKILL removes everything the killed one left, and says so', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}.bin`), randomBytes(i, 8_000_000));
    const env = { COFFER_PASSWORD: 'x', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: join(dir, 'repo') };
    assert.equal((await runCli(['repo', 'init', '--pack-size', '1'], { env })).code, 0);
    assert.equal((await runCli(['repo', 'backup', src], { env })).code, 0);
    const out = join(dir, 'out');
    // Killed once the first file is in place, while others are being written (most runs leave
    // some). The killed restore's session object stays behind; its process is gone, so it does
    // not count as a restore that is running.
    const killed = await runCli(['--json', 'repo', 'restore', 'latest', '--target', out, '-v'], { env, signal: 'SIGKILL', signalWhen: (s) => /"nodeType":"file"/.test(s) });
    assert.equal(killed.signal, 'SIGKILL', killed.stderr);
    const left = await temps(out);
    const r = await runCli(['--json', 'repo', 'restore', 'latest', '--target', out], { env });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.find((l) => l.type === 'summary').staleTemps, { removed: left.length, kept: 0 });
    if (left.length) assert.ok(lines.some((l) => l.type === 'notice' && /removed \d+ temporary files? .* interrupted/.test(l.message)));
    assert.deepEqual(await temps(out), []);
    assert.equal((await readdir(join(out, ...src.split('/').filter(Boolean)))).length, 6);
  });
});
