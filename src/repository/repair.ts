// Repairs, in the manner of restic's repair commands and `borg check --repair`, for a repository
// that check found damaged. Each one keeps everything that can still be read, takes damaged
// objects out of use by moving them under quarantine/ (never deleting them), has a dry run that
// changes nothing, and returns a report that names every file that was lost.
//
// - repairIndex: a new index from the packs' own trailers. For a pack whose trailer is unreadable
//   it keeps what the old index files said of it, blob by blob, after reading and verifying each
//   one; the old index files go only once the new ones are written, the unreadable ones to
//   quarantine. (Formerly rebuild-index, which dropped such packs and lost their blobs.)
// - repairPacks: for every pack with recorded or visible damage (missing, wrong size, damage
//   records), copies each blob that still verifies and has no sound copy elsewhere into a new
//   pack, writes an index without the damaged pack, quarantines it and retires its damage
//   records. Run after a backup of the intact sources has stored what it could again.
// - repairSnapshots: writes, for each snapshot that uses lost data, a new snapshot in which every
//   file and directory whose data is lost is renamed NAME.damaged (zero-filled where the lost
//   lengths are known, empty for a directory) and carries a note saying what was lost; everything
//   else stays as it was. Unreadable snapshot objects are quarantined, and trees that no snapshot
//   reaches any more are offered as recovered snapshots.
//
// Only one prune or repair runs at a time (assertSoleMaintenance); backups may run alongside:
// everything new is written before anything old is moved, and writers are guarded by the
// session protocol as with prune.

import { randomBytes } from 'node:crypto';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { BlobType } from '../engine/format.ts';
import { decodeBlob } from '../engine/blob.ts';
import { chunkId, fromHex, toHex } from '../engine/hash.ts';
import { decodePackTrailer, packKeyFromHeader, parsePackFooter, readPackIndex, PACK_HEADER_SIZE } from '../engine/pack.ts';
import { retireDamage, type PackDamage } from './damage.ts';
import type { IndexEntry, IndexPack } from './index/index-file.ts';
import { CONFIG_COPY_NAME, CONFIG_NAME, DATA_PREFIX, QUARANTINE_PREFIX, SNAPSHOTS_PREFIX, idFromName, indexName, packName, snapshotName } from './layout.ts';
import { BlobSaver, toIndexEntry, type Encoder } from './packer.ts';
import { readConfig, type Repository } from './repository.ts';
import { Session, assertSoleMaintenance } from './session.ts';
import { readSnapshots, saveSnapshot, type Snapshot, type SnapshotRef } from './snapshot.ts';
import { encodeTree, nameBytes, type Tree, type TreeNode } from './tree.ts';
import { loadTree, walkTree } from './walk.ts';

/** A file or directory of a snapshot whose data is gone. */
export interface LostFile {
  snapshot: string;
  path: string;
  /** What is gone: "data", "directory" (its tree) or "snapshot" (the whole snapshot object). */
  what: 'data' | 'directory' | 'snapshot';
  blob?: string;
}

export interface RepairOptions extends CallOptions {
  dryRun?: boolean;
  onProgress?: (message: string) => void;
}

/** Files listed in a report at most; the count says how many there were. */
const MAX_LOST_LISTED = 100_000;

/** Moves an object under quarantine/ (same name below it): copied first, then deleted. */
export async function quarantine(repo: Repository, name: string, options?: CallOptions): Promise<boolean> {
  let bytes: Buffer;
  try {
    bytes = await repo.backend.get(name, options);
  } catch (e) {
    if (isCofferError(e, 'NOT_FOUND')) return false;
    throw e;
  }
  await repo.backend.put(QUARANTINE_PREFIX + name, bytes, options);
  await repo.backend.delete(name, options);
  return true;
}

/** The lost files of every readable snapshot (see findLostFiles), into `report`. */
async function reportLost(repo: Repository, report: { lostFiles: LostFile[]; lostFileCount: number }, isLost: (type: BlobType, id: string) => boolean, options?: CallOptions): Promise<void> {
  const { snapshots } = await readSnapshots(repo, options);
  const lost = await findLostFiles(repo, snapshots, isLost, options);
  report.lostFiles = lost.files;
  report.lostFileCount = lost.count;
}

/**
 * Every file and directory of the readable snapshots whose data `isLost` says is gone (trees
 * that cannot be read count as lost directories). At most MAX_LOST_LISTED are listed.
 */
