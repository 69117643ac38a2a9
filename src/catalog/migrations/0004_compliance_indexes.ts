// Catalog version 4: indexes for the compliance report
// (src/catalog/compliance.ts), measured on 1,000,000 images and 1,290,000 copies
// (bench/compliance.ts, SQLite): the report took 24-31 s without them, most of it in 150 "images
// of a policy without a copy on a unit" statements, each reading its images' rows and then each
// image's copies' rows all over the file.
//
//   images (policy, time, state, client, schedule, id): such a statement reads the policy's
//     images in its time range from the index alone;
//   image_copies (image_id, storage_unit, state): and asks the index alone whether an image has a
//     live copy on a unit;
//   image_copies (image_id) where hold is not null: the held images, without reading every copy;
//   jobs (client, policy, kind, id): a client's newest restore test of a policy is the first few
//     entries walking back, whatever else the client and the policy ran (on PostgreSQL the
//     per-client lookups took 25 s without it: it walked the policy's or the state's jobs).

import { sql, type Kysely } from 'kysely';

export const name = 'compliance indexes';

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('images_policy_cover').on('images').columns(['policy', 'time', 'state', 'client', 'schedule', 'id']).execute();
  await db.schema.createIndex('image_copies_image_unit').on('image_copies').columns(['image_id', 'storage_unit', 'state']).execute();
  await db.schema.createIndex('jobs_client_policy_kind').on('jobs').columns(['client', 'policy', 'kind', 'id']).execute();
  await db.schema.createIndex('image_copies_held').on('image_copies').column('image_id').where(sql.ref('hold'), 'is not', null).execute();
}
