// Schedules: one row per (policy, client, schedule name), holding what the scheduler needs to
// plan it (its timing: src/scheduler's Schedule as JSON, the level and lifecycle of its backups)
// and its state (src/scheduler/plan.ts, ScheduleState: since, last slot and what became of it,
// next run). The scheduler computes the times; the catalog keeps them, so a restarted server
// knows what it missed. The catalog does not read the timing (it sits below src/scheduler); it
// compares it as canonical JSON to tell a changed schedule from a re-applied one.
//
// A policy's schedules are replaced as a set by sync() when the policy is applied; they go when
// the policy or the client goes. The state changes only by compare-and-set (setState()), so that
// two schedulers, or a scheduler and a re-applied policy, never both act on one state.

import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { canonicalJson, fromJson, toJson } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, inTransaction, type Scope } from './scope.ts';
import type { Database, SchedulesTable } from './schema.ts';
import { sql } from 'kysely';
import type { Kysely, Selectable } from 'kysely';

/** The scheduler's state of one row (src/scheduler/plan.ts, ScheduleState). */
export interface ScheduleState {
  /** When the schedule took effect (created, or its timing changed). */
  since: number;
  lastSlot: number | null;
  /** 'queued', 'missed' or 'caught-up' (the scheduler's SlotState). */
  lastState: string | null;
  /** When it next needs planning; null: never. */
  nextRun: number | null;
}

export interface Schedule {
  id: string;
  policy: string;
  client: string;
  /** The schedule's name in the policy. */
  name: string;
  /** The scheduler's Schedule: calendar or every (ms), window, timezone, missed. */
  timing: Record<string, unknown>;
  level: string;
  lifecycle: string | undefined;
  state: ScheduleState;
  /** Why the scheduler cannot plan it ({ code, message, hint }); its nextRun is then null. */
  error: Record<string, unknown> | undefined;
  updated: number;
}

export interface StateChange {
  id: string;
  previous: ScheduleState;
  next: ScheduleState;
  error?: Record<string, unknown>;
}

export interface ScheduleEntry {
  client: string;
  name: string;
  timing: Record<string, unknown>;
  level: string;
  lifecycle?: string;
}

export interface SyncResult {
  /** The policy's schedules now, in the order of the entries. */
  schedules: Schedule[];
  created: number;
  /** Timing changed: their state restarted. */
  changed: number;
  /** Timing unchanged: their state kept (level and lifecycle updated). */
  kept: number;
  removed: number;
}

export interface Schedules {
  /**
   * Makes `entries` the policy's schedules. A new one starts at `now` (since and nextRun); one
   * whose timing is unchanged keeps its state; one whose timing changed starts again at `now`
   * (keeping its last slot, which is never queued again); the policy's others are removed.
   * NOT_FOUND if the policy or a client does not exist.
   */
  sync(policy: string, entries: ScheduleEntry[], options?: { now?: number }): Promise<SyncResult>;
  get(id: string): Promise<Schedule>;
  find(id: string): Promise<Schedule | undefined>;
  /** By policy, client and name. */
  list(options?: PageOptions & { policy?: string; client?: string }): Promise<Page<Schedule>>;
  /**
   * The schedules whose nextRun is at or before `t`, earliest first (then by id), from the index on
   * next_run; at most `limit` (default 100, at most 1000), after `after` (the last row of the
   * previous call) to read them all.
   */
  due(t: number, options?: { limit?: number; after?: { nextRun: number; id: string } }): Promise<Schedule[]>;
  /** The earliest non-null nextRun of any schedule, or null. */
  nextRun(): Promise<number | null>;
  /**
   * Compare-and-set: stores `next` (and `error`, cleared when left out) only if the row's state
   * still equals `previous`. Returns the updated schedule, or undefined when the row changed
   * meanwhile or no longer exists.
   */
  setState(id: string, previous: ScheduleState, next: ScheduleState, options?: { error?: Record<string, unknown> }): Promise<Schedule | undefined>;
  /**
   * setState() for many rows in one statement (the scheduler's batches: one round trip, not one
   * per row). Returns, in order, the updated schedule or undefined. Rows are locked in id order.
   */
  setStates(changes: readonly StateChange[]): Promise<(Schedule | undefined)[]>;
  remove(id: string): Promise<void>;
}

