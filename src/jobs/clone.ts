// Cloning snapshots from one repository into another, sending only the blobs the target lacks:
// the engine of the lifecycles' `duplicate` and `stage` copies (issue 10).
//
// Two cases, decided by the repositories' chunk-id keys:
// - Same key (one deduplication domain, InitOptions.master): src/jobs/clone-domain.ts. Blobs keep
//   their ids, the target's index answers "present?" per id before anything is read, and packs
//   the target lacks whole are copied as they are (no decrypting, re-compressing or re-encrypting).
// - Different keys (here): every blob's id is recomputed under the target's key from its
//   plaintext (data blobs keep the source's chunk boundaries), and trees are rewritten bottom-up
//   with the new ids. The new id of a blob is only known once its plaintext is, so EVERY data blob
//   of the snapshot is read and decoded from the source (within one call each once); only those
//   the target lacks under their new id are encoded and sent. Bytes read from the source are
//   therefore the whole snapshot, bytes sent only what is missing. At most DIRS_IN_FLIGHT
//   directories are being loaded and read at a time, so that memory stays bounded however wide
//   the tree.
// Each blob is verified as it is read from the source (MAC and chunk id under the source's key,
// readBlobs()), re-encrypted under the target's keys, and checked again by the target's packer
// before upload (BlobSaver).
//
// Writes happen under a session of the target ('copy'), exactly as a backup's do: the condemned
// packs of a pending prune are not deduplicated against, index files and the snapshot are
// bracketed by Session.assertAlive(), and the order is packs → index files → snapshot.
//
// Resuming: what arrived is what the target's index lists. Index files are written every
// `indexEvery` uploaded packs (default 4) and, after a failure or cancellation, for every pack
// uploaded so far (BlobSaver.salvage()). A clone run again sends nothing its predecessor got into
// an index file; a blob in a pack whose index file never got written (the process was killed
// between the upload and the index file) is sent again, and the orphaned pack is left for prune.
// With different keys the source is read whole again on resume (see above); only sending is saved.
//
// A clone that fails commits no snapshot: a source blob or tree that no copy in the source reads
// fails the clone with CORRUPT naming the snapshot, the path and the blob (the lifecycle layer
// then falls back to another copy). Copies that failed to read are recorded as damage in the
// source, as a restore does, so that its next backup stores those blobs again. Cloning a snapshot the target already has a copy of (the
// same snapshot after rewriting, `parent` aside) writes nothing and returns that copy's id.
//
// The snapshot JSON is copied as it is, except `tree` (different keys) and `parent`, which names
// a source snapshot: it becomes the target's copy of the parent when that was cloned in the same
// call, and is dropped otherwise.
//
// cloneToTargets() clones to several targets: those of the source's domain together, from one
// read (clone-domain.ts), the others one after another.

import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { Limiter } from '../core/limiter.ts';
import type { BlobType } from '../engine/format.ts';
import { chunkId, fromHex, toHex } from '../engine/hash.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import { BlobSaver } from '../repository/packer.ts';
import { loadCondemned } from '../repository/prune.ts';
import type { Repository } from '../repository/repository.ts';
import { Session, isSessionGap } from '../repository/session.ts';
import { readSnapshots, saveSnapshot, type Snapshot } from '../repository/snapshot.ts';
import { encodeTree, type Tree, type TreeNode } from '../repository/tree.ts';
import { snapshotName } from '../repository/layout.ts';
import type { PackDamage } from '../repository/damage.ts';
import { readBlobs, type BlobResult } from './read-blobs.ts';
import { TreeLoader } from './tree-loader.ts';
import { addCounts, closeAfterFailure, damaged, loadSnapshotsOldestFirst, noteReadFailure, recordSourceDamage, sameness, zero, type CloneCounts, type CloneOptions, type CloneProgress, type CloneResult } from './clone-common.ts';
import { cloneInDomain, type DomainTarget } from './clone-domain.ts';

export type { CloneCounts, ClonedSnapshot, CloneOptions, CloneProgress, CloneResult } from './clone-common.ts';

/** Directories of the source being loaded and read at once (different keys). */
const DIRS_IN_FLIGHT = 64;

/** The state of one snapshot's clone: what it has counted and the blobs it has seen. */
interface SnapshotRun {
  id: string;
  counts: CloneCounts;
  /** Blobs counted for this snapshot (type + source id hex). */
  seen: Set<string>;
}

