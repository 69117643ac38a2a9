// The job queue and the jobs' records: state, attempts, progress, log lines and result.
//
// States (docs/server.md): queued → running → succeeded | warnings | failed | cancelled; a job
// that was running when the server stopped is `interrupted` and queued again if it has attempts
// left (interruptRunning()). A scheduled run that never started is `missed`: either the queue
// could not start it inside its window (miss()), or the scheduler found its slot passed while the
// server was down (enqueueSlots(..., { state: 'missed' })); it is a row so that `coffer jobs
// --state missed` shows every run that did not happen.
//
// A scheduled run is one job per (policy, client, schedule, slot), whatever becomes of it: a
// unique index, and INSERT ... ON CONFLICT DO NOTHING in enqueueSlots(), make queuing a slot
// twice (a crash between queuing and storing the schedule's state, two servers) queue it once. A job is one row for all its attempts: a failure with `retry` or an
// interruption puts the same row back in the queue with attempt + 1, and its log keeps every
// attempt's lines.
//
// claimNext() must hand a job to one caller only and never start more jobs than the limits
// allow (a storage unit's maxJobs, a client's maxStreams, a global limit), with many callers at
// once: the async callers of one server, or the servers sharing one PostgreSQL. Claims are
// therefore serialised, and short: in SQLite by the write lock of the claim's transaction
// (BEGIN IMMEDIATE), in PostgreSQL by a transaction-scoped advisory lock taken first, so each
// claim counts the running jobs with every earlier claim committed. (SKIP LOCKED alone would
// keep two claims off the same row, not two claims off the same storage unit's last free
// place.) The UPDATE that claims also requires state = 'queued', so a job cancelled meanwhile is
// never started.
//
// A job counts against every storage unit it uses (unitsOfJob()): its storage_unit, and for a
// copy between units (a duplicate) the unit it reads (`spec.from`) and each one it writes
// (`spec.to`, `spec.targets[].to`). A copy between units runs on the server's side, not on the
// client: it does not count against the client's maxStreams (COPY_KINDS). Two copies never write
// one unit at once, whatever its maxJobs: each would send the blobs the other is sending (a clone
// sends what the target's index lacks when it starts), so they take turns per target unit.

import { sql } from 'kysely';
import type { Kysely, Selectable } from 'kysely';
import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { fromJson, toJson, toJsonRequired } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, inTransaction, type Scope } from './scope.ts';
import type { Database, JobsTable, JobLogsTable } from './schema.ts';

export const JOB_STATES = ['queued', 'running', 'succeeded', 'warnings', 'failed', 'cancelled', 'interrupted', 'missed'] as const;
export type JobState = (typeof JOB_STATES)[number];
/** The states a running job ends in through finish(). */
/** 'missed': claimed after its window had closed (a scheduled run the queue could not start in time). */
export type JobOutcome = 'succeeded' | 'warnings' | 'failed' | 'cancelled' | 'missed';
const OUTCOMES: readonly string[] = ['succeeded', 'warnings', 'failed', 'cancelled', 'missed'];
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** An arbitrary number identifying the claim lock among PostgreSQL advisory locks. */
const CLAIM_LOCK = 0x436f6666; // "Coff"
/** Queued jobs read at a time while looking for one the limits allow. */
const CLAIM_BATCH = 100;
const BATCH = 1000;
/** Kinds of job that copy between storage units on the server's side: not limited per client. */
export const COPY_KINDS: ReadonlySet<string> = new Set(['duplicate']);

/**
 * The storage units a job uses: its storage_unit, and the units its spec names as `from`, `to`
 * and `targets[].to` (a copy reads one unit and writes others). Each counts against its maxJobs.
 */
export function unitsOfJob(storageUnit: string | null | undefined, spec: Record<string, unknown> | undefined): string[] {
  const units = new Set<string>();
  if (storageUnit) units.add(storageUnit);
  const add = (v: unknown) => {
    if (typeof v === 'string' && v !== '') units.add(v);
  };
  add(spec?.from);
  for (const u of unitsWrittenBy(spec)) units.add(u);
  return [...units];
}

