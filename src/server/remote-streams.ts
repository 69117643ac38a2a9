// One backup or restore stream of a remote agent, through a storage node (docs/server.md
// "Storage nodes"): the server picks the least loaded node serving the unit, opens a session
// there (the node job `node-backup` or `node-restore`, which holds the unit's keys), and once the
// node says it is ready, tells the client's agent (job `backup` or `restore` with `remote`) where
// to connect. The agent holds no repository key.
//
// Either side ending first ends the other: the agent failing cancels the session (nothing is
// committed without the agent's commit), the node going away interrupts the agent. A node that
// disappears or fails for a transient reason is left out and the stream runs again on another
// node serving the same unit, at once; what the first node stored stays in the repository and
// is found by the next session (HAVE), so the retry sends only what is still missing.

import { randomBytes } from 'node:crypto';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { StorageAccess } from '../agent/protocol.ts';
import type { StorageUnit } from '../catalog/storage-units.ts';
import type { JobEvent } from '../jobs/events.ts';
import { isSessionReady } from '../node/service.ts';
import type { AgentLink } from './agent-link.ts';
import { NodeRegistry, type NodeEntry } from './nodes.ts';
import { runOnAgent, type Services } from './services.ts';

/** How long a lost data connection waits to see whether its node's link to the server goes too. */
const NODE_GONE_GRACE_MS = 3_000;

/** Nodes tried for one stream before it fails (each failure leaves that node out). */
const MAX_NODES_PER_STREAM = 3;

export interface RemoteStream {
  kind: 'backup' | 'restore';
  /** The client whose agent connects to the node (a restore's target). */
  client: string;
  link: AgentLink;
  unit: StorageUnit;
  /** The node's session spec without its token (storage, client, and parent and tags, or snapshot). */
  nodeSpec: { storage: StorageAccess } & Record<string, unknown>;
  /** The agent's job spec without `remote` (selection, parent, tags, ... or snapshot, targetPath, ...). */
  agentSpec: Record<string, unknown>;
}

export interface StreamContext {
  jobId: string;
  emit: (e: JobEvent) => void;
  log: (level: 'info' | 'warn' | 'error', message: string) => void;
  signal: AbortSignal;
}

/** Runs the stream; resolves with the agent's result plus the node's (snapshot, bytes stored). */
export async function runRemoteStream(s: Services, stream: RemoteStream, ctx: StreamContext): Promise<Record<string, unknown>> {
  const failed = new Set<string>();
  for (;;) {
    const node = s.nodes.choose([stream.unit], { exclude: failed, needData: true });
    try {
      return await NodeRegistry.track(node, runOnNode(node, stream, ctx));
    } catch (e) {
      const err = toCofferError(e);
      if (err.code === 'CANCELLED' || ctx.signal.aborted || !isNodeFailure(err)) throw err;
      failed.add(node.name);
      ctx.log('warn', `storage node ${node.name} failed this stream (${err.message}); ${failed.size < MAX_NODES_PER_STREAM ? 'trying another node that serves unit ' + stream.unit.name : 'giving up for now'}`);
      if (failed.size >= MAX_NODES_PER_STREAM) throw err;
    }
  }
}

/** Errors that are the node's fault: the stream may run again on another node. */
const NODE_FAILED = new WeakSet<object>();
const nodeFailure = (e: CofferError): CofferError => (NODE_FAILED.add(e), e);
const isNodeFailure = (e: unknown): boolean => typeof e === 'object' && e !== null && NODE_FAILED.has(e);

async function runOnNode(node: NodeEntry, stream: RemoteStream, ctx: StreamContext): Promise<Record<string, unknown>> {
  const session = randomBytes(32).toString('base64url');
  const both = new AbortController();
  const onAbort = () => both.abort(ctx.signal.reason);
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  let ready!: () => void;
  const isReady = new Promise<void>((resolve) => (ready = resolve));
  ctx.log('info', stream.kind === 'backup'
    ? `storage node ${node.name} (${node.dataAddress}) takes client ${stream.client}'s stream to unit ${stream.unit.name}`
    : `storage node ${node.name} (${node.dataAddress}) serves the restore from unit ${stream.unit.name} to client ${stream.client}`);
  const served = runOnAgent(node.link, stream.kind === 'backup' ? 'node-backup' : 'node-restore', { ...stream.nodeSpec, session }, {
    jobId: ctx.jobId,
    signal: both.signal,
    emit: (e) => {
      if (isSessionReady(e)) ready();
      else if (e.type === 'log') ctx.emit({ ...e, message: `node ${node.name}: ${e.message}` });
    },
  });
  // The node's failure, marked as the node's: the stream may go to another node.
  const nodeDone = served.catch((e: unknown) => {
    const err = toCofferError(e);
    throw err.transient || !node.link.isOpen ? nodeFailure(err) : err;
  });
  nodeDone.catch(() => both.abort(new CofferError('CANCELLED', 'the storage node ended the session')));
  try {
    await Promise.race([isReady, nodeDone]);
    const sent = runOnAgent(stream.link, stream.kind, { ...stream.agentSpec, remote: { address: node.dataAddress!, session, node: node.name } }, {
      jobId: ctx.jobId,
      emit: ctx.emit,
      signal: both.signal,
    });
    sent.catch(() => both.abort(new CofferError('CANCELLED', `the agent ended its side of the ${stream.kind}`)));
    // The node's result is the truth of what was committed; a node that fails after the agent
    // gave up is the agent's failure, which says why.
    const [agentResult, nodeResult] = await Promise.allSettled([sent, nodeDone]);
    if (agentResult.status === 'rejected') {
      const err = toCofferError(agentResult.reason);
      if (ctx.signal.aborted) throw err;
      if (nodeResult.status === 'rejected' && isNodeFailure(nodeResult.reason) && err.code === 'CANCELLED') throw nodeResult.reason;
      // The agent lost its data connection: if the node is gone (killed, its host down), that is
      // the node's failure, and the stream moves to another node. Its link to the server closes
      // at about the same moment; give it a little time to be noticed.
      if (err.transient && node.link.isOpen) await Promise.race([node.link.closed, new Promise((r) => setTimeout(r, NODE_GONE_GRACE_MS).unref())]);
      if (err.transient && !node.link.isOpen) throw nodeFailure(new CofferError('STORAGE_UNAVAILABLE', `storage node ${node.name} went away: ${err.message}`));
      throw err;
    }
    if (nodeResult.status === 'rejected') throw nodeResult.reason;
    const a = agentResult.value;
    const n = nodeResult.value;
    if (stream.kind === 'restore') return { ...a, node: node.name, nodeResult: n };
    if (a.snapshot !== n.snapshot) throw new CofferError('INTERNAL', `The agent reports snapshot ${String(a.snapshot)}, the storage node ${String(n.snapshot)}`);
    return { ...a, bytesStored: n.bytesStored, bytesReceived: n.bytesReceived, node: node.name };
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
  }
}
