// Cloning snapshots between repositories of one deduplication domain (the same master key, hence
// the same chunk ids and the same encryption subkey), to one target or to several at once from one
// read of the source: the engine of the server's duplicates between its own storage units.
//
// Two phases per snapshot:
// 1. Walk: the snapshot's trees are loaded (a bounded number at a time, so that a wide tree does
//    not put every directory in flight at once) and every blob it references, trees included, is
//    listed once with the path that first needs it. Trees keep their ids: nothing is rewritten.
//    When every target holds a committed copy of the snapshot's parent, directories the snapshot
//    shares with it (the same subtree id) are skipped: everything below them is in the targets.
//    A clone of the next image of a chain therefore costs what changed, not the whole tree.
// 2. Send: each target's index says which of those blobs it lacks. The missing blobs are grouped
//    by the source pack that holds them, and for each pack and target:
//    - when the target lacks EVERY blob of the pack (the usual case: a backup's new packs hold
//      only its new blobs), the pack is copied whole, byte for byte: read once, checked against
//      its name (BLAKE3 of the whole file, listed in the source's authenticated index), and
//      uploaded under the same name to every such target. Nothing is decrypted, decompressed or
//      re-encrypted: the bytes are exactly those the source's writer verified blob by blob when it
//      encoded them (docs/format.md, "Writers MUST verify"), and a single changed byte changes the
//      name. The blobs open in the target because the domain shares the encryption subkey, and
//      the pack key comes from the salt in the pack's own header.
//    - otherwise (the target holds some of the pack's blobs, or already has a pack of that name,
//      or a pending prune of the target condemned one, or the source copy is damaged or condemned,
//      or its bytes do not match its name) the missing blobs are read and verified one by one
//      (readBlobs(): MAC and chunk id), and stored through the target's packer, which encodes them
//      into new packs and checks each one again before upload.
//    A blob or pack read from the source is written to every target that lacks it.
//
// Writes happen under a session of each target ('copy') as a backup's do; resuming, failure and
// the snapshot's commit work as in clone.ts (index files every `indexEvery` packs, salvage after a
// failure, CORRUPT naming the snapshot, path and blob when no copy of a needed blob reads, no
// snapshot committed by a failed clone). A target that fails fails the whole call.

import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { Limiter } from '../core/limiter.ts';
import type { BlobType } from '../engine/format.ts';
import { contentHash, fromHex, toHex } from '../engine/hash.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import type { IndexEntry } from '../repository/index/index-file.ts';
import { packName, snapshotName } from '../repository/layout.ts';
import { BlobSaver, type Encoder } from '../repository/packer.ts';
import { loadCondemned } from '../repository/prune.ts';
import type { Repository } from '../repository/repository.ts';
import { Session, isSessionGap } from '../repository/session.ts';
import { loadSnapshot, readSnapshots, saveSnapshot, type Snapshot } from '../repository/snapshot.ts';
import type { PackDamage } from '../repository/damage.ts';
import type { CallOptions } from '../storage/backend.ts';
import { addCounts, closeAfterFailure, damaged, loadSnapshotsOldestFirst, noteReadFailure, recordSourceDamage, sameness, zero, type CloneCounts, type CloneProgress, type CloneResult } from './clone-common.ts';
import { readBlobs, type BlobDecoder, type BlobResult } from './read-blobs.ts';
import { TreeLoader } from './tree-loader.ts';

/** One target of a clone within a domain: its repository (open) and its encoder (WorkerPool.context()). */
export interface DomainTarget {
  repo: Repository;
  pool: Encoder;
}