/** The units a copy writes: its spec's `to` and `targets[].to`. */
export function unitsWrittenBy(spec: Record<string, unknown> | undefined): string[] {
  const units = new Set<string>();
  const add = (v: unknown) => {
    if (typeof v === 'string' && v !== '') units.add(v);
  };
  add(spec?.to);
  if (Array.isArray(spec?.targets)) for (const t of spec.targets) add((t as { to?: unknown } | null)?.to);
  return [...units];
}

/** What a job reports at its end; a backup's carries at least the byte counts and dedup ratio. */
export interface JobResult {
  /** Bytes read from the client's files or streams. */
  scannedBytes?: number;
  /** Bytes the agent sent over the network to a storage node (0 for the embedded agent, which writes itself). */
  sentBytes?: number;
  /** Bytes of chunks the repository did not have. */
  newBytes?: number;
  /** Bytes written to storage (compressed and encrypted). */
  storedBytes?: number;
  /** scannedBytes / storedBytes. */
  dedupRatio?: number;
  [key: string]: unknown;
}

export interface Job {
  id: string;
  kind: string;
  state: JobState;
  /** Higher runs first; equal priorities run in the order queued. */
  priority: number;
  client: string | undefined;
  policy: string | undefined;
  schedule: string | undefined;
  storageUnit: string | undefined;
  spec: Record<string, unknown>;
  /** 1 for the first attempt. */
  attempt: number;
  maxAttempts: number;
  /** Not started before this time (a retry's backoff). */
  notBefore: number | undefined;
  queued: number;
  started: number | undefined;
  ended: number | undefined;
  updated: number;
  progress: Record<string, unknown> | undefined;
  result: JobResult | undefined;
  /** The last error, e.g. { code, message, hint }; kept when the job is queued again. */
  error: Record<string, unknown> | undefined;
  requestedBy: string | undefined;
  /** Who claimed it (a server or agent name), for interruptRunning(). */
  claimedBy: string | undefined;
  /** A scheduled run's slot (ms since the epoch); undefined for a job asked for by hand. */
  slot: number | undefined;
}

export interface JobInput {
  kind: string;
  priority?: number;
  client?: string;
  policy?: string;
  schedule?: string;
  storageUnit?: string;
  spec?: Record<string, unknown>;
  /** Attempts in all, the first included (default 3). */
  maxAttempts?: number;
  notBefore?: number;
  requestedBy?: string;
}

/** A scheduled run: its identity is (policy, client, schedule, slot). */
export interface SlotJobInput extends JobInput {
  policy: string;
  client: string;
  schedule: string;
  slot: number;
}

export interface ClaimOptions {
  /** Running jobs in all (default: no limit). */
  global?: number;
  /** Running jobs per client when the client sets no maxStreams (default: no limit). */
  clientStreams?: number;
  /** Only jobs of these kinds. */
  kinds?: string[];
  /** Recorded as the job's claimedBy. */
  by?: string;
}

export interface JobEnd {
  state: JobOutcome;
  result?: JobResult;
  error?: Record<string, unknown>;
  /** For a failure: queue it again, after a backoff, if attempts are left. */
  retry?: boolean;
  /**
   * For a failure: queue it again to start at this time (ms), without using an attempt: it did
   * not run (its client's agent is not connected, and its window is still open).
   */
  waitUntil?: number;
}

export interface JobFilter {
  state?: JobState | JobState[];
  kind?: string;
  client?: string;
  policy?: string;
  storageUnit?: string;
}

export interface LogInput {
  level: LogLevel;
  message: string;
  data?: Record<string, unknown>;
  /** Default: now. */
  time?: number;
}

export interface LogLine {
  seq: number;
  time: number;
  level: LogLevel;
  message: string;
  data: Record<string, unknown> | undefined;
}

export interface Interrupted {
  /** Queued again with attempt + 1. */
  requeued: Job[];
  /** Out of attempts: left interrupted. */
  interrupted: Job[];
}

