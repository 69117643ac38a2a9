// Snapshots: the root of one backup (tree id, paths, source host identity, tags, summary),
// stored as an encrypted, content-addressed object under snapshots/. Writing a snapshot is the
// commit point of a backup: it happens only after every pack and index file it needs is stored.

import { CofferError, isCofferError } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import { SNAPSHOTS_PREFIX, idFromName } from './layout.ts';
import type { Repository } from './repository.ts';

export interface HostIdentity {
  hostname: string;
  os: string;
  /** e.g. "Debian GNU/Linux 12 (bookworm)" */
  osRelease?: string;
  arch: string;
  machineId?: string;
}

export interface SnapshotSummary {
  filesNew: number;
  filesChanged: number;
  filesUnchanged: number;
  dirs: number;
  /** Bytes of every file in the snapshot (read, or unchanged since the parent). */
  bytesScanned: number;
  /** Bytes actually read. */
  bytesRead?: number;
  bytesNew: number;
  bytesStored: number;
  blobsNew: number;
  warnings: number;
  durationMs: number;
}

/**
 * The metadata of the directory the snapshot's root stands for: the directory backed up as "."
 * (or "/"), else the current directory for relative paths, else "/". A restore gives it to the
 * target directory, as to any directory it restores. Absent in snapshots of older versions.
 */
export interface RootMeta {
  mode: number;
  uid: number;
  gid: number;
  user?: string;
  group?: string;
  mtimeNs: string;
  atimeNs?: string;
  /** As a tree node's: values in base64. */
  xattrs?: Array<{ name: string; value: string }>;
}

export interface Snapshot {
  version: 1;
  time: string;
  tree: string;
  paths: string[];
  host: HostIdentity;
  username: string;
  tags: string[];
  parent?: string;
  program: string;
  summary?: SnapshotSummary;
  /** Files that changed while they were read or could not be read, by path (capped). */
  warnings?: Array<{ path: string; problem: string }>;
  /** Written by `repo repair snapshots` in place of this snapshot, whose data is partly lost. */
  repairedFrom?: string;
  /** The root directory's own metadata (see RootMeta). */
  root?: RootMeta;
}

export interface SnapshotRef {
  id: string;
  snapshot: Snapshot;
}

const HEX64 = /^[0-9a-f]{64}$/;

export function validateSnapshot(raw: unknown, id: string): Snapshot {
  const s = raw as Partial<Snapshot> | null;
  const bad = (why: string): never => {
    throw new CofferError('CORRUPT', `Cannot read snapshot ${id.slice(0, 12)}: ${why}`, { hint: 'Run `coffer repo check`.' });
  };
  if (!s || typeof s !== 'object') bad('not an object');
  if (s!.version !== 1) bad(`unsupported snapshot version ${String(s!.version)}`);
  if (typeof s!.time !== 'string' || Number.isNaN(Date.parse(s!.time))) bad('bad time');
  if (typeof s!.tree !== 'string' || !HEX64.test(s!.tree)) bad('bad tree id');
  if (!Array.isArray(s!.paths) || !s!.paths.every((p) => typeof p === 'string')) bad('bad paths');
  if (!Array.isArray(s!.tags) || !s!.tags.every((p) => typeof p === 'string')) bad('bad tags');
  const h = s!.host;
  if (!h || typeof h.hostname !== 'string' || typeof h.os !== 'string' || typeof h.arch !== 'string') bad('bad host identity');
  if (s!.parent !== undefined && (typeof s!.parent !== 'string' || !HEX64.test(s!.parent))) bad('bad parent id');
  if (typeof s!.username !== 'string' || typeof s!.program !== 'string') bad('bad username or program');
  if (s!.repairedFrom !== undefined && (typeof s!.repairedFrom !== 'string' || !HEX64.test(s!.repairedFrom))) bad('bad repairedFrom id');
  if (s!.root !== undefined) {
    const problem = rootMetaProblem(s!.root);
    if (problem) bad(`bad root metadata: ${problem}`);
  }
  return s as Snapshot;
}

const DECIMAL = /^-?\d{1,30}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const isId = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;

