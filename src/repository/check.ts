// `repo check`: structure (every index file, snapshot and tree readable, every reference
// resolves, every indexed pack present with the right size) and, with readData, every byte
// (each selected pack's hash, trailer and blobs). Damage is reported by pack and blob, and by
// the snapshots and files it affects, so an administrator knows exactly what a restore would
// lose and which clone to fall back to.
//
// Damage found is recorded in the repository (damage.ts), so that writers stop deduplicating
// against it and the next backup of the intact source stores it again. Damage to a copy of a
// blob that has a good copy elsewhere loses nothing: it is a warning (repair packs tidies it).
// A pack that --read-data proves intact again (restored from a clone) clears its records.

import { randomInt } from 'node:crypto';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import { contentHash, fromHex, toHex } from '../engine/hash.ts';
import { decodeBlob } from '../engine/blob.ts';
import { decodePackTrailer, packKeyFromHeader, parsePackFooter, PACK_HEADER_SIZE, type PackEntry } from '../engine/pack.ts';
import type { BlobType } from '../engine/format.ts';
import type { IndexHit } from './index/chunk-index.ts';
import type { IndexEntry } from './index/index-file.ts';
import { DamageSet, loadDamage, retireDamage, type PackDamage } from './damage.ts';
import { CONFIG_COPY_NAME, DATA_PREFIX, idFromName, packName } from './layout.ts';
import { loadCondemned } from './prune.ts';
import { readConfig, type Repository } from './repository.ts';
import { Session, listSessions } from './session.ts';
import { listSnapshotIds, loadSnapshot, type SnapshotRef } from './snapshot.ts';
import { walkTree } from './walk.ts';

export type ProblemKind =
  | 'index-unreadable'
  | 'snapshot-unreadable'
  | 'tree-unreadable'
  | 'blob-missing'
  | 'blob-lost'
  | 'pack-missing'
  | 'pack-size'
  | 'pack-damaged'
  | 'blob-damaged'
  | 'damage-known'
  | 'damage-unreadable'
  | 'pack-unindexed'
  | 'session-stale'
  | 'session-unreadable'
  | 'config-copy';

export interface Problem {
  kind: ProblemKind;
  /** error: data is lost or unreadable; warning: harmless leftovers or things to tidy. */
  severity: 'error' | 'warning';
  message: string;
  pack?: string;
  blob?: string;
  snapshot?: string;
  path?: string;
}

export interface Affected {
  snapshot: string;
  path: string;
  blob: string;
}

export interface CheckResult {
  ok: boolean;
  problems: Problem[];
  /** For every blob a snapshot needs of which no good copy is left: the snapshots and files that need it. */
  affected: Affected[];
  /** The damage record written for what this check found (damage.ts), if any. */
  damageRecorded?: string;
  /** Packs whose recorded damage this check found gone (read and intact): their records were retired. */
  damageCleared: string[];
  /** What to run next, in order, for the problems found. */
  advice: string[];
  stats: { snapshots: number; trees: number; indexFiles: number; packs: number; blobs: number; packsRead: number; bytesRead: number };
}

export interface CheckOptions extends CallOptions {
  readData?: boolean;
  /** With readData: read only this percentage of the packs, chosen at random (0 < n ≤ 100). */
  subsetPercent?: number;
  /**
   * With readData: read exactly the packs this selects (by pack id, hex), e.g. a slice of the
   * pack-id space (pack-slice.ts) or the packs of some snapshots; subsetPercent then applies to them.
   */
  packFilter?: (packHex: string) => boolean;
  /** Record the damage found in the repository (default true; a read-only repository is told apart). */
  record?: boolean;
  onProgress?: (message: string, done?: number, total?: number) => void;
}

const blobKey = (type: BlobType, hex: string) => type + hex;

