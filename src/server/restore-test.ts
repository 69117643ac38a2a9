// Restore tests (a policy's spec.restoreTests; seed 004: "Will there be a regularly scheduled
// restore test?"): the job kind `restore-test`, queued by the scheduler (a schedule row per client,
// schedule-store.ts) or by hand (POST /api/v1/restore-tests). For one client of one policy it takes
// the newest `ok` image with a readable copy and, on the scratch client (the policy's
// restoreTests.client, else the image's own client):
//
//   1. creates a fresh directory below the scratch place (the agent's `scratch` job: mkdir fails
//      if the name exists, so a test never restores over anything);
//   2. restores the image into it, whole or a random sample of its files (picked with the
//      agent's `find`), one subdirectory per stream, and times that;
//   3. reads back what was restored and checks every byte against the snapshot's chunk ids (the
//      agent's `compare` job, src/jobs/compare.ts), independently of the restore's own checks;
//   4. removes the directory, whatever happened.
//
// The job's result is the evidence the compliance report reads: image, copy, what was restored,
// the restore time against the policy's rto, and every file that differed. A difference or damage
// fails the job naming the files; a restore slower than the rto ends it with warnings.

import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { Image } from '../catalog/images.ts';
import type { StorageAccess } from '../agent/protocol.ts';
import { DEFAULT_SCRATCH_PATH, DEFAULTS, parseDuration, type PolicyDocument } from '../policy/index.ts';
import type { JobContext, JobExecutor } from './dispatcher.ts';
import { restorableCopies } from './executors.ts';
import { runOnAgent, type Services } from './services.ts';

/** Files a sample is drawn from, per stream: the first this many files of the snapshot, in tree order. */
export const SAMPLE_CANDIDATES = 10_000;

/** Mismatches kept in the job's result (all are counted). */
const MISMATCHES_KEPT = 100;

/** A restore include pattern that matches exactly `path` (glob characters escaped). */
export function exactPattern(path: string): string {
  return path.replace(/[\\*?[\]{}]/g, '\\$&');
}

/** The newest ok image of the client by the policy that has a copy a restore can read. */
async function newestTestable(s: Services, client: string, policy: string): Promise<Image | undefined> {
  for (let cursor: string | undefined; ;) {
    const page = await s.catalog.images.list({ client, policy, state: 'ok', limit: 20, cursor });
    for (const image of page.items) if ((await restorableCopies(s, image)).length > 0) return image;
    if (!page.next) return undefined;
    cursor = page.next;
  }
}

/** Picks `n` files at random among the first SAMPLE_CANDIDATES files of each stream's snapshot. */
async function pickSample(s: Services, storage: StorageAccess, streams: Array<[string, string]>, n: number, ctx: JobContext): Promise<Map<string, string[]>> {
  const candidates: Array<{ key: string; path: string }> = [];
  let capped = false;
  for (const [key, snapshot] of streams) {
    const r = await runOnAgent(s.node(), 'find', { storage, snapshots: [snapshot], pattern: '*', limit: SAMPLE_CANDIDATES }, { jobId: ctx.job.id, signal: ctx.signal });
    for (const m of r.matches as Array<{ path: string; type: string }>) if (m.type === 'file') candidates.push({ key, path: m.path });
    if (r.more) capped = true;
  }
  if (capped) ctx.log('info', `the sample is drawn from the first ${SAMPLE_CANDIDATES} entries of each stream, in tree order`);
  // A partial Fisher-Yates shuffle: the first n are a uniform sample.
  const take = Math.min(n, candidates.length);
  for (let i = 0; i < take; i++) {
    const j = i + randomInt(candidates.length - i);
    [candidates[i], candidates[j]] = [candidates[j]!, candidates[i]!];
  }
  const picks = new Map<string, string[]>();
  for (const c of candidates.slice(0, take)) picks.set(c.key, [...(picks.get(c.key) ?? []), c.path]);
  return picks;
}

const add = (a: number, b: unknown) => a + (typeof b === 'number' ? b : 0);

