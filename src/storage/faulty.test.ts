import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CofferError, isCofferError } from '../core/errors.ts';
import { listAll } from './backend.ts';
import { CONFORMANCE_CHECKS, runConformanceSuite } from './conformance.ts';
import { FaultyBackend } from './faulty.ts';
import { MemoryBackend } from './memory.ts';

runConformanceSuite('FaultyBackend without rules', async () => {
  const backend = new FaultyBackend(new MemoryBackend());
  return { backend, cleanup: () => backend.close() };
});

async function filled(names: string[]): Promise<MemoryBackend> {
  const memory = new MemoryBackend();
  for (const n of names) await memory.put(n, Buffer.from(n));
  return memory;
}

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return isCofferError(e) ? e.code : String(e);
  }
}

describe('FaultyBackend', () => {
  it('an error rule fails the next N matching calls, then lets calls through', async () => {
    const faulty = new FaultyBackend(await filled(['a']), [{ kind: 'error', times: 2 }]);
    assert.equal(await outcome(faulty.get('a')), 'STORAGE_UNAVAILABLE');
    assert.equal(await outcome(faulty.stat('a')), 'STORAGE_UNAVAILABLE');
    assert.equal(await outcome(faulty.get('a')), 'ok');
    assert.equal(faulty.injected.error, 2);
    assert.deepEqual(faulty.calls, { put: 0, get: 2, stat: 1, list: 0, delete: 0 });
  });

  it('an error rule throws a transient, a permanent or a given error', async () => {
    const given = new CofferError('STORAGE_DENIED', 'Cannot read a: access denied');
    const faulty = new FaultyBackend(await filled(['a']), [
      { kind: 'error', error: 'transient', times: 1 },
      { kind: 'error', error: 'permanent', times: 1 },
      { kind: 'error', error: given, times: 1 },
    ]);
    // All three match the first call: the first decides the error, and each uses up its one turn.
    await assert.rejects(faulty.get('a'), (e) => isCofferError(e, 'STORAGE_UNAVAILABLE') && e.transient);
    assert.equal(await outcome(faulty.get('a')), 'ok');
    faulty.rules = [{ kind: 'error', error: 'permanent' }];
    await assert.rejects(faulty.get('a'), (e) => isCofferError(e, 'STORAGE_ERROR') && !e.transient && /injected permanent fault/.test(e.message));
    faulty.rules = [{ kind: 'error', error: given }];
    await assert.rejects(faulty.get('a'), (e) => e === given);
  });

  it('a rule matches by operation and by name prefix or RegExp', async () => {
    const faulty = new FaultyBackend(await filled(['data/1', 'data/2', 'index/1', 'keys/x']), [
      { kind: 'error', ops: ['get'], name: 'data/' },
      { kind: 'error', ops: ['stat', 'delete'], name: /^index\/\d$/ },
    ]);
    assert.equal(await outcome(faulty.get('data/1')), 'STORAGE_UNAVAILABLE');
    assert.equal(await outcome(faulty.stat('data/1')), 'ok');
    assert.equal(await outcome(faulty.get('index/1')), 'ok');
    assert.equal(await outcome(faulty.stat('index/1')), 'STORAGE_UNAVAILABLE');
    assert.equal(await outcome(faulty.delete('index/1')), 'STORAGE_UNAVAILABLE');
    assert.equal(await outcome(faulty.get('keys/x')), 'ok');
    assert.equal(await outcome(faulty.put('data/3', Buffer.from('3'))), 'ok');
  });

  it('a probabilistic rule fires on the same calls for the same seed', async () => {
    const run = async (seed: number): Promise<string> => {
      const faulty = new FaultyBackend(await filled(['a']), [{ kind: 'error', probability: 0.3 }], { seed });
      let pattern = '';
      for (let i = 0; i < 200; i++) pattern += (await outcome(faulty.get('a'))) === 'ok' ? '.' : 'x';
      return pattern;
    };
    const first = await run(7);
    assert.equal(await run(7), first);
    assert.notEqual(await run(8), first);
    const failures = [...first].filter((c) => c === 'x').length;
    assert.ok(failures > 30 && failures < 90, `${failures} failures in 200 calls at p = 0.3`);
  });

  it('truncate makes get() return fewer bytes than asked for', async () => {
    const memory = new MemoryBackend();
    await memory.put('a', Buffer.from('0123456789'));
    const faulty = new FaultyBackend(memory, [{ kind: 'truncate', bytes: 3 }]);
    assert.equal((await faulty.get('a')).toString(), '0123456');
    assert.equal((await faulty.get('a', { offset: 2, length: 5 })).toString(), '23');
    assert.equal(faulty.injected.truncate, 2);
  });

  it('the conformance suite catches a backend that truncates reads', async () => {
    const faulty = new FaultyBackend(new MemoryBackend(), [{ kind: 'truncate' }]);
    const roundTrip = CONFORMANCE_CHECKS.find((c) => c.name.startsWith('put() then get()'))!;
    await assert.rejects(roundTrip.run(faulty, { prefix: 't/' }), (e) => isCofferError(e, 'CHECK_FAILED') && /returned 0 bytes, expected 1/.test(e.message));
  });

  it('failList breaks a listing after K items', async () => {
    const faulty = new FaultyBackend(await filled(['p/1', 'p/2', 'p/3', 'p/4']), [{ kind: 'failList', after: 2, times: 1 }]);
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const info of faulty.list('p/')) seen.push(info.name);
      })(),
      (e) => isCofferError(e, 'STORAGE_UNAVAILABLE'),
    );
    assert.equal(seen.length, 2);
    assert.equal((await listAll(faulty, 'p/')).length, 4);
  });

  it('an error rule on list() fails the listing before the first item', async () => {
    const faulty = new FaultyBackend(await filled(['p/1']), [{ kind: 'error', ops: ['list'], error: 'permanent' }]);
    await assert.rejects(listAll(faulty, 'p/'), (e) => isCofferError(e, 'STORAGE_ERROR'));
  });

  it('latency delays a call, and an abort cuts the delay short with CANCELLED', async () => {
    const faulty = new FaultyBackend(await filled(['a']), [{ kind: 'latency', ms: 40 }]);
    let started = performance.now();
    await faulty.get('a');
    assert.ok(performance.now() - started >= 35);
    faulty.rules[0] = { kind: 'latency', ms: 60_000 };
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 20);
    started = performance.now();
    await assert.rejects(faulty.get('a', { signal: controller.signal }), (e) => isCofferError(e, 'CANCELLED'));
    assert.ok(performance.now() - started < 5000);
  });

  it('a disabled rule does nothing until it is switched back on', async () => {
    const faulty = new FaultyBackend(await filled(['a']));
    const rule = faulty.add({ kind: 'error', enabled: false });
    assert.equal(await outcome(faulty.get('a')), 'ok');
    rule.enabled = true;
    assert.equal(await outcome(faulty.get('a')), 'STORAGE_UNAVAILABLE');
    faulty.clear();
    assert.equal(await outcome(faulty.get('a')), 'ok');
  });
});
