// Many agents connected to one server (issue #12, "Measure" (2)): simulated agents
// (src/testing/sim-agent.ts: they speak the agent protocol and do no work) over mutual TLS,
// N of them in a process of their own, against a server side made of the real AgentLink per
// connection. It reports the server side's memory per connection, its CPU while the agents are
// idle, heartbeat round trips and job-dispatch latency, at p50/p99.
//
//   npx node bench/agents-sim.ts [--agents 1000] [--ping-ms 1000] [--idle-s 10] [--rounds 5] [--md FILE]
//
// Until `coffer server` accepts remote agents, the server side here is a stand-in: a TLS listener
// in this process giving each connection an AgentLink, which is what the server will do; then the
// listener is the server's and startSimAgents() (the reusable part, below) is pointed at it with
// the certificates from enrollment. The agents run in a child process (this script with --fleet)
// so that their CPU and memory are not counted as the server's.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Writable, type Duplex } from 'node:stream';
import { connect as tlsConnect, createServer as tlsServer, type TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';
import { PROTOCOL_VERSION } from '../src/agent/protocol.ts';
import { AgentLink } from '../src/server/agent-link.ts';
import { SimAgent, type SimAgentOptions } from '../src/testing/sim-agent.ts';
import { testCertificates } from '../src/testing/tls.ts';

export interface SimFleetOptions extends Omit<SimAgentOptions, 'name' | 'protocol'> {
  count: number;
  /** Opens agent i's connection (TLS, plain TCP, or in-process). */
  connect: (i: number) => Promise<Duplex>;
  /** Agent i's name (default sim0001, sim0002, ...). */
  name?: (i: number) => string;
  /** The protocol version announced (default this release's). */
  protocol?: number;
  /** How many connect at once (default 50): a thousand handshakes at once is a test of the backlog, not of the server. */
  concurrency?: number;
}

export interface SimFleet {
  agents: SimAgent[];
  /** Closes every connection and waits until each has ended. */
  close(): Promise<void>;
}

/** Starts `count` simulated agents and resolves once every one has been welcomed; rejects with the first failure. */
export async function startSimAgents(options: SimFleetOptions): Promise<SimFleet> {
  const { count, connect, name = (i) => `sim${String(i + 1).padStart(4, '0')}`, concurrency = 50, ...agentOptions } = options;
  const agents: SimAgent[] = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const stream = await connect(i);
      agents[i] = new SimAgent(stream, { ...agentOptions, name: name(i), protocol: options.protocol ?? PROTOCOL_VERSION });
      await agents[i].welcomed;
    }
  };
  const fleet = {
    agents,
    async close() {
      const live = agents.filter(Boolean);
      for (const a of live) a.close();
      await Promise.all(live.map((a) => a.closed));
    },
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  } catch (e) {
    await fleet.close();
    throw e;
  }
  return fleet;
}

