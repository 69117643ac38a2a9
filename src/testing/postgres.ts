// A real PostgreSQL server for tests: Debian's binaries (`/usr/lib/postgresql/<version>/bin`, or
// initdb and pg_ctl on PATH), a fresh cluster in a temporary directory (initdb), started by
// pg_ctl on a free loopback port with its unix socket in that directory, trust authentication
// for one user, and durability switched off (fsync, full page writes): the data is thrown away.
//
// PostgreSQL refuses to run as root, and the tests and CI run as root: then initdb and pg_ctl
// run as the `postgres` user the Debian package creates (runuser), in a directory it owns.
// Missing binaries are an error that says what to install, never a skip: a catalog suite that
// silently ran on SQLite alone would hide every PostgreSQL bug.

import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chown, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './ports.ts';

const run = promisify(execFile);
const USER = 'coffer';

export interface PostgresServer {
  /** URL of the database made at start (`coffer_test`). */
  url: string;
  port: number;
  /** Makes another empty database and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /**
   * Makes an empty schema in the `coffer_test` database and returns a URL whose connections use
   * it (search_path): much faster than a database (CREATE DATABASE copies a template, one at a
   * time), for suites that want an empty catalog per case.
   */
  createSchema(name: string): Promise<string>;
  /** Stops the server and removes its directory. */
  stop(): Promise<void>;
}

export async function startPostgres(): Promise<PostgresServer> {
  const bin = findBinaries();
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? postgresUser() : undefined;
  const dir = await mkdtemp(join(tmpdir(), 'coffer-pg-'));
  if (owner !== undefined) await chown(dir, owner.uid, owner.gid);
  const data = join(dir, 'data');
  const log = join(dir, 'server.log');
  // As root, through runuser as postgres; always from the server's own directory, which the
  // postgres user can enter (the checkout may not be).
  const command = (tool: string, args: string[]) => {
    const file = join(bin, tool);
    return owner === undefined ? [file, args] as const : ['runuser', ['-u', 'postgres', '--', file, ...args]] as const;
  };
  const exec = async (tool: string, args: string[]) => {
    const [file, argv] = command(tool, args);
    await run(file, argv, { cwd: dir, timeout: 120_000 });
  };
  const stopSync = () => {
    const [file, argv] = command('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']);
    try {
      execFileSync(file, argv, { cwd: dir, stdio: 'ignore', timeout: 30_000 });
    } catch {
      // Not running.
    }
  };
  // A test process that ends without stop() (a crash, an assertion in a hook) must not leave a
  // server behind: pg_ctl detaches it from us.
  const onExit = () => {
    stopSync();
    execFileSync('rm', ['-rf', dir]);
  };

  try {
    await exec('initdb', ['-D', data, '-U', USER, '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync']);
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(`Cannot start PostgreSQL for the tests: initdb failed: ${(e as Error).message}`, { cause: e });
  }
  process.on('exit', onExit);
  let port = 0;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    const settings = [
      `-p ${port}`, `-k ${dir}`, '-c listen_addresses=127.0.0.1',
      '-c fsync=off', '-c synchronous_commit=off', '-c full_page_writes=off', '-c max_connections=100',
    ].join(' ');
    try {
      await exec('pg_ctl', ['-D', data, '-l', log, '-w', '-t', '60', '-o', settings, 'start']);
      break;
    } catch (e) {
      // Another process may have taken the port between freePort() and the start.
      stopSync();
      if (attempt >= 3) {
        const tail = await readFile(log, 'utf8').catch(() => '');
        process.off('exit', onExit);
        await rm(dir, { recursive: true, force: true });
        throw new Error(`Cannot start PostgreSQL for the tests: pg_ctl start failed: ${(e as Error).message}\n${tail.slice(-2000)}`, { cause: e });
      }
    }
  }

  const base = `postgres://${USER}@127.0.0.1:${port}`;
  const createDatabase = async (name: string) => {
    if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`Cannot create database ${name}: use lower-case letters, digits and _`);
    const client = new pg.Client({ connectionString: `${base}/postgres` });
    await client.connect();
    try {
      await client.query(`CREATE DATABASE ${name}`);
    } finally {
      await client.end();
    }
    return `${base}/${name}`;
  };
  const checkName = (name: string) => {
    if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`Cannot create ${name}: use lower-case letters, digits and _`);
  };
  let admin: pg.Client | undefined;
  const createSchema = async (name: string) => {
    checkName(name);
    if (admin === undefined) {
      admin = new pg.Client({ connectionString: `${base}/coffer_test` });
      await admin.connect();
    }
    await admin.query(`CREATE SCHEMA ${name}`);
    return `${base}/coffer_test?options=${encodeURIComponent(`-c search_path=${name}`)}`;
  };
  let stopped: Promise<void> | undefined;
  try {
    return {
      url: await createDatabase('coffer_test'),
      port,
      createDatabase,
      createSchema,
      stop: () => (stopped ??= (async () => {
        process.off('exit', onExit);
        await admin?.end().catch(() => {});
        const [file, argv] = command('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']);
        await run(file, argv, { cwd: dir, timeout: 60_000 }).catch(() => {});
        await rm(dir, { recursive: true, force: true });
      })()),
    };
  } catch (e) {
    onExit();
    process.off('exit', onExit);
    throw e;
  }
}

/** The directory holding initdb and pg_ctl: the newest Debian version, else PATH. */
export function findBinaries(): string {
  const debian = '/usr/lib/postgresql';
  const versions = existsSync(debian)
    ? readdirSync(debian).filter((v) => existsSync(join(debian, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length > 0) return join(debian, versions[0]!, 'bin');
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl'))) return dir;
  }
  throw new Error(
    'Cannot start PostgreSQL for the tests: initdb and pg_ctl are not installed (looked in /usr/lib/postgresql/*/bin and on PATH). ' +
    'Install the postgresql package: apt-get install -y postgresql (.ci/run does this).',
  );
}

function postgresUser(): { uid: number; gid: number } {
  try {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    return { uid, gid };
  } catch (e) {
    throw new Error(
      'Cannot start PostgreSQL for the tests as root: there is no postgres user to run it as (PostgreSQL refuses to run as root). ' +
      'Install the postgresql package, which creates it: apt-get install -y postgresql.',
      { cause: e },
    );
  }
}

