// Agents and storage nodes, measured (issue #12, "Measure"), against the real system: real
// `coffer server`, `coffer node run` and `coffer agent run` processes on loopback, enrolled with
// one-time tokens and talking mutual TLS, as an administrator would set them up.
//
//   npx node bench/agents.ts [--sections 1,2,3] [--runs 2] [--sims 1000] [--out bench/results/agents]
//
// Section 1: eight agents at once (one per VM directory of the shared data set, read only)
// through two storage nodes serving one storage unit; then the same eight directories backed up
// by one `coffer repo backup` process, for comparison. Caches are dropped before each (root).
// Section 2: 1,000 simulated agents (src/testing/sim-agent.ts) enrolled for real (tokens from the
// API, `enroll` on the agent port with a key and CSR each) and connected over mutual TLS to the
// server, which runs in a child process of this script (startServer, what `coffer server` runs,
// with a 1 s ping interval, which the CLI does not offer); a probe in that process times each
// ping to its pong on the agents' sockets. Section 3: one idle agent's memory, and its peak
// during a backup of vm01 through a node.
//
// Processes are measured from /proc: CPU is utime+stime (all threads, the worker threads
// included), memory VmRSS now and VmHWM (the peak). Every process is started as bin/coffer.mjs
// re-executes itself on Linux (src/cli/main.ts with glibc's malloc tunables, the compile cache and
// --max-semi-space-size=4), without the launcher in between, so that the pid is the one working.
// Everything is written under /tmp/bench12/ (or --work); the data set is only read.

import { execFileSync, execSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

type Json = any;

const ROOT = join(import.meta.dirname, '..');
/** What bin/coffer.mjs re-executes on Linux. */
const MAIN = join(ROOT, 'src', 'cli', 'main.ts');
const DATA = '/tmp/bench-work/data/files-default/src';
const PASSWORD = 'bench12 admin password';
const TICKS = 100; // getconf CLK_TCK on Linux
const FAR_CALENDAR = '0 1 29 2 *'; // never due during a run: backups are started with `backup now`

// ---- processes -------------------------------------------------------------------------------

/** The environment and arguments bin/coffer.mjs gives its re-exec on Linux. */
function launcherEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const tunables = 'glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576';
  return { ...process.env, COFFER_LAUNCHED: '1', GLIBC_TUNABLES: tunables, NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE ?? join(tmpdir(), 'node-compile-cache'), COFFER_LOG_LEVEL: 'info', ...extra };
}

interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  out(): string;
  err(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const procs = new Set<Proc>();
/** --profile DIR: agents and nodes write V8 CPU profiles there (every thread, at their exit). */
let PROFILE_DIR: string | undefined;

/** `coffer ARGS` as a long-running child (server, node, agent). */
function coffer(name: string, args: string[], env: Record<string, string> = {}): Proc {
  const profile = PROFILE_DIR && ['agent', 'node'].includes(args[0]!) && args[1] === 'run' ? ['--cpu-prof', '--cpu-prof-dir', join(PROFILE_DIR, name.replace(/ /g, '-'))] : [];
  const child = spawn(process.execPath, ['--max-semi-space-size=4', ...profile, MAIN, ...args], { env: launcherEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-200_000)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-400_000)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const p: Proc = { name, child, pid: child.pid!, out: () => out, err: () => err, exited };
  procs.add(p);
  void exited.then(() => procs.delete(p));
  return p;
}

/** `coffer --json ARGS` to its end; throws with its output unless it exits 0. */
async function cofferOnce(args: string[], env: Record<string, string> = {}): Promise<Json> {
  const p = coffer(args.join(' '), ['--json', ...args], env);
  const { code } = await p.exited;
  if (code !== 0) throw new Error(`coffer ${args.join(' ')} exited ${code}:\n${p.out()}${p.err()}`);
  const lines = p.out().trim().split('\n').filter(Boolean);
  return JSON.parse(lines.at(-1)!);
}

async function stop(p: Proc, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill(signal);
  const t = setTimeout(() => p.child.kill('SIGKILL'), 20_000);
  await p.exited;
  clearTimeout(t);
}

/** This script's own children (section 2's server and simulated agents). */
const helpers = new Set<ChildProcess>();

async function stopAll(): Promise<void> {
  for (const h of helpers) h.kill('SIGTERM');
  await Promise.all([...procs].map((p) => stop(p)));
}

async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000, everyMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- /proc -----------------------------------------------------------------------------------

interface Sample {
  /** utime+stime of every thread, ms. */
  cpuMs: number;
  rss: number;
  hwm: number;
}

function sample(pid: number): Sample {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { cpuMs: ((Number(f[11]) + Number(f[12])) * 1000) / TICKS, rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

function dropCaches(): string {
  try {
    execSync('sync');
    writeFileSync('/proc/sys/vm/drop_caches', '3');
    return 'dropped';
  } catch (e) {
    return `not dropped (${(e as Error).message.split('\n')[0]})`;
  }
}

const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
const mib = (b: number) => (b / 1048576).toFixed(1);
const gb = (b: number) => (b / 1e9).toFixed(2);
const sec = (ms: number) => (ms / 1000).toFixed(1);

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

function dist(ms: number[]): string {
  if (ms.length === 0) return 'none';
  const s = [...ms].sort((a, b) => a - b);
  return `${percentile(s, 50).toFixed(1)} / ${percentile(s, 99).toFixed(1)} / ${s.at(-1)!.toFixed(1)} ms (n=${s.length})`;
}

function duBytes(dir: string): number {
  return Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0]);
}

// ---- the API ---------------------------------------------------------------------------------

class Api {
  token = '';
  readonly url: string;
  constructor(url: string) {
    this.url = url;
  }

  async call<T = Json>(method: string, path: string, o: { body?: unknown; query?: Record<string, string> } = {}): Promise<{ status: number; body: T }> {
    const u = new URL(this.url + path);
    for (const [k, v] of Object.entries(o.query ?? {})) u.searchParams.set(k, v);
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (o.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(u, { method, headers, body: o.body === undefined ? undefined : JSON.stringify(o.body) });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
  }

  /** The call, which must answer `status`; throws with the body otherwise. */
  async ok<T = Json>(method: string, path: string, o: { body?: unknown; query?: Record<string, string> } = {}, status = 200): Promise<T> {
    const r = await this.call<T>(method, path, o);
    if (r.status !== status) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  async login(): Promise<void> {
    this.token = (await this.ok<Json>('POST', '/api/v1/login', { body: { user: 'admin', password: PASSWORD } })).token;
  }

  async waitJob(id: string, timeoutMs = 1_800_000): Promise<Json> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const j = await this.ok('GET', `/api/v1/jobs/${id}`, { query: { waitMs: '60000' } });
      if (!['queued', 'running'].includes(j.state)) return j;
      if (Date.now() > end) throw new Error(`job ${id} did not end within ${timeoutMs} ms: ${JSON.stringify(j)}`);
    }
  }

  /** `n` requests one after another; their latencies in ms. */
  async latency(path: string, n: number): Promise<number[]> {
    const ms: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await this.ok('GET', path);
      ms.push(performance.now() - t);
    }
    return ms;
  }
}

