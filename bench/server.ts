// `coffer server` at scale (issue #9, "Measure"): a real server (startServer, the embedded agent
// as its child process) on a catalog of 10,000 clients, 30,000 schedules, 1,000,000 images and
// 2,000,000 jobs, on an SQLite file or a real PostgreSQL (src/testing/postgres.ts: fsync off).
//
//   npx node bench/server.ts --catalog sqlite|postgres [--scale 1] [--sections 1,2,3,4] [--md FILE] [--backup-mb N]
//
// Sections (each prints a markdown table; --md also writes them to FILE):
//   1. Filling the catalog (bulk inserts: images.addMany, batched INSERTs of jobs through kysely),
//      the server's start on it, and the scheduler's ticks at that scale (CatalogScheduleStore).
//   2. API latency under 50 concurrent keep-alive clients (a closed loop in a child process):
//      GET /api/v1/images?client=X, /api/v1/jobs?state=running, /api/v1/images/:id/browse; the
//      server's and the agent's CPU time and memory.
//   3. Browsing an image of 1,000,000 files (1000 dirs x 1000 files, backed up through the
//      server): time from the backup's end to the first listing, and every directory's listing.
//   4. API latency (GET /api/v1/jobs?limit=20 at 20 requests/s) while four backups run at once.
// --scale multiplies every count (0.01: a smoke run in well under a minute). The load generator
// is this script started again with --loadgen, so its CPU and memory are not the server's.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Kysely, PostgresDialect, sql } from 'kysely';
import { pino } from 'pino';
import { openCatalog, type Catalog } from '../src/catalog/catalog.ts';
import type { Database, JobsTable } from '../src/catalog/schema.ts';
import type { Insertable } from 'kysely';
import { NodeSqliteDialect, openNodeSqlite } from '../src/catalog/sqlite-dialect.ts';
import { ulid } from '../src/core/ulid.ts';
import type { PolicyDocument } from '../src/policy/index.ts';
import { SchedulerLoop } from '../src/scheduler/loop.ts';
import { CatalogScheduleStore, syncPolicySchedules } from '../src/server/schedule-store.ts';
import { startServer, type RunningServer } from '../src/server/server.ts';
import { FakeClock } from '../src/testing/fake-clock.ts';
import { startPostgres, type PostgresServer } from '../src/testing/postgres.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
type Json = Record<string, any>;

// ---- the load generator (child process) ---------------------------------------------------------

interface LoadConfig {
  url: string;
  token: string;
  /** Request paths, taken in turn. */
  paths: string[];
  /** closed: `concurrency` loops, `count` requests in all; rate: one request every 1000/rate ms until told to stop. */
  mode: 'closed' | 'rate';
  concurrency?: number;
  count?: number;
  rate?: number;
}

interface Sample { at: number; ms: number; status: number }

async function loadgen(config: LoadConfig): Promise<{ samples: Sample[]; wallMs: number; cpuMs: number }> {
  const cpu0 = process.cpuUsage();
  const samples: Sample[] = [];
  const headers = { authorization: `Bearer ${config.token}` };
  let next = 0;
  const one = async (path: string) => {
    const at = Date.now();
    const t0 = performance.now();
    let status = 0;
    try {
      const res = await fetch(config.url + path, { headers });
      await res.arrayBuffer();
      status = res.status;
    } catch {
      status = -1;
    }
    samples.push({ at, ms: performance.now() - t0, status });
  };
  const t0 = performance.now();
  if (config.mode === 'closed') {
    const count = config.count!;
    await Promise.all(Array.from({ length: config.concurrency! }, async () => {
      for (let i = next++; i < count; i = next++) await one(config.paths[i % config.paths.length]!);
    }));
  } else {
    let stop = false;
    process.once('message', () => { stop = true; });
    const inflight = new Set<Promise<void>>();
    const period = 1000 / config.rate!;
    for (let i = 0; !stop; i++) {
      const p = one(config.paths[i % config.paths.length]!).finally(() => inflight.delete(p));
      inflight.add(p);
      const due = t0 + (i + 1) * period;
      await new Promise((r) => setTimeout(r, Math.max(0, due - performance.now())));
    }
    await Promise.all(inflight);
  }
  const c = process.cpuUsage(cpu0);
  return { samples, wallMs: performance.now() - t0, cpuMs: (c.user + c.system) / 1000 };
}


/** Starts the load generator; `done` resolves with its samples (rate mode: after stop()). */
function startLoad(config: LoadConfig): { done: Promise<{ samples: Sample[]; wallMs: number; cpuMs: number }>; stop(): void } {
  const child: ChildProcess = spawn(process.execPath, [import.meta.filename, '--loadgen'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const done = new Promise<{ samples: Sample[]; wallMs: number; cpuMs: number }>((resolveDone, reject) => {
    child.once('message', (m) => resolveDone(m as { samples: Sample[]; wallMs: number; cpuMs: number }));
    child.once('exit', (code) => reject(new Error(`the load generator exited with ${code}`)));
  });
  child.send(config);
  return { done, stop: () => child.send('stop') };
}

// ---- measuring ----------------------------------------------------------------------------------

function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '-');
const f0 = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(0);

/** VmRSS and VmHWM of a process, in bytes. */
function procMemory(pid: number | 'self'): { rss: number; hwm: number } {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * 1024;
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

/** CPU time (user + system) of a process so far, in ms, from /proc/PID/stat. */
function procCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime, stime in clock ticks of 10 ms
  } catch {
    return NaN;
  }
}

