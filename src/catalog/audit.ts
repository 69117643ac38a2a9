// The audit log: every change, login, restore and denied attempt (docs/server.md, API). Rows
// are only ever appended; ids are monotonic (SQLite AUTOINCREMENT never reuses one, PostgreSQL
// bigserial), so "newest first" is "highest id first" and an id gap would be visible.

import { fromJson, toJson } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, type Scope } from './scope.ts';
import type { AuditTable } from './schema.ts';
import type { Selectable } from 'kysely';

export type AuditOutcome = 'ok' | 'denied' | 'failed';

export interface AuditEntry {
  id: number;
  time: number;
  /** Who: a user name, `token:<id>`, `scheduler`, `agent:<name>`. */
  actor: string;
  /** From where: the client's address. */
  source: string | undefined;
  /** What: `policy.apply`, `login`, `restore`, ... */
  action: string;
  /** On what: `Policy/nightly`, `job/<id>`, ... */
  target: string | undefined;
  outcome: AuditOutcome;
  details: Record<string, unknown> | undefined;
}

export type AuditInput = Omit<AuditEntry, 'id' | 'time' | 'source' | 'target' | 'details'> & {
  time?: number;
  source?: string;
  target?: string;
  details?: Record<string, unknown>;
};

export interface AuditFilter {
  actor?: string;
  action?: string;
  target?: string;
  outcome?: AuditOutcome;
  since?: number;
  until?: number;
}

export interface Audit {
  append(entry: AuditInput): Promise<AuditEntry>;
  /** Newest first. */
  list(options?: PageOptions & AuditFilter): Promise<Page<AuditEntry>>;
}

export function auditModule(scope: Scope): Audit {
  return {
    async append(entry) {
      const row = {
        time: entry.time ?? scope.now(), actor: entry.actor, source: entry.source ?? null, action: entry.action,
        target: entry.target ?? null, outcome: entry.outcome, details: toJson(entry.details),
      };
      const { id } = await guard(scope, `record ${entry.action} in the audit log`, () =>
        scope.db.insertInto('audit').values(row).returning('id').executeTakeFirstOrThrow());
      return toEntry({ id: Number(id), ...row });
    },

    async list(options = {}) {
      const action = 'list the audit log';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('audit').selectAll();
        if (options.actor !== undefined) q = q.where('actor', '=', options.actor);
        if (options.action !== undefined) q = q.where('action', '=', options.action);
        if (options.target !== undefined) q = q.where('target', '=', options.target);
        if (options.outcome !== undefined) q = q.where('outcome', '=', options.outcome);
        if (options.since !== undefined) q = q.where('time', '>=', options.since);
        if (options.until !== undefined) q = q.where('time', '<', options.until);
        if (options.cursor !== undefined) {
          const [id] = decodeCursor(options.cursor, 'audit', ['number'], action) as [number];
          q = q.where('id', '<', id);
        }
        const rows = await q.orderBy('id', 'desc').limit(limit + 1).execute();
        return toPage(rows, limit, 'audit', (r) => [Number(r.id)], toEntry);
      });
    },
  };
}

function toEntry(row: Selectable<AuditTable>): AuditEntry {
  return {
    id: Number(row.id),
    time: row.time,
    actor: row.actor,
    source: row.source ?? undefined,
    action: row.action,
    target: row.target ?? undefined,
    outcome: row.outcome as AuditOutcome,
    details: fromJson<Record<string, unknown>>(row.details),
  };
}
