// The expiry job's rules on a real catalog: a held copy and the source of an unfinished
// duplicate are never expired, whatever their expiry time; the rest is (marked, then forgotten).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { openCatalog } from '../catalog/catalog.ts';
import { tempDir } from '../testing/tmp.ts';
import type { JobEvent } from '../jobs/events.ts';
import { expireExecutor } from './executors.ts';
import { AgentRegistry, type Services } from './services.ts';
import { NodeRegistry } from './nodes.ts';

const doc = (kind: string, name: string, spec: Record<string, unknown>) => ({ apiVersion: 'coffer/v1', kind, metadata: { name }, spec });

test('expiry keeps held copies and the source of an unfinished duplicate, and expires the rest', async (t) => {
  const dir = await tempDir(t);
  let now = Date.UTC(2026, 11, 1);
  const catalog = await openCatalog(join(dir, 'catalog.db'), { now: () => now });
  t.after(() => catalog.close());
  await catalog.clients.upsert({ name: 'web01' });
  for (const unit of ['primary', 'offsite']) await catalog.storageUnits.apply(doc('StorageUnit', unit, { url: join(dir, unit) }));
  await catalog.lifecycles.apply(doc('Lifecycle', 'l', { copies: [{ operation: 'backup', storageUnit: 'primary', retention: '1d' }] }));
  await catalog.policies.apply(doc('Policy', 'p', { clients: ['web01'], selections: [{ paths: ['/etc'] }], schedules: [{ name: 'd', level: 'full', calendar: '0 1 * * *' }], lifecycle: 'l' }));
  const image = async () => {
    const i = await catalog.images.add({ client: 'web01', policy: 'p', level: 'full', streams: { s: 'a'.repeat(64) } });
    const c = await catalog.copies.add(i.id, { storageUnit: 'primary', snapshots: { s: 'a'.repeat(64) }, state: 'ok', expires: now + 86_400_000 });
    return { image: i, copy: c };
  };
  const held = await image();
  const source = await image();
  const plain = await image();
  await catalog.copies.hold(held.copy.id, 'case 7');
  await catalog.jobs.enqueue({ kind: 'duplicate', client: 'web01', policy: 'p', storageUnit: 'offsite', spec: { image: source.image.id, from: 'primary', to: 'offsite', retention: '1y' } });

  const services: Services = {
    catalog,
    now: () => now,
    agents: new AgentRegistry(),
      nodes: new NodeRegistry(),
    node: () => {
      throw new Error('no agent in this test');
    },
    storageAccess: async () => ({ url: join(dir, 'primary'), password: 'x' }),
  };
  // The forget step needs an agent (there is none here): the run stops there, after marking.
  now += 2 * 86_400_000;
  const events: JobEvent[] = [];
  const job = await catalog.jobs.enqueue({ kind: 'expire', spec: {} });
  const run = expireExecutor(services, { pruneIntervalMs: 0 })({ job, signal: new AbortController().signal, emit: (e) => void events.push(e), log: (level, message) => void events.push({ type: 'log', level, message }) });
  await assert.rejects(run, /no agent in this test/);
  const state = async (id: string) => (await catalog.copies.get(id)).state;
  assert.equal(await state(held.copy.id), 'ok', 'a held copy is never expired');
  assert.equal(await state(source.copy.id), 'ok', 'the source of an unfinished duplicate is kept');
  assert.equal(await state(plain.copy.id), 'expired');
  assert.ok(events.some((e) => e.type === 'log' && /unfinished duplicate/.test(e.message)));
});
