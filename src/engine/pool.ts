// A pool of worker threads for the CPU-heavy stages (chunking, hashing, compression, encryption,
// decoding), sized to the machine, so that the main thread only does I/O and bookkeeping.
//
// Buffers: inputs are COPIED into each message (the caller keeps using its buffers, which are
// often views into larger read buffers; structured clone would copy the whole backing store),
// except inputs backed by a SharedArrayBuffer, which are shared with the worker without a copy
// (the caller must then leave those bytes alone until the call settles); chunkAndHash() can also
// move its input to the worker and back. Results are TRANSFERRED back, not copied: the results
// of one encode()/decode() call (decoded blobs of up to 64 KiB) share one buffer, so a message
// carries a few typed arrays instead of thousands of small objects and buffers.
// Idle workers are unref'd: a pool nobody closes does not keep the process alive, but a pool with
// work in flight does. Prefer close().
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { CofferError, throwIfAborted } from '../core/errors.ts';
import { Limiter } from '../core/limiter.ts';
import { workerExecArgv } from '../core/worker-argv.ts';
import { encodeFault, type EncodedBlob } from './blob.ts';
import { nativeCodec, type NativeCodec } from './addon.ts';
import { chunkerParamsProblem, type ChunkerParams } from './chunker.ts';
import { checkLevel } from './compress.ts';
import { BLOB_TYPE_CODE, ID_SIZE, TAG_SIZE, type BlobType } from './format.ts';
import { chunkId } from './hash.ts';
import type { RepoKeys } from './keys.ts';
import { DECODE_COLS, ENCODE_COLS, checkChunkMode, type ChunkMode, type ExpectedFile, type ReadFileResult } from './tasks.ts';
import type { ContextInit, ContextMessage, Reply, Request, SerializedError, WorkerInit } from './worker.ts';

/** One repository's parameters: what its data requests need in the workers. */
export interface RepoParams {
  keys: RepoKeys;
  chunker: ChunkerParams;
  /** zstd level for encode(). */
  level: number;
}

export interface PoolOptions extends Partial<RepoParams> {
  /** Number of workers; default one per core (os.availableParallelism()), one per two with the addon's encoder. */
  workers?: number;
}

export interface EncodeItem { type: BlobType; id: Uint8Array; raw: Uint8Array; packKey: Buffer; nonceIndex: number }
export interface DecodeItem { type: BlobType; id: Uint8Array; packKey: Buffer; nonceIndex: number; compressed: boolean; rawLength: number; stored: Uint8Array }

export const MAX_WORKERS = 256;
/** Native encode() parts running at once, process-wide: one per core. */
const codecSlots = new Limiter(Math.max(1, availableParallelism()));
/** encode()/decode() split a batch over workers in parts of at least this many bytes. */
const MIN_PART_BYTES = 1 << 20;
/** This many workers dying in a row without finishing a task means they cannot run at all. */
const MAX_CONSECUTIVE_CRASHES = 5;
const WORKER_URL = new URL('./worker.ts', import.meta.url);

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
type Body = DistributiveOmit<Request, 'id'>;

