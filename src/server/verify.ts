// Verification and automatic repair of stored copies (issue 10, "Verification"): the server's
// `verify` and `repair` jobs, and the timer that queues verify jobs on each storage unit's
// `verify.every`.
//
// verify (spec { unit, image?, subsetPercent?, scheduled? }): the embedded agent reads back packs
// of the unit and checks every blob in them (src/jobs/verify.ts): all of them, or a slice of the
// pack-id space that starts where the unit's last slice ended (a cursor in the catalog's
// settings, `verify.cursor.<unit>`), so that successive runs read every pack within the unit's
// `verify.period` (src/repository/pack-slice.ts); with `image`, only the packs of that image's
// copy. Damage is recorded in the repository (writers stop deduplicating against it), the copies
// whose snapshots use data with no good copy left are marked `suspect`, an alert names the images
// and the files affected, and a repair job is queued for the unit.
//
// repair (spec { unit, alert? }): makes the unit's suspect copies whole again from good copies in
// other units, with no one acting: the damaged packs are taken out of use (repairPacks keeps every
// blob in them that still reads), then each suspect copy's snapshots are cloned back from an ok
// copy of the same image elsewhere; the clone engine sends only what the unit lacks, which is the
// data that was lost. With the same chunk-id key the clone's snapshot is the one already there;
// with other keys the clone recomputes every id under the unit's key from the plaintext and keeps
// the chunk boundaries, so it rebuilds the same trees and finds the same snapshot: either way the
// copy's record keeps pointing at its snapshots. Should a clone ever write a different snapshot
// (its content differs), the record is changed to point at the new one and the old one is
// forgotten, since it uses the lost data. The copies' packs are then read back; copies that read
// clean are ok again and the alert is resolved, saying what came from where. A copy with no good
// copy elsewhere stays suspect, and the alert says so.

import type { Logger } from 'pino';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { Alert } from '../catalog/alerts.ts';
import type { Copy } from '../catalog/copies.ts';
import type { Image } from '../catalog/images.ts';
import type { StorageUnit } from '../catalog/storage-units.ts';
import { parseDuration } from '../policy/index.ts';
import { ALL_PACKS, nextSlice, percentLength, sliceLength, slicePercent, slicesPerPeriod, type PackSlice } from '../repository/pack-slice.ts';
import type { JobContext, JobEnd, JobExecutor } from './dispatcher.ts';
import { restorableCopies } from './executors.ts';
import { runOnAgent, type Services } from './services.ts';
import { unavailableUnits } from './units.ts';

/** A storage unit's verify schedule, in milliseconds, and the runs one period is split into. */
export interface VerifySchedule {
  everyMs: number;
  periodMs: number;
  slices: number;
}

/** The unit's `verify` schedule, or undefined when it has none. */
export function verifyScheduleOf(unit: StorageUnit): VerifySchedule | undefined {
  const v = (unit.spec as { verify?: { every: string; period?: string } }).verify;
  if (!v) return undefined;
  const everyMs = parseDuration(v.every);
  const periodMs = v.period === undefined ? everyMs : parseDuration(v.period);
  return { everyMs, periodMs, slices: slicesPerPeriod(everyMs, periodMs) };
}

/** Where the next slice of a unit starts, and when a slice was last read. */
interface VerifyCursor {
  next: number;
  lastRun?: number;
}

const cursorKey = (unit: string) => `verify.cursor.${unit}`;
const scheduleKey = (unit: string) => `verify.queued.${unit}`;

/** Files listed per copy in an alert at most (the count says how many there were). */
const FILES_LISTED = 100;

export interface VerifySpec {
  unit: string;
  image?: string;
  /** Read this share of the packs, from the unit's cursor on (0 < n ≤ 100); default all. */
  subsetPercent?: number;
  /** Queued by the unit's schedule: read the schedule's share, from the cursor on. */
  scheduled?: boolean;
}

interface AgentVerifyResult {
  ok: boolean;
  packs: number;
  packsRead: number;
  bytesRead: number;
  snapshots: number;
  problems: Array<{ kind: string; severity: 'error' | 'warning'; message: string; pack?: string; snapshot?: string; path?: string }>;
  problemCount: number;
  errors: number;
  affected: Array<{ snapshot: string; path: string; blob: string }>;
  affectedCount: number;
  damagedPacks: string[];
  damageCleared: string[];
  advice: string[];
}

