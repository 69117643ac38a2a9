// Object Lock for a repository on storage that locks objects (an immutable storage unit: S3 with
// Object Lock in COMPLIANCE mode, see storage/backend.ts ObjectLocks).
//
// Which objects are locked: everything a restore needs and nothing else, i.e. the config and its
// copy, the key files, packs, index files and snapshots. Session heartbeats, GC plans and damage
// records are rewritten or removed as the repository works and stay unlocked.
//
// Writers lock what they write until the date the server gives them (the longest retention of
// the copies they write, at least the unit's minimum lock). But deduplication makes a new copy
// reuse packs an older, shorter-lived copy wrote: extendLocks() moves each object's lock to the
// latest expiry of the copies whose snapshots reference it, so that a pack shared by a 14-day
// and a 7-year copy stays locked for 7 years. Per object the required date is the latest date of
// the snapshots that reach it: a snapshot object its own date, a tree or data blob's pack the
// dates of the snapshots whose trees reach the blob, an index file in force the latest date of
// the packs it lists, the config and keys the latest date of all. Locks are only ever extended.
//
// To stay cheap on large repositories, a ledger in the agent's cache remembers the date each
// object is known to be locked until (a COMPLIANCE lock never gets shorter, so a remembered date
// stays true) and which packs each index file lists (index files are content-addressed, so that
// never changes): a run sends a request only for objects that are new or whose required date
// grew, and reads only index files it has not read before. A lost ledger costs requests, not
// correctness.

import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { fromHex, toHex } from '../engine/hash.ts';
import type { CallOptions } from '../storage/backend.ts';
import { CONFIG_COPY_NAME, CONFIG_NAME, DATA_PREFIX, INDEX_PREFIX, KEYS_PREFIX, SNAPSHOTS_PREFIX, indexName, packName, snapshotName } from './layout.ts';
import type { Repository } from './repository.ts';
import { loadSnapshot } from './snapshot.ts';
import { walkTree } from './walk.ts';

/** Targets whose date is closer than this are left out: their lock could end before the request arrives. */
const PAST_MARGIN_MS = 2000;

/** True for the objects an immutable repository locks (see the header). */
export function isLockedObject(name: string): boolean {
  return name === CONFIG_NAME || name === CONFIG_COPY_NAME || [KEYS_PREFIX, DATA_PREFIX, INDEX_PREFIX, SNAPSHOTS_PREFIX].some((p) => name.startsWith(p));
}

/** One snapshot and the date until which everything it needs must stay locked (ms since the epoch). */
export interface LockTarget {
  snapshot: string;
  until: number;
}

export interface ExtendLocksOptions extends CallOptions {
  /** Where the ledger is kept (a JSON file in the agent's cache); left out: no ledger (every object is asked). */
  ledgerPath?: string;
  onProgress?: (message: string) => void;
}

export interface ExtendLocksResult {
  snapshots: number;
  /** Objects whose required date was compared with their lock. */
  objects: number;
  /** Objects whose lock was moved later. */
  extended: number;
  /** Objects already locked long enough (known from the ledger, or found so by the storage). */
  alreadyLocked: number;
  /** Objects the index or a snapshot names that are not in storage (damage for `repo check`). */
  missing: string[];
  /** Snapshots that could not be read (their objects were not extended; the job ends with warnings). */
  unreadable: Array<{ snapshot: string; error: string }>;
  /** The latest date anything is now locked until (ms), or null when there was nothing to lock. */
  latest: number | null;
}

interface Ledger {
  version: 1;
  /** Object name → the date it is known to be locked until. */
  locks: Record<string, number>;
  /** Index file id → the packs it lists. */
  indexPacks: Record<string, string[]>;
}

async function loadLedger(path: string | undefined): Promise<Ledger> {
  const empty: Ledger = { version: 1, locks: {}, indexPacks: {} };
  if (!path) return empty;
  try {
    const l = JSON.parse(await readFile(path, 'utf8')) as Partial<Ledger>;
    if (l.version !== 1 || typeof l.locks !== 'object' || typeof l.indexPacks !== 'object' || !l.locks || !l.indexPacks) return empty;
    return l as Ledger;
  } catch {
    // Missing or damaged: start again (it is a cache).
    return empty;
  }
}

async function saveLedger(path: string | undefined, ledger: Ledger): Promise<void> {
  if (!path) return;
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(ledger), { mode: 0o600 });
  await rename(tmp, path);
}

/**
 * Extends the locks of every object the target snapshots need to the latest date among the
 * snapshots that need it (see the header). The repository's backend must have locks.
 */