interface Task {
  id: number;
  body: Body;
  transfer: ArrayBuffer[];
  resolve: (r: Reply & { ok: true }) => void;
  reject: (e: unknown) => void;
  settled: boolean;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

interface Slot {
  worker: Worker;
  task: Task | undefined;
  dead: boolean;
  /** Completed a task since it started: a crash after that is not a start-up failure. */
  proven: boolean;
}

/** The number of workers asked for, or one per core (the caller reads any setting such as COFFER_WORKERS). */
function workerCount(requested: number | undefined): number {
  if (requested !== undefined) {
    if (!Number.isSafeInteger(requested) || requested < 1 || requested > MAX_WORKERS) {
      throw new CofferError('USAGE', `Cannot start ${String(requested)} workers: give a number from 1 to ${MAX_WORKERS}`);
    }
    return requested;
  }
  // With the addon's encoder, blobs are encoded on libuv's thread pool and the workers only
  // chunk and hash (about 1 GB/s each): one per two cores keeps up, and each worker isolate
  // costs 20-30 MB of RSS (one-VM backup on 2 cores: 292 MB with two, 261 MB with one).
  const cores = availableParallelism();
  return Math.max(1, Math.min(MAX_WORKERS, nativeCodec() ? Math.ceil(cores / 2) : cores));
}

function toError(e: SerializedError): CofferError {
  return new CofferError(e.code, e.message, { hint: e.hint, details: e.details });
}

function cancelled(signal: AbortSignal): CofferError {
  return new CofferError('CANCELLED', 'Cancelled: the operation was interrupted', { cause: signal.reason });
}

const isShared = (u: Uint8Array): boolean => typeof SharedArrayBuffer !== 'undefined' && u.buffer instanceof SharedArrayBuffer;

/** The ids of `items` back to back in one buffer, and their pack keys once each. */
function packIdsAndKeys(items: ReadonlyArray<{ id: Uint8Array; packKey: Uint8Array }>): { ids: Uint8Array; keys: Uint8Array[]; keyOf: (k: Uint8Array) => number } {
  const ids = new Uint8Array(items.length * ID_SIZE);
  items.forEach((it, i) => {
    if (it.id.length !== ID_SIZE) throw new CofferError('INTERNAL', `Cannot encode or decode a blob: its id has ${it.id.length} bytes, not ${ID_SIZE}`);
    ids.set(it.id, i * ID_SIZE);
  });
  const keys: Uint8Array[] = [];
  // By identity: the items of one pack share its key object (no hex string per item). An equal
  // key in another object is only sent twice.
  const byObject = new Map<Uint8Array, number>();
  const keyOf = (k: Uint8Array): number => {
    let i = byObject.get(k);
    if (i === undefined) {
      byObject.set(k, (i = keys.length));
      keys.push(copyOf(k));
    }
    return i;
  };
  return { ids, keys, keyOf };
}

/** Copies `u` into a fresh ArrayBuffer that can be transferred. */
function copyOf(u: Uint8Array): Uint8Array {
  const c = new Uint8Array(u.byteLength);
  c.set(u);
  return c;
}

/**
 * Keeps input buffers that workers hand back, for reuse: a fresh multi-megabyte buffer per task
 * costs page faults that halved chunking throughput in measurements. Power-of-two classes from
 * 64 KiB, with a cap on how much is kept.
 */
class Recycler {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private kept = 0;
  private readonly cap: number;

  constructor(cap: number) {
    this.cap = cap;
  }

  /** A view of `n` bytes over a recycled or new ArrayBuffer (contents undefined). */
  take(n: number): Uint8Array {
    if (n < RECYCLE_MIN) return new Uint8Array(n);
    const cls = 2 ** Math.ceil(Math.log2(n));
    const ab = this.free.get(cls)?.pop();
    if (ab) {
      this.kept -= cls;
      return new Uint8Array(ab, 0, n);
    }
    return new Uint8Array(new ArrayBuffer(cls), 0, n);
  }

  /** Keeps `ab` for a later take(); false when it is not kept (wrong size, or enough kept). */
  give(ab: ArrayBuffer): boolean {
    const cls = ab.byteLength;
    if (cls < RECYCLE_MIN || (cls & (cls - 1)) !== 0 || this.kept + cls > this.cap) return false;
    let list = this.free.get(cls);
    if (!list) this.free.set(cls, (list = []));
    list.push(ab);
    this.kept += cls;
    return true;
  }

  clear(): void {
    this.free.clear();
    this.kept = 0;
  }
}

const RECYCLE_MIN = 64 * 1024;

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/** Splits items into at most `parts` runs of roughly equal bytes (in order). */
function split<T>(items: T[], bytes: (t: T) => number, parts: number): T[][] {
  const total = items.reduce((s, t) => s + bytes(t), 0);
  const n = Math.max(1, Math.min(parts, items.length, Math.ceil(total / MIN_PART_BYTES)));
  if (n === 1) return [items];
  const out: T[][] = [];
  const target = total / n;
  let cur: T[] = [];
  let acc = 0;
  for (const it of items) {
    cur.push(it);
    acc += bytes(it);
    if (acc >= target * (out.length + 1) && out.length < n - 1) {
      out.push(cur);
      cur = [];
    }
  }
  if (cur.length) out.push(cur);
  return out;
}

function contextInit(ctx: number, p: RepoParams): ContextInit {
  const problem = chunkerParamsProblem(p.chunker);
  if (problem) throw new CofferError('USAGE', `Cannot start the worker pool: chunker parameters: ${problem}`);
  checkLevel(p.level);
  return {
    ctx,
    encryption: copyOf(p.keys.encryption),
    chunkIdKey: copyOf(p.keys.chunkIdKey),
    gearSeed: copyOf(p.keys.gearSeed),
    chunker: { minSize: p.chunker.minSize, avgSize: p.chunker.avgSize, maxSize: p.chunker.maxSize },
    level: p.level,
  };
}

/**
 * One repository's view of a WorkerPool: its data requests carry the repository's context
 * number, so that jobs on several repositories share the pool's threads (a server's agent runs
 * many jobs at once; a pool each would put more threads than cores to work).
 */
export class RepoPool {
  readonly pool: WorkerPool;
  private readonly ctx: number;
  private readonly chunkIdKey: Uint8Array;
  private readonly level: number;

