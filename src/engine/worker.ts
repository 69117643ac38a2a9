// A pool worker: chunks, hashes, compresses, encrypts and decodes on its own thread, so the main
// thread only does I/O and bookkeeping. Started by WorkerPool (pool.ts) from this .ts file.
//
// Protocol: the worker gets the repository contexts known so far (workerData): per repository its
// keys, chunker parameters and compression level under a number; more come (and go) as
// 'context' and 'dropContext' messages, which get no reply. It warms up its chunkers, posts
// { ready: true }, then answers one Request at a time with a Reply carrying the same id; every
// data request names its context, so one pool serves the jobs of many repositories at once.
// Result buffers are transferred, not copied.
import { parentPort, workerData } from 'node:worker_threads';
import { CofferError, isCofferError, type ErrorCode } from '../core/errors.ts';
import { decodeBlob, encodeBlob, release } from './blob.ts';
import { DecodeScratch } from './buffers.ts';
import { decodeBlobInto } from './decode-into.ts';
import { Chunker, gearTable, warmUpChunker, type ChunkerParams } from './chunker.ts';
import { ID_SIZE, blobTypeFromCode } from './format.ts';
import type { RepoKeys } from './keys.ts';
import { DECODE_COLS, ENCODE_COLS, chunkAndHashSync, readFilesSync, type ChunkMode, type ExpectedFile } from './tasks.ts';

/** One repository's parameters in the workers. */
export interface ContextInit {
  ctx: number;
  encryption: Uint8Array;
  chunkIdKey: Uint8Array;
  gearSeed: Uint8Array;
  chunker: ChunkerParams;
  level: number;
}

export interface WorkerInit {
  contexts: ContextInit[];
}

/** Messages that change the worker's contexts: no reply. */
export type ContextMessage = { op: 'context'; context: ContextInit } | { op: 'dropContext'; ctx: number };

/**
 * Per-item fields of encode and decode requests. Ids travel back to back in one buffer (`ids`,
 * ID_SIZE bytes each, in item order) and pack keys once per pack (`keys`, `key` indexes it): a
 * separate small buffer per item cost more to clone than the work on small blobs.
 * The raw bytes are `raw` when given (shared memory), else raws[rawOffset, rawOffset + rawLength).
 */

/** Decoded blobs up to this size come back in one buffer (`joined`), bigger ones one by one. */
const JOIN_MAX = 64 * 1024;

export type Request =
  /** giveBack: `data` was moved here and goes back in the reply (else it is spent). */
  | { id: number; ctx: number; op: 'chunk'; data: Uint8Array; eof: boolean; mode: ChunkMode; giveBack?: boolean }
  /** `raws` holds every item's raw bytes back to back. */
  /**
   * Items as columns: see ENCODE_COLS (tasks.ts). An item's raw bytes are raws[offset, +length],
   * or shared[index] (a view into shared memory) when its shared index is not -1.
   */
  | { id: number; ctx: number; op: 'encode'; cols: Float64Array; ids: Uint8Array; keys: Uint8Array[]; raws: Uint8Array; shared: Uint8Array[] }
  /**
   * Items as columns: see DECODE_COLS (tasks.ts). With `out` (a view of shared memory, as long
   * as the items' raw lengths together) the blobs are decoded into it back to back, in order.
   */
  | { id: number; ctx: number; op: 'decode'; cols: Float64Array; data: Uint8Array; ids: Uint8Array; keys: Uint8Array[]; out?: Uint8Array }
  /**
   * Small files read whole and hashed (readFilesSync): `paths` back to back, file i ending at
   * pathEnds[i]; `expect` 4 values per file: size, inode, mtime ns, ctime ns.
   */
  | { id: number; ctx: number; op: 'readFiles'; paths: Uint8Array; pathEnds: Float64Array; expect: BigInt64Array; limit: number }
  /** Test hook: the worker dies with an uncaught exception. */
  | { id: number; op: 'crash' };

export interface SerializedError { code: ErrorCode; message: string; hint?: string; details?: Record<string, unknown> }

/** `spent`: the request's own (unshared) input buffers, handed back for reuse. */
export type Reply = { spent: ArrayBuffer[] } & (
  | { id: number; ok: true; op: 'chunk'; ends: number[]; ids: Uint8Array; rest: number; data?: Uint8Array }
  /** The stored blobs back to back in `stored`, lengths[i] bytes each; compressed[i] 0 or 1. */
  | { id: number; ok: true; op: 'encode'; stored: Uint8Array; lengths: Float64Array; compressed: Uint8Array }
  /**
   * When every blob is at most JOIN_MAX bytes: `joined` holds them back to back (each blob's
   * length is its rawLength); else `raws`, one buffer each.
   */
  | { id: number; ok: true; op: 'decode'; raws?: Uint8Array[]; joined?: Uint8Array; into?: true }
  /**
   * Per file: status 0 read, 1 read but changed, 2 failed (errors[i] says why); the bytes of
   * the files read back to back in `data` (lengths[i] each), their ids in `ids` (ID_SIZE each).
   */
  | { id: number; ok: true; op: 'readFiles'; status: Uint8Array; lengths: Float64Array; data: Uint8Array; ids: Uint8Array; errors: Array<{ message: string; errno?: string } | null> }
  | { id: number; ok: false; error: SerializedError }
);

