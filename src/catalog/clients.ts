// Clients: the protected hosts. An agent registering creates or updates its client (upsert);
// a Client document (optional) sets its labels and limits and is kept in the history like any
// other document. `maxStreams` is what the job queue allows to run for one client at once.

import { CofferError } from '../core/errors.ts';
import { checkDocument, listRevisions, recordRemoval, recordRevision } from './documents.ts';
import type { ApplyOptions, ApplyResult, CatalogDocument, Revision } from './documents.ts';
import { fromJson, toJson, toJsonRequired } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, inTransaction, type Scope } from './scope.ts';
import type { ClientsTable } from './schema.ts';
import type { Selectable } from 'kysely';

export interface Client {
  name: string;
  platform: string | undefined;
  agentId: string | undefined;
  /** What the agent reported about its host (machine id, OS, addresses). */
  hostIdentity: Record<string, unknown> | undefined;
  labels: Record<string, string>;
  /** Jobs that may run for this client at once; undefined: the queue's default. */
  maxStreams: number | undefined;
  created: number;
  lastSeen: number | undefined;
  /** The revision of its Client document, if one was applied. */
  revision: number | undefined;
}

export interface ClientInput {
  name: string;
  platform?: string;
  agentId?: string;
  hostIdentity?: Record<string, unknown>;
  labels?: Record<string, string>;
  maxStreams?: number | null;
}

export interface Clients {
  /** Creates the client, or changes the fields given of an existing one. */
  upsert(client: ClientInput): Promise<Client>;
  /** NOT_FOUND if there is none. */
  get(name: string): Promise<Client>;
  find(name: string): Promise<Client | undefined>;
  /** Those of `names` that are registered (one query per 500 names, not one per name). */
  registered(names: readonly string[]): Promise<Set<string>>;
  /** By name. */
  list(options?: PageOptions): Promise<Page<Client>>;
  /** Records that the client's agent was heard from (now, or at `time`). */
  seen(name: string, time?: number): Promise<void>;
  /** A Client document: metadata.labels and spec.maxStreams; creates the client if unknown. */
  apply(doc: CatalogDocument, options?: ApplyOptions): Promise<ApplyResult>;
  history(name: string, options?: PageOptions): Promise<Page<Revision>>;
  /** CONFLICT while images of the client exist; its schedules go with it. */
  remove(name: string, options?: ApplyOptions): Promise<void>;
}

