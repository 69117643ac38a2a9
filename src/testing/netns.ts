// Real multi-host tests on one Linux machine (issue #12): each host of a test gets its own network
// namespace with one interface, `eth0`, plugged into a Linux bridge that lives in a "switch"
// namespace of its own. Processes run inside a host's namespace (`ip netns exec`) and reach the
// other hosts by address over real TCP; a link can be cut and restored (`ip link set down/up`),
// and processes killed, while the test watches what the system under test does about it.
//
// Nothing is created in the root namespace except the namespaces' names: no interface, address or
// route, so a process inside can reach only loopback and the other hosts of its own network, and
// the test process itself reaches none of them (it talks to them through processes it spawns
// inside). Networks are isolated from each other too; each still gets its own 10.a.b.0/24, chosen
// away from the subnets of networks already present, so that addresses in logs are unambiguous.
//
// Names: the switch is `cofnet-<index>-<pid>`, a host `cofnet-<index>-<pid>-<host>` (the pid of
// the test process that made it). Inside the namespaces interface names are fixed and short (`eth0`
// in a host, `br0` and `p<i>` in the switch): they cannot collide across namespaces. Cleanup:
// destroy() kills every process the network started (each is a process group leader, so their
// children go too, and whatever else `ip netns pids` still finds inside) and deletes the
// namespaces, which takes the veth pairs and the bridge with them. The same happens synchronously
// when the test process exits or gets SIGINT, SIGTERM or SIGHUP; a network left by a test process
// that was SIGKILLed is removed by the next createNetwork() (its pid is gone).
//
// Needs root and iproute2's `ip` (netnsAvailable() says which is missing). The multi-host tests
// do not skip without them: they fail with that reason, as the house rules ask.

import { execFile, execFileSync, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { CofferError } from '../core/errors.ts';

const PREFIX = 'cofnet-';
const NAME_RE = /^cofnet-(\d+)-(\d+)(?:-([a-z][a-z0-9]*))?$/;
/** Host names: short, so that a namespace name stays readable in `ip netns list`. */
const HOST_RE = /^[a-z][a-z0-9]{0,23}$/;
const MAX_HOSTS = 250;
const IP = 'ip';

/** Whether this process can build test networks, and if not, why (a sentence for the failure). */
export function netnsAvailable(): { ok: true } | { ok: false; reason: string } {
  if (process.platform !== 'linux') return { ok: false, reason: `network namespaces need Linux; this is ${process.platform}` };
  const uid = process.getuid?.();
  if (uid !== 0) return { ok: false, reason: `creating network namespaces needs root, and this process runs as uid ${uid}: run the multi-host tests as root (CI does), e.g. sudo -E npx node --test test/netns.test.ts` };
  try {
    execFileSync(IP, ['-V'], { stdio: 'ignore', timeout: 10_000 });
  } catch {
    return { ok: false, reason: 'the `ip` command of iproute2 is not installed or not on PATH: install it (apt-get install iproute2)' };
  }
  return { ok: true };
}

/** Throws, saying what is missing, when netnsAvailable() is not ok. */
export function requireNetns(): void {
  const a = netnsAvailable();
  if (!a.ok) throw new CofferError('UNSUPPORTED', `Cannot create a test network: ${a.reason}`, { hint: 'The multi-host tests need a Linux machine with root and iproute2.' });
}

export interface NetworkOptions {
  /** The hosts, by name (lowercase letters and digits, starting with a letter); each gets a namespace and an address. */
  hosts: string[];
  /** How many bytes of each process's output (stdout and stderr together) to keep (default 64 KiB). */
  outputBytes?: number;
}

export interface SpawnInHostOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** 'pipe' to write to the process's stdin (default 'ignore'). */
  stdin?: 'pipe' | 'ignore';
}

/** A process running in a host's namespace. stdout and stderr stay readable as streams too. */
export interface HostProcess {
  readonly host: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** What it ran, for reports. */
  readonly command: string;
  /** Resolves when it has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last outputBytes of its stdout and stderr, interleaved as they came. */
  output(): string;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to its stdin, which is then closed. */
  input?: string | Buffer;
  /** Killed after this long and the call rejects with what it printed (default 30 s). */
  timeoutMs?: number;
}