const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/** A buffer that can be transferred: exactly its own ArrayBuffer (else copied into one). */
function owned(b: Uint8Array): Uint8Array {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b;
  const copy = new Uint8Array(b.byteLength);
  copy.set(b);
  return copy;
}

/** The buffers back to back in one new buffer; each is freed at once (see release()). */
function joinAndRelease(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, b) => n + b.length, 0));
  let o = 0;
  for (const b of parts) {
    out.set(b, o);
    o += b.length;
    release(b);
  }
  return out;
}

const scratch = new DecodeScratch();

/** Decodes the items of a decode request into `out`, back to back (decodeBlobInto()). */
function decodeInto(keys: RepoKeys, keyBufs: Buffer[], c: Float64Array, ids: Uint8Array, data: Uint8Array, out: Uint8Array): void {
  let o = 0;
  for (let i = 0; i * DECODE_COLS < c.length; i++) {
    const k = i * DECODE_COLS;
    const type = blobTypeFromCode(c[k]!);
    if (!type) throw new CofferError('INTERNAL', `Cannot decode: unknown blob type code ${c[k]}`);
    const rawLength = c[k + 4]!;
    if (o + rawLength > out.length) throw new CofferError('INTERNAL', 'Cannot decode: the output buffer is too small');
    const args = { packKey: keyBufs[c[k + 1]!]!, nonceIndex: c[k + 2]!, type, id: ids.subarray(i * ID_SIZE, (i + 1) * ID_SIZE), compressed: c[k + 3] === 1, rawLength, stored: data.subarray(c[k + 5]!, c[k + 5]! + c[k + 6]!) };
    decodeBlobInto(keys, args, out.subarray(o, o + rawLength), scratch);
    o += rawLength;
  }
}

function serialize(e: unknown): SerializedError {
  if (isCofferError(e)) return { code: e.code, message: e.message, hint: e.hint, details: e.details };
  const message = e instanceof Error ? e.message : String(e);
  return { code: 'INTERNAL', message: `Unexpected error in a worker: ${message}`, hint: 'This is a bug in Coffer; please report it.' };
}

