// Known damage: what check, restore, backup and repair found broken in the repository (a blob
// that does not verify, a pack that is truncated or gone), recorded in the repository itself so
// that every process stops trusting it at once:
// - writers do not deduplicate against a damaged blob, so the next backup of the intact source
//   stores it again, and every snapshot that uses it is whole again (readers take the new copy);
// - readers prefer another copy of a blob over a damaged one;
// - `repair packs` salvages what can still be read of a damaged pack, takes the pack out of use
//   (quarantine/, never deleted) and retires the records it settled.
// A record is an immutable sealed object `damage/<hash>`; recording more damage writes another.
// Marking more than is damaged is safe (a blob is stored once more); marking less is what this
// exists to prevent.

import { hostname } from 'node:os';
import { CofferError, isCofferError } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { BlobType } from '../engine/format.ts';
import { DAMAGE_PREFIX, idFromName, isHexId } from './layout.ts';
import type { Repository } from './repository.ts';

export type DamageSource = 'check' | 'restore' | 'backup' | 'repair' | 'read';

/** One damaged pack: `blobs` lists the damaged blobs, or is absent when the whole pack is unusable. */
export interface PackDamage {
  pack: string;
  /** What is wrong: missing, truncated, damaged blob(s), unreadable header, ... */
  problem: string;
  /** `rawLength` where known: a repair that drops the blob from the index keeps its length here. */
  blobs?: Array<{ type: BlobType; id: string; rawLength?: number }>;
  /**
   * The pack is out of use (quarantined or gone) and these blobs are lost for good. Such an entry
   * only keeps their lengths, so that `repair snapshots` can still zero-fill them in place; it
   * is not damage to avoid, and no repair acts on it.
   */
  lost?: true;
}

export interface DamageRecord {
  version: 1;
  /** When and where it was found (informational). */
  time: string;
  host: string;
  foundBy: DamageSource;
  packs: PackDamage[];
}

/** Everything the repository's damage records say, for quick questions. */
export class DamageSet {
  /** Pack hex → 'all', or the damaged blobs (type + hex id). */
  private readonly packs = new Map<string, 'all' | Set<string>>();
  /** Every pack damage as recorded, for reports and repair (the `lost` entries too). */
  readonly entries: Array<PackDamage & { record: string; foundBy: DamageSource; time: string }> = [];
  /** Raw lengths of damaged or lost blobs (type + hex id), where a record keeps them. */
  private readonly lengths = new Map<string, number>();
  /** Blobs (type + hex id) that a `lost` entry records. */
  private readonly lostBlobs = new Set<string>();

  get size(): number {
    return this.packs.size;
  }

  add(record: string, r: DamageRecord): void {
    for (const p of r.packs) {
      this.entries.push({ ...p, record, foundBy: r.foundBy, time: r.time });
      for (const b of p.blobs ?? []) if (b.rawLength !== undefined) this.lengths.set(b.type + b.id, b.rawLength);
      if (p.lost) {
        for (const b of p.blobs ?? []) this.lostBlobs.add(b.type + b.id);
        continue;
      }
      const cur = this.packs.get(p.pack);
      if (cur === 'all') continue;
      if (!p.blobs) {
        this.packs.set(p.pack, 'all');
        continue;
      }
      const set = cur ?? new Set<string>();
      for (const b of p.blobs) set.add(b.type + b.id);
      this.packs.set(p.pack, set);
    }
  }

  /** Whether the copy of blob `type`+`idHex` in `packHex` is known to be damaged. */
  isDamaged(packHex: string, type: BlobType, idHex: string): boolean {
    const p = this.packs.get(packHex);
    return p !== undefined && (p === 'all' || p.has(type + idHex));
  }

  hasPack(packHex: string): boolean {
    return this.packs.has(packHex);
  }

  /** The raw length of a damaged or lost blob, if a record kept it. */
  lengthOf(type: BlobType, idHex: string): number | undefined {
    return this.lengths.get(type + idHex);
  }

  /** Whether a `lost` entry records this blob (with its length). */
  isLost(type: BlobType, idHex: string): boolean {
    return this.lostBlobs.has(type + idHex);
  }

  /** The damaged packs, each with 'all' or its damaged blob keys (type + hex id). */
  byPack(): Map<string, 'all' | Set<string>> {
    return new Map(this.packs);
  }
}

function validateRecord(raw: unknown, id: string): DamageRecord {
  const r = raw as Partial<DamageRecord> | null;
  const bad = (why: string): never => {
    throw new CofferError('CORRUPT', `Cannot read damage record ${id.slice(0, 12)}: ${why}`);
  };
  if (!r || typeof r !== 'object' || r.version !== 1) bad('not a version 1 record');
  if (!Array.isArray(r!.packs)) bad('no pack list');
  for (const p of r!.packs!) {
    if (!p || typeof p.pack !== 'string' || !isHexId(p.pack) || typeof p.problem !== 'string') bad('a malformed pack entry');
    if (p.lost !== undefined && p.lost !== true) bad('a malformed lost flag');
    if (p.blobs !== undefined) {
      if (!Array.isArray(p.blobs)) bad('a malformed blob list');
      for (const b of p.blobs) {
        if (!b || (b.type !== 'data' && b.type !== 'tree') || typeof b.id !== 'string' || !isHexId(b.id)) bad('a malformed blob');
        if (b.rawLength !== undefined && !(Number.isSafeInteger(b.rawLength) && b.rawLength >= 0 && b.rawLength <= 0xffffffff)) bad('a malformed blob length');
      }
    }
  }
  return r as DamageRecord;
}