/** Which end of a host's cable a link cut acts on. */
export interface LinkOptions {
  /**
   * 'switch' (default): the bridge port goes down, the host's eth0 loses its carrier but keeps its
   * address and route, so packets go nowhere and connections stall, like a pulled cable. 'host':
   * the host's own eth0 goes administratively down and its route goes with it, so sends fail at
   * once (ENETUNREACH), like an interface shut down on the host.
   */
  side?: 'switch' | 'host';
}

/** Keeps the last `limit` bytes written to it. */
export class OutputRing {
  private chunks: Buffer[] = [];
  private size = 0;
  private readonly limit: number;

  constructor(limit: number) {
    this.limit = limit;
  }

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0]!.length >= this.limit) this.size -= this.chunks.shift()!.length;
  }

  toString(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString('utf8');
  }
}

/** Runs `ip` with args, rejecting with its stderr on failure. */
function ip(args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(IP, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      if (error) reject(new CofferError('INTERNAL', `Cannot set up the test network: ip ${args.join(' ')} failed: ${(stderr || error.message).trim()}`));
      else resolve(stdout);
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** Runs `ip` commands in one process (`ip -batch -`), in namespace `ns` when given. */
function ipBatch(ns: string | undefined, lines: string[]): Promise<string> {
  return ip([...(ns ? ['-n', ns] : []), '-batch', '-'], lines.join('\n') + '\n');
}

function listNamespaces(): string[] {
  const out = execFileSync(IP, ['netns', 'list'], { encoding: 'utf8', timeout: 30_000 });
  return out.split('\n').map((l) => l.trim().split(/\s+/)[0]!).filter((n) => n.length > 0);
}

/** Whether process `pid` runs (a zombie, dead but not yet collected by its parent, does not). */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Kills every process inside namespace `ns` and deletes it; synchronous, quiet about what is already gone. */
function removeNamespaceSync(ns: string): void {
  try {
    const pids = execFileSync(IP, ['netns', 'pids', ns], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'ignore'] });
    for (const p of pids.split('\n').map(Number).filter((n) => n > 0)) killQuietly(p, 'SIGKILL');
  } catch { /* no such namespace, or it holds no process */ }
  try {
    execFileSync(IP, ['netns', 'del', ns], { stdio: 'ignore', timeout: 30_000 });
  } catch { /* already gone */ }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  if (pid <= 1) return;
  try {
    process.kill(pid, signal);
  } catch { /* already gone */ }
}

/** Signals a spawned process's whole group (never a group of a process that did not start). */
function killGroup(proc: HostProcess, signal: NodeJS.Signals): void {
  if (proc.pid <= 1) return;
  try {
    process.kill(-proc.pid, signal);
  } catch { /* already gone */ }
}

/** Networks of this process not destroyed yet, for the exit and signal handlers. */
const live = new Set<Network>();
let counter = 0;
let handlersInstalled = false;

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', destroyAllSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      destroyAllSync();
      // Alone, re-raise so the process ends as the signal says; with other handlers (the test
      // runner's), let them decide.
      if (process.listenerCount(signal) === 1) {
        process.removeListener(signal, onSignal);
        process.kill(process.pid, signal);
      }
    };
    process.on(signal, onSignal);
  }
}

function destroyAllSync(): void {
  for (const net of live) net.destroySync();
}

/**
 * Removes namespaces of networks whose test process is gone (it was SIGKILLed or crashed before
 * it could clean up), and any of this pid's that no live network of this process owns (a
 * process that had the same pid before).
 */
export function removeLeftovers(): string[] {
  const owned = new Set([...live].flatMap((n) => n.namespaces));
  const removed: string[] = [];
  for (const ns of listNamespaces()) {
    const m = NAME_RE.exec(ns);
    if (!m) continue;
    const pid = Number(m[2]);
    const stale = pid === process.pid ? !owned.has(ns) : !isAlive(pid);
    if (!stale) continue;
    removeNamespaceSync(ns);
    removed.push(ns);
  }
  return removed;
}