/** CPU time of this process and the agent between two points, in ms. */
class CpuMeter {
  private readonly self0 = process.cpuUsage();
  private readonly agentPid: number | undefined;
  private readonly agent0: number;
  private readonly t0 = performance.now();
  constructor(agentPid: number | undefined) {
    this.agentPid = agentPid;
    this.agent0 = agentPid ? procCpuMs(agentPid) : NaN;
  }
  read(): { wallMs: number; serverMs: number; agentMs: number } {
    const c = process.cpuUsage(this.self0);
    return { wallMs: performance.now() - this.t0, serverMs: (c.user + c.system) / 1000, agentMs: this.agentPid ? procCpuMs(this.agentPid) - this.agent0 : NaN };
  }
}

/** `perf stat -e page-faults,task-clock -p PID` while measuring, if perf is there. */
function perfStat(pid: number): { stop(): Promise<string> } {
  let out = '';
  let child: ChildProcess | undefined;
  try {
    child = spawn('perf', ['stat', '-e', 'page-faults,task-clock', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d) => { out += d; });
    child.on('error', () => { child = undefined; });
  } catch {
    child = undefined;
  }
  return {
    async stop() {
      if (!child || child.exitCode !== null) return 'perf not available';
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGINT');
      await exited;
      const faults = /([\d,.]+)\s+page-faults/.exec(out)?.[1];
      const clock = /([\d,.]+)\s+msec task-clock/.exec(out)?.[1];
      return faults ? `${faults} page faults, ${clock} ms task-clock` : out.trim().split('\n').slice(-3).join(' ');
    },
  };
}

// ---- 1. filling the catalog (in a child process: its memory is not the server's) -------------

interface Shape {
  CLIENTS: number; POLICIES: number; IMAGES: number; JOBS: number; QUEUED: number; RUNNING: number;
  base: number;
  clientName(c: number): string;
  policyOf(c: number): number;
  jobRow(i: number, state: string, now: number): Insertable<JobsTable>;
}

function shape(scale: number, t0: number): Shape {
  const CLIENTS = Math.max(10, Math.round(10_000 * scale));
  const POLICIES = Math.max(1, Math.round(100 * scale));
  const base = t0 - 100 * DAY;
  const clientName = (c: number) => `host${String(c).padStart(5, '0')}`;
  const policyOf = (c: number) => c % POLICIES;
  const jobRow = (i: number, state: string, now: number) => {
    const c = i % CLIENTS;
    const slot = base + Math.floor(i / CLIENTS) * (DAY / 2) + (c % 1440) * MINUTE;
    const ended = state === 'running' || state === 'queued' ? null : slot + 20 * MINUTE + (i % 600) * 1000;
    const started = state === 'queued' || state === 'missed' ? null : slot + 1000;
    return {
      id: ulid(state === 'running' || state === 'queued' ? now : slot), kind: 'backup', state, priority: 10,
      client: clientName(c), policy: `p${policyOf(c)}`, schedule: i % 2 === 0 ? 'nightly' : 'weekly', storage_unit: 'vault',
      spec: JSON.stringify({ level: 'incremental', slot, lifecycle: 'gold' }), attempt: 1, max_attempts: 3,
      not_before: state === 'queued' ? now + DAY : null, queued: state === 'running' || state === 'queued' ? now : slot,
      started: state === 'running' ? now : started, ended, updated: ended ?? now,
      progress: state === 'running' ? JSON.stringify({ files: 100, bytes: 1e6 }) : null,
      result: state === 'succeeded' || state === 'warnings' ? JSON.stringify({ scannedBytes: 4e9, newBytes: 2e7, storedBytes: 1e7, dedupRatio: 400, streams: 1, warnings: state === 'warnings' ? 2 : 0 }) : null,
      error: state === 'failed' ? JSON.stringify({ code: 'STORAGE_UNAVAILABLE', message: 'Cannot reach the agent of client: it is not connected' }) : null,
      requested_by: 'scheduler', claimed_by: state === 'queued' || state === 'missed' ? null : 'server@elsewhere', log_seq: 0,
      slot: state === 'running' || state === 'queued' ? now + i : slot,
    };
  };
  return {
    CLIENTS, POLICIES, IMAGES: Math.round(1_000_000 * scale), JOBS: Math.round(2_000_000 * scale),
    QUEUED: Math.max(10, Math.round(1000 * scale)), RUNNING: Math.min(50, CLIENTS), base, clientName, policyOf, jobRow,
  };
}

interface FillResult {
  fill: Array<[string, number, { wallMs: number; serverMs: number }]>;
  counts: Record<string, number>;
  fillMs: number;
  size: number;
  ticks: Array<[string, number, number, number]>;
}

