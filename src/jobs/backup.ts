// The file backup job: walks the given paths, reads files in large blocks, has the worker pool
// chunk and hash them, stores new chunks through BlobSaver, builds trees bottom-up and commits
// a snapshot only after every pack and index file is stored. Unreadable entries become
// warnings (exit code 3), never a failed or partial commit.

import { open, lstat, readdir, readlink } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import { arch, hostname, platform } from 'node:os';
import { readFileSync } from 'node:fs';
import { resolve, isAbsolute, normalize, sep } from 'node:path';
import { CofferError, throwIfAborted } from '../core/errors.ts';
import { chunkId, toHex } from '../engine/hash.ts';
import type { BlobType } from '../engine/format.ts';
import type { ChunkerParams } from '../engine/chunker.ts';
import { BlobSaver, type Encoder, type SaverStats } from '../repository/packer.ts';
import type { Repository } from '../repository/repository.ts';
import { Session } from '../repository/session.ts';
import { encodeTree, type Tree, type TreeNode } from '../repository/tree.ts';
import { saveSnapshot, type HostIdentity, type Snapshot, type SnapshotSummary } from '../repository/snapshot.ts';
import { loadCondemned } from '../repository/prune.ts';

export const PROGRAM = 'coffer 0.1.0';

/** What the backup needs of the worker pool. */
export interface BackupPool extends Encoder {
  readonly size: number;
  chunkAndHash(data: Uint8Array, eof: boolean, mode: 'cdc' | { fixed: number }, signal?: AbortSignal): Promise<{ ends: number[]; ids: Buffer[]; rest: number }>;
}

export interface BackupProgress {
  files: number;
  dirs: number;
  bytesScanned: number;
  bytesNew: number;
  currentPath?: string;
}

export interface BackupOptions {
  signal?: AbortSignal;
  tags?: string[];
  host?: HostIdentity;
  /** Called now and then (at most every 100 ms) and at the end. */
  onProgress?: (p: BackupProgress) => void;
  onWarning?: (path: string, problem: string) => void;
  /** Called after each pack upload: used by the crash test to die at a random point. */
  onPackUploaded?: (packId: string) => void;
  /** Max files read at once (default: 2 per worker). */
  fileConcurrency?: number;
  /** Dry run: read and chunk, but store nothing and commit nothing. */
  dryRun?: boolean;
}

export interface BackupResult {
  snapshotId: string | undefined;
  snapshot: Snapshot;
  summary: SnapshotSummary;
  warnings: Array<{ path: string; problem: string }>;
  stats: SaverStats;
}

export function localHostIdentity(): HostIdentity {
  let machineId: string | undefined;
  let osRelease: string | undefined;
  try {
    machineId = readFileSync('/etc/machine-id', 'utf8').trim() || undefined;
  } catch {
    /* not every system has one */
  }
  try {
    osRelease = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
  } catch {
    /* optional */
  }
  return { hostname: hostname(), os: platform(), osRelease, arch: arch(), machineId };
}

class Limiter {
  private active = 0;
  private readonly waiters: Array<() => void> = [];
  private readonly max: number;
  constructor(max: number) {
    this.max = max;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiters.shift()?.();
    }
  }
}

function nsString(n: bigint): string {
  return n.toString();
}

function nodeMeta(name: string, st: BigIntStats): Omit<TreeNode, 'type'> {
  return {
    name,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeNs: nsString(st.mtimeNs),
    ctimeNs: nsString(st.ctimeNs),
    inode: st.ino.toString(),
    deviceId: st.dev.toString(),
    links: Number(st.nlink),
  };
}

/** Splits a backup path into the segments it has inside the snapshot tree. */
export function treeSegments(path: string): string[] {
  const n = normalize(path);
  if (!isAbsolute(n) && (n === '..' || n.startsWith('..' + sep))) {
    throw new CofferError('USAGE', `Cannot back up ${path}: relative paths must not leave the current directory`, { hint: 'Give an absolute path instead.' });
  }
  return n.split(sep).filter((s) => s !== '' && s !== '.');
}

