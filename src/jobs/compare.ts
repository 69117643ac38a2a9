// The second half of a restore test: reads back what a restore wrote and checks it against what
// the snapshot recorded, independently of the restore that wrote it. A file node lists the ids of
// its data chunks in order; an id is the repository's keyed BLAKE3 of the chunk's plaintext
// (docs/format.md, "Chunk ids"), and the index gives each chunk's raw length. So the restored
// file is cut where the snapshot's chunks end (whatever chunking made them: content-defined,
// fixed for images, zero chunks for holes) and each piece hashed with the chunk-id key: every
// byte is checked against the snapshot, with no trust in the restore's own verification, and
// nothing is read from storage but trees. Directories must be directories, symlinks must point
// where the snapshot says. A restore test fails on the first difference in a file, naming it.

import { lstat, open, readlink } from 'node:fs/promises';
import { throwIfAborted } from '../core/errors.ts';
import { chunkId, fromHex } from '../engine/hash.ts';
import type { Repository } from '../repository/repository.ts';
import { nameBytes, type TreeNode } from '../repository/tree.ts';
import { loadTree } from '../repository/walk.ts';
import { lookupPath } from './browse.ts';

/** A restored entry that is not what the snapshot says. */
export interface Mismatch {
  /** The path inside the snapshot ("/etc/hosts"). */
  path: string;
  problem: string;
}

export interface CompareResult {
  /** Files read and checked, and their bytes. */
  files: number;
  bytes: number;
  /** Directories and symlinks checked. */
  others: number;
  mismatches: Mismatch[];
  /** All the mismatches found; `mismatches` keeps the first `maxMismatches`. */
  mismatchCount: number;
}

export interface CompareOptions {
  signal?: AbortSignal;
  /** Only these paths of the snapshot (files restored as a sample); default: the whole snapshot. */
  paths?: string[];
  /** Mismatches kept in the result (default 1000); all are counted. */
  maxMismatches?: number;
  onProgress?: (p: { files: number; bytes: number; current: string }) => void;
}

/** The largest piece read at once: a chunk is at most the chunker's maxSize or the image chunk size. */
const READ_LIMIT = 1 << 30;

/**
 * Compares the restored tree at `root` (where a restore of the snapshot with tree `rootTree`
 * wrote it: snapshot path /a/b is root/a/b) with the snapshot.
 */
export async function compareRestored(repo: Repository, rootTree: string, root: string, options: CompareOptions = {}): Promise<CompareResult> {
  const result: CompareResult = { files: 0, bytes: 0, others: 0, mismatches: [], mismatchCount: 0 };
  const max = options.maxMismatches ?? 1000;
  const key = repo.keys.chunkIdKey;
  let buffer = Buffer.alloc(0);
  const miss = (path: string, problem: string) => {
    result.mismatchCount++;
    if (result.mismatches.length < max) result.mismatches.push({ path, problem });
  };

  const checkFile = async (path: string, where: Buffer, node: TreeNode) => {
    let st;
    try {
      st = await lstat(where);
    } catch (e) {
      return miss(path, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'was not restored (it does not exist)' : `cannot be read: ${(e as Error).message}`);
    }
    if (!st.isFile()) return miss(path, 'is not a regular file');
    const size = node.size ?? 0;
    if (st.size !== size) return miss(path, `has ${st.size} bytes; the snapshot has ${size}`);
    const fh = await open(where, 'r');
    try {
      let pos = 0;
      for (const id of node.content ?? []) {
        throwIfAborted(options.signal);
        const hit = repo.locate('data', fromHex(id));
        if (!hit) return miss(path, `cannot be checked: its chunk ${id.slice(0, 12)} is not in the repository's index`);
        const length = hit.entry.rawLength;
        if (length > READ_LIMIT || pos + length > size) return miss(path, `is shorter than its chunks in the snapshot (chunk ${id.slice(0, 12)} ends at ${pos + length}, the file at ${size})`);
        if (buffer.length < length) buffer = Buffer.alloc(Math.max(length, 4 << 20));
        const piece = buffer.subarray(0, length);
        for (let got = 0; got < length;) {
          const { bytesRead } = await fh.read(piece, got, length - got, pos + got);
          if (bytesRead === 0) return miss(path, `ended at byte ${pos + got} while it was read`);
          got += bytesRead;
        }
        if (chunkId(key, piece).toString('hex') !== id) return miss(path, `differs from the snapshot in bytes ${pos}-${pos + length - 1} (chunk ${id.slice(0, 12)})`);
        pos += length;
        result.bytes += length;
      }
      if (pos !== size) return miss(path, `has ${size - pos} bytes more than its chunks in the snapshot`);
      result.files++;
      options.onProgress?.({ files: result.files, bytes: result.bytes, current: path });
    } finally {
      await fh.close();
    }
  };

  const checkOther = async (path: string, where: Buffer, node: TreeNode) => {
    let st;
    try {
      st = await lstat(where);
    } catch (e) {
      return miss(path, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'was not restored (it does not exist)' : `cannot be read: ${(e as Error).message}`);
    }
    if (node.type === 'dir' && !st.isDirectory()) return miss(path, 'is not a directory');
    if (node.type === 'symlink') {
      if (!st.isSymbolicLink()) return miss(path, 'is not a symlink');
      const target = await readlink(where, { encoding: 'buffer' });
      const expected = node.rawLinkTarget !== undefined ? Buffer.from(node.rawLinkTarget, 'base64') : Buffer.from(node.linkTarget ?? '', 'utf8');
      if (!target.equals(expected)) return miss(path, `points to ${JSON.stringify(target.toString('utf8'))}; the snapshot says ${JSON.stringify(expected.toString('utf8'))}`);
    }
    result.others++;
  };

  const check = (path: string, where: Buffer, node: TreeNode) => (node.type === 'file' ? checkFile(path, where, node) : node.type === 'dir' || node.type === 'symlink' ? checkOther(path, where, node) : undefined);

  const rootBytes = Buffer.from(root.replace(/\/+$/, ''), 'utf8');
  if (options.paths) {
    for (const path of options.paths) {
      throwIfAborted(options.signal);
      const at = await lookupPath(repo, rootTree, path, { signal: options.signal });
      if (at.node) await check(at.path, Buffer.concat([rootBytes, Buffer.from(at.path, 'utf8')]), at.node);
    }
    return result;
  }
  // Depth first in name order; paths on disk are built from each name's bytes, so names that are
  // not UTF-8 are found as restore wrote them.
  const walk = async (tree: string, dir: string, dirBytes: Buffer): Promise<void> => {
    for (const node of (await loadTree(repo, tree, { signal: options.signal })).nodes) {
      throwIfAborted(options.signal);
      const path = `${dir === '/' ? '' : dir}/${node.name}`;
      const where = Buffer.concat([dirBytes, Buffer.from('/'), nameBytes(node)]);
      await check(path, where, node);
      if (node.type === 'dir') await walk(node.subtree!, path, where);
    }
  };
  await walk(rootTree, '/', rootBytes);
  return result;
}