/** Ids (hex) of the damage records in the repository. */
export async function listDamageRecords(repo: Repository, options?: CallOptions): Promise<string[]> {
  const out: string[] = [];
  for await (const o of repo.backend.list(DAMAGE_PREFIX, options)) {
    const id = idFromName(DAMAGE_PREFIX, o.name);
    if (id) out.push(id);
  }
  return out;
}

/**
 * Reads every damage record. One that cannot be read is reported through `onUnreadable` and
 * left out (it can only make Coffer trust a damaged blob, as before it was found).
 */
export async function loadDamage(repo: Repository, options: CallOptions & { onUnreadable?: (id: string, error: Error) => void } = {}): Promise<DamageSet> {
  const set = new DamageSet();
  for (const id of await listDamageRecords(repo, options)) {
    try {
      const plain = await repo.loadObject('damage', DAMAGE_PREFIX, id, options);
      set.add(id, validateRecord(JSON.parse(plain.toString('utf8')), id));
    } catch (e) {
      if (isCofferError(e, 'NOT_FOUND')) continue; // retired by a repair meanwhile
      if (isCofferError(e, 'STORAGE_UNAVAILABLE') || isCofferError(e, 'STORAGE_DENIED') || isCofferError(e, 'CANCELLED')) throw e;
      options.onUnreadable?.(id, e as Error);
    }
  }
  return set;
}

/**
 * Records damage not already known (by `known`, usually the repository's current set). Returns
 * the new record's id, or undefined when there was nothing new.
 */
export async function recordDamage(repo: Repository, foundBy: DamageSource, packs: PackDamage[], known: DamageSet, options?: CallOptions): Promise<string | undefined> {
  const fresh: PackDamage[] = [];
  for (const p of packs) {
    if (p.lost) {
      // Against lost entries only: the damage entries that knew these lengths are about to be retired.
      const blobs = (p.blobs ?? []).filter((b) => b.rawLength !== undefined && !known.isLost(b.type, b.id));
      if (blobs.length) fresh.push({ ...p, blobs });
      continue;
    }
    if (!p.blobs) {
      if (known.byPack().get(p.pack) !== 'all') fresh.push(p);
      continue;
    }
    const blobs = p.blobs.filter((b) => !known.isDamaged(p.pack, b.type, b.id));
    // A pack damaged where no blob is (its trailer, its footer) is recorded too, with no blob:
    // its blobs stay trusted, and repair packs knows to take it out of use.
    if (blobs.length || !known.hasPack(p.pack)) fresh.push({ ...p, blobs });
  }
  if (fresh.length === 0) return undefined;
  const record: DamageRecord = { version: 1, time: new Date().toISOString(), host: hostname(), foundBy, packs: fresh };
  const id = await repo.saveObject('damage', DAMAGE_PREFIX, Buffer.from(JSON.stringify(record)), options);
  known.add(id, record);
  return id;
}

/**
 * Takes `packs` out of the damage records: a pack proven intact (put back from a copy) or taken
 * out of use by a repair. A record that names other packs too is replaced by one without these
 * (written first, then the old one deleted).
 */
export async function retireDamage(repo: Repository, packs: ReadonlySet<string>, known: DamageSet, options?: CallOptions): Promise<number> {
  let retired = 0;
  const byRecord = new Map<string, Array<PackDamage & { foundBy: DamageSource; time: string }>>();
  for (const e of known.entries) {
    let l = byRecord.get(e.record);
    if (!l) byRecord.set(e.record, (l = []));
    l.push(e);
  }
  // `lost` entries stay: they only keep the lengths of blobs that are gone (see PackDamage).
  for (const [record, entries] of byRecord) {
    if (!entries.some((e) => packs.has(e.pack) && !e.lost)) continue;
    const rest = entries.filter((e) => !packs.has(e.pack) || e.lost);
    if (rest.length) {
      const r: DamageRecord = { version: 1, time: rest[0]!.time, host: hostname(), foundBy: rest[0]!.foundBy, packs: rest.map(({ pack, problem, blobs, lost }) => ({ pack, problem, ...(blobs ? { blobs } : {}), ...(lost ? { lost } : {}) })) };
      await repo.saveObject('damage', DAMAGE_PREFIX, Buffer.from(JSON.stringify(r)), options);
    }
    await repo.backend.delete(DAMAGE_PREFIX + record, options);
    retired++;
  }
  return retired;
}