export async function backup(repo: Repository, pool: BackupPool, paths: string[], options: BackupOptions = {}): Promise<BackupResult> {
  const { signal } = options;
  if (paths.length === 0) throw new CofferError('USAGE', 'Cannot back up: no paths given', { hint: 'Name at least one file or directory.' });
  const started = Date.now();
  const session = options.dryRun ? undefined : await Session.start(repo, 'backup', { signal });
  try {
    // Register first, then read the GC records: a prune that marks after this point waits for us.
    repo.setCondemned(await loadCondemned(repo, { signal }));
    await repo.loadIndex({ signal });

    const saver = new BlobSaver(repo, pool, { signal, onPackUploaded: options.onPackUploaded });
    const warnings: Array<{ path: string; problem: string }> = [];
    const warn = (path: string, problem: string) => {
      warnings.push({ path, problem });
      options.onWarning?.(path, problem);
    };
    const progress: BackupProgress = { files: 0, dirs: 0, bytesScanned: 0, bytesNew: 0 };
    let lastReport = 0;
    const report = (force = false) => {
      const t = Date.now();
      if (!options.onProgress || (!force && t - lastReport < 100)) return;
      lastReport = t;
      progress.bytesNew = saver.stats.bytesNew;
      options.onProgress(progress);
    };
    // Small files are bound by I/O latency: many at once. Large ones by CPU and memory: about
    // one per worker. The BlobSaver's backpressure bounds what is read but not yet stored.
    const smallLimiter = new Limiter(options.fileConcurrency ?? 32);
    const largeLimiter = new Limiter(pool.size + 1);
    const chunker: ChunkerParams = repo.config.chunker;
    const readSize = Math.max(8 * 1024 * 1024, chunker.maxSize * 2);
    let filesNew = 0;

    const saveBlobs = async (items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }>) => {
      if (options.dryRun) return;
      await saver.saveMany(items);
    };

    const storeTree = async (tree: Tree): Promise<string> => {
      const bytes = encodeTree(tree);
      const id = chunkId(repo.keys.chunkIdKey, bytes);
      await saveBlobs([{ type: 'tree', id, raw: bytes }]);
      return toHex(id);
    };

    const readFile = async (path: string, st: BigIntStats): Promise<{ content: string[]; size: number; changed: boolean }> => {
      const fh = await open(path, 'r');
      try {
        const content: string[] = [];
        let size = 0;
        // Size the first buffer to the file (+1 so that EOF shows without a second buffer): a small
        // file's chunk is a view of this buffer and is held until its batch is encoded.
        let buf = Buffer.allocUnsafe(Math.min(readSize, Number(st.size) + 1));
        let filled = 0;
        for (;;) {
          throwIfAborted(signal);
          let eof = false;
          while (filled < buf.length) {
            const want = buf.length - filled;
            const { bytesRead } = await fh.read(buf, filled, want, null);
            filled += bytesRead;
            size += bytesRead;
            // A short read of a regular file is its end: saves a read call per small file.
            if (bytesRead < want) {
              eof = true;
              break;
            }
          }
          if (filled === 0) break;
          const data = buf.subarray(0, filled);
          if (filled < chunker.minSize && eof) {
            // A small file is one chunk: hash it here rather than pay a worker round trip.
            const id = chunkId(repo.keys.chunkIdKey, data);
            await saveBlobs([{ type: 'data', id, raw: data }]);
            content.push(toHex(id));
            break;
          }
          const { ends, ids, rest } = await pool.chunkAndHash(data, eof, 'cdc', signal);
          const items = ids.map((id, i) => ({ type: 'data' as const, id, raw: data.subarray(i === 0 ? 0 : ends[i - 1]!, ends[i]!) }));
          await saveBlobs(items);
          for (const id of ids) content.push(toHex(id));
          progress.bytesScanned += filled - rest;
          report();
          if (eof) break;
          const next = Buffer.allocUnsafe(readSize);
          buf.copy(next, 0, filled - rest, filled);
          buf = next;
          filled = rest;
        }
        const after = await fh.stat({ bigint: true });
        const changed = after.mtimeNs !== st.mtimeNs || after.size !== st.size || after.ctimeNs !== st.ctimeNs;
        return { content, size, changed };
      } finally {
        await fh.close();
      }
    };

    // Returns the node for `path` (named `name`), or undefined if it must be skipped.
    const visit = async (path: string, name: string): Promise<TreeNode | undefined> => {
      throwIfAborted(signal);
      let st: BigIntStats;
      try {
        st = await lstat(path, { bigint: true });
      } catch (e) {
        warn(path, `cannot stat: ${(e as Error).message}`);
        return undefined;
      }
      const meta = nodeMeta(name, st);
      if (st.isDirectory()) {
        let names: string[];
        try {
          names = (await readdir(path)).sort();
        } catch (e) {
          warn(path, `cannot list directory: ${(e as Error).message}`);
          return undefined;
        }
        const children = await Promise.all(names.map((n) => visit(path === sep ? sep + n : path + sep + n, n)));
        progress.dirs++;
        const subtree = await storeTree({ nodes: children.filter((c): c is TreeNode => c !== undefined) });
        return { ...meta, type: 'dir', subtree };
      }
      if (st.isFile()) {
        return (st.size > 1024n * 1024n ? largeLimiter : smallLimiter).run(async () => {
          progress.currentPath = path;
          try {
            const r = await readFile(path, st);
            progress.files++;
            filesNew++;
            if (r.size < chunker.minSize) progress.bytesScanned += r.size;
            if (r.changed) warn(path, 'file changed while it was read; stored as read');
            report();
            return { ...meta, type: 'file' as const, size: r.size, content: r.content, ...(r.changed ? { changedWhileRead: true } : {}) };
          } catch (e) {
            if (e instanceof CofferError) throw e;
            warn(path, `cannot read: ${(e as Error).message}`);
            return undefined;
          }
        });
      }
      if (st.isSymbolicLink()) {
        try {
          return { ...meta, type: 'symlink', linkTarget: await readlink(path) };
        } catch (e) {
          warn(path, `cannot read link: ${(e as Error).message}`);
          return undefined;
        }
      }
      const type = st.isFIFO() ? 'fifo' : st.isSocket() ? 'socket' : st.isBlockDevice() ? 'blockdev' : 'chardev';
      return { ...meta, type, rdev: Number(st.rdev) };
    };

    // Build the root: each path keeps its own place in the tree (absolute paths in full,
    // relative ones as given, "." as the root itself).
    interface Dir { children: Map<string, Dir | TreeNode>; path: string }
    const root: Dir = { children: new Map(), path: '' };
    const absPaths: string[] = [];
    for (const p of paths) {
      const abs = resolve(p);
      absPaths.push(abs);
      const segs = treeSegments(p);
      if (segs.length === 0) {
        // "." (or "/"): the directory's entries go to the root.
        let st: BigIntStats;
        try {
          st = await lstat(abs, { bigint: true });
        } catch (e) {
          throw new CofferError('NOT_FOUND', `Cannot back up ${p}: ${(e as Error).message}`);
        }
        if (!st.isDirectory()) throw new CofferError('USAGE', `Cannot back up ${p} as the root: it is not a directory`);
        for (const n of (await readdir(abs)).sort()) {
          const node = await visit(abs === sep ? sep + n : abs + sep + n, n);
          if (node) root.children.set(n, node);
        }
        continue;
      }
      try {
        await lstat(abs);
      } catch (e) {
        throw new CofferError('NOT_FOUND', `Cannot back up ${p}: ${(e as Error).message}`, { hint: 'Check the path.' });
      }
      let dir = root;
      const base = isAbsolute(p) ? sep : process.cwd() + sep;
      let cur = base.replace(/\/+$/, '');
      for (const seg of segs.slice(0, -1)) {
        cur = cur + sep + seg;
        let next = dir.children.get(seg);
        if (!next || !('children' in next)) {
          next = { children: new Map(), path: cur };
          dir.children.set(seg, next);
        }
        dir = next as Dir;
      }
      const last = segs.at(-1)!;
      const node = await visit(abs, last);
      if (node) dir.children.set(last, node);
    }
    const buildDir = async (d: Dir): Promise<string> => {
      const nodes: TreeNode[] = [];
      for (const [name, c] of d.children) {
        if ('children' in c && c.children instanceof Map) {
          const st = await lstat(c.path, { bigint: true });
          nodes.push({ ...nodeMeta(name, st), type: 'dir', subtree: await buildDir(c as Dir) });
        } else nodes.push(c as TreeNode);
      }
      return storeTree({ nodes });
    };
    const treeId = await buildDir(root);
    if (!options.dryRun) await saver.flush();
    report(true);

    const summary: SnapshotSummary = {
      filesNew,
      filesChanged: 0,
      filesUnchanged: 0,
      dirs: progress.dirs,
      bytesScanned: progress.bytesScanned,
      bytesNew: saver.stats.bytesNew,
      bytesStored: saver.stats.bytesStored,
      blobsNew: saver.stats.blobsNew,
      warnings: warnings.length,
      durationMs: Date.now() - started,
    };
    const snapshot: Snapshot = {
      version: 1,
      time: new Date(started).toISOString(),
      tree: treeId,
      paths: absPaths,
      host: options.host ?? localHostIdentity(),
      username: process.env.USER ?? String(process.getuid?.() ?? ''),
      tags: options.tags ?? [],
      program: PROGRAM,
      summary,
      ...(warnings.length ? { warnings: warnings.slice(0, 1000) } : {}),
    };
    let snapshotId: string | undefined;
    if (!options.dryRun) {
      session!.assertAlive();
      snapshotId = await saveSnapshot(repo, snapshot, { signal });
    }
    return { snapshotId, snapshot, summary, warnings, stats: saver.stats };
  } finally {
    await session?.end().catch(() => {});
  }
}