  /** @internal Made by WorkerPool.context(). */
  constructor(pool: WorkerPool, ctx: number, chunkIdKey: Uint8Array, level: number) {
    this.pool = pool;
    this.ctx = ctx;
    this.chunkIdKey = chunkIdKey;
    this.level = level;
  }

  get size(): number {
    return this.pool.size;
  }

  /**
   * Chunks and hashes one buffer of a stream; `data` must start at a chunk boundary. Returns the
   * end of every complete chunk (relative to data) and its id; `rest` bytes after the last cut
   * remain (0 at eof) and start the next call's buffer; `data` is the input's bytes.
   * By default the input is copied (or shared, if it lives in a SharedArrayBuffer) and left as
   * it is. With `transfer`, an input over an ArrayBuffer is moved to the worker and back instead
   * of copied: the caller's view is detached and the returned `data` is the same memory.
   */
  async chunkAndHash(data: Uint8Array, eof: boolean, mode: ChunkMode, signal?: AbortSignal, options: { transfer?: boolean } = {}): Promise<{ ends: number[]; ids: Buffer[]; rest: number; data: Uint8Array }> {
    checkChunkMode(mode);
    const shared = isShared(data);
    const moved = !shared && options.transfer === true;
    const input = shared || moved ? data : this.pool.copy(data);
    const r = await this.pool.run({ ctx: this.ctx, op: 'chunk', data: input, eof, mode, giveBack: moved }, shared ? [] : [input.buffer as ArrayBuffer], signal);
    if (r.op !== 'chunk' || (moved && !r.data)) throw new CofferError('INTERNAL', 'Cannot chunk: the worker answered the wrong request');
    const idsBuf = asBuffer(r.ids);
    const ids: Buffer[] = new Array(r.ends.length);
    for (let i = 0; i < ids.length; i++) ids[i] = idsBuf.subarray(i * ID_SIZE, (i + 1) * ID_SIZE);
    return { ends: r.ends, ids, rest: r.rest, data: moved ? r.data! : data };
  }

  /**
   * Reads small files whole and hashes each as one chunk, in a worker (see readFilesSync):
   * results in the order of `files`; a file that cannot be read is { ok: false } with why.
   */
  async readFiles(files: readonly ExpectedFile[], limit: number, signal?: AbortSignal): Promise<ReadFileResult[]> {
    this.pool.checkUsable();
    if (files.length === 0) return [];
    const pathEnds = new Float64Array(files.length);
    const expect = new BigInt64Array(files.length * 4);
    let total = 0;
    for (const f of files) total += f.path.length;
    const paths = new Uint8Array(total);
    let at = 0;
    files.forEach((f, i) => {
      paths.set(f.path, at);
      pathEnds[i] = at += f.path.length;
      expect[i * 4] = f.size;
      expect[i * 4 + 1] = BigInt.asIntN(64, f.ino);
      expect[i * 4 + 2] = f.mtimeNs;
      expect[i * 4 + 3] = f.ctimeNs;
    });
    const r = await this.pool.run({ ctx: this.ctx, op: 'readFiles', paths, pathEnds, expect, limit }, [paths.buffer, pathEnds.buffer, expect.buffer], signal);
    if (r.op !== 'readFiles' || r.status.length !== files.length) throw new CofferError('INTERNAL', 'Cannot read files: the worker answered the wrong request');
    const data = asBuffer(r.data);
    const ids = asBuffer(r.ids);
    let o = 0;
    return files.map((_, i): ReadFileResult => {
      if (r.status[i] === 2) {
        const e = r.errors[i]!;
        return { ok: false, message: e.message, errno: e.errno };
      }
      const len = r.lengths[i]!;
      const bytes = data.subarray(o, (o += len));
      return { ok: true, data: bytes, id: ids.subarray(i * ID_SIZE, (i + 1) * ID_SIZE), changed: r.status[i] === 1 };
    });
  }

