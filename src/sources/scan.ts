// Listing a directory with the status of every entry, for the backup walk. With the native addon
// one call per directory does the readdir and every lstat on a libuv pool thread (scanDir in
// coffer_native.c); a walk of 76,000 files and 21,000 directories spent a sixth of its main
// thread in Node's per-entry lstat promises. Without the addon: readdir plus one lstat each
// (after the one notice of native.ts).

import type { BigIntStats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { getSystemErrorMessage } from 'node:util';
import { native, nativeAvailable, portableNotice } from './native.ts';

/** What the walk needs of an entry's status: node:fs's BigIntStats, or the addon's. */
export type EntryStat = Pick<BigIntStats,
  'mode' | 'uid' | 'gid' | 'nlink' | 'ino' | 'dev' | 'rdev' | 'size' | 'blocks' | 'atimeNs' | 'mtimeNs' | 'ctimeNs' |
  'isFile' | 'isDirectory' | 'isSymbolicLink' | 'isFIFO' | 'isSocket' | 'isBlockDevice' | 'isCharacterDevice'>;

export interface DirEntry {
  /** The name's bytes (names need not be UTF-8). */
  name: Buffer;
  /** Its lstat, or the error that lstat gave (the entry vanished, ...). */
  stat?: EntryStat;
  error?: Error;
  /** False when the entry has no extended attributes (known from the scan); else unknown or yes. */
  mayHaveXattrs: boolean;
}

// Layout of the addon's stats array (enum SCAN_* in coffer_native.c).
const MODE = 0, UID = 1, GID = 2, NLINK = 3, INO = 4, DEV = 5, RDEV = 6, SIZE = 7, BLOCKS = 8;
const ATIME_NS = 9, MTIME_NS = 10, CTIME_NS = 11, XATTR_BYTES = 12, ERRNO = 13;
export const SCAN_FIELDS = 14;

const S_IFMT = 0o170000n;

/** One entry's status, read from the addon's array. */
class NativeStat implements EntryStat {
  readonly mode: bigint;
  readonly uid: bigint;
  readonly gid: bigint;
  readonly nlink: bigint;
  readonly ino: bigint;
  readonly dev: bigint;
  readonly rdev: bigint;
  readonly size: bigint;
  readonly blocks: bigint;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;
  constructor(s: BigInt64Array, o: number) {
    this.mode = s[o + MODE]!;
    this.uid = s[o + UID]!;
    this.gid = s[o + GID]!;
    this.nlink = s[o + NLINK]!;
    // st_ino and st_dev are unsigned: shown as node:fs shows them.
    this.ino = BigInt.asUintN(64, s[o + INO]!);
    this.dev = BigInt.asUintN(64, s[o + DEV]!);
    this.rdev = BigInt.asUintN(64, s[o + RDEV]!);
    this.size = s[o + SIZE]!;
    this.blocks = s[o + BLOCKS]!;
    this.atimeNs = s[o + ATIME_NS]!;
    this.mtimeNs = s[o + MTIME_NS]!;
    this.ctimeNs = s[o + CTIME_NS]!;
  }
  private is(t: bigint): boolean {
    return (this.mode & S_IFMT) === t;
  }
  isFile(): boolean {
    return this.is(0o100000n);
  }
  isDirectory(): boolean {
    return this.is(0o040000n);
  }
  isSymbolicLink(): boolean {
    return this.is(0o120000n);
  }
  isFIFO(): boolean {
    return this.is(0o010000n);
  }
  isSocket(): boolean {
    return this.is(0o140000n);
  }
  isBlockDevice(): boolean {
    return this.is(0o060000n);
  }
  isCharacterDevice(): boolean {
    return this.is(0o020000n);
  }
}

/** An errno error for an entry whose lstat failed in the addon, shaped like node:fs's. */
function entryError(errno: number, path: Buffer): Error {
  errnoNames ??= new Map(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));
  const code = errnoNames.get(errno) ?? `E${errno}`;
  return Object.assign(new Error(`${code}: ${getSystemErrorMessage(-errno)}, lstat '${path.toString('utf8')}'`), { code, errno: -errno, syscall: 'lstat' });
}
let errnoNames: Map<number, string> | undefined;

const SLASH = 0x2f;

/**
 * A directory's entries in name order, as scanned: names and stats stay in the scan's two
 * buffers, and an entry's DirEntry (with its stat object) is made only when asked for. A
 * directory of a million files as DirEntry objects took about 700 bytes per entry of heap
 * (12 BigInts and a Buffer view each); as a listing it takes the scan's 120.
 */