/** Blobs of one directory to read from the source, and where their results go. */
interface ReadRequest {
  snap: SnapshotRun;
  hits: IndexHit[];
  paths: string[];
  out: Map<string, string>;
  resolvers: Map<string, { resolve: (v: string) => void; reject: (e: unknown) => void }>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Stored bytes of source data read with one readBlobs() call at most (more when one directory has more). */
const READ_BATCH = 16 << 20;

/** One call of cloneSnapshots(): the repositories, the saver, and what the call has learnt. */
class CloneRun {
  /** Target id (binary string) by source id (binary string), or its pending read. */
  private readonly newIds = new Map<string, string | Promise<string>>();
  private readonly limiter: Limiter;
  /** Directories being loaded and read (not those waiting for their subdirectories). */
  private readonly dirs: Limiter;
  private readonly loader: TreeLoader;
  private batch: ReadRequest[] = [];
  private batchBytes = 0;
  private readScheduled = false;
  /** Copies in the source that could not be read, by pack: recorded as damage at the end. */
  readonly readFailures = new Map<string, PackDamage>();
  private readonly source: Repository;
  private readonly target: Repository;
  private readonly saver: BlobSaver;
  private readonly sourceCondemned: ReadonlySet<string>;
  private readonly options: CloneOptions;
  /** Stops the reads still under way in other directories once the clone has failed. */
  private readonly readAbort = new AbortController();
  private readonly signal: AbortSignal;

  constructor(source: Repository, target: Repository, saver: BlobSaver, sourceCondemned: ReadonlySet<string>, options: CloneOptions) {
    this.source = source;
    this.target = target;
    this.saver = saver;
    this.sourceCondemned = sourceCondemned;
    this.options = options;
    this.signal = options.signal ? AbortSignal.any([options.signal, this.readAbort.signal]) : this.readAbort.signal;
    this.limiter = new Limiter(Math.max(1, options.readConcurrency ?? 4));
    this.dirs = new Limiter(DIRS_IN_FLIGHT);
    this.loader = new TreeLoader(source, { decoder: options.sourcePool, signal: this.signal, condemned: sourceCondemned, onReadError: (_id, hit, e) => this.noteReadFailure(hit, e) });
  }

  /** After a failure: no more reading (the saver is left to the caller, which salvages it). */
  stop(reason: unknown): void {
    this.readAbort.abort(reason);
  }

  /** Copies the tree `id` and everything below it; returns its id in the target (hex). */
  async copyTree(snap: SnapshotRun, id: string, path: string): Promise<string> {
    throwIfAborted(this.signal);
    // The place is held while the directory is loaded and its data read, not while its
    // subdirectories are copied (they need places of their own).
    const { tree, data } = await this.dirs.run(async () => {
      let tree: Tree;
      try {
        tree = await this.loader.get(id);
      } catch (e) {
        if (isCofferError(e, 'CORRUPT') || isCofferError(e, 'NOT_FOUND') || isCofferError(e, 'INVALID_RANGE') || isCofferError(e, 'UNSUPPORTED')) throw damaged(snap.id, path || '/', 'tree', id, e);
        throw e;
      }
      return { tree, data: await this.copyData(snap, tree.nodes, path) };
    });
    const dirs = tree.nodes.filter((n) => n.type === 'dir' && n.subtree);
    const subtrees = await Promise.all(dirs.map((n) => this.copyTree(snap, n.subtree!, `${path}/${n.name}`)));
    const newSub = new Map(dirs.map((n, i) => [n, subtrees[i]!]));
    const nodes: TreeNode[] = tree.nodes.map((n) => {
      if (n.type === 'dir' && n.subtree) return { ...n, subtree: newSub.get(n)! };
      if (n.content) return { ...n, content: n.content.map((c) => data.get(c)!) };
      return n;
    });
    const raw = encodeTree({ nodes });
    const newId = chunkId(this.target.keys.chunkIdKey, raw);
    const key = 'tree' + toHex(newId);
    if (!snap.seen.has(key)) {
      snap.seen.add(key);
      snap.counts.blobsExamined++;
      snap.counts.bytesExamined += raw.length;
    }
    await this.saver.saveMany([{ type: 'tree', id: newId, raw }]);
    return toHex(newId);
  }

