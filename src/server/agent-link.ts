// The server's side of one agent connection (docs/server.md "Agent protocol"): the handshake,
// starting and cancelling jobs, their events and outcomes, and liveness. The embedded agent is a
// child process (`coffer agent stdio`) on the other end of its stdin/stdout; remote agents and
// storage nodes are the same link over a mutual-TLS socket (agent-port.ts), with the hello checked
// against the certificate and certificate renewal (the options below).

import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { CofferError } from '../core/errors.ts';
import type { JobEvent } from '../jobs/events.ts';
import {
  LineReader,
  PROTOCOL_VERSION,
  encodeMessage,
  parseToServer,
  refusalFor,
  type DoneState,
  type JobError,
  type NodeLoad,
  type RefusalCode,
  type ToAgent,
  type ToServer,
} from '../agent/protocol.ts';

export interface AgentHello {
  name: string;
  version: string;
  host: Record<string, unknown>;
}

export interface JobDone {
  state: DoneState | 'interrupted';
  result?: Record<string, unknown>;
  error?: JobError;
}

interface RunningJob {
  onEvent: (e: JobEvent) => void;
  resolve: (d: JobDone) => void;
}

export interface AgentLinkOptions {
  /** Ping interval; an agent that misses two pongs is taken for dead (default 15 s). */
  pingMs?: number;
  /** How long to wait for the agent's hello (default 30 s). */
  helloTimeoutMs?: number;
  /** The end of the input ends the link (default true; a child process's exit does instead). */
  closeOnEnd?: boolean;
  /**
   * How long a failed pipe (EPIPE: the other end is gone) waits for a better reason before it
   * closes the link (default 0). A child process's exit says why it went (killed, crashed), which
   * is what an administrator needs to read, and it usually comes a moment after the pipe broke.
   */
  streamErrorGraceMs?: number;
  /**
   * A remote connection's check of the hello (src/server/agent-port.ts): a refusal when the name
   * it gives is not its certificate's, undefined to welcome it.
   */
  checkHello?: (hello: AgentHello) => { reason: string; code: RefusalCode } | undefined;
  /** A remote agent's renewal: the new certificate (PEM) for its CSR; throws to refuse it. */
  onRenew?: (csr: string) => Promise<string>;
  /** Every message heard from the agent (a remote one's last-seen time). */
  onHeard?: () => void;
}

/**
 * One connection to one agent. `ready` resolves with the agent's hello once the handshake is
 * done; `closed` resolves when the connection ends, and every job still running then ends as
 * 'interrupted' (the agent stopped them, or died: either way what they uploaded stays usable and
 * they run again).
 */
export class AgentLink {
  readonly ready: Promise<AgentHello>;
  readonly closed: Promise<{ reason: string }>;
  private readonly input: Readable;
  private readonly output: Writable;
  private readonly jobs = new Map<string, RunningJob>();
  /**
   * False for a remote agent: a protected host that must never be sent a repository's password
   * or storage credentials (runOnAgent refuses to). The embedded agent and storage nodes hold them.
   */
  mayHoldKeys = true;
  private hello: AgentHello | undefined;
  private ended: string | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  private pingSent = 0;
  private pongSeen = 0;
  private lastLoad: (NodeLoad & { at: number }) | undefined;
  private resolveReady!: (h: AgentHello) => void;
  private rejectReady!: (e: Error) => void;
  private resolveClosed!: (r: { reason: string }) => void;
  private readonly reader: LineReader;
  private readonly options: AgentLinkOptions;

  constructor(input: Readable, output: Writable, options: AgentLinkOptions = {}) {
    this.input = input;
    this.output = output;
    this.options = options;
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.reader = new LineReader((line) => this.onLine(line), (e) => this.close(e.message));
    input.on('data', (chunk: Buffer) => this.reader.push(chunk));
    if (options.closeOnEnd !== false) input.once('end', () => this.close('the agent closed the connection'));
    const onStreamError = (e: Error) => {
      const why = `the connection failed: ${e.message}`;
      if (!options.streamErrorGraceMs) return this.close(why);
      setTimeout(() => this.close(why), options.streamErrorGraceMs).unref();
    };
    input.once('error', onStreamError);
    output.on('error', onStreamError);
    const helloTimer = setTimeout(() => this.close('the agent did not say hello in time'), options.helloTimeoutMs ?? 30_000);
    helloTimer.unref();
    void this.ready.then(() => {
      clearTimeout(helloTimer);
      this.pingTimer = setInterval(() => {
        if (this.pingSent - this.pongSeen >= 2) return this.close('the agent stopped answering');
        this.send({ t: 'ping', n: ++this.pingSent });
      }, this.pingMs);
      this.pingTimer.unref();
    }, () => clearTimeout(helloTimer));
  }

  /** What the agent said of its load with its last pong (and when it came). */
  get load(): (NodeLoad & { at: number }) | undefined {
    return this.lastLoad;
  }

  private get pingMs(): number {
    return this.options.pingMs ?? 15_000;
  }

  /** Tells the agent why it is being disconnected (revoked: it stops for good), then closes. */
  refuse(reason: string, code?: RefusalCode): void {
    this.send({ t: 'refuse', reason, ...(code ? { code } : {}) });
    this.close(reason);
  }

  get agent(): AgentHello | undefined {
    return this.hello;
  }

  get isOpen(): boolean {
    return this.ended === undefined;
  }

  /** Jobs running on this agent now. */
  get running(): number {
    return this.jobs.size;
  }

