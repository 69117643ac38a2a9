// Lifecycle execution beyond the duplicates a backup queues at once (issue #10): the copies that
// wait for an age (`after`), a daily window (`window`), or room on their source unit
// (`highWater`), and `stage` copies, which release their source once they are made.
//
// The pass. For every image whose lifecycle may have work due (images.lifecycle_next <= now, a
// keyset page at a time on its own index, src/catalog/lifecycle-scan.ts), decide() looks at each
// duplicate and stage copy of its lifecycle:
//   - made already (a copy in its unit, or staged on from there), or past its own retention: done;
//   - a job of it queued or running (or failed within the hour): wait for that job;
//   - its source copy not there in state ok: wait while the source may still come, else give up;
//   - younger than `after`: look again then;
//   - otherwise queue a `duplicate` or `stage` job for it, with a window: not before the window
//     opens (the queue's not_before) and spec.notAfter its closing; a job claimed after it
//     closed ends `missed`, and the next pass queues it again for the next window;
//   - a stage whose copy is made releases its source (below) once nothing else needs it.
// The image's lifecycle_next becomes the earliest time something may change, or null when its
// lifecycle is done: an image is read again only when it may have work. The pass runs at start,
// every LIFECYCLE_PERIOD_MS, and soon after a backup, duplicate or stage job ends (the image is
// looked at again at once); it decides by the server's clock (a fake one in tests).
//
// High water. A stage with `highWater: 80%` also runs early, oldest copies first, while its
// source unit holds more than that fraction of its capacity (the unit's `capacity`, else a
// path's file system size by statfs; the agent's `usage` job counts the bytes), until the
// copies staged (their images' stored bytes, an estimate) bring it below; the unit is pruned at
// the next expiry, and the next pass measures again.
//
// Release. Once a stage's copy is recorded (the clone verified every blob as it wrote it,
// src/jobs/clone.ts), its source copy is marked expired, so that restores read the staged copy
// and the expiry forgets the source's snapshots and prunes the unit; never a held copy, nor a
// source another unfinished duplicate or stage of the image still reads.

import { statfs } from 'node:fs/promises';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { Copy } from '../catalog/copies.ts';
import type { Image } from '../catalog/images.ts';
import type { Job } from '../catalog/jobs.ts';
import { checkPercent, checkSize, parseDuration, parseWindow, type LifecycleDocument, type PolicyDocument } from '../policy/index.ts';
import { compileCalendar, type Interval } from '../scheduler/calendar.ts';
import type { JobContext, JobEnd, JobExecutor } from './dispatcher.ts';
import { lifecycleOf, runOnAgent, type Services } from './services.ts';
import { parseBackendUrl } from '../storage/url.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** How often the pass runs without being woken, on the server's clock. */
export const LIFECYCLE_PERIOD_MS = 15 * MINUTE;
/** A copy whose job failed (out of attempts) is queued again after this long. */
const FAILED_WAIT_MS = HOUR;
/** A held source is looked at again this often (its hold may be released). */
const HELD_WAIT_MS = DAY;
/** A unit's used bytes are measured at most this often (listing a large bucket takes a while). */
const USAGE_MAX_AGE_MS = HOUR;
/** Images read per page, and pages per pass (the rest waits for the next pass). */
const PAGE = 200;
const MAX_PAGES = 500;
/** Early (high-water) stages queued per unit per pass at most. */
const MAX_EARLY_PER_PASS = 100;
/** The job kinds that make copies (the queue's, and the expiry's sources). */
export const COPY_JOB_KINDS = ['duplicate', 'stage'] as const;

type LifecycleCopy = LifecycleDocument['spec']['copies'][number];

/** A duplicate or stage copy of a lifecycle, read into numbers. */
export interface PlannedCopy {
  /** Its place in the lifecycle's copies (1 and up: 0 is the backup copy). */
  index: number;
  operation: 'duplicate' | 'stage';
  unit: string;
  /** The unit it is made from, and that copy's place. */
  source: string;
  sourceIndex: number;
  afterMs: number;
  retention: string;
  retentionMs: number;
  window?: { start: string; durationMs: number };
  /** Stage only: the fraction of the source unit's capacity above which it runs early. */
  highWater?: number;
}

