// The restore job: recreates a snapshot, or the paths and globs selected from it, under a target
// directory, which may be `/` to put files back in their original place.
//
// Safety comes first, in this order:
//  1. Before anything is written, restoreSafety() compares the snapshot's source host with this
//     host. Restoring another host's (or platform's) data in place over a system directory is
//     refused unless the operator confirms this host by name (--force --confirm-host NAME): the
//     classic disaster is a Linux client's root file system restored over a Solaris server.
//  2. No write leaves the target directory, whatever the snapshot holds. Names come from trees
//     that decodeTree() validated (single segments, never '..'); every existing path component
//     is lstat()ed and must be a real directory (a symlink is refused, or with
//     --overwrite always replaced by a directory, never written through); files, links and
//     special files are created under a fresh temporary name (O_EXCL|O_NOFOLLOW) and renamed
//     into place, which replaces a directory entry and never writes into an existing inode (a
//     pre-existing hard link to a file elsewhere is left untouched). Symlinks from the snapshot
//     are created as links and never followed. An entry left in place (its content judged
//     unchanged) gets the snapshot's metadata in place, but only when the inode has no more
//     names than the snapshot gave it; otherwise it is replaced like a changed one.
//  3. Every blob is verified as it is read (MAC and chunk id), before its bytes reach the disk;
//     a file whose data is damaged or missing is never renamed into place.
// An interrupted restore leaves no half-written file under a real name: at worst a temporary
// `.coffer-restore-*` file, and those are removed on failure and cancellation; those that a killed
// restore left are removed by the next one into the same directories (restore-temps.ts).

import { closeSync, constants, fstatSync, openSync, unlinkSync, type BigIntStats } from 'node:fs';
import { link, lstat, mkdir, open, readlink, realpath, rename, rmdir, symlink, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { homedir } from 'node:os';
import { posix } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { Limiter } from '../core/limiter.ts';
import { isAllZero } from '../core/bytes.ts';
import { chunkId, fromHex, toHex } from '../engine/hash.ts';
import type { Repository } from '../repository/repository.ts';
import type { HostIdentity, Snapshot } from '../repository/snapshot.ts';
import { decodeTree, nameBytes, type NodeType, type Tree, type TreeNode } from '../repository/tree.ts';
import { createSpecial, dataRegions, readXattrs, sameTimeNs } from '../sources/metadata.ts';
import { childPath } from '../sources/scan.ts';
import { ReadBuffers, type BlobDecoder, type BlobResult } from './read-blobs.ts';
import type { ChunkFallback } from './restore-fallback.ts';
import { LocalRestoreSource, type RestoreSource } from './restore-source.ts';
import { FileWriters, applyMeta as applyMetaTo, deserializeError, type FileHeader, type MetaNode, type WriteOp } from './restore-writer.ts';
import { StaleTemps, TMP_PREFIX } from './restore-temps.ts';

// ---- safety: whose data goes where ----------------------------------------------------------

/** Directories whose contents belong to the operating system or to users' homes. */
export const SYSTEM_DIRS = ['/usr', '/etc', '/var', '/boot', '/bin', '/sbin', '/lib', '/opt', '/root', '/home'] as const;

export interface SafetyOptions {
  force?: boolean;
  /** Must equal this host's name (case-insensitive) for --force to take effect. */
  confirmHost?: string;
  /** More home directories to protect (e.g. this user's, when it is not under /home). */
  homeDirs?: string[];
}

export interface SafetyVerdict {
  /** Set when the restore must not run: the message names both hosts. */
  refuse?: string;
  hint?: string;
  /** Things the operator should see before the restore starts; they do not fail it. */
  warnings: string[];
  /** The system directory the target is in or is, if any ("/" for the root). */
  systemDir?: string;
  /** How the snapshot's source differs from this host (empty: the same host). */
  differences: string[];
}

const sameName = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/** One line describing a host: name, platform and machine id. */
export function describeHost(h: HostIdentity): string {
  const platform = [h.os, h.osRelease, h.arch].filter(Boolean).join(', ');
  return `${JSON.stringify(h.hostname)} (${platform}${h.machineId ? `, machine-id ${h.machineId.slice(0, 12)}` : ''})`;
}

/** How a snapshot's source host differs from the target host; empty when it is the same host. */
export function hostDifferences(source: HostIdentity, target: HostIdentity): string[] {
  const out: string[] = [];
  if (!sameName(source.hostname, target.hostname)) out.push(`hostname ${JSON.stringify(source.hostname)} is not ${JSON.stringify(target.hostname)}`);
  if (source.machineId && target.machineId && source.machineId !== target.machineId) out.push('the machine ids differ');
  if (source.os !== target.os) out.push(`os ${source.os} is not ${target.os}`);
  if (source.arch !== target.arch) out.push(`arch ${source.arch} is not ${target.arch}`);
  return out;
}

/** The system directory a resolved absolute target is, or is inside; undefined if none. */
export function systemDirOf(resolvedTarget: string, homeDirs: string[] = []): string | undefined {
  const t = posix.normalize(resolvedTarget).replace(/\/+$/, '') || '/';
  if (t === '/') return '/';
  const top = '/' + t.split('/')[1]!;
  // Every /lib* (lib32, lib64, libx32, ...) counts.
  if ((SYSTEM_DIRS as readonly string[]).includes(top) || /^\/lib[^/]*$/.test(top)) return top;
  for (const h of homeDirs) {
    const home = posix.normalize(h).replace(/\/+$/, '');
    if (home.startsWith('/') && home !== '' && (t === home || t.startsWith(home + '/'))) return home;
  }
  return undefined;
}

/**
 * Decides whether restoring a snapshot made on `snapshotHost` (undefined: unknown, e.g. a bare
 * tree) into `resolvedTarget` on `targetHost` may go ahead. Pure: the caller resolves the target
 * (lexically and through symlinks) and calls this for each form.
 */
export function restoreSafety(snapshotHost: HostIdentity | undefined, targetHost: HostIdentity, resolvedTarget: string, options: SafetyOptions = {}): SafetyVerdict {
  const warnings: string[] = [];
  const differences = snapshotHost ? hostDifferences(snapshotHost, targetHost) : ['the source host is unknown'];
  const systemDir = systemDirOf(resolvedTarget, options.homeDirs);
  const src = snapshotHost ? `host ${describeHost(snapshotHost)}` : 'an unknown host';
  const dst = `host ${describeHost(targetHost)}`;
  // --confirm-host states which host the operator believes they are on: a wrong name always stops.
  if (options.confirmHost !== undefined && !sameName(options.confirmHost, targetHost.hostname)) {
    return {
      refuse: `Cannot restore into ${resolvedTarget}: --confirm-host ${JSON.stringify(options.confirmHost)} does not name this host, which is ${dst}`,
      hint: 'Check which host you are logged into before restoring; --confirm-host must give its name.',
      warnings,
      systemDir,
      differences,
    };
  }
  if (differences.length === 0) {
    if (systemDir && snapshotHost?.osRelease && targetHost.osRelease && snapshotHost.osRelease !== targetHost.osRelease) {
      warnings.push(`the snapshot was taken under ${snapshotHost.osRelease}; this host now runs ${targetHost.osRelease}: restored system files may not match`);
    }
    return { warnings, systemDir, differences };
  }
  if (!systemDir) {
    warnings.push(`restoring the data of ${src} on ${dst} (${differences.join('; ')})`);
    return { warnings, systemDir, differences };
  }
  const what = `this would overwrite ${dst} at ${resolvedTarget} with the data of ${src} (${differences.join('; ')})`;
  if (!options.force) {
    return {
      refuse: `Cannot restore into ${resolvedTarget}: ${what}`,
      hint: `Restore into a scratch directory (e.g. --target /tmp/restore) and copy what you need. To overwrite this host anyway, pass --force --confirm-host ${targetHost.hostname}.`,
      warnings,
      systemDir,
      differences,
    };
  }
  if (options.confirmHost === undefined) {
    return {
      refuse: `Cannot restore into ${resolvedTarget} with --force alone: ${what}`,
      hint: `Also pass --confirm-host ${targetHost.hostname} to confirm which host is overwritten.`,
      warnings,
      systemDir,
      differences,
    };
  }
  warnings.push(`overwriting ${dst} at ${resolvedTarget} with the data of ${src}: forced with --confirm-host`);
  return { warnings, systemDir, differences };
}

// ---- selecting paths: --include / --exclude ------------------------------------------------

/**
 * A path pattern, gitignore-style: a pattern with a '/' at its start or in its middle is anchored
 * at the snapshot root ("/home/*\/docs", "etc/hosts"); one without is a name matched at any depth
 * ("*.sql", "node_modules"). `*` and `?` stay within one segment, `**` spans segments, `[a-z]` and
 * `{a,b}` work as in shells. A pattern without glob characters is a plain path or name.
 */
export interface PathPattern {
  text: string;
  anchored: boolean;
  /** Per segment: '**' or a test of one name. */
  segments: Array<'**' | RegExp>;
}

function segmentSource(seg: string): string {
  let out = '';
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i]!;
    if (c === '\\' && i + 1 < seg.length) out += escapeRe(seg[++i]!);
    else if (c === '*') out += '[^/]*';
    else if (c === '?') out += '[^/]';
    else if (c === '[') {
      const end = seg.indexOf(']', i + 2);
      if (end < 0) out += '\\[';
      else {
        let body = seg.slice(i + 1, end);
        const neg = body.startsWith('!') || body.startsWith('^');
        if (neg) body = body.slice(1);
        out += `[${neg ? '^' : ''}${body.replace(/[\\\]]/g, '\\$&')}]`;
        i = end;
      }
    } else if (c === '{') {
      const end = seg.indexOf('}', i);
      if (end < 0) out += '\\{';
      else {
        out += `(?:${seg.slice(i + 1, end).split(',').map(segmentSource).join('|')})`;
        i = end;
      }
    } else out += escapeRe(c);
  }
  return out;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

