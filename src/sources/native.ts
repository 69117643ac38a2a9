// The native addon's file-system functions (src/native/coffer_native.c, loaded by the one loader
// in engine/addon.ts), with its errno errors mapped to CofferErrors. When the addon is missing
// (no C compiler at install, COFFER_NATIVE=0, not Linux), loading still succeeds and every
// function throws UNSUPPORTED instead, so that only the features that need it fail, each with a
// message that says how to get it; the callers that have a portable fallback use it and print
// one notice per process (portableNotice()) instead of a warning per file.

import { getEnvironmentData, setEnvironmentData } from 'node:worker_threads';
import { CofferError } from '../core/errors.ts';
import type { ErrorCode } from '../core/errors.ts';
import { addon, loadAddon, NATIVE_MODULE_PATH } from '../engine/addon.ts';

/** A path as node:fs takes it: a string, or a Buffer for names that are not valid UTF-8. */
export type PathArg = string | Buffer;

/** The addon's functions; see src/native/coffer_native.c for each one's contract. */
export interface NativeBinding {
  /** Seconds may be negative (before 1970); nanoseconds are 0..999999999. */
  utimensat(path: PathArg, atimeSec: bigint | number, atimeNsec: number, mtimeSec: bigint | number, mtimeNsec: number, nofollow: boolean): void;
  lgetxattr(path: PathArg, name: string | Buffer): Buffer;
  /** Each name's bytes: names need not be UTF-8. */
  llistxattr(path: PathArg): Buffer[];
  lsetxattr(path: PathArg, name: string | Buffer, value: Buffer, flags: number): void;
  lremovexattr(path: PathArg, name: string | Buffer): void;
  /** `mode` includes the file type bits (S_IFCHR, S_IFBLK); the umask applies. */
  mknod(path: PathArg, mode: number, dev: number | bigint): void;
  mkfifo(path: PathArg, mode: number): void;
  /** Creates a Unix socket file by binding a socket to the path and closing it. */
  mksock(path: PathArg): void;
  /** The next data (hole) offset at or after `offset`, or -1 when there is none (ENXIO). */
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  /** dev_t in the encoding fs.Stats.rdev uses, and back. */
  makedev(major: number, minor: number): number;
  splitdev(dev: number): [major: number, minor: number];
  /**
   * Lists a directory (not following a symlink at `path`) and lstats every entry, on a libuv
   * pool thread: `names` holds each name's bytes followed by a NUL, sorted bytewise; `stats`
   * SCAN_FIELDS values per entry (see scan.ts), an entry's errno in its last one if lstat failed.
   */
  scanDir(path: PathArg, callback: (error: Error | null, names?: Buffer, stats?: BigInt64Array) => void): void;
  readonly XATTR_CREATE: number;
  readonly XATTR_REPLACE: number;
}

export { NATIVE_MODULE_PATH };

// What each function is for, for the "Cannot <action>" message when the addon is missing.
const ACTIONS: Record<Exclude<keyof NativeBinding, 'XATTR_CREATE' | 'XATTR_REPLACE'>, string> = {
  utimensat: 'set exact file times',
  lgetxattr: 'read extended attributes',
  llistxattr: 'list extended attributes',
  lsetxattr: 'write extended attributes',
  lremovexattr: 'remove extended attributes',
  mknod: 'create device nodes',
  mkfifo: 'create FIFOs',
  mksock: 'create Unix socket files',
  seekData: 'find the data in sparse files',
  seekHole: 'find the holes in sparse files',
  makedev: 'encode device numbers',
  splitdev: 'decode device numbers',
  scanDir: 'list directories with their entries\' status in one call',
};

export interface LoadedNative {
  binding: NativeBinding;
  /** False when the functions only throw UNSUPPORTED. */
  available: boolean;
  /** Why the addon could not be loaded, when it could not. */
  reason?: string;
}

/**
 * Loads the addon from `options.path` (default: the one this process uses, see
 * engine/addon.ts). Never throws: when the addon is missing or broken, the returned binding's
 * functions throw UNSUPPORTED.
 */
