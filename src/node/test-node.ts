// For tests of the storage node's data service: a node (an AgentRuntime with a NodeService) and
// an agent in one process, the node's data port on loopback TCP (no TLS: the multi-host and pki
// tests run the same over mutual TLS), a repository initialised by the node, and the node's side
// of a session as a job whose `ready` says when the agent may connect.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Server } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { JobEvent } from '../jobs/events.ts';
import type { HostIdentity } from '../repository/snapshot.ts';
import { localHostIdentity } from '../sources/host.ts';
import { AgentRuntime } from '../agent/runtime.ts';
import { NodeService, isSessionReady } from './service.ts';

export const never = (): AbortSignal => new AbortController().signal;

export async function startTestNode(t: { after(fn: () => unknown): void }, agentHost: HostIdentity = localHostIdentity()) {
  const dir = await mkdtemp(join(tmpdir(), 'coffer-node-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const storage = { url: join(dir, 'repo'), password: 'unit password' };
  const logs: string[] = [];
  const service = new NodeService({ log: (m) => logs.push(m) });
  const server: Server = createServer((socket) => service.accept(socket, undefined));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  const port = (server.address() as { port: number }).port;
  const node = new AgentRuntime({ stateDir: join(dir, 'node'), host: localHostIdentity(), workers: 1, idleMs: 50, node: service });
  t.after(() => node.close());
  const init = await node.run('init', { storage }, () => {}, never());
  assert.equal(init.state, 'succeeded', JSON.stringify(init.error));
  const agent = new AgentRuntime({
    stateDir: join(dir, 'agent'), host: agentHost, workers: 1, idleMs: 50,
    connectNode: async (r) => {
      const [host, p] = r.address.split(':');
      const s = connect(Number(p), host);
      await once(s, 'connect');
      return s;
    },
  });
  t.after(() => agent.close());
  return { dir, storage, service, node, agent, address: `127.0.0.1:${port}`, port, logs };
}

export type TestNode = Awaited<ReturnType<typeof startTestNode>>;

/** The node's side of a session (node-backup or node-restore): the job, and when its agent may connect. */
export function serveSession(env: TestNode, kind: 'node-backup' | 'node-restore', spec: Record<string, unknown>, events: JobEvent[] = []) {
  let onReady!: () => void;
  const ready = new Promise<void>((r) => (onReady = r));
  const served = env.node.run(kind, { storage: env.storage, ...spec }, (e) => {
    events.push(e);
    if (isSessionReady(e as { type: string; data?: Record<string, unknown> })) onReady();
  }, never());
  void served.then(() => onReady());
  return { served, ready };
}