  /**
   * Starts a job on the agent: events arrive through onEvent, the promise resolves with how it
   * ended. Never rejects: a connection that ends first gives 'interrupted'.
   */
  start(job: string, kind: string, spec: unknown, onEvent: (e: JobEvent) => void): Promise<JobDone> {
    if (this.ended !== undefined) return Promise.resolve({ state: 'interrupted', error: { code: 'STORAGE_UNAVAILABLE', message: `The agent is not connected: ${this.ended}` } });
    if (this.jobs.has(job)) throw new CofferError('CONFLICT', `Cannot start job ${job}: it is already running on this agent`);
    return new Promise<JobDone>((resolve) => {
      this.jobs.set(job, { onEvent, resolve });
      this.send({ t: 'job.start', job, kind, spec });
    });
  }

  /** Tells the agent to stop a job; its outcome still arrives through start()'s promise. */
  cancel(job: string): void {
    if (this.jobs.has(job)) this.send({ t: 'job.cancel', job });
  }

  /** Ends the connection; running jobs end as interrupted. */
  close(reason = 'closed by the server'): void {
    if (this.ended !== undefined) return;
    this.ended = reason;
    clearInterval(this.pingTimer);
    this.reader.stop();
    this.rejectReady(new CofferError('STORAGE_UNAVAILABLE', `The agent is not connected: ${reason}`));
    for (const [, j] of this.jobs) j.resolve({ state: 'interrupted', error: { code: 'STORAGE_UNAVAILABLE', message: `The connection to the agent ended: ${reason}` } });
    this.jobs.clear();
    if (!this.output.destroyed) this.output.end();
    this.resolveClosed({ reason });
  }

  private send(m: ToAgent): void {
    if (this.ended === undefined && this.output.writable) this.output.write(encodeMessage(m));
  }

  private onLine(line: string): void {
    let m: ToServer;
    try {
      m = parseToServer(line);
    } catch (e) {
      return this.close((e as Error).message);
    }
    this.options.onHeard?.();
    if (!this.hello) {
      if (m.t !== 'hello') return this.close(`expected hello, got ${m.t}`);
      const refusal = refusalFor(m.protocol);
      if (refusal) return this.refuse(refusal, 'PROTOCOL');
      const denied = this.options.checkHello?.(m.agent);
      if (denied) return this.refuse(denied.reason, denied.code);
      this.hello = m.agent;
      this.send({ t: 'welcome', protocol: PROTOCOL_VERSION, ...(this.options.checkHello ? { pingMs: this.pingMs } : {}) });
      this.resolveReady(m.agent);
      return;
    }
    switch (m.t) {
      case 'job.event':
        this.jobs.get(m.job)?.onEvent(m.event);
        break;
      case 'job.done': {
        const j = this.jobs.get(m.job);
        if (!j) break;
        this.jobs.delete(m.job);
        j.resolve({ state: m.state, result: m.result, error: m.error });
        break;
      }
      case 'pong':
        this.pongSeen = Math.max(this.pongSeen, m.n);
        if (m.load) this.lastLoad = { ...m.load, at: Date.now() };
        break;
      case 'renew':
        if (!this.options.onRenew) return this.close('unexpected renew from the agent');
        this.options.onRenew(m.csr).then(
          (certificate) => this.send({ t: 'renewed', certificate }),
          (e: Error) => this.send({ t: 'renewed', reason: e.message }),
        );
        break;
      default:
        this.close(`unexpected ${m.t} from the agent`);
    }
  }
}

export interface EmbeddedAgentOptions extends AgentLinkOptions {
  stateDir: string;
  /** The client name the agent registers as. */
  name: string;
  workers?: number;
  /** Where the agent's stderr goes (default: inherited). */
  stderr?: 'inherit' | 'ignore' | 'pipe';
  env?: NodeJS.ProcessEnv;
  /** Serve remote agents as the embedded storage node: the data port and its certificate's directory. */
  data?: { listen: { host: string; port: number }; advertise?: string; tlsDir: string };
}

export interface EmbeddedAgent {
  link: AgentLink;
  child: ChildProcess;
  /** Ends the connection (jobs are told to stop) and waits for the process to exit. */
  stop(): Promise<void>;
}

const MAIN = join(import.meta.dirname, '..', 'cli', 'main.ts');

/** Starts `coffer agent stdio` as a child process and connects to it. */
export function startEmbeddedAgent(options: EmbeddedAgentOptions): EmbeddedAgent {
  const args = [MAIN, 'agent', 'stdio', '--state-dir', options.stateDir, '--name', options.name];
  if (options.workers !== undefined) args.push('--workers', String(options.workers));
  if (options.data) {
    const h = options.data.listen.host;
    args.push('--data-listen', `${h.includes(':') ? `[${h}]` : h}:${options.data.listen.port}`, '--node-tls-dir', options.data.tlsDir);
    if (options.data.advertise) args.push('--data-address', options.data.advertise);
  }
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', options.stderr ?? 'inherit'], env: options.env ?? process.env });
  const link = new AgentLink(child.stdout!, child.stdin!, { streamErrorGraceMs: 2_000, ...options, closeOnEnd: false });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('exit', (code, signal) => link.close(`the agent process exited (${signal ?? `code ${code}`})`));
  child.once('error', (e) => link.close(`the agent process could not start: ${e.message}`));
  return {
    link,
    child,
    async stop() {
      link.close('the server is stopping');
      // Closing its stdin tells the agent to stop its jobs and exit; a stuck one is killed.
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
