// What the server does for each kind of job: backup (one image of one client by one policy, one
// snapshot per selection, streams in parallel up to the policy's maxStreams), restore (from the
// best copy of an image onto a client), expire (forget expired copies' snapshots, then prune the
// unit) and reconcile (catalog against storage). The data path runs in agents; these functions
// decide what to run and record what happened, on the server's clock.

import { createHash } from 'node:crypto';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { Copy } from '../catalog/copies.ts';
import type { Image } from '../catalog/images.ts';
import type { JobResult } from '../catalog/jobs.ts';
import { INFINITE, parseDuration, type PolicyDocument, type Selection } from '../policy/index.ts';
import type { SelectionSpec } from '../agent/protocol.ts';
import type { JobContext, JobEnd, JobExecutor } from './dispatcher.ts';
import { lifecycleOf, runOnAgent, type Services } from './services.ts';
import { runRemoteStream } from './remote-streams.ts';
import { bestCopy, restorableCopies } from './restore-executor.ts';
import { COPY_JOB_KINDS, isImmediate } from './lifecycle.ts';
import { lockLookup, lockedSnapshots, noteLockedCopy, notePruneRetry, pruneRetriesDue, prunedLocked, type LockedCopies, type PrunedLocked } from './object-lock.ts';

/**
 * A selection's stream key: the same selection gets the same key in every image (the parent of
 * an incremental is looked up by it), whatever its place in the policy.
 */
export function selectionKey(sel: Selection): string {
  const what = 'paths' in sel ? { paths: sel.paths } : 'images' in sel ? { images: sel.images } : { command: sel.command, filename: sel.filename };
  return createHash('sha256').update(JSON.stringify(what)).digest('hex').slice(0, 16);
}

/** A short human label of a selection for logs and listings. */
export function selectionLabel(sel: Selection): string {
  if ('paths' in sel) return sel.paths.join(' ');
  if ('images' in sel) return `images ${sel.images.join(' ')}`;
  return `${sel.command} > ${sel.filename}`;
}

const HOOK_TIMEOUT = 30 * 60_000;

function hook(h: Selection['pre']): { run: string; timeoutMs?: number } | undefined {
  if (h === undefined) return undefined;
  if (typeof h === 'string') return { run: h, timeoutMs: HOOK_TIMEOUT };
  return { run: h.command, timeoutMs: h.timeout ? parseDuration(h.timeout) : HOOK_TIMEOUT };
}

function agentSelection(sel: Selection): SelectionSpec {
  if ('paths' in sel) {
    const patterns = [...(sel.exclude ?? []), ...(sel.include ?? []).map((p) => `!${p}`)];
    return { paths: sel.paths, ...(patterns.length ? { exclude: patterns } : {}), oneFileSystem: sel.oneFileSystem, excludeCaches: sel.excludeCaches, ...(sel.chunking ? { fileChunking: sel.chunking } : {}) };
  }
  if ('images' in sel) return { paths: sel.images, images: true, imageChunking: sel.chunking };
  return { command: sel.command, filename: sel.filename };
}

/** When a copy made now with this retention expires; null: never. */
export function expiryOf(retention: string, from: number): number | null {
  return retention === INFINITE ? null : from + parseDuration(retention);
}

function add(a: number | undefined, b: unknown): number {
  return (a ?? 0) + (typeof b === 'number' ? b : 0);
}

/** How often a backup waiting for its client's agent looks again (COFFER_UNREACHABLE_POLL_MS for tests). */
const UNREACHABLE_POLL_MS = Number(process.env.COFFER_UNREACHABLE_POLL_MS ?? 30_000);