  /** Sends the data blobs of `nodes` that the target lacks. Returns the target id (hex) of every content id (hex). */
  private async copyData(snap: SnapshotRun, nodes: readonly TreeNode[], path: string): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const hits: IndexHit[] = [];
    const paths: string[] = [];
    const waits: Array<Promise<void>> = [];
    const resolvers = new Map<string, { resolve: (v: string) => void; reject: (e: unknown) => void }>();
    for (const n of nodes) {
      if (!n.content) continue;
      for (const hex of n.content) {
        const bin = fromHex(hex);
        const filePath = `${path}/${n.name}`;
        const first = !snap.seen.has('data' + hex);
        // The new id comes from the plaintext, read once per call.
        const k = bin.toString('latin1');
        const known = this.newIds.get(k);
        if (known !== undefined) {
          if (typeof known === 'string') {
            out.set(hex, toHex(Buffer.from(known, 'latin1')));
            if (first) {
              snap.seen.add('data' + hex);
              this.count(snap, this.source.locate('data', bin)?.entry.rawLength ?? 0, true);
            }
          } else {
            const wait = known.then((v) => {
              out.set(hex, toHex(Buffer.from(v, 'latin1')));
              if (!snap.seen.has('data' + hex)) {
                snap.seen.add('data' + hex);
                this.count(snap, this.source.locate('data', bin)?.entry.rawLength ?? 0, true);
              }
            });
            // Awaited below, unless this call fails first: then it must not go unhandled.
            wait.catch(() => {});
            waits.push(wait);
          }
          continue;
        }
        const hit = this.source.locate('data', bin, this.sourceCondemned);
        if (!hit) throw damaged(snap.id, filePath, 'data', hex, new CofferError('NOT_FOUND', 'the source index does not list it'));
        let resolve!: (v: string) => void;
        let reject!: (e: unknown) => void;
        const p = new Promise<string>((res, rej) => {
          resolve = res;
          reject = rej;
        });
        p.catch(() => {});
        this.newIds.set(k, p);
        resolvers.set(hex, { resolve, reject });
        snap.seen.add('data' + hex);
        hits.push(hit);
        paths.push(filePath);
      }
    }
    if (hits.length) {
      try {
        await this.read({ snap, hits, paths, out, resolvers });
      } catch (e) {
        for (const [hex, r] of resolvers) {
          this.newIds.delete(fromHex(hex).toString('latin1'));
          r.reject(e);
        }
        throw e;
      }
    }
    await Promise.all(waits);
    return out;
  }

  /**
   * Reads the blobs of `req` together with those of the other directories asked for in the same
   * turn of the event loop (up to READ_BATCH bytes): one readBlobs() call per directory cost a
   * round trip to the workers for a few small blobs each.
   */
  private read(req: Omit<ReadRequest, 'resolve' | 'reject'>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.batch.push({ ...req, resolve, reject });
      for (const h of req.hits) this.batchBytes += h.entry.length;
      if (this.batchBytes >= READ_BATCH) this.flushReads();
      else if (!this.readScheduled) {
        this.readScheduled = true;
        setImmediate(() => this.flushReads());
      }
    });
  }

  private flushReads(): void {
    this.readScheduled = false;
    const batch = this.batch;
    if (batch.length === 0) return;
    this.batch = [];
    this.batchBytes = 0;
    const hits: IndexHit[] = [];
    const owner: Array<{ req: ReadRequest; index: number }> = [];
    for (const req of batch) {
      req.hits.forEach((h, index) => {
        hits.push(h);
        owner.push({ req, index });
      });
    }
    const deliver = async (indexes: number[], results: BlobResult[]): Promise<void> => {
      // Back to each directory's own indexes, one deliver() per directory.
      const per = new Map<ReadRequest, { indexes: number[]; results: BlobResult[] }>();
      indexes.forEach((i, k) => {
        const { req, index } = owner[i]!;
        let g = per.get(req);
        if (!g) per.set(req, (g = { indexes: [], results: [] }));
        g.indexes.push(index);
        g.results.push(results[k]!);
      });
      for (const [req, g] of per) await this.deliver(req.snap, req.hits, req.paths, g.indexes, g.results, req.out, req.resolvers);
    };
    this.limiter.run(() => readBlobs(this.source, hits, deliver, {
      signal: this.signal,
      decoder: this.options.sourcePool,
      // Each call allocates its own shared buffers of maxRequest bytes for the workers.
      maxRequest: 1 << 20,
    })).then(
      () => batch.forEach((r) => r.resolve()),
      (e: unknown) => batch.forEach((r) => r.reject(e)),
    );
  }

  /** As restore does: a copy that fails is damage every later reader and writer should know of. */
  private noteReadFailure(hit: IndexHit, error: CofferError): void {
    noteReadFailure(this.readFailures, this.sourceCondemned, hit, error);
  }

  private count(snap: SnapshotRun, rawLength: number, present: boolean): void {
    snap.counts.blobsExamined++;
    snap.counts.bytesExamined += rawLength;
    if (present) {
      snap.counts.blobsPresent++;
      snap.counts.bytesPresent += rawLength;
    }
  }

  private async deliver(snap: SnapshotRun, hits: IndexHit[], paths: string[], indexes: number[], results: BlobResult[], out: Map<string, string>, resolvers: Map<string, { resolve: (v: string) => void }>): Promise<void> {
    const items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }> = [];
    for (let k = 0; k < indexes.length; k++) {
      const hit = hits[indexes[k]!]!;
      const hex = toHex(hit.entry.id);
      let data = results[k]!.data;
      if (!data) {
        this.noteReadFailure(hit, results[k]!.error!);
        // This copy is damaged or gone: readBlob() tries every other copy the source knows.
        try {
          data = await this.source.readBlob('data', hit.entry.id, { signal: this.signal });
        } catch (e) {
          if (isCofferError(e, 'CANCELLED')) throw e;
          throw damaged(snap.id, paths[indexes[k]!]!, 'data', hex, results[k]!.error ?? e);
        }
      }
      snap.counts.blobsRead++;
      snap.counts.bytesRead += hit.entry.length;
      const id = chunkId(this.target.keys.chunkIdKey, data);
      const bin = Buffer.from(id).toString('latin1');
      this.newIds.set(hit.entry.id.toString('latin1'), bin);
      out.set(hex, toHex(id));
      resolvers.get(hex)?.resolve(bin);
      const known = this.saver.known('data', id);
      this.count(snap, data.length, known);
      // A copy of the bytes: readBlobs() may reuse the buffer they live in once deliver() returns.
      if (!known) items.push({ type: 'data', id, raw: Buffer.from(data) });
    }
    if (items.length) await this.saver.saveMany(items);
    this.options.onProgress?.({ snapshot: snap.id, counts: { ...snap.counts } });
  }
}