  /** Compresses, encrypts and verifies blobs (see encodeBlob); results in the order of items. */
  async encode(items: EncodeItem[], signal?: AbortSignal): Promise<EncodedBlob[]> {
    this.pool.checkUsable();
    if (items.length === 0) return [];
    const codec = nativeCodec();
    if (codec) return this.encodeNative(codec, items, signal);
    const parts = split(items, (it) => it.raw.length, this.pool.size);
    const results = await Promise.all(parts.map(async (part) => {
      // Unshared raws travel back to back in one copied buffer; shared ones as views.
      const total = part.reduce((s, it) => s + (isShared(it.raw) ? 0 : it.raw.length), 0);
      const raws = this.pool.recycler.take(total);
      const shared: Uint8Array[] = [];
      const { ids, keys, keyOf } = packIdsAndKeys(part);
      const cols = new Float64Array(part.length * ENCODE_COLS);
      let o = 0;
      part.forEach((it, i) => {
        const k = i * ENCODE_COLS;
        cols[k] = BLOB_TYPE_CODE[it.type];
        cols[k + 1] = keyOf(it.packKey);
        cols[k + 2] = it.nonceIndex;
        cols[k + 4] = it.raw.length;
        if (isShared(it.raw)) {
          cols[k + 3] = 0;
          cols[k + 5] = shared.push(it.raw) - 1;
        } else {
          raws.set(it.raw, o);
          cols[k + 3] = o;
          cols[k + 5] = -1;
          o += it.raw.length;
        }
      });
      const r = await this.pool.run({ ctx: this.ctx, op: 'encode', cols, ids, keys, raws, shared }, [raws.buffer as ArrayBuffer, ids.buffer as ArrayBuffer, cols.buffer], signal);
      if (r.op !== 'encode' || r.lengths.length !== part.length) throw new CofferError('INTERNAL', 'Cannot encode: the worker answered the wrong request');
      const stored = asBuffer(r.stored);
      let at = 0;
      return part.map((it, i): EncodedBlob => ({ stored: stored.subarray(at, (at += r.lengths[i]!)), compressed: r.compressed[i] === 1, rawLength: it.raw.length }));
    }));
    return results.flat();
  }

  /** Takes back a buffer that encode() returned blobs in (BlobSaver, once they are in a pack). */
  recycle(buffer: ArrayBuffer): boolean {
    return !buffer.detached && this.pool.recycler.give(buffer);
  }

  /**
   * encode() on libuv's thread pool through the addon (src/native/codec.c): the same bytes as the
   * workers' encodeBlob(), without copying the blobs to a worker, each part's results in one
   * buffer. At most one part per core at once, so that file reads (on the same thread pool) do
   * not wait behind encoding.
   */
  private async encodeNative(codec: NativeCodec, items: EncodeItem[], signal: AbortSignal | undefined): Promise<EncodedBlob[]> {
    const parts = split(items, (it) => it.raw.length, this.pool.size);
    const results = await Promise.all(parts.map((part) => codecSlots.run(() => new Promise<EncodedBlob[]>((resolve, reject) => {
      if (signal?.aborted) {
        reject(cancelled(signal));
        return;
      }
      // The ids are checked here, as encodeBlob() checks them: a blob never goes out under an
      // id that is not its content's (the native check compares the bytes, it does not hash).
      for (const it of part) {
        if (!chunkId(this.chunkIdKey, it.raw).equals(it.id)) {
          reject(encodeFault(`its bytes do not hash to its id ${Buffer.from(it.id).toString('hex')}`));
          return;
        }
      }
      const { ids, keys, keyOf } = packIdsAndKeys(part);
      const meta = new Float64Array(part.length * 3);
      let total = 0;
      part.forEach((it, i) => {
        meta[i * 3] = BLOB_TYPE_CODE[it.type];
        meta[i * 3 + 1] = keyOf(it.packKey);
        meta[i * 3 + 2] = it.nonceIndex;
        total += it.raw.length + TAG_SIZE;
      });
      const keyBytes = new Uint8Array(keys.length * 32);
      keys.forEach((k, i) => keyBytes.set(k, i * 32));
      const taken = this.pool.recycler.take(total);
      const out = Buffer.from(taken.buffer, taken.byteOffset, taken.byteLength);
      const res = new Float64Array(part.length * 3);
      codec.encodeBlobs(part.map((it) => it.raw), meta, ids, keyBytes, this.level, out, res, (err) => {
        if (err) {
          reject(encodeFault(err.message));
          return;
        }
        resolve(part.map((it, i): EncodedBlob => ({
          stored: out.subarray(res[i * 3]!, res[i * 3]! + res[i * 3 + 1]!),
          compressed: res[i * 3 + 2] === 1,
          rawLength: it.raw.length,
        })));
      });
    }))));
    return results.flat();
  }

