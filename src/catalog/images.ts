// Images: one backup of one client by one policy (and schedule) at one time, with one snapshot
// per stream (selection → snapshot id). Where an image's data lives, and until when, is in its
// copies (copies.ts). Lists are newest first, on the (client, time) and (policy, time) indexes.
//
// An image is `pending` while its backup runs and becomes `ok` (or `partial`, `failed`) through
// complete() only once its snapshots are committed in the repository: latestGood(), which picks
// an incremental backup's parent, must never return an image whose snapshots may not exist.

import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { fromJson, toJson, toJsonRequired } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, inTransaction, type Scope } from './scope.ts';
import type { ImagesTable } from './schema.ts';
import type { Insertable, Selectable } from 'kysely';

export const IMAGE_STATES = ['pending', 'ok', 'partial', 'failed'] as const;
export type ImageState = (typeof IMAGE_STATES)[number];

export interface Image {
  id: string;
  client: string;
  policy: string;
  schedule: string | undefined;
  level: string;
  /** When the backup started, by the server's clock. */
  time: number;
  state: ImageState;
  /** Selection (a path, a stream command, a disk image) → snapshot id. */
  streams: Record<string, string>;
  summary: Record<string, unknown> | undefined;
  jobId: string | undefined;
}

export interface ImageInput {
  /** Default: a new time-ordered id. */
  id?: string;
  client: string;
  policy: string;
  schedule?: string;
  /** 'full' or 'incremental'. */
  level: string;
  /** Default: now. */
  time?: number;
  /** Default: 'ok' (the snapshots are committed); 'pending' for a backup still running. */
  state?: ImageState;
  streams: Record<string, string>;
  summary?: Record<string, unknown>;
  jobId?: string;
}

export interface ImageFilter {
  client?: string;
  policy?: string;
  schedule?: string;
  state?: ImageState;
  /** Images at or after this time. */
  since?: number;
  /** Images before this time. */
  until?: number;
}

export interface Images {
  /** NOT_FOUND if the client does not exist (clients are registered before they back up). */
  add(image: ImageInput): Promise<Image>;
  /** Adds many in one transaction (catalog rebuilds, imports); returns their ids in order. */
  addMany(images: ImageInput[]): Promise<string[]>;
  get(id: string): Promise<Image>;
  find(id: string): Promise<Image | undefined>;
  /** Newest first. */
  list(options?: PageOptions & ImageFilter): Promise<Page<Image>>;
  /**
   * Settles a pending image once its snapshots are committed (or the backup failed): CONFLICT if
   * it is not pending. `streams` and `summary`, if given, replace what it had.
   */
  complete(id: string, end: { state: 'ok' | 'partial' | 'failed'; streams?: Record<string, string>; summary?: Record<string, unknown> }): Promise<Image>;
  /**
   * The newest `ok` image of `client` by `policy` that has a snapshot of `selection` (the parent
   * of an incremental backup); with `storageUnit`, only one with an `ok` copy in that unit.
   */
  latestGood(client: string, policy: string, selection: string, options?: { storageUnit?: string }): Promise<Image | undefined>;
  /** Removes the image and all its copies' records (not the snapshots). */
  remove(id: string): Promise<void>;
}

// Rows per INSERT: 10 parameters each, well under SQLite's 32,766 and PostgreSQL's 65,535.
const BATCH = 1000;
const LATEST_BATCH = 50;