export function compilePattern(text: string): PathPattern {
  const trimmed = text.replace(/\/+$/, '');
  if (trimmed === '') {
    // "/" is the whole snapshot.
    if (text.startsWith('/')) return { text, anchored: true, segments: ['**'] };
    throw new CofferError('USAGE', `Cannot use the pattern ${JSON.stringify(text)}: it is empty`);
  }
  const anchored = trimmed.includes('/');
  const segs = trimmed.split('/').filter((s) => s !== '');
  for (const s of segs) {
    if (s === '.' || s === '..') throw new CofferError('USAGE', `Cannot use the pattern ${JSON.stringify(text)}: '.' and '..' have no meaning inside a snapshot`, { hint: 'Give paths as they are in the snapshot, e.g. /home/alice/docs.' });
  }
  return { text, anchored, segments: segs.map((s) => (s === '**' ? '**' : new RegExp(`^${segmentSource(s)}$`, 's'))) };
}

function matchSegments(pat: Array<'**' | RegExp>, pi: number, segs: string[], si: number): boolean {
  while (pi < pat.length) {
    const p = pat[pi]!;
    if (p === '**') {
      for (let k = si; k <= segs.length; k++) if (matchSegments(pat, pi + 1, segs, k)) return true;
      return false;
    }
    if (si >= segs.length || !p.test(segs[si]!)) return false;
    pi++;
    si++;
  }
  return si === segs.length;
}

const splitPath = (path: string) => path.split('/').filter((s) => s !== '');

/** Whether a snapshot path ("/a/b") matches the pattern. */
export function matchesPattern(p: PathPattern, path: string): boolean {
  const segs = splitPath(path);
  if (!p.anchored) {
    const last = segs.at(-1);
    return last !== undefined && (p.segments[0] === '**' || (p.segments[0] as RegExp).test(last));
  }
  return matchSegments(p.segments, 0, segs, 0);
}

/** Whether something strictly below the directory `path` could match (so it must be walked). */
export function couldMatchBelow(p: PathPattern, path: string): boolean {
  if (!p.anchored) return true;
  const segs = splitPath(path);
  for (let i = 0; i < segs.length; i++) {
    const s = p.segments[i];
    if (s === undefined) return false;
    if (s === '**') return true;
    if (!s.test(segs[i]!)) return false;
  }
  return p.segments.length > segs.length;
}

export type FilterDecision = 'all' | 'descend' | 'skip';

export interface PathFilter {
  /**
   * 'all': select this entry and everything below it (excludes still apply further down);
   * 'descend': a directory that is not selected itself but may hold selected entries; 'skip'.
   */
  decide(path: string, isDir: boolean, parentSelected: boolean): FilterDecision;
}

export function compilePathFilter(include: string[] = [], exclude: string[] = []): PathFilter {
  const inc = include.map(compilePattern);
  const exc = exclude.map(compilePattern);
  return {
    decide(path, isDir, parentSelected) {
      if (exc.some((p) => matchesPattern(p, path))) return 'skip';
      if (parentSelected || inc.length === 0 || inc.some((p) => matchesPattern(p, path))) return 'all';
      if (isDir && inc.some((p) => couldMatchBelow(p, path))) return 'descend';
      return 'skip';
    },
  };
}

// ---- the restore ---------------------------------------------------------------------------

export const OVERWRITE_POLICIES = ['never', 'if-changed', 'always'] as const;
export type OverwritePolicy = (typeof OVERWRITE_POLICIES)[number];

/**
 * What if-changed (and never) compares an existing file with. 'size-mtime' trusts a file whose
 * size and mtime are the snapshot's (fast: nothing is read), and so misses a change that kept
 * both (a flipped bit, a tool that puts the old mtime back); 'content' reads the file and
 * compares it chunk by chunk with the snapshot.
 */
export const COMPARE_BASES = ['size-mtime', 'content'] as const;
export type CompareBasis = (typeof COMPARE_BASES)[number];

/** 'metadata': the content was judged unchanged; its mode, owner, times or xattrs differed and were restored in place. */
export type RestoreAction = 'create' | 'overwrite' | 'metadata' | 'unchanged' | 'skip';

export interface RestoreEntry {
  action: RestoreAction;
  /** The path inside the snapshot ("/etc/hosts"). */
  path: string;
  type: NodeType | 'hardlink';
  size?: number;
  /** Why an entry was skipped or overwritten, or which metadata was restored. */
  reason?: string;
}

export interface RestoreCounts {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  special: number;
  bytes: number;
}

export interface RestoreProgress {
  files: number;
  bytes: number;
  currentPath?: string;
}

export interface RestoreOptions extends SafetyOptions {
  signal?: AbortSignal;
  /** Paths or globs inside the snapshot to restore (see PathPattern); default: everything. */
  include?: string[];
  /** Paths or globs to leave out, with everything below them. */
  exclude?: string[];
  /** What to do with entries that exist in the target (default 'if-changed'). */
  overwrite?: OverwritePolicy;
  /** What an existing file is judged unchanged by (default 'size-mtime'; see CompareBasis). */
  compare?: CompareBasis;
  /** Decide and report everything, write nothing. */
  dryRun?: boolean;
  /** Write all-zero chunks (and zero blocks of sparse files) as holes (default true). */
  sparse?: boolean;
  /** The host restored onto, for the safety check (sources/host.ts: localHostIdentity() for this one). */
  targetHost: HostIdentity;
  /** Entries prepared at once: looked up in the target, created if not files (default 16). */
  fileConcurrency?: number;
  /** Pack reads in flight, each of up to RESTORE_MAX_REQUEST bytes of neighbouring blobs (default 3). */
  blobConcurrency?: number;
  /** Files per content window (default 16,384; tests use tiny windows to cross many). */
  windowFiles?: number;
  /**
   * Decodes (decrypts, decompresses and verifies) blobs in worker threads: a WorkerPool. Without
   * it blobs are decoded on the calling thread, which is slower but checks just the same.
   */
  pool?: BlobDecoder;
  /** Every entry's decision (in a dry run: what would happen). */
  onEntry?: (e: RestoreEntry) => void;
  /** After each blob written and each entry done. */
  onProgress?: (p: RestoreProgress) => void;
  onWarning?: (path: string, problem: string) => void;
  /**
   * Also write files whose data is partly unreadable, with the unreadable ranges zero-filled,
   * as NAME.damaged next to where NAME would go (NAME itself is left as it is). They still count
   * as damaged.
   */
  salvage?: boolean;
  /**
   * Temporary files of earlier restores younger than this (by ctime) are kept while another
   * restore of the repository runs (default 15 minutes; see restore-temps.ts).
   */
  staleTempMs?: number;
  /**
   * Other copies of the same snapshot: a data chunk that cannot be read from this repository (no
   * copy of it here reads) is fetched from them, verified against its id, and the restore goes on
   * (restore-fallback.ts). Only what none of them gives counts as damaged.
   */
  fallback?: ChunkFallback;
  /** How `sources` names this repository (default 'repository'). */
  sourceName?: string;
}

/** Where restored data came from: chunks and their bytes; for other copies also the files. */
export interface ChunkSource {
  chunks: number;
  bytes: number;
  /** Other copies only: how many files got data from it, and the first of them (paths inside the snapshot). */
  fileCount?: number;
  files?: string[];
}

/** Stored bytes one pack read of a restore spans at most (unless one blob is larger). */
export const RESTORE_MAX_REQUEST = 2 << 20;
/** Stored plus decoded bytes of a restore's pack reads in flight. */
export const RESTORE_MAX_IN_FLIGHT = 32 << 20;

/** How many file paths a source lists at most. */
export const SOURCE_FILES_LISTED = 20;

/** An entry whose data is damaged or missing in the repository. */
export interface DamagedEntry {
  /** The path inside the snapshot. */
  path: string;
  problem: string;
  /** The pack and blob that could not be read, when one was. */
  pack?: string;
  blob?: string;
  /** With salvage: the path (inside the snapshot) it was written to, and the bytes zero-filled. */
  salvagedAs?: string;
  lostBytes?: number;
}

/** The name a salvaged file is written under: says that it is not the real content. */
export const SALVAGE_SUFFIX = '.damaged';

export interface RestoreResult {
  /** The real path of the target directory. */
  target: string;
  dryRun: boolean;
  created: RestoreCounts;
  overwritten: RestoreCounts;
  /** Entries whose content was judged unchanged but whose metadata differed: restored in place. */
  metadataRestored: RestoreCounts;
  unchanged: RestoreCounts;
  skipped: RestoreCounts;
  /** What "unchanged" was judged by: the size and mtime of existing files, or their content. */
  compare: CompareBasis;
  warnings: Array<{ path: string; problem: string }>;
  /** What the safety check wanted the operator to see (not counted as warnings). */
  notices: string[];
  /** Entries not restored (or only salvaged) because their data is damaged or missing. */
  damaged: DamagedEntry[];
  /** Temporary files of earlier, interrupted restores: removed (in a dry run: would be), and kept as possibly another running restore's. */
  staleTemps: { removed: number; kept: number };
  /** Data chunks written, by where they were read: this repository (sourceName) and the fallback's copies. */
  sources: Record<string, ChunkSource>;
}

