// Browsing snapshots without restoring them: list a directory (ls), find names or globs across
// every snapshot (find), compare two snapshots (diff) and stream one file's content (dump). All
// of it reads trees and blobs through the repository, so every byte is verified on the way;
// subtrees with the same id are identical, which lets find and diff skip what did not change.

import { CofferError, throwIfAborted } from '../core/errors.ts';
import { fromHex } from '../engine/hash.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { Repository } from '../repository/repository.ts';
import type { SnapshotRef } from '../repository/snapshot.ts';
import { compareNames, type TreeNode } from '../repository/tree.ts';
import { loadTree } from '../repository/walk.ts';
import { compilePattern, couldMatchBelow, matchesPattern } from './restore.ts';

/** Splits a path inside a snapshot into names; "/" and "" are the root. */
export function snapshotPathSegments(path: string): string[] {
  const segs = path.split('/').filter((s) => s !== '' && s !== '.');
  if (segs.includes('..')) throw new CofferError('USAGE', `Cannot look up ${JSON.stringify(path)}: '..' has no meaning inside a snapshot`, { hint: 'Give the path as it is in the snapshot, e.g. /home/alice/notes.txt.' });
  return segs;
}

export interface PathLookup {
  /** The normalised path ("/" for the root). */
  path: string;
  /** The entry; undefined for the root. */
  node?: TreeNode;
  /** The tree id when the path is a directory (or the root). */
  tree?: string;
}

/** Finds the entry at `path` in a snapshot tree. NOT_FOUND if it is not there. */
export async function lookupPath(repo: Repository, rootTree: string, path: string, options: CallOptions = {}): Promise<PathLookup> {
  const segs = snapshotPathSegments(path);
  let tree = rootTree;
  let node: TreeNode | undefined;
  let at = '';
  for (const seg of segs) {
    if (node && node.type !== 'dir') {
      throw new CofferError('NOT_FOUND', `Cannot find ${'/' + segs.join('/')} in the snapshot: ${at} is a ${node.type}, not a directory`);
    }
    const found: TreeNode | undefined = (await loadTree(repo, tree, options)).nodes.find((n) => n.name === seg);
    at += '/' + seg;
    if (!found) throw new CofferError('NOT_FOUND', `Cannot find ${'/' + segs.join('/')} in the snapshot: there is no ${at}`, { hint: 'List the snapshot with `coffer repo ls SNAPSHOT [PATH]`.' });
    node = found;
    if (found.type === 'dir') tree = found.subtree!;
  }
  return { path: at || '/', node, tree: !node || node.type === 'dir' ? tree : undefined };
}

export interface ListedEntry {
  path: string;
  node: TreeNode;
}

const join = (dir: string, name: string) => (dir === '/' ? '' : dir) + '/' + name;

async function* listTree(repo: Repository, tree: string, dir: string, recursive: boolean, options: CallOptions): AsyncGenerator<ListedEntry> {
  for (const node of (await loadTree(repo, tree, options)).nodes) {
    throwIfAborted(options.signal);
    const path = join(dir, node.name);
    yield { path, node };
    if (recursive && node.type === 'dir') yield* listTree(repo, node.subtree!, path, true, options);
  }
}

/**
 * The entries of the directory at `path` (with `recursive`, everything below it, depth first in
 * name order). A path that is not a directory lists that one entry.
 */
export async function* listSnapshot(repo: Repository, rootTree: string, path: string, options: CallOptions & { recursive?: boolean } = {}): AsyncGenerator<ListedEntry> {
  const at = await lookupPath(repo, rootTree, path, options);
  if (at.tree === undefined) {
    yield { path: at.path, node: at.node! };
    return;
  }
  yield* listTree(repo, at.tree, at.path, !!options.recursive, options);
}

// ---- find ------------------------------------------------------------------------------------

export interface FindMatch {
  snapshot: string;
  time: string;
  hostname: string;
  path: string;
  node: TreeNode;
}

/**
 * Every entry matching `pattern` in each of `snapshots` (in the order given): a name or glob
 * without '/' matches names at any depth ("*.sql"), one with '/' matches paths from the root
 * ("/home/*\/.bashrc", "**\/logs/*.gz"). Subtrees known to hold no match are skipped the next
 * time they appear, in this snapshot or another.
 */
