// The restore job: recreates a snapshot (or a part of it) under a target directory. Every blob
// is verified as it is read (MAC and chunk id). No write ever leaves the target directory:
// names come from validated trees (single segments, never '..'), existing path components must
// be real directories (never symlinks), and files are created with O_EXCL|O_NOFOLLOW.

import { constants } from 'node:fs';
import { lstat, mkdir, open, symlink, chmod, lchown, lutimes } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { fromHex } from '../engine/hash.ts';
import type { Repository } from '../repository/repository.ts';
import type { TreeNode } from '../repository/tree.ts';
import { loadTree } from '../repository/walk.ts';

export interface RestoreOptions {
  signal?: AbortSignal;
  /** Only restore these paths inside the snapshot ("/a/b"); default: everything. */
  include?: string[];
  onProgress?: (p: { files: number; bytes: number }) => void;
  onWarning?: (path: string, problem: string) => void;
  /** Blob reads in flight (default 8). */
  concurrency?: number;
}

export interface RestoreResult {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  warnings: Array<{ path: string; problem: string }>;
}

const isRoot = process.getuid?.() === 0;

function nsToSeconds(ns: string): number {
  return Number(BigInt(ns)) / 1e9;
}

async function ensureRealDir(path: string): Promise<void> {
  try {
    const st = await lstat(path);
    if (st.isDirectory()) return;
    throw new CofferError('REFUSED', `Cannot restore into ${path}: it exists and is not a directory${st.isSymbolicLink() ? ' (a symlink; restore never writes through links)' : ''}`, { hint: 'Restore into an empty target directory, or remove it.' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    await mkdir(path, { mode: 0o700 });
  }
}

export async function restore(repo: Repository, treeId: string, target: string, options: RestoreOptions = {}): Promise<RestoreResult> {
  const { signal } = options;
  const root = resolve(target);
  await mkdir(root, { recursive: true });
  await ensureRealDir(root);
  const result: RestoreResult = { files: 0, dirs: 0, symlinks: 0, bytes: 0, warnings: [] };
  const warn = (path: string, problem: string) => {
    result.warnings.push({ path, problem });
    options.onWarning?.(path, problem);
  };
  const include = options.include?.map((p) => '/' + p.split('/').filter(Boolean).join('/'));
  const wanted = (p: string) => !include || include.some((i) => p === i || p.startsWith(i + '/') || i.startsWith(p + '/'));
  const dirMeta: Array<{ path: string; node: TreeNode }> = [];
  const concurrency = options.concurrency ?? 8;
  const writes = new Set<Promise<void>>();
  let failure: unknown;

  const setMeta = async (path: string, n: TreeNode) => {
    if (isRoot) await lchown(path, n.uid, n.gid).catch((e) => warn(path, `cannot set owner: ${(e as Error).message}`));
    if (n.type !== 'symlink') await chmod(path, n.mode);
    const mtime = nsToSeconds(n.mtimeNs);
    await lutimes(path, n.atimeNs ? nsToSeconds(n.atimeNs) : mtime, mtime);
  };

  const restoreFile = async (path: string, n: TreeNode) => {
    const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      let pos = 0;
      for (const c of n.content ?? []) {
        throwIfAborted(signal);
        const data = await repo.readBlob('data', fromHex(c), { signal });
        await fh.write(data, 0, data.length, pos);
        pos += data.length;
      }
      if (pos !== n.size) throw new CofferError('CORRUPT', `Cannot restore ${path}: its content has ${pos} bytes, the snapshot says ${n.size}`);
      result.bytes += pos;
    } finally {
      await fh.close();
    }
    await setMeta(path, n);
    result.files++;
    options.onProgress?.({ files: result.files, bytes: result.bytes });
  };

  const walk = async (treeId: string, dir: string, inner: string): Promise<void> => {
    const tree = await loadTree(repo, treeId, { signal });
    for (const n of tree.nodes) {
      throwIfAborted(signal);
      if (failure) throw failure;
      const innerPath = `${inner}/${n.name}`;
      if (!wanted(innerPath)) continue;
      if (n.rawName !== undefined) {
        warn(innerPath, 'name is not valid UTF-8; restored under its UTF-8 rendering');
      }
      const path = join(dir, n.name);
      try {
        switch (n.type) {
          case 'dir':
            await ensureRealDir(path);
            await walk(n.subtree!, path, innerPath);
            dirMeta.push({ path, node: n });
            result.dirs++;
            break;
          case 'file': {
            while (writes.size >= concurrency) await Promise.race(writes);
            const p: Promise<void> = restoreFile(path, n).catch((e) => {
              if (isCofferError(e, 'CANCELLED')) failure ??= e;
              else if ((e as NodeJS.ErrnoException).code === 'EEXIST') warn(innerPath, 'exists already; not overwritten');
              else if (isCofferError(e)) failure ??= e;
              else warn(innerPath, `cannot restore: ${(e as Error).message}`);
            }).finally(() => writes.delete(p));
            writes.add(p);
            break;
          }
          case 'symlink':
            await symlink(n.linkTarget!, path);
            await setMeta(path, n);
            result.symlinks++;
            break;
          default:
            warn(innerPath, `${n.type} not restored (needs issue #3 support)`);
        }
      } catch (e) {
        if (isCofferError(e)) throw e;
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') warn(innerPath, 'exists already; not overwritten');
        else warn(innerPath, `cannot restore: ${(e as Error).message}`);
      }
    }
  };
  await walk(treeId, root, '');
  await Promise.all(writes);
  if (failure) throw failure;
  // Directories last, deepest first, so that writing their children does not change their times.
  for (const { path, node } of dirMeta.reverse()) await setMeta(path, node);
  return result;
}

