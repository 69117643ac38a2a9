// Trees: one directory's entries, stored as a `tree` blob (JSON, sorted by name). A tree read
// from a repository is untrusted input (a hostile or damaged snapshot): decodeTree() validates
// every field so that later code (restore above all) can rely on names being single, safe path
// segments and ids being well-formed.

import { CofferError } from '../core/errors.ts';

export const NODE_TYPES = ['file', 'dir', 'symlink', 'blockdev', 'chardev', 'fifo', 'socket'] as const;
export type NodeType = (typeof NODE_TYPES)[number];

export interface TreeNode {
  /** The entry's name as UTF-8. Names that are not valid UTF-8 carry their bytes in `rawName`. */
  name: string;
  /** Base64 of the name's bytes, only when they are not valid UTF-8. */
  rawName?: string;
  type: NodeType;
  /** Permission bits and setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  user?: string;
  group?: string;
  /** Times in nanoseconds since the epoch, as decimal strings (they exceed 2^53). */
  mtimeNs: string;
  atimeNs?: string;
  ctimeNs?: string;
  /** Regular files: size in bytes and the ids (hex) of the data blobs, in order. */
  size?: number;
  content?: string[];
  /** Directories: id (hex) of the subtree blob. */
  subtree?: string;
  /** Symlinks: target as UTF-8, and its bytes in base64 if not valid UTF-8. */
  linkTarget?: string;
  rawLinkTarget?: string;
  /** Device nodes: the device number. */
  rdev?: number;
  /** Inode, device and link count: used to restore hard links and for incremental backups. */
  inode?: string;
  deviceId?: string;
  links?: number;
  /** Extended attributes (and POSIX ACLs as system.posix_acl_*), values in base64. */
  xattrs?: Array<{ name: string; value: string }>;
  /** Set when the file changed while it was read: the stored content is what was read. */
  changedWhileRead?: boolean;
  /** Files with holes: restore writes them sparse. */
  sparse?: boolean;
  /**
   * Set by `repo repair snapshots` on an entry whose data was lost: what was lost (its name then
   * ends in .damaged, lost file ranges are zero-filled, a lost directory is empty).
   */
  repaired?: string;
}

export interface Tree {
  nodes: TreeNode[];
}

const HEX64 = /^[0-9a-f]{64}$/;
const NS = /^-?[0-9]{1,22}$/;
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
const MAX_NODES = 10_000_000;

function fail(why: string): never {
  throw new CofferError('CORRUPT', `Cannot read a tree: ${why}`, { hint: 'The snapshot is damaged or was crafted; run `coffer repo check`.' });
}

/** Compares names by their bytes, the order trees are stored in. */
export function compareNames(a: TreeNode, b: TreeNode): number {
  return Buffer.compare(nameBytes(a), nameBytes(b));
}

export function nameBytes(n: Pick<TreeNode, 'name' | 'rawName'>): Buffer {
  return n.rawName !== undefined ? Buffer.from(n.rawName, 'base64') : Buffer.from(n.name, 'utf8');
}

export function encodeTree(tree: Tree): Buffer {
  const nodes = [...tree.nodes].sort(compareNames);
  return Buffer.from(JSON.stringify({ nodes }));
}

const TREE_HEAD = '{"nodes":[';
const TREE_TAIL = ']}';

/**
 * The same bytes as encodeTree() for nodes already encoded one by one (JSON.stringify(node)) and
 * given in name order (compareNames; a directory scan's order): a large directory's walk keeps
 * each child as its JSON text instead of an object (about half the memory), and the tree is
 * written straight into one buffer, without a string of it all (V8 strings end at 2^29 bytes: a
 * directory of about two million entries). `shared` puts the bytes in a SharedArrayBuffer, so
 * that the worker pool reads them without a copy.
 */
export function encodeTreeParts(parts: readonly string[], shared = false): Buffer {
  let size = TREE_HEAD.length + TREE_TAIL.length + Math.max(0, parts.length - 1);
  for (const p of parts) size += Buffer.byteLength(p, 'utf8');
  const out = shared ? Buffer.from(new SharedArrayBuffer(size)) : Buffer.allocUnsafe(size);
  let at = out.write(TREE_HEAD, 0, 'latin1');
  for (let i = 0; i < parts.length; i++) {
    if (i > 0) out[at++] = 0x2c; // ','
    at += out.write(parts[i]!, at, 'utf8');
  }
  at += out.write(TREE_TAIL, at, 'latin1');
  if (at !== size) throw new CofferError('INTERNAL', `Cannot encode a tree: wrote ${at} bytes of ${size}`);
  return out;
}