/** Whether the backup job queues this copy itself, at once (no age, no window). */
export function isImmediate(copy: LifecycleCopy): boolean {
  return copy.operation === 'duplicate' && copy.window === undefined && (copy.after === undefined || parseDuration(copy.after, { zero: true }) === 0);
}

/** The duplicate and stage copies of a (validated) lifecycle, in order. */
export function planCopies(spec: LifecycleDocument['spec']): PlannedCopy[] {
  const copies = spec.copies;
  return copies.slice(1).map((c, k) => {
    const source = c.from ?? copies[0]!.storageUnit;
    const hw = c.highWater === undefined ? undefined : checkPercent(c.highWater);
    return {
      index: k + 1,
      operation: c.operation as 'duplicate' | 'stage',
      unit: c.storageUnit,
      source,
      sourceIndex: copies.findIndex((x) => x.storageUnit === source),
      afterMs: c.after === undefined ? 0 : parseDuration(c.after, { zero: true }),
      retention: c.retention,
      retentionMs: parseDuration(c.retention, { infinite: true }),
      ...(c.window ? { window: { start: c.window.start, durationMs: parseWindow(c.window).durationMs } } : {}),
      ...(hw?.ok ? { highWater: hw.fraction } : {}),
    };
  });
}

/** The window open at `t`, or the next one to open, in `timezone` (DST-correct, src/scheduler). */
export function windowAt(window: { start: string; durationMs: number }, t: number, timezone: string): Interval {
  // A daily frequency only carries the window: windowAt() does not look at slots.
  return compileCalendar({ every: DAY, window, timezone }, { timezone }).windowAt(t)!;
}

/** What the pass knows of the jobs that make copies: by `image\0unit`. */
export interface CopyJobs {
  /** Queued or running, with when a queued one may start. */
  open: Map<string, { notBefore: number | undefined }>;
  /** Units the image's open copy jobs read from: `image\0from`. */
  reading: Set<string>;
  /** Failed (out of attempts) lately: when. */
  failed: Map<string, number>;
}

export type LifecycleAction =
  | { kind: 'queue'; copy: PlannedCopy; notBefore?: number; notAfter?: number }
  | { kind: 'release'; copy: PlannedCopy; source: Copy };

export interface Decision {
  actions: LifecycleAction[];
  /** When to look at the image again; null: its lifecycle is done. */
  next: number | null;
  /** Why each copy waits, for the log and the tests: `unit: reason`. */
  waits: string[];
}

const key = (image: string, unit: string) => `${image}\u0000${unit}`;

/**
 * What to do for one image now: pure, from the image, its copies, its lifecycle's planned copies,
 * the copy jobs and the clock. `timezone` is the one its windows are read in.
 */