// Named one by one: SQLite's RETURNING takes no table.* wildcard, and in PostgreSQL's the bare
// names would be ambiguous with the VALUES list's.
const COLUMNS = ['id', 'policy', 'client', 'name', 'timing', 'level', 'lifecycle', 'since', 'last_slot', 'last_state', 'next_run', 'error', 'updated'] as const satisfies readonly (keyof SchedulesTable)[];

/** Rows per setStates() statement: 10 parameters each, within both backends' limits. */
const STATE_BATCH = 1000;

export function schedulesModule(scope: Scope): Schedules {
  const missing: [ 'NOT_FOUND', string ] = ['NOT_FOUND', 'its policy or client does not exist'];
  const find = (id: string) => guard(scope, `get schedule ${id}`, async () => {
    const row = await scope.db.selectFrom('schedules').selectAll().where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : toSchedule(row);
  });

  const syncIn = async (db: Kysely<Database>, policy: string, entries: ScheduleEntry[], now: number): Promise<SyncResult> => {
    const key = (client: string, name: string) => `${client}\u0000${name}`;
    const existing = new Map<string, Selectable<SchedulesTable>>();
    for (const row of await db.selectFrom('schedules').selectAll().where('policy', '=', policy).execute()) existing.set(key(row.client, row.name), row);
    const result: SyncResult = { schedules: [], created: 0, changed: 0, kept: 0, removed: 0 };
    const inserts: (Omit<Selectable<SchedulesTable>, 'timing' | 'error'> & { timing: string; error: null })[] = [];
    const seen = new Set<string>();
    for (const entry of entries) {
      const k = key(entry.client, entry.name);
      if (seen.has(k)) throw new CofferError('USAGE', `Cannot set the schedules of policy ${policy}: schedule ${entry.name} of client ${entry.client} is given twice`);
      seen.add(k);
      const timing = canonicalJson(entry.timing);
      const old = existing.get(k);
      if (old === undefined) {
        const row = {
          id: ulid(now), policy, client: entry.client, name: entry.name, timing, level: entry.level, lifecycle: entry.lifecycle ?? null,
          since: now, last_slot: null, last_state: null, next_run: now, error: null, updated: now,
        };
        inserts.push(row);
        result.schedules.push(toSchedule(row));
        result.created++;
        continue;
      }
      existing.delete(k);
      const same = canonicalJson(fromJson(old.timing)) === timing;
      const fields = same
        ? { level: entry.level, lifecycle: entry.lifecycle ?? null }
        : { timing, level: entry.level, lifecycle: entry.lifecycle ?? null, since: now, next_run: now, error: null };
      if (same && old.level === fields.level && old.lifecycle === fields.lifecycle) {
        result.schedules.push(toSchedule(old));
      } else {
        const row = await db.updateTable('schedules').set({ ...fields, updated: now }).where('id', '=', old.id).returningAll().executeTakeFirstOrThrow();
        result.schedules.push(toSchedule(row));
      }
      if (same) result.kept++;
      else result.changed++;
    }
    for (let i = 0; i < inserts.length; i += 500) await db.insertInto('schedules').values(inserts.slice(i, i + 500)).execute();
    const gone = [...existing.values()].map((r) => r.id);
    for (let i = 0; i < gone.length; i += 500) await db.deleteFrom('schedules').where('id', 'in', gone.slice(i, i + 500)).execute();
    result.removed = gone.length;
    return result;
  };

  return {
    sync: (policy, entries, options = {}) => guard(scope, `set the schedules of policy ${policy}`,
      () => inTransaction(scope, (trx) => syncIn(trx, policy, entries, options.now ?? scope.now())), { foreignKey: missing }),

    async get(id) {
      const found = await find(id);
      if (found === undefined) throw new CofferError('NOT_FOUND', `Cannot get schedule ${id}: it does not exist`, { hint: 'Schedules change when their policy is applied; list them again.' });
      return found;
    },

    find,

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

    async due(t, options = {}) {
      const limit = pageLimit(options.limit, 'list due schedules');
      const rows = await guard(scope, 'list due schedules', () => {
        let q = scope.db.selectFrom('schedules').selectAll().where('next_run', '<=', t);
        const after = options.after;
        if (after !== undefined) q = q.where((eb) => eb(eb.refTuple('next_run', 'id'), '>', eb.tuple(after.nextRun, after.id)));
        return q.orderBy('next_run').orderBy('id').limit(limit).execute();
      });
      return rows.map(toSchedule);
    },

    async nextRun() {
      const row = await guard(scope, 'find the next scheduled run', () =>
        scope.db.selectFrom('schedules').select('next_run').where('next_run', 'is not', null)
          .orderBy('next_run').limit(1).executeTakeFirst());
      return row?.next_run ?? null;
    },

    async setStates(changes) {
      if (changes.length === 0) return [];
      const seen = new Set<string>();
      for (const c of changes) {
        if (seen.has(c.id)) throw new CofferError('USAGE', `Cannot record the state of schedule ${c.id}: it is given twice in one call`);
        seen.add(c.id);
      }
      const pg = scope.dialect === 'postgres';
      // PostgreSQL types the parameters of a VALUES list from its first row; SQLite needs no casts.
      const cast = (value: unknown, type: string) => (pg ? sql`${value}::${sql.raw(type)}` : sql`${value}`);
      const updated = new Map<string, Selectable<SchedulesTable>>();
      for (let i = 0; i < changes.length; i += STATE_BATCH) {
        const batch = changes.slice(i, i + STATE_BATCH);
        const values = sql.join(batch.map((c) => sql`(${sql.join([
          cast(c.id, 'text'), cast(c.previous.since, 'bigint'), cast(c.previous.lastSlot, 'bigint'), cast(c.previous.lastState, 'text'), cast(c.previous.nextRun, 'bigint'),
          cast(c.next.since, 'bigint'), cast(c.next.lastSlot, 'bigint'), cast(c.next.lastState, 'text'), cast(c.next.nextRun, 'bigint'), cast(toJson(c.error), pg ? 'jsonb' : 'text'),
        ])})`));
        // Null-safe equality: IS in SQLite, IS NOT DISTINCT FROM in PostgreSQL.
        const same = pg ? sql.raw('is not distinct from') : sql.raw('is');
        // PostgreSQL: lock the rows in id order first, so that two servers updating overlapping
        // batches wait for each other instead of deadlocking. (SQLite has one writer.)
        const lock = pg ? sql`, l as (select id from schedules where id in (select id from v) order by id for update)` : sql``;
        const locked = pg ? sql` and schedules.id in (select id from l)` : sql``;
        const result = await guard(scope, `record the state of ${batch.length} schedules`, () => sql<Selectable<SchedulesTable>>`
          with v(id, p_since, p_last_slot, p_last_state, p_next_run, since, last_slot, last_state, next_run, error) as (values ${values})${lock}
          update schedules set since = v.since, last_slot = v.last_slot, last_state = v.last_state, next_run = v.next_run, error = v.error, updated = ${scope.now()}
          from v
          where schedules.id = v.id and schedules.since = v.p_since and schedules.last_slot ${same} v.p_last_slot
            and schedules.last_state ${same} v.p_last_state and schedules.next_run ${same} v.p_next_run${locked}
          returning ${sql.join(COLUMNS.map((c) => sql.ref(`schedules.${c}`)))}`.execute(scope.db));
        for (const row of result.rows) updated.set(row.id, row);
      }
      return changes.map((c) => {
        const row = updated.get(c.id);
        return row === undefined ? undefined : toSchedule(row);
      });
    },

    async setState(id, previous, next, options = {}) {
      return guard(scope, `record the state of schedule ${id}`, async () => {
        const row = await scope.db.updateTable('schedules').set({
          since: next.since, last_slot: next.lastSlot, last_state: next.lastState, next_run: next.nextRun,
          error: toJson(options.error), updated: scope.now(),
        }).where('id', '=', id)
          .where('since', '=', previous.since)
          .where('last_slot', previous.lastSlot === null ? 'is' : '=', previous.lastSlot)
          .where('last_state', previous.lastState === null ? 'is' : '=', previous.lastState)
          .where('next_run', previous.nextRun === null ? 'is' : '=', previous.nextRun)
          .returningAll().executeTakeFirst();
        return row === undefined ? undefined : toSchedule(row);
      });
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
    timing: fromJson<Record<string, unknown>>(row.timing) ?? {},
    level: row.level,
    lifecycle: row.lifecycle ?? undefined,
    state: { since: row.since, lastSlot: row.last_slot, lastState: row.last_state, nextRun: row.next_run },
    error: fromJson<Record<string, unknown>>(row.error),
    updated: row.updated,
  };
}

