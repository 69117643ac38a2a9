import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { listAll } from './backend.ts';
import type { Backend, CallOptions, GetOptions, ListOptions, ObjectInfo } from './backend.ts';
import { CONFORMANCE_CHECKS, validateStorage } from './conformance.ts';
import type { CheckResult } from './conformance.ts';
import { FaultyBackend } from './faulty.ts';
import { MemoryBackend } from './memory.ts';

/** Records every name (and list prefix) a check hands to the backend. */
class Recorder implements Backend {
  readonly location = 'recorder:';
  readonly touched: string[] = [];
  readonly inner: Backend;
  constructor(inner: Backend) {
    this.inner = inner;
  }
  put(name: string, data: Uint8Array, options?: CallOptions): Promise<void> {
    this.touched.push(name);
    return this.inner.put(name, data, options);
  }
  get(name: string, options?: GetOptions): Promise<Buffer> {
    this.touched.push(name);
    return this.inner.get(name, options);
  }
  stat(name: string, options?: CallOptions): Promise<ObjectInfo> {
    this.touched.push(name);
    return this.inner.stat(name, options);
  }
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    this.touched.push(prefix);
    return this.inner.list(prefix, options);
  }
  delete(name: string, options?: CallOptions): Promise<void> {
    this.touched.push(name);
    return this.inner.delete(name, options);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

describe('CONFORMANCE_CHECKS', () => {
  it('every check that is not marked destructive touches only names under its prefix and leaves nothing behind', async () => {
    const memory = new MemoryBackend();
    await memory.put('user/data', Buffer.from('keep me'));
    for (const check of CONFORMANCE_CHECKS) {
      const recorder = new Recorder(memory);
      await check.run(recorder, { prefix: 'scratch/' });
      if (!check.destructive) {
        const outside = recorder.touched.filter((n) => !n.startsWith('scratch/'));
        assert.deepEqual(outside, [], `${check.name} touched names outside its prefix`);
      }
      assert.deepEqual((await listAll(memory, '')).map((o) => o.name), ['user/data'], `${check.name} left objects behind`);
    }
    assert.equal((await memory.get('user/data')).toString(), 'keep me');
  });

  it('names read as sentences and are unique', () => {
    const names = CONFORMANCE_CHECKS.map((c) => c.name);
    assert.equal(new Set(names).size, names.length);
    for (const name of names) assert.match(name, /^[a-z]/);
  });
});

describe('validateStorage()', () => {
  it('runs every non-destructive check in a scratch prefix and removes all it wrote', async () => {
    const memory = new MemoryBackend();
    await memory.put('config', Buffer.from('the user\'s repository'));
    const recorder = new Recorder(memory);
    const reported: CheckResult[] = [];
    const results = await validateStorage(recorder, { onResult: (r) => reported.push(r) });
    assert.deepEqual(results, reported);
    assert.deepEqual(results.map((r) => r.name), CONFORMANCE_CHECKS.filter((c) => !c.destructive).map((c) => c.name));
    assert.ok(results.every((r) => r.ok && r.error === undefined && r.ms >= 0));
    assert.ok(recorder.touched.every((n) => /^coffer-validate-[0-9a-f]{16}\//.test(n)), 'a name outside the scratch prefix was used');
    assert.deepEqual((await listAll(memory, '')).map((o) => o.name), ['config']);
  });

  it('includes the destructive checks when asked', async () => {
    const results = await validateStorage(new MemoryBackend(), { includeDestructive: true });
    assert.equal(results.length, CONFORMANCE_CHECKS.length);
  });

  it('reports failing checks with their error and still cleans up', async () => {
    const memory = new MemoryBackend();
    const faulty = new FaultyBackend(memory, [{ kind: 'truncate' }]);
    const results = await validateStorage(faulty);
    const failed = results.filter((r) => !r.ok);
    assert.ok(failed.length >= 3, `only ${failed.length} checks noticed truncated reads`);
    assert.ok(failed.every((r) => isCofferError(r.error, 'CHECK_FAILED')));
    assert.ok(results.some((r) => r.ok));
    assert.deepEqual(await listAll(memory, ''), []);
  });

  it('stops with CANCELLED when the signal fires, and still cleans up', async () => {
    const memory = new MemoryBackend();
    const controller = new AbortController();
    const seen: string[] = [];
    await assert.rejects(
      validateStorage(memory, {
        signal: controller.signal,
        onResult: (r) => {
          seen.push(r.name);
          if (seen.length === 2) controller.abort();
        },
      }),
      (e) => isCofferError(e, 'CANCELLED'),
    );
    assert.equal(seen.length, 2);
    assert.deepEqual(await listAll(memory, ''), []);
  });

  it('says so when it cannot remove its scratch objects', async () => {
    const memory = new MemoryBackend();
    const faulty = new FaultyBackend(memory, [{ kind: 'error', ops: ['delete'], error: 'permanent' }]);
    await assert.rejects(validateStorage(faulty), (e) => isCofferError(e, 'STORAGE_ERROR') && /Cannot remove the scratch prefix coffer-validate-/.test(e.message) && /by hand/.test(e.hint ?? ''));
  });
});