const zeroCounts = (): RestoreCounts => ({ files: 0, dirs: 0, symlinks: 0, hardlinks: 0, special: 0, bytes: 0 });

const isRoot = process.getuid?.() === 0;
const { O_WRONLY, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_DIRECTORY } = constants;

// Random bytes for temporary names, drawn in bulk: one randomBytes() call per file was a
// noticeable part of restoring many small files.
let tempRandom = Buffer.alloc(0);
let tempRandomAt = 0;

function tempPath(dir: Buffer): Buffer {
  if (tempRandomAt + 8 > tempRandom.length) {
    tempRandom = randomBytes(8 * 1024);
    tempRandomAt = 0;
  }
  const name = TMP_PREFIX + tempRandom.toString('hex', tempRandomAt, (tempRandomAt += 8));
  return childPath(dir, Buffer.from(name));
}

async function lstatOrUndefined(p: Buffer): Promise<BigIntStats | undefined> {
  try {
    return await lstat(p, { bigint: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw e;
  }
}

function statType(st: BigIntStats): NodeType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return st.isBlockDevice() ? 'blockdev' : 'chardev';
}

function linkTargetBytes(n: TreeNode): Buffer {
  return n.rawLinkTarget !== undefined ? Buffer.from(n.rawLinkTarget, 'base64') : Buffer.from(n.linkTarget ?? '', 'utf8');
}

/** File-system errors after which every remaining entry would fail the same way. */
function isFatalFsError(e: unknown): boolean {
  const code = isCofferError(e) ? e.details?.errno : (e as NodeJS.ErrnoException)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'EROFS';
}

// Errors are sorted by where they came from, not by code: the metadata helpers report a missing
// file as NOT_FOUND too, which must not be taken for a blob missing from the repository.
/** Damaged or missing repository data: that entry is not restored, the others are. */
const dataErrors = new WeakSet<object>();
/** The repository is unreachable, or a safety rule stopped the restore: nothing more is tried. */
const stopErrors = new WeakSet<object>();

function tag<E>(set: WeakSet<object>, e: E): E {
  if (e !== null && typeof e === 'object') set.add(e);
  return e;
}

function isFatal(e: unknown): boolean {
  if (e !== null && typeof e === 'object' && stopErrors.has(e)) return true;
  if (isCofferError(e, 'CANCELLED') || isCofferError(e, 'INTERNAL') || isFatalFsError(e)) return true;
  // Neither an errno error nor a CofferError: a bug, not a problem with one entry.
  return !isCofferError(e) && !/^E[A-Z0-9]+$/.test(String((e as NodeJS.ErrnoException)?.code));
}

/** Members of one hard-link group run one after another; the first one written is the source. */
interface LinkGroup {
  node: TreeNode;
  source?: { path: Buffer; ino: bigint | undefined };
  chain: Promise<void>;
}

/** Resolves the target lexically and, through symlinks, as far as it exists. */
async function resolveTarget(target: string): Promise<{ lexical: string; real: string; exists: boolean }> {
  if (target === '') throw new CofferError('USAGE', 'Cannot restore: the target directory is empty', { hint: 'Give --target DIR (use / to restore files to their original place).' });
  const lexical = posix.resolve(target);
  let base = lexical;
  const rest: string[] = [];
  for (;;) {
    try {
      const real = await realpath(base);
      return { lexical, real: rest.length ? posix.join(real, ...rest.reverse()) : real, exists: rest.length === 0 };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' || base === '/') throw new CofferError('USAGE', `Cannot restore into ${lexical}: ${(e as Error).message}`, { cause: e, hint: 'Give a target directory you can write to.' });
      rest.push(posix.basename(base));
      base = posix.dirname(base);
    }
  }
}

/** Runs the safety check on both forms of the target; throws REFUSED if either is refused. */
export async function checkRestoreTarget(snapshotHost: HostIdentity | undefined, target: string, options: SafetyOptions & { targetHost: HostIdentity }): Promise<{ lexical: string; real: string; exists: boolean; verdict: SafetyVerdict }> {
  const t = await resolveTarget(target);
  const targetHost = options.targetHost;
  const homeDirs = [...(options.homeDirs ?? []), homedir()].filter((h) => h && h !== '/');
  const opts = { ...options, homeDirs };
  const a = restoreSafety(snapshotHost, targetHost, t.lexical, opts);
  const b = t.real === t.lexical ? a : restoreSafety(snapshotHost, targetHost, t.real, opts);
  const refused = a.refuse ? a : b.refuse ? b : undefined;
  if (refused) throw new CofferError('REFUSED', refused.refuse!, { hint: refused.hint, details: { differences: refused.differences, systemDir: refused.systemDir } });
  const verdict: SafetyVerdict = { warnings: [...new Set([...a.warnings, ...b.warnings])], systemDir: a.systemDir ?? b.systemDir, differences: a.differences };
  return { ...t, verdict };
}

/**
 * Restores a snapshot (or a bare tree id, whose source host is then unknown) into `target`.
 * Throws REFUSED before writing anything when the safety check says no; CORRUPT at the end if
 * some entries could not be restored because their data is damaged or missing (everything else
 * is restored); CANCELLED when the signal fires (temporary files are removed first).
 */
export function restore(repo: Repository, source: Snapshot | string, target: string, options: RestoreOptions): Promise<RestoreResult> {
  return restoreFrom(new LocalRestoreSource(repo), source, target, options);
}

/**
 * restore() reading through `from` (restore-source.ts): the repository, or a storage node for an
 * agent that holds no repository key. The same checks, the same safety, the same result.
 */
export async function restoreFrom<L>(from: RestoreSource<L>, source: Snapshot | string, target: string, options: RestoreOptions): Promise<RestoreResult> {
  const userSignal = options.signal;
  throwIfAborted(userSignal);
  const treeId = typeof source === 'string' ? source : source.tree;
  const policy = options.overwrite ?? 'if-changed';
  if (!(OVERWRITE_POLICIES as readonly string[]).includes(policy)) throw new CofferError('USAGE', `Cannot restore with --overwrite ${JSON.stringify(policy)}: give never, if-changed or always`);
  const compare = options.compare ?? 'size-mtime';
  if (!(COMPARE_BASES as readonly string[]).includes(compare)) throw new CofferError('USAGE', `Cannot restore with --compare ${JSON.stringify(compare)}: give size-mtime or content`);
  const dryRun = !!options.dryRun;
  const sparse = options.sparse ?? true;
  const filter = compilePathFilter(options.include, options.exclude);
  const checked = await checkRestoreTarget(typeof source === 'string' ? undefined : source.host, target, options);

  const salvage = !!options.salvage && !dryRun;
  const result: RestoreResult = { target: checked.real, dryRun, created: zeroCounts(), overwritten: zeroCounts(), metadataRestored: zeroCounts(), unchanged: zeroCounts(), skipped: zeroCounts(), compare, warnings: [], notices: checked.verdict.warnings, damaged: [], staleTemps: { removed: 0, kept: 0 }, sources: { [options.sourceName ?? 'repository']: { chunks: 0, bytes: 0 } } };
  const progress: RestoreProgress = { files: 0, bytes: 0 };
  const warn = (path: string, problem: string) => {
    result.warnings.push({ path, problem });
    options.onWarning?.(path, problem);
  };
  const bucket = (a: RestoreAction) => (a === 'create' ? result.created : a === 'overwrite' ? result.overwritten : a === 'metadata' ? result.metadataRestored : a === 'unchanged' ? result.unchanged : result.skipped);
  const report = (e: RestoreEntry) => {
    const c = bucket(e.action);
    if (e.type === 'file') {
      c.files++;
      c.bytes += e.size ?? 0;
    } else if (e.type === 'dir') c.dirs++;
    else if (e.type === 'symlink') c.symlinks++;
    else if (e.type === 'hardlink') c.hardlinks++;
    else c.special++;
    options.onEntry?.(e);
  };
  const damaged = result.damaged;
  if (typeof source !== 'string' && source.repairedFrom) {
    warn('/', `this snapshot is the repair of ${source.repairedFrom.slice(0, 12)}, whose data was partly lost: what was lost is renamed *.damaged (zero-filled, or an empty directory), or missing if the whole snapshot root was lost`);
  }
  let fatal: unknown;
  const fail = (e: unknown) => {
    fatal ??= e;
    if (!signal.aborted) inner.abort(e);
  };

  // The source registers the restore (a prune waits for it) before the index is loaded.
  const notice = (message: string) => result.notices.push(message);
  const { othersMayWrite } = await from.begin({ signal: userSignal, dryRun, notice });
  const endSource = () => from.end({ dryRun, notice });
  const temps = new StaleTemps({ othersMayWrite, minAgeMs: options.staleTempMs, dryRun, onWarning: warn });

  // The target directory itself: created (not in a dry run), then used by its real path.
  let rootPath = Buffer.from(checked.real);
  let rootFresh = false;
  let rootCreated = false;
  try {
    await from.load({ signal: userSignal, notice });
    try {
      if (!checked.exists) {
        if (dryRun) rootFresh = true;
        else {
          await mkdir(checked.lexical, { recursive: true });
          rootCreated = true;
          rootPath = Buffer.from(await realpath(checked.lexical));
          result.target = rootPath.toString();
        }
      }
      if (!rootFresh && !(await lstat(rootPath)).isDirectory()) throw new Error('it exists and is not a directory');
    } catch (e) {
      throw new CofferError('USAGE', `Cannot restore into ${checked.lexical}: ${(e as Error).message}`, { cause: e, hint: 'Give a directory you can write to (it is created if missing).' });
    }
    if (checked.exists) await temps.sweep(rootPath, '');
  } catch (e) {
    await endSource();
    throw e;
  }

  // An internal controller stops in-flight work as soon as one entry fails fatally.
  const inner = new AbortController();
  const onUserAbort = () => inner.abort(userSignal!.reason);
  if (userSignal?.aborted) onUserAbort();
  userSignal?.addEventListener('abort', onUserAbort, { once: true });
  const signal = inner.signal;

  // Directories: created when first needed, with their metadata applied at the very end.
  interface DirMeta { path: Buffer; inner: string; node: MetaNode; depth: number }
  const dirMeta: DirMeta[] = [];
  // The target directory is the snapshot's root: it gets the root's metadata (snapshots that
  // recorded it) like any directory, last of all: when this restore created it, or when the whole
  // snapshot (the root itself) is selected and existing entries may be changed. A restore of
  // some paths only (--include) merges them into an existing target and leaves its metadata.
  if (typeof source !== 'string' && source.root && (rootCreated || (filter.decide('/', true, false) === 'all' && policy !== 'never'))) {
    dirMeta.push({ path: rootPath, inner: '', node: { ...source.root, type: 'dir' }, depth: 0 });
  }
  class DirCtx {
    readonly path: Buffer;
    readonly inner: string;
    readonly parent: DirCtx | undefined;
    readonly node: TreeNode | undefined;
    /** Selected by the filter itself (not only an ancestor of a selected entry). */
    readonly selected: boolean;
    /** Created by this restore (or would be, in a dry run): nothing in it exists yet. */
    fresh = false;
    private ready: Promise<boolean> | undefined;
    constructor(path: Buffer, inner: string, parent: DirCtx | undefined, node: TreeNode | undefined, selected: boolean, fresh = false) {
      this.path = path;
      this.inner = inner;
      this.parent = parent;
      this.node = node;
      this.selected = selected;
      this.fresh = fresh;
      if (!parent) this.ready = Promise.resolve(true);
    }
    /** Makes sure the directory exists as a real directory; false if it is skipped. */
    ensure(): Promise<boolean> {
      this.ready ??= this.prepare().catch((e: unknown) => {
        // One warning for a directory that cannot be made, not one per entry in it.
        if (isFatal(e)) throw e;
        warn(this.inner, `cannot restore directory: ${(e as Error).message}`);
        report({ action: 'skip', path: this.inner, type: 'dir', reason: (e as Error).message });
        return false;
      });
      return this.ready;
    }
    private async prepare(): Promise<boolean> {
      const parent = this.parent!;
      const node = this.node!;
      if (!(await parent.ensure())) return false;
      throwIfAborted(signal);
      const st = parent.fresh ? undefined : await lstatOrUndefined(this.path);
      const meta = () => dirMeta.push({ path: this.path, inner: this.inner, node, depth: this.inner.split('/').length });
      if (!st) {
        if (!dryRun) await mkdir(this.path, { mode: 0o700 });
        this.fresh = true;
        meta();
        report({ action: 'create', path: this.inner, type: 'dir' });
        return true;
      }
      if (st.isDirectory()) {
        // An existing directory is merged into; its metadata is restored only if it was selected.
        await temps.sweep(this.path, this.inner);
        if (this.selected && policy !== 'never') meta();
        report({ action: 'unchanged', path: this.inner, type: 'dir' });
        return true;
      }
      const what = st.isSymbolicLink() ? 'a symlink' : `a ${statType(st)}`;
      if (policy === 'never') {
        report({ action: 'skip', path: this.inner, type: 'dir', reason: `exists as ${what}` });
        return false;
      }
      if (st.isSymbolicLink() && policy !== 'always') {
        // A symlinked directory in the target is usually deliberate (data moved to another disk):
        // writing through it would escape the target, replacing it would silently redirect.
        throw tag(stopErrors, new CofferError('REFUSED', `Cannot restore ${this.inner} into ${this.path.toString()}: it exists as a symlink, and a restore never writes through links`, {
          hint: 'Remove the symlink, restore into another directory, or pass --overwrite always to replace the link by a directory.',
        }));
      }
      if (!dryRun) {
        await unlink(this.path);
        await mkdir(this.path, { mode: 0o700 });
      }
      this.fresh = true;
      meta();
      report({ action: 'overwrite', path: this.inner, type: 'dir', reason: `was ${what}` });
      return true;
    }
  }

  /** Data blobs found to be all zeros: with `sparse` they become holes and are not read again. */
  const zeroIds = new Set<string>();
  const fileSlots = new Limiter(options.fileConcurrency ?? 16);
  // Pack reads into buffers reused for the whole restore (deliver() has written a request's blobs
  // before it returns), sized for a steady stream rather than for the largest reads: measured on
  // one VM of the benchmark (496 MB), 2 MiB requests three at a time restore as fast as 8 MiB four
  // at a time, with 60 MB less peak RSS and a fifth of the page faults.
  const concurrency = options.blobConcurrency ?? 3;
  const readOptions = { signal, decoder: options.pool, concurrency, maxRequest: RESTORE_MAX_REQUEST, maxInFlight: RESTORE_MAX_IN_FLIGHT, buffers: new ReadBuffers({ concurrency, maxRequest: RESTORE_MAX_REQUEST }) };

  /** How an entry that could not be restored counts: damaged data, the end of the restore, or a warning. */
  const entryFailed = (innerPath: string, e: unknown) => {
    if (signal.aborted) fail(fatal ?? e);
    else if (e !== null && typeof e === 'object' && dataErrors.has(e)) {
      const d = (e as CofferError).details;
      damaged.push({ path: innerPath, problem: (e as Error).message, ...(typeof d?.pack === 'string' ? { pack: d.pack } : {}), ...(typeof d?.blob === 'string' ? { blob: d.blob } : {}) });
    }
    else if (isFatal(e)) fail(e);
    else warn(innerPath, `cannot restore: ${(e as Error).message}`);
  };

  /**
   * Checks that every blob of a file is in the index and that they add up to its size. With
   * salvage, a blob the index does not know is a lost part (no hit) when its length follows from
   * the others (it is the only one unknown).
   */
  const contentParts = (node: TreeNode, innerPath: string, known?: Map<string, BlobNeed>) => {
    const parts: Array<{ id: string; at?: L; length: number; pos: number; need?: BlobNeed }> = [];
    let pos = 0;
    let unknown = 0;
    for (const id of node.content ?? []) {
      const need = known?.get(id);
      const at = need?.at ?? from.locate(id);
      if (at === undefined) {
        if (!salvage || ++unknown > 1) throw tag(dataErrors, new CofferError('NOT_FOUND', `Cannot restore ${innerPath}: its data blob ${id.slice(0, 12)} is not in the repository index`, { hint: 'Run `coffer repo check`.', details: { blob: id } }));
        parts.push({ id, length: -1, pos: -1 });
        continue;
      }
      const length = from.rawLength(at);
      parts.push({ id, at, length, pos, need });
      pos += length;
    }
    if (unknown) {
      // The one blob the index does not know fills the gap.
      const length = (node.size ?? 0) - pos;
      if (length <= 0) throw tag(dataErrors, new CofferError('NOT_FOUND', `Cannot restore ${innerPath}: a data blob is not in the repository index and its size cannot be told`, { hint: 'Run `coffer repo check`.' }));
      pos = 0;
      for (const p of parts) {
        if (p.at === undefined) p.length = length;
        p.pos = pos;
        pos += p.length;
      }
    }
    if (pos !== node.size) throw tag(dataErrors, new CofferError('CORRUPT', `Cannot restore ${innerPath}: its content adds up to ${pos} bytes, the snapshot says ${node.size}`, { hint: 'Run `coffer repo check`.' }));
    return parts;
  };

  /** Owner, xattrs, mode and times (see restore-writer.ts); a step that fails is a warning. */
  const applyMeta = (p: Buffer, node: MetaNode, innerPath: string, fd?: number) => applyMetaTo(p, node, fd, isRoot, (problem) => warn(innerPath, problem));

  /** Puts a finished temporary entry in place of `final` (removing an empty directory there). */
  const moveIntoPlace = async (tmp: Buffer, final: Buffer, existing: BigIntStats | undefined) => {
    if (existing?.isDirectory()) await rmdir(final);
    await rename(tmp, final);
  };

  // ---- file content, pack by pack ------------------------------------------------------------
  //
  // Files are not read and written one by one. restoreEntry() registers each file as a FileJob in
  // the current window; flush() then reads every blob the window needs once, pack by pack with
  // neighbouring blobs in one request (readBlobs() verifies each), and writes it to every file and
  // offset that needs it: a blob shared by many files, the common case in a deduplicated
  // repository, is read, verified and decoded once. A file is created under a fresh temporary
  // name (O_EXCL|O_NOFOLLOW) when its first blob arrives and renamed into place after its last.
  // The writes are synchronous calls, in slices of a few milliseconds between which the event loop
  // runs: for the many small files of a typical restore, a write through the thread pool costs
  // more than the write itself.

  interface FileJob {
    /** With salvage: the parts that could not be read (written as holes), and why. */
    lost?: Array<{ pos: number; length: number; problem: string; pack?: string; blob: string }>;
    node: TreeNode;
    dir: DirCtx;
    final: Buffer;
    innerPath: string;
    existing: BigIntStats | undefined;
    entry: RestoreEntry;
    group: LinkGroup | undefined;
    /** Blob parts not yet written (holes count as written). */
    remaining: number;
    /** Where the last byte written ends: the file needs ftruncate() only if holes reach its end. */
    written: number;
    /** Set with the first parts sent to a writer: the file's id there, the writer, the temporary name. */
    file?: number;
    writer?: number;
    tmp?: Buffer;
    settled: boolean;
    /** Set by the first member of a hard-link group, whose other members wait for it. */
    onSettled?: () => void;
    /** Batches of ops sent to its writer and not back yet; a failed file's removal waits for them. */
    inflight?: number;
    removeWhenIdle?: boolean;
  }
  /** One blob a window reads, and every place it goes. */
  interface BlobNeed {
    id: string;
    /** Where it is read (a copy in a pack, for the local source). */
    at: L;
    uses: Array<{ job: FileJob; pos: number }>;
    /** Packs whose copy failed: another copy is read before the blob counts as lost. */
    tried?: Set<string>;
  }
  /**
   * A window's bookkeeping is its memory (about a kilobyte per file): it closes at these sizes.
   * Measured on the 76,000-file benchmark: 16,384 files per window restore as fast as one window
   * for everything (a blob needed by two windows is read twice, but reading is not what limits a
   * restore) with ~90 MB less peak memory.
   */
  const WINDOW_FILES = options.windowFiles ?? 16_384;
  const SLICE_MS = 8;
  let windowJobs: FileJob[] = [];
  let windowNeeds = new Map<string, BlobNeed>();
  let windowParts = 0;
  let onJobAdded: (() => void) | undefined;
  /** Jobs whose temporary file exists and is not yet in place: removed if they fail. */
  const partial = new Set<FileJob>();

  const addJob = (job: FileJob) => {
    throwIfAborted(signal);
    const parts = contentParts(job.node, job.innerPath, windowNeeds);
    for (const p of parts) {
      if (p.at === undefined) {
        (job.lost ??= []).push({ pos: p.pos, length: p.length, blob: p.id, problem: `data blob ${p.id.slice(0, 12)} is not in the repository index` });
        continue;
      }
      if (sparse && zeroIds.has(p.id)) continue;
      let need = p.need ?? windowNeeds.get(p.id);
      if (!need) windowNeeds.set(p.id, (need = { id: p.id, at: p.at, uses: [] }));
      need.uses.push({ job, pos: p.pos });
      job.remaining++;
    }
    windowParts += parts.length;
    windowJobs.push(job);
    onJobAdded?.();
  };
  // The first windows are small, so that writing starts soon after the walk does; each flush
  // doubles the size up to WINDOW_FILES.
  let windowLimit = Math.min(WINDOW_FILES, 1024);
  const windowFull = () => windowJobs.length >= windowLimit || windowParts >= windowLimit * 8;

  /** Ends a job: on failure its temporary file is removed and the failure counted. */
  const settleJob = (job: FileJob, e?: unknown) => {
    if (job.settled) return;
    job.settled = true;
    if (e !== undefined) {
      // A writer may still be about to create the file (its ops are under way): then it is
      // removed when they are back, not now (it would be created after the unlink, and stay).
      if (partial.delete(job)) {
        if (job.inflight) job.removeWhenIdle = true;
        else removeTemp(job);
      }
      entryFailed(job.innerPath, e);
    }
    job.onSettled?.();
  };
  const removeTemp = (job: FileJob) => {
    try {
      unlinkSync(job.tmp!);
    } catch {
      // already gone
    }
  };
  /** A batch of the job's ops came back from its writer. */
  const opsDone = (job: FileJob) => {
    if (--job.inflight! === 0 && job.removeWhenIdle) {
      job.removeWhenIdle = false;
      removeTemp(job);
    }
  };

  /** Writer threads, started with the first window; stopped when the restore ends. */
  let writers: FileWriters | undefined;
  let nextFileId = 1;
  type Writes = Array<{ data: Buffer | undefined; pos: number }>;

  const headerOf = (job: FileJob): FileHeader => {
    const n = job.node;
    return {
      tmp: job.tmp!,
      final: job.final,
      replaceDir: !!job.existing?.isDirectory(),
      size: n.size ?? 0,
      sparse: !!n.sparse,
      holes: !!n.sparse && sparse,
      meta: { type: n.type, uid: n.uid, gid: n.gid, mode: n.mode, mtimeNs: n.mtimeNs, atimeNs: n.atimeNs, xattrs: n.xattrs },
      wantIno: !!job.group,
    };
  };

  /**
   * Has the writer threads write parts of files (`data` undefined: a hole), creating each file
   * with its first parts and finishing it with its last; waits until they are written. All ops
   * are posted before the first await, so a file's ops reach its writer in order. The blobs move
   * to the writers: the caller must not touch them afterwards.
   */
  const write = async (batch: Array<{ job: FileJob; writes: Writes }>) => {
    const w = (writers ??= new FileWriters());
    const fresh = w.leastBusy();
    interface Sub { ops: WriteOp[]; blobs: Buffer[]; index: Map<Buffer, number>; items: Array<{ job: FileJob; bytes: number; last: boolean }> }
    const subs = new Map<number, Sub>();
    /** The writer each blob went to first: a second writer gets a copy. */
    const sentTo = new Map<Buffer, number>();
    for (const { job, writes } of batch) {
      let header: FileHeader | undefined;
      job.inflight = (job.inflight ?? 0) + 1;
      if (job.file === undefined) {
        job.file = nextFileId++;
        job.writer = fresh;
        job.tmp = tempPath(job.dir.path);
        partial.add(job);
        header = headerOf(job);
      }
      const index = job.writer!;
      let sub = subs.get(index);
      if (!sub) subs.set(index, (sub = { ops: [], blobs: [], index: new Map(), items: [] }));
      const parts: WriteOp['parts'] = [];
      let bytes = 0;
      for (const x of writes) {
        if (!x.data) continue;
        let b = sub.index.get(x.data);
        if (b === undefined) {
          const first = sentTo.get(x.data);
          if (first === undefined) sentTo.set(x.data, index);
          // Shared memory goes to every writer as it is; other memory moves to the first.
          const shared = x.data.buffer instanceof SharedArrayBuffer;
          b = sub.blobs.push(shared || first === undefined || first === index ? x.data : Buffer.from(x.data)) - 1;
          sub.index.set(x.data, b);
        }
        parts.push({ blob: b, pos: x.pos });
        bytes += x.data.length;
      }
      const last = writes.length === job.remaining;
      job.remaining -= writes.length;
      // A salvaged file goes under a name that says so; its real name is left alone.
      const final = last && job.lost ? Buffer.concat([job.final, Buffer.from(SALVAGE_SUFFIX)]) : undefined;
      sub.ops.push({ file: job.file, header, parts, last, ...(final ? { final } : {}) });
      sub.items.push({ job, bytes, last });
    }
    const done = await Promise.all(
      [...subs].map(([index, sub]) => w.write(index, sub.ops, sub.blobs).then((outcomes) => ({ sub, outcomes }), (error: unknown) => ({ sub, error }))),
    );
    for (const d of done) {
      if ('error' in d) {
        // The writer is gone; what it left behind is removed by settleJob().
        for (const it of d.sub.items) {
          settleJob(it.job, d.error);
          opsDone(it.job);
        }
        continue;
      }
      for (let k = 0; k < d.outcomes.length; k++) {
        const o = d.outcomes[k]!;
        const { job, bytes, last } = d.sub.items[k]!;
        opsDone(job);
        for (const problem of o.warnings) warn(job.innerPath, problem);
        if (job.settled) continue; // an earlier part failed, or its data was damaged
        if (!o.ok) {
          if (o.kept) partial.delete(job); // replaced by someone else: not ours to remove
          settleJob(job, deserializeError(o.error));
          continue;
        }
        progress.bytes += bytes;
        if (last) {
          partial.delete(job);
          // Other members of a hard-link group must not link to a salvaged file.
          if (job.group && !job.lost) job.group.source = { path: job.final, ino: o.ino };
          progress.files++;
        }
        options.onProgress?.({ ...progress, currentPath: job.innerPath });
        if (last) {
          if (job.lost) {
            const lost = job.lost;
            const salvagedAs = job.innerPath + SALVAGE_SUFFIX;
            const lostBytes = lost.reduce((n, l) => n + l.length, 0);
            damaged.push({
              path: job.innerPath, problem: `${lost.length} of its blobs could not be read (${lost.map((l) => l.problem).join('; ')}); written as ${salvagedAs} with ${lostBytes} bytes zero-filled`,
              pack: lost[0]!.pack, blob: lost[0]!.blob, salvagedAs, lostBytes,
            });
            report({ ...job.entry, action: 'create', path: salvagedAs, reason: `salvaged: ${lostBytes} bytes unreadable, zero-filled` });
          } else report(job.entry);
          settleJob(job);
        }
      }
    }
  };

  /** Blobs whose copy could not be read but that have another copy: read again after the window's first pass. */
  let retry: BlobNeed[] = [];
  /** Blobs no copy here could give, with why: asked of the other copies (options.fallback) at the end of the window. */
  let elsewhere: Array<{ need: BlobNeed; error: CofferError }> = [];
  const sources = result.sources;
  const here = sources[options.sourceName ?? 'repository']!;
  /** Paths that got data from each other copy (counted once each). */
  const fedFiles = new Map<string, Set<string>>();

  /** A blob no copy gives: the files needing it fail (or, with salvage, get a hole there). */
  const lose = (need: BlobNeed, code: CofferError['code'], problem: string, pack: string | undefined, byJob: Map<FileJob, Writes>) => {
    for (const u of need.uses) {
      if (u.job.settled) continue;
      if (!salvage) {
        settleJob(u.job, tag(dataErrors, new CofferError(code, `Cannot restore ${u.job.innerPath}: ${problem}`, { details: { pack, blob: need.id } })));
        continue;
      }
      (u.job.lost ??= []).push({ pos: u.pos, length: from.rawLength(need.at), problem, pack, blob: need.id });
      let w = byJob.get(u.job);
      if (!w) byJob.set(u.job, (w = []));
      w.push({ data: undefined, pos: u.pos });
    }
  };

  /** A blob's verified bytes go to every file that needs them. */
  const place = (need: BlobNeed, raw: Buffer, byJob: Map<FileJob, Writes>) => {
    let data: Buffer | undefined = raw;
    if (sparse && isAllZero(data)) {
      zeroIds.add(need.id);
      data = undefined;
    }
    for (const u of need.uses) {
      if (u.job.settled) continue;
      let w = byJob.get(u.job);
      if (!w) byJob.set(u.job, (w = []));
      w.push({ data, pos: u.pos });
    }
  };

  const writeAll = async (byJob: Map<FileJob, Writes>) => {
    throwIfAborted(signal);
    const batch: Array<{ job: FileJob; writes: Writes }> = [];
    for (const [job, writes] of byJob) if (!job.settled) batch.push({ job, writes });
    if (batch.length) await write(batch);
  };

  /** Writes the blobs of one request to every file that needs them. */
  const deliver = async (needs: BlobNeed[], indexes: number[], results: BlobResult[]) => {
    const byJob = new Map<FileJob, Writes>();
    for (let k = 0; k < indexes.length; k++) {
      const need = needs[indexes[k]!]!;
      const r = results[k]!;
      if (r.error) {
        const failed = need.at;
        const other = from.readFailed(need.id, failed, r.error, (need.tried ??= new Set()));
        if (other !== undefined) {
          need.at = other;
          retry.push(need);
          continue;
        }
        if (options.fallback && need.uses.some((u) => !u.job.settled)) {
          elsewhere.push({ need, error: r.error });
          continue;
        }
        lose(need, r.error.code, `data blob ${need.id.slice(0, 12)} ${from.describe(failed)} cannot be read: ${r.error.message}`, from.packOf(failed), byJob);
        continue;
      }
      here.chunks++;
      here.bytes += r.data.length;
      place(need, r.data, byJob);
    }
    await writeAll(byJob);
  };

  /** Bytes of lost chunks asked of the other copies at once: what they give is held until written. */
  const ELSEWHERE_BATCH = 32 << 20;

  /** Asks the other copies for the blobs in `elsewhere`, a batch at a time, and writes what they give. */
  const fetchElsewhere = async (fallback: ChunkFallback) => {
    // Blobs whose files all failed meanwhile (another of their blobs was lost) are not asked for.
    elsewhere = elsewhere.filter(({ need }) => need.uses.some((u) => !u.job.settled));
    while (elsewhere.length) {
      let bytes = 0;
      let n = 0;
      while (n < elsewhere.length && (n === 0 || bytes + from.rawLength(elsewhere[n]!.need.at) <= ELSEWHERE_BATCH)) bytes += from.rawLength(elsewhere[n++]!.need.at);
      const batch = elsewhere.slice(0, n);
      elsewhere = elsewhere.slice(n);
      const wants = batch.map(({ need }) => ({
        id: need.id,
        length: from.rawLength(need.at),
        places: need.uses.filter((u) => !u.job.settled).map((u) => ({ path: u.job.innerPath, pos: u.pos })),
      }));
      const found = await fallback.fetch(wants, signal);
      const byJob = new Map<FileJob, Writes>();
      for (let k = 0; k < batch.length; k++) {
        const { need, error } = batch[k]!;
        const f = found[k]!;
        // Verified here too: whatever the fallback is, no byte reaches a file unchecked.
        if (f.data && f.data.length === from.rawLength(need.at) && chunkId(from.chunkIdKey, f.data).equals(fromHex(need.id))) {
          const s = (sources[f.from] ??= { chunks: 0, bytes: 0, fileCount: 0, files: [] });
          s.chunks++;
          s.bytes += f.data.length;
          let fed = fedFiles.get(f.from);
          if (!fed) fedFiles.set(f.from, (fed = new Set()));
          for (const u of need.uses) {
            if (u.job.settled || fed.has(u.job.innerPath)) continue;
            fed.add(u.job.innerPath);
            s.fileCount = fed.size;
            if (s.files!.length < SOURCE_FILES_LISTED) s.files!.push(u.job.innerPath);
          }
          place(need, f.data, byJob);
          continue;
        }
        const tried = f.error ?? `${f.from}: its data differs from the snapshot's chunk`;
        lose(need, error.code, `data blob ${need.id.slice(0, 12)} ${from.describe(need.at)} cannot be read (${error.message}), nor from another copy (${tried})`, from.packOf(need.at), byJob);
      }
      await writeAll(byJob);
    }
  };

  /** Restores the content of every file in the window. */
  // A full window is flushed while the walk goes on filling the next one (writing starts early
  // instead of after the whole walk); a further full window waits for the flush before it, so
  // at most two windows are held. A flush's failure surfaces at the next wait.
  let flushing: Promise<void> | undefined;
  const waitForFlush = async () => {
    const f = flushing;
    flushing = undefined;
    if (f) await f;
  };
  const flushBehind = async () => {
    await waitForFlush();
    const p = flush();
    p.catch(() => {});
    flushing = p;
  };

  const flush = async () => {
    windowLimit = Math.min(WINDOW_FILES, windowLimit * 2);
    const jobs = windowJobs;
    const needs = [...windowNeeds.values()];
    windowJobs = [];
    windowNeeds = new Map();
    windowParts = 0;
    try {
      // Empty files, and files of holes only, need nothing read.
      const empty = jobs.filter((j) => j.remaining === 0).map((job) => ({ job, writes: [] }));
      for (let i = 0; i < empty.length; i += 512) {
        throwIfAborted(signal);
        await write(empty.slice(i, i + 512));
      }
      await from.readData(needs.map((n) => n.at), (indexes, results) => deliver(needs, indexes, results), readOptions);
      // Blobs whose first copy failed, from their next copy (until none is left).
      while (retry.length) {
        const again = retry;
        retry = [];
        await from.readData(again.map((n) => n.at), (indexes, results) => deliver(again, indexes, results), readOptions);
      }
      // What no copy here gives, from the other copies of the snapshot.
      if (options.fallback) await fetchElsewhere(options.fallback);
    } catch (e) {
      // The cause, before the files left unfinished are settled below (else they would be, with
      // an INTERNAL error, and that would be what the restore reports).
      fail(e);
      throw e;
    } finally {
      // After a fatal error or cancellation: what the window could not finish is removed.
      for (const job of jobs) {
        if (!job.settled) settleJob(job, fatal ?? new CofferError('INTERNAL', `Cannot restore ${job.innerPath}: not all of its data was read`));
      }
    }
  };

  // --compare content: each comparison holds a read buffer of up to COMPARE_BLOCK bytes, and
  // two at a time keep a disk busy without holding a buffer per file slot.
  const COMPARE_BLOCK = 8 * 1024 * 1024;
  const compareSlots = new Limiter(2);
  /** Chunk ids of all-zero data by length: the holes of a sparse file are not read. */
  const zeroChunkIds = new Map<number, string>();

  /**
   * Why an existing file of the node's size has other content (--compare content), or undefined
   * if it has the same. The file is read once, front to back in large blocks, and each blob's
   * raw length of it (from the index) is hashed into a chunk id and compared with the
   * snapshot's: this works for any chunking, content-defined or fixed, as the boundaries come
   * from the snapshot. Holes of a sparse file are not read: they are zeros.
   */
  const contentDifference = async (node: TreeNode, final: Buffer, existing: BigIntStats, innerPath: string): Promise<string | undefined> => {
    const parts = contentParts(node, innerPath);
    return compareSlots.run(async () => {
      let fh;
      try {
        fh = await open(final, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
      } catch (e) {
        return `cannot be read to compare its content (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
      }
      try {
        const st = await fh.stat({ bigint: true });
        if (!st.isFile() || st.ino !== existing.ino || st.dev !== existing.dev) return 'was replaced while it was compared';
        const size = node.size ?? 0;
        let regions: Array<[number, number]> | undefined;
        if (st.blocks * 512n < st.size) {
          try {
            regions = dataRegions(fh.fd, size);
          } catch {
            // No SEEK_DATA here: every byte is read.
          }
        }
        let ri = 0;
        const longest = parts.reduce((m, p) => Math.max(m, p.length), 0);
        const buf = Buffer.allocUnsafe(Math.max(longest, Math.min(size, COMPARE_BLOCK)));
        // buf holds the file's bytes from `start`, `filled` of them; the next blob begins at buf[at].
        let start = 0;
        let filled = 0;
        let at = 0;
        for (const p of parts) {
          throwIfAborted(signal);
          if (p.at === undefined) return 'a blob of it is not in the repository index';
          const len = p.length;
          if (regions) {
            while (ri < regions.length && regions[ri]![1] <= p.pos) ri++;
            if (ri === regions.length || regions[ri]![0] >= p.pos + len) {
              // All hole: zeros, whose chunk id depends on the length alone.
              let zero = zeroChunkIds.get(len);
              if (zero === undefined) zeroChunkIds.set(len, (zero = toHex(chunkId(from.chunkIdKey, Buffer.alloc(len)))));
              if (zero !== p.id) return 'content differs';
              start = p.pos + len;
              filled = at = 0;
              continue;
            }
          }
          if (at + len > filled) {
            buf.copy(buf, 0, at, filled);
            filled -= at;
            start += at;
            at = 0;
            while (filled < len) {
              const { bytesRead } = await fh.read(buf, filled, buf.length - filled, start + filled);
              if (bytesRead === 0) return 'content differs (the file is shorter than it was)';
              filled += bytesRead;
            }
          }
          if (toHex(chunkId(from.chunkIdKey, buf.subarray(at, at + len))) !== p.id) return 'content differs';
          at += len;
        }
        return undefined;
      } finally {
        await fh.close();
      }
    });
  };

  /** Why the entry at `final` differs from the node (the if-changed test), or undefined if it does not. */
  const difference = async (node: TreeNode, final: Buffer, existing: BigIntStats, innerPath: string): Promise<string | undefined> => {
    const have = statType(existing);
    if (have !== node.type) return `was a ${have}`;
    if (node.type === 'file') {
      if (compare === 'content') return existing.size === BigInt(node.size ?? 0) ? contentDifference(node, final, existing, innerPath) : 'size differs';
      return existing.size === BigInt(node.size ?? 0) && sameTimeNs(existing.mtimeNs, node.mtimeNs) ? undefined : 'size or mtime differ';
    }
    if (node.type === 'symlink') return (await readlink(final, { encoding: 'buffer' })).equals(linkTargetBytes(node)) ? undefined : 'link target differs';
    if ((node.type === 'blockdev' || node.type === 'chardev') && BigInt(node.rdev ?? 0) !== existing.rdev) return 'device number differs';
    return undefined;
  };

  /** Decides what to do with a non-directory entry given what exists at its place. */
  const decide = async (node: TreeNode, final: Buffer, existing: BigIntStats | undefined, innerPath: string): Promise<{ action: RestoreAction; reason?: string }> => {
    if (!existing) return { action: 'create' };
    if (existing.isDirectory()) {
      // Replacing a directory by a file would delete what is in it: only an empty one, and only when asked.
      if (policy !== 'always') return { action: 'skip', reason: 'exists as a directory' + (policy === 'never' ? '' : '; not replaced (--overwrite always replaces an empty one)') };
      return { action: 'overwrite', reason: 'was an empty directory' };
    }
    if (policy === 'always') return { action: 'overwrite' };
    const why = await difference(node, final, existing, innerPath);
    if (why === undefined) return { action: 'unchanged' };
    return policy === 'never' ? { action: 'skip', reason: `exists and differs (${why})` } : { action: 'overwrite', reason: why };
  };

  /**
   * Which of an existing entry's mode, owner (as root; others cannot change it), mtime and
   * xattrs differ from the node's. Not the atime: reading a file changes it. Extended attributes
   * the snapshot does not list are left alone (as on a new file: an SELinux label, say).
   */
  const metaDifferences = (node: TreeNode, final: Buffer, st: BigIntStats): string[] => {
    const out: string[] = [];
    if (node.type !== 'symlink' && Number(st.mode & 0o7777n) !== (node.mode & 0o7777)) out.push('mode');
    if (isRoot && (Number(st.uid) !== node.uid || Number(st.gid) !== node.gid)) out.push('owner');
    if (!sameTimeNs(st.mtimeNs, node.mtimeNs)) out.push('mtime');
    if (node.xattrs?.length) {
      let have: Map<string, string> | undefined;
      try {
        have = new Map((readXattrs(final, () => {}) ?? []).map((x) => [x.name, x.value]));
      } catch {
        // Unreadable: written again, and a failure to write is the warning.
      }
      if (!have || node.xattrs.some((x) => have.get(x.name) !== x.value)) out.push('xattrs');
    }
    return out;
  };

  /**
   * Restores the metadata of an entry left in place, the way a new one gets it (applyMeta: owner
   * as root, xattrs, mode, then times). A file or FIFO is opened without following links or
   * blocking, checked to be the inode just compared, and changed through that descriptor. Other
   * types are changed by name with calls that do not follow links, except chmod of a device or
   * socket (which cannot be opened without side effects): that name was lstat()ed a moment ago.
   */
  const applyMetaInPlace = (final: Buffer, node: TreeNode, existing: BigIntStats, innerPath: string): void => {
    if (node.type !== 'file' && node.type !== 'fifo') {
      applyMeta(final, node, innerPath);
      return;
    }
    let fd: number;
    try {
      try {
        fd = openSync(final, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
      } catch (e) {
        // Not readable (mode 0200, say) but perhaps writable: either descriptor can change metadata.
        if ((e as NodeJS.ErrnoException).code !== 'EACCES') throw e;
        fd = openSync(final, O_WRONLY | O_NOFOLLOW | O_NONBLOCK);
      }
    } catch (e) {
      warn(innerPath, `cannot restore metadata: ${(e as Error).message}`);
      return;
    }
    try {
      const st = fstatSync(fd, { bigint: true });
      if (st.ino !== existing.ino || st.dev !== existing.dev) warn(innerPath, 'cannot restore metadata: it was replaced while the restore looked at it');
      else applyMeta(final, node, innerPath, fd);
    } finally {
      closeSync(fd);
    }
  };

  /**
   * Restores one non-directory entry. A file's content is left to its window: the FileJob is
   * returned, and the file is in place once the job has settled.
   */
  const restoreEntry = async (node: TreeNode, dir: DirCtx, final: Buffer, innerPath: string, group?: LinkGroup): Promise<FileJob | undefined> => {
    if (!(await dir.ensure())) return;
    throwIfAborted(signal);
    const existing = dir.fresh ? undefined : await lstatOrUndefined(final);
    const src = group?.source;
    if (src) {
      // A later member of a hard-link group: a link to the first one.
      if (existing && src.ino !== undefined && existing.ino === src.ino && existing.isFile()) {
        report({ action: 'unchanged', path: innerPath, type: 'hardlink' });
        return;
      }
      const d = existing ? await decide(node, final, existing, innerPath) : { action: 'create' as const };
      // Under "never" an existing entry stays, even one that only lacks the link.
      if (d.action === 'skip' || (existing && policy === 'never')) {
        report({ action: d.action === 'unchanged' ? 'unchanged' : 'skip', path: innerPath, type: 'hardlink', ...(d.reason ? { reason: d.reason } : {}) });
        return;
      }
      const action = existing ? 'overwrite' : 'create';
      if (!dryRun) {
        const tmp = tempPath(dir.path);
        await link(src.path, tmp);
        try {
          await moveIntoPlace(tmp, final, existing);
        } catch (e) {
          await unlink(tmp).catch(() => {});
          throw e;
        }
      }
      report({ action, path: innerPath, type: 'hardlink', ...(existing ? { reason: 'replaced by a link' } : {}) });
      return;
    }
    let d = await decide(node, final, existing, innerPath);
    // Content judged unchanged still gets the snapshot's metadata (if-changed; never leaves what
    // exists as it is).
    let fix: string[] = [];
    if (d.action === 'unchanged' && policy === 'if-changed') {
      fix = metaDifferences(node, final, existing!);
      // Changing the inode would change its other names too, which the snapshot does not have
      // (a hard link made since, perhaps outside the target): the entry is replaced instead.
      if (fix.length && existing!.nlink > BigInt(node.links ?? 1)) d = { action: 'overwrite', reason: `${fix.join(', ')} ${fix.length === 1 ? 'differs' : 'differ'} and it has other hard links, which are left as they are` };
    }
    const entry: RestoreEntry = { action: d.action, path: innerPath, type: node.type, ...(node.type === 'file' ? { size: node.size } : {}), ...(d.reason ? { reason: d.reason } : {}) };
    if (d.action === 'unchanged' && fix.length) {
      if (!dryRun) applyMetaInPlace(final, node, existing!, innerPath);
      entry.action = 'metadata';
      entry.reason = `metadata ${dryRun ? 'differs' : 'restored'}: ${fix.join(', ')}`;
    }
    if (d.action === 'skip' || d.action === 'unchanged') {
      if (group && d.action === 'unchanged') group.source = { path: final, ino: existing!.ino };
      report(entry);
      return;
    }
    if (dryRun) {
      // Without reading any data: is every blob where the index says, with the right sizes?
      if (node.type === 'file') contentParts(node, innerPath);
      if (group) group.source = { path: final, ino: undefined };
      report(entry);
      return;
    }
    if (node.type === 'file') {
      const job: FileJob = { node, dir, final, innerPath, existing, entry, group, remaining: 0, written: 0, settled: false };
      addJob(job);
      return job;
    }
    const tmp = tempPath(dir.path);
    let created = false;
    try {
      if (node.type === 'symlink') {
        await symlink(linkTargetBytes(node), tmp);
        created = true;
        applyMeta(tmp, node, innerPath);
      } else {
        try {
          createSpecial(tmp, { type: node.type as 'blockdev' | 'chardev' | 'fifo' | 'socket', mode: node.mode, rdev: node.rdev });
        } catch (e) {
          await unlink(tmp).catch(() => {});
          // Not permitted (devices as non-root) or not supported here: this entry only.
          if (isFatal(e)) throw e;
          warn(innerPath, (e as Error).message);
          report({ ...entry, action: 'skip', reason: (e as Error).message });
          return;
        }
        created = true;
        applyMeta(tmp, node, innerPath);
      }
      await moveIntoPlace(tmp, final, existing);
      created = false;
    } finally {
      if (created) await unlink(tmp).catch(() => {});
    }
    if (group) group.source = { path: final, ino: undefined };
    progress.files++;
    options.onProgress?.({ ...progress, currentPath: innerPath });
    report(entry);
  };

  const tasks = new Set<Promise<void>>();
  const track = (p: Promise<void>) => {
    tasks.add(p);
    void p.finally(() => tasks.delete(p));
  };
  const groups = new Map<string, LinkGroup>();

  /** Runs restoreEntry() in a file slot; the first of a hard-link group also waits for its content. */
  const run = async (node: TreeNode, dir: DirCtx, final: Buffer, innerPath: string, group: LinkGroup | undefined, holdingSlot: boolean) => {
    if (!holdingSlot) await fileSlots.acquire();
    let job: FileJob | undefined;
    try {
      job = await restoreEntry(node, dir, final, innerPath, group);
    } catch (e) {
      entryFailed(innerPath, e);
    } finally {
      fileSlots.release();
    }
    const j = job;
    if (j && group) await new Promise<void>((resolve) => (j.settled ? resolve() : (j.onSettled = resolve)));
  };

  const runEntry = async (node: TreeNode, dir: DirCtx, final: Buffer, innerPath: string) => {
    let group: LinkGroup | undefined;
    if (node.type === 'file' && (node.links ?? 1) > 1 && node.inode !== undefined && node.deviceId !== undefined) {
      const key = `${node.deviceId}:${node.inode}`;
      group = groups.get(key);
      if (group && (group.node.size !== node.size || (group.node.content ?? []).join() !== (node.content ?? []).join())) {
        // The snapshot claims one inode with two contents: damaged or crafted; keep them apart.
        warn(innerPath, 'marked as a hard link of another file with different content; restored as a separate file');
        group = undefined;
      } else if (!group) {
        group = { node, chain: Promise.resolve() };
        groups.set(key, group);
      }
    }
    if (group) {
      // The walk awaits each call, so the members of a group join its chain in walk order; each
      // takes a file slot when its turn comes (holding one while waiting could stall the walk).
      const g = group;
      track((g.chain = g.chain.then(() => run(node, dir, final, innerPath, g, false))));
      return;
    }
    await fileSlots.acquire();
    track(run(node, dir, final, innerPath, undefined, true));
  };

  // ---- the walk: breadth first, a batch of trees at a time -----------------------------------
  // Trees are read like file content, pack by pack, many per request: loading them one at a time
  // (a round trip each) took longer than restoring the data of a typical snapshot.

  const TREE_BATCH = 4096;
  const trees = from.openTrees({ decoder: options.pool, signal, concurrency: readOptions.concurrency });

  interface DirWork { id: string; dir: DirCtx; selected: boolean }

  const walkDir = async (w: DirWork, nodes: TreeNode[], next: DirWork[]) => {
    const { dir, selected } = w;
    for (const n of nodes) {
      throwIfAborted(signal);
      if (fatal) return;
      const innerPath = `${dir.inner}/${n.name}`;
      const decision = filter.decide(innerPath, n.type === 'dir', selected);
      if (decision === 'skip') continue;
      // An entry a repair marked (NAME.damaged): restored as it is now, never silently.
      if (n.repaired && decision === 'all') warn(innerPath, `restored from a repaired snapshot: ${n.repaired}`);
      const path = childPath(dir.path, nameBytes(n));
      if (n.type === 'dir') {
        const child = new DirCtx(path, innerPath, dir, n, decision === 'all');
        // Selected directories exist even when empty; others only once something inside needs
        // them. Made in the background: the next level waits for them.
        if (decision === 'all') child.ensure().catch(() => {});
        next.push({ id: n.subtree!, dir: child, selected: decision === 'all' });
      } else if (decision === 'all') {
        await runEntry(n, dir, path, innerPath);
        if (windowFull()) await flushBehind();
      }
    }
  };

  const walk = async (root: DirCtx) => {
    let level: DirWork[] = [{ id: treeId, dir: root, selected: false }];
    while (level.length) {
      const next: DirWork[] = [];
      for (let i = 0; i < level.length; i += TREE_BATCH) {
        const batch: DirWork[] = [];
        for (const w of level.slice(i, i + TREE_BATCH)) {
          // A selected directory that could not be made is skipped with what is below it.
          if (!w.selected || (await w.dir.ensure())) batch.push(w);
        }
        // Asked for in one turn: read together (see TreeLoader).
        const loaded: Array<PromiseSettledResult<Tree>> = await Promise.allSettled(batch.map((w) => trees.get(w.id)));
        for (let k = 0; k < batch.length; k++) {
          if (fatal) return;
          const w = batch[k]!;
          let t = loaded[k]!;
          // A tree no copy here gives, from another copy of the snapshot (one with the same keys).
          if (t.status === 'rejected' && options.fallback && isCofferError(t.reason) && ['CORRUPT', 'NOT_FOUND', 'INVALID_RANGE', 'UNSUPPORTED'].includes(t.reason.code)) {
            const found = await options.fallback.fetchTree(w.id, signal);
            if (found.data && chunkId(from.chunkIdKey, found.data).equals(fromHex(w.id))) {
              try {
                t = { status: 'fulfilled', value: decodeTree(found.data) };
                const from = (sources[found.from] ??= { chunks: 0, bytes: 0, fileCount: 0, files: [] });
                from.chunks++;
                from.bytes += found.data.length;
              } catch (e) {
                t = { status: 'rejected', reason: e };
              }
            } else if (found.error) t = { status: 'rejected', reason: new CofferError(t.reason.code, `${t.reason.message}; nor from another copy (${found.error})`) };
          }
          if (t.status === 'rejected') {
            // A damaged or missing tree (also one beyond the end of a truncated pack, or in a pack
            // whose header claims a newer version) is lost with everything below it and named like
            // any lost entry; the root tree too, though then nothing at all is restored.
            if (!(isCofferError(t.reason) && ['CORRUPT', 'NOT_FOUND', 'INVALID_RANGE', 'UNSUPPORTED'].includes(t.reason.code))) throw t.reason;
            damaged.push({ path: w.dir.inner || '/', problem: (t.reason as Error).message, blob: w.id });
            continue;
          }
          await walkDir(w, t.value.nodes, next);
        }
      }
      level = next;
    }
  };

  try {
    const root = new DirCtx(rootPath, '', undefined, undefined, true, rootFresh);
    try {
      await walk(root);
      await waitForFlush();
      // The last window, and any that members of hard-link groups open after theirs failed.
      for (;;) {
        if (fatal) break;
        if (windowJobs.length) {
          await flush();
          continue;
        }
        if (tasks.size === 0) break;
        await Promise.race([Promise.allSettled([...tasks]), new Promise<void>((resolve) => (onJobAdded = resolve))]);
        onJobAdded = undefined;
      }
    } catch (e) {
      fail(e);
    }
    // A flush still running (the walk stopped) finishes, or fails, before the cleanup.
    await flushing?.catch(() => {});
    // A window that never ran (the restore stopped) lets the members waiting on it go.
    for (const job of windowJobs.splice(0)) settleJob(job, fatal ?? new CofferError('CANCELLED', 'Cancelled: the restore was interrupted'));
    while (tasks.size) await Promise.allSettled([...tasks]);
    if (fatal) {
      if (isCofferError(fatal, 'CANCELLED') || userSignal?.aborted) throw userSignal?.aborted ? new CofferError('CANCELLED', 'Cancelled: the restore was interrupted', { cause: userSignal.reason }) : fatal;
      if (isFatalFsError(fatal)) throw new CofferError('STORAGE_ERROR', `Cannot restore into ${result.target}: ${(fatal as Error).message}`, { cause: fatal, hint: 'Free space on (or remount) the target file system and run the restore again; existing files are kept.' });
      throw fatal;
    }
    if (!dryRun) {
      // Deepest first: writing into a directory changes its times, and a read-only mode would
      // stop us from finishing its children.
      dirMeta.sort((a, b) => b.depth - a.depth);
      let slice = performance.now();
      for (const d of dirMeta) {
        throwIfAborted(signal);
        try {
          const fd = openSync(d.path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
          try {
            applyMeta(d.path, d.node, d.inner || '/', fd);
          } finally {
            closeSync(fd);
          }
        } catch (e) {
          if (isFatal(e)) throw e;
          warn(d.inner || '/', `cannot restore directory metadata: ${(e as Error).message}`);
        }
        if (performance.now() - slice > SLICE_MS) {
          await nextTurn();
          slice = performance.now();
        }
      }
    }
  } finally {
    await writers?.close();
    // Damage met is recorded in the repository (the next backup stores those blobs again).
    await endSource();
    userSignal?.removeEventListener('abort', onUserAbort);
  }
  result.staleTemps = { removed: temps.removed, kept: temps.kept };
  result.notices.push(...temps.notices());
  if (damaged.length) {
    for (const d of damaged) warn(d.path, d.problem);
    throw new CofferError('CORRUPT', `Cannot restore ${damaged.length} entr${damaged.length === 1 ? 'y' : 'ies'}: their data is damaged or missing in the repository (everything else was restored)`, {
      hint: 'Run `coffer repo check --read-data` to see what is affected; restore those files from another snapshot or copy.',
      details: { damaged: damaged.slice(0, 1000), result },
    });
  }
  return result;
}