interface Server {
  proc: Proc;
  api: Api;
  agentAddress: string;
  caFingerprint: string;
  /** The embedded agent's pid. */
  agentPid: number;
}

/** `coffer server` on loopback with its data directory under `dir`. */
async function startServerCli(dir: string, extra: string[] = []): Promise<Server> {
  const proc = coffer('server', ['server', '--data-dir', join(dir, 'server'), '--listen', '127.0.0.1:0', '--agent-listen', '127.0.0.1:0', ...extra], { COFFER_ADMIN_PASSWORD: PASSWORD });
  await waitUntil('the server to start', () => {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) throw new Error(`the server exited before it started:\n${proc.err().slice(-3000)}`);
    return /is running at/.test(proc.out());
  }, 120_000);
  const url = /is running at (\S+)/.exec(proc.out())![1]!;
  const agentAddress = /agents and nodes connect to (\S+)/.exec(proc.out())![1]!;
  const caFingerprint = /CA fingerprint \(SHA-256\): ([0-9a-f]{64})/.exec(proc.out())![1]!;
  await waitUntil('the embedded agent', () => proc.err().includes('embedded agent connected'), 60_000);
  const line = proc.err().split('\n').find((l) => l.includes('embedded agent connected'))!;
  const agentPid = Number(JSON.parse(line).agentPid);
  const api = new Api(url);
  await api.login();
  return { proc, api, agentAddress, caFingerprint, agentPid };
}

/** Enrolls and starts `coffer ROLE run` named NAME with its state under `dir`. */
async function enrollAndRun(server: Server, role: 'agent' | 'node', name: string, dir: string, runArgs: string[] = []): Promise<Proc> {
  const route = role === 'agent' ? 'clients' : 'nodes';
  const token = await server.api.ok('POST', `/api/v1/${route}/${name}/enrollment`, { body: {} }, 201);
  const state = join(dir, `${role}-${name}`);
  await cofferOnce([role, 'enroll', '--server', server.agentAddress, '--token', token.token, '--ca-fingerprint', server.caFingerprint, '--state-dir', state]);
  return coffer(`${role} ${name}`, [role, 'run', '--state-dir', state, ...runArgs]);
}

async function waitConnected(server: Server, nodes: string[], clients: string[]): Promise<void> {
  await waitUntil(`nodes ${nodes.join(', ')} and agents ${clients.join(', ')} to connect`, async () => {
    const n = (await server.api.ok('GET', '/api/v1/nodes')).items ?? (await server.api.ok('GET', '/api/v1/nodes')).nodes;
    const c = (await server.api.ok('GET', '/api/v1/clients', { query: { limit: '1000' } })).items;
    const up = new Set([...n.filter((x: Json) => x.connected).map((x: Json) => x.name), ...c.filter((x: Json) => x.connected).map((x: Json) => x.name)]);
    return [...nodes, ...clients].every((x) => up.has(x));
  }, 120_000, 250);
}