export async function findLostFiles(repo: Repository, snapshots: readonly SnapshotRef[], isLost: (type: BlobType, id: string) => boolean, options?: CallOptions): Promise<{ files: LostFile[]; count: number }> {
  const files: LostFile[] = [];
  let count = 0;
  const push = (f: LostFile) => {
    count++;
    if (files.length < MAX_LOST_LISTED) files.push(f);
  };
  for (const s of snapshots) {
    throwIfAborted(options?.signal);
    await walkTree(repo, s.snapshot.tree, {
      treeError: (path, id) => push({ snapshot: s.id, path, what: 'directory', blob: id }),
      node: (path, n) => {
        if (n.type === 'dir' && n.subtree && isLost('tree', n.subtree)) {
          push({ snapshot: s.id, path, what: 'directory', blob: n.subtree });
          return;
        }
        const gone = n.content?.find((c) => isLost('data', c));
        if (gone) push({ snapshot: s.id, path, what: 'data', blob: gone });
      },
    }, options);
  }
  return { files, count };
}

async function maintenance<T>(repo: Repository, action: string, options: RepairOptions, fn: (session: Session) => Promise<T>): Promise<T> {
  const session = await Session.start(repo, 'repair', { signal: options.signal });
  try {
    await assertSoleMaintenance(repo, session, action, options);
    return await fn(session);
  } finally {
    await session.end().catch(() => {});
  }
}

async function storedPacks(repo: Repository, options?: CallOptions): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const o of repo.backend.list(DATA_PREFIX, options)) {
    const hex = idFromName(DATA_PREFIX, o.name);
    if (hex) out.set(hex, o.size);
  }
  return out;
}

// ---- repair index ---------------------------------------------------------------------------

export interface IndexRepairReport {
  kind: 'index';
  dryRun: boolean;
  /** Packs indexed from their own trailers. */
  packs: number;
  blobs: number;
  /** Packs whose trailer is unreadable: what the old index said of them, and how much of it verified. */
  damagedPacks: Array<{ pack: string; error: string; blobsKnown: number; blobsKept: number }>;
  /** Packs the old index listed that are not in storage (their blobs are not indexed any more). */
  missingPacks: string[];
  indexFilesWritten: number;
  indexFilesRemoved: number;
  /** Old index files that could not be read: moved to quarantine/. */
  indexFilesQuarantined: string[];
  lostFiles: LostFile[];
  lostFileCount: number;
}