async function fillCatalog(o: Options, url: string, vault: string, t0: number): Promise<FillResult> {
  const { CLIENTS, POLICIES, IMAGES, JOBS, QUEUED, base, clientName, policyOf, jobRow } = shape(o.scale, t0);
  const fill: FillResult['fill'] = [];
  const step = async (what: string, rows: number, fn: () => Promise<void>) => {
    const m = new CpuMeter(undefined);
    await fn();
    const r = m.read();
    fill.push([what, rows, r]);
    console.error(`  fill: ${what}: ${rows} rows in ${r.wallMs.toFixed(0)} ms`);
  };
  const hourNow = new Date(t0).getUTCHours();
  const catalog: Catalog = await openCatalog(url);
  try {
    await step('clients', CLIENTS, () => catalog.transaction(async (tx) => {
      for (let c = 0; c < CLIENTS; c++) await tx.clients.upsert({ name: clientName(c), platform: 'linux' });
    }));
    await step(`policies (${POLICIES}) and their schedules`, 3 * CLIENTS, async () => {
      await catalog.storageUnits.apply({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'vault' }, spec: { url: vault, priority: 1 } });
      await catalog.lifecycles.apply({ apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'gold' }, spec: { copies: [{ operation: 'backup', storageUnit: 'vault', retention: '30d' }] } });
      for (let p = 0; p < POLICIES; p++) {
        // Calendars only, 6 to 17 hours ahead of now: nothing falls due while the server runs.
        const hour = (hourNow + 6 + (p % 12)) % 24;
        const minute = (p * 7) % 60;
        const doc = {
          apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: `p${p}` },
          spec: {
            clients: Array.from({ length: CLIENTS }, (_, c) => c).filter((c) => policyOf(c) === p).map(clientName),
            selections: [{ paths: ['/etc', '/home', '/var/lib'] }],
            schedules: [
              { name: 'nightly', level: 'incremental', calendar: `${minute} ${hour} * * *`, timezone: 'UTC' },
              { name: 'weekly', level: 'full', calendar: `${minute} ${(hour + 1) % 24} * * ${p % 7}`, timezone: 'UTC' },
              { name: 'monthly', level: 'full', calendar: `${minute} ${(hour + 2) % 24} ${1 + (p % 28)} * *`, timezone: 'UTC' },
            ],
            lifecycle: 'gold',
          },
        };
        await catalog.policies.apply(doc);
        await syncPolicySchedules(catalog, doc as unknown as PolicyDocument, { now: t0 });
      }
    });
    // One image a day per client for IMAGES / CLIENTS days, with one stream each.
    const perClient = Math.max(1, Math.round(IMAGES / CLIENTS));
    await step('images (images.addMany, 50,000 per call)', IMAGES, async () => {
      const CHUNK = 50_000;
      for (let i = 0; i < IMAGES; i += CHUNK) {
        const batch = [];
        for (let k = i; k < Math.min(IMAGES, i + CHUNK); k++) {
          const c = k % CLIENTS;
          const day = Math.floor(k / CLIENTS) % perClient;
          const time = base + day * DAY + (c % 1440) * MINUTE;
          batch.push({
            id: ulid(time), client: clientName(c), policy: `p${policyOf(c)}`, schedule: day % 7 === 0 ? 'weekly' : 'nightly',
            level: day % 7 === 0 ? 'full' : 'incremental', time, state: k % 50 === 0 ? 'partial' as const : 'ok' as const,
            streams: { '5f0c1e3a9b2d4c6e': (k.toString(16) + 'a'.repeat(64)).slice(0, 64) },
            summary: { files: 12_000 + (k % 1000), scannedBytes: 4e9 + k, newBytes: 2e7 + (k % 1e6), storedBytes: 1e7 },
          });
        }
        await catalog.images.addMany(batch);
      }
    });
  } finally {
    await catalog.close();
  }
  const db = await openKysely(o.backend, url);
  // A mix of states: mostly succeeded, some warnings, failed, missed, cancelled; ~1,000 queued
  // for tomorrow (not_before: the queue leaves them); the ~50 running are added once the server
  // runs (its start records every running job as interrupted).
  const stateOf = (i: number) => {
    const r = (i * 2654435761) % 1000;
    return r < 30 ? 'failed' : r < 55 ? 'missed' : r < 95 ? 'warnings' : r < 100 ? 'cancelled' : r < 105 ? 'interrupted' : 'succeeded';
  };
  const counts: Record<string, number> = {};
  try {
    await step('jobs (INSERT of 1,000 rows at a time, 50 per transaction)', JOBS, async () => {
      const ROWS = 1000;
      for (let i = 0; i < JOBS; i += 50 * ROWS) {
        await db.transaction().execute(async (trx) => {
          for (let j = i; j < Math.min(JOBS, i + 50 * ROWS); j += ROWS) {
            const rows = [];
            for (let k = j; k < Math.min(JOBS, j + ROWS); k++) {
              const state = k < QUEUED ? 'queued' : stateOf(k);
              counts[state] = (counts[state] ?? 0) + 1;
              rows.push(jobRow(k, state, t0));
            }
            await trx.insertInto('jobs').values(rows).execute();
          }
        });
      }
    });
    if (o.backend === 'postgres') await step('ANALYZE (what autovacuum does after a bulk load)', 0, async () => void (await sql`ANALYZE`.execute(db)));
  } finally {
    await db.destroy();
  }
  const fillMs = Date.now() - t0;
  const size = o.backend === 'sqlite' ? statSync(url).size + (statSync(url + '-wal', { throwIfNoEntry: false })?.size ?? 0) : await pgSize(url);

  // The scheduler at that scale, before the server starts: its first tick plans every row (all
  // new: none due yet), then normal ticks one a minute until the server's start.
  const schedCatalog = await openCatalog(url);
  const ticks: Array<[string, number, number, number]> = [];
  try {
    const clock = new FakeClock(t0);
    const loop = new SchedulerLoop(new CatalogScheduleStore(schedCatalog), clock, { timezone: 'UTC' });
    const tick = async (label: string) => {
      const m = new CpuMeter(undefined);
      const r = await loop.tick();
      const c = m.read();
      ticks.push([label, r.loaded, c.wallMs, c.serverMs]);
    };
    await tick('first tick: every row new (planned, none due)');
    clock.advance(MINUTE);
    await tick('the next minute (nothing due)');
  } finally {
    await schedCatalog.close();
  }

  return { fill, counts, fillMs, size, ticks };
}