/** One storage unit served by `nodes`, a lifecycle, and one policy per VM (its directory). */
async function applyVmPolicies(server: Server, unitDir: string, nodes: string[], vms: string[]): Promise<void> {
  const documents: Json[] = [
    { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'shared' }, spec: { url: unitDir, nodes, maxJobs: vms.length } },
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'keep' }, spec: { copies: [{ operation: 'backup', storageUnit: 'shared', retention: '30d' }] } },
    ...vms.map((vm) => ({
      apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: vm },
      spec: { clients: [vm], selections: [{ paths: [join(DATA, vm)] }], schedules: [{ name: 'full', level: 'full', calendar: FAR_CALENDAR }], lifecycle: 'keep' },
    })),
  ];
  await server.api.ok('POST', '/api/v1/apply', { body: { documents } });
}

/** `backup now` of each policy at once; waits for every job. */
async function backupNow(server: Server, policies: string[]): Promise<{ jobs: Json[]; wallMs: number }> {
  const t0 = Date.now();
  const started = await Promise.all(policies.map((p) => server.api.ok('POST', '/api/v1/backups', { body: { policy: p, level: 'full' } }, 202)));
  const jobs = await Promise.all(started.flatMap((s) => s.jobs.map((j: Json) => server.api.waitJob(j.id))));
  const wallMs = Math.max(...jobs.map((j) => j.ended)) - t0;
  return { jobs, wallMs };
}

async function jobLog(server: Server, id: string): Promise<string> {
  return (await server.api.ok('GET', `/api/v1/jobs/${id}/logs`)).items.map((l: Json) => l.message).join('\n');
}

// ---- output ----------------------------------------------------------------------------------

let report = '';
function print(line = ''): void {
  report += line + '\n';
  process.stdout.write(line + '\n');
}
function table(head: string[], rows: Array<Array<string | number>>): void {
  print(`| ${head.join(' | ')} |`);
  print(`| ${head.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`);
  for (const r of rows) print(`| ${r.join(' | ')} |`);
  print();
}

// ---- section 1 -------------------------------------------------------------------------------

async function section1(work: string, vms: string[]): Promise<void> {
  const dir = join(work, 's1');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  print(`### 1. ${vms.length} agents at once through two storage nodes (load average at start ${load()})`);
  print();
  const server = await startServerCli(dir);
  const nodes = ['n1', 'n2'];
  const nodeProcs = await Promise.all(nodes.map((n) => enrollAndRun(server, 'node', n, dir, ['--data-listen', '127.0.0.1:0'])));
  const agents: Proc[] = [];
  for (const vm of vms) agents.push(await enrollAndRun(server, 'agent', vm, dir));
  await waitConnected(server, nodes, vms);
  await applyVmPolicies(server, join(dir, 'unit'), nodes, vms);
  await sleep(2000);

  const groups = { server: [server.proc.pid], 'embedded agent': [server.agentPid], nodes: nodeProcs.map((p) => p.pid), agents: agents.map((p) => p.pid) };
  const before = new Map(Object.values(groups).flat().map((pid) => [pid, sample(pid)]));
  const cache = dropCaches();
  const loadBefore = load();
  const { jobs, wallMs } = await backupNow(server, vms);
  const after = new Map(Object.values(groups).flat().map((pid) => [pid, sample(pid)]));
  const loadAfter = load();

  const spread = new Map<string, string[]>();
  const rows: Array<Array<string | number>> = [];
  let scanned = 0, sent = 0, stored = 0, received = 0;
  for (const j of jobs) {
    const log = await jobLog(server, j.id);
    const node = /storage node (\S+) \(\S+\) takes client/.exec(log)?.[1] ?? '?';
    const r = j.result ?? {};
    if (j.state !== 'succeeded') print(`**job ${j.id} of ${j.client} ended ${j.state}**: ${JSON.stringify(j.error)}\n\n${log}\n`);
    spread.set(node, [...(spread.get(node) ?? []), j.client]);
    scanned += r.scannedBytes ?? 0;
    sent += r.sentBytes ?? 0;
    stored += r.storedBytes ?? 0;
    received += r.bytesReceived ?? 0;
    rows.push([j.client, j.state, node, sec(j.ended - j.started), gb(r.scannedBytes ?? 0), gb(r.sentBytes ?? 0), gb(r.storedBytes ?? 0)]);
  }
  const unitBytes = duBytes(join(dir, 'unit'));
  print(`Caches ${cache}; load average ${loadBefore} before, ${loadAfter} after.`);
  print();
  table(['client', 'state', 'node', 'job s', 'scanned GB', 'sent GB', 'stored GB'], rows);
  table(['measure', 'value'], [
    ['wall, first `backup now` to last job ended', `${sec(wallMs)} s`],
    ['aggregate throughput (bytes scanned / wall)', `${(scanned / 1e6 / (wallMs / 1000)).toFixed(1)} MB/s`],
    ['bytes scanned / sent over the network / stored (job results)', `${gb(scanned)} / ${gb(sent)} / ${gb(stored)} GB (sent = ${((100 * sent) / scanned).toFixed(1)} % of scanned)`],
    ['the unit on disk (du)', `${gb(unitBytes)} GB`],
    ['jobs per node', [...spread].map(([n, c]) => `${n}: ${c.length} (${c.join(', ')})`).join('; ')],
  ]);
  const cpuRows = Object.entries(groups).map(([g, pids]) => {
    const cpu = pids.reduce((s, pid) => s + after.get(pid)!.cpuMs - before.get(pid)!.cpuMs, 0);
    const hwm = pids.map((pid) => after.get(pid)!.hwm);
    return [g, pids.length, sec(cpu), `${mib(Math.max(...hwm))} (${hwm.map(mib).join(', ')})`, mib(pids.reduce((s, pid) => s + after.get(pid)!.rss, 0))];
  });
  const totalCpu = [...after].reduce((s, [pid, a]) => s + a.cpuMs - before.get(pid)!.cpuMs, 0);
  cpuRows.push(['all', Object.values(groups).flat().length, sec(totalCpu), '', '']);
  table(['process group', 'processes', 'CPU s during the backups', 'peak RSS MiB, max (each)', 'RSS MiB after, sum'], cpuRows);
  await stopAll();

  // The same directories by one process, into a fresh repository.
  const load2 = load();
  const one = await timedRepoBackup(dir, vms.map((vm) => join(DATA, vm)));
  print(`One process, \`coffer repo backup\` of the ${vms.length} directories into a fresh repository (caches ${one.cache}; load average ${load2} before):`);
  print();
  table(['measure', `${vms.length} agents + 2 nodes + server`, 'one process'], [
    ['wall s', sec(wallMs), sec(one.wallMs)],
    ['throughput MB/s (scanned / wall)', (scanned / 1e6 / (wallMs / 1000)).toFixed(1), (one.summary.bytesScanned / 1e6 / (one.wallMs / 1000)).toFixed(1)],
    ['CPU s (all processes)', sec(totalCpu), sec(one.cpuMs)],
    ['bytes scanned GB', gb(scanned), gb(one.summary.bytesScanned)],
    ['bytes stored GB (job results / summary)', gb(stored), gb(one.summary.bytesStored)],
    ['repository on disk GB (du)', gb(unitBytes), gb(one.repoBytes)],
    ['peak RSS MiB', 'see above', mib(one.maxRss)],
    ['page faults (minor + major)', '', one.faults],
  ]);
  rmSync(dir, { recursive: true, force: true });
}

