import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, lstatSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { createSpecial, dataRegions, makeDev, readXattrs, setTimesNs, splitDev, writeXattrs } from './metadata.ts';
import { loadNative, native, NATIVE_MODULE_PATH, nativeAvailable } from './native.ts';

// A fresh directory on a file system with user xattrs and ACLs: os.tmpdir() is, on ext4, xfs
// and btrfs; a tmpfs without user xattrs falls back to the project's ignored tmp/ folder.
function xattrDir(t: { after(fn: () => unknown): void }): string {
  const tried: string[] = [];
  for (const base of [tmpdir(), join(import.meta.dirname, '..', '..', 'tmp')]) {
    mkdirSync(base, { recursive: true });
    const dir = mkdtempSync(join(base, 'coffer-meta-'));
    try {
      writeFileSync(join(dir, 'probe'), '');
      native().lsetxattr(join(dir, 'probe'), 'user.coffer-probe', Buffer.from('1'), 0);
      rmSync(join(dir, 'probe'));
      t.after(() => rmSync(dir, { recursive: true, force: true }));
      return dir;
    } catch (e) {
      tried.push(`${base}: ${(e as Error).message}`);
      rmSync(dir, { recursive: true, force: true });
    }
  }
  throw new Error(`no directory with user xattrs for the tests:\n${tried.join('\n')}`);
}

// A POSIX ACL as Linux stores it in system.posix_acl_*: version 2, then (tag u16, perm u16,
// id u32) entries sorted by tag and id, all little-endian.
const ACL_USER_OBJ = 0x01, ACL_USER = 0x02, ACL_GROUP_OBJ = 0x04, ACL_GROUP = 0x08, ACL_MASK = 0x10, ACL_OTHER = 0x20;
const NO_ID = 0xffffffff;
function aclValue(entries: Array<[tag: number, perm: number, id: number]>): Buffer {
  const b = Buffer.alloc(4 + 8 * entries.length);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + 8 * i);
    b.writeUInt16LE(perm, 6 + 8 * i);
    b.writeUInt32LE(id, 8 + 8 * i);
  });
  return b;
}
function aclEntries(value: Buffer): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  for (let o = 4; o < value.length; o += 8) out.push([value.readUInt16LE(o), value.readUInt16LE(o + 2), value.readUInt32LE(o + 4)]);
  return out;
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

describe('native module', () => {
  it('is built by npm ci and loads', () => {
    assert.equal(nativeAvailable(), true, `${NATIVE_MODULE_PATH} is missing: run npm ci`);
  });

  it('reports UNSUPPORTED with what to do when the module is not built', () => {
    const loaded = loadNative({ path: '/nonexistent/coffer_native.node' });
    assert.equal(loaded.available, false);
    assert.throws(() => loaded.binding.utimensat('/x', 0, 0, 0, 0, true), (e: unknown) => {
      assert.ok(isCofferError(e, 'UNSUPPORTED'));
      assert.equal(e.message, 'Cannot set exact file times: the native addon is not built (/nonexistent/coffer_native.node is missing)');
      assert.match(e.hint ?? '', /python3, make and a C compiler .*`npm run build:native`/);
      return true;
    });
    assert.throws(() => loaded.binding.llistxattr('/x'), /^CofferError: Cannot list extended attributes: the native addon is not built \(\/nonexistent\/coffer_native.node is missing\)$/);
  });

  it('reports a module that is there but cannot be loaded', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'coffer-native-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'broken.node'), 'not a shared object');
    const loaded = loadNative({ path: join(dir, 'broken.node') });
    assert.equal(loaded.available, false);
    assert.throws(() => loaded.binding.mkfifo('/x', 0o600), (e: unknown) => isCofferError(e, 'UNSUPPORTED') && /cannot be loaded/.test(e.message));
  });

  it('throws errno errors shaped like node:fs errors', () => {
    assert.throws(() => native().lgetxattr('/nonexistent/file', 'user.x'), (e: unknown) => {
      const err = e as NodeJS.ErrnoException & { description: string };
      assert.equal(err.code, 'ENOENT');
      assert.equal(err.syscall, 'lgetxattr');
      assert.equal(err.path, '/nonexistent/file');
      assert.equal(err.errno, -2);
      assert.equal(err.message, "ENOENT: No such file or directory, lgetxattr '/nonexistent/file'");
      return true;
    });
  });
});