export async function check(repo: Repository, options: CheckOptions = {}): Promise<CheckResult> {
  const { signal } = options;
  const say = options.onProgress ?? (() => {});
  const problems: Problem[] = [];
  const add = (p: Problem) => problems.push(p);
  const stats = { snapshots: 0, trees: 0, indexFiles: 0, packs: 0, blobs: 0, packsRead: 0, bytesRead: 0 };
  const result: { damageRecorded?: string; damageCleared: string[] } = { damageCleared: [] };
  const session = await Session.start(repo, 'check', { signal });
  try {
    // Packs a pending prune condemned may vanish at any moment: their absence is not damage.
    const condemned = await loadCondemned(repo, { signal });

    say('listing packs');
    const stored = new Map<string, number>();
    for await (const o of repo.backend.list(DATA_PREFIX, { signal })) {
      const hex = idFromName(DATA_PREFIX, o.name);
      if (hex) stored.set(hex, o.size);
    }

    say('loading index');
    let unreadableIndex = 0;
    const ids = await repo.loadIndex({
      signal,
      onUnreadable: (id, e) => {
        unreadableIndex++;
        add({ kind: 'index-unreadable', severity: 'error', message: `index file ${id.slice(0, 12)} is unreadable: ${e.message}` });
      },
    });
    stats.indexFiles = ids.length + unreadableIndex;
    const known = await loadDamage(repo, {
      signal,
      onUnreadable: (id, e) => add({ kind: 'damage-unreadable', severity: 'warning', message: `damage record ${id.slice(0, 12)} is unreadable (${e.message}); the damage it records is not avoided until a check finds it again` }),
    });
    repo.damage = known;

    // Damage this run finds, by pack.
    const found = new Map<string, PackDamage>();
    const foundPack = (pack: string, problem: string): PackDamage => {
      let d = found.get(pack);
      if (!d) found.set(pack, (d = { pack, problem, blobs: [] }));
      return d;
    };

    const indexed = new Map<string, number>();
    for (const p of repo.index.packs()) indexed.set(toHex(p.packId), p.packSize);
    stats.packs = indexed.size;
    stats.blobs = repo.index.count;
    /** Packs that are gone or not what the index says: none of their copies can be relied on. */
    const unusable = new Map<string, Problem>();
    for (const [hex, size] of indexed) {
      const actual = stored.get(hex);
      if (actual === undefined) {
        if (condemned.has(hex)) continue;
        unusable.set(hex, { kind: 'pack-missing', severity: 'error', pack: hex, message: `pack ${hex.slice(0, 12)} is in the index but missing from storage` });
        foundPack(hex, 'missing from storage').blobs = undefined;
      } else if (actual !== size) {
        unusable.set(hex, { kind: 'pack-size', severity: 'error', pack: hex, message: `pack ${hex.slice(0, 12)} has ${actual} bytes, the index says ${size}` });
        foundPack(hex, `has ${actual} bytes, the index says ${size}`).blobs = undefined;
      }
    }
    for (const hex of stored.keys()) {
      if (!indexed.has(hex) && !condemned.has(hex)) {
        add({ kind: 'pack-unindexed', severity: 'warning', pack: hex, message: `pack ${hex.slice(0, 12)} is not in any index (an interrupted or running backup; \`coffer repo prune\` removes it once unused, \`coffer repo repair index\` indexes it)` });
      }
    }

    // The config's second copy (repositories made before it existed have none).
    try {
      const copy = await readConfig(repo.backend, repo.keys, CONFIG_COPY_NAME, { signal });
      if (copy.id !== repo.id) throw new CofferError('CORRUPT', `the ${CONFIG_COPY_NAME} object belongs to repository ${copy.id.slice(0, 12)}`);
    } catch (e) {
      if (!isCofferError(e, 'CORRUPT')) throw e;
      add({ kind: 'config-copy', severity: 'warning', message: `${(e as Error).message}: \`coffer repo repair config\` writes it from the config` });
    }
    if (repo.configNote) add({ kind: 'config-copy', severity: 'warning', message: repo.configNote });

    for (const s of await listSessions(repo, { signal, now: await session.storageNow({ signal }) })) {
      if (s.id === session.info.id) continue;
      if (s.unreadable) add({ kind: 'session-unreadable', severity: 'warning', message: `session object ${s.id} is unreadable; prune waits for it until it is deleted` });
      else if (s.stale) add({ kind: 'session-stale', severity: 'warning', message: `session ${s.id.slice(0, 8)} (${s.kind} on ${s.hostname}, pid ${s.pid}) stopped without ending (crashed or killed)` });
    }

    // Snapshots and trees: what every snapshot needs. A tree that cannot be read is lost with
    // everything below it (unless another copy reads: the walk reads through the index).
    say('checking snapshots');
    const snapIds = await listSnapshotIds(repo, { signal });
    const snapshots: SnapshotRef[] = [];
    for (const id of snapIds) {
      try {
        snapshots.push({ id, snapshot: await loadSnapshot(repo, id, { signal }) });
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || isCofferError(e, 'STORAGE_UNAVAILABLE')) throw e;
        if (isCofferError(e, 'NOT_FOUND')) continue;
        add({ kind: 'snapshot-unreadable', severity: 'error', snapshot: id, message: `snapshot ${id.slice(0, 12)} is unreadable: ${(e as Error).message}` });
      }
    }
    stats.snapshots = snapshots.length;
    const seenTrees = new Set<string>();
    const usedData = new Set<string>();
    /** Used blobs (type + hex) of which no copy is left, with the problem that says so. */
    const lost = new Map<string, Problem>();
    // Originals that `repair snapshots` replaced come last: what only they use is lost already,
    // and said so by the repair (a warning here, until they are forgotten).
    const replaced = new Map(snapshots.flatMap((s) => (s.snapshot.repairedFrom ? [[s.snapshot.repairedFrom, s.id] as const] : [])));
    const ordered = [...snapshots.filter((s) => !replaced.has(s.id)), ...snapshots.filter((s) => replaced.has(s.id))];
    const usedByLive = new Set<string>();
    for (const s of ordered) {
      throwIfAborted(signal);
      const live = !replaced.has(s.id);
      const severity = live ? 'error' : 'warning';
      const was = live ? '' : ` (the snapshot was repaired as ${replaced.get(s.id)!.slice(0, 12)}; \`coffer repo forget ${s.id.slice(0, 12)}\` removes it)`;
      await walkTree(repo, s.snapshot.tree, {
        enterTree: (id) => {
          if (live) usedByLive.add('tree' + id);
          if (seenTrees.has(id)) return false;
          seenTrees.add(id);
          return true;
        },
        treeError: (path, id, e) => {
          const p: Problem = { kind: 'tree-unreadable', severity, snapshot: s.id, path, blob: id, message: `tree ${id.slice(0, 12)} (${path} in snapshot ${s.id.slice(0, 12)}) is unreadable: ${(e as Error).message}${was}` };
          add(p);
          lost.set(blobKey('tree', id), p);
          const hit = repo.locate('tree', fromHex(id));
          if (hit && isCofferError(e) && !isCofferError(e, 'NOT_FOUND') && !unusable.has(toHex(hit.packId))) foundPack(toHex(hit.packId), 'a damaged tree').blobs?.push({ type: 'tree', id });
        },
        node: (_path, n) => {
          for (const c of n.content ?? []) {
            usedData.add(c);
            if (live) usedByLive.add('data' + c);
          }
        },
      }, { signal });
    }
    stats.trees = seenTrees.size;

    if (options.readData) {
      const select = options.packFilter ?? (() => true);
      const all = [...indexed.keys()].filter((h) => stored.has(h) && select(h));
      let chosen = all;
      const pct = options.subsetPercent ?? 100;
      if (pct < 100) {
        const n = Math.max(1, Math.ceil((all.length * pct) / 100));
        const pool = [...all];
        chosen = [];
        while (chosen.length < n && pool.length) chosen.push(pool.splice(randomInt(pool.length), 1)[0]!);
      }
      const chosenSet = new Set(chosen);
      const byPack = new Map([...repo.indexedPacks((hex) => chosenSet.has(hex))].map(([hex, p]) => [hex, p.entries]));
      const intact: string[] = [];
      let done = 0;
      for (const hex of chosen) {
        throwIfAborted(signal);
        say('reading packs', done++, chosen.length);
        let bytes: Buffer;
        try {
          bytes = await repo.backend.get(packName(hex), { signal });
        } catch (e) {
          if (isCofferError(e, 'NOT_FOUND') && condemned.has(hex)) continue;
          throw e;
        }
        stats.packsRead++;
        stats.bytesRead += bytes.length;
        const packProblems = readPackProblems(repo, hex, bytes, byPack.get(hex) ?? []);
        if (packProblems.length === 0) {
          if (known.hasPack(hex)) intact.push(hex);
          continue;
        }
        for (const p of packProblems) {
          if (unusable.has(hex)) continue; // said already (wrong size)
          add(p);
          const d = foundPack(hex, p.message);
          if (p.kind === 'blob-damaged' && p.blob) {
            const e = byPack.get(hex)?.find((x) => toHex(x.id) === p.blob);
            if (/header damaged/.test(p.message)) d.blobs = undefined;
            else d.blobs?.push({ type: e?.type ?? 'data', id: p.blob });
          }
        }
      }
      if (intact.length) {
        // Recorded damage that is not there any more (the pack was put back from a copy).
        await retireDamage(repo, new Set(intact), known, { signal });
        for (const hex of intact) say(`pack ${hex.slice(0, 12)} reads intact now: its damage record was cleared`);
      }
      result.damageCleared = intact;
    }

    // Everything known to be damaged: recorded before, and found now.
    const damage = new DamageSet();
    for (const e of known.entries) if (!result.damageCleared.includes(e.pack)) damage.add(e.record, { version: 1, time: e.time, host: '', foundBy: e.foundBy, packs: [e] });
    for (const d of found.values()) damage.add('', { version: 1, time: '', host: '', foundBy: 'check', packs: [d] });
    const sound = (h: IndexHit) => !unusable.has(toHex(h.packId)) && !damage.isDamaged(toHex(h.packId), h.entry.type, toHex(h.entry.id));

    // A used blob is lost when no copy of it is sound; damage to a copy that has a sound twin
    // loses nothing.
    const losingPacks = new Set<string>();
    const judge = (type: BlobType, hex: string) => {
      const hits = repo.index.lookupAll(fromHex(hex), type);
      if (hits.length === 0) {
        lost.set(blobKey(type, hex), { kind: 'blob-missing', severity: 'error', blob: hex, message: `${type} blob ${hex.slice(0, 12)} is not in the index` });
        return;
      }
      if (hits.some(sound)) return;
      if (usedByLive.has(blobKey(type, hex))) for (const h of hits) losingPacks.add(toHex(h.packId));
      const where = hits.map((h) => toHex(h.packId).slice(0, 12)).join(', ');
      lost.set(blobKey(type, hex), { kind: 'blob-lost', severity: 'error', blob: hex, pack: toHex(hits[0]!.packId), message: `${type} blob ${hex.slice(0, 12)} has no readable copy (pack ${where})` });
    };
    for (const c of usedData) judge('data', c);
    for (const t of seenTrees) {
      if (!lost.has(blobKey('tree', t))) judge('tree', t);
      else if (usedByLive.has(blobKey('tree', t))) for (const h of repo.index.lookupAll(fromHex(t), 'tree')) losingPacks.add(toHex(h.packId));
    }
    // Per blob only those the index does not know at all; the rest is said per pack, and the
    // affected files are listed below. Lost to replaced originals only: a warning.
    for (const [k, p] of lost) {
      if (p.kind !== 'blob-missing' && p.kind !== 'blob-lost') continue;
      if (!usedByLive.has(k)) {
        p.severity = 'warning';
        p.message += ' (only snapshots that were repaired use it; forget them to drop it)';
      }
      if (p.kind === 'blob-missing') add(p);
    }

    // Pack damage loses data only where a used blob has no other copy.
    const good = ' (every blob in it that a snapshot uses has a good copy elsewhere: nothing is lost; `coffer repo repair packs` takes it out of use)';
    for (const p of unusable.values()) add(losingPacks.has(p.pack!) ? p : { ...p, severity: 'warning', message: p.message + good });
    for (const p of problems) {
      if ((p.kind === 'pack-damaged' || p.kind === 'blob-damaged') && p.pack && !losingPacks.has(p.pack) && p.severity === 'error') {
        p.severity = 'warning';
        p.message += good;
      }
    }
    // Records of packs that are neither indexed nor stored any more (a repair quarantined them, or
    // a prune deleted them after they were recorded) say nothing: retired.
    const moot = [...known.byPack().keys()].filter((p) => !indexed.has(p) && !stored.has(p));
    if (moot.length && options.record !== false) {
      await retireDamage(repo, new Set(moot), known, { signal });
      result.damageCleared.push(...moot);
    }
    for (const [pack] of known.byPack()) {
      if (found.has(pack) || unusable.has(pack) || result.damageCleared.includes(pack)) continue;
      const e = known.entries.filter((x) => x.pack === pack);
      const blobs = e.some((x) => !x.blobs) ? 'the whole pack' : `${new Set(e.flatMap((x) => x.blobs!.map((b) => b.id))).size} blob(s)`;
      add({
        kind: 'damage-known', severity: losingPacks.has(pack) ? 'error' : 'warning', pack,
        message: `pack ${pack.slice(0, 12)}: ${blobs} recorded as damaged (${e[0]!.problem}; found by ${e[0]!.foundBy} ${e[0]!.time})${losingPacks.has(pack) ? '' : good}`,
      });
    }

    // Recorded, so that writers stop trusting it.
    if (found.size && options.record !== false) {
      try {
        result.damageRecorded = await repo.noteDamage('check', [...found.values()], { signal });
      } catch (e) {
        if (isCofferError(e, 'CANCELLED')) throw e;
        say(`cannot record the damage in the repository: ${(e as Error).message}`);
      }
    }

    // What the damage affects: every file (and directory) of which no good copy is left.
    const affected: Affected[] = [];
    if (lost.size) {
      say('finding affected files');
      for (const s of snapshots) {
        await walkTree(repo, s.snapshot.tree, {
          treeError: (path, id) => {
            affected.push({ snapshot: s.id, path, blob: id });
          },
          node: (path, n) => {
            for (const c of n.content ?? []) if (lost.has(blobKey('data', c))) affected.push({ snapshot: s.id, path, blob: c });
            if (n.subtree && lost.has(blobKey('tree', n.subtree))) affected.push({ snapshot: s.id, path, blob: n.subtree });
          },
        }, { signal });
      }
    }
    const ok = !problems.some((p) => p.severity === 'error');
    return { ...result, ok, problems, affected, advice: advise(problems), stats };
  } finally {
    await session.end().catch(() => {});
  }
}


