// A pool worker: chunks, hashes, compresses, encrypts and decodes on its own thread, so the main
// thread only does I/O and bookkeeping. Started by WorkerPool (pool.ts) from this .ts file.
//
// Protocol: the worker gets keys, chunker parameters and the compression level once (workerData),
// warms up the chunker, posts { ready: true }, then answers one Request at a time with a Reply
// carrying the same id. Result buffers are transferred, not copied.
import { parentPort, workerData } from 'node:worker_threads';
import { CofferError, isCofferError, type ErrorCode } from '../core/errors.ts';
import { decodeBlob, encodeBlob } from './blob.ts';
import { Chunker, gearTable, warmUpChunker, type ChunkerParams } from './chunker.ts';
import type { BlobType } from './format.ts';
import type { RepoKeys } from './keys.ts';
import { chunkAndHashSync, type ChunkMode } from './tasks.ts';

export interface WorkerInit {
  encryption: Uint8Array;
  chunkIdKey: Uint8Array;
  gearSeed: Uint8Array;
  chunker: ChunkerParams;
  level: number;
}

/** The raw bytes are `raw` when given (shared memory), else raws[rawOffset, rawOffset + rawLength). */
export interface EncodeItemMsg { type: BlobType; id: Uint8Array; packKey: Uint8Array; nonceIndex: number; raw?: Uint8Array; rawOffset: number; rawLength: number }
export interface DecodeItemMsg { type: BlobType; id: Uint8Array; packKey: Uint8Array; nonceIndex: number; compressed: boolean; rawLength: number; stored: Uint8Array }

export type Request =
  | { id: number; op: 'chunk'; data: Uint8Array; eof: boolean; mode: ChunkMode }
  /** `raws` holds every item's raw bytes back to back. */
  | { id: number; op: 'encode'; items: EncodeItemMsg[]; raws: Uint8Array }
  | { id: number; op: 'decode'; items: DecodeItemMsg[] }
  /** Test hook: the worker dies with an uncaught exception. */
  | { id: number; op: 'crash' };

export interface SerializedError { code: ErrorCode; message: string; hint?: string; details?: Record<string, unknown> }

/** `spent`: the request's own (unshared) input buffers, handed back for reuse. */
export type Reply = { spent: ArrayBuffer[] } & (
  | { id: number; ok: true; op: 'chunk'; ends: number[]; ids: Uint8Array; rest: number }
  | { id: number; ok: true; op: 'encode'; stored: Uint8Array[]; compressed: boolean[] }
  | { id: number; ok: true; op: 'decode'; raws: Uint8Array[] }
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

function serialize(e: unknown): SerializedError {
  if (isCofferError(e)) return { code: e.code, message: e.message, hint: e.hint, details: e.details };
  const message = e instanceof Error ? e.message : String(e);
  return { code: 'INTERNAL', message: `Unexpected error in a worker: ${message}`, hint: 'This is a bug in Coffer; please report it.' };
}

function main(): void {
  const port = parentPort;
  if (!port) throw new Error('worker.ts must run as a worker thread');
  const init = workerData as WorkerInit;
  const keys: RepoKeys = { encryption: buf(init.encryption), chunkIdKey: buf(init.chunkIdKey), gearSeed: buf(init.gearSeed) };
  const chunker = new Chunker(init.chunker, gearTable(keys.gearSeed));
  const level = init.level;
  warmUpChunker(chunker);

  port.on('message', (req: Request) => {
    let reply: Reply;
    const transfer: ArrayBuffer[] = [];
    const spent: ArrayBuffer[] = [];
    const done = (u: Uint8Array) => {
      if (u.buffer instanceof ArrayBuffer) spent.push(u.buffer);
    };
    try {
      switch (req.op) {
        case 'chunk': {
          const r = chunkAndHashSync(chunker, keys.chunkIdKey, req.data, req.eof, req.mode);
          done(req.data);
          reply = { spent, id: req.id, ok: true, op: 'chunk', ends: r.ends, ids: r.ids, rest: r.rest };
          transfer.push(r.ids.buffer as ArrayBuffer);
          break;
        }
        case 'encode': {
          const stored: Uint8Array[] = [];
          const compressed: boolean[] = [];
          for (const it of req.items) {
            const raw = it.raw ?? req.raws.subarray(it.rawOffset, it.rawOffset + it.rawLength);
            const b = encodeBlob(keys, buf(it.packKey), it.nonceIndex, it.type, it.id, raw, level);
            const o = owned(b.stored);
            stored.push(o);
            compressed.push(b.compressed);
            transfer.push(o.buffer as ArrayBuffer);
          }
          done(req.raws);
          reply = { spent, id: req.id, ok: true, op: 'encode', stored, compressed };
          break;
        }
        case 'decode': {
          const raws: Uint8Array[] = [];
          for (const it of req.items) {
            const raw = owned(decodeBlob(keys, buf(it.packKey), it.nonceIndex, it.type, it.id, it.compressed, it.rawLength, it.stored));
            raws.push(raw);
            transfer.push(raw.buffer as ArrayBuffer);
            done(it.stored);
          }
          reply = { spent, id: req.id, ok: true, op: 'decode', raws };
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
