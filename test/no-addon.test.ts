// Coffer without its native addon, as after `npm ci` on a machine without a C compiler: the real
// CLI runs with COFFER_NATIVE_PATH at a file that does not exist. A backup and a restore of
// ordinary data succeed (exit 0) after one notice that says what is lost and how to get the
// addon; what truly needs the addon (a FIFO to create) is a warning that names it. Runs in both
// `npm test` and `npm run test:no-addon`.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstat, mkdir, readFile, readlink, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from '../src/testing/tmp.ts';
import { textBytes } from '../src/testing/random.ts';
import { writeXattrs } from '../src/sources/metadata.ts';
import { nativeAvailable } from '../src/sources/native.ts';
import { runCli } from './cli.ts';

const NOTICE = /^coffer: notice: running without the native addon: /gm;
const NOTICE_LINE = /^coffer: notice: .*\n/m;

function envFor(dir: string): Record<string, string> {
  return {
    COFFER_PASSWORD: 'x',
    COFFER_CACHE_DIR: join(dir, 'cache'),
    COFFER_REPOSITORY: join(dir, 'repo'),
    COFFER_NATIVE_PATH: join(dir, 'not-built', 'coffer_native.node'),
    COFFER_NATIVE: '',
  };
}

/** Asserts exactly one notice, naming the missing file, what is lost and what to do. */
function assertOneNotice(stderr: string, dir: string): void {
  assert.equal(stderr.match(NOTICE)?.length, 1, stderr);
  const line = stderr.split('\n').find((l) => NOTICE.test(l))!;
  NOTICE.lastIndex = 0;
  assert.ok(line.includes(`the native addon is not built (${join(dir, 'not-built', 'coffer_native.node')} is missing)`), line);
  for (const lost of ['extended attributes and POSIX ACLs', 'about a microsecond', 'device nodes, FIFOs and socket files', 'sparse files']) assert.ok(line.includes(lost), `${lost}: ${line}`);
  assert.match(line, /python3, make and a C compiler .*`npm run build:native`/);
}

describe('without the native addon', () => {
  it('a backup and a restore of ordinary data exit 0 after one notice; a second restore finds everything unchanged', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    for (let d = 0; d < 4; d++) {
      await mkdir(join(src, `d${d}`, 'sub'), { recursive: true });
      for (let f = 0; f < 8; f++) await writeFile(join(src, `d${d}`, f % 2 ? 'sub' : '', `f${f}.txt`), textBytes(d * 10 + f, 1000 + f * 7919));
    }
    await mkdir(join(src, 'empty'));
    await symlink('d0/f0.txt', join(src, 'link'));
    await writeFile(join(src, 'sparse'), 'head');
    await truncate(join(src, 'sparse'), 3 << 20);
    // An extended attribute, where this test process can set one: without the addon it is not
    // backed up, which the notice says once; it is no warning per file.
    if (nativeAvailable()) writeXattrs(join(src, 'd1', 'f0.txt'), [{ name: 'user.tag', value: Buffer.from('v').toString('base64') }]);
    const env = envFor(dir);
    assert.equal((await runCli(['repo', 'init'], { env })).code, 0);

    const b = await runCli(['repo', 'backup', src], { env });
    assert.equal(b.code, 0, b.stderr);
    assertOneNotice(b.stderr, dir);
    assert.equal(b.stderr.replace(NOTICE_LINE, ''), '', 'nothing but the notice on stderr');

    const out = join(dir, 'out');
    const r = await runCli(['repo', 'restore', 'latest', '--target', out], { env });
    assert.equal(r.code, 0, r.stderr);
    assertOneNotice(r.stderr, dir);
    assert.match(r.stdout, /^warnings: +0$/m);
    const back = join(out, src);
    for (let d = 0; d < 4; d++) {
      for (let f = 0; f < 8; f++) {
        const rel = join(`d${d}`, f % 2 ? 'sub' : '', `f${f}.txt`);
        assert.deepEqual(await readFile(join(back, rel)), await readFile(join(src, rel)), rel);
        const [a, c] = [await lstat(join(src, rel), { bigint: true }), await lstat(join(back, rel), { bigint: true })];
        const off = a.mtimeNs - c.mtimeNs;
        assert.ok(off < 1000n && off > -1000n, `${rel}: mtime off by ${off} ns`);
      }
    }
    assert.equal(await readlink(join(back, 'link')), 'd0/f0.txt');
    assert.deepEqual(await readFile(join(back, 'sparse')), await readFile(join(src, 'sparse')));
    assert.ok((await lstat(join(back, 'empty'))).isDirectory());

    // Times set through node:fs are a little off the nanosecond; the next restore still sees
    // every file as unchanged instead of writing it again.
    const again = await runCli(['repo', 'restore', 'latest', '--target', out], { env });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^overwritten: +0 files, 0 dirs, 0 symlinks/m);
    assert.match(again.stdout, /^metadata fixed: +0 files, 0 dirs, 0 symlinks/m);
    assert.match(again.stdout, /^unchanged: +33 files, 12 dirs, 1 symlinks/m);
  });

  it('what needs the addon (creating a FIFO) is a warning that names it, exit 3, and everything else is restored', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'file'), 'content');
    execFileSync('mkfifo', [join(src, 'pipe')]);
    const env = envFor(dir);
    assert.equal((await runCli(['repo', 'init'], { env })).code, 0);
    const b = await runCli(['repo', 'backup', src], { env });
    assert.equal(b.code, 0, `a FIFO is backed up without the addon: ${b.stderr}`);
    const out = join(dir, 'out');
    const r = await runCli(['repo', 'restore', 'latest', '--target', out], { env });
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr + r.stdout, /pipe.*Cannot create FIFOs: the native addon is not built/);
    assert.equal(await readFile(join(out, src, 'file'), 'utf8'), 'content');
  });
});
