// What the lifecycle pass (src/server/lifecycle.ts) reads and writes of the catalog: the images
// that may have lifecycle work due (images.lifecycle_next at or before now, on its own index, a
// keyset page at a time), when to look at each again, and the copies of a page of images in one
// query. An image whose lifecycle is done has lifecycle_next NULL and is never read again, so a
// pass costs what is due, not what the catalog holds.

import type { Selectable } from 'kysely';
import { toCopy, type Copy } from './copies.ts';
import { toImage, type Image } from './images.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, type Scope } from './scope.ts';
import type { ImagesTable } from './schema.ts';

/** An image the pass reads, with when it was due. */
export interface DueImage extends Image {
  lifecycleNext: number;
}

export interface LifecycleScan {
  /** Images with lifecycle_next at or before `now`, earliest first (then by id). */
  due(now: number, options?: PageOptions): Promise<Page<DueImage>>;
  /**
   * When the pass looks at the image next; null: its lifecycle has nothing left to do. With
   * `expected`, only if it is still that (a lookAgain() meanwhile wins); says whether it was set.
   */
  setNext(imageId: string, next: number | null, options?: { expected?: number }): Promise<boolean>;
  /** Look at the image again at `at` at the latest (a job of its lifecycle ended, a hold changed). */
  lookAgain(imageId: string, at: number): Promise<void>;
  /** The copies of these images, by image id (every image asked for has an entry). */
  copiesOf(imageIds: readonly string[]): Promise<Map<string, Copy[]>>;
  /** These images, by id (those that exist). */
  imagesById(ids: readonly string[]): Promise<Map<string, Image>>;
}

const LIST = 'lifecycle-due';
/** Ids per IN (...) list: well under both backends' parameter limits. */
const IN_BATCH = 500;

function toDue(row: Selectable<ImagesTable>): DueImage {
  return { ...toImage(row), lifecycleNext: row.lifecycle_next ?? 0 };
}

export function lifecycleScanModule(scope: Scope): LifecycleScan {
  return {
    async due(now, options = {}) {
      const action = 'list the images with lifecycle work due';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('images').selectAll().where('lifecycle_next', '<=', now);
        if (options.cursor !== undefined) {
          const [next, id] = decodeCursor(options.cursor, LIST, ['number', 'string'], action) as [number, string];
          q = q.where((eb) => eb(eb.refTuple('lifecycle_next', 'id'), '>', eb.tuple(next, id)));
        }
        const rows = await q.orderBy('lifecycle_next').orderBy('id').limit(limit + 1).execute();
        return toPage(rows, limit, LIST, (r) => [r.lifecycle_next ?? 0, r.id], toDue);
      });
    },

    async setNext(imageId, next, options = {}) {
      const r = await guard(scope, `schedule the lifecycle of image ${imageId}`, () => {
        let q = scope.db.updateTable('images').set({ lifecycle_next: next }).where('id', '=', imageId);
        if (options.expected !== undefined) q = q.where('lifecycle_next', '=', options.expected);
        return q.executeTakeFirst();
      });
      return r.numUpdatedRows > 0n;
    },

    async lookAgain(imageId, at) {
      await guard(scope, `schedule the lifecycle of image ${imageId}`, () =>
        scope.db.updateTable('images').set({ lifecycle_next: at }).where('id', '=', imageId)
          .where((eb) => eb.or([eb('lifecycle_next', 'is', null), eb('lifecycle_next', '>', at)])).execute());
    },

    async copiesOf(imageIds) {
      const out = new Map<string, Copy[]>(imageIds.map((id) => [id, []]));
      await guard(scope, `list the copies of ${imageIds.length} images`, async () => {
        for (let i = 0; i < imageIds.length; i += IN_BATCH) {
          const rows = await scope.db.selectFrom('image_copies').selectAll()
            .where('image_id', 'in', imageIds.slice(i, i + IN_BATCH)).orderBy('id').execute();
          for (const row of rows) out.get(row.image_id)?.push(toCopy(row));
        }
      });
      return out;
    },

    async imagesById(ids) {
      const out = new Map<string, Image>();
      await guard(scope, `get ${ids.length} images`, async () => {
        for (let i = 0; i < ids.length; i += IN_BATCH) {
          const rows = await scope.db.selectFrom('images').selectAll().where('id', 'in', ids.slice(i, i + IN_BATCH)).execute();
          for (const row of rows) out.set(row.id, toImage(row));
        }
      });
      return out;
    },
  };
}