/** A subnet index (10.<i>>8>.<i&255>.0/24) no network now present uses, starting from one derived from the pid. */
function chooseIndex(): number {
  const used = new Set(listNamespaces().map((n) => NAME_RE.exec(n)).filter((m) => m !== null).map((m) => Number(m[1])));
  const start = ((process.pid * 16 + counter++) % 65_000) + 256; // 10.1.0.0 and up
  for (let i = 0; i < 65_000; i++) {
    const index = ((start - 256 + i) % 65_000) + 256;
    if (!used.has(index)) return index;
  }
  throw new CofferError('CONFLICT', 'Cannot create a test network: every test subnet is in use', { hint: `Remove leftover namespaces: ip netns list | grep ${PREFIX}` });
}

/** Builds a network of `hosts`, each in its own namespace, on one bridge. */
export async function createNetwork(options: NetworkOptions): Promise<Network> {
  requireNetns();
  const hosts = options.hosts;
  if (hosts.length === 0 || hosts.length > MAX_HOSTS) throw new CofferError('USAGE', `Cannot create a test network of ${hosts.length} hosts: give 1 to ${MAX_HOSTS}`);
  for (const h of hosts) {
    if (!HOST_RE.test(h)) throw new CofferError('USAGE', `Cannot create a test network: host name ${JSON.stringify(h)} is not lowercase letters and digits starting with a letter (at most 24)`);
  }
  if (new Set(hosts).size !== hosts.length) throw new CofferError('USAGE', 'Cannot create a test network: a host name appears twice');
  installHandlers();
  removeLeftovers();
  const net = new Network(chooseIndex(), hosts, options.outputBytes ?? 64 << 10);
  live.add(net);
  try {
    await net.build();
  } catch (e) {
    await net.destroy();
    throw e;
  }
  return net;
}

export class Network {
  /** The subnet, as 10.a.b.0/24. */
  readonly subnet: string;
  readonly hosts: readonly string[];
  private readonly index: number;
  private readonly switchNs: string;
  private readonly processes = new Set<HostProcess>();
  private readonly outputBytes: number;
  private destroyed = false;

  /** Use createNetwork(). */
  constructor(index: number, hosts: string[], outputBytes: number) {
    this.index = index;
    this.hosts = [...hosts];
    this.outputBytes = outputBytes;
    this.switchNs = `${PREFIX}${index}-${process.pid}`;
    this.subnet = `10.${index >> 8}.${index & 255}.0/24`;
  }

  /** Every namespace of this network: the switch's, then the hosts'. */
  get namespaces(): string[] {
    return [this.switchNs, ...this.hosts.map((h) => this.namespace(h))];
  }

  /** The namespace a host's processes run in (for `ip netns exec` by hand when debugging). */
  namespace(host: string): string {
    this.slot(host);
    return `${this.switchNs}-${host}`;
  }

  /** The host's IPv4 address. */
  address(host: string): string {
    return `10.${this.index >> 8}.${this.index & 255}.${this.slot(host) + 1}`;
  }

  /** @internal Makes the namespaces, the bridge and one veth pair per host. */
  async build(): Promise<void> {
    await ipBatch(undefined, this.namespaces.map((ns) => `netns add ${ns}`));
    const sw = ['link add br0 type bridge forward_delay 0', 'link set br0 up', 'link set lo up'];
    this.hosts.forEach((h, i) => {
      sw.push(`link add p${i} type veth peer name eth0 netns ${this.namespace(h)}`, `link set p${i} master br0`, `link set p${i} up`);
    });
    await ipBatch(this.switchNs, sw);
    await Promise.all(this.hosts.map((h) => ipBatch(this.namespace(h), [
      'link set lo up',
      `addr add ${this.address(h)}/24 dev eth0`,
      'link set eth0 up',
    ])));
    await Promise.all(this.hosts.map((h) => this.waitCarrier(h)));
  }