export interface DomainCloneOptions extends CallOptions {
  /** Decodes (and verifies) blobs of the source: WorkerPool.context() of the source. */
  sourcePool: BlobDecoder;
  /** Told of each target's progress (its index in `targets`). */
  onProgress?: (target: number, p: CloneProgress) => void;
  /** Write an index file after this many uploaded packs (default 4): a kill loses at most those. */
  indexEvery?: number;
  /** Pack uploads in flight per target (default 2). */
  uploadConcurrency?: number;
  /** Source packs (whole, or one readBlobs() call of single blobs) read at once (default 4). */
  readConcurrency?: number;
  /** Trees loaded together during the walk (default 256). */
  treeConcurrency?: number;
  /** Called after each pack is uploaded to a target (progress, crash tests). */
  onPackUploaded?: (target: number, packId: string, size: number) => void;
}

/** A blob the snapshot references: where the source has it and the first path that needs it. */
interface Needed {
  type: BlobType;
  id: Buffer;
  hit: IndexHit;
  path: string;
}

/** What one target of the call holds and has learnt. */
interface TargetRun {
  repo: Repository;
  session: Session;
  condemned: ReadonlySet<string>;
  saver: BlobSaver;
  /** Pack names (hex) the target lists or a pending prune of it condemned: never copied whole. */
  packs: Set<string>;
  existing: Map<string, string>;
  /** Root trees of the snapshots committed in the target: everything below them is there. */
  roots: Set<string>;
  /** Source snapshot id → its copy's id in this target (this call). */
  cloned: Map<string, string>;
  result: CloneResult;
}

/** Stored bytes of single blobs read with one readBlobs() call at most. */
const READ_BATCH = 16 << 20;

/**
 * Copies each snapshot of `snapshotIds` (full ids in `source`) with everything it references into
 * every repository of `targets`, which must share the source's master key (chunk-id key checked
 * here). Returns one result per target, in the order given. Reads are shared: a pack or blob is
 * read from the source once per call for all the targets that lack it.
 */
export async function cloneInDomain(source: Repository, targets: readonly DomainTarget[], snapshotIds: readonly string[], options: DomainCloneOptions): Promise<CloneResult[]> {
  const { signal } = options;
  for (const t of targets) {
    if (!t.repo.keys.chunkIdKey.equals(source.keys.chunkIdKey)) throw new CofferError('INTERNAL', 'Cannot clone within a deduplication domain: a target has other keys than the source');
  }
  const runs: TargetRun[] = [];
  const sessions: Session[] = [];
  const failures = new Map<string, PackDamage>();
  const readAbort = new AbortController();
  const readSignal = signal ? AbortSignal.any([signal, readAbort.signal]) : readAbort.signal;
  try {
    for (const t of targets) sessions.push(await Session.start(t.repo, 'copy', { signal }));
    sessions.push(await Session.start(source, 'copy', { signal }));
    // Registered first, then the plans read: a prune marking after this waits for these sessions.
    const sourceCondemned = await loadCondemned(source, { signal });
    await source.loadIndex({ signal });
    for (const [i, t] of targets.entries()) {
      const condemned = await loadCondemned(t.repo, { signal });
      await t.repo.loadIndex({ signal });
      const packs = new Set(condemned);
      for (const p of t.repo.index.packs()) packs.add(toHex(p.packId));
      const existing = new Map<string, string>();
      const roots = new Set<string>();
      for (const s of (await readSnapshots(t.repo, { signal })).snapshots) {
        existing.set(sameness(s.snapshot), s.id);
        roots.add(s.snapshot.tree);
      }
      const saver = new BlobSaver(t.repo, t.pool, {
        signal, session: sessions[i]!, condemned, indexEvery: options.indexEvery ?? 4, uploadConcurrency: options.uploadConcurrency,
        onPackUploaded: options.onPackUploaded ? (id, size) => options.onPackUploaded!(i, id, size) : undefined,
      });
      runs.push({ repo: t.repo, session: sessions[i]!, condemned, saver, packs, existing, roots, cloned: new Map(), result: { snapshots: [], totals: zero(), sameKeys: true, packs: 0, indexFiles: 0, sourceDamage: [] } });
    }
    const snaps = await loadSnapshotsOldestFirst(source, snapshotIds, { signal });
    const ctx: SendContext = { source, sourceCondemned, failures, options, signal: readSignal };
    const byId = new Map(snaps.map((x) => [x.id, x.snapshot]));
    for (const { id, snapshot } of snaps) {
      const reference = await referenceTree(source, snapshot, byId, runs, readSignal);
      const blobs = await walk(source, id, snapshot.tree, reference, sourceCondemned, failures, readSignal, options);
      const counts = await send(ctx, id, blobs, runs);
      for (const [i, run] of runs.entries()) {
        await commit(run, id, snapshot, counts[i]!, signal);
        run.roots.add(snapshot.tree);
      }
    }
    for (const run of runs) {
      run.result.packs = run.saver.stats.packs;
      run.result.indexFiles = run.saver.stats.indexFiles;
    }
    const recorded = await recordSourceDamage(source, failures);
    for (const run of runs) run.result.sourceDamage = recorded;
    return runs.map((r) => r.result);
  } catch (e) {
    readAbort.abort(e);
    for (const run of runs) await closeAfterFailure(run.repo, run.saver, e);
    const recorded = await recordSourceDamage(source, failures);
    if (recorded.length && isCofferError(e) && e.details) e.details.sourceDamageRecorded = recorded;
    throw e;
  } finally {
    for (const s of sessions) await s.end().catch(() => {});
  }
}