/** The backup job: spec { level?, slot?, notAfter? } plus the job's client, policy and schedule. */
export function backupExecutor(s: Services): JobExecutor {
  return async (ctx: JobContext): Promise<JobEnd> => {
    const { job } = ctx;
    if (!job.client || !job.policy) throw new CofferError('USAGE', `Cannot run backup job ${job.id}: it names no client or policy`);
    const notAfter = typeof job.spec.notAfter === 'number' ? job.spec.notAfter : undefined;
    if (notAfter !== undefined && s.now() > notAfter) {
      return { state: 'missed', error: { code: 'REFUSED', message: `Missed: the backup window closed at ${new Date(notAfter).toISOString()} before the job could start`, hint: 'Widen the window, or raise the storage unit\'s maxJobs or the server\'s job limit.' } };
    }
    // An unreachable client's scheduled backup waits, attempt unused, until its window ends; a
    // job claimed after that is missed (above). Without a window the queue's retries apply.
    if (notAfter !== undefined && !s.agents.has(job.client)) {
      return {
        state: 'failed',
        waitUntil: Math.min(s.now() + UNREACHABLE_POLL_MS, notAfter + 1),
        error: { code: 'STORAGE_UNAVAILABLE', message: `client ${job.client}'s agent is not connected; the backup waits for it until its window closes at ${new Date(notAfter).toISOString()}, then counts as missed` },
      };
    }
    const policy = (await s.catalog.policies.get(job.policy)).spec as PolicyDocument['spec'];
    const schedule = job.schedule ? policy.schedules.find((x) => x.name === job.schedule) : undefined;
    if (job.schedule && !schedule) throw new CofferError('NOT_FOUND', `Cannot run backup job ${job.id}: policy ${job.policy} has no schedule ${job.schedule} any more`);
    const level = (job.spec.level as string | undefined) ?? schedule?.level ?? 'incremental';
    const lifecycle = await lifecycleOf(s.catalog, policy, job.schedule);
    if (!lifecycle) throw new CofferError('INVALID_CONFIG', `Cannot run backup job ${job.id}: policy ${job.policy} names no lifecycle that exists`, { hint: 'Apply the lifecycle, or name an existing one in the policy.' });
    const first = lifecycle.copies[0]!;
    const unit = first.storageUnit;
    const link = s.agents.get(job.client);
    // An immutable unit locks what the backup writes until its copy expires.
    const storage = await s.storageAccess(unit, { lockFor: expiryOf(first.retention, s.now()) });
    const started = s.now();
    const image = await s.catalog.images.add({ client: job.client, policy: job.policy, schedule: job.schedule, level, time: started, state: 'pending', streams: {}, jobId: job.id });
    ctx.log('info', `image ${image.id}: ${level} backup of ${job.client} by policy ${job.policy}${job.schedule ? ` (schedule ${job.schedule})` : ''} to storage unit ${unit}`);

    const streams: Record<string, string> = {};
    const failures: string[] = [];
    const result: JobResult & Record<string, number | string | null> = { image: image.id, level, streams: policy.selections.length, scannedBytes: 0, sentBytes: 0, newBytes: 0, storedBytes: 0, files: 0, warnings: 0 };
    // A remote agent holds no repository key: its streams go through a storage node of the unit.
    const remoteUnit = s.agents.isRemote(job.client) ? await s.catalog.storageUnits.get(unit) : undefined;
    let next = 0;
    const worker = async () => {
      while (next < policy.selections.length) {
        if (ctx.signal.aborted) return;
        const sel = policy.selections[next++]!;
        const key = selectionKey(sel);
        const label = selectionLabel(sel);
        let parent = 'none';
        if (level !== 'full') {
          const prev = await s.catalog.images.latestGood(job.client!, job.policy!, key, { storageUnit: unit });
          const snap = prev?.streams[key];
          if (snap) parent = snap;
        }
        try {
          const tags = [`policy=${job.policy}`, `image=${image.id}`, ...(job.schedule ? [`schedule=${job.schedule}`] : [])];
          const agentSpec = {
            selection: agentSelection(sel),
            ...(hook(sel.pre) ? { pre: hook(sel.pre) } : {}),
            ...(hook(sel.post) ? { post: hook(sel.post) } : {}),
          };
          const r = remoteUnit
            ? await runRemoteStream(s, {
              kind: 'backup', client: job.client!, link, unit: remoteUnit,
              nodeSpec: { storage, client: job.client!, parent, tags }, agentSpec: { ...agentSpec, client: job.client!, parent, tags },
            }, { jobId: job.id, emit: ctx.emit, log: (l, m) => ctx.log(l, m), signal: ctx.signal })
            : await runOnAgent(link, 'backup', { storage, client: job.client, parent, tags, ...agentSpec }, { jobId: job.id, emit: ctx.emit, signal: ctx.signal });
          streams[key] = r.snapshot as string;
          result.scannedBytes = add(result.scannedBytes, r.bytesScanned);
          result.newBytes = add(result.newBytes, r.bytesNew);
          result.storedBytes = add(result.storedBytes, r.bytesStored);
          result.sentBytes = add(result.sentBytes as number | undefined, r.bytesSent);
          result.files = add(result.files as number, r.filesNew) + (typeof r.filesChanged === 'number' ? r.filesChanged : 0) + (typeof r.filesUnchanged === 'number' ? r.filesUnchanged : 0);
          result.warnings = add(result.warnings as number, r.warnings);
          ctx.log('info', `${label}: snapshot ${String(r.snapshot).slice(0, 12)}${parent !== 'none' ? ` (parent ${parent.slice(0, 12)})` : ' (full read)'}, ${r.bytesScanned} bytes scanned, ${r.bytesSent ?? 0} sent over the network${r.node ? ` to node ${String(r.node)}` : ''}, ${r.bytesNew} new, ${r.bytesStored} stored`);
        } catch (e) {
          const err = toCofferError(e);
          if (err.code === 'CANCELLED' || err.transient) throw err;
          failures.push(`${label}: ${err.message}`);
          ctx.log('error', `${label}: ${err.message}`);
        }
      }
    };
    let stopped: unknown;
    try {
      await Promise.all(Array.from({ length: Math.min(policy.maxStreams ?? 1, policy.selections.length) }, worker));
    } catch (e) {
      stopped = e;
    }
    const got = Object.keys(streams).length;
    const state = stopped || got === 0 ? 'failed' : failures.length ? 'partial' : 'ok';
    // As the catalog defines it: what was read against what was written (dedup and compression).
    if ((result.storedBytes ?? 0) > 0) result.dedupRatio = (result.scannedBytes ?? 0) / result.storedBytes!;
    ctx.emit({ type: 'progress', files: result.files as number, bytes: result.scannedBytes, bytesNew: result.newBytes });
    result.durationMs = s.now() - started;
    // Settled in one transaction with its copy: an image is 'ok' only with its snapshots committed.
    // The lifecycle's duplicates of this copy are queued with it: a backup with one copy is a
    // single point of failure. Copies that wait for an age or a window, and stages, are the
    // lifecycle pass's (lifecycle.ts).
    await s.catalog.transaction(async (tx) => {
      await tx.images.complete(image.id, { state, streams, summary: { ...result, failures } });
      if (got === 0) return;
      await tx.copies.add(image.id, { storageUnit: unit, snapshots: streams, state: 'ok', expires: expiryOf(first.retention, started) });
      // Those due now (no `after`, no window) are one job: one read of this copy for all of them.
      const due = lifecycle.copies.slice(1).filter((c) => isImmediate(c) && (c.from === undefined || c.from === unit));
      if (due.length) await tx.jobs.enqueue({ kind: 'duplicate', client: job.client, policy: job.policy, storageUnit: due[0]!.storageUnit, priority: 0, maxAttempts: 5, spec: { image: image.id, from: unit, targets: due.map((c) => ({ to: c.storageUnit, retention: c.retention })) } });
    });
    if (stopped) throw stopped;
    if (failures.length) {
      return { state: 'failed', result, error: { code: 'REFUSED', message: `${failures.length} of ${policy.selections.length} selection(s) failed: ${failures.join('; ')}` } };
    }
    return { state: (result.warnings as number) > 0 ? 'warnings' : 'succeeded', result };
  };
}