/** Options of cloneToTargets(): those of cloneSnapshots(), with progress per target. */
export interface CloneToTargetsOptions extends Omit<CloneOptions, 'targetPool' | 'onProgress' | 'onPackUploaded'> {
  /** Told of each target's progress (its index in `targets`). */
  onProgress?: (target: number, p: CloneProgress) => void;
  onPackUploaded?: (target: number, packId: string, size: number) => void;
}

/**
 * Clones `snapshotIds` into every repository of `targets`: those that share the source's master
 * key together, each pack or blob read once for all of them (cloneInDomain()), then each of the
 * others on its own (cloneSnapshots(), which reads the source again for each). Returns one result
 * per target, in the order given. The first target that fails fails the call; targets done
 * before it keep their copies (their snapshots are committed).
 */
export async function cloneToTargets(source: Repository, targets: readonly DomainTarget[], snapshotIds: readonly string[], options: CloneToTargetsOptions): Promise<CloneResult[]> {
  const results: CloneResult[] = new Array(targets.length);
  const domain = targets.map((t, i) => ({ t, i })).filter(({ t }) => t.repo.keys.chunkIdKey.equals(source.keys.chunkIdKey));
  if (domain.length) {
    const rs = await cloneInDomain(source, domain.map(({ t }) => t), snapshotIds, {
      ...options,
      onProgress: options.onProgress && ((k, p) => options.onProgress!(domain[k]!.i, p)),
      onPackUploaded: options.onPackUploaded && ((k, id, size) => options.onPackUploaded!(domain[k]!.i, id, size)),
    });
    rs.forEach((r, k) => (results[domain[k]!.i] = r));
  }
  for (const [i, t] of targets.entries()) {
    if (results[i]) continue;
    results[i] = await cloneSnapshots(source, t.repo, snapshotIds, {
      ...options,
      targetPool: t.pool,
      onProgress: options.onProgress && ((p) => options.onProgress!(i, p)),
      onPackUploaded: options.onPackUploaded && ((id, size) => options.onPackUploaded!(i, id, size)),
    });
  }
  return results;
}

/**
 * Copies each snapshot of `snapshotIds` (full ids in `source`) with everything it references
 * into `target`, sending only the blobs the target does not hold. Both repositories must be open;
 * their indexes are brought up to date here. Returns, per snapshot, its id in the target and what
 * was examined, found present, read and sent.
 */