/**
 * A tree of the source that every target holds whole, to walk the snapshot against: the root of
 * its parent snapshot, when each target has a committed snapshot with that root (a committed
 * snapshot's blobs are all stored, and the targets' sessions keep a prune from taking them) and
 * no damage on record. Directories the snapshot shares with it need no walking at all: an
 * incremental chain cloned in order costs the changed directories, not the whole tree.
 */
async function referenceTree(source: Repository, snapshot: Snapshot, inCall: ReadonlyMap<string, Snapshot>, runs: readonly TargetRun[], signal: AbortSignal): Promise<string | undefined> {
  if (snapshot.parent === undefined) return undefined;
  let parent = inCall.get(snapshot.parent);
  if (!parent) {
    try {
      parent = await loadSnapshot(source, snapshot.parent, { signal });
    } catch (e) {
      if (isCofferError(e, 'CANCELLED')) throw e;
      return undefined; // forgotten in the source, or unreadable: walk everything
    }
  }
  const root = parent.tree;
  return runs.every((r) => r.roots.has(root) && r.repo.damage.size === 0) ? root : undefined;
}

/**
 * Phase 1: every blob of the snapshot, trees included, once, with the first path that needs it,
 * except below directories it shares with `reference` (see referenceTree()). At most
 * `treeConcurrency` trees are loaded together.
 */