// The restore job and the ranking of copies moved to restore-executor.ts (chunk-level fallback, unavailable units).
export { restorableCopies, restoreExecutor } from './restore-executor.ts';

/**
 * The expiry job: every copy whose expiry has passed (by the server's clock) and that is not held
 * is marked expired, its snapshots are forgotten in its storage unit, and the record goes; an
 * image without copies goes too. Then each unit that lost snapshots is pruned, at most once per
 * `pruneIntervalMs`. Each step can be interrupted: an expired copy whose record is still there is
 * forgotten again (forgetting is idempotent) by the next run.
 */
export function expireExecutor(s: Services, options: { pruneIntervalMs: number }): JobExecutor {
  // One expiry at a time: two at once (DELETE /images/:id queues one per image) would forget the
  // same copies, the second failing on records the first removed, and their prunes would collide.
  let last: Promise<void> = Promise.resolve();
  return async (ctx) => {
    const before = last;
    let release!: () => void;
    last = new Promise<void>((resolve) => (release = resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(new CofferError('CANCELLED', 'Cancelled: the expiry was stopped'));
        if (ctx.signal.aborted) return onAbort();
        ctx.signal.addEventListener('abort', onAbort, { once: true });
        void before.then(() => {
          ctx.signal.removeEventListener('abort', onAbort);
          resolve();
        });
      });
      return await expireOnce(s, options, ctx);
    } finally {
      // The next one waits for this one's end, or for the one before if this was stopped waiting.
      void before.then(release);
    }
  };
}

