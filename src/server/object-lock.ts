// Immutable storage units on the server's side (docs/server.md "Immutable copies"): a unit with
// `immutable: true` is S3 with Object Lock, and everything the repository there writes is locked
// in compliance mode (repository/object-lock.ts says which objects). The server decides the
// dates, on its clock:
//
// - A writer (backup, duplicate) locks what it writes until its copy expires, and never for less
//   than the unit's `minimumLock` (default 30d); other writers there (prune's new index files,
//   repacked packs) for `minimumLock`. An infinite retention or a legal hold is a rolling lock:
//   LOCK_HORIZON ahead, rounded up to whole LOCK_STEPs so that the lock-extend job moves each
//   object once per step, not at every run.
// - The lock-extend job (periodic, and on demand) moves the locks of what live copies reference
//   to the latest expiry among them: a pack shared by a 14-day and a 7-year copy stays locked
//   for 7 years.
// - A copy is locked until max(its expiry, its creation + minimumLock): the expiry job does not
//   expire it before then, and the API refuses to delete it, to an administrator too. The
//   storage enforces the same whatever the server does: a locked object cannot be deleted.

import { CofferError } from '../core/errors.ts';
import type { CatalogQueries } from '../catalog/catalog.ts';
import type { Copy } from '../catalog/copies.ts';
import type { StorageUnit } from '../catalog/storage-units.ts';
import { DEFAULTS, parseDuration } from '../policy/index.ts';
import type { JobExecutor } from './dispatcher.ts';
import { runOnAgent, type Services } from './services.ts';

/** How far ahead a copy that never expires (or is held) is locked. */
export const LOCK_HORIZON_MS = 365 * 86_400_000;
/** Rolling locks are rounded up to whole steps of this. */
export const LOCK_STEP_MS = 30 * 86_400_000;

interface LockSpec {
  immutable?: boolean;
  minimumLock?: string;
}

/** The unit's minimum lock in ms; undefined when the unit is not immutable. */
export function minimumLockOf(unit: Pick<StorageUnit, 'spec'>): number | undefined {
  const spec = unit.spec as LockSpec;
  if (spec.immutable !== true) return undefined;
  return parseDuration(spec.minimumLock ?? DEFAULTS.storageUnit.minimumLock);
}

/** Whether any storage unit is immutable (the server queues lock-extend jobs only then). */
export async function hasImmutableUnit(catalog: CatalogQueries): Promise<boolean> {
  for (let cursor: string | undefined; ;) {
    const page = await catalog.storageUnits.list({ limit: 1000, cursor });
    if (page.items.some((u) => minimumLockOf(u) !== undefined)) return true;
    if (!page.next) return false;
    cursor = page.next;
  }
}

/** The end of a rolling lock started at `now`. */
export function rollingLock(now: number): number {
  return Math.ceil((now + LOCK_HORIZON_MS) / LOCK_STEP_MS) * LOCK_STEP_MS;
}

/**
 * Until when what is written to the unit now must be locked: `expiry` is the expiry of the copy
 * being written (null: never; undefined: no copy, e.g. a prune). Undefined when not immutable.
 */
export function writeLockUntil(unit: Pick<StorageUnit, 'spec'>, now: number, expiry?: number | null): number | undefined {
  const minimum = minimumLockOf(unit);
  if (minimum === undefined) return undefined;
  const floor = now + minimum;
  if (expiry === null) return Math.max(floor, rollingLock(now));
  return Math.max(floor, expiry ?? 0);
}

/** Until when a copy in an immutable unit is locked (Infinity: never expires); undefined when the unit is not immutable. */
export function copyLockedUntil(unit: Pick<StorageUnit, 'spec'>, copy: Pick<Copy, 'expires' | 'created'>): number | undefined {
  const minimum = minimumLockOf(unit);
  if (minimum === undefined) return undefined;
  return Math.max(copy.expires ?? Infinity, copy.created + minimum);
}

/**
 * A lookup of copies' locks at `now`, caching the units: the date a copy is locked until, or
 * undefined when it is not locked (any more).
 */
export function lockLookup(s: Services, now: number): (copy: Copy) => Promise<number | undefined> {
  const units = new Map<string, Promise<StorageUnit | undefined>>();
  return async (copy) => {
    let unit = units.get(copy.storageUnit);
    if (!unit) units.set(copy.storageUnit, (unit = s.catalog.storageUnits.find(copy.storageUnit)));
    const u = await unit;
    const until = u ? copyLockedUntil(u, copy) : undefined;
    return until !== undefined && until > now ? until : undefined;
  };
}

/** What an expiry kept because of locks: copies, their snapshots, and when the first lock ends. */
export interface LockedCopies {
  copies: number;
  snapshots: number;
  /** The earliest end of these locks (ms), null when unknown or none. */
  until: number | null;
}

/** Counts a locked copy (true) or nothing when `until` is undefined (false). */
export function noteLockedCopy(locked: LockedCopies, until: number | undefined, snapshots = 0): boolean {
  if (until === undefined) return false;
  locked.copies++;
  locked.snapshots += snapshots;
  if (until !== Infinity) locked.until = Math.min(locked.until ?? Infinity, until);
  return true;
}

/** The snapshots an agent's forget left because they are locked, with their lock's end (0: unknown). */
export function lockedSnapshots(forgetResult: Record<string, unknown>): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of (forgetResult.locked ?? []) as Array<{ snapshot: string; until: number | null }>) out.set(l.snapshot, l.until ?? 0);
  return out;
}

/** What a prune left because it is locked. */
export interface PrunedLocked {
  packs: number;
  bytes: number;
  indexFiles: number;
  /** When the last of it may go (ms). */
  until: number | null;
}

