import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Limiter } from './limiter.ts';

describe('Limiter', () => {
  it('lets at most max holders in at once and the others in the order they came, across many waiters', async () => {
    const limiter = new Limiter(3);
    let active = 0;
    let peak = 0;
    const order: number[] = [];
    // More waiters than the queue's compaction threshold, so the queue is compacted on the way.
    await Promise.all(Array.from({ length: 5000 }, (_, i) => limiter.run(async () => {
      active++;
      peak = Math.max(peak, active);
      order.push(i);
      await new Promise((r) => setImmediate(r));
      active--;
    })));
    assert.equal(peak, 3);
    assert.deepEqual(order, Array.from({ length: 5000 }, (_, i) => i));
  });

  it('a released place with nobody waiting is simply free again', async () => {
    const limiter = new Limiter(1);
    await limiter.acquire();
    limiter.release();
    await limiter.acquire();
    limiter.release();
    await limiter.run(async () => {});
  });
});
