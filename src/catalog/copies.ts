// Copies of images: each in one storage unit, with its own snapshot ids, state, expiry time and
// hold. A copy is `ok` until a check finds it `suspect` or `lost`, and `expired` once the expire
// job has forgotten its snapshots. A hold (legal hold, investigation) keeps it past its expiry:
// the expiry scan (expiredCopies()) does not return held copies.

import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { fromJson, toJsonRequired } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, type Scope } from './scope.ts';
import type { CopiesTable } from './schema.ts';
import type { Selectable } from 'kysely';

export const COPY_STATES = ['ok', 'suspect', 'expired', 'lost'] as const;
export type CopyState = (typeof COPY_STATES)[number];

export interface Copy {
  id: string;
  imageId: string;
  storageUnit: string;
  /** Stream (as in the image) → snapshot id in this copy's repository. */
  snapshots: Record<string, string>;
  state: CopyState;
  /** When it may be expired; undefined: never. */
  expires: number | undefined;
  /** Why it is held past its expiry; undefined: not held. */
  hold: string | undefined;
  created: number;
  updated: number;
}

export interface CopyInput {
  storageUnit: string;
  snapshots: Record<string, string>;
  state?: CopyState;
  expires?: number | null;
  hold?: string | null;
}

export interface CopyChange {
  state?: CopyState;
  /** null: never expires. */
  expires?: number | null;
  /** null: release the hold. */
  hold?: string | null;
  /** The snapshots that now hold the copy's streams (a repair that had to write new ones). */
  snapshots?: Record<string, string>;
}

export interface CopyFilter {
  imageId?: string;
  storageUnit?: string;
  state?: CopyState | CopyState[];
  /** Only copies whose expiry time is at or before this; the list is then ordered by expiry. */
  expiresBefore?: number;
  /** true: only held copies; false: only copies without a hold. */
  held?: boolean;
}

export interface Copies {
  /** NOT_FOUND if the image or the storage unit does not exist. */
  add(imageId: string, copy: CopyInput): Promise<Copy>;
  get(id: string): Promise<Copy>;
  /** By id (the order they were made), or by expiry time with `expiresBefore`. */
  list(options?: PageOptions & CopyFilter): Promise<Page<Copy>>;
  update(id: string, change: CopyChange): Promise<Copy>;
  /**
   * The copies due for expiry at `now` (default: the server's clock): expiry time at or before
   * it, no hold, state ok or suspect (an expired copy is done, a lost one has nothing to forget);
   * earliest expiry first.
   */
  expiredCopies(now?: number, options?: PageOptions): Promise<Page<Copy>>;
  /** Holds the copy past its expiry, saying why (legal hold, investigation). */
  hold(id: string, reason: string): Promise<Copy>;
  /** Releases its hold: it expires at its expiry time again. */
  release(id: string): Promise<Copy>;
  remove(id: string): Promise<void>;
}

