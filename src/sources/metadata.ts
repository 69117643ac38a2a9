// The file metadata a snapshot keeps beyond what node:fs reads and writes: extended attributes
// (POSIX ACLs among them, as the raw system.posix_acl_access/default values), nanosecond-exact
// times (also of symlinks), device nodes, FIFOs and socket files, and the data regions of sparse
// files. Backup and restore call these; the system calls are in the native addon (native.ts).
//
// Restore order matters: writing a file's content and chown() both make the kernel drop
// security.capability, so restore writes content, then owner, then mode, then xattrs (an ACL
// brings its own group/mask bits, equal to the saved mode's), and times last.
//
// Without the addon (see native.ts), reading xattrs gives none, times are set through node:fs
// (about a microsecond exact) and a file has no holes, each after the one notice that says so;
// writing xattrs and creating special files throw UNSUPPORTED, as they would lose data silently.

import { chmodSync, lutimesSync, utimesSync } from 'node:fs';
import { CofferError } from '../core/errors.ts';
import { errnoCode, native, nativeAvailable, nativeError, portableNotice } from './native.ts';
import type { PathArg } from './native.ts';

export type { PathArg } from './native.ts';

export interface Xattr {
  name: string;
  /** The value's bytes in base64. */
  value: string;
}

export interface ExtraMetadata {
  xattrs?: Xattr[];
}

const FATAL_UTF8 = new TextDecoder('utf-8', { fatal: true });

function show(path: PathArg): string {
  return typeof path === 'string' ? path : path.toString('utf8');
}

function byNameBytes(a: Xattr, b: Xattr): number {
  return Buffer.compare(Buffer.from(a.name, 'utf8'), Buffer.from(b.name, 'utf8'));
}

/**
 * Every extended attribute of `path` (not following a final symlink) that the process may read:
 * user.*, security.*, system.posix_acl_* and, as root, trusted.*. Sorted by the names' bytes.
 * Returns undefined when there are none or the file system has no xattrs (ENOTSUP), so nodes
 * without any stay as small as before. An attribute that cannot be kept (a name that is not
 * valid UTF-8, a read that fails) is reported through `onWarning` and left out; without
 * `onWarning` it throws. An attribute removed between listing and reading is simply skipped.
 * Without the addon: undefined, after the one notice (portableNotice()).
 */
export function readXattrs(path: PathArg, onWarning?: (problem: string) => void): Xattr[] | undefined {
  if (!nativeAvailable()) {
    portableNotice();
    return undefined;
  }
  const n = native();
  let names: Buffer[];
  try {
    names = n.llistxattr(path);
  } catch (e) {
    if (errnoCode(e) === 'ENOTSUP') return undefined;
    throw nativeError(e, `list the extended attributes of ${show(path)}`);
  }
  const out: Xattr[] = [];
  for (const raw of names) {
    let name: string;
    try {
      name = FATAL_UTF8.decode(raw);
    } catch {
      const problem = `Cannot back up extended attribute ${JSON.stringify(raw.toString('utf8'))} of ${show(path)}: its name is not valid UTF-8`;
      if (!onWarning) throw new CofferError('UNSUPPORTED', problem);
      onWarning(problem);
      continue;
    }
    let value: Buffer;
    try {
      value = n.lgetxattr(path, raw);
    } catch (e) {
      if (errnoCode(e) === 'ENODATA') continue;
      const error = nativeError(e, `read extended attribute ${name} of ${show(path)}`);
      if (!onWarning) throw error;
      onWarning(error.message);
      continue;
    }
    out.push({ name, value: value.toString('base64') });
  }
  return out.length === 0 ? undefined : out.sort(byNameBytes);
}

/**
 * Sets each attribute on `path` itself (never a symlink's target), adding to or replacing what
 * is there; attributes not in the list are left alone (e.g. an SELinux label the new file got).
 * One attribute that cannot be set (no permission for trusted.* or security.*, user.* on a
 * symlink, a file system without xattrs) is reported through `onWarning` and the rest are still
 * set; without `onWarning`, the first failure is thrown after all were tried.
 */