async function expireOnce(s: Services, options: { pruneIntervalMs: number }, ctx: JobContext): Promise<JobEnd> {
  const now = s.now();
  // A copy an unfinished duplicate or stage still reads from is kept until that clone is done.
  const sources = new Set<string>();
  for (const kind of COPY_JOB_KINDS) {
    for (let cursor: string | undefined; ;) {
      const page = await s.catalog.jobs.list({ kind, state: ['queued', 'running'], limit: 1000, cursor });
      for (const j of page.items) sources.add(`${String(j.spec.image)}/${String(j.spec.from)}`);
      if (!page.next) break;
      cursor = page.next;
    }
  }
  // Marked first: from here on no restore or parent lookup uses these copies.
  let marked = 0;
  let kept = 0;
  // A copy in an immutable unit stays until its lock ends (server/object-lock.ts).
  const lockedUntil = lockLookup(s, now);
  const locked: LockedCopies = { copies: 0, snapshots: 0, until: null };
  for (let cursor: string | undefined; ;) {
    const page = await s.catalog.copies.expiredCopies(now, { limit: 500, cursor });
    for (const c of page.items) {
      if (sources.has(`${c.imageId}/${c.storageUnit}`)) {
        kept++;
        continue;
      }
      if (noteLockedCopy(locked, await lockedUntil(c))) continue;
      await s.catalog.copies.update(c.id, { state: 'expired' });
      marked++;
    }
    if (!page.next) break;
    cursor = page.next;
  }
  if (kept) ctx.log('info', `${kept} expired cop${kept === 1 ? 'y is' : 'ies are'} kept: an unfinished duplicate still reads from ${kept === 1 ? 'it' : 'them'}`);
  const byUnit = new Map<string, Copy[]>();
  for (let cursor: string | undefined; ;) {
    const page = await s.catalog.copies.list({ state: 'expired', limit: 1000, cursor });
    for (const c of page.items) byUnit.set(c.storageUnit, [...(byUnit.get(c.storageUnit) ?? []), c]);
    if (!page.next) break;
    cursor = page.next;
  }
  // Units whose last prune had to leave locked objects are pruned again once those locks pass.
  const retry = await pruneRetriesDue(s, now);
  for (const unit of retry) if (!byUnit.has(unit)) byUnit.set(unit, []);
  let forgotten = 0;
  const pruned: string[] = [];
  const lockedLeft: Array<{ unit: string } & PrunedLocked> = [];
  for (const [unit, copies] of byUnit) {
    if (ctx.signal.aborted) throw new CofferError('CANCELLED', 'Cancelled: the expiry was stopped');
    const storage = await s.storageAccess(unit);
    const snapshots = copies.flatMap((c) => Object.values(c.snapshots));
    const lastPrune = (await s.catalog.settings.get(`prune.last.${unit}`)) as number | undefined;
    const prune = lastPrune === undefined || now - lastPrune >= options.pruneIntervalMs || retry.has(unit);
    ctx.log('info', `storage unit ${unit}: forgetting ${snapshots.length} snapshot(s) of ${copies.length} expired cop${copies.length === 1 ? 'y' : 'ies'}${prune ? ', then pruning' : ''}`);
    const forgot = await runOnAgent(s.node(unit), 'forget', { storage, snapshots, prune: false }, { jobId: ctx.job.id, emit: ctx.emit, signal: ctx.signal });
    // Snapshots the storage would not delete yet (locked): their copies stay, for a later expiry.
    const stillLocked = lockedSnapshots(forgot);
    for (const c of copies) {
      if (Object.values(c.snapshots).some((id) => stillLocked.has(id))) {
        const ids = Object.values(c.snapshots).filter((id) => stillLocked.has(id));
        noteLockedCopy(locked, Math.max(...ids.map((id) => stillLocked.get(id)!)) || Infinity, ids.length);
        continue;
      }
      await s.catalog.transaction(async (tx) => {
        // Gone already: another server's expiry (a shared catalog) removed it.
        if (!(await tx.copies.list({ imageId: c.imageId, limit: 1000 })).items.some((x) => x.id === c.id)) return;
        await tx.copies.remove(c.id);
        const left = await tx.copies.list({ imageId: c.imageId, limit: 1 });
        if (left.items.length === 0) await tx.images.remove(c.imageId);
      });
      forgotten++;
    }
    if (prune) {
      const r = await runOnAgent(s.node(unit), 'forget', { storage, snapshots: [], prune: true }, { jobId: ctx.job.id, emit: ctx.emit, signal: ctx.signal });
      await s.catalog.settings.set(`prune.last.${unit}`, now);
      pruned.push(unit);
      const left = prunedLocked(r);
      await notePruneRetry(s, unit, left?.until ?? undefined);
      if (left) {
        lockedLeft.push({ unit, ...left });
        ctx.log('info', `storage unit ${unit}: prune left ${left.packs} locked pack(s) (${left.bytes} bytes) and ${left.indexFiles} locked index file(s); a prune after ${new Date(left.until!).toISOString()} deletes them`);
      }
    }
  }
  if (locked.copies) ctx.log('info', `${locked.copies} expired cop${locked.copies === 1 ? 'y is' : 'ies are'} kept: locked in an immutable storage unit${locked.until ? ` (the first lock ends ${new Date(locked.until).toISOString()})` : ''}; a later expiry removes ${locked.copies === 1 ? 'it' : 'them'}`);
  return { state: 'succeeded', result: { marked, kept, forgotten, pruned, locked, lockedLeft } };
}

