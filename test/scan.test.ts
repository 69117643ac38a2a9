// scanDir(): the native one-call directory listing agrees with readdir + lstat, entry by entry,
// and fails like node:fs where the directory cannot be listed. Without the addon (npm run
// test:no-addon) the "native" cases check that scanDir() falls back to the portable listing.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { link, lstat, mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { scanDir, type DirEntry, type EntryStat } from '../src/sources/scan.ts';
import { isCofferError } from '../src/core/errors.ts';
import { native, nativeAvailable } from '../src/sources/native.ts';
import { tempDir } from '../src/testing/tmp.ts';

const FIELDS = ['mode', 'uid', 'gid', 'nlink', 'ino', 'dev', 'rdev', 'size', 'blocks', 'mtimeNs', 'ctimeNs'] as const;
const KINDS = ['isFile', 'isDirectory', 'isSymbolicLink', 'isFIFO', 'isSocket', 'isBlockDevice', 'isCharacterDevice'] as const;

function summary(st: EntryStat): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of FIELDS) o[f] = st[f];
  for (const k of KINDS) o[k] = st[k]();
  return o;
}

async function makeDir(t: Parameters<typeof tempDir>[0]): Promise<Buffer> {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'b.txt'), 'bee');
  await writeFile(join(dir, 'A.txt'), 'x'.repeat(10_000));
  await link(join(dir, 'A.txt'), join(dir, 'hard'));
  await mkdir(join(dir, 'sub'));
  await symlink('b.txt', join(dir, 'link'));
  await symlink('/nowhere', join(dir, 'dangling'));
  execFileSync('mkfifo', [join(dir, 'fifo')]);
  await writeFile(Buffer.concat([Buffer.from(dir + '/'), Buffer.from([0x66, 0xff, 0x80])]), 'raw name');
  await writeFile(join(dir, 'long-' + 'n'.repeat(240)), '');
  return Buffer.from(dir);
}

describe('scanDir', () => {
  for (const native of [true, false]) {
    it(`${native ? 'native' : 'portable'}: lists every entry, sorted by name bytes, with its lstat`, async (t) => {
      const dir = await makeDir(t);
      const entries = await scanDir(dir, { native });
      const names = (await readdir(dir, { encoding: 'buffer' })).sort(Buffer.compare);
      assert.deepEqual(entries.map((e) => e.name), names);
      for (const e of entries) {
        assert.equal(e.error, undefined);
        const want = await lstat(Buffer.concat([dir, Buffer.from('/'), e.name]), { bigint: true });
        assert.deepEqual(summary(e.stat!), summary(want), e.name.toString());
        assert.equal(typeof e.stat!.atimeNs, 'bigint');
      }
      const byName = new Map(entries.map((e: DirEntry) => [e.name.toString('latin1'), e.stat!]));
      assert.ok(byName.get('fifo')!.isFIFO());
      assert.ok(byName.get('link')!.isSymbolicLink(), 'symlinks are not followed');
      assert.ok(byName.get('dangling')!.isSymbolicLink());
      assert.equal(byName.get('hard')!.ino, byName.get('A.txt')!.ino);
      assert.equal(byName.get('A.txt')!.nlink, 2n);
    });

    it(`${native ? 'native' : 'portable'}: a missing directory, a file and a symlink to a directory are refused like node:fs refuses them`, async (t) => {
      const dir = await makeDir(t);
      const at = (n: string) => Buffer.concat([dir, Buffer.from('/' + n)]);
      await assert.rejects(scanDir(at('missing'), { native }), (e: NodeJS.ErrnoException) => e.code === 'ENOENT' && /missing/.test(e.message));
      await assert.rejects(scanDir(at('b.txt'), { native }), (e: NodeJS.ErrnoException) => e.code === 'ENOTDIR');
      await symlink('sub', at('to-sub'));
      await assert.rejects(scanDir(at('to-sub'), { native }), (e: NodeJS.ErrnoException) => e.code === 'ELOOP' || e.code === 'ENOTDIR');
      assert.deepEqual(await scanDir(at('sub'), { native }), []);
    });
  }

  it('native: tells which entries have extended attributes, so that only those are listed', async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, 'plain'), '');
    await writeFile(join(dir, 'tagged'), '');
    if (!nativeAvailable()) {
      // Without the addon: no xattrs can be set or read, and the scan cannot tell (unknown).
      assert.throws(() => native().lsetxattr(join(dir, 'tagged'), 'user.coffer.test', Buffer.from('x'), 0), (e: unknown) => isCofferError(e, 'UNSUPPORTED') && /^Cannot write extended attributes: the native addon is (disabled|not built)/.test(e.message));
      for (const e of await scanDir(Buffer.from(dir))) assert.equal(e.mayHaveXattrs, true);
      return;
    }
    try {
      native().lsetxattr(join(dir, 'tagged'), 'user.coffer.test', Buffer.from('x'), 0);
    } catch (e) {
      t.skip(`this file system has no user xattrs (${(e as Error).message})`);
      return;
    }
    const [plain, tagged] = await scanDir(Buffer.from(dir));
    assert.equal(plain!.mayHaveXattrs, false);
    assert.equal(tagged!.mayHaveXattrs, true);
    for (const e of await scanDir(Buffer.from(dir), { native: false })) assert.equal(e.mayHaveXattrs, true, 'unknown without the addon');
  });

  it('times are exact to the nanosecond, also before 1970', async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, 'new'), '');
    await writeFile(join(dir, 'old'), '');
    execFileSync('touch', ['-h', '-d', '2001-02-03 04:05:06.123456789 UTC', join(dir, 'new')]);
    execFileSync('touch', ['-h', '-d', '1950-02-03 04:05:06 UTC', join(dir, 'old')]);
    const [n, o] = await scanDir(Buffer.from(dir));
    assert.equal(n!.stat!.mtimeNs, 981173106_123456789n);
    assert.equal(o!.stat!.mtimeNs, (await lstat(join(dir, 'old'), { bigint: true })).mtimeNs);
    assert.equal(o!.stat!.mtimeNs, -628286094_000000000n);
  });
});
