// Garbage collection that is safe while other processes keep backing up, without a lock that
// stops them. Two phases, possibly in different runs:
//
// MARK: find packs no snapshot needs (and repack the live blobs of mostly-unused packs), then
//   1. write the plan gc/<id> listing the condemned packs, THEN
//   2. list live sessions and write gc/<id>.ready naming them.
//   A writer registers its session before it reads gc/. So a writer either was live at step 2
//   (and is named in .ready) or started after it and sees the plan, and then never reuses a
//   blob from a condemned pack (Repository.hasBlob).
// SWEEP: a plan is swept once every session named in its .ready has ended (or gone stale) and
//   its grace period has passed. The sweep recomputes what every snapshot uses now; a condemned
//   pack holding the only copy of a blob a snapshot uses after all (a waited-for session reused
//   it) is kept; a repacked pack, whose live blobs were copied at mark, goes. Then: write a new index
//   that omits the deleted packs, in files of at most INDEX_FILE_ENTRIES entries, the last of
//   which supersedes every index file read; delete the superseded index files, delete the
//   packs, delete the plan. A crash between any two steps
//   leaves a valid repository, and the next prune finishes the job.
//
// Nothing is deleted unless every listing and every snapshot and tree read succeeded.
//
// On storage with Object Lock (an immutable unit) a pack or index file may be locked past the
// time nothing needs it. Prune never tries to delete a locked pack: mark neither condemns nor
// repacks one (it asks the storage for the retain-until date of each candidate), and sweep asks
// again before it writes the index, so that a pack it cannot delete stays in the index; one that
// a delete refuses after all (a lock extended meanwhile) is a pack no index lists, which the next
// mark finds and condemns again. A superseded index file that is locked stays where it is, harmless:
// the index file each prune writes supersedes every listed file, superseded ones too, so that
// none comes back into force. What was left is counted (packsLocked, bytesLocked, indexFilesLocked) with the
// date the last of it can go (lockedUntil); a later prune deletes it then.

import { randomBytes } from 'node:crypto';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { lockedUntilOf, type CallOptions } from '../storage/backend.ts';
import { openObject, sealObject } from '../engine/envelope.ts';
import { fromHex, toHex } from '../engine/hash.ts';
import type { IndexEntry, IndexPack } from './index/index-file.ts';
import { DATA_PREFIX, GC_PREFIX, idFromName, indexName, packName } from './layout.ts';
import { BlobSaver, type Encoder } from './packer.ts';
import type { Repository } from './repository.ts';
import { Session, assertSoleMaintenance, listSessions, type SessionTiming } from './session.ts';
import { loadAllSnapshots } from './snapshot.ts';
import { walkTree } from './walk.ts';

interface GcPlan {
  version: 1;
  id: string;
  created: number;
  /** Packs to delete at sweep unless a snapshot uses them by then. */
  packs: string[];
}

interface GcReady {
  version: 1;
  /** Sessions that were live when the plan was complete; the sweep waits for them. */
  waitFor: string[];
}

export interface PruneOptions extends CallOptions {
  dryRun?: boolean;
  /** Minimum time between mark and sweep (ms). Default 0: the session protocol is what makes it safe. */
  graceMs?: number;
  /** Repack a pack when more than this fraction of its bytes is unused (default 0.2). */
  repackThreshold?: number;
  timing?: SessionTiming;
  encoder?: Encoder;
  onProgress?: (message: string) => void;
  /** Test hook: called between the steps of a sweep (to simulate a crash). */
  onStep?: (step: string) => void;
  /** Blob entries per index file written by the sweep (default INDEX_FILE_ENTRIES). */
  indexFileEntries?: number;
}

export interface PruneResult {
  packsDeleted: number;
  bytesDeleted: number;
  indexFilesDeleted: number;
  packsCondemned: number;
  bytesCondemned: number;
  packsRepacked: number;
  blobsRepacked: number;
  plansWaiting: number;
  packsKept: number;
  /** Unused packs left because they are locked (Object Lock) until a later date, and their bytes. */
  packsLocked: number;
  bytesLocked: number;
  /** Superseded index files left because they are locked. */
  indexFilesLocked: number;
  /** When the last object left because of its lock may go (ms since the epoch, storage clock); null: none was left. */
  lockedUntil: number | null;
  dryRun: boolean;
}