export function decide(image: Pick<Image, 'id' | 'time' | 'state'>, copies: readonly Copy[], planned: readonly PlannedCopy[], jobs: CopyJobs, now: number, timezone: string): Decision {
  const decision: Decision = { actions: [], next: null, waits: [] };
  const at = (t: number) => {
    const when = Math.max(t, now + 1);
    decision.next = decision.next === null ? when : Math.min(decision.next, when);
  };
  if (image.state === 'failed') return decision;
  if (image.state === 'pending') {
    // Its backup runs: the job's end looks at it again; this is in case that never comes.
    at(now + LIFECYCLE_PERIOD_MS);
    decision.waits.push('the backup is still running');
    return decision;
  }
  const has = (unit: string) => copies.some((c) => c.storageUnit === unit);
  const made = (c: PlannedCopy): boolean => has(c.unit) || planned.some((s) => s.operation === 'stage' && s.source === c.unit && s.index > c.index && made(s));
  const tooLate = (c: PlannedCopy) => image.time + c.retentionMs <= now;
  const usable = (unit: string) => copies.some((x) => x.storageUnit === unit && (x.state === 'ok' || x.state === 'suspect'));
  const sourceOf = (c: PlannedCopy) => (c.sourceIndex > 0 ? planned.find((p) => p.index === c.sourceIndex) : undefined);
  // A copy still to come: not made, not past its retention, and its source there or to come.
  const toCome = (c: PlannedCopy): boolean => {
    if (made(c) || tooLate(c)) return false;
    if (usable(c.source)) return true;
    const earlier = sourceOf(c);
    return earlier !== undefined && toCome(earlier);
  };

  for (const c of planned) {
    const wait = (reason: string, t: number) => {
      decision.waits.push(`${c.unit}: ${reason}`);
      at(t);
    };
    if (made(c)) {
      if (c.operation === 'stage') releaseStep(c);
      continue;
    }
    if (tooLate(c)) continue;
    const open = jobs.open.get(key(image.id, c.unit));
    if (open) {
      wait('its job is queued or running', Math.max(open.notBefore ?? now, now) + LIFECYCLE_PERIOD_MS);
      continue;
    }
    const failed = jobs.failed.get(key(image.id, c.unit));
    if (failed !== undefined && failed + FAILED_WAIT_MS > now) {
      wait('its last job failed; queued again an hour after', failed + FAILED_WAIT_MS);
      continue;
    }
    const source = copies.find((x) => x.storageUnit === c.source);
    if (!source || source.state !== 'ok') {
      const earlier = sourceOf(c);
      const coming = !source && earlier !== undefined && toCome(earlier);
      // A suspect source may be repaired; a source still to be made will be.
      // (Not before it is due: the job that makes the source looks at the image again when it ends.)
      if (coming || source?.state === 'suspect') wait(`its source copy in ${c.source} is ${source ? source.state : 'not made yet'}`, Math.max(now + LIFECYCLE_PERIOD_MS, image.time + c.afterMs));
      continue; // gone for good: nothing left to copy from
    }
    const due = image.time + c.afterMs;
    if (now < due) {
      wait(`due at ${new Date(due).toISOString()}`, due);
      continue;
    }
    if (c.window) {
      const w = windowAt(c.window, now, timezone);
      decision.actions.push({ kind: 'queue', copy: c, notBefore: Math.max(w.start, now), notAfter: w.end });
      at(Math.max(w.start, now) + LIFECYCLE_PERIOD_MS);
    } else {
      decision.actions.push({ kind: 'queue', copy: c });
      at(now + LIFECYCLE_PERIOD_MS);
    }
  }
  return decision;

  function releaseStep(stage: PlannedCopy): void {
    const source = copies.find((x) => x.storageUnit === stage.source && (x.state === 'ok' || x.state === 'suspect'));
    const target = copies.find((x) => x.storageUnit === stage.unit && x.state === 'ok');
    if (!source || !target) return;
    const wait = (reason: string, t: number) => {
      decision.waits.push(`${stage.source}: released by the stage to ${stage.unit} ${reason}`);
      at(t);
    };
    if (image.time + stage.afterMs > now) return wait(`at ${new Date(image.time + stage.afterMs).toISOString()}`, image.time + stage.afterMs);
    if (source.hold !== undefined) return wait(`once its hold is released (${source.hold})`, now + HELD_WAIT_MS);
    const needed = neededFrom(stage);
    if (needed) return wait(`once ${needed} is made from it`, now + LIFECYCLE_PERIOD_MS);
    decision.actions.push({ kind: 'release', copy: stage, source });
    at(now + LIFECYCLE_PERIOD_MS); // to see that it went
  }

  /** Another copy of the image that still reads from the stage's source, if any. */
  function neededFrom(stage: PlannedCopy): string | undefined {
    if (jobs.reading.has(key(image.id, stage.source))) return 'the copy an unfinished job makes';
    const other = planned.find((d) => d !== stage && d.source === stage.source && toCome(d));
    return other ? `its copy in ${other.unit}` : undefined;
  }
}

/** The units a copy job writes, whichever spec form it has ({ to } or { targets: [{ to }] }). */
export function jobTargets(spec: Record<string, unknown>): string[] {
  if (typeof spec.to === 'string') return [spec.to];
  if (Array.isArray(spec.targets)) return spec.targets.map((t) => (t as { to?: unknown }).to).filter((t): t is string => typeof t === 'string');
  return [];
}

/** A unit's capacity in bytes: its `capacity`, else a path's file system size; undefined: none known (S3). */
export async function unitCapacity(unit: { url: string; spec: unknown }): Promise<number | undefined> {
  const written = (unit.spec as { capacity?: string }).capacity;
  if (written !== undefined) {
    const r = checkSize(written);
    if (r.ok) return r.bytes;
  }
  const where = parseBackendUrl(unit.url);
  if (where.kind !== 'local') return undefined;
  const fs = await statfs(where.path);
  return fs.blocks * fs.bsize;
}

