// Deterministic fault injection for tests: wraps a Backend and, by operation and object name,
// throws errors, returns short reads, breaks listings part-way or adds latency. Probabilistic
// faults draw from a seeded PRNG so a failing test fails the same way every run. Rules are plain
// mutable objects so that a test can switch faults on and off while it runs.

import { setTimeout as delay } from 'node:timers/promises';
import { CofferError, throwIfAborted } from '../core/errors.ts';
import type { Backend, CallOptions, GetOptions, ListOptions, ObjectInfo } from './backend.ts';

export type FaultOp = 'put' | 'get' | 'stat' | 'list' | 'delete';

/** 'transient' is STORAGE_UNAVAILABLE (retried by RetryBackend); 'permanent' is STORAGE_ERROR. */
export type FaultError = 'transient' | 'permanent' | Error;

export interface FaultMatch {
  /** Operations the rule applies to (default: every operation the kind makes sense for). */
  ops?: FaultOp[];
  /** Names the rule applies to (for list(): the prefix): a RegExp, or a string the name starts with. */
  name?: RegExp | string;
  /** Fire for the next N matching calls, then never again (default: no limit). */
  times?: number;
  /** Fire on a matching call with this probability, from the seeded PRNG (default 1). */
  probability?: number;
  /** false switches the rule off without removing it. */
  enabled?: boolean;
}

export type FaultRule = FaultMatch &
  (
    | { kind: 'error'; error?: FaultError }
    /** get() returns `bytes` (default 1) fewer bytes than it should: a broken server or proxy. */
    | { kind: 'truncate'; bytes?: number }
    /** list() yields `after` items, then throws instead of yielding another. */
    | { kind: 'failList'; after: number; error?: FaultError }
    /** The call waits `ms` first (abortable). */
    | { kind: 'latency'; ms: number }
  );

const KIND_OPS: Record<FaultRule['kind'], readonly FaultOp[]> = {
  error: ['put', 'get', 'stat', 'list', 'delete'],
  truncate: ['get'],
  failList: ['list'],
  latency: ['put', 'get', 'stat', 'list', 'delete'],
};

/** mulberry32: small, fast and good enough to decide coin flips reproducibly. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class FaultyBackend implements Backend {
  readonly location: string;
  /** Checked in order on every call; add, remove or change rules at any time. */
  rules: FaultRule[];
  /** Calls seen, by operation. */
  readonly calls: Record<FaultOp, number> = { put: 0, get: 0, stat: 0, list: 0, delete: 0 };
  /** Faults injected, by rule kind. */
  readonly injected: Record<FaultRule['kind'], number> = { error: 0, truncate: 0, failList: 0, latency: 0 };
  readonly #inner: Backend;
  readonly #random: () => number;

  constructor(inner: Backend, rules: FaultRule[] = [], options: { seed?: number } = {}) {
    this.#inner = inner;
    this.location = `faulty:${inner.location}`;
    this.rules = rules;
    this.#random = mulberry32(options.seed ?? 1);
  }

  /** Adds a rule and returns it, so that the test can change or disable it later. */
  add<K extends FaultRule['kind']>(rule: Extract<FaultRule, { kind: K }>): Extract<FaultRule, { kind: K }> {
    this.rules.push(rule);
    return rule;
  }

  clear(): void {
    this.rules.length = 0;
  }

  async put(name: string, data: Uint8Array, options?: CallOptions): Promise<void> {
    await this.#before('put', name, options?.signal);
    return this.#inner.put(name, data, options);
  }

  async get(name: string, options?: GetOptions): Promise<Buffer> {
    const fired = await this.#before('get', name, options?.signal);
    let data = await this.#inner.get(name, options);
    for (const rule of fired) {
      if (rule.kind === 'truncate' && data.length > 0) {
        data = data.subarray(0, Math.max(0, data.length - (rule.bytes ?? 1)));
        this.injected.truncate++;
      }
    }
    return data;
  }

  async stat(name: string, options?: CallOptions): Promise<ObjectInfo> {
    await this.#before('stat', name, options?.signal);
    return this.#inner.stat(name, options);
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    const fired = await this.#before('list', prefix, options?.signal);
    const breaker = fired.find((r) => r.kind === 'failList');
    // Fixed when the listing starts, so that a test may change the rule for the next listing.
    const after = breaker?.after ?? Infinity;
    let count = 0;
    for await (const info of this.#inner.list(prefix, options)) {
      if (count >= after) this.#throwFailList(breaker!, prefix);
      count++;
      yield info;
    }
  }

  async delete(name: string, options?: CallOptions): Promise<void> {
    await this.#before('delete', name, options?.signal);
    return this.#inner.delete(name, options);
  }

  async close(): Promise<void> {
    await this.#inner.close();
  }

  /** Counts the call, applies latency and errors, and returns the rules that fired. */
  async #before(op: FaultOp, name: string, signal: AbortSignal | undefined): Promise<FaultRule[]> {
    throwIfAborted(signal);
    this.calls[op]++;
    const fired: FaultRule[] = [];
    for (const rule of this.rules) {
      if (rule.enabled === false || rule.times === 0) continue;
      if (!(rule.ops ?? KIND_OPS[rule.kind]).includes(op) || !KIND_OPS[rule.kind].includes(op)) continue;
      if (rule.name !== undefined && !(typeof rule.name === 'string' ? name.startsWith(rule.name) : rule.name.test(name))) continue;
      if (rule.probability !== undefined && this.#random() >= rule.probability) continue;
      if (rule.times !== undefined) rule.times--;
      fired.push(rule);
    }
    for (const rule of fired) {
      if (rule.kind !== 'latency') continue;
      this.injected.latency++;
      try {
        await delay(rule.ms, undefined, { signal });
      } catch (e) {
        throw new CofferError('CANCELLED', 'Cancelled: the operation was interrupted', { cause: signal?.reason ?? e });
      }
    }
    const failing = fired.find((r) => r.kind === 'error');
    if (failing !== undefined) {
      this.injected.error++;
      throw makeError(failing.error, op, name);
    }
    return fired;
  }

  #throwFailList(rule: Extract<FaultRule, { kind: 'failList' }>, prefix: string): never {
    this.injected.failList++;
    throw makeError(rule.error, 'list', prefix);
  }
}

function makeError(spec: FaultError | undefined, op: FaultOp, name: string): Error {
  if (spec instanceof Error) return spec;
  if (spec === 'permanent') {
    return new CofferError('STORAGE_ERROR', `Cannot ${op} ${name}: injected permanent fault`, { hint: 'This fault was injected by FaultyBackend in a test.' });
  }
  return new CofferError('STORAGE_UNAVAILABLE', `Cannot ${op} ${name}: injected transient fault`, { hint: 'This fault was injected by FaultyBackend in a test.' });
}
