// A restore through a storage node against a local restore of the same snapshot, in one process
// over loopback TCP (as src/node/node-restore.test.ts runs them): the node's session and the
// agent's restore job side by side. Backs up DIR through the node first (the repository and the
// restores go under WORK), then restores it twice into fresh directories: locally (the node's
// runtime holds the keys) and remotely (the agent holds the chunk-id key only).
//
//   npx node bench/node-restore.ts DIR WORK
//
// Prints wall time, CPU time of the process (both sides together for the remote restore) and
// the bytes that crossed the data connection.

import { createServer, connect } from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AgentRuntime } from '../src/agent/runtime.ts';
import { NodeService, isSessionReady } from '../src/node/service.ts';
import { localHostIdentity } from '../src/sources/host.ts';

const [dirArg, workArg] = process.argv.slice(2);
if (!dirArg || !workArg) {
  console.error('usage: npx node bench/node-restore.ts DIR WORK');
  process.exit(2);
}
const dir = resolve(dirArg);
const work = resolve(workArg);
await rm(work, { recursive: true, force: true });
await mkdir(work, { recursive: true });
const never = new AbortController().signal;
const storage = { url: join(work, 'repo'), password: 'bench' };
const service = new NodeService();
const server = createServer((s) => service.accept(s, undefined));
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const address = `127.0.0.1:${(server.address() as { port: number }).port}`;
const node = new AgentRuntime({ stateDir: join(work, 'node'), host: localHostIdentity(), node: service });
const agent = new AgentRuntime({
  stateDir: join(work, 'agent'), host: localHostIdentity(),
  connectNode: async (r) => {
    const [h, p] = r.address.split(':');
    const s = connect(Number(p), h);
    await once(s, 'connect');
    return s;
  },
});

/** Runs a node session job and the agent's job against it; returns both outcomes. */
async function session(kind: string, nodeSpec: Record<string, unknown>, agentKind: string, agentSpec: Record<string, unknown>) {
  const token = randomBytes(32).toString('base64url');
  let ready!: () => void;
  const isReady = new Promise<void>((r) => (ready = r));
  const served = node.run(kind, { storage, session: token, ...nodeSpec }, (e) => {
    if (isSessionReady(e as { type: string; data?: Record<string, unknown> })) ready();
  }, never);
  void served.then(() => ready());
  await isReady;
  const ran = await agent.run(agentKind, { remote: { address, session: token, node: 'node1' }, ...agentSpec }, () => {}, never);
  const done = await served;
  if (ran.state !== 'succeeded' || done.state !== 'succeeded') throw new Error(`${agentKind}: ${JSON.stringify(ran.error ?? done.error)}`);
  return { ran, done };
}

async function timed<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const cpu = process.cpuUsage();
  const t0 = performance.now();
  const r = await fn();
  const used = process.cpuUsage(cpu);
  console.log(`${what}: ${((performance.now() - t0) / 1000).toFixed(1)} s wall, ${((used.user + used.system) / 1e6).toFixed(1)} s CPU`);
  return r;
}

try {
  const init = await node.run('init', { storage }, () => {}, never);
  if (init.state !== 'succeeded') throw new Error(JSON.stringify(init.error));
  const b = await timed('backup through the node', () => session('node-backup', { client: 'bench', parent: 'none', tags: [] }, 'backup', { client: 'bench', parent: 'none', tags: [], selection: { paths: [dir] } }));
  const snapshot = b.done.result!.snapshot as string;
  console.log(`  scanned ${b.ran.result!.bytesScanned} bytes, sent ${b.ran.result!.bytesSent}`);
  await timed('local restore (keys in this process)', async () => {
    const r = await node.run('restore', { storage, snapshot, targetPath: join(work, 'local') }, () => {}, never);
    if (r.state !== 'succeeded') throw new Error(JSON.stringify(r.error));
  });
  const r = await timed('restore through the node', () => session('node-restore', { client: 'bench', snapshot }, 'restore', { snapshot, targetPath: join(work, 'remote') }));
  console.log(`  received ${r.ran.result!.bytesReceived} bytes for ${(r.ran.result!.created as { bytes: number }).bytes} restored; the node served ${r.done.result!.blobsServed} chunks`);
} finally {
  await agent.close();
  await node.close();
  server.close();
}