export async function repairIndex(repo: Repository, options: RepairOptions = {}): Promise<IndexRepairReport> {
  const { signal } = options;
  const say = options.onProgress ?? (() => {});
  return maintenance(repo, 'repair the index', options, async (session) => {
    const report: IndexRepairReport = { kind: 'index', dryRun: !!options.dryRun, packs: 0, blobs: 0, damagedPacks: [], missingPacks: [], indexFilesWritten: 0, indexFilesRemoved: 0, indexFilesQuarantined: [], lostFiles: [], lostFileCount: 0 };
    const old = await repo.listIndexFiles({ signal });
    const stored = await storedPacks(repo, { signal });

    say(`reading the trailers of ${stored.size} pack(s)`);
    const fresh: IndexPack[] = [];
    const failed = new Map<string, string>();
    for (const [hex, size] of stored) {
      throwIfAborted(signal);
      try {
        const entries = await readPackIndex(repo.keys, size, (offset, length) => repo.backend.get(packName(hex), { offset, length, signal }));
        fresh.push({ packId: fromHex(hex), packSize: size, entries: entries.map(toIndexEntry) });
        report.packs++;
        report.blobs += entries.length;
      } catch (e) {
        if (!isCofferError(e, 'CORRUPT') && !isCofferError(e, 'INVALID_RANGE') && !isCofferError(e, 'UNSUPPORTED')) throw e;
        failed.set(hex, (e as Error).message);
      }
    }

    // What the old index files say: of the packs whose trailer failed (to verify and keep), and
    // which packs they list that storage no longer has.
    say(`reading ${old.length} old index file(s)`);
    const known = new Map<string, Map<string, IndexEntry>>();
    const listedBy = new Map<string, string[]>();
    const superseded = new Set<string>();
    const unreadable: string[] = [];
    for (const id of old) {
      let content;
      try {
        content = await repo.loadIndexFile(id, { signal });
      } catch (e) {
        if (isCofferError(e, 'NOT_FOUND')) continue;
        if (!isCofferError(e, 'CORRUPT') && !isCofferError(e, 'UNSUPPORTED')) throw e;
        unreadable.push(id);
        continue;
      }
      for (const s of content.supersedes) superseded.add(toHex(s));
      for (const p of content.packs) {
        const hex = toHex(p.packId);
        if (!stored.has(hex)) listedBy.set(hex, [...(listedBy.get(hex) ?? []), id]);
        // Superseded files still know where blobs sit in a pack whose trailer failed (and how
        // long the blobs of a missing pack were).
        if (!failed.has(hex) && stored.has(hex)) continue;
        let m = known.get(hex);
        if (!m) known.set(hex, (m = new Map()));
        for (const e of p.entries) m.set(`${e.type}${toHex(e.id)}@${e.offset}`, e);
      }
    }
    // Listed by a file in force (not one a prune superseded before it crashed) and not stored.
    report.missingPacks = [...listedBy].filter(([, files]) => files.some((f) => !superseded.has(f))).map(([hex]) => hex);

    // A pack without a readable trailer keeps every blob the old index knew that still verifies.
    const damage: PackDamage[] = [];
    for (const [hex, error] of failed) {
      const entries = [...(known.get(hex)?.values() ?? [])].sort((a, b) => a.offset - b.offset);
      const kept: IndexEntry[] = [];
      const bad: Array<{ type: BlobType; id: string; rawLength: number }> = [];
      let key: Buffer | undefined;
      try {
        key = await repo.packKey(hex, { signal });
      } catch (e) {
        // As for the trailer above: a header that claims a newer version is a damaged one here.
        if (!isCofferError(e, 'CORRUPT') && !isCofferError(e, 'INVALID_RANGE') && !isCofferError(e, 'UNSUPPORTED')) throw e;
      }
      for (const e of entries) {
        throwIfAborted(signal);
        try {
          if (!key) throw new Error('header unreadable');
          const stored = await repo.backend.get(packName(hex), { offset: e.offset, length: e.length, signal });
          decodeBlob(repo.keys, key, e.nonceIndex, e.type, e.id, e.compressed, e.rawLength, stored);
          kept.push(e);
        } catch (err) {
          if (isCofferError(err, 'CANCELLED') || isCofferError(err, 'STORAGE_UNAVAILABLE') || isCofferError(err, 'STORAGE_DENIED')) throw err;
          bad.push({ type: e.type, id: toHex(e.id), rawLength: e.rawLength });
        }
      }
      report.damagedPacks.push({ pack: hex, error, blobsKnown: entries.length, blobsKept: kept.length });
      if (kept.length) {
        fresh.push({ packId: fromHex(hex), packSize: stored.get(hex)!, entries: kept });
        report.packs++;
        report.blobs += kept.length;
      }
      damage.push({ pack: hex, problem: `trailer unreadable (${error})`, blobs: bad });
    }
    // The blobs of a missing pack leave the index here: their lengths stay with the damage.
    for (const hex of report.missingPacks) {
      const blobs = [...(known.get(hex)?.values() ?? [])].map((e) => ({ type: e.type, id: toHex(e.id), rawLength: e.rawLength }));
      if (blobs.length) damage.push({ pack: hex, problem: 'missing from storage; dropped from the index by repair index', lost: true, blobs });
    }

    if (!options.dryRun) {
      // New files first (superseding every old one, the unreadable ones too), then the old go.
      await session.assertAlive({ signal });
      const written = await repo.saveIndexFiles(fresh, old, { signal });
      report.indexFilesWritten = written.length;
      await session.assertAlive({ signal });
      for (const id of old) {
        if (written.includes(id)) continue;
        if (unreadable.includes(id)) {
          if (await quarantine(repo, indexName(id), { signal })) report.indexFilesQuarantined.push(id);
        } else {
          await repo.backend.delete(indexName(id), { signal });
          report.indexFilesRemoved++;
        }
      }
      if (damage.length) await repo.noteDamage('repair', damage, { signal });
      await repo.loadIndex({ signal });
    } else {
      report.indexFilesQuarantined = unreadable;
    }

    // What is lost: used blobs that no pack holds (by trailer or by verified old entry).
    say('finding the files that are lost');
    const have = new Set<string>();
    for (const p of fresh) for (const e of p.entries) have.add(e.type + toHex(e.id));
    if (options.dryRun) {
      // Let this process find trees where the new index would put them.
      for (const p of fresh) repo.index.add(p.packId, p.packSize, p.entries);
    }
    await reportLost(repo, report, (type, id) => !have.has(type + id), { signal });
    return report;
  });
}

// ---- repair packs ---------------------------------------------------------------------------