/**
 * `coffer repo backup` of `paths` by one process into a fresh repository under `dir`, from cold
 * caches, under /usr/bin/time -v: its summary, wall, CPU, peak RSS, page faults, repository size.
 */
async function timedRepoBackup(dir: string, paths: string[]): Promise<{ summary: Json; wallMs: number; cpuMs: number; maxRss: number; faults: string; repoBytes: number; cache: string }> {
  const repo = join(dir, 'one-repo');
  rmSync(repo, { recursive: true, force: true });
  const env = { COFFER_PASSWORD: 'x', COFFER_CACHE_DIR: join(dir, 'one-cache') };
  await cofferOnce(['repo', 'init', '--repo', repo], env);
  const cache = dropCaches();
  const timed = spawn('/usr/bin/time', ['-v', process.execPath, '--max-semi-space-size=4', MAIN, '--json', 'repo', 'backup', '--repo', repo, '--host', 'one', ...paths], { env: launcherEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  timed.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  timed.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const code = await new Promise<number | null>((r) => timed.once('exit', r));
  if (code !== 0) throw new Error(`coffer repo backup exited ${code}:\n${out.slice(-2000)}${err.slice(-3000)}`);
  const summary = JSON.parse(out.trim().split('\n').at(-1)!);
  const tv = (k: string) => new RegExp(`${k}: (.+)`).exec(err)?.[1]?.trim() ?? '?';
  const [m, s] = tv('Elapsed \\(wall clock\\) time \\(h:mm:ss or m:ss\\)').split(':').slice(-2).map(Number);
  return {
    summary,
    wallMs: (m! * 60 + s!) * 1000,
    cpuMs: (Number(tv('User time \\(seconds\\)')) + Number(tv('System time \\(seconds\\)'))) * 1000,
    maxRss: Number(tv('Maximum resident set size \\(kbytes\\)')) * 1024,
    faults: `${tv('Minor \\(reclaiming a frame\\) page faults')} + ${tv('Major \\(requiring I/O\\) page faults')}`,
    repoBytes: duBytes(repo),
    cache,
  };
}

// ---- section 3 -------------------------------------------------------------------------------

async function section3(work: string, vm: string): Promise<void> {
  const dir = join(work, 's3');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  print(`### 3. One agent's footprint: idle, and backing up ${vm} through a node (load average at start ${load()})`);
  print();
  const server = await startServerCli(dir);
  const node = await enrollAndRun(server, 'node', 'n1', dir, ['--data-listen', '127.0.0.1:0']);
  const agent = await enrollAndRun(server, 'agent', vm, dir);
  await waitConnected(server, ['n1'], [vm]);
  await applyVmPolicies(server, join(dir, 'unit'), ['n1'], [vm]);
  await sleep(5000);
  const idle = sample(agent.pid);
  const nodeIdle = sample(node.pid);
  const cache = dropCaches();
  const loadBefore = load();
  const first = await backupNow(server, [vm]);
  const job = first.jobs[0];
  if (job.state !== 'succeeded') throw new Error(`the backup of ${vm} ended ${job.state}: ${JSON.stringify(job.error)}\n${await jobLog(server, job.id)}`);
  const during = sample(agent.pid);
  const nodeDuring = sample(node.pid);
  // The runtime closes its worker pool 30 s after the last job.
  await sleep(35_000);
  const later = sample(agent.pid);
  const nodeLater = sample(node.pid);
  // A second backup of the same directory, warm: the parent's metadata, nothing new to send.
  const second = await backupNow(server, [vm]);
  const again = sample(agent.pid);
  await sleep(35_000);
  const settled = sample(agent.pid);
  const r = job.result;
  print(`Caches ${cache} before the first backup; load average ${loadBefore} before, ${load()} at the end.`);
  print();
  table(['measure', 'agent', 'node'], [
    ['idle, connected 5 s: RSS MiB (peak so far)', `${mib(idle.rss)} (${mib(idle.hwm)})`, `${mib(nodeIdle.rss)} (${mib(nodeIdle.hwm)})`],
    [`first backup (full, cold): peak RSS MiB (VmHWM, worker threads included)`, mib(during.hwm), mib(nodeDuring.hwm)],
    ['RSS MiB at the job\'s end', mib(during.rss), mib(nodeDuring.rss)],
    ['RSS MiB 35 s after the job (pool closed)', mib(later.rss), mib(nodeLater.rss)],
    ['CPU s of the first backup', sec(during.cpuMs - idle.cpuMs), sec(nodeDuring.cpuMs - nodeIdle.cpuMs)],
    ['second backup (warm, same files): RSS MiB at its end; 35 s later', `${mib(again.rss)}; ${mib(settled.rss)}`, ''],
  ]);
  await stopAll();
  const one = await timedRepoBackup(dir, [join(DATA, vm)]);
  print(`For comparison, \`coffer repo backup\` of ${vm} by one process into a fresh local repository (caches ${one.cache}): ${sec(one.wallMs)} s, CPU ${sec(one.cpuMs)} s, peak RSS ${mib(one.maxRss)} MiB, page faults ${one.faults}.`);
  print();
  print(`First backup: ${sec(first.wallMs)} s, ${gb(r.scannedBytes)} GB scanned, ${gb(r.sentBytes)} GB sent, ${gb(r.storedBytes)} GB stored; second: ${sec(second.wallMs)} s, ${second.jobs[0].state}${second.jobs[0].error ? ` (${JSON.stringify(second.jobs[0].error)})` : ''}, ${(second.jobs[0].result?.sentBytes / 1e6).toFixed(1)} MB sent.`);
  print();
  await stopAll();
  rmSync(dir, { recursive: true, force: true });
}

// ---- section 2 -------------------------------------------------------------------------------

/** --serve: the server for section 2, in this child process, with a ping-to-pong probe. */
async function serve(dir: string, pingMs: number, maxJobs: number): Promise<void> {
  const [{ startServer }, { pino }] = await Promise.all([import('../src/server/server.ts'), import('pino')]);
  let agentPid = NaN;
  const log = pino({ level: 'info' }, {
    write(line: string) {
      const j = JSON.parse(line) as Json;
      if (j.msg === 'embedded agent connected') agentPid = j.agentPid;
      if (j.level >= 40) process.stderr.write(line);
    },
  });
  const server = await startServer({ dataDir: join(dir, 'server'), host: '127.0.0.1', port: 0, adminPassword: PASSWORD, log, agentListen: { host: '127.0.0.1', port: 0 }, agentPingMs: pingMs, maxJobs, workers: 1 });
  const send = (m: Json) => process.send!(m);
  send({ t: 'ready', url: server.url, agentAddress: server.agentPort!.address, caFingerprint: server.ca.fingerprint, agentPid });
  process.on('disconnect', () => void server.stop().finally(() => process.exit(1)));
  process.on('message', (m: Json) => {
    if (m.t === 'probe') void probe(server.services.agents, m.ms).then((rtts) => send({ t: 'rtts', rtts }));
    if (m.t === 'stop') void server.stop().then(() => process.exit(0));
  });
}

/**
 * Times every ping the server writes to a remote agent to the pong it reads back, for `ms`: the
 * agents' sockets are watched (a write wrapper, a data listener), nothing else changes.
 */
async function probe(agents: { names(): string[]; get(n: string): unknown; isRemote(n: string): boolean }, ms: number): Promise<number[]> {
  const rtts: number[] = [];
  const undo: Array<() => void> = [];
  for (const name of agents.names()) {
    if (!agents.isRemote(name)) continue;
    const socket = (agents.get(name) as { input: TLSSocket }).input;
    const sent = new Map<number, number>();
    const write = socket.write;
    socket.write = function (this: TLSSocket, chunk: unknown, ...rest: unknown[]) {
      if (typeof chunk === 'string' && chunk.startsWith('{"t":"ping","n":')) sent.set(Number(/"n":(\d+)/.exec(chunk)![1]), performance.now());
      return (write as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof socket.write;
    const onData = (b: Buffer) => {
      for (const m of b.toString('latin1').matchAll(/"t":"pong","n":(\d+)/g)) {
        const at = sent.get(Number(m[1]));
        if (at !== undefined) rtts.push(performance.now() - at);
      }
    };
    socket.on('data', onData);
    undo.push(() => {
      socket.write = write;
      socket.off('data', onData);
    });
  }
  await sleep(ms);
  for (const u of undo) u();
  return rtts;
}

/** --fleet: enrolls the simulated agents for real, connects them, and answers their jobs. */
async function fleet(): Promise<void> {
  const [{ enroll, readRemoteState }, { startSimAgents }] = await Promise.all([import('../src/agent/remote.ts'), import('./agents-sim.ts')]);
  process.on('disconnect', () => process.exit(1));
  const job = await new Promise<Json>((r) => process.once('message', r));
  const { tokens, agentAddress, caFingerprint, dir } = job as { tokens: Array<{ name: string; token: string }>; agentAddress: string; caFingerprint: string; dir: string };
  const send = (m: Json) => process.send!(m);
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < tokens.length) {
      const { name, token } = tokens[next++]!;
      await enroll({ server: agentAddress, token, caFingerprint, stateDir: join(dir, name), role: 'agent' });
    }
  }));
  send({ t: 'enrolled', ms: performance.now() - t0 });
  const [host, port] = [agentAddress.slice(0, agentAddress.lastIndexOf(':')), Number(agentAddress.slice(agentAddress.lastIndexOf(':') + 1))];
  const arrivals: Array<{ kind: string; client: string | undefined; at: number }> = [];
  const t1 = performance.now();
  const sims = await startSimAgents({
    count: tokens.length,
    name: (i) => tokens[i]!.name,
    connect: (i) => new Promise<TLSSocket>((resolve, reject) => {
      const s = readRemoteState(join(dir, tokens[i]!.name), 'agent');
      const socket = tlsConnect({ host, port, ca: s.ca, cert: s.cert, key: s.key });
      socket.once('secureConnect', () => {
        socket.off('error', reject);
        resolve(socket);
      });
      socket.once('error', reject);
    }),
    answer: (j) => {
      // The agent's job id is not the catalog's: a backup is known by its client.
      arrivals.push({ kind: j.kind, client: (j.spec as { client?: string }).client, at: performance.timeOrigin + performance.now() });
      // A probe of the policy's paths finds nothing wrong; a backup is refused at once: a
      // simulated agent reads no files (the job then ends failed, its node session cancelled).
      if (j.kind === 'probe') return { state: 'succeeded', result: { problems: [] } };
      return { state: 'failed', error: { code: 'UNSUPPORTED', message: 'a simulated agent reads no files' } };
    },
  });
  send({ t: 'connected', ms: performance.now() - t1 });
  process.on('message', (m: Json) => {
    if (m.t === 'arrivals') send({ t: 'arrivals', arrivals: arrivals.splice(0) });
    if (m.t === 'close') {
      void sims.close().then(() => {
        const cpu = process.cpuUsage();
        send({ t: 'closed', rss: process.memoryUsage().rss, cpuMs: (cpu.user + cpu.system) / 1000, pings: sims.agents.reduce((n, a) => n + a.stats.pings, 0) });
        setTimeout(() => process.exit(0), 100);
      });
    }
  });
}

