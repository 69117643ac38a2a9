// Catalog version 2: alerts, what the server found that someone should know of (damage a verify
// job found, and whether and how it was repaired), for `coffer alerts` and GET /api/v1/alerts.
// Frozen once released, as every migration.

import type { Kysely } from 'kysely';
import type { MigrationContext } from './migration.ts';

export const name = 'alerts';

export async function up(db: Kysely<any>, context: MigrationContext): Promise<void> {
  const json = context.dialect === 'postgres' ? 'jsonb' : 'text';
  await db.schema.createTable('alerts')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('time', 'bigint', (c) => c.notNull())
    .addColumn('updated', 'bigint', (c) => c.notNull())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('severity', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('storage_unit', 'text')
    .addColumn('images', json, (c) => c.notNull())
    .addColumn('message', 'text', (c) => c.notNull())
    .addColumn('hint', 'text')
    .addColumn('details', json)
    .addColumn('resolved', 'bigint')
    .addColumn('resolved_by', 'text')
    .addColumn('resolution', 'text')
    .execute();
  // Open alerts first (the list people look at), newest first within a state.
  await db.schema.createIndex('alerts_state').on('alerts').columns(['state', 'id']).execute();
  await db.schema.createIndex('alerts_unit').on('alerts').columns(['storage_unit', 'id']).execute();
}