export interface PackRepairReport {
  kind: 'packs';
  dryRun: boolean;
  packs: Array<{
    pack: string;
    /** missing, wrong size, or what the damage records say. */
    problem: string;
    blobs: number;
    /** Copied into new packs: verified, and no sound copy elsewhere. */
    salvaged: number;
    /** With a sound copy in another pack: nothing to do. */
    elsewhere: number;
    /** Unreadable and without a sound copy: gone. */
    lost: number;
    quarantined: boolean;
  }>;
  blobsSalvaged: number;
  blobsLost: number;
  indexFilesWritten: number;
  damageRecordsRetired: number;
  lostFiles: LostFile[];
  lostFileCount: number;
}

export async function repairPacks(repo: Repository, encoder: Encoder, options: RepairOptions & { packs?: string[] } = {}): Promise<PackRepairReport> {
  const { signal } = options;
  const say = options.onProgress ?? (() => {});
  return maintenance(repo, 'repair packs', options, async (session) => {
    const report: PackRepairReport = { kind: 'packs', dryRun: !!options.dryRun, packs: [], blobsSalvaged: 0, blobsLost: 0, indexFilesWritten: 0, damageRecordsRetired: 0, lostFiles: [], lostFileCount: 0 };
    await repo.loadIndex({ signal });
    const stored = await storedPacks(repo, { signal });

    // Which packs: those named, else every pack with recorded damage or that is missing or of
    // the wrong size.
    const problems = new Map<string, string>();
    const damaged = repo.damage.byPack();
    const indexed = new Set<string>();
    for (const p of repo.index.packs()) {
      const hex = toHex(p.packId);
      indexed.add(hex);
      const size = stored.get(hex);
      if (size === undefined) problems.set(hex, 'missing from storage');
      else if (size !== p.packSize) problems.set(hex, `has ${size} bytes, the index says ${p.packSize}`);
      else if (damaged.has(hex)) problems.set(hex, repo.damage.entries.find((e) => e.pack === hex)!.problem);
    }
    // A damaged pack that the index no longer lists (repair index found it gone, or none of its
    // blobs readable) has nothing to salvage through the index, but is still in storage or in
    // the damage records: it goes to quarantine and its records are retired all the same.
    for (const hex of damaged.keys()) if (!indexed.has(hex)) problems.set(hex, repo.damage.entries.find((e) => e.pack === hex)!.problem);
    if (options.packs?.length) {
      for (const ref of options.packs) {
        const m = [...new Set([...stored.keys(), ...problems.keys()])].filter((h) => h.startsWith(ref));
        if (m.length !== 1) throw new CofferError('USAGE', `Cannot repair pack ${ref}: ${m.length ? 'the prefix matches several packs' : 'no such pack'}`, { hint: 'Give more digits of a pack id.' });
        if (!problems.has(m[0]!)) problems.set(m[0]!, 'named for repair');
      }
      for (const h of [...problems.keys()]) if (!options.packs.some((r) => h.startsWith(r))) problems.delete(h);
    }
    if (problems.size === 0) return report;

    const entries = repo.indexedPacks((hex) => problems.has(hex));
    /** A copy outside the packs being repaired that is not known to be damaged. */
    const soundElsewhere = (type: BlobType, id: Buffer) => repo.index.lookupAll(id, type).some((h) => {
      const hex = toHex(h.packId);
      return !problems.has(hex) && stored.get(hex) === h.packSize && repo.isSound(h);
    });

    const saver = options.dryRun ? undefined : new BlobSaver(repo, encoder, { signal, force: true, session });
    const lostKeys = new Set<string>();
    const salvagedKeys = new Set<string>();
    // Lost blobs leave the index with their pack: their lengths stay in a `lost` damage record,
    // so that repair snapshots can zero-fill them in place.
    const lostBlobs: PackDamage[] = [];
    for (const [hex, problem] of problems) {
      throwIfAborted(signal);
      say(`repairing pack ${hex.slice(0, 12)} (${problem})`);
      const size = stored.get(hex);
      let bytes: Buffer | undefined;
      if (size !== undefined) bytes = await repo.backend.get(packName(hex), { signal });
      // What the pack holds: the index's entries, and its own trailer's if it still reads.
      const all = new Map<string, IndexEntry>();
      for (const e of entries.get(hex)?.entries ?? []) all.set(`${e.type}${toHex(e.id)}`, e);
      let key: Buffer | undefined;
      if (bytes) {
        try {
          key = packKeyFromHeader(repo.keys, bytes.subarray(0, PACK_HEADER_SIZE));
          const f = parsePackFooter(bytes.subarray(Math.max(0, bytes.length - 64)), bytes.length);
          for (const e of decodePackTrailer(repo.keys, bytes.subarray(0, PACK_HEADER_SIZE), bytes.subarray(f.trailerOffset, f.trailerOffset + f.trailerLength), bytes.length)) {
            const k = `${e.type}${toHex(e.id)}`;
            if (!all.has(k)) all.set(k, toIndexEntry(e));
          }
        } catch {
          // A damaged header or trailer: the index's entries are all there is.
        }
      }
      const line = { pack: hex, problem, blobs: all.size, salvaged: 0, elsewhere: 0, lost: 0, quarantined: false };
      for (const e of all.values()) {
        if (soundElsewhere(e.type, e.id)) {
          line.elsewhere++;
          continue;
        }
        let raw: Buffer | undefined;
        if (bytes && key && e.offset + e.length <= bytes.length) {
          try {
            raw = decodeBlob(repo.keys, key, e.nonceIndex, e.type, e.id, e.compressed, e.rawLength, bytes.subarray(e.offset, e.offset + e.length));
          } catch {
            // damaged: lost below
          }
        }
        if (!raw) {
          line.lost++;
          lostKeys.add(e.type + toHex(e.id));
          let l = lostBlobs.at(-1);
          if (l?.pack !== hex) lostBlobs.push((l = { pack: hex, problem: `lost: ${problem}; taken out of use by repair packs`, lost: true, blobs: [] }));
          l.blobs!.push({ type: e.type, id: toHex(e.id), rawLength: e.rawLength });
          continue;
        }
        line.salvaged++;
        salvagedKeys.add(e.type + toHex(e.id));
        await saver?.saveMany([{ type: e.type, id: e.id, raw }]);
      }
      report.blobsSalvaged += line.salvaged;
      report.blobsLost += line.lost;
      report.packs.push(line);
    }

    if (saver) {
      await saver.flush();
      report.indexFilesWritten += saver.stats.indexFiles;
      // An index without the repaired packs, in place of every index file there was.
      say('writing the index without the repaired packs');
      const current = await repo.loadIndex({ signal });
      const keep = repo.indexedPacks((hex) => !problems.has(hex));
      await session.assertAlive({ signal });
      const written = await repo.saveIndexFiles([...keep.values()], current, { signal });
      report.indexFilesWritten += written.length;
      await session.assertAlive({ signal });
      for (const id of current) if (!written.includes(id)) await repo.backend.delete(indexName(id), { signal });
      for (const line of report.packs) if (stored.has(line.pack)) line.quarantined = await quarantine(repo, packName(line.pack), { signal });
      // Blobs earlier repairs dropped from the index were recorded with their lengths: carried over.
      for (const e of repo.damage.entries) {
        if (!problems.has(e.pack) || e.lost) continue;
        const carried = (e.blobs ?? []).filter((b) => b.rawLength !== undefined && !lostKeys.has(b.type + b.id) && !salvagedKeys.has(b.type + b.id));
        if (carried.length) lostBlobs.push({ pack: e.pack, problem: `lost: ${e.problem}; taken out of use by repair packs`, lost: true, blobs: carried });
      }
      if (lostBlobs.length) await repo.noteDamage('repair', lostBlobs, { signal });
      report.damageRecordsRetired = await retireDamage(repo, new Set(problems.keys()), repo.damage, { signal });
      await repo.loadIndex({ signal });
    }

    say('finding the files that are lost');
    await reportLost(repo, report, (type, id) => lostKeys.has(type + id), { signal });
    return report;
  });
}