/** A child of this script in `mode`, with a message channel. */
function child(mode: string[]): { proc: ChildProcess; next(t: string, timeoutMs?: number): Promise<Json>; send(m: Json): void } {
  const proc = spawn(process.execPath, ['--max-semi-space-size=4', import.meta.filename, ...mode], { env: launcherEnv(), stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  helpers.add(proc);
  proc.once('exit', () => helpers.delete(proc));
  const inbox: Json[] = [];
  let wake: (() => void) | undefined;
  proc.on('message', (m) => {
    inbox.push(m);
    wake?.();
  });
  const gone = new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new Error(`${mode[0]} exited (${code})`))));
  gone.catch(() => {});
  return {
    proc,
    send: (m) => proc.send(m),
    async next(t, timeoutMs = 600_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const i = inbox.findIndex((m) => m.t === t);
        if (i >= 0) return inbox.splice(i, 1)[0];
        if (Date.now() > end) throw new Error(`no ${t} from ${mode[0]} within ${timeoutMs} ms`);
        await Promise.race([new Promise<void>((r) => (wake = r)), sleep(1000), gone]);
      }
    },
  };
}

async function section2(work: string, count: number, pingMs: number, probeMs: number): Promise<void> {
  const dir = join(work, 's2');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  print(`### 2. ${count} simulated agents on one server, ping every ${pingMs} ms (load average at start ${load()})`);
  print();
  const srv = child(['--serve', dir, '--ping-ms', String(pingMs), '--max-jobs', '100']);
  const ready = await srv.next('ready', 120_000);
  const spid = srv.proc.pid!;
  const api = new Api(ready.url);
  await api.login();
  await sleep(3000);
  const base = sample(spid);
  const statusBefore = await api.latency('/api/v1/status', 200);
  const jobsBefore = await api.latency('/api/v1/jobs', 200);

  // Tokens through the API, as an administrator's script would make them.
  const names = Array.from({ length: count }, (_, i) => `sim${String(i + 1).padStart(4, '0')}`);
  const t0 = performance.now();
  const tokens: Array<{ name: string; token: string }> = [];
  for (const name of names) tokens.push({ name, token: (await api.ok('POST', `/api/v1/clients/${name}/enrollment`, { body: {} }, 201)).token });
  const tokenMs = performance.now() - t0;
  const fl = child(['--fleet']);
  fl.send({ t: 'go', tokens, agentAddress: ready.agentAddress, caFingerprint: ready.caFingerprint, dir: join(dir, 'sims') });
  const enrolled = await fl.next('enrolled');
  const connected = await fl.next('connected');
  await waitUntil(`${count} agents registered`, async () => {
    const up = new Set((await api.ok('GET', '/api/v1/status')).agents as string[]);
    return names.every((n) => up.has(n));
  }, 120_000, 500);
  await sleep(3000);
  const withAgents = sample(spid);

  // Heartbeats only: the server's CPU and each ping's round trip.
  srv.send({ t: 'probe', ms: probeMs });
  const idle0 = sample(spid);
  const { rtts } = await srv.next('rtts', probeMs + 60_000);
  const idle1 = sample(spid);
  const statusWith = await api.latency('/api/v1/status', 200);
  const jobsWith = await api.latency('/api/v1/jobs', 200);

  // Dispatch one at a time: apply checks the policy's paths on every connected client in turn.
  const documents = [
    { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'simunit' }, spec: { url: join(dir, 'unit'), maxJobs: 100 } },
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'simkeep' }, spec: { copies: [{ operation: 'backup', storageUnit: 'simunit', retention: '30d' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'sims' }, spec: { clients: names, selections: [{ paths: ['/srv/data'] }], schedules: [{ name: 'full', level: 'full', calendar: FAR_CALENDAR }], lifecycle: 'simkeep' } },
  ];
  const ta = performance.now();
  const applied = await api.ok('POST', '/api/v1/apply', { body: { documents } });
  const applyMs = performance.now() - ta;
  fl.send({ t: 'arrivals' });
  const probes = (await fl.next('arrivals')).arrivals.filter((a: Json) => a.kind === 'probe').map((a: Json) => a.at).sort((a: number, b: number) => a - b);
  const gaps = probes.slice(1).map((t: number, i: number) => t - probes[i]);

  // Dispatch all at once: a backup of every simulated client, queued by one `backup now`.
  const cpuServer0 = sample(spid).cpuMs;
  const cpuNode0 = existsSync(`/proc/${ready.agentPid}`) ? sample(ready.agentPid).cpuMs : NaN;
  const tb = Date.now();
  const queued = (await api.ok('POST', '/api/v1/backups', { body: { policy: 'sims', level: 'full' } }, 202)).jobs as Json[];
  const ended: Json[] = [];
  for (const j of queued) ended.push(await api.waitJob(j.id));
  const allMs = Math.max(...ended.map((j) => j.ended)) - tb;
  fl.send({ t: 'arrivals' });
  const reached = new Map<string, number>((await fl.next('arrivals')).arrivals.filter((a: Json) => a.kind === 'backup').map((a: Json) => [a.client, a.at]));
  const toAgent = ended.filter((j) => reached.has(j.client)).map((j) => reached.get(j.client)! - j.queued);
  const toEnd = ended.map((j) => j.ended - j.queued);
  const startedToAgent = ended.filter((j) => reached.has(j.client)).map((j) => reached.get(j.client)! - j.started);
  const cpuServer = sample(spid).cpuMs - cpuServer0;
  const cpuNode = existsSync(`/proc/${ready.agentPid}`) ? sample(ready.agentPid).cpuMs - cpuNode0 : NaN;
  const states = new Map<string, number>();
  for (const j of ended) states.set(`${j.state}${j.error?.code ? ` (${j.error.code})` : ''}`, (states.get(`${j.state}${j.error?.code ? ` (${j.error.code})` : ''}`) ?? 0) + 1);
  const odd = ended.find((j) => !reached.has(j.client));
  if (odd) print(`A job that never reached its agent: ${JSON.stringify({ state: odd.state, error: odd.error, attempt: odd.attempt })}\n\n${(await api.ok('GET', `/api/v1/jobs/${odd.id}/logs`)).items.map((l: Json) => l.message).join('\n')}\n`);
  if (applied.warnings?.length) print(`Apply's first warning: ${JSON.stringify(applied.warnings[0])}\n`);
  const peak = sample(spid);
  const embedded = existsSync(`/proc/${ready.agentPid}`) ? sample(ready.agentPid) : undefined;

  fl.send({ t: 'close' });
  const fleetCost = await fl.next('closed');
  srv.send({ t: 'stop' });
  await new Promise((r) => srv.proc.once('exit', r));

  table(['measure', 'value'], [
    [`${count} enrollment tokens through the API, one after another`, `${sec(tokenMs)} s (${(tokenMs / count).toFixed(1)} ms each)`],
    [`${count} enrollments (key pair, CSR, \`enroll\` on the agent port), 8 at a time`, `${sec(enrolled.ms)} s (${(enrolled.ms / count).toFixed(1)} ms each)`],
    [`${count} connected and welcomed (mutual TLS), 50 at a time`, `${sec(connected.ms)} s`],
    ['server RSS MiB: before / with the agents / after the dispatches (peak)', `${mib(base.rss)} / ${mib(withAgents.rss)} / ${mib(peak.rss)} (${mib(peak.hwm)}); ${((withAgents.rss - base.rss) / count / 1024).toFixed(0)} KiB per agent`],
    [`server CPU while idle (${probeMs / 1000} s, heartbeats only)`, `${sec(idle1.cpuMs - idle0.cpuMs)} s (${((100 * (idle1.cpuMs - idle0.cpuMs)) / probeMs).toFixed(1)} % of a core)`],
    ['heartbeat ping → pong at the server, p50 / p99 / max', dist(rtts)],
    [`dispatch one at a time (apply probes ${count} clients' paths): apply`, `${sec(applyMs)} s, ${applied.warnings?.length ?? 0} warnings`],
    ['  between one probe reaching an agent and the next, p50 / p99 / max', dist(gaps)],
    [`dispatch all at once (\`backup now\` of ${count} clients, max-jobs 100): all ended`, `${sec(allMs)} s; ${[...states].map(([s, n]) => `${n} ${s}`).join(', ')}`],
    ['  queued → job.start reached the agent, p50 / p99 / max', dist(toAgent)],
    ['  queued → ended in the catalog, p50 / p99 / max', dist(toEnd)],
    ['  started → job.start reached the agent (the node\'s session opened first), p50 / p99 / max', dist(startedToAgent)],
    [`  CPU s of the server / of the embedded agent (the node) for the ${count} jobs`, `${sec(cpuServer)} / ${sec(cpuNode)}`],
    ['`GET /api/v1/status` without / with the agents, p50 / p99 / max', `${dist(statusBefore)}; ${dist(statusWith)}`],
    ['`GET /api/v1/jobs` without / with the agents, p50 / p99 / max', `${dist(jobsBefore)}; ${dist(jobsWith)}`],
    ['embedded agent (node of the unit) at the end: RSS / peak MiB', embedded ? `${mib(embedded.rss)} / ${mib(embedded.hwm)}` : 'gone'],
    ['the simulated agents\' process: RSS MiB, CPU s, pings answered', `${mib(fleetCost.rss)}, ${sec(fleetCost.cpuMs)}, ${fleetCost.pings}`],
  ]);
  print(`Load average at the end ${load()}.`);
  print();
  rmSync(dir, { recursive: true, force: true });
}

