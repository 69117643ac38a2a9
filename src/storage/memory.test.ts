import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryBackend } from './memory.ts';
import { runConformanceSuite } from './conformance.ts';

runConformanceSuite('MemoryBackend', async () => {
  const backend = new MemoryBackend();
  return { backend, cleanup: () => backend.close() };
});

describe('MemoryBackend', () => {
  it('put() copies the data, so later changes to the caller\'s buffer do not change the object', async () => {
    const backend = new MemoryBackend();
    const data = Buffer.from('original');
    await backend.put('x', data);
    data.write('modified');
    assert.equal((await backend.get('x')).toString(), 'original');
  });

  it('get() returns a copy, so changing it does not change the object', async () => {
    const backend = new MemoryBackend();
    await backend.put('x', Buffer.from('original'));
    const got = await backend.get('x');
    got.write('modified');
    assert.equal((await backend.get('x')).toString(), 'original');
    const part = await backend.get('x', { offset: 1, length: 3 });
    part.fill(0);
    assert.equal((await backend.get('x')).toString(), 'original');
  });

  it('list() leaves out objects deleted while the listing runs', async () => {
    const backend = new MemoryBackend();
    for (const n of ['p/1', 'p/2', 'p/3']) await backend.put(n, Buffer.from(n));
    const seen: string[] = [];
    for await (const info of backend.list('p/')) {
      seen.push(info.name);
      if (seen.length === 1) await backend.delete(info.name === 'p/3' ? 'p/1' : 'p/3');
    }
    assert.equal(seen.length, 2);
  });
});