describe('readXattrs() and writeXattrs()', () => {
  it('round-trip user attributes, binary and empty values included, sorted by name', (t) => {
    const dir = xattrDir(t);
    const src = join(dir, 'src');
    const dst = join(dir, 'dst');
    writeFileSync(src, 'data');
    writeFileSync(dst, 'data');
    assert.equal(readXattrs(src), undefined, 'a file without attributes gives undefined');
    const binary = Buffer.from([0, 1, 2, 255, 254, 0, 10]);
    writeXattrs(src, [
      { name: 'user.zeta', value: b64('last') },
      { name: 'user.alpha', value: b64(binary) },
      { name: 'user.empty', value: '' },
      { name: 'user.ünïcode', value: b64('🙂') },
    ]);
    const read = readXattrs(src);
    assert.deepEqual(read, [
      { name: 'user.alpha', value: b64(binary) },
      { name: 'user.empty', value: '' },
      { name: 'user.zeta', value: b64('last') },
      { name: 'user.ünïcode', value: b64('🙂') },
    ]);
    writeXattrs(dst, read!);
    assert.deepEqual(readXattrs(dst), read);
    assert.deepEqual(native().lgetxattr(dst, 'user.alpha'), binary);
  });

  it('replace an existing value and leave other attributes alone', (t) => {
    const file = join(xattrDir(t), 'f');
    writeFileSync(file, '');
    writeXattrs(file, [{ name: 'user.a', value: b64('old') }, { name: 'user.keep', value: b64('k') }]);
    writeXattrs(file, [{ name: 'user.a', value: b64('new') }]);
    assert.deepEqual(readXattrs(file), [{ name: 'user.a', value: b64('new') }, { name: 'user.keep', value: b64('k') }]);
  });

  it('writeXattrs() warns about an attribute it cannot set and still sets the others', (t) => {
    const file = join(xattrDir(t), 'f');
    writeFileSync(file, '');
    const warnings: string[] = [];
    writeXattrs(file, [{ name: 'bogus.ns', value: b64('x') }, { name: 'user.ok', value: b64('y') }], (w) => warnings.push(w));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /^Cannot restore extended attribute bogus\.ns of .*\/f: operation not supported \(ENOTSUP\)$/);
    assert.deepEqual(readXattrs(file), [{ name: 'user.ok', value: b64('y') }]);
    // Without a warning callback the failure is thrown, after the rest were set.
    assert.throws(() => writeXattrs(file, [{ name: 'bogus.ns', value: '' }, { name: 'user.two', value: '' }]), (e: unknown) => isCofferError(e, 'UNSUPPORTED'));
    assert.equal(readXattrs(file)?.length, 2);
  });

  it('act on a symlink itself, never on its target', (t) => {
    const dir = xattrDir(t);
    writeFileSync(join(dir, 'target'), '');
    symlinkSync('target', join(dir, 'link'));
    const warnings: string[] = [];
    // Linux allows no user.* attributes on symlinks: following the link would have set it on the target.
    writeXattrs(join(dir, 'link'), [{ name: 'user.x', value: b64('v') }], (w) => warnings.push(w));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /\(EPERM\)$/);
    assert.equal(readXattrs(join(dir, 'target')), undefined);
    writeXattrs(join(dir, 'target'), [{ name: 'user.t', value: b64('t') }]);
    assert.equal(readXattrs(join(dir, 'link')), undefined);
  });

  it('readXattrs() skips a name that is not valid UTF-8, with a warning', (t) => {
    const file = join(xattrDir(t), 'f');
    writeFileSync(file, '');
    native().lsetxattr(file, Buffer.from([0x75, 0x73, 0x65, 0x72, 0x2e, 0xff, 0xfe]), Buffer.from('v'), 0); // "user.\xff\xfe"
    writeXattrs(file, [{ name: 'user.fine', value: b64('f') }]);
    const warnings: string[] = [];
    assert.deepEqual(readXattrs(file, (w) => warnings.push(w)), [{ name: 'user.fine', value: b64('f') }]);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /name is not valid UTF-8/);
    assert.throws(() => readXattrs(file), (e: unknown) => isCofferError(e, 'UNSUPPORTED'));
  });

  it('readXattrs() of a missing file throws NOT_FOUND', () => {
    assert.throws(() => readXattrs('/nonexistent/file'), (e: unknown) => {
      assert.ok(isCofferError(e, 'NOT_FOUND'));
      assert.equal(e.message, 'Cannot list the extended attributes of /nonexistent/file: no such file or directory (ENOENT)');
      return true;
    });
  });

  it('round-trip a POSIX access ACL, which the kernel applies to the mode', (t) => {
    const dir = xattrDir(t);
    const src = join(dir, 'src');
    const dst = join(dir, 'dst');
    writeFileSync(src, '', { mode: 0o600 });
    writeFileSync(dst, '', { mode: 0o600 });
    const acl = aclValue([
      [ACL_USER_OBJ, 6, NO_ID],
      [ACL_USER, 4, 12345],
      [ACL_GROUP_OBJ, 4, NO_ID],
      [ACL_GROUP, 6, 54321],
      [ACL_MASK, 6, NO_ID],
      [ACL_OTHER, 0, NO_ID],
    ]);
    writeXattrs(src, [{ name: 'system.posix_acl_access', value: acl.toString('base64') }]);
    // The group bits of an ACL'd file are the mask: rw-.
    assert.equal(lstatSync(src).mode & 0o777, 0o660);
    const read = readXattrs(src);
    assert.deepEqual(read, [{ name: 'system.posix_acl_access', value: acl.toString('base64') }]);
    writeXattrs(dst, read!);
    assert.deepEqual(readXattrs(dst), read);
    assert.equal(lstatSync(dst).mode & 0o777, 0o660);
  });

  it('round-trip a default ACL, which new files in the directory inherit', (t) => {
    const dir = join(xattrDir(t), 'd');
    mkdirSync(dir);
    const acl = aclValue([
      [ACL_USER_OBJ, 7, NO_ID],
      [ACL_USER, 5, 12345],
      [ACL_GROUP_OBJ, 5, NO_ID],
      [ACL_MASK, 5, NO_ID],
      [ACL_OTHER, 0, NO_ID],
    ]);
    writeXattrs(dir, [{ name: 'system.posix_acl_default', value: acl.toString('base64') }]);
    assert.deepEqual(readXattrs(dir), [{ name: 'system.posix_acl_default', value: acl.toString('base64') }]);
    writeFileSync(join(dir, 'child'), '');
    const inherited = readXattrs(join(dir, 'child'));
    assert.equal(inherited?.length, 1);
    assert.equal(inherited[0]!.name, 'system.posix_acl_access');
    assert.ok(aclEntries(Buffer.from(inherited[0]!.value, 'base64')).some(([tag, , id]) => tag === ACL_USER && id === 12345));
  });

  it('round-trip trusted.* attributes as root', (t) => {
    const file = join(xattrDir(t), 'f');
    writeFileSync(file, '');
    const warnings: string[] = [];
    writeXattrs(file, [{ name: 'trusted.coffer', value: b64('t') }], (w) => warnings.push(w));
    if (process.getuid?.() === 0) {
      assert.deepEqual(warnings, []);
      assert.deepEqual(readXattrs(file), [{ name: 'trusted.coffer', value: b64('t') }]);
    } else {
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /\(EPERM\)$/);
    }
  });
});