// ---- main ------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      sections: { type: 'string', default: '1,2,3' },
      runs: { type: 'string', default: '2' },
      sims: { type: 'string', default: '1000' },
      vms: { type: 'string', default: 'vm01,vm02,vm03,vm04,vm05,vm06,vm07,vm08' },
      'ping-ms': { type: 'string', default: '1000' },
      'probe-s': { type: 'string', default: '20' },
      'max-jobs': { type: 'string', default: '100' },
      work: { type: 'string', default: '/tmp/bench12' },
      out: { type: 'string' },
      profile: { type: 'string' },
      serve: { type: 'string' },
      fleet: { type: 'boolean' },
    },
  });
  if (a.serve) return serve(a.serve, Number(a['ping-ms']), Number(a['max-jobs']));
  if (a.fleet) return fleet();
  PROFILE_DIR = a.profile;
  const sections = a.sections.split(',').map(Number);
  const runs = Number(a.runs);
  const sims = Number(a.sims);
  const vms = a.vms.split(',');
  if (!sections.every((s) => [1, 2, 3].includes(s)) || !(runs >= 1) || !(sims >= 1)) throw new Error('Cannot run: --sections takes 1, 2 and 3 (comma-separated); --runs and --sims positive numbers');
  for (const vm of vms) if (!existsSync(join(DATA, vm))) throw new Error(`Cannot run: ${join(DATA, vm)} does not exist (the shared data set, made by ../shared/bench)`);
  process.on('SIGINT', () => void stopAll().then(() => process.exit(130)));
  const started = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  print(`## Agents and storage nodes: \`${['npx node bench/agents.ts', ...process.argv.slice(2)].join(' ')}\``);
  print();
  print(`${started}; ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; load average ${load()}`);
  print();
  try {
    for (let run = 1; run <= runs; run++) {
      print(`## Run ${run} of ${runs}`);
      print();
      for (const s of sections) {
        if (s === 1) await section1(a.work, vms);
        if (s === 2) await section2(a.work, sims, Number(a['ping-ms']), Number(a['probe-s']) * 1000);
        if (s === 3) await section3(a.work, vms[0]!);
      }
    }
  } finally {
    await stopAll();
    if (a.out) {
      mkdirSync(a.out, { recursive: true });
      writeFileSync(join(a.out, `agents-${started.replace(/:/g, '')}-s${sections.join('')}.md`), report);
    }
  }
}

if (import.meta.main) await main();
