// Bandwidth limits: a rate written as in a StorageUnit document ("50MB/s") and a token bucket that
// holds transfers to it. The bucket is shared by every transfer to one storage unit on one agent:
// bytes are granted in pieces of at most `quantum`, first come first served, so that two jobs
// moving large objects at once take turns piece by piece and each gets about half the rate,
// whatever the size of its objects.

import { CofferError } from './errors.ts';

const UNITS: Record<string, number> = {
  b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12,
  kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4,
};

/** The slowest rate accepted: below this a pack upload would take hours. */
export const MIN_RATE = 1024;

/** A rate's problem (what is wrong, what to write), or its bytes per second. */
export function checkRate(text: unknown): { ok: true; bytesPerSecond: number } | { ok: false; problem: string; hint: string } {
  const hint = 'Write a number of bytes per second such as "50MB/s", "800KiB/s" or "1.5GB/s" (B, KB, MB, GB, TB, or KiB, MiB, GiB, TiB).';
  if (typeof text !== 'string') return { ok: false, problem: `expected a rate such as "50MB/s", got ${typeof text}`, hint };
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*\/\s*s\s*$/i.exec(text);
  if (!m) return { ok: false, problem: `${JSON.stringify(text)} is not a rate`, hint };
  const unit = m[2]!.toLowerCase();
  const bytesPerSecond = Math.floor(Number(m[1]) * UNITS[unit]!);
  if (!(bytesPerSecond >= MIN_RATE)) return { ok: false, problem: `${JSON.stringify(text)} is below the smallest rate, 1KiB/s`, hint: 'Give a higher rate, or leave the field out for no limit.' };
  if (!Number.isSafeInteger(bytesPerSecond)) return { ok: false, problem: `${JSON.stringify(text)} is too large`, hint: 'Leave the field out for no limit.' };
  return { ok: true, bytesPerSecond };
}

/** Bytes per second of a rate such as "50MB/s"; USAGE with the fix when it is not one. */
export function parseRate(text: string): number {
  const r = checkRate(text);
  if (!r.ok) throw new CofferError('USAGE', `Cannot use the bandwidth ${JSON.stringify(text)}: ${r.problem}`, { hint: r.hint });
  return r.bytesPerSecond;
}

/** What the bucket needs of a clock (real time by default; tests give a fake one). */
export interface BucketClock {
  now(): number;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

const realClock: BucketClock = {
  now: () => performance.now(),
  sleep: (ms, signal) => new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  }),
};

export interface TokenBucketOptions {
  /** Bytes that may go at once after a quiet spell (default: a quarter of a second's worth, at least one quantum). */
  burst?: number;
  /** The largest piece granted at a time (default 256 KiB). */
  quantum?: number;
  clock?: BucketClock;
}

/**
 * A token bucket of `rate` bytes per second. take(n) returns once n bytes may be moved: it
 * reserves them piece by piece in arrival order and waits for the bucket to refill. A waiter that
 * is cancelled gives back what it reserved and has not yet used.
 */
export class TokenBucket {
  readonly rate: number;
  private readonly burst: number;
  private readonly quantum: number;
  private readonly clock: BucketClock;
  /** Tokens at `stamp`; negative when more is reserved than has accrued (the debt waiters sleep off). */
  private tokens: number;
  private stamp: number;
  /** Takers in arrival order: each reserves its next piece only when it is at the head. */
  private queue: Array<() => void> = [];
  private serving = false;

  constructor(rate: number, options: TokenBucketOptions = {}) {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new CofferError('INTERNAL', `Cannot make a token bucket of ${rate} bytes per second`);
    this.rate = rate;
    this.quantum = Math.max(1, Math.floor(options.quantum ?? 256 * 1024));
    this.burst = Math.max(this.quantum, Math.floor(options.burst ?? rate / 4));
    this.clock = options.clock ?? realClock;
    this.stamp = this.clock.now();
    this.tokens = this.burst;
  }

  /** Waits until `bytes` may be moved; CANCELLED if `signal` fires first. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    let left = Math.max(0, Math.ceil(bytes));
    const never = new AbortController().signal;
    while (left > 0) {
      if (signal?.aborted) throw new CofferError('CANCELLED', 'Cancelled while waiting for bandwidth');
      await this.turn();
      const piece = Math.min(left, this.quantum);
      this.refill();
      this.tokens -= piece;
      const wait = this.tokens < 0 ? (-this.tokens / this.rate) * 1000 : 0;
      this.next();
      left -= piece;
      if (wait > 0) {
        await this.clock.sleep(wait, signal ?? never);
        if (signal?.aborted) {
          // The piece was reserved, not moved: it goes back to the others.
          this.refill();
          this.tokens = Math.min(this.burst, this.tokens + piece);
          throw new CofferError('CANCELLED', 'Cancelled while waiting for bandwidth');
        }
      }
    }
  }

  private refill(): void {
    const now = this.clock.now();
    if (now > this.stamp) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.stamp) * this.rate) / 1000);
      this.stamp = now;
    }
  }

  /** Resolves when this taker is at the head of the queue. */
  private turn(): Promise<void> {
    if (!this.serving) {
      this.serving = true;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.queue.push(resolve));
  }

  /** Hands the head to the next taker. */
  private next(): void {
    const n = this.queue.shift();
    if (n) n();
    else this.serving = false;
  }
}