function main(): void {
  const port = parentPort;
  if (!port) throw new Error('worker.ts must run as a worker thread');
  const init = workerData as WorkerInit;
  const contexts = new Map<number, { keys: RepoKeys; chunker: Chunker; level: number }>();
  const addContext = (c: ContextInit) => {
    const keys: RepoKeys = { encryption: buf(c.encryption), chunkIdKey: buf(c.chunkIdKey), gearSeed: buf(c.gearSeed) };
    const chunker = new Chunker(c.chunker, gearTable(keys.gearSeed));
    warmUpChunker(chunker);
    contexts.set(c.ctx, { keys, chunker, level: c.level });
  };
  for (const c of init.contexts) addContext(c);
  const contextOf = (ctx: number) => {
    const c = contexts.get(ctx);
    if (!c) throw new CofferError('INTERNAL', `Cannot run a worker task: repository context ${ctx} is not known here`);
    return c;
  };

  port.on('message', (msg: Request | ContextMessage) => {
    if (msg.op === 'context') return void addContext(msg.context);
    if (msg.op === 'dropContext') return void contexts.delete(msg.ctx);
    const req = msg;
    let reply: Reply;
    const transfer: ArrayBuffer[] = [];
    const spent: ArrayBuffer[] = [];
    const done = (u: Uint8Array) => {
      if (u.buffer instanceof ArrayBuffer) spent.push(u.buffer);
    };
    try {
      switch (req.op) {
        case 'chunk': {
          const { chunker, keys } = contextOf(req.ctx);
          const r = chunkAndHashSync(chunker, keys.chunkIdKey, req.data, req.eof, req.mode);
          reply = { spent, id: req.id, ok: true, op: 'chunk', ends: r.ends, ids: r.ids, rest: r.rest };
          transfer.push(r.ids.buffer as ArrayBuffer);
          if (req.giveBack) {
            reply.data = req.data;
            transfer.push(req.data.buffer as ArrayBuffer);
          } else done(req.data);
          break;
        }
        case 'encode': {
          const { keys, level } = contextOf(req.ctx);
          const keyBufs = req.keys.map(buf);
          const c = req.cols;
          const n = c.length / ENCODE_COLS;
          const out: Buffer[] = [];
          const lengths = new Float64Array(n);
          const compressed = new Uint8Array(n);
          for (let i = 0; i < n; i++) {
            const k = i * ENCODE_COLS;
            const type = blobTypeFromCode(c[k]!);
            if (!type) throw new CofferError('INTERNAL', `Cannot encode: unknown blob type code ${c[k]}`);
            const raw = c[k + 5]! >= 0 ? req.shared[c[k + 5]!]! : req.raws.subarray(c[k + 3]!, c[k + 3]! + c[k + 4]!);
            const id = req.ids.subarray(i * ID_SIZE, (i + 1) * ID_SIZE);
            const b = encodeBlob(keys, keyBufs[c[k + 1]!]!, c[k + 2]!, type, id, raw, level);
            out.push(b.stored);
            lengths[i] = b.stored.length;
            compressed[i] = b.compressed ? 1 : 0;
          }
          const stored = joinAndRelease(out);
          done(req.raws);
          reply = { spent, id: req.id, ok: true, op: 'encode', stored, lengths, compressed };
          transfer.push(stored.buffer, lengths.buffer, compressed.buffer);
          break;
        }
        case 'decode': {
          const { keys } = contextOf(req.ctx);
          const keyBufs = req.keys.map(buf);
          const c = req.cols;
          if (req.out) {
            decodeInto(keys, keyBufs, req.cols, req.ids, req.data, req.out);
            done(req.data);
            reply = { spent, id: req.id, ok: true, op: 'decode', into: true };
            break;
          }
          const out: Buffer[] = [];
          for (let i = 0; i * DECODE_COLS < c.length; i++) {
            const k = i * DECODE_COLS;
            const type = blobTypeFromCode(c[k]!);
            if (!type) throw new CofferError('INTERNAL', `Cannot decode: unknown blob type code ${c[k]}`);
            const id = req.ids.subarray(i * ID_SIZE, (i + 1) * ID_SIZE);
            const stored = req.data.subarray(c[k + 5]!, c[k + 5]! + c[k + 6]!);
            out.push(decodeBlob(keys, keyBufs[c[k + 1]!]!, c[k + 2]!, type, id, c[k + 3] === 1, c[k + 4]!, stored));
          }
          done(req.data);
          if (out.every((b) => b.length <= JOIN_MAX)) {
            const joined = joinAndRelease(out);
            transfer.push(joined.buffer);
            reply = { spent, id: req.id, ok: true, op: 'decode', joined };
          } else {
            const raws = out.map(owned);
            for (const r of raws) transfer.push(r.buffer as ArrayBuffer);
            reply = { spent, id: req.id, ok: true, op: 'decode', raws };
          }
          break;
        }
        case 'readFiles': {
          const files: ExpectedFile[] = [];
          const e = req.expect;
          for (let i = 0, at = 0; i < req.pathEnds.length; i++) {
            const end = req.pathEnds[i]!;
            files.push({ path: req.paths.subarray(at, end), size: e[i * 4]!, ino: BigInt.asUintN(64, e[i * 4 + 1]!), mtimeNs: e[i * 4 + 2]!, ctimeNs: e[i * 4 + 3]! });
            at = end;
          }
          const results = readFilesSync(contextOf(req.ctx).keys.chunkIdKey, files, req.limit);
          const n = results.length;
          const status = new Uint8Array(n);
          const lengths = new Float64Array(n);
          const ids = new Uint8Array(n * ID_SIZE);
          const errors: Array<{ message: string; errno?: string } | null> = [];
          let total = 0;
          for (const r of results) if (r.ok) total += r.data.length;
          const data = new Uint8Array(total);
          let o = 0;
          results.forEach((r, i) => {
            if (!r.ok) {
              status[i] = 2;
              errors.push({ message: r.message, errno: r.errno });
              return;
            }
            errors.push(null);
            status[i] = r.changed ? 1 : 0;
            lengths[i] = r.data.length;
            data.set(r.data, o);
            o += r.data.length;
            // The read buffer (one byte longer than the file) is ours alone.
            release(new Uint8Array(r.data.buffer));
            ids.set(r.id, i * ID_SIZE);
          });
          reply = { spent, id: req.id, ok: true, op: 'readFiles', status, lengths, data, ids, errors };
          transfer.push(status.buffer, lengths.buffer, data.buffer, ids.buffer);
          break;
        }
        case 'crash':
          // Thrown outside the handler, so it is an uncaught exception that ends the worker.
          setImmediate(() => {
            throw new Error('worker crash requested (test hook)');
          });
          return;
        default:
          throw new CofferError('INTERNAL', `Cannot run worker task: unknown op ${String((req as { op?: unknown }).op)}`);
      }
    } catch (e) {
      reply = { spent: [], id: req.id, ok: false, error: serialize(e) };
      transfer.length = 0;
      spent.length = 0;
    }
    // A transfer list must not name an ArrayBuffer twice.
    port.postMessage(reply, [...new Set([...transfer, ...spent])]);
  });
  port.postMessage({ ready: true });
}

main();
