// A clock for tests of code that sleeps (the scheduler loop): time moves only when the test says,
// and the test can wait until the code under test is asleep again.

interface Sleeper {
  until: number;
  resolve: () => void;
}

export class FakeClock {
  private time: number;
  private sleepers: Sleeper[] = [];
  private idleWaiters: Array<() => void> = [];

  constructor(start: number) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  /** Resolves when the clock reaches now + ms (see set()), or early when signal aborts. */
  sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      const sleeper: Sleeper = {
        until: this.time + Math.max(0, ms),
        resolve: () => {
          this.sleepers = this.sleepers.filter((s) => s !== sleeper);
          signal.removeEventListener('abort', sleeper.resolve);
          resolve();
        },
      };
      signal.addEventListener('abort', sleeper.resolve, { once: true });
      this.sleepers.push(sleeper);
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    });
  }

  /** Resolves once something is asleep on this clock (at once if something already is). */
  idle(): Promise<void> {
    if (this.sleepers.length > 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The earliest time a sleeper waits for, or null. */
  nextWake(): number | null {
    return this.sleepers.length === 0 ? null : Math.min(...this.sleepers.map((s) => s.until));
  }

  /** Jumps to t (forward, or back) and wakes every sleeper whose time has come; like a machine
   * that was suspended, nothing runs in between. */
  set(t: number): void {
    this.time = t;
    for (const s of [...this.sleepers]) if (s.until <= t) s.resolve();
  }

  advance(ms: number): void {
    this.set(this.time + ms);
  }

  /** Lets time pass to t as it would on a running machine: every sleeper wakes at its time, and
   * this waits for the code to be asleep again before moving on. */
  async runUntil(t: number): Promise<void> {
    await this.idle();
    for (;;) {
      const next = this.nextWake();
      if (next === null || next > t) break;
      this.set(Math.max(next, this.time));
      await this.idle();
    }
    this.set(t);
    await this.idle();
  }
}
