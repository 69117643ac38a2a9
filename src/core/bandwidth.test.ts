import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkRate, parseRate, TokenBucket } from './bandwidth.ts';
import { FakeClock } from '../testing/fake-clock.ts';
import { expectCode } from '../testing/errors.ts';

/** Runs `work` on a fake clock, moving time to each sleeper's wake-up until it is done; returns the time it took. */
async function onFakeTime(clock: FakeClock, work: Promise<unknown>): Promise<number> {
  const start = clock.now();
  let finished = false;
  const done = work.finally(() => (finished = true));
  while (!finished) {
    await new Promise((r) => setImmediate(r));
    const wake = clock.nextWake();
    if (wake !== null) clock.set(wake);
  }
  await done;
  return clock.now() - start;
}

describe('bandwidth', () => {
  it('reads rates as written in a StorageUnit, and says what to write instead of a bad one', () => {
    assert.equal(parseRate('50MB/s'), 50_000_000);
    assert.equal(parseRate('800KiB/s'), 800 * 1024);
    assert.equal(parseRate('1.5 GB / s'), 1_500_000_000);
    assert.equal(parseRate('2048B/s'), 2048);
    for (const bad of ['50MB', 'fast', '0MB/s', '10B/s', '-1MB/s', '5 MBps']) {
      const r = checkRate(bad);
      assert.equal(r.ok, false, bad);
      if (!r.ok) assert.ok(r.hint.length > 0);
    }
    assert.equal(checkRate(50).ok, false);
    assert.throws(() => parseRate('50 meg'), /Cannot use the bandwidth "50 meg".*not a rate/);
  });

  it('holds one taker to the rate (fake clock): 20 MB at 2 MB/s take 10 s less the burst', async () => {
    const clock = new FakeClock(1_000_000);
    const bucket = new TokenBucket(2_000_000, { clock, burst: 500_000, quantum: 100_000 });
    let n = 0;
    const ms = await onFakeTime(clock, (async () => {
      for (let i = 0; i < 20; i++) {
        await bucket.take(1_000_000);
        n++;
      }
    })());
    assert.equal(n, 20);
    const expected = ((20_000_000 - 500_000) / 2_000_000) * 1000;
    assert.ok(Math.abs(ms - expected) <= expected * 0.01, `${ms} ms, expected ${expected}`);
  });

  it('shares the rate fairly between takers of different object sizes (fake clock)', async () => {
    const clock = new FakeClock(0);
    const bucket = new TokenBucket(1_000_000, { clock, burst: 100_000, quantum: 100_000 });
    const finished: Record<string, number> = {};
    const moved: Record<string, number> = { big: 0, small: 0 };
    const taker = async (name: string, size: number, total: number) => {
      while (moved[name]! < total) {
        await bucket.take(size);
        moved[name]! += size;
      }
      finished[name] = clock.now();
    };
    // 4 MB objects against 100 KB ones, 4 MB in all each: both go at about half the rate.
    const ms = await onFakeTime(clock, Promise.all([taker('big', 4_000_000, 4_000_000), taker('small', 100_000, 4_000_000)]));
    assert.ok(Math.abs(ms - 7_900) <= 100, `all 8 MB in ${ms} ms at 1 MB/s`);
    assert.ok(Math.abs(finished.big! - finished.small!) <= 300, `big done at ${finished.big}, small at ${finished.small}: neither waited for the other`);
  });

  it('gives back what a cancelled taker reserved, and tells it CANCELLED', async () => {
    const clock = new FakeClock(0);
    const bucket = new TokenBucket(1_000_000, { clock, burst: 100_000, quantum: 100_000 });
    await bucket.take(100_000); // the burst is spent
    const ac = new AbortController();
    const waiting = bucket.take(500_000, ac.signal);
    await clock.idle();
    ac.abort();
    await expectCode(waiting, 'CANCELLED');
    // Had its reservation stayed, the next 100 KB would wait 200 ms; it waits 100.
    const ms = await onFakeTime(clock, bucket.take(100_000));
    assert.ok(ms <= 100, `${ms} ms`);
  });

  it('keeps to the rate on the real clock too, within a tolerance (short)', async () => {
    const bucket = new TokenBucket(4_000_000, { burst: 64 * 1024, quantum: 64 * 1024 });
    const start = performance.now();
    for (let i = 0; i < 8; i++) await bucket.take(200_000);
    const ms = performance.now() - start;
    const expected = ((1_600_000 - 64 * 1024) / 4_000_000) * 1000; // 384 ms
    assert.ok(ms >= expected * 0.95 && ms <= expected * 1.6 + 50, `${ms.toFixed(0)} ms, expected ${expected.toFixed(0)}`);
  });
});
