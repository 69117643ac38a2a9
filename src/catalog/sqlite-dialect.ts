// A kysely dialect over Node's own `node:sqlite`, so that the embedded catalog needs no native
// module of ours and nothing from npm beyond kysely.
//
// kysely's SqliteDialect is written for better-sqlite3: `prepare(sql)` returns a statement with a
// `reader` flag and `all/run/iterate(params)` taking the parameters as one array. node:sqlite's
// StatementSync takes them spread, and says whether it returns rows by `columns().length`. The
// adapter below bridges the two; the query compiler, adapter and introspector are kysely's own.
//
// Transactions begin with BEGIN IMMEDIATE rather than kysely's plain BEGIN: a deferred
// transaction that reads first and writes later cannot wait for another process's write lock
// (SQLite answers SQLITE_BUSY at once, whatever the busy timeout), and every catalog
// transaction writes. kysely serialises the one connection inside this process.

import { DatabaseSync } from 'node:sqlite';
import type { StatementSync } from 'node:sqlite';
import { CompiledQuery, SqliteDialect, SqliteDriver } from 'kysely';
import type { DatabaseConnection, Driver, SqliteDatabase, SqliteStatement } from 'kysely';

export interface NodeSqliteOptions {
  /** How long a write waits for another process's lock before failing, in ms (default 5000). */
  busyTimeoutMs?: number;
  /** Prepared statements kept for reuse (default 256). */
  statementCache?: number;
}

/** Opens `path` (or ':memory:') with the catalog's settings: WAL, durable commits, foreign keys. */
export function openNodeSqlite(path: string, options: NodeSqliteOptions = {}): NodeSqliteDatabase {
  const db = new DatabaseSync(path, { timeout: options.busyTimeoutMs ?? 5000, enableForeignKeyConstraints: true });
  try {
    // WAL lets readers in other processes (a backup of the catalog, `sqlite3`) run beside the
    // server; synchronous=FULL makes every commit durable before it returns, which WAL's usual
    // NORMAL does not (a power cut could lose the last commits: a finished job or a new image).
    db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = FULL');
    db.exec('PRAGMA foreign_keys = ON');
  } catch (e) {
    db.close();
    throw e;
  }
  return new NodeSqliteDatabase(db, options.statementCache ?? 256);
}

/** node:sqlite's DatabaseSync, shaped as the better-sqlite3 database kysely's driver calls. */
export class NodeSqliteDatabase implements SqliteDatabase {
  readonly db: DatabaseSync;
  // kysely prepares every query it runs; the same few hundred SQL texts come back all the time.
  private readonly cache = new Map<string, StatementSync>();
  private readonly cacheSize: number;

  constructor(db: DatabaseSync, cacheSize: number) {
    this.db = db;
    this.cacheSize = cacheSize;
  }

  prepare(sql: string): SqliteStatement {
    let statement = this.cache.get(sql);
    if (statement === undefined) {
      statement = this.db.prepare(sql);
      if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(sql, statement);
    }
    const db = this.db;
    const prepared = statement;
    return {
      reader: prepared.columns().length > 0,
      all: (parameters) => prepared.all(...bindable(parameters)),
      run: (parameters) => prepared.run(...bindable(parameters)),
      // A fresh statement, so that a cached one is never reset under an open iterator.
      iterate: (parameters) => db.prepare(sql).iterate(...bindable(parameters)),
    };
  }

  close(): void {
    this.cache.clear();
    if (this.db.isOpen) this.db.close();
  }
}

type Bindable = null | number | bigint | string | NodeJS.ArrayBufferView;

function bindable(parameters: ReadonlyArray<unknown>): Bindable[] {
  return parameters.map((p) => {
    if (p === undefined || p === null) return null;
    if (typeof p === 'boolean') return p ? 1 : 0;
    return p as Bindable;
  });
}

export interface NodeSqliteDialectConfig {
  database: NodeSqliteDatabase;
}

/** kysely's SQLite dialect over a NodeSqliteDatabase, with write-locking transactions. */
export class NodeSqliteDialect extends SqliteDialect {
  private readonly database: NodeSqliteDatabase;

  constructor(config: NodeSqliteDialectConfig) {
    super({ database: config.database });
    this.database = config.database;
  }

  override createDriver(): Driver {
    return new ImmediateSqliteDriver({ database: this.database });
  }
}

class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
}