async function walk(source: Repository, snapshotId: string, root: string, reference: string | undefined, condemned: ReadonlySet<string>, failures: Map<string, PackDamage>, signal: AbortSignal, options: DomainCloneOptions): Promise<Map<string, Needed>> {
  const loader = new TreeLoader(source, { decoder: options.sourcePool, signal, condemned, onReadError: (_id, hit, e) => noteReadFailure(failures, condemned, hit, e) });
  const blobs = new Map<string, Needed>();
  const note = (type: BlobType, hex: string, path: string): boolean => {
    const key = type + hex;
    if (blobs.has(key)) return false;
    const id = fromHex(hex);
    const hit = source.locate(type, id, condemned);
    if (!hit) throw damaged(snapshotId, path, type, hex, new CofferError('NOT_FOUND', 'the source index does not list it'));
    blobs.set(key, { type, id, hit, path });
    return true;
  };
  note('tree', root, '/');
  // Depth first, in batches: the top `limit` directories of the stack are loaded together (one
  // readBlobs() call, one round trip to the workers), which bounds both the trees in memory and
  // the round trips.
  // `ref`: the tree at the same path in the reference snapshot, whose subtrees every target holds whole.
  const stack: Array<{ id: string; path: string; ref?: string }> = [{ id: root, path: '', ref: reference }];
  const limit = Math.max(1, options.treeConcurrency ?? 256);
  while (stack.length) {
    throwIfAborted(signal);
    const batch = stack.splice(Math.max(0, stack.length - limit));
    const load = (id: string, path: string) => loader.get(id).catch((e: unknown) => {
      if (isCofferError(e, 'CORRUPT') || isCofferError(e, 'NOT_FOUND') || isCofferError(e, 'INVALID_RANGE') || isCofferError(e, 'UNSUPPORTED')) throw damaged(snapshotId, path || '/', 'tree', id, e);
      throw e;
    });
    // A reference tree that does not read only costs the shortcut: the walk goes on without it.
    const trees = await Promise.all(batch.map(({ id, path, ref }) => Promise.all([load(id, path), ref === undefined ? undefined : loader.get(ref).catch(() => undefined)])));
    trees.forEach(([tree, refTree], k) => {
      const { path } = batch[k]!;
      const refDirs = new Map<string, string>();
      for (const n of refTree?.nodes ?? []) if (n.type === 'dir' && n.subtree) refDirs.set(n.name, n.subtree);
      for (const n of tree.nodes) {
        const p = `${path}/${n.name}`;
        for (const c of n.content ?? []) note('data', c, p);
        if (n.type !== 'dir' || !n.subtree) continue;
        const ref = refDirs.get(n.name);
        // The same directory as in the reference: every target holds all of it already.
        if (ref === n.subtree) continue;
        if (note('tree', n.subtree, p)) stack.push({ id: n.subtree, path: p, ref });
      }
    });
  }
  return blobs;
}

interface SendContext {
  source: Repository;
  sourceCondemned: ReadonlySet<string>;
  failures: Map<string, PackDamage>;
  options: DomainCloneOptions;
  signal: AbortSignal;
}

/** Missing blobs of one source pack, per target (index in the runs). */
interface PackNeeds {
  packId: Buffer;
  packSize: number;
  byTarget: Map<number, Needed[]>;
}

/**
 * Phase 2: sends to each target the blobs of `blobs` it lacks, whole packs where it lacks a whole
 * pack, and waits until every target has them stored and indexed. Returns each target's counts.
 */