/** The retain-until date of an object still locked at `now`; undefined when it is not (or the storage has no locks). */
async function lockedAfter(repo: Repository, name: string, now: number, options?: CallOptions): Promise<number | undefined> {
  const locks = repo.backend.locks;
  if (!locks) return undefined;
  try {
    const until = await locks.lockedUntil(name, options);
    return until !== undefined && until > now ? until : undefined;
  } catch (e) {
    if (isCofferError(e, 'NOT_FOUND')) return undefined;
    throw e;
  }
}

function noteLocked(result: PruneResult, until: number | null | undefined): void {
  if (typeof until === 'number') result.lockedUntil = Math.max(result.lockedUntil ?? 0, until);
}

/** The packs a prune already counted as locked: a sweep and the mark after it may both meet one. */
const lockedPacks = new WeakMap<PruneResult, Set<string>>();

function noteLockedPack(result: PruneResult, hex: string, size: number, until: number | null | undefined): void {
  noteLocked(result, until);
  let seen = lockedPacks.get(result);
  if (!seen) lockedPacks.set(result, (seen = new Set()));
  if (seen.has(hex)) return;
  seen.add(hex);
  result.packsLocked++;
  result.bytesLocked += size;
}

async function readGc<T>(repo: Repository, name: string, options?: CallOptions): Promise<T> {
  return JSON.parse(openObject(repo.keys, 'gc', await repo.backend.get(name, options)).toString('utf8')) as T;
}

async function writeGc(repo: Repository, name: string, value: unknown, options?: CallOptions): Promise<void> {
  await repo.backend.put(name, sealObject(repo.keys, 'gc', Buffer.from(JSON.stringify(value))), options);
}

interface PlanState {
  plan: GcPlan;
  ready: GcReady | undefined;
  /** When the plan object was written, by the storage's clock. */
  modified: number | undefined;
}

async function loadPlans(repo: Repository, options?: CallOptions): Promise<PlanState[]> {
  const names = new Set<string>();
  const modified = new Map<string, number | undefined>();
  for await (const o of repo.backend.list(GC_PREFIX, options)) {
    names.add(o.name.slice(GC_PREFIX.length));
    modified.set(o.name.slice(GC_PREFIX.length), o.modified);
  }
  const out: PlanState[] = [];
  for (const n of names) {
    if (!/^[0-9a-f]{32}$/.test(n)) continue;
    let plan: GcPlan;
    try {
      plan = await readGc<GcPlan>(repo, GC_PREFIX + n, options);
    } catch (e) {
      if (isCofferError(e, 'NOT_FOUND')) continue;
      throw e;
    }
    if (plan.version !== 1 || plan.id !== n || !Array.isArray(plan.packs) || !plan.packs.every((p) => typeof p === 'string' && /^[0-9a-f]{64}$/.test(p))) {
      throw new CofferError('CORRUPT', `Cannot read GC plan ${n}: malformed`, { hint: 'Delete gc/' + n + ' and its .ready object, then prune again.' });
    }
    const ready = names.has(n + '.ready') ? await readGc<GcReady>(repo, GC_PREFIX + n + '.ready', options).catch((e) => {
      if (isCofferError(e, 'NOT_FOUND')) return undefined;
      throw e;
    }) : undefined;
    out.push({ plan, ready, modified: modified.get(n) });
  }
  return out;
}

/** The packs condemned by pending GC plans (blobs in them must not be reused by writers). */
export async function loadCondemned(repo: Repository, options?: CallOptions): Promise<Set<string>> {
  const out = new Set<string>();
  for (const { plan } of await loadPlans(repo, options)) for (const p of plan.packs) out.add(p);
  return out;
}

