// Restores read the best copy and go on from the others (issue #10, "Restores use the best
// copy"). The copies of an image are ranked: ok before suspect, then by their storage unit's
// priority (higher first); copies on units an administrator marked unavailable (units.ts) are
// passed over. The restore job reads the best copy, and the agent is given the same snapshot in
// every other copy as alternates: a chunk that cannot be read in the middle of the restore is
// read from the next copy that has it (src/jobs/restore-fallback.ts), and the job result says
// how many chunks and bytes came from each unit, and which files. A copy that needed help is
// marked suspect. What the alternates cannot give either (a damaged directory tree, say) is left
// to the last resort: the whole restore again from the next copy, keeping files already whole.
// Nobody has to change a copy's state by hand to get a restore through.

import { CofferError, toCofferError } from '../core/errors.ts';
import type { Copy } from '../catalog/copies.ts';
import type { Image } from '../catalog/images.ts';
import type { StorageAccess } from '../agent/protocol.ts';
import type { JobExecutor } from './dispatcher.ts';
import { runRemoteStream } from './remote-streams.ts';
import { runOnAgent, type Services } from './services.ts';
import { onlyUnavailable, unavailableUnits, type Unavailability } from './units.ts';

/** The copies of an image a restore may read, best first, and those passed over as unavailable. */
export interface CopyChoice {
  usable: Copy[];
  unavailable: Array<{ copy: Copy; unit: Unavailability }>;
}

/** Ranks an image's readable copies (ok before suspect, then by unit priority) and sets aside those on unavailable units. */
export async function chooseCopies(s: Services, image: Image): Promise<CopyChoice> {
  const copies = (await s.catalog.copies.list({ imageId: image.id, state: ['ok', 'suspect'], limit: 1000 })).items;
  const priority = new Map<string, number>();
  for (const c of copies) {
    const unit = await s.catalog.storageUnits.find(c.storageUnit);
    priority.set(c.storageUnit, (unit?.spec as { priority?: number } | undefined)?.priority ?? 0);
  }
  copies.sort((a, b) => (a.state === b.state ? 0 : a.state === 'ok' ? -1 : 1) || priority.get(b.storageUnit)! - priority.get(a.storageUnit)!);
  const down = await unavailableUnits(s.catalog);
  return {
    usable: copies.filter((c) => !down.has(c.storageUnit)),
    unavailable: copies.filter((c) => down.has(c.storageUnit)).map((copy) => ({ copy, unit: down.get(copy.storageUnit)! })),
  };
}

/** The copies of an image a restore may read, best first: ok before suspect, then by the unit's priority; none on an unavailable unit. */
export async function restorableCopies(s: Services, image: Image): Promise<Copy[]> {
  return (await chooseCopies(s, image)).usable;
}

/**
 * The best copy to read for `action` ("restore image X"); throws when there is none: CONFLICT
 * naming the units when the only copies are on unavailable ones (STORAGE_UNAVAILABLE with
 * `retry`, for a queued job), NOT_FOUND otherwise.
 */
export async function bestCopy(s: Services, image: Image, action: string, options: { retry?: boolean } = {}): Promise<Copy> {
  const choice = await chooseCopies(s, image);
  const best = choice.usable[0];
  if (best) return best;
  throw noCopy(choice, action, options);
}

function noCopy(choice: CopyChoice, action: string, options: { retry?: boolean } = {}): CofferError {
  if (choice.unavailable.length) return onlyUnavailable(action, unitsOf(choice), options);
  return new CofferError('NOT_FOUND', `Cannot ${action}: it has no copy in state ok or suspect`, { hint: 'Run `coffer catalog reconcile` to see what storage holds.' });
}

function unitsOf(choice: CopyChoice): Array<[string, Unavailability]> {
  return [...new Map(choice.unavailable.map((u) => [u.copy.storageUnit, u.unit])).entries()];
}