/** The restore-test job: spec { slot?, notAfter? } plus the job's client (whose image is tested) and policy. */
export function restoreTestExecutor(s: Services): JobExecutor {
  return async (ctx) => {
    const { job } = ctx;
    if (!job.client || !job.policy) throw new CofferError('USAGE', `Cannot run restore test ${job.id}: it names no client or policy`);
    const notAfter = typeof job.spec.notAfter === 'number' ? job.spec.notAfter : undefined;
    if (notAfter !== undefined && s.now() > notAfter) {
      return { state: 'missed', error: { code: 'REFUSED', message: `Missed: the restore test could not start before ${new Date(notAfter).toISOString()}` } };
    }
    const policy = (await s.catalog.policies.get(job.policy)).spec as PolicyDocument['spec'];
    const tests = policy.restoreTests;
    const sample = tests?.sample ?? DEFAULTS.restoreTests.sample;
    const base = tests?.path ?? DEFAULT_SCRATCH_PATH;
    const rtoMs = policy.rto === undefined ? undefined : parseDuration(policy.rto);
    const image = await newestTestable(s, job.client, job.policy);
    if (!image) {
      throw new CofferError('NOT_FOUND', `Cannot test a restore of client ${job.client} by policy ${job.policy}: it has no ok image with a readable copy`, { hint: 'Run a backup first (`coffer backup now`); see `coffer images`.' });
    }
    const copy = (await restorableCopies(s, image))[0]!;
    const storage = await s.storageAccess(copy.storageUnit);
    const target = tests?.client ?? image.client;
    if (!(await s.catalog.clients.find(target))) throw new CofferError('NOT_FOUND', `Cannot run restore test ${job.id}: its scratch client ${target} is not registered`, { hint: 'Start an agent on it, or name another client in restoreTests.client.' });
    const link = s.agents.get(target);
    const hostname = (await s.catalog.clients.get(target)).hostIdentity?.hostname;
    const streams = Object.entries(copy.snapshots);
    const picks = sample === 'all' ? undefined : await pickSample(s, storage, streams, sample, ctx);
    const name = `coffer-restore-test-${job.id.toLowerCase()}`;
    const run = { jobId: job.id, emit: ctx.emit, signal: ctx.signal };
    const result: Record<string, unknown> = {
      image: image.id, imageTime: image.time, client: image.client, policy: job.policy, copy: copy.storageUnit,
      scratchClient: target, scratchDir: `${base}/${name}`, sample, streams: streams.length,
      files: 0, bytes: 0, damaged: 0, restoreMs: 0, compareMs: 0, checkedFiles: 0, checkedBytes: 0, mismatchCount: 0, mismatches: [],
      ...(rtoMs === undefined ? {} : { rtoMs }),
    };
    ctx.log('info', `restore test of image ${image.id} (${new Date(image.time).toISOString()}) of ${image.client} from ${copy.storageUnit} onto ${target}:${base}${sample === 'all' ? '' : `, a sample of ${sample} file(s)`}`);
    const created = await runOnAgent(link, 'scratch', { action: 'create', base, name }, run);
    const dir = String(created.dir);
    result.scratchDir = dir;
    const mismatches: Array<{ path: string; problem: string }> = [];
    try {
      const chosen = streams.filter(([key]) => !picks || (picks.get(key)?.length ?? 0) > 0);
      const t0 = performance.now();
      for (const [key, snapshot] of chosen) {
        const include = picks?.get(key);
        // A fresh directory, created by this job: nothing there to overwrite. force with the
        // host's own name lets a scratch place under /var/tmp take another client's image.
        const r = await runOnAgent(link, 'restore', {
          storage, snapshot, targetPath: `${dir}/${key}`, overwrite: 'never',
          ...(include ? { include: include.map(exactPattern) } : {}),
          ...(hostname ? { force: true, confirmHost: String(hostname) } : {}),
        }, run);
        const made = r.created as { files?: number; bytes?: number } | undefined;
        result.files = add(result.files as number, made?.files);
        result.bytes = add(result.bytes as number, made?.bytes);
        result.damaged = add(result.damaged as number, r.damaged);
      }
      result.restoreMs = Math.round(performance.now() - t0);
      ctx.log('info', `restored ${String(result.files)} file(s), ${String(result.bytes)} bytes in ${String(result.restoreMs)} ms; comparing them with the snapshot`);
      const t1 = performance.now();
      for (const [key, snapshot] of chosen) {
        const paths = picks?.get(key);
        const r = await runOnAgent(link, 'compare', { storage, snapshot, root: `${dir}/${key}`, ...(paths ? { paths } : {}) }, run);
        result.checkedFiles = add(result.checkedFiles as number, r.files);
        result.checkedBytes = add(result.checkedBytes as number, r.bytes);
        result.mismatchCount = add(result.mismatchCount as number, r.mismatchCount);
        mismatches.push(...(r.mismatches as typeof mismatches));
      }
      result.compareMs = Math.round(performance.now() - t1);
    } finally {
      // Removed whatever happened, also when the job was cancelled.
      try {
        await runOnAgent(link, 'scratch', { action: 'remove', base, name }, { jobId: job.id, signal: AbortSignal.timeout(600_000) });
      } catch (e) {
        result.scratchLeft = dir;
        ctx.log('error', `cannot remove the restore test's directory ${target}:${dir}: ${toCofferError(e).message}`);
      }
    }
    result.mismatches = mismatches.slice(0, MISMATCHES_KEPT);
    if (rtoMs !== undefined) result.withinRto = (result.restoreMs as number) <= rtoMs;
    const problems: string[] = [];
    if ((result.mismatchCount as number) > 0) {
      problems.push(`${String(result.mismatchCount)} entr${result.mismatchCount === 1 ? 'y differs' : 'ies differ'} from the snapshot: ${mismatches.slice(0, 10).map((m) => `${m.path} (${m.problem})`).join('; ')}`);
    }
    if ((result.damaged as number) > 0) problems.push(`${String(result.damaged)} entr${result.damaged === 1 ? 'y' : 'ies'} could not be restored from ${copy.storageUnit} (damaged data; see the job log)`);
    result.passed = problems.length === 0;
    if (problems.length > 0) {
      return { state: 'failed', result, error: { code: 'CHECK_FAILED', message: `Restore test of image ${image.id} failed: ${problems.join('; ')}`, hint: `Check the storage unit (coffer repo check --read-data) and the scratch client's disk; the copy in ${copy.storageUnit} may be damaged.` } };
    }
    if (result.withinRto === false) {
      ctx.log('warn', `the restore took ${String(result.restoreMs)} ms, longer than the policy's rto of ${policy.rto}`);
      return { state: 'warnings', result };
    }
    ctx.log('info', `restore test passed: ${String(result.checkedFiles)} file(s) identical to the snapshot${rtoMs === undefined ? '' : `, restored within the rto of ${policy.rto}`}`);
    return { state: 'succeeded', result };
  };
}