// ---- repair snapshots -----------------------------------------------------------------------

export interface SnapshotRepairReport {
  kind: 'snapshots';
  dryRun: boolean;
  /** Snapshots that use lost data, and what was written for each. */
  repaired: Array<{ snapshot: string; replacement?: string; lostFiles: number; forgotten: boolean }>;
  /** Snapshot objects that cannot be read: moved to quarantine/. */
  unreadable: Array<{ snapshot: string; error: string; quarantined: boolean }>;
  /** Snapshots made of trees that no snapshot reaches any more (after unreadable snapshots). */
  recovered: Array<{ snapshot?: string; tree: string; entries: number }>;
  lostFiles: LostFile[];
  lostFileCount: number;
}

/** The suffix of an entry whose data a repair found lost. */
export const DAMAGED_SUFFIX = '.damaged';

export async function repairSnapshots(repo: Repository, encoder: Encoder, options: RepairOptions & { forget?: boolean; recover?: boolean } = {}): Promise<SnapshotRepairReport> {
  const { signal } = options;
  const say = options.onProgress ?? (() => {});
  return maintenance(repo, 'repair snapshots', options, async (session) => {
    const report: SnapshotRepairReport = { kind: 'snapshots', dryRun: !!options.dryRun, repaired: [], unreadable: [], recovered: [], lostFiles: [], lostFileCount: 0 };
    await repo.loadIndex({ signal });
    const stored = await storedPacks(repo, { signal });
    const readable = (type: BlobType, id: string) => repo.index.lookupAll(fromHex(id), type).some((h) => stored.get(toHex(h.packId)) === h.packSize && repo.isSound(h));
    const listing = await readSnapshots(repo, { signal });
    const saver = options.dryRun ? undefined : new BlobSaver(repo, encoder, { signal, session });
    const now = new Date().toISOString();
    const lostFiles: LostFile[] = [];
    let lostCount = 0;
    const lose = (f: LostFile) => {
      lostCount++;
      if (lostFiles.length < MAX_LOST_LISTED) lostFiles.push(f);
    };

    const storeTree = async (tree: Tree): Promise<string> => {
      const bytes = encodeTree(tree);
      const id = chunkId(repo.keys.chunkIdKey, bytes);
      await saver?.saveMany([{ type: 'tree', id, raw: bytes }]);
      return toHex(id);
    };
    const zeroIds = new Map<number, string>();
    const zeroBlob = async (length: number): Promise<string> => {
      let id = zeroIds.get(length);
      if (!id) {
        const raw = Buffer.alloc(length);
        const bid = chunkId(repo.keys.chunkIdKey, raw);
        await saver?.saveMany([{ type: 'data', id: bid, raw }]);
        zeroIds.set(length, (id = toHex(bid)));
      }
      return id;
    };
    /** The name of a damaged entry: NAME.damaged (or .damaged.2, ...: one not `taken`), as bytes allow. */
    const damagedName = (n: TreeNode, taken: Set<string>): { name: string; rawName?: string } => {
      const base = nameBytes(n);
      let bytes = Buffer.concat([base, Buffer.from(DAMAGED_SUFFIX)]);
      for (let i = 2; taken.has(bytes.toString('latin1')); i++) bytes = Buffer.concat([base, Buffer.from(`${DAMAGED_SUFFIX}.${i}`)]);
      taken.add(bytes.toString('latin1'));
      const name = bytes.toString('utf8');
      return Buffer.from(name, 'utf8').equals(bytes) ? { name, rawName: undefined } : { name, rawName: bytes.toString('base64') };
    };

    /** A file's content with lost blobs zero-filled (or cut where their length is unknown). */
    const repairContent = async (node: TreeNode): Promise<{ content: string[]; size: number; note: string }> => {
      const ids = node.content ?? [];
      const content: string[] = [];
      let lost = 0;
      let lostBytes = 0;
      let pos = 0;
      // A blob the index does not know at all (repair index or repair packs dropped it as lost)
      // has no length of its own. When every such blob of the file is in one run of neighbours,
      // the run is as long as what the other blobs leave of the file's size: zero-filled whole.
      const lengths = ids.map((c) => repo.index.lookupAll(fromHex(c), 'data')[0]?.entry.rawLength ?? repo.damage.lengthOf('data', c));
      const unknown = lengths.flatMap((l, i) => (l === undefined ? [i] : []));
      const runLength = (node.size ?? 0) - lengths.reduce((a: number, l) => a + (l ?? 0), 0);
      const run = unknown.length && unknown.at(-1)! - unknown[0]! + 1 === unknown.length && runLength >= unknown.length ? { from: unknown[0]!, to: unknown.at(-1)! } : undefined;
      for (let i = 0; i < ids.length; i++) {
        const c = ids[i]!;
        if (run && i === run.from) {
          // In pieces no longer than a chunk, as a backup would have stored them.
          for (let left = runLength; left > 0; left -= repo.config.chunker.maxSize) content.push(await zeroBlob(Math.min(left, repo.config.chunker.maxSize)));
          lost += run.to - run.from + 1;
          lostBytes += runLength;
          pos += runLength;
          i = run.to;
          continue;
        }
        if (readable('data', c)) {
          content.push(c);
          pos += lengths[i]!;
          continue;
        }
        lost++;
        const len = lengths[i] !== undefined && lengths[i]! > 0 ? lengths[i] : undefined;
        if (len === undefined) {
          return { content, size: pos, note: `data lost in a repair on ${now}: ${lost} chunk(s) could not be read; cut at byte ${pos} (the length of a lost chunk is unknown)` };
        }
        content.push(await zeroBlob(len));
        lostBytes += len;
        pos += len;
      }
      return { content, size: pos, note: `data lost in a repair on ${now}: ${lost} of ${ids.length} chunk(s), ${lostBytes} bytes, zero-filled` };
    };

    // Rewritten trees by id: a subtree shared by many snapshots is repaired once. `lost` is set
    // when the tree itself cannot be read.
    const done = new Map<string, { id: string; changed: boolean; lost?: boolean }>();
    const rewrite = async (id: string, snapshot: string, path: string): Promise<{ id: string; changed: boolean; lost?: boolean }> => {
      const memo = done.get(id);
      if (memo) return memo;
      let tree: Tree | undefined;
      if (readable('tree', id)) {
        try {
          tree = await loadTree(repo, id, { signal });
        } catch (e) {
          if (isCofferError(e, 'CANCELLED') || isCofferError(e, 'STORAGE_UNAVAILABLE')) throw e;
        }
      }
      if (!tree) {
        const out = { id, changed: true, lost: true };
        done.set(id, out);
        return out;
      }
      const taken = new Set(tree.nodes.map((n) => nameBytes(n).toString('latin1')));
      const nodes: TreeNode[] = [];
      let changed = false;
      for (const n of tree.nodes) {
        throwIfAborted(signal);
        const p = `${path}/${n.name}`;
        if (n.type === 'dir' && n.subtree) {
          const sub = await rewrite(n.subtree, snapshot, p);
          if (!sub.changed) nodes.push(n);
          else if (sub.lost) {
            lose({ snapshot, path: p, what: 'directory', blob: n.subtree });
            nodes.push({ ...n, ...damagedName(n, taken), subtree: await storeTree({ nodes: [] }), repaired: `directory contents lost in a repair on ${now}: tree ${n.subtree.slice(0, 12)} could not be read` });
          } else nodes.push({ ...n, subtree: sub.id });
          changed ||= sub.changed;
          continue;
        }
        const gone = n.content?.find((c) => !readable('data', c));
        if (!gone) {
          nodes.push(n);
          continue;
        }
        lose({ snapshot, path: p, what: 'data', blob: gone });
        const fixed = await repairContent(n);
        nodes.push({ ...n, ...damagedName(n, taken), content: fixed.content, size: fixed.size, repaired: fixed.note });
        changed = true;
      }
      const out = changed ? { id: await storeTree({ nodes }), changed: true } : { id, changed: false };
      done.set(id, out);
      return out;
    };

    const fresh: Array<{ old: SnapshotRef; snapshot: Snapshot; lostFiles: number }> = [];
    // An original that was repaired before is left alone (forget it, or repair with --forget).
    const replaced = new Set(listing.snapshots.flatMap((s) => (s.snapshot.repairedFrom ? [s.snapshot.repairedFrom] : [])));
    for (const s of listing.snapshots) {
      throwIfAborted(signal);
      if (replaced.has(s.id)) {
        if (options.forget && !options.dryRun) {
          await repo.backend.delete(snapshotName(s.id), { signal });
          report.repaired.push({ snapshot: s.id, replacement: listing.snapshots.find((x) => x.snapshot.repairedFrom === s.id)!.id, lostFiles: 0, forgotten: true });
        }
        continue;
      }
      const before = lostCount;
      const root = await rewrite(s.snapshot.tree, s.id, '');
      if (!root.changed) continue;
      say(`snapshot ${s.id.slice(0, 12)} uses lost data`);
      // A lost root tree leaves an empty snapshot that says so.
      const tree = root.lost ? await storeTree({ nodes: [] }) : root.id;
      if (root.lost) lose({ snapshot: s.id, path: '/', what: 'directory', blob: s.snapshot.tree });
      fresh.push({ old: s, snapshot: { ...s.snapshot, tree, tags: [...new Set([...s.snapshot.tags, 'repaired'])], repairedFrom: s.id }, lostFiles: lostCount - before });
    }

    // Unreadable snapshot objects go to quarantine; the trees only they reached are offered as
    // recovered snapshots.
    for (const u of listing.unreadable) {
      lose({ snapshot: u.id, path: '/', what: 'snapshot' });
      report.unreadable.push({ snapshot: u.id, error: u.error.message, quarantined: false });
    }
    let recovered: Array<{ tree: string; entries: number }> = [];
    if (listing.unreadable.length || options.recover) {
      say('looking for trees that no snapshot reaches');
      recovered = await unreachedTrees(repo, listing.snapshots, options);
    }

    if (saver) {
      // Index before snapshots (the write order), then the snapshots, then what they replace.
      await saver.flush();
      for (const f of fresh) {
        await session.assertAlive({ signal });
        const id = await saveSnapshot(repo, f.snapshot, { signal });
        report.repaired.push({ snapshot: f.old.id, replacement: id, lostFiles: f.lostFiles, forgotten: false });
      }
      for (const r of recovered) {
        const snap: Snapshot = {
          version: 1, time: now, tree: r.tree, paths: [], host: { hostname: 'unknown (recovered)', os: '', arch: '' }, username: '',
          tags: ['recovered'], program: 'coffer repair snapshots',
        };
        report.recovered.push({ ...r, snapshot: await saveSnapshot(repo, snap, { signal }) });
      }
      if (options.forget) {
        for (const r of report.repaired) {
          await repo.backend.delete(snapshotName(r.snapshot), { signal });
          r.forgotten = true;
        }
      }
      for (const u of report.unreadable) u.quarantined = await quarantine(repo, SNAPSHOTS_PREFIX + u.snapshot, { signal });
    } else {
      for (const f of fresh) report.repaired.push({ snapshot: f.old.id, lostFiles: f.lostFiles, forgotten: false });
      report.recovered = recovered;
    }
    report.lostFiles = lostFiles;
    report.lostFileCount = lostCount;
    return report;
  });
}

