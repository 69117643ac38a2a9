// A simulated agent: speaks the agent protocol (docs/server.md "Agent protocol", newline-JSON)
// over any connected Duplex (a TLS or plain socket, or one end of a duplexPair) and does no work:
// it says hello, answers every ping with a pong, and every job.start with a job.done (succeeded at
// once, unless told otherwise). A thousand of them cost a server what a thousand idle agents cost
// it, and little on the machine that runs them, which is what the scale benchmark of issue #12
// needs (bench/agents-sim.ts).
//
// It does not import src/agent/protocol.ts: testing (rank 7) sits below agent (rank 8). The few
// message shapes it needs are written out here; the caller passes the protocol version to announce
// (PROTOCOL_VERSION, from a layer that may import it), and the test against the server's real
// AgentLink (test/sim-agent.test.ts) keeps the two in step.

import type { Duplex } from 'node:stream';

/** What the simulated agent answers a job with. */
export interface SimJobOutcome {
  state: 'succeeded' | 'warnings' | 'failed' | 'cancelled';
  result?: Record<string, unknown>;
  error?: { code: string; message: string; hint?: string };
}

export interface SimJob {
  job: string;
  kind: string;
  spec: unknown;
  /** Aborted when the server cancels the job or the connection ends. */
  signal: AbortSignal;
}

export interface SimAgentOptions {
  /** The agent's name (the client it stands for). */
  name: string;
  /** The protocol version it announces in its hello. */
  protocol: number;
  /** Its software version (default 'sim'). */
  version?: string;
  host?: Record<string, unknown>;
  /**
   * How a job ends (default: succeeded at once, with an empty result). A promise keeps the job
   * running until it settles; a cancelled job ends as 'cancelled' whatever it later says.
   */
  answer?: (job: SimJob) => SimJobOutcome | Promise<SimJobOutcome>;
  /** Called for each ping, with the time it arrived (performance.now()). */
  onPing?: (n: number, at: number) => void;
  /** The longest line it accepts (default 16 MiB, the protocol's limit). */
  maxLine?: number;
}

/** What a simulated agent counted. */
export interface SimAgentStats {
  pings: number;
  jobs: number;
  cancels: number;
}

type FromServer =
  | { t: 'welcome'; protocol: number }
  | { t: 'refuse'; reason: string }
  | { t: 'job.start'; job: string; kind: string; spec: unknown }
  | { t: 'job.cancel'; job: string }
  | { t: 'ping'; n: number };

/**
 * One simulated agent on one connection. `welcomed` resolves when the server accepts it and
 * rejects with the server's reason when it refuses; `closed` resolves when the connection ends.
 */
export class SimAgent {
  readonly welcomed: Promise<void>;
  readonly closed: Promise<{ reason: string }>;
  readonly stats: SimAgentStats = { pings: 0, jobs: 0, cancels: 0 };
  private readonly stream: Duplex;
  private readonly options: SimAgentOptions;
  private readonly running = new Map<string, AbortController>();
  private readonly maxLine: number;
  private pending = '';
  private isWelcome = false;
  private ended: string | undefined;
  private resolveWelcome!: () => void;
  private rejectWelcome!: (e: Error) => void;
  private resolveClosed!: (r: { reason: string }) => void;