export interface PassReport {
  /** Images looked at. */
  images: number;
  /** Jobs queued: `kind image→unit`. */
  queued: Array<{ kind: string; image: string; to: string; notBefore?: number; early?: boolean; job: string }>;
  /** Source copies released by stages in this pass. */
  released: Array<{ image: string; unit: string }>;
  /** Units measured against a high-water mark. */
  units: Array<{ unit: string; used: number; capacity: number; mark: number; staged: number }>;
  /** Problems that did not stop the pass (a unit that could not be measured). */
  errors: string[];
}

export interface LifecycleRunnerOptions {
  /** The server's time zone, for windows of images whose schedule names none. */
  timezone: string;
  /** Look at the queue now (jobs were queued). */
  wakeQueue(): void;
  /** Calls `fn` once the job's end is recorded in the catalog (the dispatcher's bus). */
  afterEnd(jobId: string, fn: () => void): void;
  log(level: 'info' | 'warn' | 'error', message: string, data?: Record<string, unknown>): void;
}

interface Group {
  planned: PlannedCopy[];
  timezone: string;
}

/**
 * Runs the lifecycle pass (periodically, when woken, or on demand) and wraps the executors of
 * the jobs it cares about: backup (looks at its image once it ends), duplicate and stage (the
 * window's end, holds carried over, the stage's release).
 */
export class LifecycleRunner {
  private readonly s: Services;
  private readonly options: LifecycleRunnerOptions;
  private chain: Promise<unknown> = Promise.resolve();
  private wakeTimer: NodeJS.Timeout | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly usage = new Map<string, { at: number; bytes: number }>();
  /** Units whose sources stages released since the last pass: an expiry is queued for them. */
  private released = new Set<string>();
  private stopped = false;

  constructor(s: Services, options: LifecycleRunnerOptions) {
    this.s = s;
    this.options = options;
  }

  /**
   * Runs a pass now and then every LIFECYCLE_PERIOD_MS, until stop(). A real-time timer, like
   * the expiry's: the pass reads the server's clock, but does not sleep on it (a test's fake
   * clock tells when its sleepers, the scheduler, are idle; a test runs passes with runNow()).
   */
  start(): void {
    if (this.stopped || this.timer) return;
    this.timer = setInterval(() => this.wake(), LIFECYCLE_PERIOD_MS);
    this.timer.unref();
    this.wake();
  }