export function copiesModule(scope: Scope): Copies {
  const checkState = (state: string | undefined, action: string) => {
    if (state !== undefined && !COPY_STATES.includes(state as CopyState)) {
      throw new CofferError('USAGE', `Cannot ${action}: the state ${state} is not one of ${COPY_STATES.join(', ')}`);
    }
  };
  const get = async (id: string) => {
    const row = await guard(scope, `get copy ${id}`, () => scope.db.selectFrom('image_copies').selectAll().where('id', '=', id).executeTakeFirst());
    if (row === undefined) throw new CofferError('NOT_FOUND', `Cannot get copy ${id}: it does not exist`, { hint: 'List the copies of its image again.' });
    return toCopy(row);
  };

  const api: Copies = {
    async add(imageId, copy) {
      const action = `add a copy of image ${imageId} in storage unit ${copy.storageUnit}`;
      checkState(copy.state, action);
      const now = scope.now();
      const row = {
        id: ulid(now),
        image_id: imageId,
        storage_unit: copy.storageUnit,
        snapshots: toJsonRequired(copy.snapshots),
        state: copy.state ?? 'ok',
        expires: copy.expires ?? null,
        hold: copy.hold ?? null,
        created: now,
        updated: now,
      };
      await guard(scope, action, () => scope.db.insertInto('image_copies').values(row).execute(),
        { foreignKey: ['NOT_FOUND', 'the image or the storage unit does not exist'] });
      return toCopy(row);
    },

    get,

    async list(options = {}) {
      const action = 'list copies';
      const limit = pageLimit(options.limit, action);
      const byExpiry = options.expiresBefore !== undefined;
      const list = byExpiry ? 'copies-by-expiry' : 'copies';
      const states = options.state === undefined ? undefined : Array.isArray(options.state) ? options.state : [options.state];
      for (const s of states ?? []) checkState(s, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('image_copies').selectAll();
        if (options.imageId !== undefined) q = q.where('image_id', '=', options.imageId);
        if (options.storageUnit !== undefined) q = q.where('storage_unit', '=', options.storageUnit);
        if (states !== undefined) q = q.where('state', 'in', states);
        if (options.held === true) q = q.where('hold', 'is not', null);
        if (options.held === false) q = q.where('hold', 'is', null);
        if (byExpiry) {
          q = q.where('expires', '<=', options.expiresBefore!);
          if (options.cursor !== undefined) {
            const [expires, id] = decodeCursor(options.cursor, list, ['number', 'string'], action) as [number, string];
            q = q.where((eb) => eb(eb.refTuple('expires', 'id'), '>', eb.tuple(expires, id)));
          }
          q = q.orderBy('expires').orderBy('id');
        } else {
          if (options.cursor !== undefined) {
            const [id] = decodeCursor(options.cursor, list, ['string'], action) as [string];
            q = q.where('id', '>', id);
          }
          q = q.orderBy('id');
        }
        const rows = await q.limit(limit + 1).execute();
        return toPage(rows, limit, list, (r) => (byExpiry ? [r.expires, r.id] : [r.id]), toCopy);
      });
    },

    async update(id, change) {
      const action = `change copy ${id}`;
      checkState(change.state, action);
      const set: Record<string, unknown> = { updated: scope.now() };
      if (change.state !== undefined) set.state = change.state;
      if (change.expires !== undefined) set.expires = change.expires;
      if (change.hold !== undefined) set.hold = change.hold;
      if (change.snapshots !== undefined) set.snapshots = toJsonRequired(change.snapshots);
      const result = await guard(scope, action, () => scope.db.updateTable('image_copies').set(set).where('id', '=', id).executeTakeFirst());
      if (result.numUpdatedRows === 0n) throw new CofferError('NOT_FOUND', `Cannot ${action}: it does not exist`);
      return get(id);
    },

    expiredCopies(now, options = {}) {
      return api.list({ ...options, expiresBefore: now ?? scope.now(), held: false, state: ['ok', 'suspect'] });
    },

    async hold(id, reason) {
      if (typeof reason !== 'string' || reason.trim() === '') {
        throw new CofferError('USAGE', `Cannot hold copy ${id}: no reason given`, { hint: 'Say why it is held (a case number, an investigation).' });
      }
      return api.update(id, { hold: reason });
    },

    release(id) {
      return api.update(id, { hold: null });
    },

    async remove(id) {
      const result = await guard(scope, `remove copy ${id}`, () => scope.db.deleteFrom('image_copies').where('id', '=', id).executeTakeFirst());
      if (result.numDeletedRows === 0n) throw new CofferError('NOT_FOUND', `Cannot remove copy ${id}: it does not exist`);
    },
  };
  return api;
}

export function toCopy(row: Selectable<CopiesTable>): Copy {
  return {
    id: row.id,
    imageId: row.image_id,
    storageUnit: row.storage_unit,
    snapshots: fromJson<Record<string, string>>(row.snapshots) ?? {},
    state: row.state as CopyState,
    expires: row.expires ?? undefined,
    hold: row.hold ?? undefined,
    created: row.created,
    updated: row.updated,
  };
}