/** What is wrong with a snapshot's root metadata, or undefined. */
export function rootMetaProblem(r: unknown): string | undefined {
  const m = r as Partial<RootMeta> | null;
  if (!m || typeof m !== 'object') return 'not an object';
  if (!Number.isSafeInteger(m.mode) || m.mode! < 0 || m.mode! > 0o7777) return 'bad mode';
  if (!isId(m.uid) || !isId(m.gid)) return 'bad owner';
  if ((m.user !== undefined && typeof m.user !== 'string') || (m.group !== undefined && typeof m.group !== 'string')) return 'bad owner name';
  if (typeof m.mtimeNs !== 'string' || !DECIMAL.test(m.mtimeNs) || (m.atimeNs !== undefined && (typeof m.atimeNs !== 'string' || !DECIMAL.test(m.atimeNs)))) return 'bad times';
  if (m.xattrs !== undefined && (!Array.isArray(m.xattrs) || !m.xattrs.every((x) => x && typeof x.name === 'string' && x.name !== '' && typeof x.value === 'string' && BASE64.test(x.value)))) return 'bad extended attributes';
  return undefined;
}

export async function saveSnapshot(repo: Repository, snap: Snapshot, options?: CallOptions): Promise<string> {
  return repo.saveObject('snapshot', SNAPSHOTS_PREFIX, Buffer.from(JSON.stringify(snap)), options);
}

export async function loadSnapshot(repo: Repository, id: string, options?: CallOptions): Promise<Snapshot> {
  const plain = await repo.loadObject('snapshot', SNAPSHOTS_PREFIX, id, options);
  let raw: unknown;
  try {
    raw = JSON.parse(plain.toString('utf8'));
  } catch {
    throw new CofferError('CORRUPT', `Cannot read snapshot ${id.slice(0, 12)}: not valid JSON`);
  }
  return validateSnapshot(raw, id);
}

export async function listSnapshotIds(repo: Repository, options?: CallOptions): Promise<string[]> {
  const ids: string[] = [];
  for await (const o of repo.backend.list(SNAPSHOTS_PREFIX, options)) {
    const id = idFromName(SNAPSHOTS_PREFIX, o.name);
    if (id) ids.push(id);
  }
  return ids;
}

/** A snapshot object that could not be read: damaged, crafted, or of a newer format. */
export interface UnreadableSnapshot {
  id: string;
  error: CofferError;
}

export interface SnapshotListing {
  /** Every snapshot that could be read, oldest first. */
  snapshots: SnapshotRef[];
  unreadable: UnreadableSnapshot[];
}

const SNAPSHOT_READS = 8;

/**
 * Loads every snapshot it can, oldest first. One damaged snapshot object must not hide the
 * others or stop backups, so snapshots that fail their checks (CORRUPT, UNSUPPORTED) are listed
 * apart; one deleted meanwhile is left out; storage errors and cancellation fail the call.
 */
export async function readSnapshots(repo: Repository, options?: CallOptions): Promise<SnapshotListing> {
  const ids = await listSnapshotIds(repo, options);
  const snapshots: SnapshotRef[] = [];
  const unreadable: UnreadableSnapshot[] = [];
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++]!;
      try {
        snapshots.push({ id, snapshot: await loadSnapshot(repo, id, options) });
      } catch (e) {
        if (isCofferError(e, 'NOT_FOUND')) continue;
        if (isCofferError(e, 'CORRUPT') || isCofferError(e, 'UNSUPPORTED')) unreadable.push({ id, error: e });
        else throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(SNAPSHOT_READS, ids.length) }, worker));
  // A repaired snapshot keeps its original's time and comes after it: `latest` is the repaired one.
  snapshots.sort((a, b) => a.snapshot.time.localeCompare(b.snapshot.time) || Number(a.snapshot.repairedFrom !== undefined) - Number(b.snapshot.repairedFrom !== undefined) || a.id.localeCompare(b.id));
  unreadable.sort((a, b) => a.id.localeCompare(b.id));
  return { snapshots, unreadable };
}