  /**
   * Decrypts, decompresses and verifies stored blobs (see decodeBlob); results in order. With
   * `into`, a view of shared memory at least as long as the items' raw lengths together, the
   * blobs are decoded into it back to back (decodeBlobInto(): no buffer per blob) and the results
   * are views of it.
   */
  async decode(items: DecodeItem[], signal?: AbortSignal, options: { into?: Uint8Array } = {}): Promise<Buffer[]> {
    this.pool.checkUsable();
    if (items.length === 0) return [];
    const into = options.into;
    if (into && (!isShared(into) || into.length < items.reduce((n, it) => n + it.rawLength, 0))) throw new CofferError('INTERNAL', 'Cannot decode: the output must be shared memory as long as the blobs');
    const parts = split(items, (it) => it.stored.length, this.pool.size);
    let outAt = 0;
    const results = await Promise.all(parts.map(async (part) => {
      let out: Uint8Array | undefined;
      if (into) {
        const n = part.reduce((s, it) => s + it.rawLength, 0);
        out = into.subarray(outAt, (outAt += n));
      }
      const { ids, keys, keyOf } = packIdsAndKeys(part);
      const transfer: ArrayBuffer[] = [ids.buffer as ArrayBuffer];
      // The stored bytes: the shared buffer they all are views of (readBlobs() hands over one
      // request's range), else copied back to back into one buffer.
      const first = part[0]!.stored.buffer;
      const oneShared = first instanceof SharedArrayBuffer && part.every((it) => it.stored.buffer === first);
      let data: Uint8Array;
      if (oneShared) data = new Uint8Array(first);
      else {
        data = this.pool.recycler.take(part.reduce((n, it) => n + it.stored.length, 0));
        transfer.push(data.buffer as ArrayBuffer);
      }
      const cols = new Float64Array(part.length * DECODE_COLS);
      let o = 0;
      part.forEach((it, i) => {
        const k = i * DECODE_COLS;
        let at = it.stored.byteOffset;
        if (!oneShared) {
          data.set(it.stored, o);
          at = o;
          o += it.stored.length;
        }
        cols[k] = BLOB_TYPE_CODE[it.type];
        cols[k + 1] = keyOf(it.packKey);
        cols[k + 2] = it.nonceIndex;
        cols[k + 3] = it.compressed ? 1 : 0;
        cols[k + 4] = it.rawLength;
        cols[k + 5] = at;
        cols[k + 6] = it.stored.length;
      });
      transfer.push(cols.buffer);
      const r = await this.pool.run({ ctx: this.ctx, op: 'decode', cols, data, ids, keys, ...(out ? { out } : {}) }, transfer, signal);
      if (r.op !== 'decode') throw new CofferError('INTERNAL', 'Cannot decode: the worker answered the wrong request');
      if (out) {
        if (!r.into) throw new CofferError('INTERNAL', 'Cannot decode: the worker answered the wrong request');
        const all = asBuffer(out);
        let o = 0;
        return part.map((it) => all.subarray(o, (o += it.rawLength)));
      }
      if (r.joined) {
        const all = asBuffer(r.joined);
        let o = 0;
        return part.map((it) => all.subarray(o, (o += it.rawLength)));
      }
      if (r.raws?.length !== part.length) throw new CofferError('INTERNAL', 'Cannot decode: the worker answered the wrong request');
      return r.raws.map(asBuffer);
    }));
    return results.flat();
  }

  /** chunkId of each buffer. Runs inline: native BLAKE3 is faster than a round trip. */
  async hash(datas: Uint8Array[]): Promise<Buffer[]> {
    this.pool.checkUsable();
    return datas.map((d) => chunkId(this.chunkIdKey, d));
  }