/** Every copy in `unit` in one of `states` (all pages). */
async function copiesIn(s: Services, unit: string, states: Copy['state'][]): Promise<Copy[]> {
  const out: Copy[] = [];
  for (let cursor: string | undefined; ;) {
    const page = await s.catalog.copies.list({ storageUnit: unit, state: states, limit: 1000, cursor });
    out.push(...page.items);
    if (!page.next) return out;
    cursor = page.next;
  }
}

/** An ok copy of the image in another unit to repair from (best first, as a restore picks), if any. */
async function goodCopyElsewhere(s: Services, image: Image, unit: string): Promise<Copy | undefined> {
  return (await restorableCopies(s, image)).find((c) => c.storageUnit !== unit && c.state === 'ok');
}

/** The unit's unresolved damage alerts, newest first. */
async function openDamageAlerts(s: Services, unit: string): Promise<Alert[]> {
  return (await s.catalog.alerts.list({ storageUnit: unit, kind: 'damage', state: ['open', 'acknowledged'], limit: 1000 })).items;
}

/** A repair job for the unit that has not ended yet, if any. */
async function pendingJob(s: Services, kind: string, unit: string): Promise<string | undefined> {
  const jobs = await s.catalog.jobs.list({ kind, storageUnit: unit, state: ['queued', 'running'], limit: 1 });
  return jobs.items[0]?.id;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** The verify job. */
export function verifyExecutor(s: Services, options: { log: Logger }): JobExecutor {
  return async (ctx) => {
    const spec = ctx.job.spec as unknown as VerifySpec;
    const unit = await s.catalog.storageUnits.get(spec.unit);
    // A unit whose volumes are offline is not read: a scheduled verify passes it over, one asked
    // for fails saying so (a repair from it would fail the same way).
    const down = (await unavailableUnits(s.catalog)).get(unit.name);
    if (down) {
      if (spec.scheduled) return { state: 'succeeded', result: { unit: unit.name, skipped: `the storage unit is marked unavailable: ${down.reason}` } };
      throw new CofferError('CONFLICT', `Cannot verify storage unit ${unit.name}: it is marked unavailable (${down.reason})`, { hint: `Bring its volumes or disks back online, then run \`coffer units available ${unit.name}\` (an administrator).` });
    }
    const storage = await s.storageAccess(unit);

    // Which packs: all, or the next slice from the unit's cursor.
    let slice: PackSlice = ALL_PACKS;
    let cursorAfter: number | undefined;
    const schedule = verifyScheduleOf(unit);
    if (spec.scheduled && !schedule) return { state: 'succeeded', result: { unit: unit.name, skipped: 'the storage unit has no verify schedule any more' } };
    const length = spec.subsetPercent !== undefined ? percentLength(spec.subsetPercent) : spec.scheduled && schedule ? sliceLength(schedule.slices) : undefined;
    if (length !== undefined) {
      const cursor = (await s.catalog.settings.get<VerifyCursor>(cursorKey(unit.name))) ?? { next: 0 };
      const n = nextSlice(cursor.next, length);
      slice = n.slice;
      cursorAfter = n.cursor;
    }
    let snapshots: string[] | undefined;
    if (spec.image) {
      const copy = (await s.catalog.copies.list({ imageId: spec.image, storageUnit: unit.name, state: ['ok', 'suspect'], limit: 10 })).items[0];
      if (!copy) throw new CofferError('NOT_FOUND', `Cannot verify image ${spec.image} in storage unit ${unit.name}: it has no copy there in state ok or suspect`, { hint: 'See its copies with `coffer images` (GET /api/v1/images/ID).' });
      snapshots = [...new Set(Object.values(copy.snapshots))];
    }
    const share = slice.length >= ALL_PACKS.length ? 'every pack' : `the packs of ${slicePercent(slice).toFixed(slicePercent(slice) < 1 ? 3 : 1)}% of the pack-id space from ${slice.start.toString(16).padStart(8, '0')}`;
    ctx.log('info', `verifying storage unit ${unit.name}${spec.image ? ` (the copy of image ${spec.image})` : ''}: reading back ${share}`);
    const r = await runOnAgent(s.node(unit), 'verify', {
      storage,
      ...(slice.length < ALL_PACKS.length ? { slice } : {}),
      ...(snapshots ? { snapshots } : {}),
    }, { jobId: ctx.job.id, emit: ctx.emit, signal: ctx.signal }) as unknown as AgentVerifyResult;
    if (cursorAfter !== undefined) await s.catalog.settings.set(cursorKey(unit.name), { next: cursorAfter, lastRun: s.now() } satisfies VerifyCursor);
    ctx.log('info', `read ${r.packsRead} of ${r.packs} pack(s) (${r.bytesRead} bytes) and the structure of ${r.snapshots} snapshot(s): ${r.ok ? 'no damage' : `${plural(r.errors, 'error')}, ${plural(r.damagedPacks.length, 'damaged pack')}`}`);
    for (const cleared of r.damageCleared) ctx.log('info', `pack ${cleared.slice(0, 12)} reads intact now: its damage record was cleared`);
    const result = {
      unit: unit.name, ...(spec.image ? { image: spec.image } : {}), packs: r.packs, packsRead: r.packsRead, bytesRead: r.bytesRead,
      slicePercent: slicePercent(slice), damagedPacks: r.damagedPacks.length, affectedFiles: r.affectedCount,
    };
    if (r.ok && r.damagedPacks.length === 0) return { state: 'succeeded', result };
    for (const p of r.problems.slice(0, 50)) ctx.log(p.severity === 'error' ? 'error' : 'warn', p.message);
    const damage = await onDamage(s, ctx, unit.name, r, options.log);
    return { state: 'warnings', result: { ...result, ...damage } };
  };
}

/**
 * After a verify found damage: marks the affected copies suspect, raises (or updates) the unit's
 * damage alert, and queues a repair job for the unit unless one is pending.
 */
async function onDamage(s: Services, ctx: JobContext, unit: string, r: AgentVerifyResult, log: Logger): Promise<{ suspect: number; alert?: string; repairJob?: string }> {
  // The snapshots the damage touches: files without a good copy, and snapshots or trees unreadable.
  const files = new Map<string, string[]>();
  for (const a of r.affected) files.set(a.snapshot, [...(files.get(a.snapshot) ?? []), a.path]);
  for (const p of r.problems) if (p.severity === 'error' && p.snapshot && !files.has(p.snapshot)) files.set(p.snapshot, p.path ? [p.path] : []);
  const hit: Array<{ copy: Copy; image: Image; files: string[]; good?: Copy }> = [];
  const known = new Set<string>();
  for (const copy of await copiesIn(s, unit, ['ok', 'suspect'])) {
    const snaps = Object.values(copy.snapshots);
    for (const id of snaps) known.add(id);
    if (!snaps.some((id) => files.has(id))) continue;
    const image = await s.catalog.images.get(copy.imageId);
    const good = await goodCopyElsewhere(s, image, unit);
    hit.push({ copy, image, files: [...new Set(snaps.flatMap((id) => files.get(id) ?? []))], ...(good ? { good } : {}) });
  }
  for (const h of hit) if (h.copy.state === 'ok') await s.catalog.copies.update(h.copy.id, { state: 'suspect' });
  const strangers = [...files.keys()].filter((id) => !known.has(id));

  // The repair: the damaged packs out of use, the lost data back from the good copies.
  let repairJob = await pendingJob(s, 'repair', unit);
  const repairable = r.damagedPacks.length > 0 && (hit.length === 0 || hit.some((h) => h.good));
  if (!repairJob && repairable) {
    repairJob = (await s.catalog.jobs.enqueue({ kind: 'repair', storageUnit: unit, priority: 10, maxAttempts: 3, spec: { unit }, requestedBy: 'server' })).id;
    ctx.log('info', `queued repair job ${repairJob} for storage unit ${unit}`);
  }
  if (hit.length === 0 && strangers.length === 0 && r.affectedCount === 0) {
    // Damage to copies of blobs that have a sound twin: nothing is lost, the repair tidies it.
    ctx.log('warn', `${plural(r.damagedPacks.length, 'damaged pack')} in ${unit}, but every blob a snapshot uses has a good copy: no image is affected`);
    return { suspect: 0, ...(repairJob ? { repairJob } : {}) };
  }

  const fileCount = hit.reduce((n, h) => n + h.files.length, 0);
  const imageLines = hit.map((h) => `image ${h.image.id} (client ${h.image.client}, policy ${h.image.policy}): ${h.files.slice(0, 5).join(', ')}${h.files.length > 5 ? ` and ${h.files.length - 5} more` : ''}`);
  const message = `Verify of storage unit ${unit} found ${plural(r.damagedPacks.length, 'damaged pack')}: ${plural(fileCount, 'file')} of ${plural(hit.length, 'image')} have no good copy there${hit.length ? `: ${imageLines.join('; ')}` : ''}${strangers.length ? `; and ${plural(strangers.length, 'snapshot')} the catalog does not know` : ''}`;
  const lonely = hit.filter((h) => !h.good);
  const hint = [
    repairJob ? `Repair job ${repairJob} takes the damaged packs out of use and copies the lost data back from ${[...new Set(hit.flatMap((h) => (h.good ? [h.good.storageUnit] : [])))].join(', ') || 'nowhere'}; nothing to do unless it fails (\`coffer jobs show ${repairJob}\`).` : '',
    lonely.length ? `No good copy in another storage unit: ${lonely.map((h) => `image ${h.image.id}`).join(', ')}; ${lonely.length === 1 ? 'its copy' : 'their copies'} in ${unit} ${lonely.length === 1 ? 'stays' : 'stay'} suspect (what still reads restores). An administrator can make the rest of such snapshots restorable without the damaged files with \`coffer repo repair snapshots\` on the unit's repository, and back the clients up again.` : '',
  ].filter(Boolean).join(' ');
  const details = {
    verifyJob: ctx.job.id,
    packs: r.damagedPacks,
    fileCount,
    copies: hit.map((h) => ({ copy: h.copy.id, image: h.image.id, client: h.image.client, files: h.files.slice(0, FILES_LISTED), fileCount: h.files.length, goodCopy: h.good?.storageUnit ?? null })),
    ...(strangers.length ? { unknownSnapshots: strangers } : {}),
    ...(repairJob ? { repairJob } : {}),
    problems: r.problems.filter((p) => p.severity === 'error').slice(0, 20).map((p) => p.message),
  };
  const images = hit.map((h) => h.image.id);
  const existing = (await openDamageAlerts(s, unit))[0];
  const alert = existing
    ? await s.catalog.alerts.update(existing.id, { message, hint: hint || null, details, images: [...new Set([...existing.images, ...images])] })
    : await s.catalog.alerts.add({ kind: 'damage', severity: 'error', storageUnit: unit, images, message, ...(hint ? { hint } : {}), details });
  log.error({ alert: alert.id, unit, images, files: fileCount, packs: r.damagedPacks, repairJob }, message);
  ctx.log('error', `${message} (alert ${alert.id})`);
  return { suspect: hit.length, alert: alert.id, ...(repairJob ? { repairJob } : {}) };
}

interface Repaired {
  copy: string;
  image: string;
  from: string;
  bytesSent: number;
  blobsSent: number;
  snapshots: Record<string, string>;
}

/** The repair job. */
export function repairExecutor(s: Services, options: { log: Logger }): JobExecutor {
  return async (ctx): Promise<JobEnd> => {
    const spec = ctx.job.spec as { unit: string };
    const unit = await s.catalog.storageUnits.get(spec.unit);
    const storage = await s.storageAccess(unit);
    const opts = { jobId: ctx.job.id, emit: ctx.emit, signal: ctx.signal };

    // 1. The damaged packs out of use; what still reads in them is kept.
    const packs = await runOnAgent(s.node(), 'repair', { storage }, opts);
    const packLines = packs.packs as Array<{ pack: string; salvaged: number; elsewhere: number; lost: number }>;
    ctx.log('info', `storage unit ${unit.name}: ${plural(packLines.length, 'damaged pack')} taken out of use (quarantined), ${plural(packs.blobsSalvaged as number, 'blob')} in them kept, ${plural(packs.blobsLost as number, 'blob')} lost there${packLines.length ? ` (${packLines.map((p) => p.pack.slice(0, 12)).join(', ')})` : ''}`);

    // 2. Each suspect copy's data back from a good copy of the same image.
    const repaired: Repaired[] = [];
    const unrepaired: Array<{ copy: string; image: string; reason: string }> = [];
    for (const copy of await copiesIn(s, unit.name, ['suspect'])) {
      const image = await s.catalog.images.get(copy.imageId);
      const good = await goodCopyElsewhere(s, image, unit.name);
      if (!good) {
        unrepaired.push({ copy: copy.id, image: image.id, reason: 'no ok copy of the image in another storage unit' });
        ctx.log('warn', `image ${image.id}: no ok copy in another storage unit to repair its copy in ${unit.name} from; it stays suspect`);
        continue;
      }
      try {
        const r = await runOnAgent(s.node(), 'clone', {
          source: await s.storageAccess(good.storageUnit),
          target: storage,
          snapshots: [...new Set(Object.values(good.snapshots))],
        }, opts);
        const mapped = r.snapshots as Record<string, string>;
        const snapshots = Object.fromEntries(Object.entries(copy.snapshots).map(([key, id]) => [key, good.snapshots[key] ? mapped[good.snapshots[key]!] ?? id : id]));
        repaired.push({ copy: copy.id, image: image.id, from: good.storageUnit, bytesSent: r.bytesSentRaw as number, blobsSent: r.blobsSent as number, snapshots });
        ctx.log('info', `image ${image.id}: ${plural(r.blobsSent as number, 'blob')} (${r.bytesSentRaw} bytes) copied back into ${unit.name} from its copy in ${good.storageUnit}; ${r.bytesPresent} of ${r.bytesExamined} bytes were still there`);
      } catch (e) {
        const err = toCofferError(e);
        if (err.code === 'CANCELLED' || err.transient) throw err;
        unrepaired.push({ copy: copy.id, image: image.id, reason: `the clone from ${good.storageUnit} failed: ${err.message}` });
        ctx.log('error', `image ${image.id}: cannot copy its data back from ${good.storageUnit}: ${err.message}`);
      }
    }

    // 3. Read the repaired copies back; those that read clean are ok again.
    const clean: Repaired[] = [];
    if (repaired.length) {
      const ids = [...new Set(repaired.flatMap((x) => Object.values(x.snapshots)))];
      const check = await runOnAgent(s.node(), 'verify', { storage, snapshots: ids }, opts) as unknown as AgentVerifyResult;
      const stillBad = new Set(check.affected.map((a) => a.snapshot));
      for (const p of check.problems) if (p.severity === 'error' && p.snapshot) stillBad.add(p.snapshot);
      for (const x of repaired) {
        if (Object.values(x.snapshots).some((id) => stillBad.has(id))) {
          unrepaired.push({ copy: x.copy, image: x.image, reason: 'it still does not read clean after the repair' });
          ctx.log('error', `image ${x.image}: its copy in ${unit.name} still does not read clean after the repair; it stays suspect`);
        } else clean.push(x);
      }
    }
    for (const x of clean) await settleCopy(s, ctx, unit.name, x);

    // 4. The alert: resolved when nothing is left suspect, else it says what is left.
    const alerts = await openDamageAlerts(s, unit.name);
    const from = clean.map((x) => `image ${x.image} from ${x.from} (${plural(x.blobsSent, 'blob')}, ${x.bytesSent} bytes)`).join('; ');
    if (unrepaired.length === 0) {
      for (const a of alerts) await s.catalog.alerts.resolve(a.id, 'server', `repaired by job ${ctx.job.id}${from ? `: ${from}` : ': the damaged packs were taken out of use, no image had lost data'}`);
      if (alerts.length) options.log.info({ unit: unit.name, alerts: alerts.map((a) => a.id), repaired: clean.length }, `storage unit ${unit.name} repaired${from ? `: ${from}` : ''}`);
    } else {
      const left = unrepaired.map((u) => `image ${u.image}: ${u.reason}`).join('; ');
      for (const a of alerts) {
        await s.catalog.alerts.update(a.id, {
          hint: `Repair job ${ctx.job.id} could not repair ${plural(unrepaired.length, 'copy', 'copies')} in ${unit.name} (${left}); ${unrepaired.length === 1 ? 'it stays' : 'they stay'} suspect. Without a good copy elsewhere, an administrator can make the rest of such snapshots restorable without the damaged files with \`coffer repo repair snapshots\` on the unit's repository, and back the clients up again.${from ? ` Repaired: ${from}.` : ''}`,
          details: { ...a.details, repairJob: ctx.job.id, unrepaired, repaired: clean.map((x) => ({ copy: x.copy, image: x.image, from: x.from, bytesSent: x.bytesSent })) },
        });
      }
      options.log.error({ unit: unit.name, unrepaired }, `storage unit ${unit.name}: ${plural(unrepaired.length, 'copy', 'copies')} could not be repaired`);
    }
    const result = {
      unit: unit.name, packs: packLines.length, blobsSalvaged: packs.blobsSalvaged as number, blobsLost: packs.blobsLost as number,
      repaired: clean.map((x) => ({ copy: x.copy, image: x.image, from: x.from, blobsSent: x.blobsSent, bytesSent: x.bytesSent })), unrepaired,
      newBytes: clean.reduce((n, x) => n + x.bytesSent, 0),
    };
    return { state: unrepaired.length ? 'warnings' : 'succeeded', result };
  };
}

/** A repaired copy is ok again; should its snapshots be new ones, the record follows them and the old ones go. */
async function settleCopy(s: Services, ctx: JobContext, unit: string, x: Repaired): Promise<void> {
  const copy = await s.catalog.copies.get(x.copy);
  const replaced = Object.entries(copy.snapshots).filter(([key, id]) => x.snapshots[key] !== id).map(([, id]) => id);
  await s.catalog.copies.update(x.copy, { state: 'ok', ...(replaced.length ? { snapshots: x.snapshots } : {}) });
  if (replaced.length === 0) {
    ctx.log('info', `image ${x.image}: its copy in ${unit} reads clean again and is ok`);
    return;
  }
  // The old snapshots use the lost data: forgotten, unless another copy's record names them.
  const others = new Set((await copiesIn(s, unit, ['ok', 'suspect', 'expired'])).filter((c) => c.id !== x.copy).flatMap((c) => Object.values(c.snapshots)));
  const forget = replaced.filter((id) => !others.has(id));
  if (forget.length) await runOnAgent(s.node(), 'forget', { storage: await s.storageAccess(unit), snapshots: forget, prune: false }, { jobId: ctx.job.id, signal: ctx.signal });
  ctx.log('info', `image ${x.image}: its copy in ${unit} now points at ${plural(replaced.length, 'new snapshot')} written by the repair (${plural(forget.length, 'old one')} forgotten) and is ok`);
}

/**
 * Queues the scheduled verify jobs: for every storage unit with a `verify` schedule, a job each
 * `every` (the first at once), unless one is still pending for the unit. It rides on the
 * scheduler loop's ticks (at least one a minute, on the server's clock): poke() looks at the units
 * when the earliest is due, wake() makes the next poke look whatever (documents were applied). It
 * has no sleep of its own, so a test's fake clock drives it with the scheduler.
 */
export class VerifyTimer {
  private readonly s: Services;
  private readonly clock: { now(): number };
  private readonly options: { onQueued?: () => void; log: Logger };
  /** When the next unit is due (Infinity: none has a schedule); -Infinity: look at the next poke. */
  private due = -Infinity;
  private woken = false;
  private running: Promise<void> | undefined;

  constructor(s: Services, clock: { now(): number }, options: { onQueued?: () => void; log: Logger }) {
    this.s = s;
    this.clock = clock;
    this.options = options;
  }

  wake(): void {
    this.woken = true;
    this.due = -Infinity;
  }

  /** Queues what is due now, in the background (one look at a time). */
  poke(): void {
    if (this.running || this.clock.now() < this.due) return;
    this.woken = false;
    this.running = this.tick().then(
      (next) => {
        this.due = this.woken ? -Infinity : next;
      },
      (e: unknown) => {
        this.options.log.error({ err: toCofferError(e).message }, 'verify schedule');
        this.due = this.clock.now() + 60_000;
      },
    ).finally(() => {
      this.running = undefined;
    });
  }

  /** Waits for a look under way (the server is stopping). */
  async idle(): Promise<void> {
    await this.running;
  }

  /** Queues what is due; returns when the next unit is due (Infinity: none has a schedule). */
  async tick(): Promise<number> {
    const now = this.clock.now();
    let next = Infinity;
    for (let cursor: string | undefined; ;) {
      const page = await this.s.catalog.storageUnits.list({ limit: 1000, cursor });
      for (const unit of page.items) {
        const schedule = verifyScheduleOf(unit);
        if (!schedule) continue;
        const last = await this.s.catalog.settings.get<number>(scheduleKey(unit.name));
        let due = last === undefined ? now : last + schedule.everyMs;
        if (due <= now) {
          if (!(await pendingJob(this.s, 'verify', unit.name))) {
            await this.s.catalog.jobs.enqueue({ kind: 'verify', storageUnit: unit.name, priority: -10, maxAttempts: 3, spec: { unit: unit.name, scheduled: true }, requestedBy: 'server' });
            this.options.onQueued?.();
          }
          await this.s.catalog.settings.set(scheduleKey(unit.name), now);
          due = now + schedule.everyMs;
        }
        next = Math.min(next, due);
      }
      if (!page.next) break;
      cursor = page.next;
    }
    return next;
  }
}