export async function* findInSnapshots(repo: Repository, snapshots: SnapshotRef[], pattern: string, options: CallOptions = {}): AsyncGenerator<FindMatch> {
  const p = compilePattern(pattern);
  // A name pattern matches the same way wherever a subtree is, so "no match below" is a fact
  // about the subtree id; a path pattern depends on where it is, so nothing is remembered.
  const barren = new Set<string>();
  async function* walk(tree: string, dir: string, ref: SnapshotRef): AsyncGenerator<FindMatch, boolean> {
    if (!p.anchored && barren.has(tree)) return false;
    let any = false;
    for (const node of (await loadTree(repo, tree, options)).nodes) {
      throwIfAborted(options.signal);
      const path = join(dir, node.name);
      if (matchesPattern(p, path)) {
        any = true;
        yield { snapshot: ref.id, time: ref.snapshot.time, hostname: ref.snapshot.host.hostname, path, node };
      }
      if (node.type === 'dir' && couldMatchBelow(p, path)) {
        if (yield* walk(node.subtree!, path, ref)) any = true;
      }
    }
    if (!any && !p.anchored) barren.add(tree);
    return any;
  }
  for (const ref of snapshots) yield* walk(ref.snapshot.tree, '/', ref);
}

// ---- diff ------------------------------------------------------------------------------------

export type DiffChange = 'added' | 'removed' | 'modified' | 'metadata';

export interface DiffEntry {
  change: DiffChange;
  path: string;
  /** The entry in the first snapshot (removed, modified, metadata) and in the second (added, ...). */
  before?: TreeNode;
  after?: TreeNode;
  /** What differs, for modified and metadata changes (e.g. ["content", "size"]). */
  what?: string[];
}

export interface DiffStats {
  added: number;
  removed: number;
  modified: number;
  metadata: number;
}

function contentDiffers(a: TreeNode, b: TreeNode): string[] {
  if (a.type !== b.type) return [`type ${a.type} → ${b.type}`];
  const out: string[] = [];
  if (a.type === 'file') {
    if (a.size !== b.size) out.push('size');
    const ca = a.content ?? [];
    const cb = b.content ?? [];
    if (ca.length !== cb.length || ca.some((id, i) => id !== cb[i])) out.push('content');
  } else if (a.type === 'symlink') {
    if (a.linkTarget !== b.linkTarget || a.rawLinkTarget !== b.rawLinkTarget) out.push('link target');
  } else if (a.type === 'blockdev' || a.type === 'chardev') {
    if (a.rdev !== b.rdev) out.push('device number');
  }
  return out;
}

function metadataDiffers(a: TreeNode, b: TreeNode): string[] {
  const out: string[] = [];
  if (a.mode !== b.mode) out.push('mode');
  if (a.uid !== b.uid || a.gid !== b.gid) out.push('owner');
  // A directory's mtime moves whenever an entry in it does; those entries are reported themselves.
  if (a.type !== 'dir' && a.mtimeNs !== b.mtimeNs) out.push('mtime');
  if (JSON.stringify(a.xattrs ?? []) !== JSON.stringify(b.xattrs ?? [])) out.push('xattrs');
  return out;
}

/**
 * The differences between two snapshot trees, in path order: added and removed entries (with
 * everything below a directory), modified ones (content ids, size, link target, type) and ones
 * whose metadata alone changed (mode, owner, mtime, xattrs). Identical subtrees are skipped by id.
 */
export async function* diffTrees(repo: Repository, treeA: string, treeB: string, options: CallOptions = {}): AsyncGenerator<DiffEntry> {
  async function* everything(change: 'added' | 'removed', node: TreeNode, path: string): AsyncGenerator<DiffEntry> {
    yield change === 'added' ? { change, path, after: node } : { change, path, before: node };
    if (node.type === 'dir') {
      for (const child of (await loadTree(repo, node.subtree!, options)).nodes) yield* everything(change, child, join(path, child.name));
    }
  }
  async function* walk(a: string | undefined, b: string | undefined, dir: string): AsyncGenerator<DiffEntry> {
    if (a === b) return;
    throwIfAborted(options.signal);
    const na = a ? (await loadTree(repo, a, options)).nodes : [];
    const nb = b ? (await loadTree(repo, b, options)).nodes : [];
    let i = 0;
    let j = 0;
    while (i < na.length || j < nb.length) {
      const x = na[i];
      const y = nb[j];
      const cmp = !x ? 1 : !y ? -1 : compareNames(x, y);
      if (cmp < 0) {
        yield* everything('removed', x!, join(dir, x!.name));
        i++;
        continue;
      }
      if (cmp > 0) {
        yield* everything('added', y!, join(dir, y!.name));
        j++;
        continue;
      }
      i++;
      j++;
      const path = join(dir, x!.name);
      const content = contentDiffers(x!, y!);
      const meta = metadataDiffers(x!, y!);
      if (x!.type !== y!.type) {
        // A different kind of entry under the same name: one change, then what went and came below.
        yield { change: 'modified', path, before: x, after: y, what: content };
        if (x!.type === 'dir') for (const c of (await loadTree(repo, x!.subtree!, options)).nodes) yield* everything('removed', c, join(path, c.name));
        if (y!.type === 'dir') for (const c of (await loadTree(repo, y!.subtree!, options)).nodes) yield* everything('added', c, join(path, c.name));
        continue;
      }
      if (content.length) yield { change: 'modified', path, before: x, after: y, what: [...content, ...meta] };
      else if (meta.length) yield { change: 'metadata', path, before: x, after: y, what: meta };
      if (x!.type === 'dir') yield* walk(x!.subtree, y!.subtree, path);
    }
  }
  yield* walk(treeA, treeB, '/');
}