async function send(ctx: SendContext, snapshotId: string, blobs: Map<string, Needed>, runs: TargetRun[]): Promise<CloneCounts[]> {
  const { source, options } = ctx;
  const counts = runs.map(() => zero());
  const before = runs.map((r) => ({ ...r.saver.stats }));
  const byPack = new Map<string, PackNeeds>();
  for (const b of blobs.values()) {
    for (const [i, run] of runs.entries()) {
      counts[i]!.blobsExamined++;
      counts[i]!.bytesExamined += b.hit.entry.rawLength;
      if (run.saver.known(b.type, b.id)) continue;
      const hex = toHex(b.hit.packId);
      let p = byPack.get(hex);
      if (!p) byPack.set(hex, (p = { packId: b.hit.packId, packSize: b.hit.packSize, byTarget: new Map() }));
      let list = p.byTarget.get(i);
      if (!list) p.byTarget.set(i, (list = []));
      list.push(b);
    }
  }
  const progress = () => {
    if (!options.onProgress) return;
    runs.forEach((run, i) => {
      const c = { ...counts[i]! };
      c.blobsSent = run.saver.stats.blobsNew - before[i]!.blobsNew;
      c.bytesSentRaw = run.saver.stats.bytesNew - before[i]!.bytesNew;
      c.bytesSent = run.saver.stats.bytesStored - before[i]!.bytesStored;
      options.onProgress!(i, { snapshot: snapshotId, counts: c });
    });
  };
  // Which packs some target lacks whole: their entries as the source's index lists them.
  const listed = source.indexedPacks((hex) => byPack.has(hex));
  const limiter = new Limiter(Math.max(1, options.readConcurrency ?? 4));
  const tasks = new Set<Promise<void>>();
  let failure: unknown;
  const start = (f: () => Promise<void>): void => {
    const t = limiter.run(f).catch((e: unknown) => void (failure ??= e)).finally(() => tasks.delete(t));
    tasks.add(t);
  };
  const waitRoom = async (): Promise<void> => {
    // At most readConcurrency reads queued behind the ones running: the packs' bytes stay bounded.
    while (tasks.size > Math.max(1, options.readConcurrency ?? 4) * 2) await Promise.race(tasks);
  };
  let single = new Map<string, { blob: Needed; targets: number[] }>();
  let singleBytes = 0;
  const flushSingles = (): void => {
    if (single.size === 0) return;
    const batch = single;
    single = new Map();
    singleBytes = 0;
    start(() => readSingles(ctx, snapshotId, batch, runs, counts).then(progress));
  };
  for (const [hex, p] of byPack) {
    if (failure) break;
    throwIfAborted(ctx.signal);
    const entries = listed.get(hex)?.entries ?? [];
    const whole: number[] = [];
    const rest = new Map<number, Needed[]>();
    for (const [i, list] of p.byTarget) {
      const run = runs[i]!;
      const copyable = entries.length > 0 && list.length === entries.length && !run.packs.has(hex) && list.every((b) => source.isSound(b.hit, ctx.sourceCondemned));
      if (copyable) whole.push(i);
      else rest.set(i, list);
    }
    if (whole.length) {
      await waitRoom();
      start(async () => {
        const fallback = await copyWhole(ctx, p, entries, whole.map((i) => runs[i]!), counts.filter((_c, i) => whole.includes(i)));
        if (fallback) {
          // The pack's bytes do not match its name: each blob is read (and judged) on its own.
          const again = new Map<string, { blob: Needed; targets: number[] }>();
          for (const i of whole) for (const b of p.byTarget.get(i)!) {
            const k = b.type + toHex(b.id);
            const e = again.get(k);
            if (e) e.targets.push(i);
            else again.set(k, { blob: b, targets: [i] });
          }
          await readSingles(ctx, snapshotId, again, runs, counts);
        }
        progress();
      });
    }
    for (const [i, list] of rest) {
      for (const b of list) {
        const k = b.type + toHex(b.id);
        const e = single.get(k);
        if (e) e.targets.push(i);
        else {
          single.set(k, { blob: b, targets: [i] });
          singleBytes += b.hit.entry.length;
        }
      }
    }
    if (singleBytes >= READ_BATCH) {
      await waitRoom();
      flushSingles();
    }
  }
  if (!failure) flushSingles();
  while (tasks.size) await Promise.allSettled([...tasks]);
  if (failure) throw failure;
  await Promise.all(runs.map((r) => r.saver.flush()));
  runs.forEach((run, i) => {
    const c = counts[i]!;
    c.blobsSent = run.saver.stats.blobsNew - before[i]!.blobsNew;
    c.bytesSentRaw = run.saver.stats.bytesNew - before[i]!.bytesNew;
    c.bytesSent = run.saver.stats.bytesStored - before[i]!.bytesStored;
    // Sent blobs were counted as examined: the difference is what was there.
    c.blobsPresent = c.blobsExamined - c.blobsSent;
    c.bytesPresent = c.bytesExamined - c.bytesSentRaw;
  });
  progress();
  return counts;
}

/**
 * Reads a source pack whole and, when its bytes match its name, hands it to each target's saver
 * as it is. Returns true when they do not match (the caller reads its blobs one by one instead).
 */