  constructor(stream: Duplex, options: SimAgentOptions) {
    this.stream = stream;
    this.options = options;
    this.maxLine = options.maxLine ?? 16 << 20;
    this.welcomed = new Promise((resolve, reject) => {
      this.resolveWelcome = resolve;
      this.rejectWelcome = reject;
    });
    this.welcomed.catch(() => {});
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => this.onData(chunk));
    stream.once('end', () => this.close('the server closed the connection'));
    stream.once('close', () => this.close('the connection closed'));
    stream.on('error', (e: Error) => this.close(`the connection failed: ${e.message}`));
    this.send({ t: 'hello', protocol: options.protocol, agent: { name: options.name, version: options.version ?? 'sim', host: options.host ?? { hostname: options.name } } });
  }

  /** Jobs started and not yet answered. */
  get jobsRunning(): number {
    return this.running.size;
  }

  get isOpen(): boolean {
    return this.ended === undefined;
  }

  /** Ends the connection; running jobs are aborted. */
  close(reason = 'closed by the simulated agent'): void {
    if (this.ended !== undefined) return;
    this.ended = reason;
    for (const c of this.running.values()) c.abort();
    this.running.clear();
    this.rejectWelcome(new Error(`The simulated agent ${this.options.name} was not welcomed: ${reason}`));
    if (!this.stream.destroyed) this.stream.end();
    this.resolveClosed({ reason });
  }

  private send(message: Record<string, unknown>): void {
    if (this.ended === undefined && this.stream.writable) this.stream.write(JSON.stringify(message) + '\n');
  }

  private onData(chunk: string): void {
    if (this.ended !== undefined) return;
    this.pending += chunk;
    for (let nl = this.pending.indexOf('\n'); nl >= 0; nl = this.pending.indexOf('\n')) {
      const line = this.pending.slice(0, nl);
      this.pending = this.pending.slice(nl + 1);
      if (line.length > 0) this.onMessage(line);
      if (this.ended !== undefined) return;
    }
    if (this.pending.length > this.maxLine) this.close(`the server sent a line longer than ${this.maxLine} bytes`);
  }

  private onMessage(line: string): void {
    let m: FromServer;
    try {
      m = JSON.parse(line) as FromServer;
    } catch {
      return this.close(`the server sent a line that is not JSON (${JSON.stringify(line.slice(0, 80))})`);
    }
    if (!this.isWelcome) {
      if (m.t === 'welcome') {
        this.isWelcome = true;
        return this.resolveWelcome();
      }
      if (m.t === 'refuse') {
        this.rejectWelcome(new Error(`The server refused the simulated agent ${this.options.name}: ${m.reason}`));
        return this.close(`refused: ${m.reason}`);
      }
      return this.close(`expected welcome, got ${String((m as { t?: unknown }).t)}`);
    }
    switch (m.t) {
      case 'ping':
        this.stats.pings++;
        this.options.onPing?.(m.n, performance.now());
        this.send({ t: 'pong', n: m.n });
        break;
      case 'job.start':
        this.startJob(m.job, m.kind, m.spec);
        break;
      case 'job.cancel': {
        const c = this.running.get(m.job);
        if (!c) break;
        this.stats.cancels++;
        c.abort();
        this.running.delete(m.job);
        this.send({ t: 'job.done', job: m.job, state: 'cancelled' });
        break;
      }
      default:
        this.close(`unexpected ${String((m as { t?: unknown }).t)} from the server`);
    }
  }

  private startJob(job: string, kind: string, spec: unknown): void {
    this.stats.jobs++;
    if (this.running.has(job)) {
      this.send({ t: 'job.done', job, state: 'failed', error: { code: 'PROTOCOL', message: `Job ${job} is already running on this agent` } });
      return;
    }
    if (!this.options.answer) {
      this.send({ t: 'job.done', job, state: 'succeeded', result: {} });
      return;
    }
    const controller = new AbortController();
    this.running.set(job, controller);
    const finish = (outcome: SimJobOutcome) => {
      // Answered already: cancelled, or the connection ended.
      if (this.running.get(job) !== controller) return;
      this.running.delete(job);
      this.send({ t: 'job.done', job, state: outcome.state, ...(outcome.result ? { result: outcome.result } : {}), ...(outcome.error ? { error: outcome.error } : {}) });
    };
    Promise.resolve()
      .then(() => this.options.answer!({ job, kind, spec, signal: controller.signal }))
      .then(finish, (e: unknown) => finish({ state: 'failed', error: { code: 'INTERNAL', message: `The simulated job failed: ${(e as Error).message}` } }));
  }
}