// ---- dump ------------------------------------------------------------------------------------

/**
 * Streams the content of a file node blob by blob, in order, to `write` (which should wait
 * while its consumer is busy). A few blobs are read ahead; each is verified before it is
 * written, so a damaged blob stops the stream (CORRUPT) and no unverified byte goes out.
 * Returns the number of bytes written.
 */
export async function dumpFile(repo: Repository, node: TreeNode, path: string, write: (data: Buffer) => Promise<void> | void, options: CallOptions & { readAhead?: number } = {}): Promise<number> {
  if (node.type === 'dir') {
    throw new CofferError('USAGE', `Cannot dump ${path}: it is a directory`, { hint: `List it with \`coffer repo ls SNAPSHOT ${path}\`, or restore it with \`coffer repo restore SNAPSHOT --include ${path} --target DIR\`.` });
  }
  if (node.type !== 'file') {
    const target = node.type === 'symlink' ? ` (it points to ${JSON.stringify(node.linkTarget)})` : '';
    throw new CofferError('USAGE', `Cannot dump ${path}: it is a ${node.type}, not a regular file${target}`, { hint: node.type === 'symlink' ? 'Dump the file it points to instead.' : undefined });
  }
  const ids = node.content ?? [];
  const readAhead = Math.max(1, options.readAhead ?? 4);
  const pending: Array<Promise<Buffer>> = [];
  let next = 0;
  let written = 0;
  const fill = () => {
    while (pending.length < readAhead && next < ids.length) {
      const p = repo.readBlob('data', fromHex(ids[next++]!), options);
      // Read-ahead that is never awaited (a failure stopped the stream) must not go unhandled.
      p.catch(() => {});
      pending.push(p);
    }
  };
  fill();
  while (pending.length) {
    throwIfAborted(options.signal);
    const data = await pending.shift()!;
    fill();
    await write(data);
    written += data.length;
  }
  if (written !== node.size) {
    throw new CofferError('CORRUPT', `Cannot dump ${path}: its content adds up to ${written} bytes, the snapshot says ${node.size}`, { hint: 'Run `coffer repo check`.' });
  }
  return written;
}

// ---- formatting shared by the commands ------------------------------------------------------

const TYPE_CHAR: Record<TreeNode['type'], string> = { file: '-', dir: 'd', symlink: 'l', blockdev: 'b', chardev: 'c', fifo: 'p', socket: 's' };

/** "drwxr-xr-x"-style mode string, with setuid, setgid and sticky bits. */
export function modeString(node: Pick<TreeNode, 'type' | 'mode'>): string {
  const m = node.mode;
  const rwx = (shift: number, special: boolean, specialChar: string) => {
    const r = m & (4 << shift) ? 'r' : '-';
    const w = m & (2 << shift) ? 'w' : '-';
    const xBit = (m & (1 << shift)) !== 0;
    const x = special ? (xBit ? specialChar : specialChar.toUpperCase()) : xBit ? 'x' : '-';
    return r + w + x;
  };
  return TYPE_CHAR[node.type] + rwx(6, (m & 0o4000) !== 0, 's') + rwx(3, (m & 0o2000) !== 0, 's') + rwx(0, (m & 0o1000) !== 0, 't');
}

/** A node's mtime as an ISO string (nanoseconds are cut to milliseconds). */
export function nodeTime(node: Pick<TreeNode, 'mtimeNs'>): string {
  const ms = BigInt(node.mtimeNs) / 1_000_000n;
  const d = new Date(Number(ms));
  return Number.isNaN(d.getTime()) ? node.mtimeNs : d.toISOString();
}

/** The fields of a node that the browse commands print with --json. */
export function nodeJson(path: string, n: TreeNode): Record<string, unknown> {
  return {
    path,
    name: n.name,
    ...(n.rawName !== undefined ? { rawName: n.rawName } : {}),
    nodeType: n.type,
    mode: n.mode,
    permissions: modeString(n),
    uid: n.uid,
    gid: n.gid,
    ...(n.user !== undefined ? { user: n.user } : {}),
    ...(n.group !== undefined ? { group: n.group } : {}),
    ...(n.type === 'file' ? { size: n.size } : {}),
    mtime: nodeTime(n),
    mtimeNs: n.mtimeNs,
    ...(n.linkTarget !== undefined ? { linkTarget: n.linkTarget } : {}),
    ...(n.links !== undefined && n.links > 1 ? { links: n.links } : {}),
    ...(n.sparse ? { sparse: true } : {}),
  };
}
