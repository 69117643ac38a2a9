// Turns what node:sqlite and pg throw into CofferErrors, so that callers of the catalog (the API,
// the scheduler, the CLI) see the same codes whichever backend runs: a unique key taken is
// CONFLICT (or ALREADY_EXISTS where the caller was creating), an unreachable PostgreSQL is
// STORAGE_UNAVAILABLE (transient: the server retries), a locked SQLite file is CONFLICT.

import { CofferError, type ErrorCode } from '../core/errors.ts';

export interface DbErrorOptions {
  /** Code and state for a unique-key violation (default CONFLICT, "a row with the same key exists"). */
  unique?: [ErrorCode, string];
  /** Code and state for a foreign-key violation (default CONFLICT). */
  foreignKey?: [ErrorCode, string];
  /** Where the catalog is, for messages about reaching it (no password). */
  where?: string;
}

const UNAVAILABLE_NET = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ENOENT']);

/** The CofferError for `e`, thrown while the catalog tried to `action` ("add image X"). */
export function dbError(e: unknown, action: string, options: DbErrorOptions = {}): CofferError {
  if (e instanceof CofferError) return e;
  const err = e as { code?: unknown; errcode?: unknown; message?: unknown; errors?: unknown[] };
  const message = typeof err?.message === 'string' ? err.message : String(e);
  const make = (code: ErrorCode, state: string, hint?: string) =>
    new CofferError(code, `Cannot ${action}: ${state}`, { cause: e, ...(hint === undefined ? {} : { hint }) });
  const where = options.where === undefined ? 'the catalog database' : `the catalog database at ${options.where}`;

  // kysely, after close(): a bug of the caller, said plainly.
  if (/driver has already been destroyed/i.test(message)) {
    return make('INTERNAL', 'the catalog is closed', 'This is a bug in Coffer: the catalog was used after close(). Report it with --debug output.');
  }

  // node:sqlite: extended result codes in `errcode`.
  if (err?.code === 'ERR_SQLITE_ERROR' && typeof err.errcode === 'number') {
    const primary = err.errcode & 0xff;
    if (err.errcode === 2067 || err.errcode === 1555) return unique(make, options);
    if (err.errcode === 787) return foreignKey(make, options);
    if (primary === 5 || primary === 6) {
      return make('CONFLICT', `${where} is locked by another process (${message})`, 'Wait for the other process, or stop it; only one Coffer server may use an SQLite catalog.');
    }
    if (primary === 13) return make('STORAGE_ERROR', `the disk holding ${where} is full`, 'Free space on that file system.');
    if (primary === 8) return make('STORAGE_DENIED', `${where} is read-only (${message})`, 'Check the permissions of the catalog file and its directory.');
    if (primary === 11 || primary === 26) {
      return make('CORRUPT', `${where} is damaged or not an SQLite database (${message})`, 'Restore the catalog from its last catalog backup, or rebuild it from the storage units.');
    }
    if (primary === 14 || primary === 10) {
      return make('STORAGE_ERROR', `${where} cannot be opened or read (${message})`, 'Check that its directory exists and is writable.');
    }
    return make('INTERNAL', `the database failed: ${message}`, 'This is a bug in Coffer. Run again with --debug and report the output.');
  }

  // pg: SQLSTATE codes (five characters) or Node's network error codes.
  const code = typeof err?.code === 'string' ? err.code : undefined;
  const netCode = code ?? (Array.isArray(err?.errors) ? (err.errors[0] as { code?: string } | undefined)?.code : undefined);
  if (code === '23505') return unique(make, options);
  if (code === '23503') return foreignKey(make, options);
  if (code === '40001' || code === '40P01' || code === '55P03') {
    return make('CONFLICT', `another transaction changed the same rows (${message})`, 'Try again.');
  }
  if ((netCode !== undefined && UNAVAILABLE_NET.has(netCode)) || (code !== undefined && /^(08|57P0|53)/.test(code)) ||
      /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message)) {
    return make('STORAGE_UNAVAILABLE', `${where} cannot be reached (${netCode ?? message})`,
      'Check that PostgreSQL is running and reachable at the --catalog URL; Coffer retries on its own.');
  }
  if (code === '28P01' || code === '28000') {
    return make('STORAGE_DENIED', `${where} refused the credentials (${message})`, 'Check the user and password in the --catalog URL.');
  }
  if (code === '3D000') return make('NOT_FOUND', `${where} does not exist (${message})`, 'Create the database (createdb) or correct the --catalog URL.');
  if (code === '53100') return make('STORAGE_ERROR', `the disk holding ${where} is full`, 'Free space on the PostgreSQL server.');
  if (code === '25006' || code === '42501') return make('STORAGE_DENIED', `${where} refused the write (${message})`, 'Check that the catalog user may write, and that the server is not a read-only replica.');
  return make('INTERNAL', `the database failed: ${message}`, 'This is a bug in Coffer. Run again with --debug and report the output.');
}

type Make = (code: ErrorCode, state: string, hint?: string) => CofferError;

function unique(make: Make, options: DbErrorOptions): CofferError {
  const [code, state] = options.unique ?? ['CONFLICT', 'a row with the same key exists'];
  return make(code, state, code === 'ALREADY_EXISTS' ? 'Choose another name, or change the existing one.' : 'Read it again and retry.');
}

function foreignKey(make: Make, options: DbErrorOptions): CofferError {
  const [code, state] = options.foreignKey ?? ['CONFLICT', 'it refers to a row that does not exist, or other rows refer to it'];
  return make(code, state);
}

/** `url` without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    // A password in the query string (libpq's ?password=) too.
    if (u.searchParams.has('password')) u.searchParams.set('password', '***');
    return u.toString();
  } catch {
    // Not a URL the WHATWG parser takes (a space in the password, ...): cut user:password@
    // by hand rather than show it.
    return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:]*):[^@]*@/i, '$1:***@').replace(/([?&]password=)[^&]*/gi, '$1***');
  }
}

/** Whether `e` came from node:sqlite or from pg (a server's error or a failed connection). */
export function isDatabaseError(e: unknown): boolean {
  if (e instanceof CofferError || typeof e !== 'object' || e === null) return false;
  const code = (e as { code?: unknown }).code;
  if (code === 'ERR_SQLITE_ERROR') return true;
  if ((e as { constructor?: { name?: string } }).constructor?.name === 'DatabaseError') return true;
  return typeof code === 'string' && UNAVAILABLE_NET.has(code);
}
