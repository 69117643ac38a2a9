// The agent's side of the protocol over one connection (the embedded agent: its stdin and
// stdout). It says hello, waits for the server's welcome, then runs every job.start it is given
// at once, streams each job's events and ends each with job.done. When the connection ends (the
// server stopped or died), every running job is told to stop and serve() resolves once they have:
// what they uploaded stays usable, and the server records them as interrupted.

import type { Readable, Writable } from 'node:stream';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { JobEvent } from '../jobs/events.ts';
import type { AgentRuntime } from './runtime.ts';
import { LineReader, PROTOCOL_VERSION, encodeMessage, parseToAgent, type NodeLoad, type RefusalCode, type ToAgent, type ToServer } from './protocol.ts';

export interface ServeOptions {
  input: Readable;
  output: Writable;
  runtime: AgentRuntime;
  agent: { name: string; version: string; host: Record<string, unknown> };
  /** Diagnostics that have no job to go to (a protocol error); default: nowhere. */
  log?: (message: string) => void;
  /** How busy this host is, sent with every pong (a storage node's data service adds its bytes in flight). */
  load?: () => NodeLoad;
  /** Once the server welcomed the agent: its welcome, and a way to send (a remote agent's renewal). */
  onWelcome?: (welcome: Extract<ToAgent, { t: 'welcome' }>, send: (m: ToServer) => void) => void;
  /** The server's answer to a renewal (src/agent/remote.ts); without this hook, `renewed` is a protocol error. */
  onRenewed?: (m: Extract<ToAgent, { t: 'renewed' }>) => void;
}

export interface ServeResult {
  /** Why the connection ended: 'closed' by the server, or a refusal or protocol error. */
  reason: 'closed' | 'refused' | 'protocol';
  message?: string;
  /** A refusal's code, when the server gave one (REVOKED: stop for good). */
  code?: RefusalCode;
}

export function serveAgent(options: ServeOptions): Promise<ServeResult> {
  const { input, output, runtime } = options;
  const jobs = new Map<string, { controller: AbortController; done: Promise<void> }>();
  let welcomed = false;
  let ended: ServeResult | undefined;
  let finish!: (r: ServeResult) => void;
  const finished = new Promise<ServeResult>((resolve) => (finish = resolve));

  const send = (m: ToServer) => {
    if (!output.writable) return;
    output.write(encodeMessage(m));
  };

  const end = (r: ServeResult) => {
    if (ended) return;
    ended = r;
    reader.stop();
    input.off('data', onData);
    for (const j of jobs.values()) j.controller.abort(new CofferError('CANCELLED', 'the connection to the server ended'));
    void Promise.allSettled([...jobs.values()].map((j) => j.done)).then(() => finish(r));
  };

  const startJob = (job: string, kind: string, spec: unknown) => {
    if (jobs.has(job)) {
      send({ t: 'job.done', job, state: 'failed', error: { code: 'PROTOCOL', message: `Job ${job} is already running on this agent` } });
      return;
    }
    const controller = new AbortController();
    const emit = (event: JobEvent) => {
      if (!controller.signal.aborted || event.type !== 'progress') send({ t: 'job.event', job, event });
    };
    const done = runtime.run(kind, spec, emit, controller.signal).then((outcome) => {
      jobs.delete(job);
      send({ t: 'job.done', job, state: outcome.state, ...(outcome.result ? { result: outcome.result } : {}), ...(outcome.error ? { error: outcome.error } : {}) });
    });
    jobs.set(job, { controller, done });
  };

  const onLine = (line: string) => {
    let m;
    try {
      m = parseToAgent(line);
    } catch (e) {
      const err = toCofferError(e);
      options.log?.(err.message);
      end({ reason: 'protocol', message: err.message });
      return;
    }
    if (!welcomed) {
      if (m.t === 'welcome' && m.protocol === PROTOCOL_VERSION) {
        welcomed = true;
        options.onWelcome?.(m, send);
      } else if (m.t === 'refuse') end({ reason: 'refused', message: m.reason, ...(m.code ? { code: m.code } : {}) });
      else end({ reason: 'protocol', message: `expected welcome, got ${m.t}` });
      return;
    }
    switch (m.t) {
      case 'job.start':
        startJob(m.job, m.kind, m.spec);
        break;
      case 'job.cancel':
        jobs.get(m.job)?.controller.abort(new CofferError('CANCELLED', 'the server cancelled the job'));
        break;
      case 'ping':
        send({ t: 'pong', n: m.n, ...(options.load ? { load: options.load() } : {}) });
        break;
      case 'refuse':
        // Revoked while connected: the server says so, then closes.
        end({ reason: 'refused', message: m.reason, ...(m.code ? { code: m.code } : {}) });
        break;
      case 'renewed':
        if (options.onRenewed) {
          options.onRenewed(m);
          break;
        }
        end({ reason: 'protocol', message: 'unexpected renewed' });
        break;
      default:
        end({ reason: 'protocol', message: `unexpected ${m.t}` });
    }
  };

  const reader = new LineReader(onLine, (e) => end({ reason: 'protocol', message: e.message }));
  const onData = (chunk: Buffer) => reader.push(chunk);
  input.on('data', onData);
  input.once('end', () => end({ reason: 'closed' }));
  input.once('close', () => end({ reason: 'closed' }));
  input.once('error', () => end({ reason: 'closed' }));
  output.on('error', () => end({ reason: 'closed' }));
  send({ t: 'hello', protocol: PROTOCOL_VERSION, agent: options.agent });
  return finished;
}
