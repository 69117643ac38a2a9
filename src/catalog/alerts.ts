// Alerts: what the server found that a person should know of, kept until it is settled. A verify
// job that finds damage raises one naming the storage unit, the images and the files affected;
// the repair job resolves it when the copy is whole again (or says in it why it could not). A
// person may acknowledge an alert ("seen, I am on it"); resolving is for what fixed the cause.
// States: open → acknowledged → resolved (open → resolved directly too). Never deleted.

import type { Selectable } from 'kysely';
import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { fromJson, toJson, toJsonRequired } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, type Scope } from './scope.ts';
import type { AlertsTable } from './schema.ts';

export const ALERT_STATES = ['open', 'acknowledged', 'resolved'] as const;
export type AlertState = (typeof ALERT_STATES)[number];
export type AlertSeverity = 'error' | 'warning';

export interface Alert {
  id: string;
  time: number;
  updated: number;
  /** What it is about: `damage` (a verify found damaged data). */
  kind: string;
  severity: AlertSeverity;
  state: AlertState;
  storageUnit: string | undefined;
  /** The images it concerns. */
  images: string[];
  message: string;
  /** What to do. */
  hint: string | undefined;
  /** Kind-specific: for damage, the packs, the copies and the affected files. */
  details: Record<string, unknown> | undefined;
  /** When and by whom it was acknowledged or resolved, and how it was resolved. */
  resolved: number | undefined;
  resolvedBy: string | undefined;
  resolution: string | undefined;
}

export interface AlertInput {
  kind: string;
  severity: AlertSeverity;
  storageUnit?: string;
  images?: string[];
  message: string;
  hint?: string;
  details?: Record<string, unknown>;
}

export interface AlertChange {
  message?: string;
  hint?: string | null;
  details?: Record<string, unknown>;
  images?: string[];
}

export interface AlertFilter {
  state?: AlertState | AlertState[];
  storageUnit?: string;
  kind?: string;
}

export interface Alerts {
  add(alert: AlertInput): Promise<Alert>;
  get(id: string): Promise<Alert>;
  /** Newest first. */
  list(options?: PageOptions & AlertFilter): Promise<Page<Alert>>;
  /** Changes what an alert says (a repair that could not finish says why). NOT_FOUND if it does not exist. */
  update(id: string, change: AlertChange): Promise<Alert>;
  /** Marks it seen by `by`; CONFLICT when it is resolved already. */
  acknowledge(id: string, by: string): Promise<Alert>;
  /** Marks it settled by `by`, saying how; a resolved alert stays as it was resolved. */
  resolve(id: string, by: string, resolution: string): Promise<Alert>;
}

export function alertsModule(scope: Scope): Alerts {
  const get = async (id: string): Promise<Alert> => {
    const row = await guard(scope, `get alert ${id}`, () => scope.db.selectFrom('alerts').selectAll().where('id', '=', id).executeTakeFirst());
    if (row === undefined) throw new CofferError('NOT_FOUND', `Cannot find alert ${id}: it does not exist`, { hint: 'List the alerts with `coffer alerts --all`.' });
    return toAlert(row);
  };

  const api: Alerts = {
    async add(alert) {
      const now = scope.now();
      const row = {
        id: ulid(now), time: now, updated: now, kind: alert.kind, severity: alert.severity, state: 'open',
        storage_unit: alert.storageUnit ?? null, images: toJsonRequired(alert.images ?? []), message: alert.message,
        hint: alert.hint ?? null, details: toJson(alert.details), resolved: null, resolved_by: null, resolution: null,
      };
      await guard(scope, `raise a ${alert.kind} alert`, () => scope.db.insertInto('alerts').values(row).execute());
      return toAlert(row);
    },

    get,

    async list(options = {}) {
      const action = 'list alerts';
      const limit = pageLimit(options.limit, action);
      const states = options.state === undefined ? undefined : Array.isArray(options.state) ? options.state : [options.state];
      for (const s of states ?? []) {
        if (!ALERT_STATES.includes(s)) throw new CofferError('USAGE', `Cannot ${action}: the state ${s} is not one of ${ALERT_STATES.join(', ')}`);
      }
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('alerts').selectAll();
        if (states !== undefined) q = q.where('state', 'in', states);
        if (options.storageUnit !== undefined) q = q.where('storage_unit', '=', options.storageUnit);
        if (options.kind !== undefined) q = q.where('kind', '=', options.kind);
        if (options.cursor !== undefined) {
          const [id] = decodeCursor(options.cursor, 'alerts', ['string'], action) as [string];
          q = q.where('id', '<', id);
        }
        const rows = await q.orderBy('id', 'desc').limit(limit + 1).execute();
        return toPage(rows, limit, 'alerts', (r) => [r.id], toAlert);
      });
    },

    async update(id, change) {
      const set: Record<string, unknown> = { updated: scope.now() };
      if (change.message !== undefined) set.message = change.message;
      if (change.hint !== undefined) set.hint = change.hint;
      if (change.details !== undefined) set.details = toJson(change.details);
      if (change.images !== undefined) set.images = toJsonRequired(change.images);
      const r = await guard(scope, `change alert ${id}`, () => scope.db.updateTable('alerts').set(set).where('id', '=', id).executeTakeFirst());
      if (r.numUpdatedRows === 0n) throw new CofferError('NOT_FOUND', `Cannot change alert ${id}: it does not exist`);
      return get(id);
    },

    async acknowledge(id, by) {
      const alert = await get(id);
      if (alert.state === 'resolved') {
        throw new CofferError('CONFLICT', `Cannot acknowledge alert ${id}: it was resolved${alert.resolvedBy ? ` by ${alert.resolvedBy}` : ''} (${alert.resolution ?? 'no note'})`, { hint: 'Nothing is left to do for it.' });
      }
      if (alert.state === 'acknowledged') return alert;
      const now = scope.now();
      await guard(scope, `acknowledge alert ${id}`, () => scope.db.updateTable('alerts')
        .set({ state: 'acknowledged', updated: now, resolved: now, resolved_by: by })
        .where('id', '=', id).where('state', '=', 'open').execute());
      return get(id);
    },

    async resolve(id, by, resolution) {
      const now = scope.now();
      await guard(scope, `resolve alert ${id}`, () => scope.db.updateTable('alerts')
        .set({ state: 'resolved', updated: now, resolved: now, resolved_by: by, resolution })
        .where('id', '=', id).where('state', '!=', 'resolved').execute());
      return get(id);
    },
  };
  return api;
}

function toAlert(row: Selectable<AlertsTable>): Alert {
  return {
    id: row.id,
    time: Number(row.time),
    updated: Number(row.updated),
    kind: row.kind,
    severity: row.severity as AlertSeverity,
    state: row.state as AlertState,
    storageUnit: row.storage_unit ?? undefined,
    images: fromJson<string[]>(row.images) ?? [],
    message: row.message,
    hint: row.hint ?? undefined,
    details: fromJson<Record<string, unknown>>(row.details),
    resolved: row.resolved === null ? undefined : Number(row.resolved),
    resolvedBy: row.resolved_by ?? undefined,
    resolution: row.resolution ?? undefined,
  };
}