function fillInChild(o: Options, url: string, vault: string, t0: number): Promise<FillResult> {
  const child = spawn(process.execPath, [import.meta.filename, ...process.argv.slice(2)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, COFFER_BENCH_FILL: JSON.stringify({ url, vault, t0 }) },
  });
  return new Promise((resolveFill, reject) => {
    child.once('message', (m) => resolveFill(m as FillResult));
    child.once('exit', (code) => reject(new Error(`the fill exited with ${code}`)));
  });
}

// ---- the run ------------------------------------------------------------------------------------

interface Options {
  backend: 'sqlite' | 'postgres';
  scale: number;
  sections: Set<number>;
  md: string | undefined;
  /** Section 4: MB per backup (default 300 × scale, at least 4). */
  backupMb: number | undefined;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { backend: 'sqlite', scale: 1, sections: new Set([1, 2, 3, 4]), md: undefined, backupMb: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = () => {
      const value = argv[++i];
      if (value === undefined) throw new Error(`${a} needs a value`);
      return value;
    };
    if (a === '--catalog') {
      const b = v();
      if (b !== 'sqlite' && b !== 'postgres') throw new Error('--catalog is sqlite or postgres');
      o.backend = b;
    } else if (a === '--scale') o.scale = Number(v());
    else if (a === '--sections') o.sections = new Set(v().split(',').map(Number));
    else if (a === '--md') o.md = v();
    else if (a === '--backup-mb') o.backupMb = Number(v());
    else throw new Error(`unknown argument ${a}: npx node bench/server.ts --catalog sqlite|postgres [--scale 1] [--sections 1,2,3,4] [--md FILE] [--backup-mb N]`);
  }
  if (!(o.scale > 0)) throw new Error('--scale is a positive number');
  return o;
}

const out: string[] = [];
function print(line = ''): void {
  console.log(line);
  out.push(line);
}

