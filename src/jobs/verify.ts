// Verification of a repository for the server's verify jobs (issue 10): check() with every byte
// of a chosen set of packs read back and every blob in them decrypted and hashed, reported in a
// shape that travels over the agent protocol. The packs are a slice of the pack-id space (a
// rotating share of the unit, pack-slice.ts), optionally narrowed to the packs that hold the
// blobs of given snapshots (one image's copy). The structure (snapshots, trees, index, pack
// sizes) is always checked whole: it is small next to the data, and damage there hides files.
//
// Damage found is recorded in the repository by check(), so that writers stop deduplicating
// against it; `affected` names, per snapshot, each file whose data has no good copy left.

import { throwIfAborted } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import { fromHex, toHex } from '../engine/hash.ts';
import { check, type Affected, type Problem } from '../repository/check.ts';
import { ALL_PACKS, inSlice, type PackSlice } from '../repository/pack-slice.ts';
import type { Repository } from '../repository/repository.ts';
import { loadSnapshot } from '../repository/snapshot.ts';
import { walkTree } from '../repository/walk.ts';

export interface VerifyOptions extends CallOptions {
  /** The packs to read, by id prefix (default: all). */
  slice?: PackSlice;
  /** Read only packs holding blobs of these snapshots (full ids); default: every pack of the slice. */
  snapshots?: readonly string[];
  /** Problems and affected files listed at most (the counts say how many there were). */
  maxListed?: number;
  onProgress?: (message: string, done?: number, total?: number) => void;
}

export interface VerifyReport {
  ok: boolean;
  /** Packs in the index, and of them those this run read back (and their bytes). */
  packs: number;
  packsRead: number;
  bytesRead: number;
  snapshots: number;
  /** Problems found, errors first (at most maxListed), and how many there were. */
  problems: Problem[];
  problemCount: number;
  errors: number;
  /** Files (and directories) with no good copy of their data left, per snapshot (at most maxListed). */
  affected: Affected[];
  affectedCount: number;
  /** Packs found damaged (missing, wrong size, unreadable or with damaged blobs). */
  damagedPacks: string[];
  /** The damage record written for what this run found, if any. */
  damageRecorded?: string;
  /** Packs whose recorded damage this run found gone. */
  damageCleared: string[];
  advice: string[];
}

const DAMAGE_KINDS = new Set(['pack-missing', 'pack-size', 'pack-damaged', 'blob-damaged', 'damage-known']);

/** The packs holding the trees and data of `snapshotIds` (every copy of each blob the index lists). */
export async function packsOfSnapshots(repo: Repository, snapshotIds: readonly string[], options: CallOptions = {}): Promise<Set<string>> {
  const packs = new Set<string>();
  const seen = new Set<string>();
  const add = (type: 'tree' | 'data', hex: string) => {
    for (const hit of repo.index.lookupAll(fromHex(hex), type)) packs.add(toHex(hit.packId));
  };
  for (const id of snapshotIds) {
    throwIfAborted(options.signal);
    let snapshot;
    try {
      snapshot = await loadSnapshot(repo, id, options);
    } catch {
      continue; // check() reports an unreadable or missing snapshot
    }
    await walkTree(repo, snapshot.tree, {
      enterTree: (tree) => {
        add('tree', tree);
        if (seen.has(tree)) return false;
        seen.add(tree);
        return true;
      },
      // A tree that does not load: its pack is selected above, and check() names the damage.
      treeError: () => {},
      node: (_path, n) => {
        for (const c of n.content ?? []) add('data', c);
      },
    }, options);
  }
  return packs;
}

/** Checks the repository, reading back the packs `options` selects. */
export async function verifyRepository(repo: Repository, options: VerifyOptions = {}): Promise<VerifyReport> {
  const { signal } = options;
  const slice = options.slice ?? ALL_PACKS;
  let ofSnapshots: Set<string> | undefined;
  if (options.snapshots) {
    await repo.loadIndex({ signal });
    options.onProgress?.(`finding the packs of ${options.snapshots.length} snapshot(s)`);
    ofSnapshots = await packsOfSnapshots(repo, options.snapshots, { signal });
  }
  const r = await check(repo, {
    signal,
    readData: true,
    packFilter: (hex) => inSlice(slice, hex) && (ofSnapshots?.has(hex) ?? true),
    onProgress: options.onProgress,
  });
  const max = options.maxListed ?? 1000;
  const problems = [...r.problems].sort((a, b) => (a.severity === b.severity ? 0 : a.severity === 'error' ? -1 : 1));
  const damagedPacks = [...new Set(r.problems.filter((p) => DAMAGE_KINDS.has(p.kind) && p.pack).map((p) => p.pack!))];
  return {
    ok: r.ok,
    packs: r.stats.packs,
    packsRead: r.stats.packsRead,
    bytesRead: r.stats.bytesRead,
    snapshots: r.stats.snapshots,
    problems: problems.slice(0, max),
    problemCount: problems.length,
    errors: problems.filter((p) => p.severity === 'error').length,
    affected: r.affected.slice(0, max),
    affectedCount: r.affected.length,
    damagedPacks,
    ...(r.damageRecorded ? { damageRecorded: r.damageRecorded } : {}),
    damageCleared: r.damageCleared,
    advice: r.advice,
  };
}