describe('setTimesNs()', () => {
  it('sets mtime and atime to the exact nanosecond', (t) => {
    const file = join(xattrDir(t), 'f');
    writeFileSync(file, '');
    setTimesNs(file, { mtimeNs: '1700000000123456789', atimeNs: '1600000000000000001' });
    const st = lstatSync(file, { bigint: true });
    assert.equal(st.mtimeNs, 1700000000123456789n);
    assert.equal(st.atimeNs, 1600000000000000001n);
  });

  it('defaults atime to mtime and handles times before 1970', (t) => {
    const file = join(xattrDir(t), 'f');
    writeFileSync(file, '');
    setTimesNs(file, { mtimeNs: '-1500000000' }); // 1969-12-31T23:59:58.5Z
    const st = lstatSync(file, { bigint: true });
    assert.equal(st.mtimeNs, -1500000000n);
    assert.equal(st.atimeNs, -1500000000n);
  });

  it('sets the times of a symlink itself and leaves the target alone', (t) => {
    const dir = xattrDir(t);
    writeFileSync(join(dir, 'target'), '');
    setTimesNs(join(dir, 'target'), { mtimeNs: '1000000000000000000' });
    symlinkSync('target', join(dir, 'link'));
    setTimesNs(join(dir, 'link'), { mtimeNs: '1234567890987654321' }, { nofollow: true });
    assert.equal(lstatSync(join(dir, 'link'), { bigint: true }).mtimeNs, 1234567890987654321n);
    assert.equal(statSync(join(dir, 'target'), { bigint: true }).mtimeNs, 1000000000000000000n);
    // Not following is the default.
    setTimesNs(join(dir, 'link'), { mtimeNs: '1234567890000000001' });
    assert.equal(lstatSync(join(dir, 'link'), { bigint: true }).mtimeNs, 1234567890000000001n);
    assert.equal(statSync(join(dir, 'target'), { bigint: true }).mtimeNs, 1000000000000000000n);
    setTimesNs(join(dir, 'link'), { mtimeNs: '1100000000000000000' }, { nofollow: false });
    assert.equal(statSync(join(dir, 'target'), { bigint: true }).mtimeNs, 1100000000000000000n);
  });

  it('rejects a malformed time and maps a missing path to NOT_FOUND', () => {
    assert.throws(() => setTimesNs('/x', { mtimeNs: '1.5' }), (e: unknown) => isCofferError(e, 'USAGE'));
    assert.throws(() => setTimesNs('/nonexistent/file', { mtimeNs: '0' }), (e: unknown) => isCofferError(e, 'NOT_FOUND') && /^Cannot set the times of \/nonexistent\/file: /.test(e.message));
  });
});

