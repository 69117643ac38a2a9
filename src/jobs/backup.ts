// The backup job. Files: walks the given paths (names as bytes, so names that are not UTF-8
// survive), skips what the exclude rules say, reuses the content of files unchanged since the
// parent snapshot (same size, mtime, ctime and inode) without reading them, has the workers read
// and hash small files in batches, reads large ones in large blocks for the workers to chunk and
// hash, stores new chunks through BlobSaver and
// builds trees bottom-up. Streams (stdin, a command's output) and disk images go through the
// same path. A snapshot is committed only after every pack and index file is stored; entries that
// cannot be read become warnings (exit code 3), never a failed or partial commit. On Ctrl-C the
// index of every uploaded pack is still written, so the next run reuses those packs.

import { open, lstat, readlink, realpath, stat } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { isAbsolute, normalize, resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { spawn } from 'node:child_process';
import ignore, { type Ignore } from 'ignore';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { Limiter } from '../core/limiter.ts';
import { isAllZero } from '../core/bytes.ts';
import { chunkId, fromHex, toHex } from '../engine/hash.ts';
import type { BlobType } from '../engine/format.ts';
import type { ChunkerParams } from '../engine/chunker.ts';
import type { ExpectedFile, ReadFileResult } from '../engine/tasks.ts';
import type { Encoder, SaverStats } from '../repository/packer.ts';
import type { Repository } from '../repository/repository.ts';
import { encodeTree, encodeTreeParts, nameBytes, type Tree, type TreeNode } from '../repository/tree.ts';
import { describeUnreadable, type HostIdentity, type RootMeta, type Snapshot, type SnapshotRef, type SnapshotSummary, type UnreadableSnapshot } from '../repository/snapshot.ts';
import { readXattrs, dataRegions } from '../sources/metadata.ts';
import { childPath, listDir, type DirEntry, type DirListing, type EntryStat } from '../sources/scan.ts';
import type { BlobDecoder } from './read-blobs.ts';
import { LocalBackupStore, type BackupStore } from './backup-store.ts';
import { HoleMap, ZeroChunks } from './sparse-read.ts';
import { BufferPool } from '../engine/buffers.ts';
import { fixedChunkSize, type ChunkingChoice, type FileChunking } from './file-chunking.ts';

export const PROGRAM = 'coffer 0.1.0';

/** What reading a backup needs of the worker pool: chunking and hashing (no key that decrypts). */
export interface BackupReader {
  readonly size: number;
  /** Reads and hashes small files in a worker (see WorkerPool.readFiles). */
  readFiles(files: readonly ExpectedFile[], limit: number, signal?: AbortSignal): Promise<ReadFileResult[]>;
  chunkAndHash(data: Uint8Array, eof: boolean, mode: 'cdc' | { fixed: number }, signal?: AbortSignal, options?: { transfer?: boolean }): Promise<{ ends: number[]; ids: Buffer[]; rest: number; data: Uint8Array }>;
}

/** What a backup into a local repository needs of the worker pool (WorkerPool): also encoding, decoding the parent's trees. */
export interface BackupPool extends BackupReader, Encoder, BlobDecoder {}

export interface BackupProgress {
  files: number;
  dirs: number;
  /** Bytes of all files processed (read or unchanged). */
  bytesScanned: number;
  /** Bytes actually read. */
  bytesRead: number;
  bytesNew: number;
  /** Total bytes expected, when known (from the parent snapshot or an image's size). */
  bytesTotal?: number;
  currentPath?: string;
}

export interface ExcludeOptions {
  /** gitignore-style patterns, matched against paths relative to each backup root. */
  patterns?: string[];
  /** Do not cross file-system boundaries below each backup root. */
  oneFileSystem?: boolean;
  /** Skip directories holding a valid CACHEDIR.TAG. */
  excludeCaches?: boolean;
  /** Skip directories holding a file of one of these names. */
  excludeIfPresent?: string[];
}

export interface StreamSource {
  /** Name of the file in the snapshot (e.g. "mydb.sql"). */
  name: string;
  /** A command run with /bin/sh -c; its stdout is stored. Fails the backup on a non-zero exit. */
  command?: string;
  /** Read this stream instead (e.g. process.stdin). */
  stream?: Readable;
}

export interface BackupOptions extends ExcludeOptions {
  signal?: AbortSignal;
  tags?: string[];
  /** The identity of the host whose data this is (recorded in the snapshot; the parent is this host's). */
  host: HostIdentity;
  /** Parent snapshot id, 'none' for a full read, or undefined to pick the latest of the same host and paths. */
  parent?: string;
  onProgress?: (p: BackupProgress) => void;
  onWarning?: (path: string, problem: string) => void;
  /** Things about the repository the operator should know (e.g. an unreadable snapshot skipped); not warnings about the data backed up. */
  onNotice?: (message: string) => void;
  /** Called after each pack upload (the crash test dies at random points through this). */
  onPackUploaded?: (packId: string) => void;
  /** Max small files read at once (default 256). */
  fileConcurrency?: number;
  /** Read and chunk, store nothing, commit nothing. */
  dryRun?: boolean;
  /** Back up paths as disk images (block devices or image files), read whole, zero blocks as holes. */
  images?: boolean;
  /**
   * How images are cut: 'cdc' (default) content-defined like files, which finds the same file
   * data at different places in different images (8 ext4 images of the benchmark: 261 MB
   * stored after the full backup instead of 480 MB, restic 289 MB); 'fixed' in the repository's
   * imageChunkSize blocks, aligned with the device's own blocks. All-zero chunks count as holes
   * either way.
   */
  imageChunking?: 'fixed' | 'cdc';
  /**
   * How files (not images) are cut: 'auto' (default) cuts page-structured files (databases, VM
   * disks: a whole number of 4 KiB pages) in fixed blocks, so that a rewritten page costs a small
   * block and not a whole content-defined chunk; 'cdc' cuts every file content-defined (file-chunking.ts).
   */
  fileChunking?: FileChunking;
  /** Back up a stream instead of paths. */
  stream?: StreamSource;
  /**
   * Test hook: runs after a file's content was read, before it is checked for change (files of
   * chunker minSize bytes or more, which this thread reads; smaller ones are read by the workers).
   */
  afterFileRead?: (path: string) => void | Promise<void>;
}

export interface BackupResult {
  snapshotId: string | undefined;
  snapshot: Snapshot;
  summary: SnapshotSummary;
  warnings: Array<{ path: string; problem: string }>;
  stats: SaverStats;
  parent?: string;
}

/**
 * A backup's result as reported outside the process (the CLI's summary, an agent's job result):
 * named field by field, so that neither contract grows by accident.
 */
export function backupReport(res: BackupResult) {
  const s = res.summary;
  return {
    snapshot: res.snapshotId,
    parent: res.parent,
    filesNew: s.filesNew,
    filesChanged: s.filesChanged,
    filesUnchanged: s.filesUnchanged,
    dirs: s.dirs,
    bytesScanned: s.bytesScanned,
    bytesRead: s.bytesRead ?? s.bytesScanned,
    bytesNew: s.bytesNew,
    bytesStored: s.bytesStored,
    blobsNew: s.blobsNew,
    warnings: res.warnings.length,
    durationMs: s.durationMs,
  };
}

const CACHEDIR_SIGNATURE = 'Signature: 8a477f597d28d172789f06886806bc55';

/** Files up to this size are read into small buffers (of a pool of their own). */
const SMALL_READ = 1 << 20;
const EMPTY = Buffer.alloc(0);

/** Entries of one directory visited at once (more than the small-file reads in flight). */
const DIR_WINDOW = 1024;
/**
 * Subdirectories walked side by side, backup-wide, beyond the one at a time that each directory
 * walks. Every directory being walked holds its listing and its children's nodes: with no bound,
 * a wide tree had thousands open at once; with this one, what is open is the path from the root
 * to the deepest directory being walked, DIR_EXTRA times over at most.
 */
const DIR_EXTRA = 64;

/** A name as the tree stores it: UTF-8 when it is, else bytes in rawName. */
function treeName(bytes: Buffer): { name: string; rawName?: string } {
  const name = bytes.toString('utf8');
  return Buffer.from(name, 'utf8').equals(bytes) ? { name } : { name, rawName: bytes.toString('base64') };
}

function nodeMeta(nameBytes: Buffer, st: EntryStat): Omit<TreeNode, 'type'> {
  return {
    ...treeName(nameBytes),
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
    inode: st.ino.toString(),
    deviceId: st.dev.toString(),
    links: Number(st.nlink),
  };
}

/** Owner names by id, looked up once each from /etc/passwd and /etc/group. */
class OwnerNames {
  private users: Map<number, string> | undefined;
  private groups: Map<number, string> | undefined;
  private static parse(path: string): Map<number, string> {
    const m = new Map<number, string>();
    try {
      for (const line of readFileSync(path, 'utf8').split('\n')) {
        const f = line.split(':');
        if (f.length > 2 && /^\d+$/.test(f[2]!)) m.set(Number(f[2]), f[0]!);
      }
    } catch {
      /* no such file: ids only */
    }
    return m;
  }
  user(uid: number): string | undefined {
    return (this.users ??= OwnerNames.parse('/etc/passwd')).get(uid);
  }
  group(gid: number): string | undefined {
    return (this.groups ??= OwnerNames.parse('/etc/group')).get(gid);
  }
}

const COMPARED = ['name', 'rawName', 'type', 'mode', 'uid', 'gid', 'user', 'group', 'mtimeNs', 'atimeNs', 'ctimeNs', 'size', 'subtree', 'linkTarget',
  'rawLinkTarget', 'rdev', 'inode', 'deviceId', 'links', 'changedWhileRead', 'sparse'] as const;

/**
 * Returns the parent's node itself when the new one says the same, so that a directory whose
 * children are all the parent's nodes can reuse the parent's subtree as it is.
 */
function reuseIfSame(prev: TreeNode | undefined, node: TreeNode): TreeNode {
  if (!prev) return node;
  for (const k of COMPARED) if (prev[k] !== node[k]) return node;
  if (prev.content !== node.content && JSON.stringify(prev.content) !== JSON.stringify(node.content)) return node;
  if (prev.xattrs !== node.xattrs && JSON.stringify(prev.xattrs) !== JSON.stringify(node.xattrs)) return node;
  return prev;
}

/** Two paths given would be one entry of the snapshot (`etc` and `/etc`; `.` and `/`). */
function samePlace(a: { p: string }, b: { p: string }, treePath: string, onDisk?: string): CofferError {
  const where = treePath === '/' ? 'the root of the snapshot' : `${treePath} in the snapshot`;
  return new CofferError('USAGE', `Cannot back up ${b.p} together with ${a.p}: both would be ${where}${onDisk ? ` (${onDisk} in what ${a.p} stores)` : ''}`, {
    hint: 'Relative paths are stored below the snapshot root as given: give both as absolute paths, or back them up in separate runs.',
  });
}

/** A path given lies below a symlink (or file) that another path given stores as such. */
function notADirectory(path: string, st: EntryStat, outer: { p: string; abs: string }, inner: { p: string; abs: string }, innerReal: string | undefined): CofferError {
  const what = st.isSymbolicLink() ? 'a symlink' : st.isFile() ? 'a file' : 'not a directory';
  const inside = path === outer.abs ? '' : ` (inside ${outer.p})`;
  return new CofferError('USAGE', `Cannot back up ${inner.p} together with ${outer.p}: ${path}${inside} is ${what}, and one entry of the snapshot cannot be both that and the directory holding ${inner.p}`, {
    hint: st.isSymbolicLink() && innerReal
      ? `Give ${inner.p} by its real path, ${innerReal}, which does not go through the link, or back up the two paths in separate runs.`
      : 'Back up the two paths in separate runs.',
  });
}

/** Splits a backup path into the segments it has inside the snapshot tree. */
export function treeSegments(path: string): string[] {
  const n = normalize(path);
  if (!isAbsolute(n) && (n === '..' || n.startsWith('..' + sep))) {
    throw new CofferError('USAGE', `Cannot back up ${path}: relative paths must not leave the current directory`, { hint: 'Give an absolute path instead.' });
  }
  return n.split(sep).filter((s) => s !== '' && s !== '.');
}

/** Backs up into a repository this process holds the keys of. */
export async function backup(repo: Repository, pool: BackupPool, paths: string[], options: BackupOptions): Promise<BackupResult> {
  if (paths.length === 0 && !options.stream) throw new CofferError('USAGE', 'Cannot back up: no paths given', { hint: 'Name at least one file or directory, or use --stdin / --command.' });
  const store = await LocalBackupStore.open(repo, pool, { signal: options.signal, dryRun: options.dryRun, onNotice: options.onNotice, onPackUploaded: options.onPackUploaded });
  return backupTo(store, pool, paths, options);
}

/**
 * Backs up into a store: the local repository, or a storage node that holds the keys (a remote
 * agent). The store is ended when this returns.
 */
export async function backupTo(store: BackupStore, pool: BackupReader, paths: string[], options: BackupOptions): Promise<BackupResult> {
  const { signal } = options;
  const started = Date.now();
  const host = options.host;
  const s = store;
  try {
    if (paths.length === 0 && !options.stream) throw new CofferError('USAGE', 'Cannot back up: no paths given', { hint: 'Name at least one file or directory, or use --stdin / --command.' });
    const absPaths = options.stream ? [`/${options.stream.name}`] : paths.map((p) => resolve(p));

    let parent: SnapshotRef | undefined;
    const onUnreadable = (u: UnreadableSnapshot) => options.onNotice?.(describeUnreadable(u));
    if (options.parent && options.parent !== 'none') {
      parent = await s.findParent(options.parent, host.hostname, absPaths, { signal, onUnreadable });
    } else if (options.parent === undefined && !options.stream) {
      parent = await s.findParent(undefined, host.hostname, absPaths, { signal, onUnreadable });
    }

    const warnings: Array<{ path: string; problem: string }> = [];
    const warn = (path: string, problem: string) => {
      warnings.push({ path, problem });
      options.onWarning?.(path, problem);
    };
    const progress: BackupProgress = { files: 0, dirs: 0, bytesScanned: 0, bytesRead: 0, bytesNew: 0, bytesTotal: parent?.snapshot.summary?.bytesScanned };
    let lastReport = 0;
    const report = (force = false) => {
      const t = Date.now();
      if (!options.onProgress || (!force && t - lastReport < 200)) return;
      lastReport = t;
      progress.bytesNew = s.stats.bytesNew;
      options.onProgress(progress);
    };
    const counts = { filesNew: 0, filesChanged: 0, filesUnchanged: 0 };
    // Small files are bound by I/O latency: many at once, read and hashed by the workers in
    // batches. Large ones by CPU and memory: about one per worker. The BlobSaver's backpressure
    // bounds what is read but not yet stored.
    const chunker: ChunkerParams = s.chunker;
    const chunking: ChunkingChoice = { images: options.images, imageChunking: options.imageChunking, fileChunking: options.fileChunking, imageChunkSize: s.imageChunkSize, chunker };
    const smallLimiter = new Limiter(options.fileConcurrency ?? 256);
    const smallReader = new SmallFileBatcher(pool, chunker.maxSize, signal);
    // Large files read at once: at least three (a cold disk serves several reads better than one),
    // else one more than the workers that chunk them.
    const readers = Math.max(3, pool.size + 1);
    const largeLimiter = new Limiter(readers);
    const readSize = Math.max(4 * 1024 * 1024, chunker.maxSize * 2);
    const zeroChunks = new ZeroChunks(pool, chunker);
    const owners = new OwnerNames();
    /** An entry's metadata with its owner's user and group names. */
    const ownedMeta = (nameBytes: Buffer, st: EntryStat): Omit<TreeNode, 'type'> => {
      const meta = nodeMeta(nameBytes, st);
      const user = owners.user(meta.uid);
      const group = owners.group(meta.gid);
      if (user) meta.user = user;
      if (group) meta.group = group;
      return meta;
    };

    /** Stores blobs; `released` is called once their raw bytes are no longer read. */
    const saveBlobs = async (items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }>, released?: () => void) => {
      await s.saveMany(items, released);
    };
    // Read buffers, reused: a fresh one per read cost a page fault per 4 KiB read (and the
    // zeroing). Files up to 1 MiB take small ones (many are read at once), others full ones.
    const smallBuffers = new BufferPool(SMALL_READ + 1, 16);
    const readBuffers = new BufferPool(readSize, readers + 1);
    const storeTree = (tree: Tree): Promise<string> => storeTreeBytes(encodeTree(tree));
    /** A tree from its nodes' JSON in name order (see encodeTreeParts). */
    const storeTreeParts = (parts: readonly string[]): Promise<string> => storeTreeBytes(encodeTreeParts(parts, parts.length > 4096));
    const storeTreeBytes = async (bytes: Buffer): Promise<string> => {
      const id = chunkId(s.chunkIdKey, bytes);
      await saveBlobs([{ type: 'tree', id, raw: bytes }]);
      return toHex(id);
    };

    /**
     * Reads a stream of bytes (file, device, command output) through the chunker and stores its
     * chunks. `fixed` selects fixed-size chunking (disk images); all-zero chunks of images
     * (fixed or content-defined) are counted as holes. With `holeMap`, holes are not read but
     * given as zeros, and long ones skipped whole chunk by chunk (sparse-read.ts).
     */
    const readStream = async (next: (buf: Buffer, offset: number, length: number, position: number) => Promise<number>, sizeHint: number | undefined, fixed: number | undefined, holeMap?: HoleMap): Promise<{ content: string[]; size: number; holes: number }> => {
      const content: string[] = [];
      let size = 0;
      let holes = 0;
      // Buffers over their own ArrayBuffer (never Node's shared pool): they are moved to workers.
      const buffers = sizeHint !== undefined && sizeHint <= SMALL_READ ? smallBuffers : readBuffers;
      let buf: Buffer = Buffer.from(await buffers.take());
      if (sizeHint !== undefined && sizeHint + 1 < buf.length) buf = buf.subarray(0, sizeHint + 1);
      let filled = 0;
      try {
      for (;;) {
        throwIfAborted(signal);
        // The buffer holds [size - filled, size) and starts at a chunk boundary. When all of it
        // lies in a hole, the chunks that fit in the rest of the hole are all the zero chunk.
        const start = size - filled;
        const holeEnd = holeMap ? holeMap.holeEnd(start) : start;
        if (holeEnd >= size && holeEnd - start >= (fixed ?? chunker.minSize)) {
          const zero = await zeroChunks.get(fixed, signal);
          const k = Math.floor((holeEnd - start) / zero.length);
          if (k > 0) {
            await saveBlobs([{ type: 'data', id: zero.id, raw: zero.raw }]);
            for (let i = 0; i < k; i++) content.push(zero.hex);
            if (options.images) holes += k * zero.length;
            progress.bytesScanned += k * zero.length;
            size = start + k * zero.length;
            filled = 0;
            report();
          }
        }
        let eof = false;
        while (filled < buf.length) {
          let want = buf.length - filled;
          if (holeMap) {
            const zeros = Math.min(holeMap.holeEnd(size) - size, want);
            if (zeros > 0) {
              buf.fill(0, filled, filled + zeros);
              filled += zeros;
              size += zeros;
              continue;
            }
            want = Math.min(want, holeMap.dataEnd(size) - size);
          }
          const n = await next(buf, filled, want, size);
          filled += n;
          size += n;
          progress.bytesRead += n;
          if (n === 0 || (sizeHint !== undefined && n < want)) {
            // A short read of a regular file is its end: saves a read call per small file.
            eof = true;
            break;
          }
        }
        if (filled === 0) break;
        if (fixed === undefined && filled < chunker.minSize && eof) {
          // A small file is one chunk: hash it here rather than pay a worker round trip.
          const data = buf.subarray(0, filled);
          const id = chunkId(s.chunkIdKey, data);
          const held = buf;
          buf = EMPTY;
          await saveBlobs([{ type: 'data', id, raw: data }], () => buffers.give(held.buffer as ArrayBuffer));
          content.push(toHex(id));
          break;
        }
        // The read buffer moves to the worker and back (no copy); `buf` is detached meanwhile.
        const r = await pool.chunkAndHash(buf.subarray(0, filled), eof, fixed === undefined ? 'cdc' : { fixed }, signal, { transfer: true });
        const { ends, ids, rest } = r;
        const data = Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
        buf = data;
        const items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }> = [];
        for (let i = 0; i < ids.length; i++) {
          const raw = data.subarray(i === 0 ? 0 : ends[i - 1]!, ends[i]!);
          if (options.images && isAllZero(raw)) holes += raw.length;
          items.push({ type: 'data', id: ids[i]!, raw });
          content.push(toHex(ids[i]!));
        }
        progress.bytesScanned += filled - rest;
        // The rest moves to the next buffer before this one may be given back.
        const held = buf;
        buf = EMPTY;
        if (!eof) {
          buf = Buffer.from(await buffers.take());
          held.copy(buf, 0, filled - rest, filled);
        }
        await saveBlobs(items, () => buffers.give(held.buffer as ArrayBuffer));
        report();
        if (eof) break;
        filled = rest;
      }
      } finally {
        if (buf !== EMPTY) buffers.give(buf.buffer as ArrayBuffer);
      }
      return { content, size, holes };
    };

    const readFile = async (path: Buffer, st: EntryStat, fixed: number | undefined): Promise<{ content: string[]; size: number; changed: boolean; holes: number; sparse?: boolean }> => {
      if (fixed === undefined && st.isFile() && st.size < BigInt(chunker.minSize)) {
        const r = await smallReader.read({ path, size: st.size, ino: st.ino, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs });
        if (!r.ok) throw Object.assign(new Error(r.message), { code: r.errno });
        progress.bytesRead += r.data.length;
        if (r.data.length) await saveBlobs([{ type: 'data', id: r.id, raw: r.data }]);
        return { content: r.data.length ? [toHex(r.id)] : [], size: r.data.length, changed: r.changed, holes: 0 };
      }
      const fh = await open(path, 'r');
      try {
        const isDev = st.isBlockDevice();
        // Fewer blocks than the size needs: maybe holes, which are then not read.
        let holeMap: HoleMap | undefined;
        if (!isDev && st.blocks * 512n < st.size) {
          try {
            const map = new HoleMap(dataRegions(fh.fd, Number(st.size)), Number(st.size));
            if (map.holeBytes > 0) holeMap = map;
          } catch {
            /* then it is read whole */
          }
        }
        const r = await readStream(async (b, o, l, at) => (await fh.read(b, o, l, at)).bytesRead, isDev ? undefined : Number(st.size), fixed, holeMap);
        await options.afterFileRead?.(path.toString('utf8'));
        const after = await fh.stat({ bigint: true });
        const changed = !isDev && (after.mtimeNs !== st.mtimeNs || after.size !== st.size || after.ctimeNs !== st.ctimeNs || BigInt(r.size) !== st.size);
        return { ...r, changed, ...(holeMap ? { sparse: true } : {}) };
      } finally {
        await fh.close();
      }
    };

    /** True when every blob of a parent's file is still stored (and not condemned by prune). */
    const contentAvailable = (content: string[]) => content.every((c) => s.hasBlob('data', fromHex(c)));

    interface Ctx {
      /** Root of the backup path being walked: excludes are relative to it. */
      root: Buffer;
      ig: Ignore | undefined;
      dev: bigint;
    }

    const excluded = (ctx: Ctx, path: Buffer, isDir: boolean): boolean => {
      if (!ctx.ig) return false;
      const rel = path.subarray(ctx.root.length + (ctx.root.length > 1 ? 1 : 0)).toString('utf8');
      if (!rel) return false;
      return ctx.ig.ignores(isDir ? rel + '/' : rel);
    };

    const dirExcludedByMarker = async (path: Buffer): Promise<string | undefined> => {
      if (options.excludeCaches) {
        try {
          const fh = await open(childPath(path, Buffer.from('CACHEDIR.TAG')), 'r');
          try {
            const head = Buffer.alloc(CACHEDIR_SIGNATURE.length);
            await fh.read(head, 0, head.length, 0);
            if (head.toString('latin1') === CACHEDIR_SIGNATURE) return 'CACHEDIR.TAG';
          } finally {
            await fh.close();
          }
        } catch {
          /* no tag */
        }
      }
      for (const name of options.excludeIfPresent ?? []) {
        try {
          await lstat(childPath(path, Buffer.from(name)));
          return name;
        } catch {
          /* not present */
        }
      }
      return undefined;
    };

    // The parent's trees, read in batches: when a directory's parent tree is loaded, the trees of
    // its subdirectories are fetched too, as the walk is about to ask for them.
    const parentTrees = { get: (id: string) => s.loadTree(id), prefetch: (ids: string[]) => s.prefetchTrees(ids), clear: () => s.clearTrees() };
    const loadParentChildren = async (node: TreeNode | undefined): Promise<Map<string, TreeNode> | undefined> => {
      if (!node || node.type !== 'dir' || !node.subtree) return undefined;
      try {
        const t = await parentTrees.get(node.subtree);
        parentTrees.prefetch(t.nodes.filter((n) => n.type === 'dir' && n.subtree).map((n) => n.subtree!));
        return new Map(t.nodes.map((n) => [n.rawName ?? n.name, n]));
      } catch (e) {
        if (isCofferError(e, 'CANCELLED')) throw e;
        return undefined; // a damaged parent only costs a full read of this directory
      }
    };

    // Returns the node for `path` (named `nameBytes`), or undefined if it must be skipped.
    // `entry` is what scanDir() found of it (its lstat or why there is none); without it, lstat.
    const visit = async (ctx: Ctx, path: Buffer, nameBytes: Buffer, prev: TreeNode | undefined, entry?: DirEntry): Promise<TreeNode | undefined> => {
      throwIfAborted(signal);
      // The path as text, for warnings and progress only: made when needed.
      let shownText: string | undefined;
      const shown = (): string => (shownText ??= path.toString('utf8'));
      let st: EntryStat;
      try {
        if (entry?.error) throw entry.error;
        st = entry?.stat ?? (await lstat(path, { bigint: true }));
      } catch (e) {
        warn(shown(), `cannot stat: ${(e as Error).message}`);
        return undefined;
      }
      if (excluded(ctx, path, st.isDirectory())) return undefined;
      const meta = ownedMeta(nameBytes, st);
      // Setting an xattr changes ctime: with the same inode and ctime as in the parent, the
      // parent's xattrs are still right and the syscalls can be skipped.
      if (prev && prev.ctimeNs === meta.ctimeNs && prev.inode === meta.inode) {
        if (prev.xattrs) meta.xattrs = prev.xattrs;
      } else if (entry?.mayHaveXattrs !== false) {
        try {
          const xattrs = readXattrs(path);
          if (xattrs?.length) meta.xattrs = xattrs;
        } catch (e) {
          warn(shown(), `cannot read extended attributes: ${(e as Error).message}`);
        }
      }
      if (st.isDirectory()) {
        if (ctx.dev !== st.dev && options.oneFileSystem) {
          // A mount point: keep the directory itself, not what is mounted on it.
          progress.dirs++;
          return { ...meta, type: 'dir', subtree: await storeTree({ nodes: [] }) };
        }
        const marker = await dirExcludedByMarker(path);
        if (marker) {
          progress.dirs++;
          return { ...meta, type: 'dir', subtree: await storeTree({ nodes: [] }) };
        }
        let listing: DirListing;
        try {
          listing = await listDir(path);
        } catch (e) {
          warn(shown(), `cannot list directory: ${(e as Error).message}`);
          return undefined;
        }
        const prevChildren = await loadParentChildren(prev);
        // Each child is kept as its JSON (the tree's bytes to be), in the listing's name order.
        const children: Array<string | undefined> = new Array(listing.length);
        let kept = 0;
        let allFromParent = true;
        await walkListing(ctx, path, listing, prevChildren, (i, key, node) => {
          if (!node) return;
          kept++;
          if (node !== prevChildren?.get(key)) allFromParent = false;
          children[i] = JSON.stringify(node);
        }, undefined, true);
        progress.dirs++;
        // Every child is the parent's node itself: the subtree is the parent's, no need to encode,
        // hash and look it up again.
        const sameChildren = prev?.subtree !== undefined && prevChildren !== undefined && allFromParent && kept === prevChildren.size &&
          s.hasBlob('tree', fromHex(prev.subtree));
        const subtree = sameChildren ? prev!.subtree! : await storeTreeParts(children.filter((c): c is string => c !== undefined));
        return reuseIfSame(prev, { ...meta, type: 'dir', subtree });
      }
      if (st.isFile() || (options.images && st.isBlockDevice())) {
        const size = Number(st.size);
        if (
          prev?.type === 'file' && prev.size === size && prev.mtimeNs === meta.mtimeNs && prev.ctimeNs === meta.ctimeNs &&
          prev.inode === meta.inode && prev.content && !prev.changedWhileRead && contentAvailable(prev.content)
        ) {
          counts.filesUnchanged++;
          progress.files++;
          progress.bytesScanned += size;
          report();
          return reuseIfSame(prev, { ...meta, type: 'file', size, content: prev.content, ...(prev.sparse ? { sparse: true } : {}) });
        }
        if (size === 0 && st.isFile()) {
          // Nothing to read: no open, no worker round trip (a directory of a million empty files).
          progress.files++;
          if (prev) counts.filesChanged++;
          else counts.filesNew++;
          report();
          return { ...meta, type: 'file', size: 0, content: [] };
        }
        const fixed = fixedChunkSize(size, chunking);
        return (size > 1024 * 1024 || st.isBlockDevice() ? largeLimiter : smallLimiter).run(async () => {
          progress.currentPath = shown();
          try {
            const r = await readFile(path, st, fixed);
            progress.files++;
            if (prev) counts.filesChanged++;
            else counts.filesNew++;
            if (r.size < chunker.minSize && fixed === undefined) progress.bytesScanned += r.size;
            if (r.changed) warn(shown(), 'file changed while it was read; stored as read');
            report();
            // An image cut in fixed blocks is sparse where its blocks were zero; anything else is checked for holes.
            const holesCounted = options.images && fixed !== undefined;
            let sparse = r.holes > 0 || (!holesCounted && r.sparse === true);
            if (!sparse && !holesCounted && st.blocks * 512n < st.size) {
              try {
                const fh = await open(path, 'r');
                try {
                  sparse = dataRegions(fh.fd, size).reduce((n, [a, b]) => n + (b - a), 0) < size;
                } finally {
                  await fh.close();
                }
              } catch {
                /* sparse detection is an optimisation for restore */
              }
            }
            return { ...meta, type: 'file' as const, size: r.size, content: r.content, ...(r.changed ? { changedWhileRead: true } : {}), ...(sparse ? { sparse: true } : {}) };
          } catch (e) {
            if (e instanceof CofferError) throw e;
            warn(shown(), `cannot read: ${(e as Error).message}`);
            return undefined;
          }
        });
      }
      if (st.isSymbolicLink()) {
        // A symlink's target cannot change in place: the same inode, ctime and mtime as in the
        // parent snapshot means the same target, and no readlink is needed.
        if (prev?.type === 'symlink' && prev.inode === meta.inode && prev.ctimeNs === meta.ctimeNs && prev.mtimeNs === meta.mtimeNs && prev.linkTarget !== undefined) {
          return reuseIfSame(prev, { ...meta, type: 'symlink', linkTarget: prev.linkTarget, ...(prev.rawLinkTarget !== undefined ? { rawLinkTarget: prev.rawLinkTarget } : {}) });
        }
        try {
          const target = await readlink(path, { encoding: 'buffer' });
          const t = treeName(target);
          return reuseIfSame(prev, { ...meta, type: 'symlink', linkTarget: t.name, ...(t.rawName ? { rawLinkTarget: t.rawName } : {}) });
        } catch (e) {
          warn(shown(), `cannot read link: ${(e as Error).message}`);
          return undefined;
        }
      }
      const type = st.isFIFO() ? 'fifo' : st.isSocket() ? 'socket' : st.isBlockDevice() ? 'blockdev' : 'chardev';
      return { ...meta, type, rdev: Number(st.rdev) };
    };

    let extraDirs = DIR_EXTRA;
    /**
     * Visits the entries of `listing` (the directory at `dirPath`) but those `skip` names, and
     * gives each one's node (or undefined: skipped) to `put`. At most DIR_WINDOW entries are in
     * flight: all of them at once held a promise, a closure and a node per entry (a million-file
     * directory: 3.5 GB). Its subdirectories are walked one after another, and with `extra` also
     * side by side while the backup-wide DIR_EXTRA allows (the root's are not: two top-level
     * directories at once cost 15 % more CPU on the benchmark).
     */
    const walkListing = async (
      ctx: Ctx, dirPath: Buffer, listing: DirListing, prevChildren: Map<string, TreeNode> | undefined,
      put: (i: number, key: string, node: TreeNode | undefined) => void, skip: ((key: string) => boolean) | undefined, extra: boolean,
    ): Promise<void> => {
      let next = 0;
      let dirChain: Promise<unknown> = Promise.resolve();
      const worker = async () => {
        while (next < listing.length) {
          const i = next++;
          const name = listing.name(i);
          const tn = treeName(name);
          const key = tn.rawName ?? tn.name;
          if (skip?.(key)) continue;
          const run = () => visit(ctx, childPath(dirPath, name), name, prevChildren?.get(key), listing.entry(i));
          let node: TreeNode | undefined;
          if (!listing.isDir(i)) node = await run();
          else if (extra && extraDirs > 0) {
            extraDirs--;
            try {
              node = await run();
            } finally {
              extraDirs++;
            }
          } else {
            const walked = dirChain.then(run);
            dirChain = walked.catch(() => {});
            node = await walked;
          }
          put(i, key, node);
        }
      };
      await Promise.all(Array.from({ length: Math.min(DIR_WINDOW, listing.length) }, worker));
    };

    // The root tree: absolute paths keep their full place, relative ones their place below the
    // current directory, and "." is the root itself.
    /**
     * A directory of the root tree's frame: the paths given and the directories on the way to
     * them (`children`), and the entries that a walk found there besides (`listed`: a listing
     * and each entry's node as JSON, in its name order).
     */
    interface Dir {
      children: Map<string, Dir | TreeNode>;
      listed?: { listing: DirListing; parts: Array<string | undefined> };
      path: string;
      prev: Map<string, TreeNode> | undefined;
      given?: boolean;
    }
    let rootPrev: Map<string, TreeNode> | undefined;
    if (parent) {
      try {
        const t = await parentTrees.get(parent.snapshot.tree);
        parentTrees.prefetch(t.nodes.filter((n) => n.type === 'dir' && n.subtree).map((n) => n.subtree!));
        rootPrev = new Map(t.nodes.map((n) => [n.rawName ?? n.name, n]));
      } catch (e) {
        if (isCofferError(e, 'CANCELLED')) throw e;
        warn('/', `parent snapshot ${parent.id.slice(0, 12)} is unreadable; reading everything`);
      }
    }
    const root: Dir = { children: new Map(), path: '/', prev: rootPrev };
    let treeId: string;
    let rootMeta: RootMeta | undefined;
    if (options.stream) {
      const src = options.stream;
      const r = await readCommandOrStream(src, readStream, signal);
      counts.filesNew++;
      progress.files++;
      const now = BigInt(Date.now()) * 1_000_000n;
      const uid = process.getuid?.() ?? 0;
      const gid = process.getgid?.() ?? 0;
      treeId = await storeTree({ nodes: [{ name: src.name, type: 'file', mode: 0o600, uid, gid, mtimeNs: now.toString(), size: r.size, content: r.content }] });
    } else {
      // The top-level directories (the paths given, or the entries of a root ".") are walked one
      // after another: each walk is already parallel inside, and two at once cost 15 % more CPU
      // on the benchmark. Everything else (files, images) starts at once, bounded by the read
      // limiters: one by one, each image's last block drained the workers before the next began
      // (8 images: 3.3 s instead of 2.2 s). Results are put in place once all have settled.
      const placed: Array<Promise<() => void>> = [];
      let dirChain: Promise<unknown> = Promise.resolve();
      const place = (dir: Dir, key: string, isDir: boolean, walk: () => Promise<TreeNode | undefined>) => {
        const node = isDir ? dirChain.then(walk) : walk();
        if (isDir) dirChain = node.catch(() => {});
        placed.push(node.then((n) => () => {
          if (n) dir.children.set(key, n);
        }));
      };
      /** A listing's walk, which puts its nodes in place itself (no key of it is a path given). */
      const placeAll = (walk: () => Promise<void>) => {
        placed.push(walk().then(() => () => {}));
      };
      // Every path given is stored as given, also one below another (`/var /var/log/app`,
      // `-x / /boot/efi`): each path's place in the tree is found first, then the outer one is
      // listed and its other entries are walked one by one (as restic unrolls it), so that
      // neither its excludes nor the order of the paths can drop the inner one. One name cannot
      // be both a symlink (or a file) and the directory that holds another path given, nor two
      // different things: that is refused, before anything is read.
      interface Target { p: string; abs: string; st: BigIntStats; ctx: Ctx }
      /** A place in the snapshot tree: a path given, or a directory on the way to some. */
      interface Slot { target?: Target; kids: Map<string, Slot>; disk: string; tree: string }
      const top: Slot = { kids: new Map(), disk: '/', tree: '/' };
      for (const p of paths) {
        const abs = resolve(p);
        const segs = treeSegments(p);
        let st: BigIntStats;
        try {
          st = await stat(abs, { bigint: true });
        } catch (e) {
          throw new CofferError('NOT_FOUND', `Cannot back up ${p}: ${(e as Error).message}`, { hint: 'Check the path.' });
        }
        // "." (or "/"): the directory's entries go to the root.
        if (segs.length === 0 && !st.isDirectory()) throw new CofferError('USAGE', `Cannot back up ${p} as the root: it is not a directory`);
        const patterns = options.patterns ?? [];
        const t: Target = { p, abs, st, ctx: { root: Buffer.from(abs), ig: patterns.length ? ignore().add(patterns) : undefined, dev: st.dev } };
        let slot = top;
        let cur = isAbsolute(p) ? '' : process.cwd().replace(/\/+$/, '');
        for (const seg of segs) {
          cur = cur + sep + seg;
          let next = slot.kids.get(seg);
          if (!next) slot.kids.set(seg, (next = { kids: new Map(), disk: cur, tree: `${slot.tree === '/' ? '' : slot.tree}/${seg}` }));
          slot = next;
        }
        // The same path twice ("a", "a/", "./a") is stored once.
        if (slot.target && slot.target.abs !== abs) throw samePlace(slot.target, t, slot.tree);
        slot.target ??= t;
      }

      /** The first path given at or below a slot, to name in messages. */
      const firstBelow = (s: Slot): Target => s.target ?? firstBelow(s.kids.values().next().value!);
      /** Whether the walk of `ctx` would go into the directory at `path` (see visit()). */
      const descends = async (ctx: Ctx, path: Buffer, st: EntryStat) => !excluded(ctx, path, true) && !(options.oneFileSystem && st.dev !== ctx.dev) && !(await dirExcludedByMarker(path));
      /** What is put in place once every path has its place; nothing is read before. */
      const pending: Array<() => void> = [];
      /**
       * Lays out the slots below `slot`, whose directory is `dir`. `walker` is the path given whose
       * walk reaches this place (the slot's own or an outer one) and its directory on disk: the
       * entries it finds there that hold no path given are walked as that path's.
       */
      const layout = async (slot: Slot, dir: Dir, walker: { t: Target; path: Buffer } | undefined): Promise<void> => {
        const found = new Map<string, DirEntry>();
        if (walker) {
          let listing: DirListing;
          try {
            listing = await listDir(walker.path);
          } catch (e) {
            throw new CofferError('NOT_FOUND', `Cannot back up ${walker.t.p}: ${(e as Error).message}`, { hint: 'Check the path and its permissions.' });
          }
          if (slot.kids.size > 0) {
            for (let i = 0; i < listing.length; i++) {
              const key = treeName(listing.name(i));
              const k = key.rawName ?? key.name;
              if (slot.kids.has(k)) found.set(k, listing.entry(i));
            }
          }
          // Every other entry is walked as the path's: a listing at a time, windowed (a root "."
          // of a million files once started a million visits at once: 3.3 KB each).
          const w = walker;
          const skip = slot.kids.size > 0 ? (k: string) => slot.kids.has(k) : undefined;
          const listed = (dir.listed = { listing, parts: new Array<string | undefined>(listing.length) });
          pending.push(() => placeAll(() => walkListing(w.t.ctx, w.path, listing, dir.prev, (i, _k, node) => {
            if (node) listed.parts[i] = JSON.stringify(node);
          }, skip, false)));
        }
        for (const [k, kid] of slot.kids) {
          const en = found.get(k);
          const enPath = en && walker ? childPath(walker.path, en.name).toString() : undefined;
          const t = kid.target;
          if (t && enPath !== undefined && enPath !== t.abs) throw samePlace(walker!.t, t, kid.tree, enPath);
          if (t && kid.kids.size === 0) {
            pending.push(() => place(dir, k, t.st.isDirectory(), () => visit(t.ctx, Buffer.from(t.abs), Buffer.from(k), dir.prev?.get(k))));
            continue;
          }
          // A directory that holds paths given: it must be one, in what the walk reaching it stores.
          let next: { t: Target; path: Buffer } | undefined;
          let path = enPath ?? kid.disk;
          const st = t ? await lstat(t.abs, { bigint: true }) : en?.stat;
          if (st && !st.isDirectory()) {
            const inner = firstBelow(t ? kid.kids.values().next().value! : kid);
            throw notADirectory(t ? t.abs : path, st, t ?? walker!.t, inner, await realpath(inner.abs).catch(() => undefined));
          }
          if (t) next = { t, path: Buffer.from(t.abs) };
          else if (st && walker) next = { t: walker.t, path: Buffer.from(path) };
          if (next && !(await descends(next.t.ctx, next.path, st!))) next = undefined;
          // On the way to a path given, outside any walk: a symlink to a directory (`backup
          // link/dir`) is stored as the directory it points to, with that directory's metadata.
          if (!st) path = await realpath(path).catch(() => path);
          const child: Dir = { children: new Map(), path, prev: await loadParentChildren(dir.prev?.get(k)), given: t !== undefined || st !== undefined };
          dir.children.set(k, child);
          await layout(kid, child, next);
        }
      };
      await layout(top, root, top.target ? { t: top.target, path: Buffer.from(top.target.abs) } : undefined);
      for (const put of pending) put();
      // All settled before any error is thrown: no walk is left running behind a failed backup.
      const outcomes = await Promise.allSettled(placed);
      for (const o of outcomes) if (o.status === 'rejected') throw o.reason;
      for (const o of outcomes) if (o.status === 'fulfilled') o.value();
      /** A directory's node as a walk would store it (owner names, xattrs); a failure is a warning only for a path given. */
      const dirNode = async (path: string, name: string, given: boolean | undefined) => {
        const st = await lstat(path, { bigint: true });
        const meta = ownedMeta(Buffer.from(name), st);
        try {
          const xattrs = readXattrs(path);
          if (xattrs?.length) meta.xattrs = xattrs;
        } catch (e) {
          if (given) warn(path, `cannot read extended attributes: ${(e as Error).message}`);
        }
        return meta;
      };
      const buildDir = async (d: Dir): Promise<string> => {
        const nodes: TreeNode[] = [];
        for (const [name, c] of d.children) {
          // This may be a path given (or a directory inside one) with another one below it.
          if ('children' in c && c.children instanceof Map) nodes.push({ ...(await dirNode(c.path, name, (c as Dir).given)), type: 'dir', subtree: await buildDir(c as Dir) });
          else nodes.push(c as TreeNode);
        }
        if (!d.listed) return storeTree({ nodes });
        // The walk's entries are in name order already (the scan's); the few others merge in.
        const others = nodes.map((n) => ({ name: nameBytes(n), json: JSON.stringify(n) })).sort((a, b) => Buffer.compare(a.name, b.name));
        const { listing, parts } = d.listed;
        const ordered: string[] = [];
        let j = 0;
        for (let i = 0; i < listing.length; i++) {
          const part = parts[i];
          if (part === undefined) continue;
          const name = listing.name(i);
          while (j < others.length && Buffer.compare(others[j]!.name, name) < 0) ordered.push(others[j++]!.json);
          ordered.push(part);
        }
        while (j < others.length) ordered.push(others[j++]!.json);
        d.listed = undefined;
        return storeTreeParts(ordered);
      };
      treeId = await buildDir(root);
      // The root's own metadata, for the target directory of a restore (see RootMeta).
      const { mode, uid, gid, user, group, mtimeNs, xattrs } = await dirNode(top.target?.abs ?? (paths.some((p) => !isAbsolute(p)) ? process.cwd() : '/'), '.', top.target !== undefined);
      rootMeta = { mode, uid, gid, ...(user ? { user } : {}), ...(group ? { group } : {}), mtimeNs, ...(xattrs ? { xattrs } : {}) };
      parentTrees.clear();
    }
    await s.flush();
    report(true);

    const summary: SnapshotSummary = {
      ...counts,
      dirs: progress.dirs,
      bytesScanned: progress.bytesScanned,
      bytesRead: progress.bytesRead,
      bytesNew: s.stats.bytesNew,
      bytesStored: s.stats.bytesStored,
      blobsNew: s.stats.blobsNew,
      warnings: warnings.length,
      durationMs: Date.now() - started,
    };
    const snapshot: Snapshot = {
      version: 1,
      time: new Date(started).toISOString(),
      tree: treeId,
      paths: absPaths,
      host,
      username: safeUser(),
      tags: options.tags ?? [],
      ...(parent ? { parent: parent.id } : {}),
      program: PROGRAM,
      summary,
      ...(warnings.length ? { warnings: warnings.slice(0, 1000) } : {}),
      ...(rootMeta ? { root: rootMeta } : {}),
    };
    let snapshotId: string | undefined;
    if (!options.dryRun) snapshotId = await s.commit(snapshot, { signal });
    return { snapshotId, snapshot, summary, warnings, stats: s.stats, parent: parent?.id };
  } catch (e) {
    await s.fail(e);
    throw e;
  } finally {
    await s.end();
  }
}