/** Chunks and bytes restored from one storage unit; for the units that stood in, also the files. */
interface SourceTally {
  chunks: number;
  bytes: number;
  fileCount?: number;
  files?: string[];
}

const FILES_LISTED = 20;

/** Adds one stream's sources (the agent's result) to the job's. */
function addSources(into: Record<string, SourceTally>, from: unknown): void {
  if (!from || typeof from !== 'object') return;
  for (const [unit, raw] of Object.entries(from as Record<string, SourceTally>)) {
    const t = (into[unit] ??= { chunks: 0, bytes: 0 });
    t.chunks += raw.chunks ?? 0;
    t.bytes += raw.bytes ?? 0;
    if (raw.files) {
      t.fileCount = (t.fileCount ?? 0) + (raw.fileCount ?? raw.files.length);
      t.files = [...(t.files ?? []), ...raw.files].slice(0, FILES_LISTED);
    }
  }
}

function plus(a: unknown, b: unknown): number {
  return (typeof a === 'number' ? a : 0) + (typeof b === 'number' ? b : 0);
}

/** Restore job spec: { image, toClient, toPath, include?, exclude?, overwrite?, dryRun?, force?, confirmHost? }. */
export function restoreExecutor(s: Services): JobExecutor {
  return async (ctx) => {
    const spec = ctx.job.spec as { image: string; toClient: string; toPath: string; include?: string[]; exclude?: string[]; overwrite?: string; dryRun?: boolean; force?: boolean; confirmHost?: string };
    const image = await s.catalog.images.get(spec.image);
    const choice = await chooseCopies(s, image);
    const copies = choice.usable;
    if (copies.length === 0) throw noCopy(choice, `restore image ${image.id}`);
    if (choice.unavailable.length) ctx.log('info', `passing over the copies on storage units marked unavailable: ${unitsOf(choice).map(([n, u]) => `${n} (${u.reason})`).join(', ')}`);
    const link = s.agents.get(spec.toClient);
    const sources: Record<string, SourceTally> = {};
    const result: Record<string, unknown> = { image: image.id, toClient: spec.toClient, toPath: spec.toPath, dryRun: !!spec.dryRun, files: 0, bytes: 0, warnings: 0, copies: [] as string[], sources };
    // Storage access of every copy's unit, resolved once; a unit that cannot be opened is no alternate.
    const access = new Map<string, StorageAccess | undefined>();
    const accessOf = async (unit: string) => {
      if (!access.has(unit)) {
        try {
          access.set(unit, await s.storageAccess(unit));
        } catch (e) {
          access.set(unit, undefined);
          ctx.log('warn', `storage unit ${unit} cannot be used as an alternate: ${toCofferError(e).message}`);
        }
      }
      return access.get(unit);
    };
    let lastError: CofferError | undefined;
    for (const [n, copy] of copies.entries()) {
      const more = n < copies.length - 1;
      const others = copies.filter((c) => c !== copy);
      try {
        const storage = await s.storageAccess(copy.storageUnit);
        const remoteUnit = s.agents.isRemote(spec.toClient) ? await s.catalog.storageUnits.get(copy.storageUnit) : undefined;
        let damaged = 0;
        let warnings = 0;
        const before = new Map(Object.entries(sources).map(([k, v]) => [k, v.chunks]));
        for (const [key, snapshot] of Object.entries(copy.snapshots)) {
          const alternates = [];
          for (const o of others) {
            const a = o.snapshots[key] ? await accessOf(o.storageUnit) : undefined;
            if (a) alternates.push({ storage: a, snapshot: o.snapshots[key]!, unit: o.storageUnit });
          }
          ctx.log('info', `restoring stream ${key} (snapshot ${snapshot.slice(0, 12)}) from storage unit ${copy.storageUnit} to ${spec.toClient}:${spec.toPath}${alternates.length ? `; a chunk it cannot give is read from ${alternates.map((a) => a.unit).join(', then ')}` : ''}`);
          const agentSpec = {
            snapshot, targetPath: spec.toPath, unit: copy.storageUnit,
            ...(spec.include ? { include: spec.include } : {}), ...(spec.exclude ? { exclude: spec.exclude } : {}),
            // After a damaged copy, files already restored whole are left as they are.
            ...(n > 0 ? { overwrite: spec.overwrite === 'never' ? 'never' : 'if-changed' } : spec.overwrite ? { overwrite: spec.overwrite } : {}),
            dryRun: !!spec.dryRun, force: !!spec.force,
            ...(spec.confirmHost ? { confirmHost: spec.confirmHost } : {}),
          };
          // A remote agent holds no repository key: a node reads the copy and sends it what it
          // asks for (alternates are the node's own index; the next copy is the re-run below).
          const r = remoteUnit
            ? await runRemoteStream(s, {
              kind: 'restore', client: spec.toClient, link, unit: remoteUnit,
              nodeSpec: { storage, client: spec.toClient, snapshot }, agentSpec,
            }, { jobId: ctx.job.id, emit: ctx.emit, log: (l, m) => ctx.log(l, m), signal: ctx.signal })
            : await runOnAgent(link, 'restore', { storage, ...agentSpec, ...(alternates.length ? { alternates } : {}) }, { jobId: ctx.job.id, emit: ctx.emit, signal: ctx.signal });
          const created = r.created as { files?: number; bytes?: number } | undefined;
          const overwritten = r.overwritten as { files?: number; bytes?: number } | undefined;
          result.files = plus(result.files, created?.files) + (overwritten?.files ?? 0);
          result.bytes = plus(result.bytes, created?.bytes) + (overwritten?.bytes ?? 0);
          damaged += typeof r.damaged === 'number' ? r.damaged : 0;
          warnings += typeof r.warnings === 'number' ? r.warnings : 0;
          addSources(sources, r.sources);
        }
        (result.copies as string[]).push(copy.storageUnit);
        const helped = Object.entries(sources).filter(([unit, t]) => unit !== copy.storageUnit && t.chunks > (before.get(unit) ?? 0));
        if (helped.length) {
          // The copy could not give everything: whatever the restore's outcome, it is not sound.
          if (copy.state !== 'suspect') await s.catalog.copies.update(copy.id, { state: 'suspect' });
          ctx.log('warn', `the copy in ${copy.storageUnit} is damaged (now suspect): ${helped.map(([unit, t]) => `${t.chunks - (before.get(unit) ?? 0)} chunk(s) were read from ${unit}`).join(', ')}`);
        }
        if (damaged > 0 && more) {
          // What no copy could give chunk by chunk (a damaged directory, say): the whole restore
          // again from the next copy, leaving the files already whole as they are.
          if (copy.state !== 'suspect') await s.catalog.copies.update(copy.id, { state: 'suspect' });
          ctx.log('warn', `${damaged} entr${damaged === 1 ? 'y' : 'ies'} could not be restored from ${copy.storageUnit} (damaged data; the copy is now suspect): restoring them from ${copies[n + 1]!.storageUnit}`);
          continue;
        }
        result.warnings = warnings;
        return { state: warnings > 0 ? 'warnings' : 'succeeded', result };
      } catch (e) {
        const err = toCofferError(e);
        // A refusal (the host pre-flight) or a cancel is the answer; damage tries the next copy.
        if (err.code === 'REFUSED' || err.code === 'CANCELLED' || err.code === 'USAGE' || err.transient || !more) throw err;
        lastError = err;
        if (err.code === 'CORRUPT' || err.code === 'NOT_FOUND' || err.code === 'INVALID_RANGE') await s.catalog.copies.update(copy.id, { state: 'suspect' });
        ctx.log('warn', `the copy in ${copy.storageUnit} failed (${err.message}); trying the next copy`);
      }
    }
    throw lastError ?? new CofferError('INTERNAL', `Cannot restore image ${image.id}: no copy was tried`);
  };
}
