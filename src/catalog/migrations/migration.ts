// What a migration module is: `migrations/NNNN_name.ts` exports `name` and `up(db, context)`,
// listed in order in src/catalog/migrate.ts. `up` runs inside the transaction that records its
// version, so a migration that throws leaves the catalog as it was.

import type { Kysely } from 'kysely';

export type CatalogDialect = 'sqlite' | 'postgres';

export interface MigrationContext {
  /** The backend, for the few types the two do not share (JSON, identity columns). */
  dialect: CatalogDialect;
}

export interface Migration {
  version: number;
  name: string;
  up(db: Kysely<any>, context: MigrationContext): Promise<void>;
}
