// What the two clone engines share (src/jobs/clone.ts: any two repositories, re-encrypting when
// their keys differ; src/jobs/clone-domain.ts: repositories of one deduplication domain, packs
// copied as they are): the counts and results they report, their options, and how they fail.

import { CofferError, isCofferError } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { BlobType } from '../engine/format.ts';
import { toHex } from '../engine/hash.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import type { BlobSaver, Encoder } from '../repository/packer.ts';
import { loadCondemned } from '../repository/prune.ts';
import type { Repository } from '../repository/repository.ts';
import { isSessionGap } from '../repository/session.ts';
import { loadSnapshot, type Snapshot } from '../repository/snapshot.ts';
import type { PackDamage } from '../repository/damage.ts';
import type { BlobDecoder } from './read-blobs.ts';

export interface CloneCounts {
  /** Distinct blobs (trees and data) the snapshot references, and their raw bytes. */
  blobsExamined: number;
  bytesExamined: number;
  /** Of those, already in the target (or sent earlier in this call): raw bytes. */
  blobsPresent: number;
  bytesPresent: number;
  /** Sent to the target: raw bytes, and bytes as stored (compressed and encrypted). */
  blobsSent: number;
  bytesSentRaw: number;
  bytesSent: number;
  /** Blobs read (and verified) from the source, and their bytes as stored there. */
  blobsRead: number;
  bytesRead: number;
}

export interface ClonedSnapshot {
  /** The snapshot's id in the source. */
  sourceId: string;
  /** Its id in the target. */
  targetId: string;
  /** True when the target already held a copy: nothing was written for it. */
  existed: boolean;
  counts: CloneCounts;
}

export interface CloneResult {
  /** Per snapshot, in the order cloned (oldest first). */
  snapshots: ClonedSnapshot[];
  totals: CloneCounts;
  /** True when both repositories share the chunk-id key (ids kept, trees copied as they are). */
  sameKeys: boolean;
  packs: number;
  indexFiles: number;
  /** Packs of the source in which a copy failed to read (another copy served): recorded as damage there. */
  sourceDamage: string[];
}

export interface CloneProgress {
  snapshot: string;
  counts: CloneCounts;
}

export interface CloneOptions extends CallOptions {
  /** Decodes (and verifies) blobs of the source: WorkerPool.context() of the source. */
  sourcePool: BlobDecoder;
  /** Encodes blobs for the target: WorkerPool.context() of the target. */
  targetPool: Encoder;
  onProgress?: (p: CloneProgress) => void;
  /** Write an index file after this many uploaded packs (default 4): a kill loses at most those. */
  indexEvery?: number;
  /** Pack uploads in flight (default 2). */
  uploadConcurrency?: number;
  /** Reads of source data in flight, each one readBlobs() call (default 4). */
  readConcurrency?: number;
  /** Called after each pack is uploaded to the target (progress, crash tests). */
  onPackUploaded?: (packId: string, size: number) => void;
}

/** Counts at zero. */
export const zero = (): CloneCounts => ({ blobsExamined: 0, bytesExamined: 0, blobsPresent: 0, bytesPresent: 0, blobsSent: 0, bytesSentRaw: 0, bytesSent: 0, blobsRead: 0, bytesRead: 0 });

/** Adds `b` into `a`. */
export function addCounts(a: CloneCounts, b: CloneCounts): void {
  for (const k of Object.keys(a) as Array<keyof CloneCounts>) a[k] += b[k];
}

/** The snapshot as it is compared with the target's: `parent` names a snapshot of another repository. */
export const sameness = (s: Snapshot): string => JSON.stringify({ ...s, parent: undefined });

/** The error of a clone that needs a blob no copy of which reads in the source. */
export function damaged(snapshotId: string, path: string, type: BlobType, id: string, cause: unknown): CofferError {
  const why = (cause as Error)?.message ?? String(cause);
  return new CofferError('CORRUPT', `Cannot clone snapshot ${snapshotId.slice(0, 12)}: ${path} needs ${type} blob ${id}, and no copy of it in the source reads (${why})`, {
    hint: 'Nothing was committed in the target. Clone from another copy of this snapshot, or run `coffer repo check --read-data` on the source.',
    details: { snapshot: snapshotId, path, type, blob: id },
    cause,
  });
}

/**
 * Notes a copy in the source that could not be read (as restore does: damage every later reader
 * and writer should know of), unless its pack is one a pending prune condemned.
 */
export function noteReadFailure(failures: Map<string, PackDamage>, condemned: ReadonlySet<string>, hit: IndexHit, error: CofferError): void {
  const pack = toHex(hit.packId);
  if (condemned.has(pack)) return; // a prune's to delete: not damage
  let d = failures.get(pack);
  if (!d) failures.set(pack, (d = { pack, problem: error.message, blobs: [] }));
  if (error.code === 'NOT_FOUND' || /pack header/.test(error.message)) d.blobs = undefined;
  else d.blobs?.push({ type: hit.entry.type, id: toHex(hit.entry.id) });
}

/** Records the source copies that failed to read; returns their packs. Failing to record is not fatal. */
export async function recordSourceDamage(source: Repository, failures: ReadonlyMap<string, PackDamage> | undefined): Promise<string[]> {
  const damage = [...(failures?.values() ?? [])];
  if (damage.length === 0) return [];
  try {
    await source.noteDamage('read', damage);
    return damage.map((d) => d.pack);
  } catch {
    return []; // `coffer repo check --read-data` on the source finds it again
  }
}

/** As after a failed backup: index what arrived, or retract after a session gap. */
export async function closeAfterFailure(target: Repository, saver: BlobSaver, e: unknown): Promise<void> {
  try {
    if (!isSessionGap(e)) return await saver.salvage();
  } catch (e2) {
    if (!isSessionGap(e2)) return;
  }
  try {
    await saver.retract(await loadCondemned(target));
  } catch {
    // What is left is an index listing packs a prune deleted: `coffer repo check` finds it.
  }
}

/**
 * The snapshots a clone copies, read from the source, oldest first (so that a parent cloned in the
 * same call is known when its child is written). A snapshot that does not read is CORRUPT naming it.
 */
export async function loadSnapshotsOldestFirst(source: Repository, snapshotIds: readonly string[], options: CallOptions): Promise<Array<{ id: string; snapshot: Snapshot }>> {
  const snaps: Array<{ id: string; snapshot: Snapshot }> = [];
  for (const id of new Set(snapshotIds)) {
    try {
      snaps.push({ id, snapshot: await loadSnapshot(source, id, options) });
    } catch (e) {
      if (isCofferError(e, 'CORRUPT')) throw new CofferError('CORRUPT', `Cannot clone snapshot ${id.slice(0, 12)}: ${e.message}`, { hint: 'Nothing was committed in the target. Clone from another copy of this snapshot.', details: { snapshot: id }, cause: e });
      throw e;
    }
  }
  return snaps.sort((a, b) => a.snapshot.time.localeCompare(b.snapshot.time) || a.id.localeCompare(b.id));
}