  /** Forgets this repository in the workers (the pool goes on serving others). */
  close(): void {
    this.pool.dropContext(this.ctx);
  }
}

export class WorkerPool {
  readonly size: number;
  private readonly slots: Slot[] = [];
  private readonly queue: Task[] = [];
  /** @internal Buffers handed back by workers, for reuse (RepoPool uses it). */
  readonly recycler: Recycler;
  private readonly contexts = new Map<number, ContextInit>();
  private nextContext = 1;
  /** The context of a pool created with a repository's keys: its data methods use it. */
  private fallback: RepoPool | undefined;
  private nextId = 1;
  private closed = false;
  private crashes = 0;
  private broken: CofferError | undefined;

  private constructor(size: number) {
    this.size = size;
    this.recycler = new Recycler((size + 1) * 8 * 1024 * 1024);
  }

  /**
   * Starts the workers and waits until each has warmed up. With a repository's keys, chunker and
   * level the pool's own data methods serve that repository; without, use context() for each.
   */
  static async create(options: PoolOptions = {}): Promise<WorkerPool> {
    const size = workerCount(options.workers);
    const pool = new WorkerPool(size);
    if (options.keys || options.chunker || options.level !== undefined) {
      if (!options.keys || !options.chunker || options.level === undefined) throw new CofferError('INTERNAL', 'Cannot start the worker pool: give keys, chunker and level together, or none');
      pool.fallback = pool.context({ keys: options.keys, chunker: options.chunker, level: options.level });
    }
    const started: Promise<void>[] = [];
    for (let i = 0; i < size; i++) started.push(pool.spawn(i));
    const results = await Promise.allSettled(started);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await pool.close();
      throw new CofferError('INTERNAL', `Cannot start the worker pool: ${(failed.reason as Error)?.message ?? String(failed.reason)}`, { cause: failed.reason });
    }
    return pool;
  }

  /** A view of the pool for one repository (its keys, chunker and level in every worker). */
  context(params: RepoParams): RepoPool {
    this.checkUsable();
    const init = contextInit(this.nextContext++, params);
    this.contexts.set(init.ctx, init);
    // Posted ahead of any task that names it: a port delivers in order.
    this.broadcast({ op: 'context', context: init });
    return new RepoPool(this, init.ctx, init.chunkIdKey, params.level);
  }

  /** @internal */
  dropContext(ctx: number): void {
    if (!this.contexts.delete(ctx) || this.closed) return;
    this.broadcast({ op: 'dropContext', ctx });
  }

  private broadcast(msg: ContextMessage): void {
    for (const slot of this.slots) if (slot && !slot.dead) slot.worker.postMessage(msg);
  }

  private get repo(): RepoPool {
    if (!this.fallback) throw new CofferError('INTERNAL', 'Cannot use the worker pool for data: it was created without a repository (use context())');
    return this.fallback;
  }

  /** See RepoPool.chunkAndHash (the repository the pool was created with). */
  async chunkAndHash(...args: Parameters<RepoPool['chunkAndHash']>): ReturnType<RepoPool['chunkAndHash']> {
    return this.repo.chunkAndHash(...args);
  }

  async readFiles(...args: Parameters<RepoPool['readFiles']>): ReturnType<RepoPool['readFiles']> {
    return this.repo.readFiles(...args);
  }

  async encode(...args: Parameters<RepoPool['encode']>): ReturnType<RepoPool['encode']> {
    return this.repo.encode(...args);
  }

  recycle(buffer: ArrayBuffer): boolean {
    return this.repo.recycle(buffer);
  }

  async decode(...args: Parameters<RepoPool['decode']>): ReturnType<RepoPool['decode']> {
    return this.repo.decode(...args);
  }

  async hash(...args: Parameters<RepoPool['hash']>): ReturnType<RepoPool['hash']> {
    return this.repo.hash(...args);
  }

  /** Test hook: makes one worker die as if it crashed; the returned promise rejects with INTERNAL. */
  async crashOneWorkerForTest(): Promise<void> {
    await this.run({ op: 'crash' }, [], undefined);
  }

  /** Terminates every worker; queued and running tasks reject with CANCELLED. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new CofferError('CANCELLED', 'Cancelled: the worker pool was closed');
    for (const t of this.queue.splice(0)) this.settle(t, err);
    const exits: Promise<number>[] = [];
    for (const s of this.slots) {
      if (s.task) this.settle(s.task, err);
      s.task = undefined;
      s.dead = true;
      exits.push(s.worker.terminate());
    }
    await Promise.allSettled(exits);
    this.recycler.clear();
  }

  // ---- internals ----

  /** @internal */
  copy(u: Uint8Array): Uint8Array {
    const c = this.recycler.take(u.byteLength);
    c.set(u);
    return c;
  }

