import { it } from 'node:test';
import assert from 'node:assert/strict';
import { TokenBucket } from '../core/bandwidth.ts';
import { FakeClock } from '../testing/fake-clock.ts';
import { MemoryBackend } from './memory.ts';
import { ThrottledBackend } from './throttle.ts';

it('ThrottledBackend: puts and gets (ranged and whole) wait for the shared bucket; stat, list and delete do not', async () => {
  const clock = new FakeClock(0);
  const bucket = new TokenBucket(1_000_000, { clock, burst: 100_000, quantum: 100_000 });
  const inner = new MemoryBackend();
  const a = new ThrottledBackend(inner, bucket);
  const b = new ThrottledBackend(inner, bucket);
  const times: Record<string, number> = {};
  const step = async (name: string, f: () => Promise<unknown>) => {
    await f();
    times[name] = clock.now();
  };
  let finished = false;
  const work = (async () => {
    await step('put', () => a.put('x', Buffer.alloc(600_000, 1)));
    await step('ranged', () => b.get('x', { offset: 0, length: 300_000 }));
    await step('whole', () => a.get('x'));
    await step('stat', () => b.stat('x'));
    await step('delete', () => b.delete('x'));
  })().finally(() => (finished = true));
  while (!finished) {
    await new Promise((r) => setImmediate(r));
    const wake = clock.nextWake();
    if (wake !== null) clock.set(wake);
  }
  await work;
  // 600 KB less the 100 KB burst: 500 ms; then 300 KB; then the whole object after it was read.
  assert.deepEqual(times, { put: 500, ranged: 800, whole: 1400, stat: 1400, delete: 1400 });
  assert.equal(a.location, inner.location);
});

it('ThrottledBackend: objects it does not count (a repository\'s metadata) never wait behind counted ones; object locks pass through', async () => {
  const clock = new FakeClock(0);
  const bucket = new TokenBucket(1_000_000, { clock, burst: 100_000, quantum: 100_000 });
  const locks = { check: async () => {}, lockedUntil: async () => 42, extend: async (_n: string, until: number) => until };
  const inner = Object.assign(new MemoryBackend(), { locks });
  const t = new ThrottledBackend(inner, bucket, { counted: (name) => name.startsWith('data/') });
  assert.equal(t.locks, locks);
  assert.equal(new ThrottledBackend(new MemoryBackend(), bucket).locks, undefined);
  // A pack takes the bucket for 900 ms; an index file and a session heartbeat written meanwhile do not wait.
  const pack = t.put('data/ab/pack', Buffer.alloc(1_000_000, 1));
  await t.put('index/one', Buffer.alloc(50_000, 2));
  await t.put('sessions/s', Buffer.alloc(1_000, 3));
  assert.equal((await t.get('index/one')).length, 50_000);
  assert.equal(clock.now(), 0, 'metadata went through at once');
  while (clock.nextWake() !== null) {
    clock.set(clock.nextWake()!);
    await new Promise((r) => setImmediate(r));
  }
  await pack;
  assert.equal(clock.now(), 900);
});
