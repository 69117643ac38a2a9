// Retries transient storage failures (network blips, throttling, 5xx) with exponential backoff
// and full jitter, as a wrapper around any Backend. Backends themselves never retry, so there is
// exactly one place that decides how long to keep trying.

import { setTimeout as delay } from 'node:timers/promises';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import type { Backend, CallOptions, GetOptions, ListOptions, ObjectInfo, ObjectLocks } from './backend.ts';

export interface RetryEvent {
  op: 'put' | 'get' | 'stat' | 'list' | 'delete' | 'lock';
  /** The object name, or the prefix for list(). */
  name: string;
  /** The attempt that failed, from 1. */
  attempt: number;
  delayMs: number;
  error: unknown;
}

export interface RetryOptions {
  /** Tries per call, including the first (default 6). */
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Called before each wait, e.g. to log "retrying in 1.2 s". */
  onRetry?: (event: RetryEvent) => void;
  /** Waits `ms`; must reject with CANCELLED when `signal` fires. Injectable for tests. */
  sleep?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  /** A number in [0, 1) for the jitter; injectable for tests. */
  random?: () => number;
}

function isTransient(e: unknown): boolean {
  return (e as { transient?: unknown } | null)?.transient === true;
}

async function defaultSleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await delay(ms, undefined, { signal });
  } catch (e) {
    throw new CofferError('CANCELLED', 'Cancelled: the operation was interrupted', { cause: signal?.reason ?? e });
  }
}

export class RetryBackend implements Backend {
  readonly location: string;
  readonly locks?: ObjectLocks;
  readonly #inner: Backend;
  readonly #attempts: number;
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #onRetry: ((event: RetryEvent) => void) | undefined;
  readonly #sleep: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  readonly #random: () => number;

  constructor(inner: Backend, options: RetryOptions = {}) {
    this.#inner = inner;
    this.location = inner.location;
    this.#attempts = Math.max(1, options.attempts ?? 6);
    this.#baseDelayMs = options.baseDelayMs ?? 200;
    this.#maxDelayMs = options.maxDelayMs ?? 10_000;
    this.#onRetry = options.onRetry;
    this.#sleep = options.sleep ?? defaultSleep;
    this.#random = options.random ?? Math.random;
    const locks = inner.locks;
    if (locks) {
      this.locks = {
        check: (o) => this.#retry('lock', '', o?.signal, () => locks.check(o)),
        lockedUntil: (name, o) => this.#retry('lock', name, o?.signal, () => locks.lockedUntil(name, o)),
        extend: (name, until, o) => this.#retry('lock', name, o?.signal, () => locks.extend(name, until, o)),
      };
    }
  }

  put(name: string, data: Uint8Array, options?: CallOptions): Promise<void> {
    return this.#retry('put', name, options?.signal, () => this.#inner.put(name, data, options));
  }

  get(name: string, options?: GetOptions): Promise<Buffer> {
    return this.#retry('get', name, options?.signal, () => this.#inner.get(name, options));
  }

  stat(name: string, options?: CallOptions): Promise<ObjectInfo> {
    return this.#retry('stat', name, options?.signal, () => this.#inner.stat(name, options));
  }

  delete(name: string, options?: CallOptions): Promise<void> {
    return this.#retry('delete', name, options?.signal, () => this.#inner.delete(name, options));
  }

  /**
   * A listing that fails part-way is started again from the beginning, leaving out names already
   * yielded, so that every object still comes exactly once. Failures count against the attempts
   * only while no new names arrive; a listing that keeps making progress keeps going.
   */
  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    const signal = options?.signal;
    const yielded = new Set<string>();
    let failures = 0;
    for (;;) {
      throwIfAborted(signal);
      let progressed = false;
      try {
        for await (const info of this.#inner.list(prefix, options)) {
          if (yielded.has(info.name)) continue;
          yielded.add(info.name);
          progressed = true;
          yield info;
        }
        return;
      } catch (e) {
        if (progressed) failures = 0;
        failures++;
        await this.#backoff('list', prefix, failures, e, signal);
      }
    }
  }

  async close(): Promise<void> {
    await this.#inner.close();
  }

  async #retry<T>(op: RetryEvent['op'], name: string, signal: AbortSignal | undefined, call: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(signal);
      try {
        return await call();
      } catch (e) {
        await this.#backoff(op, name, attempt, e, signal);
      }
    }
  }

  /** Rethrows `e` unless it is transient and attempts remain; otherwise waits before the next try. */
  async #backoff(op: RetryEvent['op'], name: string, attempt: number, e: unknown, signal: AbortSignal | undefined): Promise<void> {
    if (signal?.aborted) {
      if (isCofferError(e, 'CANCELLED')) throw e;
      throwIfAborted(signal);
    }
    if (!isTransient(e)) throw e;
    if (attempt >= this.#attempts) {
      const inner = isCofferError(e) ? e : undefined;
      const message = inner?.message ?? (e instanceof Error ? e.message : String(e));
      throw new CofferError(inner?.code ?? 'STORAGE_UNAVAILABLE', `${message} (gave up after ${attempt} attempts)`, {
        cause: e,
        hint: inner?.hint ?? 'The storage kept failing; check its status and the network, then try again.',
        details: { ...inner?.details, attempts: attempt },
      });
    }
    // Full jitter: spreads out many clients that failed at the same moment.
    const cap = Math.min(this.#maxDelayMs, this.#baseDelayMs * 2 ** (attempt - 1));
    const delayMs = Math.round(this.#random() * cap);
    this.#onRetry?.({ op, name, attempt, delayMs, error: e });
    await this.#sleep(delayMs, signal);
  }
}