/**
 * Trees that no readable snapshot reaches and no other tree names: the roots of what unreadable
 * snapshots (or interrupted backups) left. Every tree in the index is read once.
 */
async function unreachedTrees(repo: Repository, snapshots: readonly SnapshotRef[], options: CallOptions): Promise<Array<{ tree: string; entries: number }>> {
  const all = new Set<string>();
  for (const { entry } of repo.index.entries()) if (entry.type === 'tree') all.add(toHex(entry.id));
  const named = new Set<string>();
  const size = new Map<string, number>();
  for (const id of all) {
    throwIfAborted(options.signal);
    try {
      const t = await loadTree(repo, id, options);
      size.set(id, t.nodes.length);
      for (const n of t.nodes) if (n.subtree) named.add(n.subtree);
    } catch (e) {
      if (isCofferError(e, 'CANCELLED') || isCofferError(e, 'STORAGE_UNAVAILABLE')) throw e;
    }
  }
  for (const s of snapshots) named.add(s.snapshot.tree);
  return [...all].filter((id) => !named.has(id) && size.has(id) && size.get(id)! > 0).map((tree) => ({ tree, entries: size.get(tree)! }));
}

/** A name for a repair report file: coffer-repair-<kind>-<time>.json. */
export function reportName(kind: string): string {
  return `coffer-repair-${kind}-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(2).toString('hex')}.json`;
}

