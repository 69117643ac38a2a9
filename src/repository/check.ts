// `repo check`: structure (every index file, snapshot and tree readable, every reference
// resolves, every indexed pack present with the right size) and, with readData, every byte
// (each selected pack's hash, trailer and blobs). Damage is reported by pack and blob, and by
// the snapshots and files it affects, so an administrator knows exactly what a restore would
// lose and which clone to fall back to.

import { randomInt } from 'node:crypto';
import { isCofferError, throwIfAborted } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import { contentHash, fromHex, toHex } from '../engine/hash.ts';
import { decodeBlob } from '../engine/blob.ts';
import { decodePackTrailer, packKeyFromHeader, parsePackFooter, PACK_HEADER_SIZE, type PackEntry } from '../engine/pack.ts';
import type { IndexEntry, IndexFileContent } from './index/index-file.ts';
import { DATA_PREFIX, idFromName, packName } from './layout.ts';
import { loadCondemned } from './prune.ts';
import type { Repository } from './repository.ts';
import { Session, listSessions } from './session.ts';
import { listSnapshotIds, loadSnapshot, type SnapshotRef } from './snapshot.ts';
import { walkTree } from './walk.ts';

export type ProblemKind =
  | 'index-unreadable'
  | 'snapshot-unreadable'
  | 'tree-unreadable'
  | 'blob-missing'
  | 'pack-missing'
  | 'pack-size'
  | 'pack-damaged'
  | 'blob-damaged'
  | 'pack-unindexed'
  | 'session-stale'
  | 'session-unreadable';

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
  /** For every damaged or missing blob: the snapshots and files that need it. */
  affected: Affected[];
  stats: { snapshots: number; trees: number; indexFiles: number; packs: number; blobs: number; packsRead: number; bytesRead: number };
}

export interface CheckOptions extends CallOptions {
  readData?: boolean;
  /** With readData: read only this percentage of the packs, chosen at random (0 < n ≤ 100). */
  subsetPercent?: number;
  onProgress?: (message: string, done?: number, total?: number) => void;
}