export function writeXattrs(path: PathArg, xattrs: Xattr[], onWarning?: (problem: string) => void): void {
  const n = native();
  let first: CofferError | undefined;
  for (const x of xattrs) {
    let error: CofferError | undefined;
    if (typeof x.name !== 'string' || x.name === '' || x.name.includes('\0') || typeof x.value !== 'string') {
      error = new CofferError('CORRUPT', `Cannot restore an extended attribute of ${show(path)}: its name or value is malformed`);
    } else {
      try {
        n.lsetxattr(path, x.name, Buffer.from(x.value, 'base64'), 0);
      } catch (e) {
        if (e instanceof CofferError) throw e; // the addon is missing: every other one fails too
        const errno = errnoCode(e);
        const hint =
          errno === 'EPERM' && /^(trusted|security)\./.test(x.name) ? 'Only root may set trusted.* and security.* attributes.'
            : errno === 'ENOTSUP' ? 'The target file system does not support this attribute namespace (or xattrs at all).'
              : undefined;
        error = nativeError(e, `restore extended attribute ${x.name} of ${show(path)}`, hint);
      }
    }
    if (error === undefined) continue;
    if (onWarning) onWarning(error.message);
    else first ??= error;
  }
  if (first) throw first;
}

const NS_PER_S = 1_000_000_000n;
const NS = /^-?[0-9]{1,22}$/;

// Splits nanoseconds since the epoch into seconds and a non-negative nanosecond part, the way
// timespec holds times before 1970 (-0.5 s is -1 s + 500000000 ns).
function splitNs(ns: string, path: PathArg): [bigint, number] {
  if (typeof ns !== 'string' || !NS.test(ns)) {
    throw new CofferError('USAGE', `Cannot set the times of ${show(path)}: ${JSON.stringify(ns)} is not a time in nanoseconds`);
  }
  const t = BigInt(ns);
  let sec = t / NS_PER_S;
  let nsec = t % NS_PER_S;
  if (nsec < 0n) {
    sec -= 1n;
    nsec += NS_PER_S;
  }
  return [sec, Number(nsec)];
}

/**
 * Sets modification and access time to the exact nanosecond (atime defaults to mtime). By
 * default acts on `path` itself even when it is a symlink, never on its target (restore must
 * not reach outside the tree it writes); `nofollow: false` follows a final symlink. Without the
 * addon, node:fs sets them from seconds as a double: exact to about a microsecond.
 */
export function setTimesNs(path: PathArg, node: { mtimeNs: string; atimeNs?: string }, options: { nofollow?: boolean } = {}): void {
  const [ms, mn] = splitNs(node.mtimeNs, path);
  const [as, an] = node.atimeNs === undefined ? [ms, mn] : splitNs(node.atimeNs, path);
  try {
    if (!nativeAvailable()) {
      portableNotice();
      const seconds = (sec: bigint, nsec: number) => Number(sec) + nsec / 1e9;
      ((options.nofollow ?? true) ? lutimesSync : utimesSync)(path, seconds(as, an), seconds(ms, mn));
      return;
    }
    native().utimensat(path, as, an, ms, mn, options.nofollow ?? true);
  } catch (e) {
    throw nativeError(e, `set the times of ${show(path)}`);
  }
}

/** How far node:fs may set a time off (a double of seconds holds about 240 ns around 2026). */
const PORTABLE_TIME_SLACK_NS = 1000n;

/**
 * Whether a file's time `haveNs` (from lstat) is `wantNs` as setTimesNs() sets it: exactly with
 * the addon, within a microsecond without it. Restore's "unchanged" test uses this, so that
 * files it restored without the addon are not taken as changed the next time.
 */
export function sameTimeNs(haveNs: bigint, wantNs: bigint | string): boolean {
  const want = BigInt(wantNs);
  if (haveNs === want) return true;
  if (nativeAvailable()) return false;
  const d = haveNs - want;
  return d < PORTABLE_TIME_SLACK_NS && d > -PORTABLE_TIME_SLACK_NS;
}

