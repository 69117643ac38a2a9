// Which storage node gets a job: only connected nodes that serve every unit named (the embedded
// node for units that name none), the least loaded by what they report with their pongs and by
// the jobs this server gave them since, never one that failed this job already.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { StorageUnit } from '../catalog/storage-units.ts';
import { AgentLink } from './agent-link.ts';
import { NodeRegistry, loadScore } from './nodes.ts';

const unit = (name: string, nodes?: string[]): StorageUnit => ({ name, url: `/srv/${name}`, spec: { url: `/srv/${name}`, ...(nodes ? { nodes } : {}) } } as unknown as StorageUnit);

function link(): AgentLink {
  const l = new AgentLink(new PassThrough(), new PassThrough(), { helloTimeoutMs: 60_000 });
  return l;
}

/** A link as if the node had reported this load with its last pong. */
function withLoad(l: AgentLink, load: { cpu: number; memory: number; ioWait: number; jobs: number; bytesInFlight: number }): AgentLink {
  Object.defineProperty(l, 'load', { get: () => ({ ...load, at: Date.now() }) });
  return l;
}

const idle = { cpu: 0.05, memory: 0.3, ioWait: 0, jobs: 0, bytesInFlight: 0 };

test('the least loaded node serving the unit gets the job; the others only when it is excluded or gone', (t) => {
  const r = new NodeRegistry();
  const links = [withLoad(link(), { ...idle, jobs: 2 }), withLoad(link(), idle), withLoad(link(), { ...idle, cpu: 0.9, ioWait: 0.5 }), link()];
  t.after(() => links.forEach((l) => l.close()));
  r.set('n1', links[0]!, { dataAddress: '10.0.0.1:7482' });
  r.set('n2', links[1]!, { dataAddress: '10.0.0.2:7482' });
  r.set('n3', links[2]!, { dataAddress: '10.0.0.3:7482' });
  r.set('host1', links[3]!, { embedded: true });
  const shared = unit('shared', ['n1', 'n2', 'n3']);
  assert.equal(r.choose([shared]).name, 'n2');
  assert.equal(r.choose([shared], { exclude: new Set(['n2']) }).name, 'n1', 'two running jobs weigh less than a busy CPU and I/O wait');
  assert.ok(loadScore({ ...idle, jobs: 2 }, 0) < loadScore({ ...idle, cpu: 0.9, ioWait: 0.5 }, 0));
  // A unit that names no node is the embedded node's; it has no data port for remote agents here.
  assert.equal(r.choose([unit('local')]).name, 'host1');
  assert.throws(() => r.choose([unit('local')], { needData: true }), /No storage node serving unit local is connected/);
  // A clone between units needs a node serving both.
  assert.equal(r.choose([shared, unit('other', ['n3', 'server'])]).name, 'n3');
  assert.throws(() => r.choose([shared, unit('far', ['n9'])]), (e: Error & { code?: string }) => e.code === 'STORAGE_UNAVAILABLE' && /n9/.test(e.message));
  // A node that goes away is no longer chosen.
  links[1]!.close();
  assert.equal(r.choose([shared]).name, 'n1');
});

test('jobs given and not ended count: several streams of one client spread over the nodes', async (t) => {
  const r = new NodeRegistry();
  const a = withLoad(link(), idle);
  const b = withLoad(link(), idle);
  t.after(() => [a, b].forEach((l) => l.close()));
  r.set('n1', a, { dataAddress: 'x:1' });
  r.set('n2', b, { dataAddress: 'y:1' });
  const shared = unit('shared', ['n1', 'n2']);
  const ends: Array<() => void> = [];
  const chosen: string[] = [];
  const runs: Array<Promise<void>> = [];
  for (let i = 0; i < 4; i++) {
    const node = r.choose([shared]);
    chosen.push(node.name);
    runs.push(NodeRegistry.track(node, new Promise<void>((resolve) => ends.push(resolve))));
  }
  assert.deepEqual(chosen.sort(), ['n1', 'n1', 'n2', 'n2']);
  ends.forEach((f) => f());
  await Promise.all(runs);
  assert.equal(r.get('n1')!.assigned + r.get('n2')!.assigned, 0);
});
