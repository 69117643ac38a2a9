// The catalog: what the server knows (clients, storage units, policies and their history,
// schedules, images and copies, jobs, users, tokens, the audit log, settings), in SQLite by
// default or in PostgreSQL for scale-out, through one set of typed query modules.
//
//   const catalog = await openCatalog('/var/lib/coffer/catalog.db');        // or sqlite:///...
//   const catalog = await openCatalog('postgres://coffer@db1/coffer');
//   await catalog.transaction(async (tx) => { await tx.images.add(...); await tx.copies.add(...); });
//
// Opening migrates the schema (migrate.ts). Inside transaction(fn), use the `tx` given to fn:
// SQLite has one connection, so a call on the outer catalog would wait for the transaction that
// waits for it. One process per SQLite catalog: its calls are synchronous, so a second process
// waiting for the write lock blocks its event loop (up to busyTimeoutMs).

import { closeSync, openSync } from 'node:fs';
import { Kysely, PostgresDialect } from 'kysely';
import type { KyselyConfig } from 'kysely';
import { CofferError } from '../core/errors.ts';
import { alertsModule, type Alerts } from './alerts.ts';
import { auditModule, type Audit } from './audit.ts';
import { clientsModule, type Clients } from './clients.ts';
import { complianceModule, type Compliance } from './compliance.ts';
import { copiesModule, type Copies } from './copies.ts';
import { dbError, isDatabaseError, redactUrl } from './db-error.ts';
import { imagesModule, type Images } from './images.ts';
import { jobsModule, type Jobs } from './jobs.ts';
import { lifecycleScanModule, type LifecycleScan } from './lifecycle-scan.ts';
import { migrate } from './migrate.ts';
import { pkiModule, type Pki } from './pki.ts';
import type { CatalogDialect, Migration } from './migrations/migration.ts';
import type { Database } from './schema.ts';
import type { Scope } from './scope.ts';
import { schedulesModule, type Schedules } from './schedules.ts';
import { settingsModule, type Settings } from './settings.ts';
import { specDocuments, type SpecDocuments, type StoredDocument } from './spec-documents.ts';
import { NodeSqliteDialect, openNodeSqlite } from './sqlite-dialect.ts';
import { storageUnitsModule, type StorageUnits } from './storage-units.ts';
import { tokensModule, type Tokens } from './tokens.ts';
import { usersModule, type Users } from './users.ts';

export type Policy = StoredDocument;
export type Lifecycle = StoredDocument;

/** The query modules, over the whole catalog or over one transaction. */
export interface CatalogQueries {
  clients: Clients;
  storageUnits: StorageUnits;
  lifecycles: SpecDocuments<Lifecycle>;
  policies: SpecDocuments<Policy>;
  schedules: Schedules;
  images: Images;
  copies: Copies;
  jobs: Jobs;
  users: Users;
  tokens: Tokens;
  audit: Audit;
  settings: Settings;
  alerts: Alerts;
  /** The lifecycle pass's view: images with lifecycle work due (lifecycle-scan.ts). */
  lifecycleScan: LifecycleScan;
  /** Aggregates for the compliance report. */
  compliance: Compliance;
  /** The certificate authority's enrollment tokens and issued certificates (pki.ts). */
  pki: Pki;
  /**
   * Runs `fn` in one transaction: everything it does through `tx` is committed together, or
   * nothing is if it throws (the error is passed on). Inside a transaction, runs in that one.
   */
  transaction<T>(fn: (tx: CatalogQueries) => Promise<T>): Promise<T>;
}

export interface Catalog extends CatalogQueries {
  readonly dialect: CatalogDialect;
  /** The schema version, and the version the catalog had before this open migrated it. */
  readonly version: number;
  readonly migratedFrom: number;
  /** Where it is, without any password. */
  readonly where: string;
  close(): Promise<void>;
}

export interface OpenCatalogOptions {
  /** The server's clock (default Date.now); a fake clock in tests. */
  now?: () => number;
  /** SQLite: how long to wait for another process's write lock (default 5000 ms). */
  busyTimeoutMs?: number;
  /** PostgreSQL: connections in the pool (default 10). */
  poolSize?: number;
  /** PostgreSQL: how long to wait for a connection (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Backoff of failed jobs queued again: base * 2^(attempt-1), at most max (default 1 min, 1 h). */
  retry?: { baseMs?: number; maxMs?: number };
  /** Called after every query with its SQL, parameters and duration (--debug logs, query-plan tests). */
  onQuery?: (query: CatalogQuery) => void;
  /** The migrations to apply (default: all of src/catalog/migrations). For tests of migrating. */
  migrations?: readonly Migration[];
}

/**
 * Opens (creating and migrating as needed) the catalog at `url`: `postgres://...` (or
 * `postgresql://`) for PostgreSQL, `sqlite:///path`, `sqlite:path` or a plain path for SQLite.
 */
export async function openCatalog(url: string, options: OpenCatalogOptions = {}): Promise<Catalog> {
  const target = parseCatalogUrl(url);
  const where = target.dialect === 'postgres' ? redactUrl(url) : target.path;
  const db = target.dialect === 'postgres'
    ? await postgresKysely(url, options)
    : sqliteKysely(target.path, options, where);
  const now = options.now ?? Date.now;
  let migrated;
  try {
    migrated = await migrate(db, target.dialect, now, where, options.migrations);
  } catch (e) {
    await db.destroy().catch(() => {});
    throw dbError(e, `open the catalog at ${where}`, { where });
  }
  const scope: Scope = {
    db,
    dialect: target.dialect,
    now,
    where,
    retry: { baseMs: options.retry?.baseMs ?? 60_000, maxMs: options.retry?.maxMs ?? 3_600_000 },
  };
  let closed: Promise<void> | undefined;
  return {
    ...queries(scope),
    dialect: target.dialect,
    version: migrated.to,
    migratedFrom: migrated.from,
    where,
    close: () => (closed ??= db.destroy()),
  };
}