/**
 * Collects small-file reads into batches for the workers: a batch goes out when it has
 * BATCH_FILES files or BATCH_BYTES bytes, or at the end of the current turn of the event loop.
 */
class SmallFileBatcher {
  static readonly BATCH_FILES = 64;
  static readonly BATCH_BYTES = 4 << 20;
  private readonly pool: Pick<BackupReader, 'readFiles'>;
  private readonly limit: number;
  private readonly signal: AbortSignal | undefined;
  private batch: Array<{ file: ExpectedFile; resolve: (r: ReadFileResult) => void; reject: (e: unknown) => void }> = [];
  private bytes = 0;
  private scheduled = false;

  constructor(pool: Pick<BackupReader, 'readFiles'>, limit: number, signal: AbortSignal | undefined) {
    this.pool = pool;
    this.limit = limit;
    this.signal = signal;
  }

  read(file: ExpectedFile): Promise<ReadFileResult> {
    return new Promise((resolve, reject) => {
      this.batch.push({ file, resolve, reject });
      this.bytes += Number(file.size);
      if (this.batch.length >= SmallFileBatcher.BATCH_FILES || this.bytes >= SmallFileBatcher.BATCH_BYTES) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => {
          this.scheduled = false;
          this.flush();
        });
      }
    });
  }

  private flush(): void {
    const batch = this.batch;
    if (batch.length === 0) return;
    this.batch = [];
    this.bytes = 0;
    this.pool.readFiles(batch.map((b) => b.file), this.limit, this.signal).then(
      (results) => batch.forEach((b, i) => b.resolve(results[i]!)),
      (e: unknown) => batch.forEach((b) => b.reject(e)),
    );
  }
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return String(process.getuid?.() ?? '');
  }
}