  /** @internal */
  checkUsable(): void {
    if (this.closed) throw new CofferError('INTERNAL', 'Cannot use the worker pool: it is closed');
    if (this.broken) throw this.broken;
  }

  /** @internal */
  run(body: Body, transfer: ArrayBuffer[], signal: AbortSignal | undefined): Promise<Reply & { ok: true }> {
    return new Promise((resolve, reject) => {
      this.checkUsable();
      throwIfAborted(signal);
      const task: Task = { id: this.nextId++, body, transfer, resolve, reject, settled: false, signal, onAbort: undefined };
      if (signal) {
        task.onAbort = () => {
          const i = this.queue.indexOf(task);
          if (i >= 0) this.queue.splice(i, 1);
          // A running task cannot be stopped; its reply is ignored when it comes.
          this.settle(task, cancelled(signal));
        };
        signal.addEventListener('abort', task.onAbort, { once: true });
      }
      this.queue.push(task);
      this.pump();
    });
  }

  private settle(task: Task, error: unknown, reply?: Reply & { ok: true }): void {
    if (task.settled) return;
    task.settled = true;
    if (task.signal && task.onAbort) task.signal.removeEventListener('abort', task.onAbort);
    if (reply) task.resolve(reply);
    else task.reject(error);
  }

  private pump(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (slot.dead || slot.task) continue;
      const task = this.queue.shift()!;
      slot.task = task;
      slot.worker.ref();
      try {
        slot.worker.postMessage({ id: task.id, ...task.body } as Request, task.transfer);
      } catch (e) {
        slot.task = undefined;
        slot.worker.unref();
        this.settle(task, new CofferError('INTERNAL', `Cannot send a task to a worker: ${(e as Error).message}`, { cause: e }));
      }
    }
  }

  /** Starts worker `index` (or replaces it); resolves when it has warmed up. */
  private spawn(index: number): Promise<void> {
    const workerData: WorkerInit = { contexts: [...this.contexts.values()] };
    const worker = new Worker(WORKER_URL, { workerData, name: `coffer-engine-${index}`, execArgv: workerExecArgv(), resourceLimits: { maxYoungGenerationSizeMb: 8 } });
    const slot: Slot = { worker, task: undefined, dead: false, proven: false };
    this.slots[index] = slot;
    const started = new Promise<void>((resolveReady, rejectReady) => {
      let ready = false;
      worker.on('message', (msg: Reply | { ready: true }) => {
        if ('ready' in msg) {
          ready = true;
          if (!slot.task && !slot.dead) worker.unref();
          resolveReady();
          return;
        }
        for (const ab of msg.spent) this.recycler.give(ab);
        const task = slot.task;
        if (!task || task.id !== msg.id) return; // a reply to a task that was closed away
        slot.task = undefined;
        slot.proven = true;
        this.crashes = 0;
        if (!slot.dead) worker.unref();
        if (msg.ok) this.settle(task, undefined, msg);
        else this.settle(task, toError(msg.error));
        this.pump();
      });
      const fail = (why: string, cause?: unknown) => {
        if (slot.dead) return;
        slot.dead = true;
        const err = new CofferError('INTERNAL', `Cannot finish a task: worker ${index} died (${why})`, {
          cause,
          hint: 'This is a bug in Coffer or the machine ran out of memory; the task was not completed.',
        });
        if (!ready) rejectReady(err);
        if (slot.task) this.settle(slot.task, err);
        slot.task = undefined;
        if (this.closed) return;
        if (!slot.proven && ++this.crashes >= MAX_CONSECUTIVE_CRASHES) {
          this.broken = new CofferError('INTERNAL', `Cannot use the worker pool: workers keep dying (${why})`, { cause });
          for (const t of this.queue.splice(0)) this.settle(t, this.broken);
          return;
        }
        // A replacement; if it cannot start either, that counts as another crash.
        void this.spawn(index).catch(() => {});
        this.pump();
      };
      worker.on('error', (e) => fail(e instanceof Error ? e.message : String(e), e));
      worker.on('exit', (code) => fail(`exit code ${code}`));
      worker.on('messageerror', (e) => fail('a message could not be read', e));
    });
    // The worker stays ref'd until it is ready (create() awaits that), then only while it has a
    // task. Note: adding a 'message' listener refs the port again, so unref() must come after.
    return started;
  }
}
