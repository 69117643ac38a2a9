// The duplicate job: copies of one image in other storage units, made by the agent's clone job
// from one read of a source copy (src/jobs/clone.ts, cloneToTargets()). Its spec is
// { image, from, targets: [{ to, retention }] }; the older { image, from, to, retention } (jobs
// queued before several targets existed) is read as one target. Units the server created share
// one deduplication domain (domain.ts): clones between them copy packs as they are.
//
// A duplicate counts against the storage unit it reads and each one it writes (catalog/jobs.ts,
// unitsOfJob()), so that the queue runs clones from several sources to several targets at once
// within every unit's maxJobs.

import { CofferError } from '../core/errors.ts';
import type { JobContext, JobEnd, JobExecutor } from './dispatcher.ts';
import { expiryOf, restorableCopies } from './executors.ts';
import { bestCopy } from './restore-executor.ts';
import { runOnAgent, type Services } from './services.ts';

/** The most storage units one duplicate job writes (and one POST /api/v1/clones names). */
export const MAX_CLONE_TARGETS = 16;

/** One copy a duplicate job makes. */
export interface DuplicateTarget {
  to: string;
  retention: string;
}

/** The targets of a duplicate job's spec, old form or new; USAGE when it names none. */
export function duplicateTargets(spec: Record<string, unknown>): DuplicateTarget[] {
  const list = Array.isArray(spec.targets) ? spec.targets : spec.to !== undefined ? [{ to: spec.to, retention: spec.retention }] : [];
  const out: DuplicateTarget[] = [];
  for (const t of list as Array<Record<string, unknown> | null>) {
    if (typeof t?.to !== 'string' || typeof t.retention !== 'string') throw new CofferError('USAGE', `Cannot run the duplicate job: a target is not { to, retention } (${JSON.stringify(t)})`);
    if (!out.some((o) => o.to === t.to)) out.push({ to: t.to, retention: t.retention });
  }
  if (out.length === 0) throw new CofferError('USAGE', 'Cannot run the duplicate job: its spec names no storage unit to copy to');
  if (out.length > MAX_CLONE_TARGETS) throw new CofferError('USAGE', `Cannot run the duplicate job: it names ${out.length} storage units, more than ${MAX_CLONE_TARGETS}`);
  return out;
}

/**
 * Clones the image's snapshots from its copy in `from` (or, if that one is gone, its best
 * readable copy) to every target unit that has no copy yet, in one agent job, and records each
 * new copy with its own expiry, counted from the image's time by the server's clock.
 */
export function duplicateExecutor(s: Services): JobExecutor {
  return async (ctx: JobContext): Promise<JobEnd> => {
    const spec = ctx.job.spec as { image: string; from: string };
    const targets = duplicateTargets(ctx.job.spec);
    const image = await s.catalog.images.get(spec.image);
    const copies = (await s.catalog.copies.list({ imageId: image.id, limit: 1000 })).items;
    const has = (unit: string) => copies.some((c) => c.storageUnit === unit && (c.state === 'ok' || c.state === 'suspect'));
    const todo = targets.filter((t) => !has(t.to));
    const already = targets.filter((t) => has(t.to)).map((t) => t.to);
    const single = ctx.job.spec.targets === undefined ? { to: targets[0]!.to } : {};
    if (todo.length === 0) return { state: 'succeeded', result: { image: image.id, ...single, already: true, alreadyIn: already } };
    // The named source if it is sound and its unit available, else the best copy there is (none
    // but on unavailable units: STORAGE_UNAVAILABLE, retried; none at all: NOT_FOUND).
    const usable = await restorableCopies(s, image);
    const source = usable.find((c) => c.storageUnit === spec.from && c.state === 'ok') ?? usable[0] ?? await bestCopy(s, image, `duplicate image ${image.id}`, { retry: true });
    ctx.log('info', `duplicating image ${image.id} from ${source.storageUnit} to ${todo.map((t) => t.to).join(', ')}${already.length ? ` (${already.join(', ')} already hold a copy)` : ''}`);
    const r = await runOnAgent(s.node([source.storageUnit, ...todo.map((t) => t.to)]), 'clone', {
      source: await s.storageAccess(source.storageUnit),
      // An immutable target locks what it writes until this copy's expiry (object-lock.ts).
      targets: await Promise.all(todo.map((t) => s.storageAccess(t.to, { lockFor: expiryOf(t.retention, image.time) }))),
      snapshots: [...new Set(Object.values(source.snapshots))],
    }, { jobId: ctx.job.id, emit: ctx.emit, signal: ctx.signal });
    const made = r.targets as Array<{ snapshots: Record<string, string>; sameKeys: boolean; bytesExamined: number; bytesPresent: number; bytesSentRaw: number; bytesSent: number }>;
    const perTarget: Array<Record<string, unknown>> = [];
    await s.catalog.transaction(async (tx) => {
      for (const [i, t] of todo.entries()) {
        const m = made[i]!;
        const snapshots = Object.fromEntries(Object.entries(source.snapshots).map(([key, id]) => [key, m.snapshots[id]!]));
        await tx.copies.add(image.id, { storageUnit: t.to, snapshots, state: 'ok', expires: expiryOf(t.retention, image.time) });
        perTarget.push({ to: t.to, newBytes: m.bytesSentRaw, storedBytes: m.bytesSent, bytesPresent: m.bytesPresent, sameKeys: m.sameKeys });
      }
    });
    for (const [i, t] of todo.entries()) ctx.log('info', `copy in ${t.to}: ${made[i]!.bytesSentRaw} of ${made[i]!.bytesExamined} bytes sent (${made[i]!.bytesPresent} already there)${made[i]!.sameKeys ? '' : ', re-encrypted (other keys)'}`);
    const sum = (k: 'bytesSentRaw' | 'bytesSent') => made.reduce((n, m) => n + m[k], 0);
    return {
      state: 'succeeded',
      result: {
        image: image.id, from: source.storageUnit, ...single,
        scannedBytes: made[0]!.bytesExamined, newBytes: sum('bytesSentRaw'), storedBytes: sum('bytesSent'),
        bytesPresent: made.reduce((n, m) => n + m.bytesPresent, 0), sameKeys: made.every((m) => m.sameKeys),
        targets: perTarget, ...(already.length ? { alreadyIn: already } : {}),
      },
    };
  };
}
