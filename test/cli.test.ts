// The `coffer` command line: help everywhere, exit codes, --json, clear errors without stack
// traces, and a backup → restore round trip through the real binary.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { basename, join } from 'node:path';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { buildProgram } from '../src/cli/main.ts';
import { localHostIdentity } from '../src/sources/host.ts';
import type { Command } from 'commander';
import { tempDir } from '../src/testing/tmp.ts';
import { MAIN, runCli } from './cli.ts';
import { listTree, makeSourceTree } from './helpers.ts';

function allCommands(c: Command, prefix: string[] = []): string[][] {
  return c.commands.flatMap((s) => [[...prefix, s.name()], ...allCommands(s, [...prefix, s.name()])]);
}

describe('coffer CLI', () => {
  it('--help works on every command and subcommand', async () => {
    const cmds = allCommands(buildProgram());
    assert.ok(cmds.length >= 12);
    for (const c of [[], ...cmds]) {
      const r = await runCli([...c, '--help']);
      assert.equal(r.code, 0, `${c.join(' ')} --help: ${r.stderr}`);
      assert.match(r.stdout, /Usage: coffer/);
    }
  });

  it('the bin launcher works from the pinned Node and from an older system node, and keeps exit codes', () => {
    const launcher = join(import.meta.dirname, '..', 'bin', 'coffer.mjs');
    const nodes = [process.execPath, ...['/usr/bin/node', '/usr/local/bin/node'].filter((n) => existsSync(n))];
    for (const node of nodes) {
      const ok = spawnSync(node, [launcher, '--version'], { encoding: 'utf8' });
      assert.equal(ok.status, 0, `${node}: ${ok.stderr}`);
      assert.match(ok.stdout, /^\d+\.\d+\.\d+/);
      const bad = spawnSync(node, [launcher, 'repo', 'snapshots', '--no-such-option'], { encoding: 'utf8' });
      assert.equal(bad.status, 2);
    }
  });

  it('a usage error exits 2 and says what is wrong', async () => {
    const r = await runCli(['repo', 'snapshots', '--no-such-option']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown option/);
    const r2 = await runCli(['repo', 'snapshots'], { env: { COFFER_REPOSITORY: '' } });
    assert.equal(r2.code, 2);
    assert.match(r2.stderr, /no --repo given/);
    assert.doesNotMatch(r2.stderr, /at .*\.ts:\d+/, 'no stack trace without --debug');
    const r3 = await runCli(['repo', 'backup', '--repo', '/nonexistent', '--image', '--image-chunking', 'rolling', '/x.img']);
    assert.equal(r3.code, 2);
    assert.match(r3.stderr, /--image-chunking "rolling": give fixed or cdc/);
    const r4 = await runCli(['repo', 'backup', '--repo', '/nonexistent', '--image-chunking', 'cdc', '/x']);
    assert.equal(r4.code, 2);
    assert.match(r4.stderr, /without --image/);
  });

  it('init, backup, snapshots, restore and check work end to end with --json', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await makeSourceTree(src, 6, 0.3);
    const repo = join(dir, 'repo');
    const env = { COFFER_PASSWORD: 'secret', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: repo };
    let r = await runCli(['--json', 'repo', 'init'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(JSON.parse(r.stdout).id, /^[0-9a-f]{64}$/);
    r = await runCli(['--json', 'repo', 'backup', src, '--tag', 'first'], { env });
    assert.equal(r.code, 0, r.stderr);
    const summary = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((e) => e.type === 'summary');
    assert.ok(summary.bytesScanned > 1_000_000);
    assert.match(summary.snapshot, /^[0-9a-f]{64}$/);
    r = await runCli(['--json', 'repo', 'snapshots', '--tag', 'first'], { env });
    const snaps = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((e) => e.type === 'snapshot');
    assert.equal(snaps.length, 1);
    assert.equal(snaps[0].id, summary.snapshot);
    r = await runCli(['repo', 'restore', 'latest', '--target', join(dir, 'out')], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await listTree(join(dir, 'out', ...src.split('/').filter(Boolean))), await listTree(src));
    r = await runCli(['--json', 'repo', 'check', '--read-data', '--subset', '50%'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout.trim().split('\n').at(-1)!).ok, true);
  });

  it('a reader that goes away (| head) neither crashes a command nor stops its work', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 2500; i++) await writeFile(join(src, `file-with-a-rather-long-name-${String(i).padStart(5, '0')}.txt`), `${i}`);
    const env = { ...process.env, COFFER_PASSWORD: 'x', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: join(dir, 'repo') };
    assert.equal((await runCli(['repo', 'init'], { env })).code, 0);
    assert.equal((await runCli(['repo', 'backup', src], { env })).code, 0);
    // -v lists every entry (over 64 KiB): the pipe closes long before the restore ends.
    const sh = `"${process.execPath}" "${MAIN}" repo restore latest --target "${join(dir, 'out')}" -v | head -c 100 >/dev/null; echo "exit=\${PIPESTATUS[0]}"`;
    const r = spawnSync('bash', ['-c', sh], { env, encoding: 'utf8' });
    assert.match(r.stdout, /exit=0/, r.stderr);
    assert.doesNotMatch(r.stderr, /EPIPE|Unhandled/);
    assert.equal((await readdir(join(dir, 'out', ...src.split('/').filter(Boolean)))).length, 2500, 'the restore went on to the end');
  });

  it('backup --host NAME records that name and keeps the machine id', async (t) => {
    const machineId = localHostIdentity().machineId;
    const dir = await tempDir(t);
    await writeFile(join(dir, 'file'), 'x');
    const env = { COFFER_PASSWORD: 'x', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: join(dir, 'repo') };
    assert.equal((await runCli(['repo', 'init'], { env })).code, 0);
    const r = await runCli(['repo', 'backup', '--host', 'renamed', join(dir, 'file')], { env });
    assert.equal(r.code, 0, r.stderr);
    const lines = (await runCli(['--json', 'repo', 'snapshots', '--host', 'renamed'], { env })).stdout.trim().split('\n').map((l) => JSON.parse(l));
    const snap = lines.find((l) => l.type === 'snapshot');
    assert.equal(snap.host.hostname, 'renamed');
    assert.equal(snap.host.machineId, machineId);
  });

  it('a wrong password exits 1 with a hint and no stack trace', async (t) => {
    const dir = await tempDir(t);
    const repo = join(dir, 'repo');
    await runCli(['repo', 'init', '--repo', repo], { env: { COFFER_PASSWORD: 'right' } });
    const r = await runCli(['repo', 'snapshots', '--repo', repo], { env: { COFFER_PASSWORD: 'wrong' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /password is wrong/);
    assert.doesNotMatch(r.stderr, /\.ts:\d+/);
  });

  it('repo init into a directory that holds other files is refused before the passphrase prompt, and done with --force', async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, 'notes.txt'), 'mine');
    // No COFFER_PASSWORD and no terminal: asking for a passphrase would fail with exit code 2.
    let r = await runCli(['repo', 'init', '--repo', dir], { env: { COFFER_PASSWORD: '', COFFER_CACHE_DIR: join(dir, 'cache') } });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /Cannot initialise a repository at .*: it already holds other files, e\.g\. "notes\.txt"/);
    assert.match(r.stderr, /--force/);
    assert.deepEqual(await readdir(dir), ['notes.txt']);
    r = await runCli(['repo', 'init', '--repo', dir, '--force'], { env: { COFFER_PASSWORD: 'x', COFFER_CACHE_DIR: join(dir, '..', `${basename(dir)}-cache`) } });
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readdir(dir)).includes('config'));
  });

  it('password from a file and from a command', async (t) => {
    const dir = await tempDir(t);
    const repo = join(dir, 'repo');
    await writeFile(join(dir, 'pw'), 'from-file\n');
    let r = await runCli(['repo', 'init', '--repo', repo, '--password-file', join(dir, 'pw')], { env: { COFFER_PASSWORD: '' } });
    assert.equal(r.code, 0, r.stderr);
    r = await runCli(['repo', 'key', 'list', '--repo', repo], { env: { COFFER_PASSWORD: '', COFFER_PASSWORD_COMMAND: `cat ${join(dir, 'pw')}` } });
    assert.equal(r.code, 0, r.stderr);
    r = await runCli(['repo', 'key', 'list', '--repo', repo], { env: { COFFER_PASSWORD: '', COFFER_PASSWORD_COMMAND: 'false' } });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /COFFER_PASSWORD_COMMAND failed/);
  });

  it('a backup of a path that does not exist fails with exit code 1 and names it', async (t) => {
    const dir = await tempDir(t);
    const repo = join(dir, 'repo');
    const env = { COFFER_PASSWORD: 'x', COFFER_CACHE_DIR: join(dir, 'cache') };
    await runCli(['repo', 'init', '--repo', repo], { env });
    const r = await runCli(['repo', 'backup', '--repo', repo, join(dir, 'does-not-exist')], { env });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /does-not-exist/);
  });
});
