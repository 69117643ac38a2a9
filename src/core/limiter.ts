// A counting semaphore for async work: at most `max` holders at once, the others wait in order.

export class Limiter {
  private active = 0;
  // A queue with a moving head: Array.shift() copies the whole array once it is large, and a
  // directory of a million files queued a million waiters (19 of 27 s of a 200,000-file backup).
  private waiters: Array<(() => void) | undefined> = [];
  private head = 0;
  private readonly max: number;

  constructor(max: number) {
    this.max = max;
  }

  /** Waits for a free place and takes it; release() gives it back. */
  async acquire(): Promise<void> {
    while (this.active >= this.max) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
  }

  release(): void {
    this.active--;
    if (this.head >= this.waiters.length) return;
    const next = this.waiters[this.head];
    this.waiters[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.waiters.length) {
      this.waiters = this.waiters.slice(this.head);
      this.head = 0;
    }
    next!();
  }

  /** Runs `fn` holding a place. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}
