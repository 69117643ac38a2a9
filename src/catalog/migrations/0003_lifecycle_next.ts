// Catalog version 3: when the lifecycle pass (src/server/lifecycle.ts) looks at an image next.
//
// images.lifecycle_next is the time from which the image may have lifecycle work to do (a
// duplicate or stage copy to queue, a staged source to release); NULL once its lifecycle has
// nothing left to do. New images get 0 (look at once), and so do the images already there when
// this migration runs: the first pass settles each once. The index lets the pass read only the
// images that are due, a keyset page at a time, however many images the catalog holds.

import type { Kysely } from 'kysely';

export const name = 'lifecycle_next';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('images').addColumn('lifecycle_next', 'bigint', (c) => c.defaultTo(0)).execute();
  await db.schema.createIndex('images_lifecycle_next').on('images').columns(['lifecycle_next', 'id']).execute();
}