/** Every blob (type-prefixed raw id) used by a snapshot. Fails if any snapshot or tree is unreadable. */
async function usedBlobs(repo: Repository, options?: CallOptions): Promise<Set<string>> {
  const used = new Set<string>();
  const snaps = await loadAllSnapshots(repo, { ...options, action: 'prune' });
  for (const s of snaps) {
    await walkTree(repo, s.snapshot.tree, {
      enterTree: (id) => {
        const k = 't' + fromHex(id).toString('latin1');
        if (used.has(k)) return false;
        used.add(k);
        return true;
      },
      node: (_p, n) => {
        if (n.content) for (const c of n.content) used.add('d' + fromHex(c).toString('latin1'));
      },
      treeError: (path, id, e) => {
        throw new CofferError('CHECK_FAILED', `Cannot prune: tree ${id.slice(0, 12)} of snapshot ${s.id.slice(0, 12)} at ${path} is unreadable (${(e as Error).message})`, {
          hint: 'Nothing was deleted. Run `coffer repo check` and repair the repository first.',
        });
      },
    }, options);
  }
  return used;
}

function usedKey(e: IndexEntry): string {
  return (e.type === 'tree' ? 't' : 'd') + e.id.toString('latin1');
}

export async function prune(repo: Repository, options: PruneOptions = {}): Promise<PruneResult> {
  const { signal } = options;
  const timing = options.timing ?? repo.sessionTiming;
  const say = options.onProgress ?? (() => {});
  const result: PruneResult = { packsDeleted: 0, bytesDeleted: 0, indexFilesDeleted: 0, packsCondemned: 0, bytesCondemned: 0, packsRepacked: 0, blobsRepacked: 0, plansWaiting: 0, packsKept: 0, packsLocked: 0, bytesLocked: 0, indexFilesLocked: 0, lockedUntil: null, dryRun: !!options.dryRun };
  const session = await Session.start(repo, 'prune', { signal, timing });
  try {
    await assertSoleMaintenance(repo, session, 'prune', { signal, timing });
    await sweep(repo, options, timing, session, result, say);
    await mark(repo, options, timing, session, result, say);
    // With no concurrent writers to wait for, what was just marked can go at once.
    if (!options.dryRun && result.packsCondemned > 0 && !options.graceMs) await sweep(repo, options, timing, session, result, say);
    throwIfAborted(signal);
    return result;
  } finally {
    await session.end().catch(() => {});
  }
}