type StreamReader = (next: (buf: Buffer, offset: number, length: number, position: number) => Promise<number>, sizeHint: number | undefined, fixed: number | undefined) => Promise<{ content: string[]; size: number; holes: number }>;

/** Feeds a command's stdout or a stream to the reader; a command that fails fails the backup. */
async function readCommandOrStream(src: StreamSource, read: StreamReader, signal: AbortSignal | undefined): Promise<{ content: string[]; size: number }> {
  let stream: Readable;
  let child: ReturnType<typeof spawn> | undefined;
  let stderr = '';
  if (src.command) {
    child = spawn('/bin/sh', ['-c', src.command], { stdio: ['ignore', 'pipe', 'pipe'], signal });
    child.stderr!.on('data', (d) => {
      if (stderr.length < 4000) stderr += d;
    });
    stream = child.stdout!;
  } else if (src.stream) stream = src.stream;
  else throw new CofferError('USAGE', 'Cannot back up a stream: neither a command nor a stream given');
  const exited = child
    ? new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve, reject) => {
        child!.on('error', reject);
        child!.on('close', (code, sig) => resolve({ code, sig }));
      })
    : undefined;
  // A cancelled job aborts the child (an AbortError on 'error') while the read fails first and
  // nobody awaits `exited`: handled here, or it would end the process as an unhandled rejection.
  exited?.catch(() => {});
  // Pull-based reads from the stream into the reader's buffers.
  const iterator = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let pending: Buffer | undefined;
  let done = false;
  const next = async (buf: Buffer, offset: number, length: number): Promise<number> => {
    let n = 0;
    while (n < length && !done) {
      if (!pending || pending.length === 0) {
        const r = await iterator.next();
        if (r.done) {
          done = true;
          break;
        }
        pending = r.value;
      }
      const take = Math.min(length - n, pending.length);
      pending.copy(buf, offset + n, 0, take);
      pending = pending.subarray(take);
      n += take;
    }
    return n;
  };
  let r: { content: string[]; size: number };
  try {
    r = await read(next, undefined, undefined);
  } catch (e) {
    child?.kill('SIGTERM');
    throw e;
  }
  if (exited) {
    const { code, sig } = await exited;
    if (code !== 0) {
      throw new CofferError('INVALID_CONFIG', `Cannot back up the output of \`${src.command}\`: the command ${sig ? `was killed by ${sig}` : `exited with code ${code}`}; no snapshot was saved`, {
        hint: stderr.trim() ? `Its error output: ${stderr.trim().slice(0, 500)}` : 'Run the command by hand to see what fails.',
      });
    }
  }
  return r;
}