export async function check(repo: Repository, options: CheckOptions = {}): Promise<CheckResult> {
  const { signal } = options;
  const say = options.onProgress ?? (() => {});
  const problems: Problem[] = [];
  const add = (p: Problem) => problems.push(p);
  const stats = { snapshots: 0, trees: 0, indexFiles: 0, packs: 0, blobs: 0, packsRead: 0, bytesRead: 0 };
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
    const ids = await repo.listIndexFiles({ signal });
    stats.indexFiles = ids.length;
    const damagedIndex = new Set<string>();
    await repo.index.sync(ids.map(fromHex), async (id): Promise<IndexFileContent> => {
      try {
        return await repo.loadIndexFile(toHex(id), { signal });
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || isCofferError(e, 'STORAGE_UNAVAILABLE')) throw e;
        damagedIndex.add(toHex(id));
        add({ kind: 'index-unreadable', severity: 'error', message: `index file ${toHex(id).slice(0, 12)} is unreadable: ${(e as Error).message}` });
        return { supersedes: [], packs: [] };
      }
    }, { signal });

    const indexed = new Map<string, number>();
    for (const p of repo.index.packs()) indexed.set(toHex(p.packId), p.packSize);
    stats.packs = indexed.size;
    stats.blobs = repo.index.count;
    for (const [hex, size] of indexed) {
      const actual = stored.get(hex);
      if (actual === undefined) {
        if (!condemned.has(hex)) add({ kind: 'pack-missing', severity: 'error', pack: hex, message: `pack ${hex.slice(0, 12)} is in the index but missing from storage` });
      } else if (actual !== size) {
        add({ kind: 'pack-size', severity: 'error', pack: hex, message: `pack ${hex.slice(0, 12)} has ${actual} bytes, the index says ${size}` });
      }
    }
    for (const hex of stored.keys()) {
      if (!indexed.has(hex) && !condemned.has(hex)) {
        add({ kind: 'pack-unindexed', severity: 'warning', pack: hex, message: `pack ${hex.slice(0, 12)} is not in any index (an interrupted or running backup; \`coffer repo prune\` removes it once unused, \`coffer repo rebuild-index\` indexes it)` });
      }
    }

    for (const s of await listSessions(repo, { signal, now: await session.storageNow({ signal }) })) {
      if (s.id === session.info.id) continue;
      if (s.unreadable) add({ kind: 'session-unreadable', severity: 'warning', message: `session object ${s.id} is unreadable; prune waits for it until it is deleted` });
      else if (s.stale) add({ kind: 'session-stale', severity: 'warning', message: `session ${s.id.slice(0, 8)} (${s.kind} on ${s.hostname}, pid ${s.pid}) stopped without ending (crashed or killed)` });
    }

    // Blobs that are missing or damaged, keyed by type + hex.
    const bad = new Map<string, Problem>();
    const missingPacks = new Set(problems.filter((p) => p.kind === 'pack-missing').map((p) => p.pack!));

    // Snapshots and trees.
    say('checking snapshots');
    const snapIds = await listSnapshotIds(repo, { signal });
    const snapshots: SnapshotRef[] = [];
    for (const id of snapIds) {
      try {
        snapshots.push({ id, snapshot: await loadSnapshot(repo, id, { signal }) });
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || isCofferError(e, 'STORAGE_UNAVAILABLE')) throw e;
        add({ kind: 'snapshot-unreadable', severity: 'error', snapshot: id, message: `snapshot ${id.slice(0, 12)} is unreadable: ${(e as Error).message}` });
      }
    }
    stats.snapshots = snapshots.length;
    const seenTrees = new Set<string>();
    const seenBlobs = new Set<string>();
    for (const s of snapshots) {
      throwIfAborted(signal);
      await walkTree(repo, s.snapshot.tree, {
        enterTree: (id) => {
          if (seenTrees.has(id)) return false;
          seenTrees.add(id);
          return true;
        },
        treeError: (path, id, e) => {
          const p: Problem = { kind: 'tree-unreadable', severity: 'error', snapshot: s.id, path, blob: id, message: `tree ${id.slice(0, 12)} (${path} in snapshot ${s.id.slice(0, 12)}) is unreadable: ${(e as Error).message}` };
          add(p);
          bad.set('tree' + id, p);
        },
        node: (path, n) => {
          for (const c of n.content ?? []) {
            if (seenBlobs.has(c)) continue;
            seenBlobs.add(c);
            const hit = repo.index.lookup(fromHex(c), 'data');
            if (!hit) {
              const p: Problem = { kind: 'blob-missing', severity: 'error', blob: c, snapshot: s.id, path, message: `data blob ${c.slice(0, 12)} is not in the index` };
              add(p);
              bad.set('data' + c, p);
            } else if (missingPacks.has(toHex(hit.packId))) {
              bad.set('data' + c, { kind: 'blob-missing', severity: 'error', blob: c, pack: toHex(hit.packId), message: `data blob ${c.slice(0, 12)} is in missing pack ${toHex(hit.packId).slice(0, 12)}` });
            }
          }
        },
      }, { signal });
    }
    stats.trees = seenTrees.size;

    if (options.readData) {
      const all = [...indexed.keys()].filter((h) => stored.has(h));
      let chosen = all;
      const pct = options.subsetPercent ?? 100;
      if (pct < 100) {
        const n = Math.max(1, Math.ceil((all.length * pct) / 100));
        const pool = [...all];
        chosen = [];
        while (chosen.length < n && pool.length) chosen.push(pool.splice(randomInt(pool.length), 1)[0]!);
      }
      const byPack = new Map<string, IndexEntry[]>();
      const chosenSet = new Set(chosen);
      for (const { packId, entry } of repo.index.entries()) {
        const h = toHex(packId);
        if (!chosenSet.has(h)) continue;
        let l = byPack.get(h);
        if (!l) byPack.set(h, (l = []));
        l.push(entry);
      }
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
        for (const p of readPackProblems(repo, hex, bytes, byPack.get(hex) ?? [])) {
          add(p);
          if (p.blob) bad.set((p.kind === 'blob-damaged' ? (byPack.get(hex)?.find((e) => toHex(e.id) === p.blob)?.type ?? 'data') : 'data') + p.blob, p);
        }
      }
    }

    // What the damage affects: every file (and directory) whose data is gone.
    const affected: Affected[] = [];
    if (bad.size) {
      say('finding affected files');
      for (const s of snapshots) {
        await walkTree(repo, s.snapshot.tree, {
          treeError: (path, id) => {
            affected.push({ snapshot: s.id, path, blob: id });
          },
          node: (path, n) => {
            for (const c of n.content ?? []) if (bad.has('data' + c)) affected.push({ snapshot: s.id, path, blob: c });
            if (n.subtree && bad.has('tree' + n.subtree)) affected.push({ snapshot: s.id, path, blob: n.subtree });
          },
        }, { signal });
      }
    }
    return { ok: !problems.some((p) => p.severity === 'error'), problems, affected, stats };
  } finally {
    await session.end().catch(() => {});
  }
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