async function sweep(repo: Repository, options: PruneOptions, timing: SessionTiming, self: Session, result: PruneResult, say: (m: string) => void): Promise<void> {
  const { signal } = options;
  const plans = await loadPlans(repo, { signal });
  if (plans.length === 0) return;
  // Every age here is by the storage's clock: this prune's host clock may be anything.
  const now = await self.storageNow({ signal });
  const sessions = await listSessions(repo, { signal, timing, now });
  const live = new Set(sessions.filter((s) => !s.stale && s.id !== self.info.id).map((s) => s.id));
  const age = (st: PlanState) => now - (st.modified ?? st.plan.created);
  const eligible: PlanState[] = [];
  result.plansWaiting = 0;
  for (const st of plans) {
    if (!st.ready) {
      // The prune that wrote this plan died before finishing it; mark will redo the work.
      if (!options.dryRun && age(st) > timing.staleMs) {
        await repo.backend.delete(GC_PREFIX + st.plan.id, { signal });
      } else result.plansWaiting++;
      continue;
    }
    const waiting = st.ready.waitFor.filter((id) => live.has(id));
    if (waiting.length || age(st) < (options.graceMs ?? 0)) {
      result.plansWaiting++;
      say(`GC plan ${st.plan.id.slice(0, 8)} waits for ${waiting.length} session(s) or its grace period`);
      continue;
    }
    eligible.push(st);
  }
  if (eligible.length === 0 || options.dryRun) return;

  // Supersede exactly the index files whose entries the consolidated index carries over.
  const indexIds = await repo.loadIndex({ signal });
  const used = await usedBlobs(repo, { signal });
  const packs = repo.indexedPacks();
  // A condemned pack goes unless it holds the only copy of a blob that a snapshot uses now: a
  // repacked pack's live blobs were copied elsewhere at mark, so it goes; a pack that a
  // waited-for session's new snapshot reuses stays.
  const candidates = new Set(eligible.flatMap((st) => st.plan.packs));
  const doomed = new Set<string>();
  for (const p of candidates) {
    const entries = packs.get(p)?.entries ?? [];
    const needed = entries.some((e) => used.has(usedKey(e)) && !repo.index.lookupAll(e.id, e.type).some((h) => !candidates.has(toHex(h.packId))));
    if (needed) {
      result.packsKept++;
      continue;
    }
    // A locked pack stays, in the index too: the next prune after its lock ends deletes it.
    const until = await lockedAfter(repo, packName(p), now, { signal });
    if (until === undefined) {
      doomed.add(p);
      continue;
    }
    noteLockedPack(result, p, packs.get(p)?.packSize ?? 0, until);
  }
  // 1. A new index without the doomed packs, in files of bounded size. All but the last
  //    supersede nothing: a reader that lists them before the last one is written sees some
  //    packs listed twice, which the index tolerates. The last supersedes every index file read
  //    (except a new part that happens to have an old one's id: same content, same name).
  const keep: IndexPack[] = [...packs.entries()].filter(([hex]) => !doomed.has(hex)).map(([, p]) => p);
  // A prune paused since it decided (and taken for dead meanwhile) must not act on old decisions.
  await self.assertAlive({ signal });
  // Every listed file, superseded ones included (a locked one, or one a crashed prune left):
  // the files that superseded them are about to go.
  const supersedes = indexIds;
  const written = new Set(await repo.saveIndexFiles(keep, supersedes, { signal, entriesPerFile: options.indexFileEntries, onPart: () => options.onStep?.('index-part-written') }));
  options.onStep?.('index-written');
  // 2. The superseded index files.
  for (const id of supersedes) {
    if (written.has(id)) continue;
    // A locked one is left (superseded, so harmless) without trying: the storage would refuse.
    let until: number | null | undefined = await lockedAfter(repo, indexName(id), now, { signal });
    if (until === undefined) {
      try {
        await repo.backend.delete(indexName(id), { signal });
        result.indexFilesDeleted++;
        continue;
      } catch (e) {
        until = lockedUntilOf(e);
        if (until === undefined) throw e;
      }
    }
    result.indexFilesLocked++;
    noteLocked(result, until);
  }
  options.onStep?.('index-deleted');
  // 3. The packs.
  await self.assertAlive({ signal });
  for (const p of doomed) {
    const size = packs.get(p)?.packSize ?? 0;
    try {
      await repo.backend.delete(packName(p), { signal });
    } catch (e) {
      // Locked since the check: no index lists it now, so the next mark condemns it again.
      const until = lockedUntilOf(e);
      if (until === undefined) throw e;
      noteLockedPack(result, p, size, until);
      continue;
    }
    result.packsDeleted++;
    result.bytesDeleted += size;
  }
  options.onStep?.('packs-deleted');
  // 4. The plans.
  for (const st of eligible) {
    await repo.backend.delete(GC_PREFIX + st.plan.id + '.ready', { signal });
    await repo.backend.delete(GC_PREFIX + st.plan.id, { signal });
  }
  say(`deleted ${result.packsDeleted} pack(s), kept ${result.packsKept} that a snapshot still uses${result.packsLocked + result.indexFilesLocked ? `; left ${result.packsLocked} pack(s) (${result.bytesLocked} bytes) and ${result.indexFilesLocked} index file(s) that are locked until ${new Date(result.lockedUntil!).toISOString()} at the latest` : ''}`);
}