/** A connect() for startSimAgents over mutual TLS. */
export function tlsConnector(options: { host: string; port: number; ca: string; cert: string; key: string; servername?: string }): (i: number) => Promise<Duplex> {
  return () => new Promise<TLSSocket>((resolve, reject) => {
    const socket = tlsConnect({ host: options.host, port: options.port, ca: options.ca, cert: options.cert, key: options.key, servername: options.servername });
    socket.once('secureConnect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function summary(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  return `p50 ${percentile(s, 50).toFixed(2)} ms, p99 ${percentile(s, 99).toFixed(2)} ms, max ${s.at(-1)!.toFixed(2)} ms (n=${s.length})`;
}

const mb = (bytes: number) => (bytes / 1048576).toFixed(1);

/**
 * The server side's output to one agent, timing each ping it writes; `pong(n)` gives the round
 * trip of ping n. Costs a regex test per line written, the same for every connection.
 */
class PingTimer extends Writable {
  readonly rtts: number[];
  private readonly socket: Duplex;
  private readonly sent = new Map<number, number>();

  constructor(socket: Duplex, rtts: number[]) {
    super();
    this.socket = socket;
    this.rtts = rtts;
    socket.on('data', (chunk: Buffer) => {
      for (const m of chunk.toString('latin1').matchAll(/"t":"pong","n":(\d+)/g)) this.pong(Number(m[1]));
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (e?: Error | null) => void): void {
    const m = /^\{"t":"ping","n":(\d+)\}/.exec(chunk.toString('latin1', 0, 40));
    if (m) this.sent.set(Number(m[1]), performance.now());
    this.socket.write(chunk, callback);
  }

  override _final(callback: () => void): void {
    this.socket.end(callback);
  }

  private pong(n: number): void {
    const at = this.sent.get(n);
    if (at === undefined) return;
    this.sent.delete(n);
    this.rtts.push(performance.now() - at);
  }
}

async function runFleet(port: number, count: number, certsJson: string): Promise<void> {
  const certs = JSON.parse(certsJson) as Awaited<ReturnType<typeof testCertificates>>;
  const fleet = await startSimAgents({ count, connect: tlsConnector({ host: '127.0.0.1', port, ca: certs.ca, ...certs.client }) });
  process.stdout.write(`connected ${fleet.agents.length}\n`);
  // Runs until the server closes the connections, then reports what it cost.
  await Promise.all(fleet.agents.map((a) => a.closed));
  const cpu = process.cpuUsage();
  process.stdout.write(JSON.stringify({ rss: process.memoryUsage().rss, cpuMs: (cpu.user + cpu.system) / 1000, pings: fleet.agents.reduce((n, a) => n + a.stats.pings, 0) }) + '\n');
}

async function main(): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      agents: { type: 'string', default: '1000' },
      'ping-ms': { type: 'string', default: '1000' },
      'idle-s': { type: 'string', default: '10' },
      rounds: { type: 'string', default: '5' },
      md: { type: 'string' },
      fleet: { type: 'string' },
      port: { type: 'string' },
    },
  });
  if (args.fleet) return runFleet(Number(args.port), Number(args.fleet), process.env.SIM_CERTS!);
  const count = Number(args.agents);
  const pingMs = Number(args['ping-ms']);
  const idleMs = Number(args['idle-s']) * 1000;
  const rounds = Number(args.rounds);
  if (!(count > 0 && pingMs >= 10 && idleMs >= 0 && rounds >= 1)) throw new Error('Cannot run: --agents, --ping-ms (>= 10), --idle-s and --rounds must be positive numbers');

  const certs = await testCertificates();
  const links: AgentLink[] = [];
  const rtts: number[] = [];
  const rssBefore = process.memoryUsage().rss;
  const server = tlsServer({ ca: certs.ca, cert: certs.server.cert, key: certs.server.key, requestCert: true, rejectUnauthorized: true }, (socket) => {
    links.push(new AgentLink(socket, new PingTimer(socket, rtts), { pingMs }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;

  const t0 = performance.now();
  const fleet = spawn(process.execPath, [import.meta.filename, '--fleet', String(count), '--port', String(port)], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, SIM_CERTS: JSON.stringify(certs) } });
  const lines: string[] = [];
  let waiter: (() => void) | undefined;
  fleet.stdout.setEncoding('utf8').on('data', (d: string) => {
    lines.push(...d.split('\n').filter(Boolean));
    waiter?.();
  });
  const line = (re: RegExp) => new Promise<string>((resolve, reject) => {
    const check = () => {
      const l = lines.find((x) => re.test(x));
      if (l) resolve(l);
    };
    waiter = check;
    fleet.once('exit', (code) => reject(new Error(`the agents' process exited (${code})`)));
    check();
  });
  await line(/^connected/);
  await Promise.all(links.map((l) => l.ready));
  const connectMs = performance.now() - t0;
  global.gc?.();
  const rssConnected = process.memoryUsage().rss;

  // Idle: heartbeats only.
  rtts.length = 0;
  const cpu0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, idleMs));
  const cpu1 = process.cpuUsage(cpu0);
  const heartbeats = [...rtts];

  // Dispatch: a job to every agent at once, `rounds` times.
  const dispatch: number[] = [];
  let roundMs = 0;
  for (let r = 0; r < rounds; r++) {
    const start = performance.now();
    await Promise.all(links.map(async (l, i) => {
      const t = performance.now();
      const done = await l.start(`r${r}-${i}`, 'probe', {}, () => {});
      if (done.state !== 'succeeded') throw new Error(`job r${r}-${i} ended ${done.state}`);
      dispatch.push(performance.now() - t);
    }));
    roundMs += performance.now() - start;
  }
  const rssPeak = process.memoryUsage().rss;

  for (const l of links) l.close('the benchmark is over');
  const fleetCost = JSON.parse(await line(/^\{/)) as { rss: number; cpuMs: number; pings: number };
  server.close();

  const table = [
    `agents-sim: ${count} simulated agents over mutual TLS (ECDSA P-256) on loopback, ping every ${pingMs} ms`,
    '',
    '| measure | value |',
    '| --- | --- |',
    `| all connected and welcomed | ${connectMs.toFixed(0)} ms |`,
    `| server side RSS: before, with ${count} agents, after dispatch | ${mb(rssBefore)} MB, ${mb(rssConnected)} MB, ${mb(rssPeak)} MB (${((rssConnected - rssBefore) / count / 1024).toFixed(1)} KB per agent) |`,
    `| server side CPU while idle (${idleMs / 1000} s) | ${((cpu1.user + cpu1.system) / 1000).toFixed(0)} ms (${((cpu1.user + cpu1.system) / 10 / idleMs).toFixed(2)} % of a core) |`,
    `| heartbeat round trip | ${heartbeats.length ? summary(heartbeats) : 'none (idle shorter than a ping interval)'} |`,
    `| job dispatch to done, ${count} at once, ${rounds} rounds | ${summary(dispatch)}; a round ${(roundMs / rounds).toFixed(0)} ms |`,
    `| the agents' process | RSS ${mb(fleetCost.rss)} MB, CPU ${fleetCost.cpuMs.toFixed(0)} ms, ${fleetCost.pings} pings answered |`,
  ].join('\n');
  console.log(table);
  if (args.md) writeFileSync(args.md, table + '\n');
}

if (import.meta.main) await main();