/** The repair commands for the problems found, in the order they should run. */
function advise(problems: Problem[]): string[] {
  const has = (...kinds: ProblemKind[]) => problems.some((p) => kinds.includes(p.kind));
  const out: string[] = [];
  if (has('config-copy')) out.push('`coffer repo repair config` rewrites the damaged or missing copy of the config from the good one');
  if (has('index-unreadable', 'pack-unindexed')) out.push('`coffer repo repair index` rebuilds the index from the packs (keeping what the old index knew of damaged packs)');
  const packKinds: ProblemKind[] = ['pack-missing', 'pack-size', 'pack-damaged', 'blob-damaged', 'damage-known'];
  if (problems.some((p) => packKinds.includes(p.kind) && p.severity === 'error')) {
    out.push('`coffer repo backup` of the intact sources stores damaged data again (and heals every snapshot that uses it); `coffer repo repair packs` then salvages what can be read of the damaged packs and quarantines them');
  } else if (has(...packKinds)) {
    out.push('`coffer repo repair packs` takes the damaged packs out of use (nothing is lost: every blob in them has a good copy)');
  }
  const lostKinds: ProblemKind[] = ['blob-missing', 'blob-lost', 'tree-unreadable', 'snapshot-unreadable'];
  if (problems.some((p) => lostKinds.includes(p.kind) && p.severity === 'error')) out.push('`coffer repo repair snapshots` rewrites the snapshots that use lost data so that everything else in them stays restorable');
  else if (has(...lostKinds)) out.push('`coffer repo repair snapshots --forget` (or `coffer repo forget`) removes the originals of repaired snapshots, which use lost data');
  return out;
}