/**
 * Loads every snapshot, oldest first, and fails if any is unreadable: for callers that must know
 * everything the snapshots use before they delete anything (prune).
 */
export async function loadAllSnapshots(repo: Repository, options?: CallOptions & { action?: string }): Promise<SnapshotRef[]> {
  const { snapshots, unreadable } = await readSnapshots(repo, options);
  const bad = unreadable[0];
  if (bad) {
    throw new CofferError('CORRUPT', `Cannot ${options?.action ?? 'read every snapshot'}: snapshot ${bad.id.slice(0, 12)} is unreadable (${bad.error.message})${unreadable.length > 1 ? ` and ${unreadable.length - 1} more` : ''}`, {
      hint: `An unreadable snapshot may use any data, so nothing was deleted. Restore snapshots/${bad.id} from a copy of the repository, or remove it with \`coffer repo forget ${bad.id.slice(0, 12)}\`.`,
      details: { unreadable: unreadable.map((u) => ({ id: u.id, error: u.error.message })) },
    });
  }
  return snapshots;
}

/** Says what to do about unreadable snapshots, in one line each. */
export function describeUnreadable(u: UnreadableSnapshot): string {
  return `snapshot ${u.id.slice(0, 12)} is unreadable and was skipped (${u.error.message}); restore it from a copy of the repository, or remove it with \`coffer repo forget ${u.id.slice(0, 12)}\``;
}

export interface SnapshotFilter {
  host?: string;
  paths?: string[];
  tags?: string[];
}

export function matchesFilter(s: Snapshot, f: SnapshotFilter): boolean {
  if (f.host && s.host.hostname !== f.host) return false;
  if (f.paths?.length && !f.paths.every((p) => s.paths.includes(p))) return false;
  if (f.tags?.length && !f.tags.every((t) => s.tags.includes(t))) return false;
  return true;
}

/** A full id or a unique prefix (at least 4 digits) to the full id, without reading the snapshot. */
export async function resolveSnapshotId(repo: Repository, ref: string, options?: CallOptions): Promise<string> {
  if (!/^[0-9a-f]{4,64}$/.test(ref)) throw new CofferError('USAGE', `Cannot find snapshot ${JSON.stringify(ref)}: give "latest" or a hex id (at least 4 digits)`);
  const ids = (await listSnapshotIds(repo, options)).filter((id) => id.startsWith(ref));
  if (ids.length === 0) throw new CofferError('NOT_FOUND', `Cannot find snapshot ${ref}: no such snapshot`, { hint: 'List snapshots with `coffer repo snapshots`.' });
  if (ids.length > 1) throw new CofferError('USAGE', `Cannot find snapshot ${ref}: the prefix matches ${ids.length} snapshots`, { hint: 'Give more digits.' });
  return ids[0]!;
}

/**
 * Resolves `latest`, a full id or a unique id prefix (at least 4 digits) to a snapshot. `latest`
 * skips unreadable snapshots (reported through onUnreadable); a named one that is unreadable fails.
 */
export async function findSnapshot(repo: Repository, ref: string, filter: SnapshotFilter = {}, options?: CallOptions & { onUnreadable?: (u: UnreadableSnapshot) => void }): Promise<SnapshotRef> {
  if (ref === 'latest') {
    const listing = await readSnapshots(repo, options);
    for (const u of listing.unreadable) options?.onUnreadable?.(u);
    const last = listing.snapshots.filter((r) => matchesFilter(r.snapshot, filter)).at(-1);
    if (!last) throw new CofferError('NOT_FOUND', 'Cannot find the latest snapshot: no snapshot matches', { hint: 'List snapshots with `coffer repo snapshots`; check --host/--path/--tag.' });
    return last;
  }
  const id = await resolveSnapshotId(repo, ref, options);
  try {
    return { id, snapshot: await loadSnapshot(repo, id, options) };
  } catch (e) {
    if (isCofferError(e, 'NOT_FOUND')) throw new CofferError('NOT_FOUND', `Cannot find snapshot ${ref}: it was removed meanwhile`);
    throw e;
  }
}
