// The catalog's side of the compliance report (src/server/compliance.ts): a few aggregates, each
// one SQL statement over the whole catalog, so that a report over 10,000 clients and 1,000,000
// images costs a handful of queries and index range scans, never a query per image. The report
// decides what is out of compliance; these only count.
//
// The (policy, client) pairs are those of the schedules table (one row per registered client of
// each policy's schedules): per pair, the newest `ok` image is one backwards step on the index
// (client, policy, time), and the newest ended restore test a short backwards walk of the
// index (client, policy, kind, id), stopping at the first one (migration 0004 adds the indexes
// these statements need).

import { sql, type RawBuilder } from 'kysely';
import { fromJson } from './json.ts';
import { guard, type Scope } from './scope.ts';

/** The newest `ok` image of a (policy, client) pair, if any. */
export interface LastBackup {
  policy: string;
  client: string;
  image: string | undefined;
  time: number | undefined;
}

/** The newest restore-test job of a pair that ended (succeeded, warnings or failed). */
export interface LastRestoreTest {
  policy: string;
  client: string;
  job: string;
  state: string;
  ended: number | undefined;
  result: Record<string, unknown> | undefined;
  error: Record<string, unknown> | undefined;
}

/** Per client: images of a policy in a time range that lack a live copy (ok or suspect) on any of some storage units. */
export interface MissingCopies {
  client: string;
  images: number;
  oldestImage: string;
  oldestTime: number;
}

export interface MissingQuery {
  policy: string;
  /** A copy on any of these units counts. */
  units: string[];
  /** Images with time > after (exclusive; -Infinity: no bound) and time <= until. */
  after: number;
  until: number;
  /** Only images of these schedules, or only those not of these (null schedule included): the images of one lifecycle. */
  schedules?: { in: string[] } | { notIn: string[] };
}

/** An image with a copy on legal hold. */
export interface HeldImage {
  image: string;
  client: string;
  policy: string;
  time: number;
  reason: string;
  copies: number;
}

export interface Compliance {
  /** The newest ok image of every (policy, client) pair the schedules know, for these policies. */
  lastBackups(policies: string[]): Promise<LastBackup[]>;
  /** The newest ended restore test of every (policy, client) pair the schedules know, for these policies. */
  lastRestoreTests(policies: string[], kind: string): Promise<LastRestoreTest[]>;
  /** Per client, the ok and partial images of a query that lack a copy on its units. */
  missingCopies(query: MissingQuery): Promise<MissingCopies[]>;
  /** Images with a held copy, oldest first (at most `limit`), and how many there are in all. */
  holds(limit: number): Promise<{ items: HeldImage[]; total: number }>;
}

const ENDED = ['succeeded', 'warnings', 'failed'];

const list = (values: readonly string[]): RawBuilder<unknown> => sql.join(values.map((v) => sql`${v}`));

export function complianceModule(scope: Scope): Compliance {
  const pairs = (policies: string[]) => sql`(select distinct policy, client from schedules where policy in (${list(policies)}))`;
  return {
    async lastBackups(policies) {
      if (policies.length === 0) return [];
      return guard(scope, 'find the last good backups', async () => {
        const r = await sql<{ policy: string; client: string; image: string | null; time: number | string | null }>`
          select x.policy, x.client, i.id as image, i.time
          from (
            select p.policy, p.client,
              (select i2.id from images i2
               where i2.client = p.client and i2.policy = p.policy and i2.state = 'ok'
               order by i2.time desc, i2.id desc limit 1) as newest
            from ${pairs(policies)} p
          ) x
          left join images i on i.id = x.newest`.execute(scope.db);
        return r.rows.map((row) => ({ policy: row.policy, client: row.client, image: row.image ?? undefined, time: row.time === null ? undefined : Number(row.time) }));
      });
    },

    async lastRestoreTests(policies, kind) {
      if (policies.length === 0) return [];
      return guard(scope, 'find the last restore tests', async () => {
        const r = await sql<{ policy: string; client: string; id: string; state: string; ended: number | string | null; result: unknown; error: unknown }>`
          select x.policy, x.client, j.id, j.state, j.ended, j.result, j.error
          from (
            select p.policy, p.client,
              (select j2.id from jobs j2
               where j2.client = p.client and j2.policy = p.policy and j2.kind = ${kind} and j2.state in (${list(ENDED)})
               order by j2.id desc limit 1) as newest
            from ${pairs(policies)} p
          ) x
          join jobs j on j.id = x.newest`.execute(scope.db);
        return r.rows.map((row) => ({
          policy: row.policy, client: row.client, job: row.id, state: row.state,
          ended: row.ended === null ? undefined : Number(row.ended),
          result: fromJson(row.result as string | null) as Record<string, unknown> | undefined,
          error: fromJson(row.error as string | null) as Record<string, unknown> | undefined,
        }));
      });
    },

    async missingCopies(q) {
      if (q.until === -Infinity || q.after >= q.until || q.units.length === 0) return [];
      const after = Number.isFinite(q.after) ? sql` and i.time > ${q.after}` : sql``;
      const schedules = q.schedules === undefined ? sql``
        : 'in' in q.schedules
          ? (q.schedules.in.length ? sql` and i.schedule in (${list(q.schedules.in)})` : sql` and 1 = 0`)
          : (q.schedules.notIn.length ? sql` and (i.schedule is null or i.schedule not in (${list(q.schedules.notIn)}))` : sql``);
      return guard(scope, `find the images of policy ${q.policy} without a copy on ${q.units.join(' or ')}`, async () => {
        const r = await sql<{ client: string; n: number | string; oldest_image: string; oldest_time: number | string }>`
          select i.client, count(*) as n, min(i.id) as oldest_image, min(i.time) as oldest_time
          from images i
          where i.policy = ${q.policy} and i.state in ('ok', 'partial') and i.time <= ${q.until}${after}${schedules}
            and not exists (
              select 1 from image_copies c
              where c.image_id = i.id and c.storage_unit in (${list(q.units)}) and c.state in ('ok', 'suspect'))
          group by i.client
          order by i.client`.execute(scope.db);
        return r.rows.map((row) => ({ client: row.client, images: Number(row.n), oldestImage: row.oldest_image, oldestTime: Number(row.oldest_time) }));
      });
    },

    async holds(limit) {
      return guard(scope, 'list the images on hold', async () => {
        const r = await sql<{ id: string; client: string; policy: string; time: number | string; reason: string; copies: number | string }>`
          select i.id, i.client, i.policy, i.time, min(c.hold) as reason, count(*) as copies
          from image_copies c join images i on i.id = c.image_id
          where c.hold is not null
          group by i.id, i.client, i.policy, i.time
          order by i.time, i.id
          limit ${limit}`.execute(scope.db);
        const total = await sql<{ n: number | string }>`select count(distinct image_id) as n from image_copies where hold is not null`.execute(scope.db);
        return {
          items: r.rows.map((row) => ({ image: row.id, client: row.client, policy: row.policy, time: Number(row.time), reason: row.reason, copies: Number(row.copies) })),
          total: Number(total.rows[0]?.n ?? 0),
        };
      });
    },
  };
}
