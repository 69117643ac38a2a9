// What every query module of the catalog is built over: the database (the whole of it, or the
// transaction the caller is in), the backend, the clock and retry settings. Catalog.transaction()
// builds the same modules over a transaction, so a module never needs to know which it has.

import type { Kysely } from 'kysely';
import { dbError, type DbErrorOptions } from './db-error.ts';
import type { CatalogDialect } from './migrations/migration.ts';
import type { Database } from './schema.ts';

export interface Scope {
  db: Kysely<Database>;
  dialect: CatalogDialect;
  /** The server's clock, ms since the epoch (a fake clock in tests). */
  now(): number;
  /** Where the catalog is, for messages (no password). */
  where: string;
  /** Backoff of failed jobs queued again: base * 2^(attempt-1), at most max. */
  retry: { baseMs: number; maxMs: number };
}

/** Runs `fn` in a transaction: the caller's if there is one, else a new one. */
export async function inTransaction<T>(scope: Scope, fn: (db: Kysely<Database>) => Promise<T>): Promise<T> {
  if (scope.db.isTransaction) return fn(scope.db);
  return scope.db.transaction().execute(fn);
}

/** Runs `fn`, turning database errors into CofferErrors that say what could not be done. */
export async function guard<T>(scope: Scope, action: string, fn: () => Promise<T>, options: DbErrorOptions = {}): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw dbError(e, action, { where: scope.where, ...options });
  }
}