function isUint(v: unknown, max = Number.MAX_SAFE_INTEGER): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;
}

/** Validates a node's name (one path segment, never '', '.', '..', or containing '/' or NUL); returns its bytes. */
export function validateNodeName(n: Pick<TreeNode, 'name' | 'rawName'>): Buffer {
  if (typeof n.name !== 'string') fail('a node has no name');
  if (n.rawName !== undefined && (typeof n.rawName !== 'string' || !B64.test(n.rawName))) fail('a node has a malformed raw name');
  const bytes = nameBytes(n);
  if (bytes.length === 0 || bytes.length > 4096) fail('a node name is empty or too long');
  if (bytes.includes(0x2f) || bytes.includes(0)) fail(`node name ${JSON.stringify(n.name)} contains '/' or NUL`);
  if (bytes[0] === 0x2e && (bytes.length === 1 || (bytes.length === 2 && bytes[1] === 0x2e))) fail(`node name ${JSON.stringify(n.name)} is not allowed`);
  return bytes;
}

export function decodeTree(data: Uint8Array): Tree {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
  } catch {
    fail('not valid JSON');
  }
  const nodes = (raw as { nodes?: unknown })?.nodes;
  if (!Array.isArray(nodes) || nodes.length > MAX_NODES) fail('no node list');
  // Names strictly ascending by their bytes: sorted, and no name twice.
  let prev: Buffer | undefined;
  for (const n of nodes as TreeNode[]) {
    if (!n || typeof n !== 'object') fail('a node is not an object');
    const bytes = validateNodeName(n);
    if (prev) {
      const c = Buffer.compare(prev, bytes);
      if (c === 0) fail(`duplicate name ${JSON.stringify(n.name)}`);
      if (c > 0) fail('nodes are not sorted');
    }
    prev = bytes;
    if (!(NODE_TYPES as readonly string[]).includes(n.type)) fail(`unknown node type ${JSON.stringify(n.type)}`);
    if (!isUint(n.mode, 0o7777) || !isUint(n.uid, 0xffffffff) || !isUint(n.gid, 0xffffffff)) fail(`bad mode or owner on ${JSON.stringify(n.name)}`);
    if (typeof n.mtimeNs !== 'string' || !NS.test(n.mtimeNs)) fail(`bad mtime on ${JSON.stringify(n.name)}`);
    for (const t of [n.atimeNs, n.ctimeNs]) if (t !== undefined && (typeof t !== 'string' || !NS.test(t))) fail('bad time');
    for (const s of [n.user, n.group, n.inode, n.deviceId]) if (s !== undefined && typeof s !== 'string') fail('bad owner name or inode');
    if (n.links !== undefined && !isUint(n.links)) fail('bad link count');
    if (n.type === 'file') {
      if (!isUint(n.size) || !Array.isArray(n.content) || n.content.length > n.size + 1) fail(`file ${JSON.stringify(n.name)} has bad size or content`);
      for (const id of n.content) if (typeof id !== 'string' || !HEX64.test(id)) fail(`file ${JSON.stringify(n.name)} has a malformed content id`);
    } else if (n.content !== undefined) fail('only files have content');
    if (n.type === 'dir') {
      if (typeof n.subtree !== 'string' || !HEX64.test(n.subtree)) fail(`directory ${JSON.stringify(n.name)} has no valid subtree id`);
    } else if (n.subtree !== undefined) fail('only directories have subtrees');
    if (n.type === 'symlink') {
      if (typeof n.linkTarget !== 'string') fail(`symlink ${JSON.stringify(n.name)} has no target`);
      if (n.rawLinkTarget !== undefined && (typeof n.rawLinkTarget !== 'string' || !B64.test(n.rawLinkTarget))) fail('malformed raw link target');
    }
    if (n.rdev !== undefined && !isUint(n.rdev)) fail('bad device number');
    if (n.repaired !== undefined && (typeof n.repaired !== 'string' || n.repaired.length > 4096)) fail('bad repair note');
    if (n.xattrs !== undefined) {
      if (!Array.isArray(n.xattrs)) fail('bad xattrs');
      for (const x of n.xattrs) if (!x || typeof x.name !== 'string' || typeof x.value !== 'string' || !B64.test(x.value)) fail('bad xattr');
    }
  }
  return { nodes: nodes as TreeNode[] };
}
