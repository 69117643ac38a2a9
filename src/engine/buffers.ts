// Reused buffers for the data path. A fresh multi-megabyte buffer per read or per blob costs a
// page fault per 4 KiB page touched (large allocations are mapped and unmapped again each time:
// the launcher sets glibc's mmap threshold to 1 MiB), and on a restore those faults were most of
// its system time. Buffers taken here are allocated once, at a fixed size, and handed back when
// their bytes are no longer needed, so a steady data path touches the same pages over and over.
//
// SharedSlabs hands out SharedArrayBuffers: views of them travel to worker threads without a copy
// or a transfer (the sender keeps them), so one slab can be read into on the main thread, decoded
// into by a worker and written from by another thread. Whoever takes a slab must give it back
// only once no thread will touch its bytes again.
//
// DecodeScratch is one thread's growable scratch buffer (decrypted but still compressed bytes).
//
// BufferPool hands out equal ArrayBuffers, at most a fixed number, and makes take() wait when all
// are out: the backup's read buffers, which bound what is read but not yet encoded.

/** Fixed-size SharedArrayBuffers, reused; a request larger than the size gets a buffer of its own. */
export class SharedSlabs {
  /** Bytes of each slab. */
  readonly size: number;
  /** Slabs kept for reuse at most (more are left to the garbage collector). */
  readonly keep: number;
  private readonly free: SharedArrayBuffer[] = [];

  constructor(size: number, keep: number) {
    if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`SharedSlabs: bad slab size ${size}`);
    this.size = size;
    this.keep = keep;
  }

  /** A view of `n` bytes (contents undefined) over a recycled slab, a new one, or (n > size) a buffer of its own. */
  take(n: number): Uint8Array {
    if (n > this.size) return new Uint8Array(new SharedArrayBuffer(n));
    return new Uint8Array(this.free.pop() ?? new SharedArrayBuffer(this.size), 0, n);
  }

  /** Hands back the slab under `u` (one from take(): views of other buffers are ignored). */
  give(u: Uint8Array): void {
    const b = u.buffer;
    if (b instanceof SharedArrayBuffer && b.byteLength === this.size && this.free.length < this.keep && !this.free.includes(b)) this.free.push(b);
  }

  /** Slabs waiting for reuse. */
  get idle(): number {
    return this.free.length;
  }
}

/** One thread's scratch buffer: grows to the largest size asked for and stays. */
export class DecodeScratch {
  private buf = new Uint8Array(0);

  /** A view of `n` bytes of the scratch buffer (contents undefined); valid until the next call. */
  get(n: number): Uint8Array {
    if (this.buf.byteLength < n) this.buf = new Uint8Array(Math.max(n, Math.min(2 * this.buf.byteLength, 64 << 20)));
    return this.buf.subarray(0, n);
  }
}

/**
 * Equal ArrayBuffers handed out and given back: at most `max` exist, take() waits for one when
 * all are out. One given back detached (moved to a worker that failed) or of another size is
 * dropped and a new one made in its place when needed.
 */
export class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  private readonly waiters: Array<(b: ArrayBuffer) => void> = [];
  private made = 0;
  private readonly size: number;
  private readonly max: number;

  constructor(size: number, max: number) {
    this.size = size;
    this.max = max;
  }

  take(): Promise<ArrayBuffer> | ArrayBuffer {
    const b = this.free.pop();
    if (b) return b;
    if (this.made < this.max) {
      this.made++;
      return new ArrayBuffer(this.size);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  give(b: ArrayBuffer): void {
    if (b.detached || b.byteLength !== this.size) {
      this.made--;
      if (this.waiters.length && this.made < this.max) {
        this.made++;
        this.waiters.shift()!(new ArrayBuffer(this.size));
      }
      return;
    }
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}