async function copyWhole(ctx: SendContext, p: PackNeeds, entries: IndexEntry[], runs: TargetRun[], counts: CloneCounts[]): Promise<boolean> {
  const hex = toHex(p.packId);
  let bytes: Uint8Array;
  try {
    bytes = await ctx.source.backend.get(packName(hex), { signal: ctx.signal });
  } catch (e) {
    if (isCofferError(e, 'NOT_FOUND') || isCofferError(e, 'INVALID_RANGE')) return true;
    throw e;
  }
  if (bytes.length !== p.packSize || !contentHash(bytes).equals(p.packId)) return true;
  const stored = entries.reduce((n, e) => n + e.length, 0);
  for (const c of counts) {
    c.blobsRead += entries.length;
    c.bytesRead += stored;
  }
  for (const run of runs) {
    // The pack's name is now taken in this target: a later snapshot of the call sends blobs of it one by one.
    run.packs.add(hex);
    await run.saver.adoptPack(p.packId, bytes, entries);
  }
  return false;
}

/**
 * Reads single blobs (verified: MAC and chunk id) and stores each in every target listed for it
 * that still lacks it; a copy that does not read is replaced by another copy of the source, and
 * without one the clone fails with CORRUPT naming the path.
 */
async function readSingles(ctx: SendContext, snapshotId: string, batch: Map<string, { blob: Needed; targets: number[] }>, runs: TargetRun[], counts: CloneCounts[]): Promise<void> {
  const { source, signal } = ctx;
  const items = [...batch.values()];
  await readBlobs(source, items.map((x) => x.blob.hit), async (indexes, results: BlobResult[]) => {
    const perTarget = new Map<number, Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }>>();
    for (let k = 0; k < indexes.length; k++) {
      const { blob, targets } = items[indexes[k]!]!;
      let data = results[k]!.data;
      if (!data) {
        noteReadFailure(ctx.failures, ctx.sourceCondemned, blob.hit, results[k]!.error!);
        // This copy is damaged or gone: readBlob() tries every other copy the source knows.
        try {
          data = await source.readBlob(blob.type, blob.id, { signal });
        } catch (e) {
          if (isCofferError(e, 'CANCELLED')) throw e;
          throw damaged(snapshotId, blob.path, blob.type, toHex(blob.id), results[k]!.error ?? e);
        }
      }
      // A copy of the bytes (readBlobs() may reuse its buffer once this returns), shared by the targets.
      const raw = Buffer.from(data);
      for (const i of targets) {
        counts[i]!.blobsRead++;
        counts[i]!.bytesRead += blob.hit.entry.length;
        if (runs[i]!.saver.known(blob.type, blob.id)) continue;
        let list = perTarget.get(i);
        if (!list) perTarget.set(i, (list = []));
        list.push({ type: blob.type, id: blob.id, raw });
      }
    }
    await Promise.all([...perTarget].map(([i, list]) => runs[i]!.saver.saveMany(list)));
  }, { signal, decoder: ctx.options.sourcePool, maxRequest: 1 << 20 });
}

/** Commits the copy of one snapshot in one target (nothing when an equal copy is there). */
async function commit(run: TargetRun, id: string, snapshot: Snapshot, counts: CloneCounts, signal: AbortSignal | undefined): Promise<void> {
  const copy: Snapshot = { ...snapshot };
  const parent = snapshot.parent !== undefined ? run.cloned.get(snapshot.parent) : undefined;
  if (parent !== undefined) copy.parent = parent;
  else delete copy.parent;
  let targetId = run.existing.get(sameness(copy));
  const existed = targetId !== undefined;
  if (targetId === undefined) {
    // The commit point, guarded on both sides as a backup's is.
    await run.session.assertAlive({ signal });
    targetId = await saveSnapshot(run.repo, copy, { signal });
    try {
      await run.session.assertAlive({ signal });
    } catch (e) {
      if (isSessionGap(e)) await run.repo.backend.delete(snapshotName(targetId)).catch(() => {});
      throw e;
    }
    run.existing.set(sameness(copy), targetId);
  }
  run.cloned.set(id, targetId);
  run.result.snapshots.push({ sourceId: id, targetId, existed, counts });
  addCounts(run.result.totals, counts);
}