async function mark(repo: Repository, options: PruneOptions, timing: SessionTiming, self: Session, result: PruneResult, say: (m: string) => void): Promise<void> {
  const { signal } = options;
  const pending = await loadCondemned(repo, { signal });
  await repo.loadIndex({ signal });
  const used = await usedBlobs(repo, { signal });
  const packs = repo.indexedPacks();
  // Packs in storage that no index lists: leftovers of a crashed writer, or a live writer's
  // packs whose index is not written yet. The session protocol tells the two apart at sweep.
  const unindexed: Array<{ hex: string; size: number }> = [];
  for await (const o of repo.backend.list(DATA_PREFIX, { signal })) {
    const hex = idFromName(DATA_PREFIX, o.name);
    // A damaged pack is left to `repair packs`, which salvages it and quarantines it.
    if (hex && !packs.has(hex) && !pending.has(hex) && !repo.damage.hasPack(hex)) unindexed.push({ hex, size: o.size });
  }
  // With Object Lock, a locked pack is neither condemned nor repacked (its copy could not go).
  const now = repo.backend.locks ? await self.storageNow({ signal }) : 0;
  const locked = async (hex: string, size: number): Promise<boolean> => {
    const until = await lockedAfter(repo, packName(hex), now, { signal });
    if (until === undefined) return false;
    noteLockedPack(result, hex, size, until);
    return true;
  };
  const condemn: string[] = [];
  const repack: IndexPack[] = [];
  const threshold = options.repackThreshold ?? 0.2;
  for (const [hex, p] of packs) {
    if (pending.has(hex) || repo.damage.hasPack(hex)) continue;
    // Unused bytes are the unused blobs' bytes: a pack's header and trailer are not waste (with
    // them counted, every small pack looked worth repacking, and each prune repacked it again).
    let usedBytes = 0;
    let unusedBytes = 0;
    for (const e of p.entries) {
      if (used.has(usedKey(e))) usedBytes += e.length;
      else unusedBytes += e.length;
    }
    if (usedBytes === 0) {
      if (await locked(hex, p.packSize)) continue;
      condemn.push(hex);
      result.bytesCondemned += p.packSize;
    } else if (unusedBytes / p.packSize > threshold) {
      if (await locked(hex, p.packSize)) continue;
      repack.push(p);
    }
  }
  for (const u of unindexed) {
    if (await locked(u.hex, u.size)) continue;
    condemn.push(u.hex);
    result.bytesCondemned += u.size;
  }
  result.packsCondemned = condemn.length + repack.length;
  say(`${condemn.length} unused pack(s), ${repack.length} to repack, ${unindexed.length} not indexed`);
  if (options.dryRun || (condemn.length === 0 && repack.length === 0)) return;

  if (repack.length) {
    if (!options.encoder) throw new CofferError('INTERNAL', 'Cannot repack: no encoder given');
    // Copies are forced: the live blobs are in the index (at their old place), which must not
    // count as "already stored".
    const saver = new BlobSaver(repo, options.encoder, { signal, force: true, session: self });
    for (const p of repack) {
      // Read first: a pack with a blob that does not read is damage, recorded and left to
      // `repair packs`, not a reason to stop the prune (nor to drop the blobs that do read).
      const live: Array<{ type: IndexEntry['type']; id: Buffer; raw: Buffer }> = [];
      const bad: Array<{ type: IndexEntry['type']; id: string }> = [];
      let error = '';
      for (const e of p.entries) {
        if (!used.has(usedKey(e))) continue;
        try {
          live.push({ type: e.type, id: e.id, raw: await repo.readBlobAt(p.packId, e, { signal }) });
        } catch (err) {
          if (!isCofferError(err, 'CORRUPT') && !isCofferError(err, 'INVALID_RANGE') && !isCofferError(err, 'NOT_FOUND')) throw err;
          bad.push({ type: e.type, id: toHex(e.id) });
          error ||= (err as Error).message;
        }
      }
      if (bad.length) {
        await repo.noteDamage('repair', [{ pack: toHex(p.packId), problem: `found by prune while repacking: ${error}`, blobs: bad }], { signal });
        say(`pack ${toHex(p.packId).slice(0, 12)} has ${bad.length} damaged blob(s): left to \`coffer repo repair packs\``);
        result.packsCondemned--;
        continue;
      }
      for (const it of live) {
        await saver.saveMany([it]);
        result.blobsRepacked++;
      }
      condemn.push(toHex(p.packId));
      result.bytesCondemned += p.packSize;
      result.packsRepacked++;
    }
    await saver.flush();
  }
  const id = randomBytes(16).toString('hex');
  const plan: GcPlan = { version: 1, id, created: Date.now(), packs: condemn };
  await writeGc(repo, GC_PREFIX + id, plan, { signal });
  const waitFor = (await listSessions(repo, { signal, timing, now: await self.storageNow({ signal }) })).filter((s) => !s.stale && s.id !== self.info.id).map((s) => s.id);
  await writeGc(repo, GC_PREFIX + id + '.ready', { version: 1, waitFor } satisfies GcReady, { signal });
  say(`marked ${condemn.length} pack(s) for deletion${waitFor.length ? `, after ${waitFor.length} running session(s) end` : ''}`);
}
