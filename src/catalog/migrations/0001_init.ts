// Catalog version 1: every table of docs/server.md ("The catalog").
//
// Written once with kysely's schema builder for both backends; the only differences are the
// JSON column type (text in SQLite, jsonb in PostgreSQL) and the audit log's monotonic id.
// Frozen: once released, a change to the schema is a new migration, never an edit here.

import type { Kysely } from 'kysely';
import type { MigrationContext } from './migration.ts';

export const name = 'init';

export async function up(db: Kysely<any>, context: MigrationContext): Promise<void> {
  const json = context.dialect === 'postgres' ? 'jsonb' : 'text';
  const schema = db.schema;

  await schema.createTable('clients')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('platform', 'text')
    .addColumn('agent_id', 'text')
    .addColumn('host_identity', json)
    .addColumn('labels', json, (c) => c.notNull())
    .addColumn('max_streams', 'integer')
    .addColumn('created', 'bigint', (c) => c.notNull())
    .addColumn('last_seen', 'bigint')
    .addColumn('revision', 'integer')
    .execute();

  await schema.createTable('storage_units')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('url', 'text', (c) => c.notNull())
    .addColumn('max_jobs', 'integer')
    .addColumn('password_ref', 'text')
    .addColumn('repo_id', 'text')
    .addColumn('spec', json, (c) => c.notNull())
    .addColumn('labels', json, (c) => c.notNull())
    .addColumn('revision', 'integer', (c) => c.notNull())
    .addColumn('updated', 'bigint', (c) => c.notNull())
    .addColumn('updated_by', 'text')
    .execute();

  for (const table of ['lifecycles', 'policies']) {
    await schema.createTable(table)
      .addColumn('name', 'text', (c) => c.primaryKey())
      .addColumn('spec', json, (c) => c.notNull())
      .addColumn('labels', json, (c) => c.notNull())
      .addColumn('revision', 'integer', (c) => c.notNull())
      .addColumn('updated', 'bigint', (c) => c.notNull())
      .addColumn('updated_by', 'text')
      .execute();
  }

  // History of every applied document, whatever its kind; rows are never changed or removed.
  await schema.createTable('policy_revisions')
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('revision', 'integer', (c) => c.notNull())
    .addColumn('document', json)
    .addColumn('applied', 'bigint', (c) => c.notNull())
    .addColumn('applied_by', 'text')
    .addPrimaryKeyConstraint('policy_revisions_pk', ['kind', 'name', 'revision'])
    .execute();

  // One row per (policy, client, schedule name): what the scheduler needs to plan it (its timing,
  // as src/scheduler's Schedule in JSON) and its state (src/scheduler/plan.ts, ScheduleState),
  // changed only by compare-and-set so that two schedulers never decide one slot twice.
  await schema.createTable('schedules')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('policy', 'text', (c) => c.notNull().references('policies.name').onDelete('cascade'))
    .addColumn('client', 'text', (c) => c.notNull().references('clients.name').onDelete('cascade'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('timing', json, (c) => c.notNull())
    .addColumn('level', 'text', (c) => c.notNull())
    .addColumn('lifecycle', 'text')
    .addColumn('since', 'bigint', (c) => c.notNull())
    .addColumn('last_slot', 'bigint')
    .addColumn('last_state', 'text')
    .addColumn('next_run', 'bigint')
    // Why the scheduler cannot plan it (then next_run is null), as { code, message, hint }.
    .addColumn('error', json)
    .addColumn('updated', 'bigint', (c) => c.notNull())
    .addUniqueConstraint('schedules_policy_client_name', ['policy', 'client', 'name'])
    .execute();
  // The scheduler's scan: due schedules (next_run <= now), earliest first.
  await schema.createIndex('schedules_next_run').on('schedules').columns(['next_run', 'id']).execute();
  await schema.createIndex('schedules_client').on('schedules').column('client').execute();

  // Images outlive their policy (retention), so `policy` is no foreign key; a client with
  // images cannot be removed.
  await schema.createTable('images')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('client', 'text', (c) => c.notNull().references('clients.name'))
    .addColumn('policy', 'text', (c) => c.notNull())
    .addColumn('schedule', 'text')
    .addColumn('level', 'text', (c) => c.notNull())
    .addColumn('time', 'bigint', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('streams', json, (c) => c.notNull())
    .addColumn('summary', json)
    .addColumn('job_id', 'text')
    .execute();
  // Lists are newest first with the id as tie-breaker (keyset pagination on (time, id)).
  await schema.createIndex('images_client_time').on('images').columns(['client', 'time', 'id']).execute();
  await schema.createIndex('images_policy_time').on('images').columns(['policy', 'time', 'id']).execute();
  await schema.createIndex('images_time').on('images').columns(['time', 'id']).execute();
  // The parent of an incremental backup: the newest good image of one client by one policy.
  await schema.createIndex('images_client_policy_time').on('images').columns(['client', 'policy', 'time', 'id']).execute();

  await schema.createTable('image_copies')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('image_id', 'text', (c) => c.notNull().references('images.id').onDelete('cascade'))
    .addColumn('storage_unit', 'text', (c) => c.notNull().references('storage_units.name'))
    .addColumn('snapshots', json, (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('expires', 'bigint')
    .addColumn('hold', 'text')
    .addColumn('created', 'bigint', (c) => c.notNull())
    .addColumn('updated', 'bigint', (c) => c.notNull())
    .execute();
  await schema.createIndex('image_copies_image').on('image_copies').column('image_id').execute();
  await schema.createIndex('image_copies_unit').on('image_copies').columns(['storage_unit', 'id']).execute();
  // The expiry scan: copies past their expiry time.
  await schema.createIndex('image_copies_expires').on('image_copies').columns(['expires', 'id']).execute();

  // Jobs have no foreign keys: a job's record outlives the client, policy or unit it ran for.
  await schema.createTable('jobs')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('priority', 'integer', (c) => c.notNull())
    .addColumn('client', 'text')
    .addColumn('policy', 'text')
    .addColumn('schedule', 'text')
    .addColumn('storage_unit', 'text')
    .addColumn('spec', json, (c) => c.notNull())
    .addColumn('attempt', 'integer', (c) => c.notNull())
    .addColumn('max_attempts', 'integer', (c) => c.notNull())
    .addColumn('not_before', 'bigint')
    .addColumn('queued', 'bigint', (c) => c.notNull())
    .addColumn('started', 'bigint')
    .addColumn('ended', 'bigint')
    .addColumn('updated', 'bigint', (c) => c.notNull())
    .addColumn('progress', json)
    .addColumn('result', json)
    .addColumn('error', json)
    .addColumn('requested_by', 'text')
    .addColumn('claimed_by', 'text')
    // A scheduled run's slot (ms): with (policy, client, schedule) the run's identity.
    .addColumn('slot', 'bigint')
    // The last job_logs.seq handed out: appending a line bumps it under the row's lock.
    .addColumn('log_seq', 'integer', (c) => c.notNull())
    .execute();
  // The queue's order (claimNext) and the running jobs (limits, restart).
  await schema.createIndex('jobs_claim').on('jobs').columns(['state', 'priority desc', 'queued', 'id']).execute();
  // Lists by state, newest first.
  await schema.createIndex('jobs_state').on('jobs').columns(['state', 'id']).execute();
  await schema.createIndex('jobs_client').on('jobs').columns(['client', 'id']).execute();
  await schema.createIndex('jobs_policy').on('jobs').columns(['policy', 'id']).execute();
  // One job per scheduled slot, whatever happens to it (queued, run, missed): the scheduler
  // queues with INSERT ... ON CONFLICT DO NOTHING, so a decision applied twice (a crash between
  // queuing and storing the schedule's state, two servers) queues once.
  await schema.createIndex('jobs_slot').on('jobs').columns(['policy', 'client', 'schedule', 'slot']).unique()
    .where('slot', 'is not', null).execute();

  await schema.createTable('job_logs')
    .addColumn('job_id', 'text', (c) => c.notNull().references('jobs.id').onDelete('cascade'))
    .addColumn('seq', 'integer', (c) => c.notNull())
    .addColumn('time', 'bigint', (c) => c.notNull())
    .addColumn('level', 'text', (c) => c.notNull())
    .addColumn('message', 'text', (c) => c.notNull())
    .addColumn('data', json)
    .addPrimaryKeyConstraint('job_logs_pk', ['job_id', 'seq'])
    .execute();

  await schema.createTable('users')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('password_hash', 'text')
    .addColumn('role', 'text', (c) => c.notNull())
    .addColumn('grants', json, (c) => c.notNull())
    .addColumn('created', 'bigint', (c) => c.notNull())
    .addColumn('updated', 'bigint', (c) => c.notNull())
    .addColumn('disabled', 'bigint')
    .execute();

  await schema.createTable('tokens')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('user', 'text', (c) => c.notNull().references('users.name').onDelete('cascade'))
    .addColumn('hash', 'text', (c) => c.notNull().unique())
    .addColumn('role', 'text')
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('expires', 'bigint')
    .addColumn('created', 'bigint', (c) => c.notNull())
    .addColumn('last_used', 'bigint')
    .addColumn('revoked', 'bigint')
    .execute();
  await schema.createIndex('tokens_user').on('tokens').columns(['user', 'id']).execute();

  await schema.createTable('audit')
    .addColumn('id', context.dialect === 'postgres' ? 'bigserial' : 'integer', (c) =>
      context.dialect === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement())
    .addColumn('time', 'bigint', (c) => c.notNull())
    .addColumn('actor', 'text', (c) => c.notNull())
    .addColumn('source', 'text')
    .addColumn('action', 'text', (c) => c.notNull())
    .addColumn('target', 'text')
    .addColumn('outcome', 'text', (c) => c.notNull())
    .addColumn('details', json)
    .execute();
  await schema.createIndex('audit_time').on('audit').column('time').execute();
  await schema.createIndex('audit_actor').on('audit').columns(['actor', 'id']).execute();
  await schema.createIndex('audit_target').on('audit').columns(['target', 'id']).execute();

  await schema.createTable('settings')
    .addColumn('key', 'text', (c) => c.primaryKey())
    .addColumn('value', json, (c) => c.notNull())
    .addColumn('updated', 'bigint', (c) => c.notNull())
    .execute();
}