export function clientsModule(scope: Scope): Clients {
  const find = (name: string) => guard(scope, `get client ${name}`, async () => {
    const row = await scope.db.selectFrom('clients').selectAll().where('name', '=', name).executeTakeFirst();
    return row === undefined ? undefined : toClient(row);
  });
  const notFound = (action: string, name: string) =>
    new CofferError('NOT_FOUND', `Cannot ${action} client ${name}: it does not exist`, { hint: 'Clients are created when their agent registers; list them with coffer get clients.' });

  return {
    async upsert(client) {
      const action = `register client ${client.name}`;
      if (typeof client.name !== 'string' || client.name === '') throw new CofferError('USAGE', `Cannot ${action}: the name is empty`);
      checkStreams(client.maxStreams, action);
      const fields: Record<string, unknown> = {};
      if (client.platform !== undefined) fields.platform = client.platform;
      if (client.agentId !== undefined) fields.agent_id = client.agentId;
      if (client.hostIdentity !== undefined) fields.host_identity = toJson(client.hostIdentity);
      if (client.labels !== undefined) fields.labels = toJsonRequired(client.labels);
      if (client.maxStreams !== undefined) fields.max_streams = client.maxStreams;
      return guard(scope, action, () => inTransaction(scope, async (trx) => {
        await trx.insertInto('clients')
          .values({ name: client.name, labels: '{}', created: scope.now(), ...fields })
          .onConflict((oc) => Object.keys(fields).length === 0 ? oc.column('name').doNothing() : oc.column('name').doUpdateSet(fields))
          .execute();
        return toClient(await trx.selectFrom('clients').selectAll().where('name', '=', client.name).executeTakeFirstOrThrow());
      }));
    },

    async get(name) {
      const found = await find(name);
      if (found === undefined) throw notFound('get', name);
      return found;
    },

    find,

    async registered(names) {
      return guard(scope, `look up ${names.length} clients`, async () => {
        const found = new Set<string>();
        const unique = [...new Set(names)];
        for (let i = 0; i < unique.length; i += 500) {
          const rows = await scope.db.selectFrom('clients').select('name').where('name', 'in', unique.slice(i, i + 500)).execute();
          for (const r of rows) found.add(r.name);
        }
        return found;
      });
    },

    async list(options = {}) {
      const action = 'list clients';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('clients').selectAll();
        if (options.cursor !== undefined) {
          const [after] = decodeCursor(options.cursor, 'clients', ['string'], action) as [string];
          q = q.where('name', '>', after);
        }
        const rows = await q.orderBy('name').limit(limit + 1).execute();
        return toPage(rows, limit, 'clients', (r) => [r.name], toClient);
      });
    },

    async seen(name, time) {
      const result = await guard(scope, `record that client ${name} was seen`, () =>
        scope.db.updateTable('clients').set({ last_seen: time ?? scope.now() }).where('name', '=', name).executeTakeFirst());
      if (result.numUpdatedRows === 0n) throw notFound('record the last contact of', name);
    },

    async apply(doc, options = {}) {
      checkDocument(doc, 'Client');
      const name = doc.metadata.name;
      const maxStreams = (doc.spec as { maxStreams?: unknown }).maxStreams;
      if (maxStreams !== undefined && (!Number.isInteger(maxStreams) || (maxStreams as number) < 1)) {
        throw new CofferError('INVALID_CONFIG', `Cannot apply Client ${name}: spec.maxStreams is not a positive integer`);
      }
      return guard(scope, `apply Client ${name}`, () => inTransaction(scope, async (trx) => {
        const result = await recordRevision(trx, scope, doc, options.by);
        if (!result.changed) return result;
        const fields = { labels: toJsonRequired(doc.metadata.labels ?? {}), max_streams: (maxStreams as number | undefined) ?? null, revision: result.revision };
        await trx.insertInto('clients').values({ name, created: scope.now(), ...fields })
          .onConflict((oc) => oc.column('name').doUpdateSet(fields)).execute();
        return result;
      }));
    },

    history: (name, options) => listRevisions(scope, 'Client', name, options),

    async remove(name, options = {}) {
      await guard(scope, `remove client ${name}`, () => inTransaction(scope, async (trx) => {
        const deleted = await trx.deleteFrom('clients').where('name', '=', name).executeTakeFirst();
        if (deleted.numDeletedRows === 0n) throw notFound('remove', name);
        const applied = await trx.selectFrom('policy_revisions').select('revision').where('kind', '=', 'Client').where('name', '=', name).executeTakeFirst();
        if (applied !== undefined) await recordRemoval(trx, scope, 'Client', name, options.by);
      }), { foreignKey: ['CONFLICT', 'the catalog still has images of it (expire them first)'] });
    },
  };
}

function checkStreams(maxStreams: number | null | undefined, action: string): void {
  if (maxStreams !== undefined && maxStreams !== null && (!Number.isInteger(maxStreams) || maxStreams < 1)) {
    throw new CofferError('USAGE', `Cannot ${action}: maxStreams ${maxStreams} is not a positive integer`);
  }
}

function toClient(row: Selectable<ClientsTable>): Client {
  return {
    name: row.name,
    platform: row.platform ?? undefined,
    agentId: row.agent_id ?? undefined,
    hostIdentity: fromJson<Record<string, unknown>>(row.host_identity),
    labels: fromJson<Record<string, string>>(row.labels) ?? {},
    maxStreams: row.max_streams ?? undefined,
    created: row.created,
    lastSeen: row.last_seen ?? undefined,
    revision: row.revision ?? undefined,
  };
}