export interface DirListing {
  readonly length: number;
  /** Entry i's name bytes (a view into the listing). */
  name(i: number): Buffer;
  /** Entry i with its lstat or the error lstat gave; a new object at each call. */
  entry(i: number): DirEntry;
  /** Whether entry i is a directory (false when its lstat failed). */
  isDir(i: number): boolean;
}

/** The listing of a native scan: `names` NUL-separated, SCAN_FIELDS numbers per entry in `stats`. */
class NativeListing implements DirListing {
  readonly length: number;
  private readonly dir: Buffer;
  private readonly names: Buffer;
  private readonly stats: BigInt64Array;
  /** Where each name starts in `names` (one more element: the end). */
  private readonly starts: Uint32Array;

  constructor(dir: Buffer, names: Buffer, stats: BigInt64Array) {
    this.dir = dir;
    this.names = names;
    this.stats = stats;
    this.length = stats.length / SCAN_FIELDS;
    this.starts = new Uint32Array(this.length + 1);
    let at = 0;
    for (let i = 0; i < this.length; i++) {
      this.starts[i] = at;
      at = names.indexOf(0, at) + 1;
    }
    this.starts[this.length] = at;
  }

  name(i: number): Buffer {
    return this.names.subarray(this.starts[i]!, this.starts[i + 1]! - 1);
  }

  entry(i: number): DirEntry {
    const name = this.name(i);
    const o = i * SCAN_FIELDS;
    const errno = Number(this.stats[o + ERRNO]);
    if (errno !== 0) return { name, error: entryError(errno, childPath(this.dir, name)), mayHaveXattrs: true };
    return { name, stat: new NativeStat(this.stats, o), mayHaveXattrs: this.stats[o + XATTR_BYTES] !== 0n };
  }

  isDir(i: number): boolean {
    const o = i * SCAN_FIELDS;
    return this.stats[o + ERRNO] === 0n && (this.stats[o + MODE]! & S_IFMT) === 0o040000n;
  }
}

/** A listing over DirEntry objects (the portable scan's). */
class ArrayListing implements DirListing {
  readonly length: number;
  private readonly entries: DirEntry[];
  constructor(entries: DirEntry[]) {
    this.entries = entries;
    this.length = entries.length;
  }
  name(i: number): Buffer {
    return this.entries[i]!.name;
  }
  entry(i: number): DirEntry {
    return this.entries[i]!;
  }
  isDir(i: number): boolean {
    return this.entries[i]!.stat?.isDirectory() === true;
  }
}

/**
 * The entries of directory `path` (without . and ..), sorted by their names' bytes, each with
 * its lstat or the error lstat gave. Rejects (with node:fs's error shape) when the directory
 * cannot be opened or listed; a symlink at `path` is not followed (ELOOP or ENOTDIR).
 */
export function listDir(path: Buffer, options: { native?: boolean } = {}): Promise<DirListing> {
  if (options.native === false) return scanDirPortable(path).then((e) => new ArrayListing(e));
  if (!nativeAvailable()) {
    portableNotice();
    return scanDirPortable(path).then((e) => new ArrayListing(e));
  }
  return new Promise((resolve, reject) => {
    native().scanDir(path, (error, names, stats) => {
      if (error) reject(error);
      else resolve(new NativeListing(path, names!, stats!));
    });
  });
}

/** listDir() as an array of entries: for callers that want them all at once. */
export async function scanDir(path: Buffer, options: { native?: boolean } = {}): Promise<DirEntry[]> {
  const l = await listDir(path, options);
  return Array.from({ length: l.length }, (_, i) => l.entry(i));
}

const SLASH_BYTES = Buffer.from('/');

/** The path of entry `name` in directory `dir` (paths as bytes; `/` has no second slash). */
export function childPath(dir: Buffer, name: Buffer): Buffer {
  return dir.length === 1 && dir[0] === SLASH ? Buffer.concat([dir, name]) : Buffer.concat([dir, SLASH_BYTES, name]);
}

async function scanDirPortable(path: Buffer): Promise<DirEntry[]> {
  const st = await lstat(path);
  if (st.isSymbolicLink()) throw Object.assign(new Error(`ELOOP: too many symbolic links encountered, open '${path.toString('utf8')}'`), { code: 'ELOOP', syscall: 'open' });
  const names = (await readdir(path, { encoding: 'buffer' })).sort(Buffer.compare);
  return Promise.all(names.map(async (name): Promise<DirEntry> => {
    try {
      return { name, stat: await lstat(childPath(path, name), { bigint: true }), mayHaveXattrs: true };
    } catch (e) {
      return { name, error: e as Error, mayHaveXattrs: true };
    }
  }));
}