  /** A pass soon (a job ended): several wakes in a moment make one pass. */
  wake(): void {
    if (this.stopped || this.wakeTimer) return;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      void this.runNow().catch((e) => this.options.log('error', `lifecycle pass: ${toCofferError(e).message}`));
    }, 50);
    this.wakeTimer.unref();
  }

  /** Stops the timer; a pass running ends (wait for it with runNow(), which then does nothing). */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.wakeTimer);
    clearInterval(this.timer);
  }

  /** Runs a pass now, after any pass running; resolves with what it did. */
  runNow(): Promise<PassReport> {
    const run = this.chain.then(() => this.pass(), () => this.pass());
    this.chain = run.catch(() => {});
    return run;
  }

  /** The backup executor, looking at its image's lifecycle once the backup ends. */
  watchBackup(inner: JobExecutor): JobExecutor {
    return async (ctx) => {
      let image: unknown;
      this.options.afterEnd(ctx.job.id, () => {
        if (typeof image === 'string') void this.lookAgain(image);
      });
      const end = await inner(ctx);
      image = end.result?.image;
      return end;
    };
  }

  /** The duplicate executor with its window's end (spec.notAfter), and holds carried over. */
  duplicate(inner: JobExecutor): JobExecutor {
    return async (ctx) => {
      // Looked at again once the end is recorded: a missed copy is queued for its next window.
      this.options.afterEnd(ctx.job.id, () => void this.lookAgain(String(ctx.job.spec.image)));
      const missed = this.missed(ctx);
      if (missed) return missed;
      const end = await inner(ctx);
      if (end.state === 'succeeded' || end.state === 'warnings') await this.carryHold(ctx);
      return end;
    };
  }

  /**
   * The stage executor: a duplicate (the same clone, run by `inner`), then the release of its
   * source copy when nothing else needs it; spec { image, from, to, retention, notAfter?, early? }.
   */
  stage(inner: JobExecutor): JobExecutor {
    return async (ctx) => {
      this.options.afterEnd(ctx.job.id, () => void this.lookAgain(String(ctx.job.spec.image)));
      const missed = this.missed(ctx);
      if (missed) return missed;
      const end = await inner(ctx);
      if (end.state !== 'succeeded' && end.state !== 'warnings') return end;
      await this.carryHold(ctx);
      const spec = ctx.job.spec as { image: string; from: string; to: string; early?: boolean };
      const outcome = await this.release(spec.image, spec.from, spec.to, { early: spec.early === true, job: ctx.job.id });
      ctx.log('info', outcome.released ? `released the source copy in ${spec.from}: the expiry forgets its snapshots and prunes ${spec.from}` : `kept the source copy in ${spec.from}: ${outcome.reason}`);
      return { ...end, result: { ...end.result, released: outcome.released, ...(outcome.released ? {} : { kept: outcome.reason }) } };
    };
  }

  /**
   * Releases the image's copy in `from`, staged to `to`, if it may go: the staged copy is there
   * (ok), the source is not held, it is old enough (or the stage ran early, high water), and no
   * other copy of the image still needs it. The copy is marked expired; the expiry does the rest.
   */
  async release(imageId: string, from: string, to: string, options: { early?: boolean; job?: string } = {}): Promise<{ released: boolean; reason?: string }> {
    const { catalog } = this.s;
    const image = await catalog.images.find(imageId);
    if (!image) return { released: false, reason: 'the image is gone' };
    const copies = (await catalog.copies.list({ imageId, limit: 1000 })).items;
    const group = await this.groupOf(image, new Map());
    const stage = group?.planned.find((p) => p.operation === 'stage' && p.source === from && p.unit === to);
    if (!group || !stage) return { released: false, reason: `the lifecycle of image ${imageId} has no stage from ${from} to ${to}` };
    const jobs = await this.copyJobs({ image: imageId, except: options.job });
    // A stage that ran early (high water) releases now, whatever the image's age.
    const planned = options.early ? group.planned.map((p) => (p === stage ? { ...stage, afterMs: 0 } : p)) : group.planned;
    const d = decide(image, copies, planned, jobs, this.s.now(), group.timezone);
    const action = d.actions.find((a): a is Extract<LifecycleAction, { kind: 'release' }> => a.kind === 'release' && a.copy.unit === to);
    if (!action) return { released: false, reason: d.waits.find((w) => w.startsWith(`${from}: released`))?.replace(/^[^:]*: /, '') ?? 'the staged copy is not there' };
    await catalog.copies.update(action.source.id, { state: 'expired', expires: this.s.now() });
    this.released.add(from);
    this.options.log('info', `image ${imageId}: copy in ${from} released, staged to ${to}`, { image: imageId, unit: from });
    this.wake();
    return { released: true };
  }

  private missed(ctx: JobContext): JobEnd | undefined {
    const notAfter = ctx.job.spec.notAfter;
    if (typeof notAfter !== 'number' || this.s.now() < notAfter) return undefined;
    return {
      state: 'missed',
      error: { code: 'REFUSED', message: `Missed: the window of this copy closed at ${new Date(notAfter).toISOString()} before the job could start; the lifecycle queues it again for its next window`, hint: 'Widen the lifecycle copy\'s window, or raise the storage unit\'s maxJobs.' },
    };
  }

  /** A copy made of a held image is held too, for the same reason: a hold keeps every copy. */
  private async carryHold(ctx: JobContext): Promise<void> {
    const spec = ctx.job.spec;
    const copies = (await this.s.catalog.copies.list({ imageId: String(spec.image), limit: 1000 })).items;
    const held = copies.find((c) => c.hold !== undefined);
    if (!held) return;
    for (const to of jobTargets(spec)) {
      const made = copies.find((c) => c.storageUnit === to && c.hold === undefined && c.state !== 'expired');
      if (!made) continue;
      await this.s.catalog.copies.hold(made.id, held.hold!);
      ctx.log('info', `the image is on hold (${held.hold}): its new copy in ${to} is held too`);
    }
  }

  private async lookAgain(imageId: string): Promise<void> {
    try {
      await this.s.catalog.lifecycleScan.lookAgain(imageId, this.s.now());
    } catch (e) {
      this.options.log('warn', `image ${imageId}: cannot schedule its lifecycle: ${toCofferError(e).message}`);
    }
    this.wake();
  }

  /** The lifecycle of the image's policy and schedule, read once per pass. */
  private async groupOf(image: Pick<Image, 'policy' | 'schedule'>, cache: Map<string, Group | null>): Promise<Group | undefined> {
    const k = `${image.policy}\u0000${image.schedule ?? ''}`;
    if (cache.has(k)) return cache.get(k) ?? undefined;
    let group: Group | null = null;
    const policy = await this.s.catalog.policies.find(image.policy);
    if (policy) {
      const spec = policy.spec as PolicyDocument['spec'];
      const lifecycle = await lifecycleOf(this.s.catalog, spec, image.schedule);
      if (lifecycle) {
        const timezone = spec.schedules.find((x) => x.name === image.schedule)?.timezone ?? this.options.timezone;
        group = { planned: planCopies(lifecycle), timezone };
      }
    }
    cache.set(k, group);
    return group ?? undefined;
  }

  /** The copy jobs queued or running (and failed lately), of one image or all. */
  private async copyJobs(options: { image?: string; except?: string } = {}): Promise<CopyJobs> {
    const jobs: CopyJobs = { open: new Map(), reading: new Set(), failed: new Map() };
    const now = this.s.now();
    const take = (j: Job) => options.except !== j.id && (options.image === undefined || j.spec.image === options.image);
    for (const kind of COPY_JOB_KINDS) {
      for (let cursor: string | undefined; ;) {
        const page = await this.s.catalog.jobs.list({ kind, state: ['queued', 'running'], limit: 1000, cursor });
        for (const j of page.items.filter(take)) {
          for (const to of jobTargets(j.spec)) jobs.open.set(key(String(j.spec.image), to), { notBefore: j.state === 'queued' ? j.notBefore : undefined });
          jobs.reading.add(key(String(j.spec.image), String(j.spec.from)));
        }
        if (!page.next) break;
        cursor = page.next;
      }
      // Newest first: failures of the last day are enough to know the last hour's.
      for (let cursor: string | undefined; ;) {
        const page = await this.s.catalog.jobs.list({ kind, state: 'failed', limit: 1000, cursor });
        for (const j of page.items.filter(take)) {
          for (const to of jobTargets(j.spec)) {
            const k = key(String(j.spec.image), to);
            jobs.failed.set(k, Math.max(jobs.failed.get(k) ?? 0, j.ended ?? j.updated));
          }
        }
        if (!page.next || page.items.some((j) => j.queued < now - DAY)) break;
        cursor = page.next;
      }
    }
    return jobs;
  }

  private async pass(): Promise<PassReport> {
    const report: PassReport = { images: 0, queued: [], released: [], units: [], errors: [] };
    if (this.stopped) return report;
    const { catalog } = this.s;
    const now = this.s.now();
    const groups = new Map<string, Group | null>();
    // The copy jobs are read after the first page of images: a backup that settles its image
    // after that page was read queued its duplicates before (one transaction), so they are seen.
    let jobs: CopyJobs | undefined;
    let cursor: string | undefined;
    for (let pages = 0; pages < MAX_PAGES && !this.stopped; pages++) {
      const page = await catalog.lifecycleScan.due(now, { limit: PAGE, cursor });
      if (page.items.length === 0) break;
      jobs ??= await this.copyJobs();
      const copies = await catalog.lifecycleScan.copiesOf(page.items.map((i) => i.id));
      for (const image of page.items) {
        report.images++;
        const group = await this.groupOf(image, groups);
        if (!group || group.planned.length === 0) {
          await catalog.lifecycleScan.setNext(image.id, null, { expected: image.lifecycleNext });
          continue;
        }
        const d = decide(image, copies.get(image.id)!, group.planned, jobs, now, group.timezone);
        for (const action of d.actions) {
          if (action.kind === 'queue') {
            const job = await this.enqueue(image, action.copy, { notBefore: action.notBefore, notAfter: action.notAfter });
            if (job) report.queued.push({ kind: job.kind, image: image.id, to: action.copy.unit, job: job.id, ...(action.notBefore !== undefined ? { notBefore: action.notBefore } : {}) });
          } else {
            const r = await this.release(image.id, action.copy.source, action.copy.unit);
            if (r.released) report.released.push({ image: image.id, unit: action.copy.source });
          }
        }
        // Unless a job's end asked for a look meanwhile: then the next pass looks at once.
        await catalog.lifecycleScan.setNext(image.id, d.next, { expected: image.lifecycleNext });
      }
      if (!page.next) break;
      cursor = page.next;
    }
    await this.highWater(report, groups);
    if (this.released.size > 0) {
      const units = [...this.released];
      this.released = new Set();
      await this.queueExpiry(units);
    }
    if (report.queued.length) this.options.wakeQueue();
    if (report.queued.length || report.released.length) {
      this.options.log('info', `lifecycle pass: ${report.images} image(s) looked at, ${report.queued.length} job(s) queued, ${report.released.length} source cop${report.released.length === 1 ? 'y' : 'ies'} released`);
    }
    return report;
  }

  /**
   * Queues a copy job unless one is queued or running for it already, or the copy exists: checked
   * again in the transaction that queues it (a backup may have queued it since the pass began).
   */
  private async enqueue(image: Pick<Image, 'id' | 'client' | 'policy'>, copy: PlannedCopy, options: { notBefore?: number; notAfter?: number; early?: boolean }): Promise<Job | undefined> {
    return this.s.catalog.transaction(async (tx) => {
      if ((await tx.copies.list({ imageId: image.id, storageUnit: copy.unit, limit: 1 })).items.length) return undefined;
      for (const kind of COPY_JOB_KINDS) {
        for (let cursor: string | undefined; ;) {
          // Not by storage unit: a job with several targets is recorded under its first one.
          const page = await tx.jobs.list({ kind, state: ['queued', 'running'], client: image.client, limit: 1000, cursor });
          if (page.items.some((j) => j.spec.image === image.id && jobTargets(j.spec).includes(copy.unit))) return undefined;
          if (!page.next) break;
          cursor = page.next;
        }
      }
      return tx.jobs.enqueue({
        kind: copy.operation,
        client: image.client,
        policy: image.policy,
        storageUnit: copy.unit,
        priority: 0,
        maxAttempts: 5,
        requestedBy: 'lifecycle',
        ...(options.notBefore !== undefined ? { notBefore: options.notBefore } : {}),
        spec: {
          image: image.id, from: copy.source, to: copy.unit, retention: copy.retention,
          ...(options.notAfter !== undefined ? { notAfter: options.notAfter } : {}),
          ...(options.early ? { early: true } : {}),
        },
      });
    });
  }

  /** Queues an expiry (unless one is queued) and has it prune the units that lost copies. */
  private async queueExpiry(units: string[]): Promise<void> {
    const { catalog } = this.s;
    for (const unit of units) {
      await catalog.settings.set(`prune.last.${unit}`, 0);
      this.usage.delete(unit);
    }
    const queued = await catalog.jobs.list({ kind: 'expire', state: 'queued', limit: 1 });
    if (queued.items.length === 0) await catalog.jobs.enqueue({ kind: 'expire', priority: 5, maxAttempts: 5, spec: {}, requestedBy: 'lifecycle' });
    this.options.wakeQueue();
  }

  /** The stages with a high-water mark, by source unit: early stages while a unit is too full. */
  private async highWater(report: PassReport, groups: Map<string, Group | null>): Promise<void> {
    const { catalog } = this.s;
    const marks = new Map<string, number>();
    for (let cursor: string | undefined; ;) {
      const page = await catalog.lifecycles.list({ limit: 1000, cursor });
      for (const lc of page.items) {
        for (const c of planCopies(lc.spec as LifecycleDocument['spec'])) {
          if (c.operation === 'stage' && c.highWater !== undefined) marks.set(c.source, Math.min(marks.get(c.source) ?? 1, c.highWater));
        }
      }
      if (!page.next) break;
      cursor = page.next;
    }
    for (const [unitName, lowest] of marks) {
      try {
        await this.relieve(unitName, lowest, report, groups);
      } catch (e) {
        const err = toCofferError(e);
        report.errors.push(`${unitName}: ${err.message}`);
        this.options.log('warn', `lifecycle: cannot check storage unit ${unitName} against its high-water mark: ${err.message}`);
      }
    }
  }

  /** How many bytes the unit's repository takes, measured at most once an hour. */
  async usedBytes(unitName: string): Promise<number> {
    const now = this.s.now();
    const known = this.usage.get(unitName);
    if (known && now - known.at < USAGE_MAX_AGE_MS && now >= known.at) return known.bytes;
    const r = await runOnAgent(this.s.node(unitName), 'usage', { storage: await this.s.storageAccess(unitName) }, { signal: AbortSignal.timeout(30 * MINUTE) });
    const bytes = Number(r.bytes);
    this.usage.set(unitName, { at: now, bytes });
    return bytes;
  }

  private async relieve(unitName: string, lowest: number, report: PassReport, groups: Map<string, Group | null>): Promise<void> {
    const { catalog } = this.s;
    const unit = await catalog.storageUnits.find(unitName);
    if (!unit) return;
    const capacity = await unitCapacity(unit);
    if (capacity === undefined) {
      throw new CofferError('INVALID_CONFIG', `it is on S3 and names no capacity`, { hint: `Give StorageUnit ${unitName} a capacity (e.g. capacity: 2TB).` });
    }
    const used = await this.usedBytes(unitName);
    const entry = { unit: unitName, used, capacity, mark: lowest, staged: 0 };
    report.units.push(entry);
    if (used <= lowest * capacity) return;
    const estimate = (image: Image | undefined) => Math.max(0, Number(image?.summary?.storedBytes ?? 0));
    // What is on its way out already: released copies not yet forgotten, and stages running.
    let leaving = 0;
    const jobs = await this.copyJobs();
    const releasing = (await catalog.copies.list({ storageUnit: unitName, state: 'expired', limit: 1000 })).items;
    const stagesFrom = [...jobs.reading].filter((k) => k.endsWith(`\u0000${unitName}`)).map((k) => k.split('\u0000')[0]!);
    const leavingImages = await catalog.lifecycleScan.imagesById([...releasing.map((c) => c.imageId), ...stagesFrom]);
    for (const image of leavingImages.values()) leaving += estimate(image);
    const now = this.s.now();
    let queued = 0;
    const enough = () => used - leaving <= lowest * capacity || queued >= MAX_EARLY_PER_PASS;
    // Oldest copies first (copy ids are time-ordered), a page at a time.
    for (let cursor: string | undefined; !enough();) {
      const page = await catalog.copies.list({ storageUnit: unitName, state: 'ok', limit: 500, cursor });
      const images = await catalog.lifecycleScan.imagesById(page.items.map((c) => c.imageId));
      const copies = await catalog.lifecycleScan.copiesOf(page.items.map((c) => c.imageId));
      for (const c of page.items) {
        if (enough()) break;
        const image = images.get(c.imageId);
        if (!image || c.hold !== undefined) continue;
        const group = await this.groupOf(image, groups);
        const stage = group?.planned.find((p) => p.operation === 'stage' && p.source === unitName && p.highWater !== undefined);
        if (!stage || used - leaving <= stage.highWater! * capacity) continue;
        const own = copies.get(image.id)!;
        if (own.some((x) => x.storageUnit === stage.unit) || jobs.open.has(key(image.id, stage.unit))) continue;
        const w = stage.window ? windowAt(stage.window, now, group!.timezone) : undefined;
        const job = await this.enqueue(image, stage, { early: true, ...(w ? { notBefore: Math.max(w.start, now), notAfter: w.end } : {}) });
        if (!job) continue;
        queued++;
        entry.staged++;
        leaving += estimate(image);
        report.queued.push({ kind: 'stage', image: image.id, to: stage.unit, job: job.id, early: true, ...(w ? { notBefore: Math.max(w.start, now) } : {}) });
      }
      if (!page.next) break;
      cursor = page.next;
    }
    if (queued > 0) this.options.log('info', `storage unit ${unitName} holds ${used} of ${capacity} bytes, above its high-water mark: ${queued} image(s) staged early, oldest first`);
  }
}