  /**
   * Starts `command args` in the host's namespace, as the leader of a new process group (so that
   * kill() and destroy() reach what it starts in turn). Its output is kept in a ring (output()).
   */
  spawn(host: string, command: string, args: string[] = [], options: SpawnInHostOptions = {}): HostProcess {
    this.assertLive();
    const stdio: StdioOptions = [options.stdin ?? 'ignore', 'pipe', 'pipe'];
    const child = spawn(IP, ['netns', 'exec', this.namespace(host), command, ...args], { stdio, env: options.env ?? process.env, cwd: options.cwd, detached: true });
    const ring = new OutputRing(this.outputBytes);
    child.stdout!.on('data', (c: Buffer) => ring.push(c));
    child.stderr!.on('data', (c: Buffer) => ring.push(c));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', (e) => {
        ring.push(Buffer.from(`\n[could not start: ${e.message}]\n`));
        resolve({ code: null, signal: null });
      });
    });
    const proc: HostProcess = { host, child, pid: child.pid ?? -1, command: [command, ...args].join(' '), exited, output: () => ring.toString() };
    this.processes.add(proc);
    return proc;
  }

  /** Runs `command args` in the host's namespace to its end; never rejects on a non-zero exit. */
  async exec(host: string, command: string, args: string[] = [], options: ExecOptions = {}): Promise<ExecResult> {
    const proc = this.spawn(host, command, args, { env: options.env, cwd: options.cwd, stdin: options.input === undefined ? 'ignore' : 'pipe' });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    proc.child.stdout!.on('data', (c: Buffer) => out.push(c));
    proc.child.stderr!.on('data', (c: Buffer) => err.push(c));
    if (options.input !== undefined) proc.child.stdin!.end(options.input);
    const timeoutMs = options.timeoutMs ?? 30_000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(proc, 'SIGKILL');
    }, timeoutMs);
    const { code, signal } = await proc.exited;
    clearTimeout(timer);
    this.processes.delete(proc);
    const result = { code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
    if (timedOut) throw new CofferError('CANCELLED', `Cannot run ${proc.command} on ${host}: it did not finish within ${timeoutMs} ms (killed)`, { hint: `Its output: ${proc.output().slice(-2000)}` });
    return result;
  }

  /**
   * Sends `signal` (default SIGKILL) to the process and every process of its group, and resolves
   * when the process has exited.
   */
  async kill(proc: HostProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (proc.child.exitCode === null && proc.child.signalCode === null) killGroup(proc, signal);
    return proc.exited;
  }

  /** Cuts the host's link (see LinkOptions for which end). */
  async linkDown(host: string, options: LinkOptions = {}): Promise<void> {
    this.assertLive();
    await this.setLink(host, 'down', options.side ?? 'switch');
  }

  /** Restores the host's link and waits until its eth0 has a carrier again. */
  async linkUp(host: string, options: LinkOptions = {}): Promise<void> {
    this.assertLive();
    await this.setLink(host, 'up', options.side ?? 'switch');
    await this.waitCarrier(host);
  }

  /**
   * Waits until `port` on `host` accepts TCP connections, trying from inside host `from` (default:
   * the host itself) to `host`'s address. Rejects after timeoutMs (default 10 s) with the last error.
   */
  async waitForPort(host: string, port: number, options: { from?: string; timeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const r = await this.exec(options.from ?? host, process.execPath, ['-e', WAIT_SCRIPT, this.address(host), String(port), String(timeoutMs)], { timeoutMs: timeoutMs + 10_000 });
    if (r.code !== 0) throw new CofferError('STORAGE_UNAVAILABLE', `Cannot reach ${host} (${this.address(host)}) port ${port} from ${options.from ?? host} within ${timeoutMs} ms: ${r.stderr.trim() || `exit ${r.code ?? r.signal}`}`, { hint: 'Is the process listening on that port and on this address (or 0.0.0.0)? Print net.report() to see its output.' });
  }

  /** The processes started and not yet exited-and-collected, with their output: for a failing test's log. */
  report(): string {
    return [...this.processes].map((p) => {
      const state = p.child.exitCode !== null ? `exit ${p.child.exitCode}` : p.child.signalCode ? `killed by ${p.child.signalCode}` : 'running';
      return `--- ${p.host}: ${p.command} (pid ${p.pid}, ${state}) ---\n${p.output()}`;
    }).join('\n');
  }

  /** Kills every process this network started and deletes its namespaces (and with them its links). Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    const procs = [...this.processes];
    for (const p of procs) killGroup(p, 'SIGKILL');
    await Promise.race([Promise.all(procs.map((p) => p.exited)), new Promise((r) => setTimeout(r, 5_000).unref())]);
    // Whatever is still inside (a process that left its group) goes too, then the namespaces.
    for (const ns of this.namespaces) removeNamespaceSync(ns);
    live.delete(this);
  }

  /** @internal The exit and signal handlers' destroy(): no waiting. */
  destroySync(): void {
    this.destroyed = true;
    for (const p of this.processes) killGroup(p, 'SIGKILL');
    for (const ns of this.namespaces) removeNamespaceSync(ns);
    live.delete(this);
  }

  private slot(host: string): number {
    const i = this.hosts.indexOf(host);
    if (i < 0) throw new CofferError('USAGE', `No host ${JSON.stringify(host)} in this test network: it has ${this.hosts.join(', ')}`);
    return i;
  }

  private assertLive(): void {
    if (this.destroyed) throw new CofferError('USAGE', 'Cannot use the test network: it was destroyed');
  }

  private async setLink(host: string, state: 'up' | 'down', side: 'switch' | 'host'): Promise<void> {
    if (side === 'switch') await ip(['-n', this.switchNs, 'link', 'set', `p${this.slot(host)}`, state]);
    else await ip(['-n', this.namespace(host), 'link', 'set', 'eth0', state]);
  }

  /** Waits until the host's eth0 is up with a carrier (a veth pair comes up a moment after both ends are set up). */
  private async waitCarrier(host: string): Promise<void> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const out = await ip(['-n', this.namespace(host), '-o', 'link', 'show', 'eth0']);
      if (/[<,]LOWER_UP[,>]/.test(out) && /[<,]UP[,>]/.test(out)) return;
      if (Date.now() > deadline) throw new CofferError('INTERNAL', `Cannot bring up ${host}'s link: eth0 is still ${out.trim()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * Resolves once the process's kept output (stdout and stderr) matches `pattern`, e.g. a server's
 * "listening" line; rejects after timeoutMs (default 10 s) with what it printed.
 */
export function waitForOutput(proc: HostProcess, pattern: RegExp, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const check = () => {
      if (settled || !pattern.test(proc.output())) return;
      settled = true;
      cleanup();
      resolve();
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new CofferError('CANCELLED', `${proc.host}: ${proc.command} did not print ${pattern} within ${timeoutMs} ms; it printed:\n${proc.output()}`));
    }, timeoutMs);
    // Its output is all in once the process has closed its streams: no point waiting longer.
    const onClose = () => {
      check();
      cleanup();
      reject(new CofferError('CANCELLED', `${proc.host}: ${proc.command} ended (${proc.child.signalCode ?? `exit ${proc.child.exitCode}`}) without printing ${pattern}; it printed:\n${proc.output()}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      proc.child.stdout!.off('data', check);
      proc.child.stderr!.off('data', check);
      proc.child.off('close', onClose);
    };
    proc.child.stdout!.on('data', check);
    proc.child.stderr!.on('data', check);
    proc.child.on('close', onClose);
    check();
    const c = proc.child;
    if (!settled && (c.exitCode !== null || c.signalCode !== null) && c.stdout!.destroyed && c.stderr!.destroyed) onClose();
  });
}

/** Run by waitForPort inside a namespace: connect until it works or time runs out (argv: address, port, ms). */
const WAIT_SCRIPT = `
const net = require('node:net');
const [address, port, ms] = process.argv.slice(1);
const deadline = Date.now() + Number(ms);
let last = 'no attempt';
function attempt() {
  const s = net.connect({ host: address, port: Number(port), timeout: 1000 });
  s.once('connect', () => { s.destroy(); process.exit(0); });
  s.once('timeout', () => { s.destroy(new Error('connect timed out')); });
  s.once('error', (e) => {
    last = e.code || e.message;
    if (Date.now() > deadline) { process.stderr.write(last); process.exit(1); }
    setTimeout(attempt, 50);
  });
}
attempt();
`;