/** Verifies one downloaded pack against its name, its own trailer and the index. */
function readPackProblems(repo: Repository, hex: string, bytes: Buffer, indexed: IndexEntry[]): Problem[] {
  const out: Problem[] = [];
  const short = hex.slice(0, 12);
  if (toHex(contentHash(bytes)) !== hex) out.push({ kind: 'pack-damaged', severity: 'error', pack: hex, message: `pack ${short}: content does not match its name (hash mismatch)` });
  let packKey: Buffer | undefined;
  try {
    packKey = packKeyFromHeader(repo.keys, bytes.subarray(0, PACK_HEADER_SIZE));
  } catch (e) {
    out.push({ kind: 'pack-damaged', severity: 'error', pack: hex, message: `pack ${short}: header unreadable (${(e as Error).message})` });
  }
  let trailer: PackEntry[] | undefined;
  if (packKey) {
    try {
      const f = parsePackFooter(bytes.subarray(Math.max(0, bytes.length - 64)), bytes.length);
      trailer = decodePackTrailer(repo.keys, bytes.subarray(0, PACK_HEADER_SIZE), bytes.subarray(f.trailerOffset, f.trailerOffset + f.trailerLength), bytes.length);
    } catch (e) {
      out.push({ kind: 'pack-damaged', severity: 'error', pack: hex, message: `pack ${short}: trailer unreadable (${(e as Error).message})` });
    }
  }
  if (trailer) {
    const t = new Map(trailer.map((e) => [e.type + toHex(e.id), e]));
    for (const e of indexed) {
      const m = t.get(e.type + toHex(e.id));
      if (!m || m.offset !== e.offset || m.length !== e.length) {
        out.push({ kind: 'pack-damaged', severity: 'error', pack: hex, blob: toHex(e.id), message: `pack ${short}: the index lists blob ${toHex(e.id).slice(0, 12)} where the pack's own trailer does not` });
      }
    }
  }
  for (const e of indexed) {
    if (!packKey) {
      out.push({ kind: 'blob-damaged', severity: 'error', pack: hex, blob: toHex(e.id), message: `blob ${toHex(e.id).slice(0, 12)} in pack ${short} cannot be decrypted (pack header damaged)` });
      continue;
    }
    try {
      if (e.offset + e.length > bytes.length) throw new Error('beyond the end of the pack');
      decodeBlob(repo.keys, packKey, e.nonceIndex, e.type, e.id, e.compressed, e.rawLength, bytes.subarray(e.offset, e.offset + e.length));
    } catch (err) {
      out.push({ kind: 'blob-damaged', severity: 'error', pack: hex, blob: toHex(e.id), message: `${e.type} blob ${toHex(e.id).slice(0, 12)} in pack ${short} is damaged: ${(err as Error).message}` });
    }
  }
  return out;
}