/** The locked leftovers of an agent's forget-with-prune; undefined when there were none. */
export function prunedLocked(forgetResult: Record<string, unknown>): PrunedLocked | undefined {
  const p = forgetResult.prune as { packsLocked?: number; bytesLocked?: number; indexFilesLocked?: number; lockedUntil?: number | null } | undefined;
  if (!p || !(p.packsLocked || p.indexFilesLocked)) return undefined;
  return { packs: p.packsLocked ?? 0, bytes: p.bytesLocked ?? 0, indexFiles: p.indexFilesLocked ?? 0, until: p.lockedUntil ?? null };
}

const retryKey = (unit: string) => `prune.locked.${unit}`;

/**
 * Records when a unit's prune may delete what it had to leave locked (undefined: nothing was
 * left, or no date is known), so that the expiry prunes it again then.
 */
export async function notePruneRetry(s: Services, unit: string, until: number | undefined): Promise<void> {
  const had = await s.catalog.settings.get(retryKey(unit));
  if (until === undefined && had === undefined) return;
  await s.catalog.settings.set(retryKey(unit), until ?? null);
}

/** The immutable units whose prune left locked objects that may go by `now`. */
export async function pruneRetriesDue(s: Services, now: number): Promise<Set<string>> {
  const due = new Set<string>();
  for (let cursor: string | undefined; ;) {
    const page = await s.catalog.storageUnits.list({ limit: 1000, cursor });
    for (const u of page.items) {
      if (minimumLockOf(u) === undefined) continue;
      const until = await s.catalog.settings.get<number | null>(retryKey(u.name));
      if (typeof until === 'number' && until <= now) due.add(u.name);
    }
    if (!page.next) return due;
    cursor = page.next;
  }
}

/** Refuses (REFUSED, 403) to delete an image while a copy of it is locked; says until when. */
export async function refuseLockedCopies(s: Services, imageId: string, copies: Copy[]): Promise<void> {
  const lockedUntil = lockLookup(s, s.now());
  for (const c of copies) {
    if (c.state === 'expired' || c.state === 'lost') continue;
    const until = await lockedUntil(c);
    if (until === undefined) continue;
    throw new CofferError('REFUSED', `Cannot expire image ${imageId}: its copy in the immutable storage unit ${c.storageUnit} is locked ${until === Infinity ? 'for as long as it is kept (infinite retention)' : `until ${new Date(until).toISOString()}`}`, {
      hint: 'Copies in an immutable storage unit cannot be deleted before their lock ends, by anyone; the expiry deletes it then.',
      details: { copy: c.id, storageUnit: c.storageUnit, lockedUntil: until === Infinity ? null : until },
    });
  }
}

/**
 * The lock-extend job (spec { unit? }): for each immutable unit (or the one named), every live
 * copy's snapshots with the date their data must stay locked until (expiry; rolling for infinite
 * retention and legal holds) go to the agent, which extends what is shorter.
 */
export function lockExtendExecutor(s: Services): JobExecutor {
  return async (ctx) => {
    const only = typeof ctx.job.spec.unit === 'string' ? ctx.job.spec.unit : undefined;
    const now = s.now();
    const units: StorageUnit[] = [];
    if (only) {
      const unit = await s.catalog.storageUnits.get(only);
      if (minimumLockOf(unit) === undefined) throw new CofferError('USAGE', `Cannot extend locks in storage unit ${only}: it is not immutable`, { hint: 'Only units with immutable: true (S3 with Object Lock) have locks.' });
      units.push(unit);
    } else {
      for (let cursor: string | undefined; ;) {
        const page = await s.catalog.storageUnits.list({ limit: 1000, cursor });
        units.push(...page.items.filter((u) => minimumLockOf(u) !== undefined));
        if (!page.next) break;
        cursor = page.next;
      }
    }
    const report: Array<Record<string, unknown>> = [];
    let warnings = 0;
    for (const unit of units) {
      if (ctx.signal.aborted) throw new CofferError('CANCELLED', 'Cancelled: the lock extension was stopped');
      const until = new Map<string, number>();
      for (let cursor: string | undefined; ;) {
        const page = await s.catalog.copies.list({ storageUnit: unit.name, state: ['ok', 'suspect'], limit: 1000, cursor });
        for (const c of page.items) {
          const date = c.hold !== undefined || c.expires === undefined ? rollingLock(now) : c.expires;
          // A date already past needs no lock: the expiry is about to forget the copy.
          if (date <= now) continue;
          for (const snap of Object.values(c.snapshots)) until.set(snap, Math.max(until.get(snap) ?? 0, date));
        }
        if (!page.next) break;
        cursor = page.next;
      }
      if (until.size === 0) {
        report.push({ unit: unit.name, snapshots: 0, objects: 0, extended: 0 });
        continue;
      }
      ctx.log('info', `storage unit ${unit.name}: extending the locks of what ${until.size} snapshot(s) need`);
      const r = await runOnAgent(s.node(), 'lock-extend', {
        storage: await s.storageAccess(unit),
        targets: [...until].map(([snapshot, date]) => ({ snapshot, until: date })),
      }, { jobId: ctx.job.id, emit: ctx.emit, signal: ctx.signal });
      warnings += typeof r.warnings === 'number' ? r.warnings : 0;
      ctx.log('info', `storage unit ${unit.name}: ${r.extended} lock(s) extended, ${r.alreadyLocked} already long enough${typeof r.latest === 'number' ? `; the latest lock ends ${new Date(r.latest).toISOString()}` : ''}`);
      report.push({ unit: unit.name, snapshots: r.snapshots, objects: r.objects, extended: r.extended, alreadyLocked: r.alreadyLocked, missing: r.missing, latest: r.latest ?? null });
    }
    return { state: warnings ? 'warnings' : 'succeeded', result: { units: report, warnings } };
  };
}