export function imagesModule(scope: Scope): Images {
  const toRow = (image: ImageInput, action: string): Insertable<ImagesTable> => {
    if (image.state !== undefined && !IMAGE_STATES.includes(image.state)) {
      throw new CofferError('USAGE', `Cannot ${action}: the state ${image.state} is not one of ${IMAGE_STATES.join(', ')}`);
    }
    const time = image.time ?? scope.now();
    return {
      id: image.id ?? ulid(time),
      client: image.client,
      policy: image.policy,
      schedule: image.schedule ?? null,
      level: image.level,
      time,
      state: image.state ?? 'ok',
      streams: toJsonRequired(image.streams),
      summary: toJson(image.summary),
      job_id: image.jobId ?? null,
    };
  };
  const noClient: ['NOT_FOUND', string] = ['NOT_FOUND', 'its client is not registered'];
  const find = (id: string) => guard(scope, `get image ${id}`, async () => {
    const row = await scope.db.selectFrom('images').selectAll().where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : toImage(row);
  });

  return {
    async add(image) {
      const action = `add an image of client ${image.client}`;
      const row = toRow(image, action);
      await guard(scope, action, () => scope.db.insertInto('images').values(row).execute(),
        { unique: ['ALREADY_EXISTS', `an image with id ${row.id} exists`], foreignKey: noClient });
      return toImage(row as Selectable<ImagesTable>);
    },

    async addMany(images) {
      const action = `add ${images.length} images`;
      const rows = images.map((image) => toRow(image, action));
      await guard(scope, action, () => inTransaction(scope, async (trx) => {
        for (let i = 0; i < rows.length; i += BATCH) await trx.insertInto('images').values(rows.slice(i, i + BATCH)).execute();
      }), { unique: ['ALREADY_EXISTS', 'an image with one of their ids exists'], foreignKey: ['NOT_FOUND', 'the client of one of them is not registered'] });
      return rows.map((r) => r.id);
    },

    async get(id) {
      const found = await find(id);
      if (found === undefined) throw new CofferError('NOT_FOUND', `Cannot get image ${id}: it does not exist`, { hint: 'List images with coffer images.' });
      return found;
    },

    find,

    async list(options = {}) {
      const action = 'list images';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('images').selectAll();
        if (options.client !== undefined) q = q.where('client', '=', options.client);
        if (options.policy !== undefined) q = q.where('policy', '=', options.policy);
        if (options.schedule !== undefined) q = q.where('schedule', '=', options.schedule);
        if (options.state !== undefined) q = q.where('state', '=', options.state);
        if (options.since !== undefined) q = q.where('time', '>=', options.since);
        if (options.until !== undefined) q = q.where('time', '<', options.until);
        if (options.cursor !== undefined) {
          const [time, id] = decodeCursor(options.cursor, 'images', ['number', 'string'], action) as [number, string];
          q = q.where((eb) => eb(eb.refTuple('time', 'id'), '<', eb.tuple(time, id)));
        }
        const rows = await q.orderBy('time', 'desc').orderBy('id', 'desc').limit(limit + 1).execute();
        return toPage(rows, limit, 'images', (r) => [r.time, r.id], toImage);
      });
    },

    async complete(id, end) {
      const action = `complete image ${id}`;
      if (!['ok', 'partial', 'failed'].includes(end.state)) {
        throw new CofferError('USAGE', `Cannot ${action}: the state ${end.state} is not one of ok, partial, failed`);
      }
      const set: Record<string, unknown> = { state: end.state };
      if (end.streams !== undefined) set.streams = toJsonRequired(end.streams);
      if (end.summary !== undefined) set.summary = toJson(end.summary);
      const row = await guard(scope, action, () => scope.db.updateTable('images').set(set)
        .where('id', '=', id).where('state', '=', 'pending').returningAll().executeTakeFirst());
      if (row !== undefined) return toImage(row);
      const found = await find(id);
      if (found === undefined) throw new CofferError('NOT_FOUND', `Cannot ${action}: it does not exist`);
      throw new CofferError('CONFLICT', `Cannot ${action}: it is ${found.state}, not pending`, { hint: 'An image is completed once, by the job that made it.' });
    },

    async latestGood(client, policy, selection, options = {}) {
      const action = `find the latest good image of client ${client} by policy ${policy}`;
      return guard(scope, action, async () => {
        // Newest first on (client, policy, time); most images hold every selection of their
        // policy, so the first batch nearly always answers.
        let after: [number, string] | undefined;
        for (;;) {
          let q = scope.db.selectFrom('images').selectAll()
            .where('client', '=', client).where('policy', '=', policy).where('state', '=', 'ok');
          if (options.storageUnit !== undefined) {
            const unit = options.storageUnit;
            q = q.where((eb) => eb.exists(eb.selectFrom('image_copies').select('image_copies.id')
              .whereRef('image_copies.image_id', '=', 'images.id')
              .where('image_copies.storage_unit', '=', unit).where('image_copies.state', '=', 'ok')));
          }
          if (after !== undefined) {
            const [time, id] = after;
            q = q.where((eb) => eb(eb.refTuple('time', 'id'), '<', eb.tuple(time, id)));
          }
          const rows = await q.orderBy('time', 'desc').orderBy('id', 'desc').limit(LATEST_BATCH).execute();
          for (const row of rows) {
            const image = toImage(row);
            if (Object.hasOwn(image.streams, selection)) return image;
          }
          if (rows.length < LATEST_BATCH) return undefined;
          const last = rows[rows.length - 1]!;
          after = [last.time, last.id];
        }
      });
    },

    async remove(id) {
      const result = await guard(scope, `remove image ${id}`, () => scope.db.deleteFrom('images').where('id', '=', id).executeTakeFirst());
      if (result.numDeletedRows === 0n) throw new CofferError('NOT_FOUND', `Cannot remove image ${id}: it does not exist`);
    },
  };
}

export function toImage(row: Selectable<ImagesTable>): Image {
  return {
    id: row.id,
    client: row.client,
    policy: row.policy,
    schedule: row.schedule ?? undefined,
    level: row.level,
    time: row.time,
    state: row.state as ImageState,
    streams: fromJson<Record<string, string>>(row.streams) ?? {},
    summary: fromJson<Record<string, unknown>>(row.summary),
    jobId: row.job_id ?? undefined,
  };
}
