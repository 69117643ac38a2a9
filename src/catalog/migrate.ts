// Brings a catalog to the schema this code knows, at open: the migrations it lacks run in order
// inside one transaction, with their versions recorded in `coffer_migrations`, so a catalog is
// always at one known version (never halfway). Two servers opening one PostgreSQL catalog at
// once wait for each other (an advisory lock); in SQLite the write lock does the same. A catalog
// written by a newer Coffer is refused, not guessed at.

import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import { CofferError } from '../core/errors.ts';
import * as m0001 from './migrations/0001_init.ts';
import * as m0002 from './migrations/0002_alerts.ts';
import * as m0003 from './migrations/0003_lifecycle_next.ts';
import * as m0004 from './migrations/0004_compliance_indexes.ts';
import * as m0005 from './migrations/0005_enrollment.ts';
import type { CatalogDialect, Migration } from './migrations/migration.ts';
import type { Database } from './schema.ts';

export const MIGRATIONS: readonly Migration[] = [
  { version: 1, name: m0001.name, up: m0001.up },
  { version: 2, name: m0002.name, up: m0002.up },
  { version: 3, name: m0003.name, up: m0003.up },
  { version: 4, name: m0004.name, up: m0004.up },
  { version: 5, name: m0005.name, up: m0005.up },
];

/** The schema version this code writes. */
export const CATALOG_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** An arbitrary number identifying the migration lock among PostgreSQL advisory locks. */
const MIGRATE_LOCK = 0x436f6d69; // "Comi"

export interface MigrateResult {
  /** The version found (0: an empty database). */
  from: number;
  to: number;
}

/** Applies the `migrations` (default: MIGRATIONS) the catalog lacks, all in one transaction. */
export async function migrate(db: Kysely<Database>, dialect: CatalogDialect, now: () => number, where: string,
  migrations: readonly Migration[] = MIGRATIONS): Promise<MigrateResult> {
  const latest = migrations[migrations.length - 1]?.version ?? 0;
  return db.transaction().execute(async (trx) => {
    if (dialect === 'postgres') await sql`select pg_advisory_xact_lock(${MIGRATE_LOCK})`.execute(trx);
    await trx.schema.createTable('coffer_migrations').ifNotExists()
      .addColumn('version', 'integer', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('applied', 'bigint', (c) => c.notNull())
      .execute();
    const row = await trx.selectFrom('coffer_migrations').select((eb) => eb.fn.max('version').as('version')).executeTakeFirst();
    const from = Number(row?.version ?? 0);
    if (from > latest) {
      throw new CofferError('UNSUPPORTED', `Cannot open the catalog at ${where}: it is at schema version ${from}, and this Coffer knows versions up to ${latest}`, {
        hint: 'A newer Coffer wrote it: run that version (or newer), or restore a catalog backup made by this one.',
        details: { version: from, supported: latest },
      });
    }
    for (const migration of migrations) {
      if (migration.version <= from) continue;
      await migration.up(trx, { dialect });
      await trx.insertInto('coffer_migrations').values({ version: migration.version, name: migration.name, applied: now() }).execute();
    }
    return { from, to: Math.max(from, latest) };
  });
}