function table(header: string[], rows: Array<Array<string | number>>): void {
  print(`| ${header.join(' | ')} |`);
  print(`| ${header.map((h, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`);
  for (const r of rows) print(`| ${r.join(' | ')} |`);
  print();
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.env.COFFER_BENCH_FILL) {
    const { url, vault, t0 } = JSON.parse(process.env.COFFER_BENCH_FILL) as { url: string; vault: string; t0: number };
    const r = await fillCatalog(o, url, vault, t0);
    await new Promise((done) => process.send!(r, done));
    return;
  }
  const scale = o.scale;
  const CLIENTS = Math.max(10, Math.round(10_000 * scale));
  const REQUESTS = Math.max(300, Math.round(3000 * scale));
  const side = Math.max(10, Math.round(1000 * Math.sqrt(scale)));
  const BACKUP_BYTES = o.backupMb !== undefined ? o.backupMb * 1e6 : Math.max(4e6, Math.round(300e6 * scale));

  const command = `npx node bench/server.ts ${process.argv.slice(2).join(' ')}`;
  const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  print(`## coffer server at scale: ${o.backend}, scale ${scale}`);
  print();
  print(`\`${command}\`; ${date}; ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}`);
  print();

  const work = await mkdtemp(join(tmpdir(), 'coffer-bench-server-'));
  let pgServer: PostgresServer | undefined;
  let server: RunningServer | undefined;
  const logs: Json[] = [];
  const startLog: Array<[number, string]> = [];
  let agentPid: number | undefined;
  const log = pino({ level: 'info' }, {
    write(line: string) {
      const j = JSON.parse(line) as Json;
      if (j.msg === 'embedded agent connected') agentPid = j.agentPid ?? j.pid; // agentPid on main since b9b536d
      if (startLog.length < 12) startLog.push([j.time as number, String(j.msg)]);
      if (j.level >= 50) logs.push(j);
    },
  });
  try {
    let url: string;
    if (o.backend === 'postgres') {
      pgServer = await startPostgres();
      url = pgServer.url;
    } else {
      url = join(work, 'catalog.db');
    }
    const dataDir = join(work, 'data');
    const vault = join(work, 'vault');
    mkdirSync(vault);

    const t0 = Date.now();
    const { RUNNING, clientName, jobRow } = shape(scale, t0);
    const { fill, counts, fillMs, size, ticks } = await fillInChild(o, url, vault, t0);
    print(`### 1. Filling the catalog, the server's start, the scheduler`);
    print();
    table(['step', 'rows', 'wall s', 'CPU s (this process)', 'rows/s'], [
      ...fill.map(([what, rows, r]) => [what, f0(rows), (r.wallMs / 1000).toFixed(1), (r.serverMs / 1000).toFixed(1), rows ? f0(rows / (r.wallMs / 1000)) : '-']),
      ['**whole fill**', '', (fillMs / 1000).toFixed(1), '', ''],
    ]);
    print(`Jobs by state: ${Object.entries(counts).map(([k, v]) => `${k} ${f0(v)}`).join(', ')}, and ${RUNNING} running added after the start. Catalog size: ${mb(size)} MiB.`);
    print();

    // ---- the server ---------------------------------------------------------------------------
    const startMeter = new CpuMeter(undefined);
    server = await startServer({ dataDir, catalog: url, port: 0, adminPassword: 'bench admin password', log, env: { ...process.env },
      // ~50 jobs run (claimed by the fill); the default limit of 16 running jobs in the catalog would start none of ours.
      maxJobs: 100 });
    const started = startMeter.read();
    const startAt = Date.now() - started.wallMs;
    const timeline = startLog.map(([t, m]) => `${m} +${Math.round(t - startAt)} ms`).join(', ');
    const api = async (method: string, path: string, body?: unknown, token = adminToken): Promise<{ status: number; body: Json }> => {
      const res = await fetch(server!.url + path, {
        method, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) as Json : {} };
    };
    let adminToken = '';
    adminToken = (await api('POST', '/api/v1/login', { user: 'admin', password: 'bench admin password' }, '')).body.token as string;
    const me = server.clientName;
    // The running jobs, beside the server (its catalog connection is busy with its own work).
    const db2 = await openKysely(o.backend, url);
    try {
      const rows = Array.from({ length: RUNNING }, (_, k) => jobRow(k * 7, 'running', Date.now()));
      await db2.insertInto('jobs').values(rows).execute();
    } finally {
      await db2.destroy();
    }
    table(['server start (startServer on the filled catalog)', 'wall ms', 'CPU ms (server process)'], [
      ['catalog open, interrupt running, agent start, schedules of every policy synced, API listening', f0(started.wallMs), f0(started.serverMs)],
    ]);
    print(`Start, from its log: ${timeline}.`);
    print();
    table(['scheduler tick (SchedulerLoop + CatalogScheduleStore, 30,000 × scale schedules)', 'rows due', 'wall ms', 'CPU ms'], ticks.map(([l, n, w, c]) => [l, f0(n), f1(w), f1(c)]));

    // A storage unit and lifecycle for the real backups of sections 2 to 4.
    const benchUnit = join(work, 'storage-bench');
    mkdirSync(benchUnit);
    const applied = await api('POST', '/api/v1/apply', { documents: [
      { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'bench' }, spec: { url: benchUnit, maxJobs: 4 } },
      { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'bench' }, spec: { copies: [{ operation: 'backup', storageUnit: 'bench', retention: '30d' }] } },
    ] });
    if (applied.status !== 200) throw new Error(`apply: ${JSON.stringify(applied.body)}`);
    const policyDoc = (name: string, paths: string[]) => ({
      apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name },
      spec: { clients: [me], selections: [{ paths }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'bench' },
    });
    const waitJob = async (id: string): Promise<Json> => {
      for (;;) {
        const r = await api('GET', `/api/v1/jobs/${id}?waitMs=60000`);
        if (r.status !== 200) throw new Error(`job ${id}: ${r.status} ${JSON.stringify(r.body)}`);
        if (!['queued', 'running'].includes(r.body.state)) return r.body;
        if (process.env.BENCH_DEBUG) console.error(JSON.stringify((await api('GET', '/api/v1/jobs?state=running&state=queued&limit=10')).body.items.map((j: Json) => [j.kind, j.state, j.client, j.claimedBy, j.notBefore])), logs.slice(-3));
      }
    };
    const backup = async (policy: string): Promise<Json> => {
      const r = await api('POST', '/api/v1/backups', { policy, level: 'full' });
      if (r.status !== 202) throw new Error(`backup ${policy}: ${r.status} ${JSON.stringify(r.body)}`);
      return r.body.jobs[0];
    };
    const imageOf = async (policy: string): Promise<string> => {
      const r = await api('GET', `/api/v1/images?client=${me}&policy=${policy}&limit=1`);
      return r.body.items[0].id as string;
    };

    // ---- 2. API under load --------------------------------------------------------------------
    if (o.sections.has(2)) {
      // A real image to browse: the installed packages (thousands of directories), or src/ on a smoke run.
      const browseRoot = realpathSync(scale >= 0.1 ? resolve(import.meta.dirname, '..', 'node_modules') : resolve(import.meta.dirname, '..', 'src'));
      const dirs: string[] = [];
      const walk = (d: string) => {
        dirs.push(d);
        for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory() && !e.isSymbolicLink()) walk(join(d, e.name));
      };
      walk(browseRoot);
      await api('POST', '/api/v1/apply', { documents: [policyDoc('bench-browse', [browseRoot])] });
      const bj = await waitJob((await backup('bench-browse')).id);
      if (bj.state !== 'succeeded') {
        const logLines = (await api('GET', `/api/v1/jobs/${bj.id}/logs?limit=5`)).body.items;
        console.error(`the browse image's backup ended ${bj.state}: ${JSON.stringify(logLines)}`);
        if (bj.state !== 'warnings') throw new Error(`the browse image's backup: ${JSON.stringify(bj)}`);
      }
      const browseImage = await imageOf('bench-browse');
      const rng = mulberry32(9);
      const pick = <T>(a: T[]) => a[Math.floor(rng() * a.length)]!;
      const endpoints: Array<[string, string[]]> = [
        ['GET /api/v1/images?client=X (random of all clients, 100 newest)', Array.from({ length: REQUESTS }, () => `/api/v1/images?client=${clientName(Math.floor(rng() * CLIENTS))}`)],
        ['GET /api/v1/jobs?state=running', ['/api/v1/jobs?state=running']],
        [`GET /api/v1/images/:id/browse (random of ${dirs.length} directories)`, Array.from({ length: REQUESTS }, () => `/api/v1/images/${browseImage}/browse?path=${encodeURIComponent(pick(dirs))}`)],
      ];
      const rows: Array<Array<string | number>> = [];
      const eld = monitorEventLoopDelay({ resolution: 10 });
      for (const [label, paths] of endpoints) {
        // A short warm-up, then the measured run.
        await startLoad({ url: server.url, token: adminToken, paths, mode: 'closed', concurrency: 50, count: 100 }).done;
        eld.reset();
        eld.enable();
        const m = new CpuMeter(agentPid);
        const r = await startLoad({ url: server.url, token: adminToken, paths, mode: 'closed', concurrency: 50, count: REQUESTS }).done;
        const c = m.read();
        eld.disable();
        const ms = r.samples.map((s) => s.ms);
        const bad = r.samples.filter((s) => s.status !== 200).length;
        rows.push([label, f0(r.samples.length), f0(r.samples.length / (r.wallMs / 1000)), f1(pct(ms, 50)), f1(pct(ms, 99)), f1(Math.max(...ms)), f0(bad), f0(c.serverMs), f0(c.agentMs), f0(r.cpuMs), f1(eld.percentile(99) / 1e6)]);
      }
      const self = procMemory('self');
      const agent = agentPid ? procMemory(agentPid) : { rss: NaN, hwm: NaN };
      const heap = process.memoryUsage();
      print(`### 2. API latency, 50 concurrent keep-alive clients (closed loop in a child process)`);
      print();
      table(['endpoint', 'requests', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'non-200', 'server CPU ms', 'agent CPU ms', 'load generator CPU ms', 'server event loop delay p99 ms'], rows);
      table(['process', 'RSS MiB', 'peak RSS (VmHWM) MiB', 'heap used MiB'], [
        ['server (this process: API, catalog, scheduler, queue)', mb(self.rss), mb(self.hwm), mb(heap.heapUsed)],
        [`embedded agent (child, pid ${agentPid})`, mb(agent.rss), mb(agent.hwm), '-'],
      ]);
    }

    // ---- 3. browsing an image of 1,000,000 files ----------------------------------------------
    if (o.sections.has(3)) {
      const tree = join(work, 'tree');
      const tm = new CpuMeter(undefined);
      mkdirSync(tree);
      for (let d = 0; d < side; d++) {
        const dir = join(tree, `d${String(d).padStart(4, '0')}`);
        mkdirSync(dir);
        for (let f = 0; f < side; f++) {
          const file = join(dir, `f${String(f).padStart(4, '0')}`);
          // Empty files, and every tenth a few bytes.
          if (f % 10 === 0) writeFileSync(file, `${d}/${f}\n`);
          else closeSync(openSync(file, 'w'));
        }
      }
      const made = tm.read();
      console.error(`  tree of ${side * side} files made in ${made.wallMs.toFixed(0)} ms`);
      await api('POST', '/api/v1/apply', { documents: [policyDoc('bench-tree', [tree])] });
      const bm = new CpuMeter(agentPid);
      const job = await backup('bench-tree');
      const done = await waitJob(job.id);
      const backed = bm.read();
      if (done.state !== 'succeeded') throw new Error(`the tree's backup: ${JSON.stringify(done)}`);
      const agentAfterBackup = agentPid ? procMemory(agentPid) : { rss: NaN, hwm: NaN };
      // From the job's end (the server's clock: this process's) to the first listing of the
      // snapshot's root, then of the backed-up directory (the 1000 directories).
      let image = '';
      let firstRoot = NaN;
      let firstRootStatus = 0;
      for (;;) {
        if (!image) image = await imageOf('bench-tree').catch(() => '');
        if (image) {
          const r = await api('GET', `/api/v1/images/${image}/browse?path=/`);
          firstRootStatus = r.status;
          if (r.status === 200) {
            firstRoot = Date.now() - (done.ended as number);
            break;
          }
        }
        if (Date.now() - (done.ended as number) > 120_000) throw new Error(`no listing 120 s after the backup: ${firstRootStatus}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      const lt0 = performance.now();
      const top = await api('GET', `/api/v1/images/${image}/browse?path=${encodeURIComponent(tree)}`);
      const topMs = performance.now() - lt0;
      if (top.status !== 200 || top.body.items.length !== side) throw new Error(`listing ${tree}: ${top.status} ${top.body.items?.length}`);
      const perf = agentPid ? perfStat(agentPid) : undefined;
      const lm = new CpuMeter(agentPid);
      const lat: number[] = [];
      let entries = 0;
      for (let d = 0; d < side; d++) {
        const path = join(tree, `d${String(d).padStart(4, '0')}`);
        const s = performance.now();
        const r = await api('GET', `/api/v1/images/${image}/browse?path=${encodeURIComponent(path)}`);
        lat.push(performance.now() - s);
        if (r.status !== 200) throw new Error(`listing ${path}: ${r.status} ${JSON.stringify(r.body)}`);
        entries += r.body.items.length;
      }
      const listed = lm.read();
      const perfLine = perf ? await perf.stop() : '';
      const agentAfter = agentPid ? procMemory(agentPid) : { rss: NaN, hwm: NaN };
      print(`### 3. Browsing an image of ${f0(side * side)} files (${side} directories × ${side} files, every tenth a few bytes)`);
      print();
      table(['step', 'value', 'target'], [
        ['tree made on the local disk', `${(made.wallMs / 1000).toFixed(1)} s`, ''],
        ['backup through the server (POST /api/v1/backups to the job\'s end)', `${(backed.wallMs / 1000).toFixed(1)} s wall, agent CPU ${(backed.agentMs / 1000).toFixed(1)} s, server CPU ${(backed.serverMs / 1000).toFixed(1)} s`, ''],
        ['from the job\'s end to the first listing of the image\'s root', `${f0(firstRoot)} ms`, '≤ 2000 ms'],
        [`listing of the backed-up directory (${side} entries), the next request`, `${f1(topMs)} ms`, ''],
        [`each of the ${side} directories listed in turn (${f0(entries)} entries): p50 / p99 / max`, `${f1(pct(lat, 50))} / ${f1(pct(lat, 99))} / ${f1(Math.max(...lat))} ms`, 'p99 < 200 ms'],
        ['CPU while listing them: server / agent', `${f0(listed.serverMs)} / ${f0(listed.agentMs)} ms (${f1(listed.agentMs / side)} ms per listing in the agent)`, ''],
        ['agent: perf stat -e page-faults,task-clock while listing', perfLine, ''],
        ['agent RSS / peak after the backup; after the listings', `${mb(agentAfterBackup.rss)} / ${mb(agentAfterBackup.hwm)} MiB; ${mb(agentAfter.rss)} / ${mb(agentAfter.hwm)} MiB`, ''],
      ]);
      await rm(tree, { recursive: true, force: true });
    }

    // ---- 4. API latency while four backups run ------------------------------------------------
    if (o.sections.has(4)) {
      const sources: string[] = [];
      const FILE = 10e6;
      for (let b = 0; b < 4; b++) {
        const dir = join(work, `load${b}`);
        mkdirSync(dir);
        sources.push(dir);
        for (let i = 0; i * FILE < BACKUP_BYTES; i++) await writeFile(join(dir, `f${i}`), randomish(Math.min(FILE, BACKUP_BYTES - i * FILE), b * 1000 + i));
      }
      await api('POST', '/api/v1/apply', { documents: sources.map((s, b) => policyDoc(`bench-load${b}`, [s])) });
      const probe = { url: server.url, token: adminToken, paths: ['/api/v1/jobs?limit=20'], mode: 'rate' as const, rate: 20 };
      const eld = monitorEventLoopDelay({ resolution: 10 });
      // Idle: 10 s (5 s on a smoke run).
      const idle = startLoad(probe);
      eld.enable();
      await new Promise((r) => setTimeout(r, scale >= 0.1 ? 10_000 : 5000));
      idle.stop();
      const idleSamples = (await idle.done).samples;
      eld.disable();
      const idleDelay = eld.percentile(99) / 1e6;
      eld.reset();
      const busy = startLoad(probe);
      await new Promise((r) => setTimeout(r, 1000));
      const m = new CpuMeter(agentPid);
      eld.enable();
      const jobs = [];
      for (let b = 0; b < 4; b++) jobs.push(await backup(`bench-load${b}`));
      const ended = await Promise.all(jobs.map((j) => waitJob(j.id)));
      const c = m.read();
      eld.disable();
      busy.stop();
      const samples = (await busy.done).samples;
      for (const e of ended) if (e.state !== 'succeeded') throw new Error(`a load backup: ${JSON.stringify(e)}`);
      const allFrom = Math.max(...ended.map((e) => e.started as number));
      const allTo = Math.min(...ended.map((e) => e.ended as number));
      const anyFrom = Math.min(...ended.map((e) => e.started as number));
      const anyTo = Math.max(...ended.map((e) => e.ended as number));
      const during = (from: number, to: number) => samples.filter((s) => s.at >= from && s.at + s.ms <= to);
      const row = (label: string, s: Sample[], delay: string) => {
        const ms = s.map((x) => x.ms);
        return [label, f0(s.length), f1(pct(ms, 50)), f1(pct(ms, 99)), f1(Math.max(...ms)), f0(s.filter((x) => x.status !== 200).length), delay];
      };
      const scanned = ended.reduce((n, e) => n + ((e.result as Json)?.scannedBytes ?? 0), 0);
      print(`### 4. API latency while four backups run (GET /api/v1/jobs?limit=20 at 20 requests/s)`);
      print();
      print(`Four policies of the embedded client, ${mb(BACKUP_BYTES)} MiB of incompressible files each, backed up at once into one storage unit (maxJobs 4): ${(scanned / 1e6).toFixed(0)} MB in ${((anyTo - anyFrom) / 1000).toFixed(1)} s from the first start to the last end, all four running together for ${((allTo - allFrom) / 1000).toFixed(1)} s. CPU over the backups: server ${f0(c.serverMs)} ms, agent ${f0(c.agentMs)} ms in ${f0(c.wallMs)} ms.`);
      print();
      table(['phase', 'requests', 'p50 ms', 'p99 ms', 'max ms', 'non-200', 'server event loop delay p99 ms'], [
        row('idle (no job running)', idleSamples, f1(idleDelay)),
        row('while at least one backup ran', during(anyFrom, anyTo), f1(eld.percentile(99) / 1e6)),
        row('while all four ran', during(allFrom, allTo), ''),
      ]);
      for (const s of sources) await rm(s, { recursive: true, force: true });
    }

    // ---- the scheduler after the server: a day of ticks, then after 3 days down --------------
    await server.stop();
    server = undefined;
    if (o.sections.has(1) || o.sections.has(2)) {
      const c2 = await openCatalog(url);
      try {
        const clock = new FakeClock(Date.now());
        const loop = new SchedulerLoop(new CatalogScheduleStore(c2), clock, { timezone: 'UTC' });
        await loop.tick();
        const start = clock.now();
        let worst = 0;
        let total = 0;
        let n = 0;
        let loaded = 0;
        let worstLoaded = 0;
        const m = new CpuMeter(undefined);
        for (clock.advance(MINUTE); clock.now() < start + DAY; clock.advance(MINUTE)) {
          const s = performance.now();
          const r = await loop.tick();
          const ms = performance.now() - s;
          if (ms > worst) {
            worst = ms;
            worstLoaded = r.loaded;
          }
          total += ms;
          loaded += r.loaded;
          n++;
        }
        const day = m.read();
        clock.set(start + 4 * DAY);
        const dm = new CpuMeter(undefined);
        const down = await loop.tick();
        const downCpu = dm.read();
        const missed = down.decisions.reduce((k, d) => k + d.missed.length, 0);
        table(['scheduler on the catalog after the server (fake clock)', 'rows due', 'wall ms', 'CPU ms'], [
          [`a day of ticks one a minute (${n}): mean / slowest`, `${f1(loaded / n)} / ${f0(worstLoaded)}`, `${f1(total / n)} / ${f1(worst)}`, `${f1(day.serverMs / n)} per tick`],
          [`after 3 days down (${f0(missed)} missed slots recorded)`, f0(down.loaded), f1(downCpu.wallMs), f1(downCpu.serverMs)],
        ]);
      } finally {
        await c2.close();
      }
    }
    if (logs.length) {
      print(`Server errors logged: ${logs.length}; first: ${logs.slice(0, 3).map((l) => `${l.msg} ${l.err ?? ''}`).join('; ')}`);
      print();
    }
  } finally {
    await server?.stop().catch(() => {});
    await pgServer?.stop().catch(() => {});
    if (process.env.COFFER_BENCH_KEEP) console.error(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
    if (o.md) writeFileSync(o.md, out.join('\n') + '\n');
  }
}

async function openKysely(backend: 'sqlite' | 'postgres', url: string): Promise<Kysely<Database>> {
  if (backend === 'sqlite') return new Kysely<Database>({ dialect: new NodeSqliteDialect({ database: openNodeSqlite(url, { busyTimeoutMs: 30_000 }) }) });
  const { default: pg } = await import('pg');
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 2 }) }) });
}

async function pgSize(url: string): Promise<number> {
  const db = await openKysely('postgres', url);
  try {
    const r = await sql<{ size: string }>`SELECT pg_database_size(current_database())::text AS size`.execute(db);
    return Number(r.rows[0]!.size);
  } finally {
    await db.destroy();
  }
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Incompressible bytes from a seed (xorshift), fast enough for a few hundred MB. */
function randomish(n: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(n + 3 - ((n + 3) % 4));
  let x = (seed * 2654435761 + 1) >>> 0 || 1;
  for (let i = 0; i < buf.length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, i);
  }
  return buf.subarray(0, n);
}

if (process.argv[2] === '--loadgen') {
  process.once('message', (config) => {
    void loadgen(config as LoadConfig).then((r) => process.send!(r, () => process.exit(0)));
  });
} else {
  await main();
}