export interface Jobs {
  enqueue(job: JobInput): Promise<Job>;
  /** Queues many in one transaction; returns their ids in order. */
  enqueueMany(jobs: JobInput[]): Promise<string[]>;
  /**
   * Queues scheduled runs, each at most once: a run whose (policy, client, schedule, slot) has a
   * job already, in any state, is left as it is. With `state: 'missed'`, records runs that never
   * started instead (ended at once, never claimed). Returns the jobs made, in order; the runs
   * that had a job are left out.
   */
  enqueueSlots(jobs: SlotJobInput[], options?: { state?: 'queued' | 'missed' }): Promise<Job[]>;
  /**
   * Queues a missed run late (a catch-up): the run's job, if it is missed, is queued again with
   * this input's priority, spec, storage unit and notBefore; without a job, one is queued. Returns
   * the queued job, or undefined when the run's job is in another state (queued or run already).
   */
  catchUp(job: SlotJobInput): Promise<Job | undefined>;
  /**
   * queued → missed: a scheduled job that could not start before its window closed. CONFLICT if
   * it is not queued (it started, or was cancelled, meanwhile).
   */
  miss(id: string, options?: { error?: Record<string, unknown> }): Promise<Job>;
  get(id: string): Promise<Job>;
  find(id: string): Promise<Job | undefined>;
  /** Starts the next job the limits allow (highest priority, then oldest); undefined if none. */
  claimNext(options?: ClaimOptions): Promise<Job | undefined>;
  /**
   * Starts this queued job (compare-and-set queued → running, checking no limits): the job if
   * this caller started it, undefined if it is no longer queued or its backoff has not passed
   * (another claimer won, or it was cancelled). NOT_FOUND if there is no such job.
   */
  claim(id: string, options?: { by?: string }): Promise<Job | undefined>;
  /** The queue as claimNext() sees it: queued jobs with not_before <= now, highest priority then oldest first. */
  runnable(options?: PageOptions & { kinds?: string[] }): Promise<Page<Job>>;
  /** Records a running job's progress; CONFLICT if it is not running. */
  update(id: string, change: { progress: Record<string, unknown> }): Promise<void>;
  /** Ends a running job, or queues it again (failure with retry and attempts left). */
  finish(id: string, end: JobEnd): Promise<Job>;
  /** Cancels a queued job; CONFLICT if it is running (cancel it through its agent) or over. */
  cancel(id: string): Promise<Job>;
  /** Newest first. */
  list(options?: PageOptions & JobFilter): Promise<Page<Job>>;
  /** Number of jobs in each state. */
  counts(): Promise<Record<JobState, number>>;
  /** Appends log lines; returns the seq of the last. */
  appendLog(id: string, lines: LogInput | LogInput[]): Promise<number>;
  /** Log lines after `afterSeq` (default 0: from the start), in order. */
  logs(id: string, options?: { afterSeq?: number; limit?: number }): Promise<LogLine[]>;
  /**
   * At server start: every running job (or those claimed by `claimedBy`) is interrupted, and
   * queued again with attempt + 1 after the retry backoff (not_before) if it has attempts left.
   */
  interruptRunning(options?: { claimedBy?: string }): Promise<Interrupted>;
}

