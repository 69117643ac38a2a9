// Schedules: one row per (policy, client, schedule name), holding when it next runs and how its
// last run went. The scheduler computes the times (src/scheduler); the catalog keeps them, so a
// restarted server knows what it missed. A policy's schedules are replaced as a set by sync()
// when the policy is applied; they go when the policy or the client goes.

import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, inTransaction, type Scope } from './scope.ts';
import type { Database, SchedulesTable } from './schema.ts';
import type { Kysely, Selectable } from 'kysely';

export interface Schedule {
  id: string;
  policy: string;
  client: string;
  /** The schedule's name in the policy. */
  name: string;
  nextRun: number | undefined;
  lastRun: number | undefined;
  lastState: string | undefined;
  lastJob: string | undefined;
  /** The end of the backup window of the run that is due. */
  windowEnd: number | undefined;
}

export interface ScheduleEntry {
  client: string;
  name: string;
  nextRun?: number | null;
  windowEnd?: number | null;
}

export interface ScheduleRun {
  /** When it ran (default now). */
  time?: number;
  state: string;
  jobId?: string;
  nextRun: number | null;
  windowEnd?: number | null;
}

export interface Schedules {
  /** Creates or updates the schedule (policy, client, name); its last run is kept. */
  upsert(policy: string, entry: ScheduleEntry): Promise<Schedule>;
  /** Makes `entries` the policy's schedules: upserts them and removes the others. */
  sync(policy: string, entries: ScheduleEntry[]): Promise<Schedule[]>;
  get(id: string): Promise<Schedule>;
  /** By policy, client and name. */
  list(options?: PageOptions & { policy?: string; client?: string }): Promise<Page<Schedule>>;
  /** The schedules whose next run is at or before `now`, earliest first. */
  due(now: number, options?: { limit?: number }): Promise<Schedule[]>;
  /** Records a run and the next one. */
  recordRun(id: string, run: ScheduleRun): Promise<Schedule>;
  remove(id: string): Promise<void>;
}

export function schedulesModule(scope: Scope): Schedules {
  const upsertIn = async (db: Kysely<Database>, policy: string, entry: ScheduleEntry): Promise<Schedule> => {
    const fields = { next_run: entry.nextRun ?? null, window_end: entry.windowEnd ?? null };
    await db.insertInto('schedules')
      .values({ id: ulid(scope.now()), policy, client: entry.client, name: entry.name, ...fields })
      .onConflict((oc) => oc.columns(['policy', 'client', 'name']).doUpdateSet(fields))
      .execute();
    const row = await db.selectFrom('schedules').selectAll()
      .where('policy', '=', policy).where('client', '=', entry.client).where('name', '=', entry.name)
      .executeTakeFirstOrThrow();
    return toSchedule(row);
  };
  const missing: [ 'NOT_FOUND', string ] = ['NOT_FOUND', 'its policy or client does not exist'];
  const get = async (id: string) => {
    const row = await guard(scope, `get schedule ${id}`, () => scope.db.selectFrom('schedules').selectAll().where('id', '=', id).executeTakeFirst());
    if (row === undefined) throw new CofferError('NOT_FOUND', `Cannot get schedule ${id}: it does not exist`, { hint: 'Schedules change when their policy is applied; list them again.' });
    return toSchedule(row);
  };

  return {
    upsert: (policy, entry) => guard(scope, `set schedule ${entry.name} of policy ${policy} for client ${entry.client}`,
      () => inTransaction(scope, (trx) => upsertIn(trx, policy, entry)), { foreignKey: missing }),

    sync: (policy, entries) => guard(scope, `set the schedules of policy ${policy}`, () => inTransaction(scope, async (trx) => {
      const kept: Schedule[] = [];
      for (const entry of entries) kept.push(await upsertIn(trx, policy, entry));
      const keep = new Set(kept.map((s) => s.id));
      const existing = await trx.selectFrom('schedules').select('id').where('policy', '=', policy).execute();
      const gone = existing.map((r) => r.id).filter((id) => !keep.has(id));
      for (let i = 0; i < gone.length; i += 500) await trx.deleteFrom('schedules').where('id', 'in', gone.slice(i, i + 500)).execute();
      return kept;
    }), { foreignKey: missing }),

    get,

    async list(options = {}) {
      const action = 'list schedules';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('schedules').selectAll();
        if (options.policy !== undefined) q = q.where('policy', '=', options.policy);
        if (options.client !== undefined) q = q.where('client', '=', options.client);
        if (options.cursor !== undefined) {
          const after = decodeCursor(options.cursor, 'schedules', ['string', 'string', 'string'], action) as string[];
          q = q.where((eb) => eb(eb.refTuple('policy', 'client', 'name'), '>', eb.tuple(after[0]!, after[1]!, after[2]!)));
        }
        const rows = await q.orderBy('policy').orderBy('client').orderBy('name').limit(limit + 1).execute();
        return toPage(rows, limit, 'schedules', (r) => [r.policy, r.client, r.name], toSchedule);
      });
    },

    async due(now, options = {}) {
      const limit = pageLimit(options.limit, 'list due schedules');
      const rows = await guard(scope, 'list due schedules', () =>
        scope.db.selectFrom('schedules').selectAll().where('next_run', '<=', now)
          .orderBy('next_run').orderBy('id').limit(limit).execute());
      return rows.map(toSchedule);
    },

    async recordRun(id, run) {
      const result = await guard(scope, `record a run of schedule ${id}`, () => scope.db.updateTable('schedules').set({
        last_run: run.time ?? scope.now(),
        last_state: run.state,
        last_job: run.jobId ?? null,
        next_run: run.nextRun,
        window_end: run.windowEnd ?? null,
      }).where('id', '=', id).executeTakeFirst());
      if (result.numUpdatedRows === 0n) throw new CofferError('NOT_FOUND', `Cannot record a run of schedule ${id}: it does not exist`);
      return get(id);
    },

    async remove(id) {
      const result = await guard(scope, `remove schedule ${id}`, () => scope.db.deleteFrom('schedules').where('id', '=', id).executeTakeFirst());
      if (result.numDeletedRows === 0n) throw new CofferError('NOT_FOUND', `Cannot remove schedule ${id}: it does not exist`);
    },
  };
}

function toSchedule(row: Selectable<SchedulesTable>): Schedule {
  return {
    id: row.id,
    policy: row.policy,
    client: row.client,
    name: row.name,
    nextRun: row.next_run ?? undefined,
    lastRun: row.last_run ?? undefined,
    lastState: row.last_state ?? undefined,
    lastJob: row.last_job ?? undefined,
    windowEnd: row.window_end ?? undefined,
  };
}
