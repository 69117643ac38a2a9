// Catalog version 5: the server's certificate authority's records (issue #12; src/server/ca.ts).
//
//   enrollments    one-time enrollment tokens (`coffer clients add NAME --enroll-token`): only the
//                  SHA-256 of the secret, the identity (name, role) a certificate made with it
//                  gets, when it expires, and when it was used (NULL until then: used once).
//   certificates   every certificate the CA issued to an agent or a node: its serial, identity,
//                  validity, when its holder was last connected, and when it was revoked. A client
//                  certificate whose serial is not here, or is revoked, is refused.
// The API token table (tokens) does not fit enrollment tokens: those belong to users, these to
// a host that has no user. Frozen once released, as every migration.

import type { Kysely } from 'kysely';

export const name = 'enrollment';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.createTable('enrollments')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('hash', 'text', (c) => c.notNull().unique())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('role', 'text', (c) => c.notNull())
    .addColumn('expires', 'bigint', (c) => c.notNull())
    .addColumn('created', 'bigint', (c) => c.notNull())
    .addColumn('created_by', 'text', (c) => c.notNull())
    .addColumn('used', 'bigint')
    .addColumn('serial', 'text')
    .execute();
  await db.schema.createIndex('enrollments_name').on('enrollments').columns(['role', 'name']).execute();
  await db.schema.createTable('certificates')
    .addColumn('serial', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('role', 'text', (c) => c.notNull())
    .addColumn('not_before', 'bigint', (c) => c.notNull())
    .addColumn('not_after', 'bigint', (c) => c.notNull())
    .addColumn('issued', 'bigint', (c) => c.notNull())
    .addColumn('last_seen', 'bigint')
    .addColumn('address', 'text')
    .addColumn('revoked', 'bigint')
    .addColumn('revoked_by', 'text')
    .execute();
  await db.schema.createIndex('certificates_identity').on('certificates').columns(['role', 'name', 'not_after']).execute();
}