export async function cloneSnapshots(source: Repository, target: Repository, snapshotIds: readonly string[], options: CloneOptions): Promise<CloneResult> {
  if (source.keys.chunkIdKey.equals(target.keys.chunkIdKey)) {
    const { targetPool, onProgress, onPackUploaded, ...rest } = options;
    const [r] = await cloneInDomain(source, [{ repo: target, pool: targetPool }], snapshotIds, {
      ...rest,
      onProgress: onProgress && ((_t, p) => onProgress(p)),
      onPackUploaded: onPackUploaded && ((_t, id, size) => onPackUploaded(id, size)),
    });
    return r!;
  }
  const { signal } = options;
  const targetSession = await Session.start(target, 'copy', { signal });
  let sourceSession: Session | undefined;
  let saver: BlobSaver | undefined;
  let run: CloneRun | undefined;
  try {
    sourceSession = await Session.start(source, 'copy', { signal });
    // Registered first, then the plans read: a prune marking after this waits for these sessions.
    const condemned = await loadCondemned(target, { signal });
    const sourceCondemned = await loadCondemned(source, { signal });
    await source.loadIndex({ signal });
    await target.loadIndex({ signal });
    const snaps = await loadSnapshotsOldestFirst(source, snapshotIds, { signal });
    const existing = new Map<string, string>();
    for (const s of (await readSnapshots(target, { signal })).snapshots) existing.set(sameness(s.snapshot), s.id);

    saver = new BlobSaver(target, options.targetPool, { signal, session: targetSession, condemned, indexEvery: options.indexEvery ?? 4, uploadConcurrency: options.uploadConcurrency, onPackUploaded: options.onPackUploaded });
    run = new CloneRun(source, target, saver, sourceCondemned, options);
    const cloned = new Map<string, string>();
    const result: CloneResult = { snapshots: [], totals: zero(), sameKeys: false, packs: 0, indexFiles: 0, sourceDamage: [] };
    for (const { id, snapshot } of snaps) {
      const snap: SnapshotRun = { id, counts: zero(), seen: new Set() };
      const before = { ...saver.stats };
      const tree = await run.copyTree(snap, snapshot.tree, '');
      await saver.flush();
      snap.counts.blobsSent = saver.stats.blobsNew - before.blobsNew;
      snap.counts.bytesSentRaw = saver.stats.bytesNew - before.bytesNew;
      snap.counts.bytesSent = saver.stats.bytesStored - before.bytesStored;
      // Sent blobs were counted as examined, not as present: the difference is what was there.
      snap.counts.blobsPresent = snap.counts.blobsExamined - snap.counts.blobsSent;
      snap.counts.bytesPresent = snap.counts.bytesExamined - snap.counts.bytesSentRaw;
      const copy: Snapshot = { ...snapshot, tree };
      const parent = snapshot.parent !== undefined ? cloned.get(snapshot.parent) : undefined;
      if (parent !== undefined) copy.parent = parent;
      else delete copy.parent;
      let targetId = existing.get(sameness(copy));
      const existed = targetId !== undefined;
      if (targetId === undefined) {
        // The commit point, guarded on both sides as a backup's is.
        await targetSession.assertAlive({ signal });
        targetId = await saveSnapshot(target, copy, { signal });
        try {
          await targetSession.assertAlive({ signal });
        } catch (e) {
          if (isSessionGap(e)) await target.backend.delete(snapshotName(targetId)).catch(() => {});
          throw e;
        }
        existing.set(sameness(copy), targetId);
      }
      cloned.set(id, targetId);
      result.snapshots.push({ sourceId: id, targetId, existed, counts: snap.counts });
      addCounts(result.totals, snap.counts);
      options.onProgress?.({ snapshot: id, counts: { ...snap.counts } });
    }
    result.packs = saver.stats.packs;
    result.indexFiles = saver.stats.indexFiles;
    result.sourceDamage = await recordSourceDamage(source, run?.readFailures);
    return result;
  } catch (e) {
    run?.stop(e);
    if (saver) await closeAfterFailure(target, saver, e);
    const recorded = await recordSourceDamage(source, run?.readFailures);
    if (recorded.length && isCofferError(e) && e.details) e.details.sourceDamageRecorded = recorded;
    throw e;
  } finally {
    await sourceSession?.end().catch(() => {});
    await targetSession.end().catch(() => {});
  }
}

