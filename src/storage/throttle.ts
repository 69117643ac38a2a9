// A bandwidth limit as a wrapper around any Backend: bytes written (put) and read (get) pass
// through a token bucket (src/core/bandwidth.ts) that every wrapper of one storage unit on one
// agent shares, so that the unit's limit holds for all the agent's jobs together and each gets its
// turn. A put waits before it sends; a get of a known range waits before it reads, a whole-object
// get after (its size is only known then). Listings, stats and deletes are not counted, nor the
// objects `counted` leaves out: a repository counts its packs only, so that small metadata writes
// (index files, session heartbeats) never wait in the queue behind the packs of other jobs.
// Object locks (an immutable unit) pass through.

import type { TokenBucket } from '../core/bandwidth.ts';
import type { Backend, CallOptions, GetOptions, ListOptions, ObjectInfo, ObjectLocks } from './backend.ts';

export class ThrottledBackend implements Backend {
  readonly location: string;
  readonly locks?: ObjectLocks;
  private readonly inner: Backend;
  private readonly bucket: TokenBucket;
  private readonly counted: (name: string) => boolean;

  constructor(inner: Backend, bucket: TokenBucket, options: { counted?: (name: string) => boolean } = {}) {
    this.inner = inner;
    this.bucket = bucket;
    this.location = inner.location;
    this.counted = options.counted ?? (() => true);
    if (inner.locks) this.locks = inner.locks;
  }

  async put(name: string, data: Uint8Array, options?: CallOptions): Promise<void> {
    if (this.counted(name)) await this.bucket.take(data.length, options?.signal);
    await this.inner.put(name, data, options);
  }

  async get(name: string, options?: GetOptions): Promise<Buffer> {
    if (!this.counted(name)) return this.inner.get(name, options);
    const known = options?.length;
    if (known !== undefined) await this.bucket.take(known, options?.signal);
    const data = await this.inner.get(name, options);
    if (known === undefined) await this.bucket.take(data.length, options?.signal);
    return data;
  }

  stat(name: string, options?: CallOptions): Promise<ObjectInfo> {
    return this.inner.stat(name, options);
  }

  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix, options);
  }

  delete(name: string, options?: CallOptions): Promise<void> {
    return this.inner.delete(name, options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