export function jobsModule(scope: Scope): Jobs {
  const toRow = (job: JobInput, action: string) => {
    if (typeof job.kind !== 'string' || job.kind === '') throw new CofferError('USAGE', `Cannot ${action}: the job has no kind`);
    if (job.priority !== undefined && !Number.isInteger(job.priority)) throw new CofferError('USAGE', `Cannot ${action}: the priority ${job.priority} is not an integer`);
    if (job.maxAttempts !== undefined && (!Number.isInteger(job.maxAttempts) || job.maxAttempts < 1)) {
      throw new CofferError('USAGE', `Cannot ${action}: maxAttempts ${job.maxAttempts} is not a positive integer`);
    }
    const now = scope.now();
    return {
      id: ulid(now),
      kind: job.kind,
      state: 'queued',
      priority: job.priority ?? 0,
      client: job.client ?? null,
      policy: job.policy ?? null,
      schedule: job.schedule ?? null,
      storage_unit: job.storageUnit ?? null,
      spec: toJsonRequired(job.spec ?? {}),
      attempt: 1,
      max_attempts: job.maxAttempts ?? 3,
      not_before: job.notBefore ?? null,
      queued: now,
      started: null,
      ended: null,
      updated: now,
      progress: null,
      result: null,
      error: null,
      requested_by: job.requestedBy ?? null,
      claimed_by: null,
      log_seq: 0,
      slot: null as number | null,
    };
  };
  /** How long a job waits before the attempt after `attempt`: base * 2^(attempt-1), at most max. */
  const backoff = (attempt: number) => Math.min(scope.retry.maxMs, scope.retry.baseMs * 2 ** (attempt - 1));
  const find = (id: string) => guard(scope, `get job ${id}`, async () => {
    const row = await scope.db.selectFrom('jobs').selectAll().where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : toJob(row);
  });
  const notFound = (action: string) => new CofferError('NOT_FOUND', `Cannot ${action}: the job does not exist`, { hint: 'List jobs with coffer jobs.' });
  /** The error for a job that is not in the state an operation needs. */
  const wrongState = async (db: Kysely<Database>, id: string, action: string, hint: string) => {
    const row = await db.selectFrom('jobs').select('state').where('id', '=', id).executeTakeFirst();
    if (row === undefined) return notFound(action);
    return new CofferError('CONFLICT', `Cannot ${action}: it is ${row.state}`, { hint });
  };
  const selectForUpdate = (db: Kysely<Database>, id: string) => {
    const q = db.selectFrom('jobs').selectAll().where('id', '=', id);
    // SQLite has no FOR UPDATE; its transaction already holds the write lock.
    return (scope.dialect === 'postgres' ? q.forUpdate() : q).executeTakeFirst();
  };
  const appendIn = async (db: Kysely<Database>, id: string, lines: LogInput[], action: string): Promise<number> => {
    for (const line of lines) {
      if (!LOG_LEVELS.includes(line.level)) throw new CofferError('USAGE', `Cannot ${action}: the level ${line.level} is not one of ${LOG_LEVELS.join(', ')}`);
    }
    // Bumping the job's counter takes its row lock: concurrent appends get distinct numbers.
    const bumped = await db.updateTable('jobs').set((eb) => ({ log_seq: eb('log_seq', '+', lines.length) }))
      .where('id', '=', id).returning('log_seq').executeTakeFirst();
    if (bumped === undefined) throw notFound(action);
    const first = bumped.log_seq - lines.length + 1;
    const now = scope.now();
    const rows = lines.map((line, i) => ({
      job_id: id, seq: first + i, time: line.time ?? now, level: line.level, message: line.message, data: toJson(line.data),
    }));
    for (let i = 0; i < rows.length; i += BATCH) await db.insertInto('job_logs').values(rows.slice(i, i + BATCH)).execute();
    return bumped.log_seq;
  };

  return {
    async enqueue(job) {
      const action = `queue a ${job.kind} job`;
      const row = toRow(job, action);
      await guard(scope, action, () => scope.db.insertInto('jobs').values(row).execute());
      return toJob(row);
    },

    async enqueueMany(jobs) {
      const action = `queue ${jobs.length} jobs`;
      const rows = jobs.map((job) => toRow(job, action));
      await guard(scope, action, () => inTransaction(scope, async (trx) => {
        for (let i = 0; i < rows.length; i += BATCH) await trx.insertInto('jobs').values(rows.slice(i, i + BATCH)).execute();
      }));
      return rows.map((r) => r.id);
    },

    async enqueueSlots(jobs, options = {}) {
      const state = options.state ?? 'queued';
      const action = state === 'missed' ? `record ${jobs.length} missed runs` : `queue ${jobs.length} scheduled runs`;
      const rows = jobs.map((job) => {
        if (!Number.isSafeInteger(job.slot)) throw new CofferError('USAGE', `Cannot ${action}: the slot ${job.slot} is not an instant in milliseconds`);
        const row = { ...toRow(job, action), slot: job.slot };
        return state === 'missed' ? { ...row, state, ended: row.queued } : row;
      });
      const made = await guard(scope, action, () => inTransaction(scope, async (trx) => {
        const ids = new Set<string>();
        for (let i = 0; i < rows.length; i += BATCH) {
          const inserted = await trx.insertInto('jobs').values(rows.slice(i, i + BATCH))
            .onConflict((oc) => oc.columns(['policy', 'client', 'schedule', 'slot']).where('slot', 'is not', null).doNothing())
            .returning('id').execute();
          for (const r of inserted) ids.add(r.id);
        }
        return ids;
      }));
      return rows.filter((r) => made.has(r.id)).map(toJob);
    },

    async catchUp(job) {
      const action = `queue the missed run ${new Date(job.slot).toISOString()} of schedule ${job.schedule} of policy ${job.policy} for client ${job.client}`;
      const row = { ...toRow(job, action), slot: job.slot };
      return guard(scope, action, async () => {
        const queued = await scope.db.insertInto('jobs').values(row)
          .onConflict((oc) => oc.columns(['policy', 'client', 'schedule', 'slot']).where('slot', 'is not', null)
            .doUpdateSet((eb) => ({
              state: 'queued', priority: eb.ref('excluded.priority'), storage_unit: eb.ref('excluded.storage_unit'),
              spec: eb.ref('excluded.spec'), not_before: eb.ref('excluded.not_before'), queued: eb.ref('excluded.queued'),
              updated: eb.ref('excluded.updated'), ended: null, error: null, attempt: 1,
            }))
            .where('jobs.state', '=', 'missed'))
          .returningAll().executeTakeFirst();
        return queued === undefined ? undefined : toJob(queued);
      });
    },

    miss: (id, options = {}) => {
      const action = `record job ${id} as missed`;
      return guard(scope, action, async () => {
        const now = scope.now();
        const row = await scope.db.updateTable('jobs').set({ state: 'missed', ended: now, updated: now, error: toJson(options.error) })
          .where('id', '=', id).where('state', '=', 'queued').returningAll().executeTakeFirst();
        if (row === undefined) throw await wrongState(scope.db, id, action, 'Only a queued job is missed; one that started runs to its end.');
        return toJob(row);
      });
    },

    async get(id) {
      const found = await find(id);
      if (found === undefined) throw notFound(`get job ${id}`);
      return found;
    },

    find,

    claimNext: (options = {}) => guard(scope, 'claim a job', () => inTransaction(scope, async (trx) => {
      if (scope.dialect === 'postgres') await sql`select pg_advisory_xact_lock(${CLAIM_LOCK})`.execute(trx);
      const now = scope.now();
      const running = await trx.selectFrom('jobs').select(['kind', 'client', 'storage_unit', 'spec']).where('state', '=', 'running').execute();
      if (options.global !== undefined && running.length >= options.global) return undefined;
      const perUnit = new Map<string, number>();
      const perClient = new Map<string, number>();
      /** Units a running copy writes: no other copy writes them until it ends. */
      const copying = new Set<string>();
      for (const r of running) {
        const spec = fromJson<Record<string, unknown>>(r.spec);
        for (const u of unitsOfJob(r.storage_unit, spec)) perUnit.set(u, (perUnit.get(u) ?? 0) + 1);
        if (COPY_KINDS.has(r.kind)) for (const u of unitsWrittenBy(spec)) copying.add(u);
        if (r.client !== null && !COPY_KINDS.has(r.kind)) perClient.set(r.client, (perClient.get(r.client) ?? 0) + 1);
      }
      // The limits of the units a copy reads or writes besides its own (looked up once, when needed).
      let unitLimits: Map<string, number | null> | undefined;
      const limitOf = async (unit: string): Promise<number | null> => {
        unitLimits ??= new Map((await trx.selectFrom('storage_units').select(['name', 'max_jobs']).execute()).map((u) => [u.name, u.max_jobs]));
        return unitLimits.get(unit) ?? null;
      };
      let after: { priority: number; queued: number; id: string } | undefined;
      for (;;) {
        let q = trx.selectFrom('jobs as j')
          .leftJoin('storage_units as su', 'su.name', 'j.storage_unit')
          .leftJoin('clients as c', 'c.name', 'j.client')
          .select(['j.id', 'j.kind', 'j.priority', 'j.queued', 'j.client', 'j.storage_unit', 'j.spec', 'su.max_jobs', 'c.max_streams'])
          .where('j.state', '=', 'queued')
          .where((eb) => eb.or([eb('j.not_before', 'is', null), eb('j.not_before', '<=', now)]));
        if (options.kinds !== undefined) q = q.where('j.kind', 'in', options.kinds.length ? options.kinds : ['']);
        if (after !== undefined) {
          const a = after;
          q = q.where((eb) => eb.or([
            eb('j.priority', '<', a.priority),
            eb.and([eb('j.priority', '=', a.priority), eb(eb.refTuple('j.queued', 'j.id'), '>', eb.tuple(a.queued, a.id))]),
          ]));
        }
        const batch = await q.orderBy('j.priority', 'desc').orderBy('j.queued').orderBy('j.id').limit(CLAIM_BATCH).execute();
        for (const c of batch) {
          if (c.storage_unit !== null && c.max_jobs !== null && (perUnit.get(c.storage_unit) ?? 0) >= c.max_jobs) continue;
          const spec = fromJson<Record<string, unknown>>(c.spec);
          if (COPY_KINDS.has(c.kind) && unitsWrittenBy(spec).some((u) => copying.has(u))) continue;
          let unitFull = false;
          for (const u of unitsOfJob(null, spec)) {
            if (u === c.storage_unit) continue;
            const limit = await limitOf(u);
            if (limit !== null && (perUnit.get(u) ?? 0) >= limit) unitFull = true;
          }
          if (unitFull) continue;
          const clientLimit = c.max_streams ?? options.clientStreams;
          if (c.client !== null && !COPY_KINDS.has(c.kind) && clientLimit !== undefined && (perClient.get(c.client) ?? 0) >= clientLimit) continue;
          const claimed = await trx.updateTable('jobs')
            .set({ state: 'running', started: now, updated: now, ended: null, progress: null, claimed_by: options.by ?? null })
            .where('id', '=', c.id).where('state', '=', 'queued')
            .returningAll().executeTakeFirst();
          if (claimed !== undefined) return toJob(claimed);
        }
        if (batch.length < CLAIM_BATCH) return undefined;
        const last = batch[batch.length - 1]!;
        after = { priority: last.priority, queued: last.queued, id: last.id };
      }
    })),

    async claim(id, options = {}) {
      const action = `start job ${id}`;
      return guard(scope, action, async () => {
        const now = scope.now();
        const row = await scope.db.updateTable('jobs')
          .set({ state: 'running', started: now, updated: now, ended: null, progress: null, claimed_by: options.by ?? null })
          .where('id', '=', id).where('state', '=', 'queued')
          .where((eb) => eb.or([eb('not_before', 'is', null), eb('not_before', '<=', now)]))
          .returningAll().executeTakeFirst();
        if (row !== undefined) return toJob(row);
        if ((await find(id)) === undefined) throw notFound(action);
        return undefined;
      });
    },

    async runnable(options = {}) {
      const action = 'list the runnable jobs';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        const now = scope.now();
        let q = scope.db.selectFrom('jobs').selectAll().where('state', '=', 'queued')
          .where((eb) => eb.or([eb('not_before', 'is', null), eb('not_before', '<=', now)]));
        if (options.kinds !== undefined) q = q.where('kind', 'in', options.kinds.length ? options.kinds : ['']);
        if (options.cursor !== undefined) {
          const [priority, queued, id] = decodeCursor(options.cursor, 'runnable', ['number', 'number', 'string'], action) as [number, number, string];
          q = q.where((eb) => eb.or([
            eb('priority', '<', priority),
            eb.and([eb('priority', '=', priority), eb(eb.refTuple('queued', 'id'), '>', eb.tuple(queued, id))]),
          ]));
        }
        const rows = await q.orderBy('priority', 'desc').orderBy('queued').orderBy('id').limit(limit + 1).execute();
        return toPage(rows, limit, 'runnable', (r) => [r.priority, r.queued, r.id], toJob);
      });
    },

    async update(id, change) {
      const action = `record the progress of job ${id}`;
      await guard(scope, action, async () => {
        const result = await scope.db.updateTable('jobs').set({ progress: toJson(change.progress), updated: scope.now() })
          .where('id', '=', id).where('state', '=', 'running').executeTakeFirst();
        if (result.numUpdatedRows === 0n) throw await wrongState(scope.db, id, action, 'Only a running job reports progress.');
      });
    },

    finish: (id, end) => {
      const action = `finish job ${id}`;
      if (!OUTCOMES.includes(end.state)) {
        return Promise.reject(new CofferError('USAGE', `Cannot ${action}: ${end.state} is not one of ${OUTCOMES.join(', ')}`));
      }
      return guard(scope, action, () => inTransaction(scope, async (trx) => {
        const job = await selectForUpdate(trx, id);
        if (job === undefined) throw notFound(action);
        if (job.state !== 'running') throw new CofferError('CONFLICT', `Cannot ${action}: it is ${job.state}, not running`, { hint: 'A job is finished once, by whoever claimed it.' });
        const now = scope.now();
        const again = end.state === 'failed' && end.retry === true && job.attempt < job.max_attempts;
        const wait = end.state === 'failed' && end.waitUntil !== undefined;
        let row;
        if (wait) {
          row = await trx.updateTable('jobs').set({
            state: 'queued', not_before: end.waitUntil!, started: null, ended: null,
            updated: now, progress: null, error: toJson(end.error), claimed_by: null,
          }).where('id', '=', id).where('state', '=', 'running').returningAll().executeTakeFirstOrThrow();
          await appendIn(trx, id, [{ level: 'info', message: `Waiting: ${String((end.error as { message?: string } | undefined)?.message ?? 'not ready')}; looking again at ${new Date(end.waitUntil!).toISOString()}` }], action);
        } else if (again) {
          const delay = backoff(job.attempt);
          row = await trx.updateTable('jobs').set({
            state: 'queued', attempt: job.attempt + 1, not_before: now + delay, started: null, ended: null,
            updated: now, progress: null, result: toJson(end.result), error: toJson(end.error), claimed_by: null,
          }).where('id', '=', id).where('state', '=', 'running').returningAll().executeTakeFirstOrThrow();
          await appendIn(trx, id, [{
            level: 'warn',
            message: `Attempt ${job.attempt} of ${job.max_attempts} failed; queued again for ${new Date(now + delay).toISOString()}`,
            ...(end.error === undefined ? {} : { data: { error: end.error } }),
          }], action);
        } else {
          row = await trx.updateTable('jobs').set({
            state: end.state, ended: now, updated: now, result: toJson(end.result), error: toJson(end.error),
          }).where('id', '=', id).where('state', '=', 'running').returningAll().executeTakeFirstOrThrow();
        }
        return toJob(row);
      }));
    },

    cancel: (id) => {
      const action = `cancel job ${id}`;
      return guard(scope, action, async () => {
        const now = scope.now();
        const row = await scope.db.updateTable('jobs').set({ state: 'cancelled', ended: now, updated: now })
          .where('id', '=', id).where('state', '=', 'queued').returningAll().executeTakeFirst();
        if (row === undefined) throw await wrongState(scope.db, id, action, 'A running job is cancelled through the agent that runs it; a job that is over stays as it ended.');
        return toJob(row);
      });
    },

    async list(options = {}) {
      const action = 'list jobs';
      const limit = pageLimit(options.limit, action);
      const states = options.state === undefined ? undefined : Array.isArray(options.state) ? options.state : [options.state];
      for (const s of states ?? []) {
        if (!JOB_STATES.includes(s)) throw new CofferError('USAGE', `Cannot ${action}: the state ${s} is not one of ${JOB_STATES.join(', ')}`);
      }
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('jobs').selectAll();
        if (states !== undefined) q = states.length === 1 ? q.where('state', '=', states[0]!) : q.where('state', 'in', states.length ? states : ['']);
        if (options.kind !== undefined) q = q.where('kind', '=', options.kind);
        if (options.client !== undefined) q = q.where('client', '=', options.client);
        if (options.policy !== undefined) q = q.where('policy', '=', options.policy);
        if (options.storageUnit !== undefined) q = q.where('storage_unit', '=', options.storageUnit);
        if (options.cursor !== undefined) {
          const [id] = decodeCursor(options.cursor, 'jobs', ['string'], action) as [string];
          q = q.where('id', '<', id);
        }
        const rows = await q.orderBy('id', 'desc').limit(limit + 1).execute();
        return toPage(rows, limit, 'jobs', (r) => [r.id], toJob);
      });
    },

    async counts() {
      const rows = await guard(scope, 'count jobs', () =>
        scope.db.selectFrom('jobs').select(['state', (eb) => eb.fn.countAll<number>().as('n')]).groupBy('state').execute());
      const out = Object.fromEntries(JOB_STATES.map((s) => [s, 0])) as Record<JobState, number>;
      for (const r of rows) out[r.state as JobState] = Number(r.n);
      return out;
    },

    appendLog(id, lines) {
      const action = `append to the log of job ${id}`;
      const list = Array.isArray(lines) ? lines : [lines];
      return guard(scope, action, () => inTransaction(scope, (trx) => appendIn(trx, id, list, action)));
    },

    async logs(id, options = {}) {
      const action = `read the log of job ${id}`;
      const limit = options.limit ?? 1000;
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new CofferError('USAGE', `Cannot ${action}: the limit ${limit} is not between 1 and 10000`);
      return guard(scope, action, async () => {
        const rows = await scope.db.selectFrom('job_logs').selectAll()
          .where('job_id', '=', id).where('seq', '>', options.afterSeq ?? 0)
          .orderBy('seq').limit(limit).execute();
        if (rows.length === 0 && (await find(id)) === undefined) throw notFound(action);
        return rows.map(toLogLine);
      });
    },

    interruptRunning: (options = {}) => guard(scope, 'interrupt the running jobs', () => inTransaction(scope, async (trx) => {
      const now = scope.now();
      const action = 'interrupt the running jobs';
      const running = (db: Kysely<Database>) => {
        let q = db.updateTable('jobs').where('state', '=', 'running');
        if (options.claimedBy !== undefined) q = q.where('claimed_by', '=', options.claimedBy);
        return q;
      };
      let select = trx.selectFrom('jobs').where('state', '=', 'running').where((eb) => eb('attempt', '<', eb.ref('max_attempts')));
      if (options.claimedBy !== undefined) select = select.where('claimed_by', '=', options.claimedBy);
      const error = toJson({ code: 'INTERRUPTED', message: 'The job was running when the server stopped' });
      // The backoff depends on the attempt that was interrupted: one UPDATE per attempt number.
      const requeued = [];
      for (const { attempt } of await select.select('attempt').distinct().execute()) {
        requeued.push(...await running(trx).where('attempt', '=', attempt).where((eb) => eb('attempt', '<', eb.ref('max_attempts')))
          .set({ state: 'queued', attempt: attempt + 1, not_before: now + backoff(attempt), started: null, ended: null, updated: now, progress: null, error, claimed_by: null })
          .returningAll().execute());
      }
      const interrupted = await running(trx)
        .set({ state: 'interrupted', ended: now, updated: now, error })
        .returningAll().execute();
      for (const job of requeued) {
        await appendIn(trx, job.id, [{ level: 'warn', message: `Interrupted by a server restart during attempt ${job.attempt - 1}; queued again for ${new Date(job.not_before!).toISOString()} (attempt ${job.attempt} of ${job.max_attempts})` }], action);
      }
      for (const job of interrupted) {
        await appendIn(trx, job.id, [{ level: 'error', message: `Interrupted by a server restart, after its last attempt (${job.attempt} of ${job.max_attempts})` }], action);
      }
      const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : 1);
      return { requeued: requeued.sort(byId).map(toJob), interrupted: interrupted.sort(byId).map(toJob) };
    })),
  };
}

function toJob(row: Selectable<JobsTable>): Job {
  return {
    id: row.id,
    kind: row.kind,
    state: row.state as JobState,
    priority: row.priority,
    client: row.client ?? undefined,
    policy: row.policy ?? undefined,
    schedule: row.schedule ?? undefined,
    storageUnit: row.storage_unit ?? undefined,
    spec: fromJson<Record<string, unknown>>(row.spec) ?? {},
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    notBefore: row.not_before ?? undefined,
    queued: row.queued,
    started: row.started ?? undefined,
    ended: row.ended ?? undefined,
    updated: row.updated,
    progress: fromJson<Record<string, unknown>>(row.progress),
    result: fromJson<JobResult>(row.result),
    error: fromJson<Record<string, unknown>>(row.error),
    requestedBy: row.requested_by ?? undefined,
    claimedBy: row.claimed_by ?? undefined,
    slot: row.slot ?? undefined,
  };
}

function toLogLine(row: Selectable<JobLogsTable>): LogLine {
  return { seq: row.seq, time: row.time, level: row.level as LogLevel, message: row.message, data: fromJson<Record<string, unknown>>(row.data) };
}