const TYPE_BITS = { blockdev: 0o060000, chardev: 0o020000 } as const;

/**
 * Creates a device node, FIFO or Unix socket file at `path` with exactly `mode & 0o7777` (the
 * umask does not apply). Fails with ALREADY_EXISTS when something is there. Devices need root
 * (CAP_MKNOD): without it this throws REFUSED, which restore reports as a warning.
 */
export function createSpecial(path: PathArg, node: { type: 'blockdev' | 'chardev' | 'fifo' | 'socket'; mode: number; rdev?: number }): void {
  const n = native();
  const perm = node.mode & 0o7777;
  try {
    if (node.type === 'fifo') n.mkfifo(path, perm);
    else if (node.type === 'socket') n.mksock(path);
    else if (node.type === 'blockdev' || node.type === 'chardev') {
      if (node.rdev === undefined) throw new CofferError('USAGE', `Cannot create device ${show(path)}: the snapshot has no device number for it`);
      n.mknod(path, TYPE_BITS[node.type] | perm, node.rdev);
    } else {
      throw new CofferError('USAGE', `Cannot create ${show(path)}: ${JSON.stringify(node.type)} is not a special file type`);
    }
  } catch (e) {
    if (e instanceof CofferError) throw e;
    const errno = errnoCode(e);
    const what = node.type === 'fifo' ? 'FIFO' : node.type === 'socket' ? 'socket file' : 'device';
    if ((errno === 'EPERM' || errno === 'EACCES') && what === 'device') {
      throw new CofferError('REFUSED', `Cannot create device ${show(path)}: only root may create device nodes`, {
        cause: e,
        hint: 'Restore as root to recreate devices.',
        details: { errno, path: show(path) },
      });
    }
    throw nativeError(e, `create ${what} ${show(path)}`);
  }
  try {
    // Sets the exact mode, which the umask trimmed. chmod follows symlinks, but the entry was
    // created just above, so only a concurrent writer in the same directory could swap one in.
    chmodSync(path, perm);
  } catch (e) {
    throw nativeError(e, `set the mode of ${show(path)}`);
  }
}

// lseek errors that mean "this file system cannot tell holes apart" rather than a bad fd.
const NO_SEEK_SUPPORT = new Set(['EINVAL', 'ENOTSUP', 'ENOSYS']);

/**
 * The data regions [start, end) of the open file `fd` within its first `size` bytes, found with
 * SEEK_DATA/SEEK_HOLE; everything between them reads as zeros. A file system that cannot tell
 * holes (or treats the whole file as data) gives one region [0, size); an empty file gives none.
 * The descriptor's position is left where it was. Without the addon: [0, size), after the one
 * notice.
 */
export function dataRegions(fd: number, size: number): Array<[start: number, end: number]> {
  if (size <= 0) return [];
  if (!nativeAvailable()) {
    portableNotice();
    return [[0, size]];
  }
  const n = native();
  const regions: Array<[number, number]> = [];
  let pos = 0;
  try {
    while (pos < size) {
      const start = n.seekData(fd, pos);
      if (start < 0 || start >= size) break;
      const hole = n.seekHole(fd, start);
      if (hole < 0) break; // the file shrank under us: the reader will notice the short read
      const end = Math.min(hole, size);
      regions.push([start, end]);
      pos = end;
    }
  } catch (e) {
    const errno = errnoCode(e);
    if (errno !== undefined && NO_SEEK_SUPPORT.has(errno)) return [[0, size]];
    throw nativeError(e, `find the data regions of file descriptor ${fd}`);
  }
  return regions;
}

/** A device number in the encoding of fs.Stats.rdev from its major and minor numbers. */
export function makeDev(major: number, minor: number): number {
  return native().makedev(major, minor);
}

/** The major and minor numbers of a device number (fs.Stats.rdev). */
export function splitDev(rdev: number): [major: number, minor: number] {
  return native().splitdev(rdev);
}
