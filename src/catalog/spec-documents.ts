// The query module shared by the document kinds kept as one row each plus their history:
// Policy (`policies`), Lifecycle (`lifecycles`) and StorageUnit (`storage_units`, which also
// keeps a few spec fields as columns of their own: the queue reads `max_jobs` for every claim).

import type { Kysely } from 'kysely';
import { CofferError } from '../core/errors.ts';
import { checkDocument, getRevision, listRevisions, recordRemoval, recordRevision } from './documents.ts';
import type { ApplyOptions, ApplyResult, CatalogDocument, Revision } from './documents.ts';
import { fromJson, toJsonRequired } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, inTransaction, type Scope } from './scope.ts';

export interface StoredDocument {
  name: string;
  spec: Record<string, unknown>;
  labels: Record<string, string>;
  /** The revision the row holds (see history()). */
  revision: number;
  updated: number;
  updatedBy: string | undefined;
}

export interface SpecDocuments<T extends StoredDocument> {
  /** Creates or replaces the document; records a new revision if it changed. */
  apply(doc: CatalogDocument, options?: ApplyOptions): Promise<ApplyResult>;
  /** NOT_FOUND if there is none. */
  get(name: string): Promise<T>;
  find(name: string): Promise<T | undefined>;
  /** By name. */
  list(options?: PageOptions): Promise<Page<T>>;
  /** Every revision, newest first, including the removals (document undefined). */
  history(name: string, options?: PageOptions): Promise<Page<Revision>>;
  revision(name: string, revision: number): Promise<Revision>;
  /** Removes the document (its history stays); NOT_FOUND if there is none. */
  remove(name: string, options?: ApplyOptions): Promise<void>;
}

interface Row {
  name: string;
  spec: unknown;
  labels: unknown;
  revision: number;
  updated: number;
  updated_by: string | null;
  [column: string]: unknown;
}

export interface SpecDocumentsConfig<T extends StoredDocument> {
  kind: string;
  /** Lower-case words for messages: "policy", "storage unit". */
  noun: string;
  table: 'policies' | 'lifecycles' | 'storage_units';
  /** Extra columns taken from the document (throws INVALID_CONFIG if the spec lacks them). */
  columns?(doc: CatalogDocument): Record<string, unknown>;
  /** The returned object from a row. */
  map(row: Row, base: StoredDocument): T;
  /** State for a foreign-key violation on removal ("it still holds copies"). */
  inUse?: string;
}

export function specDocuments<T extends StoredDocument>(scope: Scope, config: SpecDocumentsConfig<T>): SpecDocuments<T> {
  const { kind, noun } = config;
  // The three tables share their common columns; kysely cannot type a table chosen at run time.
  const db = (d: Kysely<any>) => d as Kysely<any>;
  const toObject = (row: Row) => config.map(row, {
    name: row.name,
    spec: fromJson<Record<string, unknown>>(row.spec) ?? {},
    labels: fromJson<Record<string, string>>(row.labels) ?? {},
    revision: row.revision,
    updated: row.updated,
    updatedBy: row.updated_by ?? undefined,
  });
  const find = (name: string) => guard(scope, `get ${noun} ${name}`, async () => {
    const row = await db(scope.db).selectFrom(config.table).selectAll().where('name', '=', name).executeTakeFirst();
    return row === undefined ? undefined : toObject(row as Row);
  });
  const notFound = (action: string, name: string) =>
    new CofferError('NOT_FOUND', `Cannot ${action} ${noun} ${name}: it does not exist`, { hint: `List the ${noun} names with coffer get ${kind}.` });

  return {
    async apply(doc, options = {}) {
      checkDocument(doc, kind);
      const name = doc.metadata.name;
      const extra = config.columns?.(doc) ?? {};
      return guard(scope, `apply ${kind} ${name}`, () => inTransaction(scope, async (trx) => {
        const result = await recordRevision(trx, scope, doc, options.by);
        if (!result.changed) return result;
        const row = {
          spec: toJsonRequired(doc.spec),
          labels: toJsonRequired(doc.metadata.labels ?? {}),
          revision: result.revision,
          updated: scope.now(),
          updated_by: options.by ?? null,
          ...extra,
        };
        await db(trx).insertInto(config.table).values({ name, ...row })
          .onConflict((oc) => oc.column('name').doUpdateSet(row)).execute();
        return result;
      }));
    },

    async get(name) {
      const found = await find(name);
      if (found === undefined) throw notFound('get', name);
      return found;
    },

    find,

    async list(options = {}) {
      const action = `list ${noun}s`;
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = db(scope.db).selectFrom(config.table).selectAll();
        if (options.cursor !== undefined) {
          const [after] = decodeCursor(options.cursor, config.table, ['string'], action) as [string];
          q = q.where('name', '>', after);
        }
        const rows = await q.orderBy('name').limit(limit + 1).execute();
        return toPage(rows as Row[], limit, config.table, (r) => [r.name], toObject);
      });
    },

    history: (name, options) => listRevisions(scope, kind, name, options),
    revision: (name, revision) => getRevision(scope, kind, name, revision),

    async remove(name, options = {}) {
      await guard(scope, `remove ${noun} ${name}`, () => inTransaction(scope, async (trx) => {
        const deleted = await db(trx).deleteFrom(config.table).where('name', '=', name).executeTakeFirst();
        if (deleted.numDeletedRows === 0n) throw notFound('remove', name);
        await recordRemoval(trx, scope, kind, name, options.by);
      }), { foreignKey: ['CONFLICT', config.inUse ?? 'other rows still refer to it'] });
    },
  };
}