describe('createSpecial()', () => {
  it('creates a FIFO with the exact mode, whatever the umask', (t) => {
    const path = join(xattrDir(t), 'fifo');
    createSpecial(path, { type: 'fifo', mode: 0o672 });
    const st = lstatSync(path);
    assert.ok(st.isFIFO());
    assert.equal(st.mode & 0o7777, 0o672);
    assert.throws(() => createSpecial(path, { type: 'fifo', mode: 0o600 }), (e: unknown) => isCofferError(e, 'ALREADY_EXISTS'));
  });

  it('creates character and block devices as root, and refuses otherwise', (t) => {
    const dir = xattrDir(t);
    const chr = join(dir, 'null');
    const blk = join(dir, 'loop');
    const root = process.getuid?.() === 0;
    if (!root) {
      assert.throws(() => createSpecial(chr, { type: 'chardev', mode: 0o666, rdev: makeDev(1, 3) }), (e: unknown) => isCofferError(e, 'REFUSED') && /only root/.test(e.message));
      return;
    }
    assert.equal(makeDev(1, 3), 0x103);
    createSpecial(chr, { type: 'chardev', mode: 0o666, rdev: makeDev(1, 3) });
    const c = lstatSync(chr);
    assert.ok(c.isCharacterDevice());
    assert.equal(c.rdev, makeDev(1, 3));
    assert.equal(c.mode & 0o7777, 0o666);
    // A minor above 255 uses the split encoding (the kernel takes majors up to 4095, minors up to 2^20-1).
    createSpecial(blk, { type: 'blockdev', mode: 0o640, rdev: makeDev(259, 70000) });
    const b = lstatSync(blk);
    assert.ok(b.isBlockDevice());
    assert.equal(b.rdev, 0x11110370);
    assert.deepEqual(splitDev(b.rdev), [259, 70000]);
    assert.equal(b.mode & 0o7777, 0o640);
  });

  it('creates Unix socket files, also at paths longer than sockaddr_un allows', (t) => {
    const dir = xattrDir(t);
    const short = join(dir, 'sock');
    createSpecial(short, { type: 'socket', mode: 0o755 });
    assert.ok(lstatSync(short).isSocket());
    assert.equal(lstatSync(short).mode & 0o7777, 0o755);
    const deep = join(dir, 'd'.repeat(120));
    mkdirSync(deep);
    const long = join(deep, 'socket-file');
    assert.ok(Buffer.byteLength(long) > 108);
    createSpecial(long, { type: 'socket', mode: 0o600 });
    assert.ok(lstatSync(long).isSocket());
  });

  it('refuses a device without a device number', (t) => {
    const path = join(xattrDir(t), 'dev');
    assert.throws(() => createSpecial(path, { type: 'chardev', mode: 0o600 }), (e: unknown) => isCofferError(e, 'USAGE'));
  });
});