export async function extendLocks(repo: Repository, targets: readonly LockTarget[], options: ExtendLocksOptions = {}): Promise<ExtendLocksResult> {
  const { signal } = options;
  const locks = repo.backend.locks;
  if (!locks) throw new CofferError('USAGE', `Cannot extend locks in ${repo.backend.location}: this storage has no Object Lock`, { hint: 'Only immutable storage units (S3 with Object Lock) have locks to extend.' });
  const say = options.onProgress ?? (() => {});
  const result: ExtendLocksResult = { snapshots: 0, objects: 0, extended: 0, alreadyLocked: 0, missing: [], unreadable: [], latest: null };
  const ids = await repo.loadIndex({ signal });
  const required = new Map<string, number>();
  const need = (name: string, until: number) => {
    if ((required.get(name) ?? -Infinity) < until) required.set(name, until);
  };
  const packOf = (type: 'tree' | 'data', id: string): string[] => repo.index.lookupAll(fromHex(id), type).map((h) => toHex(h.packId));

  // 1. Snapshots, latest date first: a tree reached before was reached with a date at least as late.
  //    A date about to pass needs no lock (the storage refuses a retain-until in the past).
  const soon = Date.now() + PAST_MARGIN_MS;
  const ordered = targets.filter((t) => t.until > soon).sort((a, b) => b.until - a.until);
  const treesSeen = new Set<string>();
  let horizon = -Infinity;
  for (const t of ordered) {
    throwIfAborted(signal);
    let snap;
    try {
      snap = await loadSnapshot(repo, t.snapshot, { signal });
    } catch (e) {
      if (isCofferError(e, 'CANCELLED')) throw e;
      result.unreadable.push({ snapshot: t.snapshot, error: (e as Error).message });
      continue;
    }
    result.snapshots++;
    horizon = Math.max(horizon, t.until);
    need(snapshotName(t.snapshot), t.until);
    const missingBlob = (what: string) => result.missing.push(what);
    await walkTree(repo, snap.tree, {
      enterTree: (id) => {
        if (treesSeen.has(id)) return false;
        treesSeen.add(id);
        const packs = packOf('tree', id);
        if (!packs.length) missingBlob(`tree ${id}`);
        for (const p of packs) need(packName(p), t.until);
        return true;
      },
      node: (_path, n) => {
        for (const c of n.content ?? []) {
          const packs = packOf('data', c);
          if (!packs.length) missingBlob(`blob ${c}`);
          for (const p of packs) need(packName(p), t.until);
        }
      },
      treeError: (path, id, e) => {
        throw new CofferError('CHECK_FAILED', `Cannot extend the locks of snapshot ${t.snapshot.slice(0, 12)}: tree ${id.slice(0, 12)} at ${path} is unreadable (${(e as Error).message})`, {
          hint: 'Run `coffer repo check` and repair the repository; nothing was shortened.',
        });
      },
    }, { signal });
  }
  if (result.snapshots === 0) return result;

  // 2. Index files in force: the latest date of the packs each lists.
  const ledger = await loadLedger(options.ledgerPath);
  const indexPacks: Record<string, string[]> = {};
  // A superseded file (a prune could not delete it yet) is not read: it needs no longer lock.
  const superseded = new Set(repo.index.supersededFiles());
  for (const id of ids.filter((f) => !superseded.has(f))) {
    throwIfAborted(signal);
    let packs = ledger.indexPacks[id];
    if (!packs) {
      try {
        packs = (await repo.loadIndexFile(id, { signal })).packs.map((p) => toHex(p.packId));
      } catch (e) {
        // Gone since the listing: a prune consolidated it; the file that replaced it is locked next run.
        if (isCofferError(e, 'NOT_FOUND')) continue;
        throw e;
      }
    }
    indexPacks[id] = packs;
    let until = -Infinity;
    for (const p of packs) until = Math.max(until, required.get(packName(p)) ?? -Infinity);
    if (until > -Infinity) need(indexName(id), until);
  }

  // 3. What every snapshot needs: the config, its copy and the key files.
  for (const name of [CONFIG_NAME, CONFIG_COPY_NAME]) need(name, horizon);
  for await (const o of repo.backend.list(KEYS_PREFIX, { signal })) need(o.name, horizon);

  // 4. Extend what is not locked long enough already.
  const known: Record<string, number> = {};
  let done = 0;
  for (const [name, until] of required) {
    throwIfAborted(signal);
    result.objects++;
    const have = ledger.locks[name];
    if (have !== undefined && have >= until) {
      known[name] = have;
      result.alreadyLocked++;
    } else {
      try {
        const now = await locks.extend(name, until, { signal });
        known[name] = now;
        if (now > until) result.alreadyLocked++;
        else result.extended++;
      } catch (e) {
        if (!isCofferError(e, 'NOT_FOUND')) throw e;
        // config.copy is optional (repositories made before it existed).
        if (name !== CONFIG_COPY_NAME) result.missing.push(name);
        continue;
      }
    }
    result.latest = Math.max(result.latest ?? 0, known[name]!);
    if (++done % 1000 === 0) say(`${done} of ${required.size} objects checked, ${result.extended} extended`);
  }
  // Keep what is still relevant: entries for objects no target needs any more would only grow the file.
  await saveLedger(options.ledgerPath, { version: 1, locks: { ...pick(ledger.locks, required), ...known }, indexPacks });
  say(`${result.extended} lock(s) extended, ${result.alreadyLocked} already long enough, across ${result.snapshots} snapshot(s)`);
  return result;
}

function pick(locks: Record<string, number>, keep: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(locks)) if (keep.has(k)) out[k] = v;
  return out;
}
