import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CofferError, isCofferError } from '../core/errors.ts';
import { listAll } from './backend.ts';
import { runConformanceSuite } from './conformance.ts';
import { FaultyBackend } from './faulty.ts';
import { MemoryBackend } from './memory.ts';
import { RetryBackend } from './retry.ts';
import type { RetryEvent, RetryOptions } from './retry.ts';

// A flaky store behind the retry wrapper must still look perfect from above.
runConformanceSuite('RetryBackend over a flaky backend', async () => {
  const faulty = new FaultyBackend(new MemoryBackend(), [{ kind: 'error', probability: 0.05 }], { seed: 42 });
  const backend = new RetryBackend(faulty, { attempts: 12, sleep: async () => {} });
  return { backend, cleanup: () => backend.close() };
});

function setup(options: RetryOptions = {}) {
  const memory = new MemoryBackend();
  const faulty = new FaultyBackend(memory);
  const sleeps: number[] = [];
  const events: RetryEvent[] = [];
  const retry = new RetryBackend(faulty, {
    random: () => 0.5,
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    onRetry: (e) => events.push(e),
    ...options,
  });
  return { memory, faulty, retry, sleeps, events };
}

describe('RetryBackend', () => {
  it('get() retries a transient error with exponential backoff, then succeeds', async () => {
    const { memory, faulty, retry, sleeps, events } = setup();
    await memory.put('x', Buffer.from('data'));
    faulty.add({ kind: 'error', error: 'transient', times: 3 });
    assert.equal((await retry.get('x')).toString(), 'data');
    assert.equal(faulty.calls.get, 4);
    // Full jitter with random() = 0.5: half of 200, 400, 800 ms.
    assert.deepEqual(sleeps, [100, 200, 400]);
    assert.deepEqual(events.map((e) => [e.op, e.name, e.attempt, e.delayMs]), [['get', 'x', 1, 100], ['get', 'x', 2, 200], ['get', 'x', 3, 400]]);
    assert.ok(events.every((e) => isCofferError(e.error, 'STORAGE_UNAVAILABLE')));
  });

  it('put(), stat() and delete() retry transient errors too', async () => {
    const { faulty, retry, sleeps } = setup();
    faulty.add({ kind: 'error', times: 1, ops: ['put'] });
    faulty.add({ kind: 'error', times: 2, ops: ['stat'] });
    faulty.add({ kind: 'error', times: 1, ops: ['delete'] });
    await retry.put('y', Buffer.from('12345'));
    assert.equal((await retry.stat('y')).size, 5);
    await retry.delete('y');
    assert.deepEqual(faulty.calls, { put: 2, get: 0, stat: 3, list: 0, delete: 2 });
    assert.equal(sleeps.length, 4);
  });

  it('the backoff delay grows to maxDelayMs and stays there', async () => {
    const { faulty, retry, sleeps } = setup({ attempts: 8, baseDelayMs: 100, maxDelayMs: 1000, random: () => 0.999 });
    faulty.add({ kind: 'error', times: 7 });
    await retry.put('x', Buffer.from('1'));
    assert.deepEqual(sleeps, [100, 200, 400, 799, 999, 999, 999]);
  });

  it('the jitter spreads delays between zero and the cap', async () => {
    const draws = [0, 0.25, 0.75];
    const { faulty, retry, sleeps } = setup({ random: () => draws.shift()! });
    faulty.add({ kind: 'error', times: 3 });
    await retry.put('x', Buffer.from('1'));
    assert.deepEqual(sleeps, [0, 100, 600]);
  });

  it('a permanent error is not retried', async () => {
    const { faulty, retry, sleeps } = setup();
    faulty.add({ kind: 'error', error: 'permanent', times: 1 });
    await assert.rejects(retry.put('x', Buffer.from('1')), (e) => isCofferError(e, 'STORAGE_ERROR'));
    assert.equal(faulty.calls.put, 1);
    assert.deepEqual(sleeps, []);
  });

  it('NOT_FOUND, STORAGE_DENIED and INVALID_RANGE are not retried', async () => {
    const { memory, faulty, retry, sleeps } = setup();
    await assert.rejects(retry.get('missing'), (e) => isCofferError(e, 'NOT_FOUND'));
    await memory.put('x', Buffer.from('1'));
    await assert.rejects(retry.get('x', { offset: 5 }), (e) => isCofferError(e, 'INVALID_RANGE'));
    faulty.add({ kind: 'error', error: new CofferError('STORAGE_DENIED', 'Cannot read x: access denied'), times: 1 });
    await assert.rejects(retry.get('x'), (e) => isCofferError(e, 'STORAGE_DENIED'));
    assert.equal(faulty.calls.get, 3);
    assert.deepEqual(sleeps, []);
  });

  it('exhausted retries throw the transient error, saying how many attempts were made', async () => {
    const { faulty, retry, sleeps } = setup({ attempts: 4 });
    faulty.add({ kind: 'error' });
    await assert.rejects(retry.stat('x'), (e) => isCofferError(e, 'STORAGE_UNAVAILABLE') && /gave up after 4 attempts/.test(e.message) && e.details?.attempts === 4);
    assert.equal(faulty.calls.stat, 4);
    assert.equal(sleeps.length, 3);
  });

  it('an aborted signal stops at once, without calling the backend', async () => {
    const { faulty, retry } = setup();
    await assert.rejects(retry.get('x', { signal: AbortSignal.abort() }), (e) => isCofferError(e, 'CANCELLED'));
    assert.equal(faulty.calls.get, 0);
  });

  it('an abort during the backoff wait stops retrying with CANCELLED', async () => {
    const memory = new MemoryBackend();
    const faulty = new FaultyBackend(memory, [{ kind: 'error' }]);
    // The real sleep: a 60 s wait that the abort must cut short.
    const retry = new RetryBackend(faulty, { baseDelayMs: 60_000, maxDelayMs: 60_000, random: () => 1 });
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(), 30);
    await assert.rejects(retry.get('x', { signal: controller.signal }), (e) => isCofferError(e, 'CANCELLED'));
    assert.ok(Date.now() - started < 5000);
    assert.equal(faulty.calls.get, 1);
  });

  it('a transient error after the signal fired is reported as CANCELLED and not retried', async () => {
    const controller = new AbortController();
    const memory = new MemoryBackend();
    let calls = 0;
    // A call that is already on its way when the abort comes, and then fails transiently.
    memory.get = async () => {
      calls++;
      controller.abort();
      throw new CofferError('STORAGE_UNAVAILABLE', 'Cannot read x: connection reset');
    };
    const sleeps: number[] = [];
    const retry = new RetryBackend(memory, { sleep: async (ms) => void sleeps.push(ms) });
    await assert.rejects(retry.get('x', { signal: controller.signal }), (e) => isCofferError(e, 'CANCELLED'));
    assert.equal(calls, 1);
    assert.deepEqual(sleeps, []);
  });

  it('list() resumes after mid-listing failures and yields each name exactly once', async () => {
    const { memory, faulty, retry, sleeps } = setup();
    for (let i = 0; i < 50; i++) await memory.put(`p/${i}`, Buffer.from([i]));
    faulty.add({ kind: 'failList', after: 20, times: 1 });
    const second = faulty.add({ kind: 'failList', after: 35, times: 1, enabled: false });
    const names: string[] = [];
    for await (const info of retry.list('p/')) {
      names.push(info.name);
      // Armed for the restart that follows the first failure.
      if (names.length === 20) second.enabled = true;
    }
    assert.equal(names.length, 50);
    assert.equal(new Set(names).size, 50);
    assert.equal(faulty.calls.list, 3);
    assert.equal(sleeps.length, 2);
  });

  it('list() keeps going while each retry makes progress, beyond the attempt count', async () => {
    const { memory, faulty, retry } = setup({ attempts: 2 });
    for (let i = 0; i < 100; i++) await memory.put(`p/${i}`, Buffer.from([i]));
    const breaker = faulty.add({ kind: 'failList', after: 10 });
    const seen = new Set<string>();
    for await (const info of retry.list('p/')) {
      assert.ok(!seen.has(info.name), `${info.name} yielded twice`);
      seen.add(info.name);
      // Every restart gets ten items further before it fails again.
      if (seen.size === breaker.after) breaker.after += 10;
    }
    assert.equal(seen.size, 100);
    assert.equal(faulty.injected.failList, 9);
  });

  it('list() throws when retries run out instead of ending early', async () => {
    const { memory, faulty, retry } = setup({ attempts: 3 });
    for (let i = 0; i < 30; i++) await memory.put(`p/${i}`, Buffer.from([i]));
    faulty.add({ kind: 'failList', after: 10 });
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const info of retry.list('p/')) seen.push(info.name);
      })(),
      (e) => isCofferError(e, 'STORAGE_UNAVAILABLE') && /gave up after 3 attempts/.test(e.message),
    );
    assert.equal(seen.length, 10);
    // The first failure came after progress, so three failures in a row without progress remain.
    assert.equal(faulty.calls.list, 3);
  });

  it('list() does not retry a permanent error', async () => {
    const { memory, faulty, retry, sleeps } = setup();
    await memory.put('p/1', Buffer.from('1'));
    faulty.add({ kind: 'failList', after: 0, error: 'permanent' });
    await assert.rejects(listAll(retry, 'p/'), (e) => isCofferError(e, 'STORAGE_ERROR'));
    assert.deepEqual(sleeps, []);
  });

  it('location is the wrapped backend\'s and close() closes it', async () => {
    let closed = false;
    const memory = new MemoryBackend();
    memory.close = async () => {
      closed = true;
    };
    const retry = new RetryBackend(memory);
    assert.equal(retry.location, 'memory:');
    await retry.close();
    assert.ok(closed);
  });
});