describe('dataRegions()', () => {
  it('finds the data around a 1 MiB hole and ignores the trailing hole', (t) => {
    const file = join(xattrDir(t), 'sparse');
    const KiB = 1024;
    const fd = openSync(file, 'w+');
    try {
      writeSync(fd, Buffer.alloc(64 * KiB, 'a'), 0, 64 * KiB, 0);
      writeSync(fd, Buffer.alloc(64 * KiB, 'b'), 0, 64 * KiB, 64 * KiB + 1024 * KiB);
      const size = 64 * KiB + 1024 * KiB + 64 * KiB + 512 * KiB;
      ftruncateSync(fd, size);
      assert.ok(lstatSync(file).blocks * 512 < size / 2, 'the file system keeps holes');
      assert.deepEqual(dataRegions(fd, size), [
        [0, 64 * KiB],
        [1088 * KiB, 1152 * KiB],
      ]);
      // Only the first `size` bytes count.
      assert.deepEqual(dataRegions(fd, 32 * KiB), [[0, 32 * KiB]]);
      assert.deepEqual(dataRegions(fd, 1100 * KiB), [[0, 64 * KiB], [1088 * KiB, 1100 * KiB]]);
    } finally {
      closeSync(fd);
    }
  });

  it('gives one region for a dense file, none for an empty one, and keeps the file position', (t) => {
    const file = join(xattrDir(t), 'dense');
    writeFileSync(file, Buffer.alloc(10_000, 'x').fill('y', 10, 20));
    const fd = openSync(file, 'r');
    try {
      const head = Buffer.alloc(10);
      readSync(fd, head, 0, 10, null);
      assert.deepEqual(dataRegions(fd, 10_000), [[0, 10_000]]);
      assert.deepEqual(dataRegions(fd, 0), []);
      readSync(fd, head, 0, 10, null);
      assert.equal(head.toString(), 'y'.repeat(10), 'reading goes on where it was');
    } finally {
      closeSync(fd);
    }
  });

  it('gives one region where the file system cannot tell holes (procfs)', () => {
    const fd = openSync('/proc/self/status', 'r');
    try {
      assert.deepEqual(dataRegions(fd, 100), [[0, 100]]);
    } finally {
      closeSync(fd);
    }
  });

  it('maps a bad descriptor to an error', () => {
    assert.throws(() => dataRegions(1_000_000, 10), (e: unknown) => isCofferError(e) && /\(EBADF\)$/.test(e.message));
  });
});