export interface CatalogQuery {
  sql: string;
  parameters: readonly unknown[];
  durationMs: number;
}

/** kysely's log hook, forwarding successful queries to options.onQuery. */
function queryLog(options: OpenCatalogOptions): KyselyConfig['log'] {
  const onQuery = options.onQuery;
  if (onQuery === undefined) return undefined;
  return (event) => {
    if (event.level === 'query') onQuery({ sql: event.query.sql, parameters: event.query.parameters, durationMs: event.queryDurationMillis });
  };
}

export type CatalogTarget = { dialect: 'postgres'; url: string } | { dialect: 'sqlite'; path: string };

/** What a --catalog value names; UNSUPPORTED for another scheme. */
export function parseCatalogUrl(url: string): CatalogTarget {
  if (/^postgres(ql)?:\/\//i.test(url)) return { dialect: 'postgres', url };
  if (/^sqlite:/i.test(url)) {
    const rest = url.slice('sqlite:'.length);
    const path = rest.startsWith('//') ? rest.slice(2) : rest;
    if (path === '') throw new CofferError('USAGE', `Cannot open the catalog ${url}: it names no file`, { hint: 'Use sqlite:///absolute/path/catalog.db or a plain path.' });
    return { dialect: 'sqlite', path };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new CofferError('UNSUPPORTED', `Cannot open the catalog ${redactUrl(url)}: only SQLite (a path or sqlite:///path) and PostgreSQL (postgres://) are supported`, {
      hint: 'Use --catalog postgres://user@host/database, or a file path for SQLite.',
    });
  }
  if (url === '') throw new CofferError('USAGE', 'Cannot open the catalog: no path or URL given');
  return { dialect: 'sqlite', path: url };
}

function queries(scope: Scope): CatalogQueries {
  return {
    clients: clientsModule(scope),
    storageUnits: storageUnitsModule(scope),
    lifecycles: specDocuments<Lifecycle>(scope, {
      kind: 'Lifecycle', noun: 'lifecycle', table: 'lifecycles', map: (_row, base) => base,
    }),
    policies: specDocuments<Policy>(scope, {
      kind: 'Policy', noun: 'policy', table: 'policies', map: (_row, base) => base,
    }),
    schedules: schedulesModule(scope),
    images: imagesModule(scope),
    copies: copiesModule(scope),
    jobs: jobsModule(scope),
    users: usersModule(scope),
    tokens: tokensModule(scope),
    audit: auditModule(scope),
    settings: settingsModule(scope),
    alerts: alertsModule(scope),
    lifecycleScan: lifecycleScanModule(scope),
    compliance: complianceModule(scope),
    pki: pkiModule(scope),
    async transaction(fn) {
      if (scope.db.isTransaction) return fn(queries(scope));
      try {
        return await scope.db.transaction().execute((trx) => fn(queries({ ...scope, db: trx })));
      } catch (e) {
        // Errors of fn pass unchanged; those of BEGIN or COMMIT are the database's.
        throw isDatabaseError(e) ? dbError(e, 'complete a catalog transaction', { where: scope.where }) : e;
      }
    },
  };
}

function sqliteKysely(path: string, options: OpenCatalogOptions, where: string): Kysely<Database> {
  if (path !== ':memory:') {
    // The catalog holds password and token hashes: readable by its owner only (SQLite gives
    // the -wal and -shm files the mode of the database file).
    try {
      closeSync(openSync(path, 'a', 0o600));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        throw new CofferError('NOT_FOUND', `Cannot open the catalog at ${where}: its directory does not exist`, { cause: e, hint: 'Create the directory, or give another --catalog path.' });
      }
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
        throw new CofferError('STORAGE_DENIED', `Cannot open the catalog at ${where}: permission denied (${code})`, { cause: e, hint: 'Run as the user that owns the catalog, or give another --catalog path.' });
      }
      throw new CofferError('STORAGE_ERROR', `Cannot open the catalog at ${where}: ${(e as Error).message}`, { cause: e });
    }
  }
  let database;
  try {
    database = openNodeSqlite(path, { busyTimeoutMs: options.busyTimeoutMs });
  } catch (e) {
    throw dbError(e, `open the catalog at ${where}`, { where });
  }
  return new Kysely<Database>({ dialect: new NodeSqliteDialect({ database }), log: queryLog(options) });
}

async function postgresKysely(url: string, options: OpenCatalogOptions): Promise<Kysely<Database>> {
  // Loaded only for PostgreSQL catalogs: the embedded SQLite server does not need it.
  const { default: pg } = await import('pg');
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolSize ?? 10,
    connectionTimeoutMillis: options.connectTimeoutMs ?? 10_000,
    types: {
      getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
        // int8 (times in ms, counts, audit ids) as numbers: all fit in 2^53. json and jsonb as
        // their text, which json.ts parses for both backends alike.
        if (oid === pg.types.builtins.INT8) return (value: string) => Number(value);
        if (oid === pg.types.builtins.JSON || oid === pg.types.builtins.JSONB) return (value: string) => value;
        return pg.types.getTypeParser(oid, format ?? 'text');
      }) as typeof pg.types.getTypeParser,
    },
  });
  // A connection that breaks while idle in the pool emits 'error' on the pool; unhandled, that
  // would end the process. The next query reconnects or fails with STORAGE_UNAVAILABLE.
  pool.on('error', () => {});
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }), log: queryLog(options) });
}