export interface ReconcileReport {
  units: Array<{
    unit: string;
    snapshots: number;
    unknown: Array<{ id: string; time: string; host: string; paths: string[]; image?: string }>;
    lost: string[];
    imported: number;
    /** Snapshots committed by a backup whose image failed (its server was killed): recorded as an expired copy of that image, for the expiry to forget. */
    leftovers: Array<{ id: string; image: string }>;
    error?: string;
  }>;
}

/**
 * The reconcile job (spec { apply? }): compares every storage unit's snapshots with the copies
 * the catalog records. Copies whose snapshots are gone are marked lost (always: they cannot be
 * restored, whatever else happens). Snapshots the catalog does not know whose `image=` tag names
 * a failed image are what a backup committed before its server was killed: they are recorded
 * (always) as an expired copy of that image, which the next expiry forgets, taking the image
 * with it. Other snapshots the catalog does not know are listed, and with
 * `apply` imported as images of the client named by their host (created if unknown) under the
 * policy named by their tag, or `imported`.
 */
export function reconcileExecutor(s: Services): JobExecutor {
  return async (ctx) => {
    const apply = ctx.job.spec.apply === true;
    const report: ReconcileReport = { units: [] };
    for (let cursor: string | undefined; ;) {
      const page = await s.catalog.storageUnits.list({ limit: 1000, cursor });
      for (const unit of page.items) {
        const entry: ReconcileReport['units'][number] = { unit: unit.name, snapshots: 0, unknown: [], lost: [], imported: 0, leftovers: [] };
        report.units.push(entry);
        try {
          const storage = await s.storageAccess(unit);
          const r = await runOnAgent(s.node(unit), 'snapshots', { storage }, { jobId: ctx.job.id, signal: ctx.signal });
          const stored = r.snapshots as Array<{ id: string; time: string; host: { hostname: string }; paths: string[]; tags: string[] }>;
          entry.snapshots = stored.length;
          const present = new Set(stored.map((x) => x.id));
          const known = new Set<string>();
          for (let c2: string | undefined; ;) {
            const copies = await s.catalog.copies.list({ storageUnit: unit.name, limit: 1000, cursor: c2 });
            for (const c of copies.items) {
              const snaps = Object.values(c.snapshots);
              for (const id of snaps) known.add(id);
              if (c.state !== 'expired' && c.state !== 'lost' && snaps.some((id) => !present.has(id))) {
                await s.catalog.copies.update(c.id, { state: 'lost' });
                entry.lost.push(c.id);
                ctx.log('warn', `copy ${c.id} of image ${c.imageId} in ${unit.name}: a snapshot is gone from storage; marked lost`);
              }
            }
            if (!copies.next) break;
            c2 = copies.next;
          }
          for (const snap of stored) {
            if (known.has(snap.id)) continue;
            const tag = (name: string) => snap.tags.find((t) => t.startsWith(`${name}=`))?.slice(name.length + 1);
            const owner = tag('image') ? await s.catalog.images.find(tag('image')!) : undefined;
            if (owner?.state === 'failed') {
              entry.leftovers.push({ id: snap.id, image: owner.id });
              continue;
            }
            entry.unknown.push({ id: snap.id, time: snap.time, host: snap.host.hostname, paths: snap.paths, ...(tag('image') ? { image: tag('image') } : {}) });
            if (!apply) continue;
            const client = snap.host.hostname.toLowerCase();
            if (!(await s.catalog.clients.find(client))) await s.catalog.clients.upsert({ name: client });
            const time = Date.parse(snap.time);
            await s.catalog.transaction(async (tx) => {
              const image = await tx.images.add({ client, policy: tag('policy') ?? 'imported', schedule: tag('schedule'), level: 'imported', time: Number.isFinite(time) ? time : s.now(), state: 'ok', streams: { imported: snap.id }, summary: { importedFrom: unit.name, paths: snap.paths } });
              await tx.copies.add(image.id, { storageUnit: unit.name, snapshots: { imported: snap.id }, state: 'ok', expires: null });
            });
            entry.imported++;
          }
          const byImage = new Map<string, string[]>();
          for (const l of entry.leftovers) byImage.set(l.image, [...(byImage.get(l.image) ?? []), l.id]);
          for (const [imageId, ids] of byImage) {
            await s.catalog.copies.add(imageId, { storageUnit: unit.name, snapshots: Object.fromEntries(ids.map((id, i) => [`leftover-${i}`, id])), state: 'expired', expires: s.now() });
            ctx.log('info', `${unit.name}: ${ids.length} snapshot(s) of image ${imageId}, whose backup was interrupted, recorded as an expired copy: the next expiry forgets them`);
          }
          if (entry.unknown.length) ctx.log(apply ? 'info' : 'warn', `${unit.name}: ${entry.unknown.length} snapshot(s) the catalog did not know${apply ? ', imported' : ' (run `coffer catalog reconcile --apply` to import them)'}`);
        } catch (e) {
          const err = toCofferError(e);
          if (err.code === 'CANCELLED') throw err;
          entry.error = err.message;
          ctx.log('error', `${unit.name}: ${err.message}`);
        }
      }
      if (!page.next) break;
      cursor = page.next;
    }
    const failed = report.units.filter((u) => u.error).length;
    const problems = report.units.reduce((n, u) => n + u.lost.length + (apply ? 0 : u.unknown.length), 0);
    return { state: failed ? 'failed' : problems ? 'warnings' : 'succeeded', result: report as unknown as JobResult, ...(failed ? { error: { code: 'STORAGE_ERROR', message: `${failed} storage unit(s) could not be read` } } : {}) };
  };
}