export function loadNative(options: { path?: string } = {}): LoadedNative {
  const load = options.path === undefined ? addon() : loadAddon(options.path);
  if (load.ok) return { binding: load.exports as unknown as NativeBinding, available: true };
  const { reason, hint, cause, path } = load;
  const stub: Record<string, unknown> = { XATTR_CREATE: 1, XATTR_REPLACE: 2 };
  for (const [name, action] of Object.entries(ACTIONS)) {
    stub[name] = () => {
      throw new CofferError('UNSUPPORTED', `Cannot ${action}: ${reason}`, { hint, cause, details: { module: path } });
    };
  }
  return { binding: stub as unknown as NativeBinding, available: false, reason };
}

let loaded: LoadedNative | undefined;

/** The addon at its usual place, loaded on first use. */
export function native(): NativeBinding {
  loaded ??= loadNative();
  return loaded.binding;
}

/** Whether the addon is there: callers can warn once instead of once per file. */
export function nativeAvailable(): boolean {
  loaded ??= loadNative();
  return loaded.available;
}

/** What a backup or restore without the addon cannot do, for the one notice. */
export const PORTABLE_LIMITS =
  'extended attributes and POSIX ACLs are neither backed up nor restored; restored times are exact to about a microsecond, not the nanosecond; ' +
  'device nodes, FIFOs and socket files are backed up but cannot be restored; holes in sparse files are not found (they are read as zeros); ' +
  'directory listings, zstd and cold reads are slower';

// Whether the notice was given, shared by every thread of the process: worker threads (the
// restore writers) get the same memory through their environment data, which the main thread
// sets when it loads this module, before it starts any worker.
const NOTICE_KEY = 'coffer:native-notice';
const noticed = ((): Int32Array => {
  const have = getEnvironmentData(NOTICE_KEY);
  if (have instanceof SharedArrayBuffer) return new Int32Array(have);
  const flag = new SharedArrayBuffer(4);
  setEnvironmentData(NOTICE_KEY, flag);
  return new Int32Array(flag);
})();

/**
 * Says once per process, on stderr, that the addon is missing, what that costs and how to get
 * it. Called by each portable fallback the first time it is used; does nothing with the addon.
 */
export function portableNotice(): void {
  if (nativeAvailable() || Atomics.compareExchange(noticed, 0, 0, 1) !== 0) return;
  const load = addon();
  const hint = load.ok ? '' : ` ${load.hint}`;
  process.stderr.write(`coffer: notice: running without the native addon: ${loaded?.reason}. So ${PORTABLE_LIMITS}.${hint}\n`);
}

/** The errno name (`ENOENT`, ...) of an error thrown by the addon or node:fs, if it has one. */
export function errnoCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

const UNSUPPORTED_CODES = new Set(['ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/**
 * Turns an errno error from the addon into a CofferError "Cannot <action>: <what the system
 * said>". Errors that are CofferErrors already (the addon is missing) pass through.
 */
export function nativeError(e: unknown, action: string, hint?: string): CofferError {
  if (e instanceof CofferError) return e;
  const errno = errnoCode(e);
  const err = e as { description?: unknown; message?: unknown; syscall?: unknown; path?: unknown };
  const said = typeof err.description === 'string' ? err.description.toLowerCase() : String(err.message);
  let code: ErrorCode = 'STORAGE_ERROR';
  if (errno === 'ENOENT' || errno === 'ENOTDIR') code = 'NOT_FOUND';
  else if (errno === 'EEXIST') code = 'ALREADY_EXISTS';
  else if (errno === 'EPERM' || errno === 'EACCES') code = 'REFUSED';
  else if (errno !== undefined && UNSUPPORTED_CODES.has(errno)) code = 'UNSUPPORTED';
  else if (errno === undefined) code = 'INTERNAL';
  if (hint === undefined && (errno === 'ENOSPC' || errno === 'EDQUOT')) hint = 'Free some space on that file system, or raise the quota.';
  if (hint === undefined && errno === 'EROFS') hint = 'The file system is mounted read-only.';
  return new CofferError(code, `Cannot ${action}: ${said}${errno ? ` (${errno})` : ''}`, {
    cause: e,
    hint,
    details: { errno, syscall: err.syscall, path: err.path },
  });
}
