// An in-process Backend for tests. It keeps the same contract as the real ones (validation,
// errors, cancellation, copies in and out) so that code tested against it behaves the same on disk
// or S3.

import { CofferError, throwIfAborted } from '../core/errors.ts';
import { resolveRange, validateName, validatePrefix } from './backend.ts';
import type { Backend, CallOptions, GetOptions, ListOptions, ObjectInfo } from './backend.ts';

export interface MemoryBackendOptions {
  /** The storage's clock, for `modified` (tests move it to simulate time passing). Default Date.now. */
  now?: () => number;
}

export class MemoryBackend implements Backend {
  readonly location = 'memory:';
  readonly #objects = new Map<string, { data: Buffer; modified: number }>();
  readonly #now: () => number;

  constructor(options: MemoryBackendOptions = {}) {
    this.#now = options.now ?? Date.now;
  }

  async put(name: string, data: Uint8Array, options?: CallOptions): Promise<void> {
    throwIfAborted(options?.signal);
    validateName(name);
    // A copy, so that a caller reusing its buffer cannot change what is stored.
    this.#objects.set(name, { data: Buffer.from(data), modified: this.#now() });
  }

  async get(name: string, options?: GetOptions): Promise<Buffer> {
    throwIfAborted(options?.signal);
    const { data } = this.#find(name);
    const [start, end] = resolveRange(name, data.length, options);
    return Buffer.from(data.subarray(start, end));
  }

  async stat(name: string, options?: CallOptions): Promise<ObjectInfo> {
    throwIfAborted(options?.signal);
    const o = this.#find(name);
    return { name, size: o.data.length, modified: o.modified };
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    throwIfAborted(options?.signal);
    validatePrefix(prefix);
    // A snapshot of the names, so that puts and deletes during the listing cannot upset the
    // iteration; objects deleted meanwhile are left out, as a real store would.
    const names = [...this.#objects.keys()].filter((n) => n.startsWith(prefix));
    for (const name of names) {
      // Yield to the event loop between items so that a listing can be interrupted mid-way.
      await Promise.resolve();
      throwIfAborted(options?.signal);
      const o = this.#objects.get(name);
      if (o !== undefined) yield { name, size: o.data.length, modified: o.modified };
    }
  }

  async delete(name: string, options?: CallOptions): Promise<void> {
    throwIfAborted(options?.signal);
    validateName(name);
    this.#objects.delete(name);
  }

  async close(): Promise<void> {}

  #find(name: string): { data: Buffer; modified: number } {
    validateName(name);
    const o = this.#objects.get(name);
    if (o === undefined) {
      throw new CofferError('NOT_FOUND', `Cannot read ${name}: no such object in memory`);
    }
    return o;
  }
}