// ---- repair config --------------------------------------------------------------------------

export interface ConfigRepairReport {
  kind: 'config';
  dryRun: boolean;
  /** Each copy: readable, or what is wrong with it. */
  copies: Array<{ name: string; ok: boolean; problem?: string }>;
  /** The copies (re)written from a good one. */
  rewritten: string[];
}

/** Rewrites a missing or damaged copy of the config from one that reads (init writes two). */
export async function repairConfig(repo: Repository, options: RepairOptions = {}): Promise<ConfigRepairReport> {
  const { signal } = options;
  const report: ConfigRepairReport = { kind: 'config', dryRun: !!options.dryRun, copies: [], rewritten: [] };
  let good: Buffer | undefined;
  for (const name of [CONFIG_NAME, CONFIG_COPY_NAME]) {
    try {
      const config = await readConfig(repo.backend, repo.keys, name, { signal, sealed: (b) => (good ??= b) });
      if (config.id !== repo.id) throw new CofferError('CORRUPT', `the ${name} object belongs to repository ${config.id.slice(0, 12)}, not this one`);
      report.copies.push({ name, ok: true });
    } catch (e) {
      // A copy that claims a newer format than the one this repository opened with is damaged.
      if (!isCofferError(e, 'CORRUPT') && !isCofferError(e, 'UNSUPPORTED')) throw e;
      report.copies.push({ name, ok: false, problem: (e as Error).message });
    }
  }
  // The repository was opened, so one copy read (else open() failed and said what to do).
  if (!good) throw new CofferError('CORRUPT', 'Cannot repair the config: neither copy reads', { hint: 'Copy the file `config` from any copy of this repository into place.' });
  for (const c of report.copies) {
    if (c.ok) continue;
    if (!options.dryRun) {
      // Aside first, never overwritten blind: the damaged copy is evidence.
      await quarantine(repo, c.name, { signal });
      await repo.backend.put(c.name, good, { signal });
    }
    report.rewritten.push(c.name);
  }
  return report;
}
