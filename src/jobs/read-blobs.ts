// Reading many blobs at once, pack by pack, for restore: the blobs are grouped by pack and sorted
// by offset, neighbours are fetched with one ranged get() each, and every blob is decrypted,
// decompressed and checked (MAC and chunk id, decodeBlob()) before its bytes are handed on, in
// worker threads when a decoder pool is given. One ranged get per blob costs a round trip (an
// open, a stat and a close on local disk) that dwarfs the bytes of a small blob.
//
// Memory stays bounded: a request is admitted only while the stored plus decoded bytes of the
// requests in flight fit in `maxInFlight` (one request is always admitted, however large), and
// its buffers are dropped once deliver() has returned, or, with ReadBuffers, reused: then the
// ranges are read into recycled shared buffers and the blobs decoded into others
// (decodeBlobInto()), and a steady restore allocates nothing per request or per blob.
//
// Errors: a blob that is damaged or missing (CORRUPT, NOT_FOUND, INVALID_RANGE when its pack
// was truncated, UNSUPPORTED when its pack's header claims a newer version) is delivered as that
// blob's error and the others are delivered as usual; anything else (the backend is unreachable,
// the worker pool broke, cancellation) rejects the whole call. A coalesced request that fails is
// retried blob by blob, so that one bad neighbour cannot take down the others.

import { setImmediate as nextTurn } from 'node:timers/promises';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { decodeBlob } from '../engine/blob.ts';
import { DecodeScratch, SharedSlabs } from '../engine/buffers.ts';
import { decodeBlobInto } from '../engine/decode-into.ts';
import { toHex } from '../engine/hash.ts';
import type { DecodeItem } from '../engine/pool.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import { packName } from '../repository/layout.ts';
import type { Repository } from '../repository/repository.ts';

/** What restore needs of the worker pool (WorkerPool satisfies it). */
export interface BlobDecoder {
  /**
   * Decrypts, decompresses and verifies blobs; rejects with CORRUPT if any of them fails. With
   * `into` (shared memory), decodes them into it back to back and returns views of it.
   */
  decode(items: DecodeItem[], signal?: AbortSignal, options?: { into?: Uint8Array }): Promise<Buffer[]>;
}

/**
 * Buffers that readBlobs() reuses across its calls (one set per job): pack ranges are read into
 * them and blobs decoded into them (decodeBlobInto()), instead of a fresh buffer per request and
 * per blob. With them, the results handed to deliver() are views that are reused once it has
 * returned: deliver() must be done with the bytes (written, or copied) by then.
 */
export class ReadBuffers {
  /** Stored ranges: one slab per request in flight. */
  readonly ranges: SharedSlabs;
  /** Decoded blobs: one slab per request in flight (a request of more raw bytes gets its own). */
  readonly outputs: SharedSlabs;
  /** This thread's scratch for decoding without workers. */
  readonly scratch = new DecodeScratch();

  constructor(options: { maxRequest?: number; concurrency?: number } = {}) {
    const maxRequest = options.maxRequest ?? DEFAULT_MAX_REQUEST;
    const keep = Math.max(1, options.concurrency ?? 4) + 1;
    this.ranges = new SharedSlabs(maxRequest, keep);
    // A request holds at most twice maxRequest raw bytes (planRequests()).
    this.outputs = new SharedSlabs(2 * maxRequest, keep);
  }
}

export type BlobSource = Pick<Repository, 'backend' | 'keys' | 'packKey'>;

/** One blob's outcome: its verified bytes, or why it cannot be read (CORRUPT, NOT_FOUND or INVALID_RANGE). */
export type BlobResult = { data: Buffer; error?: undefined } | { data?: undefined; error: CofferError };

export interface ReadBlobsOptions {
  signal?: AbortSignal;
  /** Decodes in worker threads; without it blobs are decoded on this thread. */
  decoder?: BlobDecoder;
  /** Blobs at most this many bytes apart are fetched with one request (default 1 MiB). */
  maxGap?: number;
  /** Bytes one request spans at most, unless a single blob is larger (default 8 MiB). */
  maxRequest?: number;
  /** Stored plus decoded bytes of the requests in flight (default 96 MiB). */
  maxInFlight?: number;
  /** Requests in flight (default 4). */
  concurrency?: number;
  /** Reused buffers (see ReadBuffers): results are then only valid until deliver() returns. */
  buffers?: ReadBuffers;
}

export const DEFAULT_MAX_GAP = 1 << 20;
export const DEFAULT_MAX_REQUEST = 8 << 20;
export const DEFAULT_MAX_IN_FLIGHT = 96 << 20;

/** One ranged get: blobs of one pack, by offset. */
interface Request {
  packHex: string;
  start: number;
  end: number;
  /** Indexes into the caller's hits. */
  items: number[];
  /** Bytes it holds at most: the stored range plus every blob decoded. */
  cost: number;
}

/** Main-thread decoding yields to the event loop after this many milliseconds. */
const SLICE_MS = 8;

/**
 * Damage to one blob or pack: damaged bytes, a missing pack, a range past the end of a truncated
 * one, a pack header that claims a newer version (a damaged version byte: the repository's config
 * says which version its packs are).
 */
const isBlobError = (e: unknown): e is CofferError => isCofferError(e, 'CORRUPT') || isCofferError(e, 'NOT_FOUND') || isCofferError(e, 'INVALID_RANGE') || isCofferError(e, 'UNSUPPORTED');

/**
 * Splits the hits into requests: by pack (in order of first appearance), then by offset. A
 * request spans at most maxRequest stored bytes and holds at most 2 * maxRequest raw bytes (so
 * that its blobs fit one of ReadBuffers' output slabs), unless one blob alone is larger.
 */
export function planRequests(hits: readonly IndexHit[], maxGap = DEFAULT_MAX_GAP, maxRequest = DEFAULT_MAX_REQUEST): Request[] {
  const maxRaw = 2 * maxRequest;
  const byPack = new Map<string, number[]>();
  for (let i = 0; i < hits.length; i++) {
    const k = toHex(hits[i]!.packId);
    let list = byPack.get(k);
    if (!list) byPack.set(k, (list = []));
    list.push(i);
  }
  const out: Request[] = [];
  for (const [packHex, list] of byPack) {
    list.sort((a, b) => hits[a]!.entry.offset - hits[b]!.entry.offset);
    let cur: Request | undefined;
    for (const i of list) {
      const e = hits[i]!.entry;
      const end = e.offset + e.length;
      if (cur && e.offset - cur.end <= maxGap && Math.max(cur.end, end) - cur.start <= maxRequest && cur.cost + e.rawLength <= maxRaw) {
        cur.end = Math.max(cur.end, end);
        cur.items.push(i);
        cur.cost += e.rawLength;
        continue;
      }
      if (cur) out.push(cur);
      cur = { packHex, start: e.offset, end, items: [i], cost: e.rawLength };
    }
    if (cur) out.push(cur);
  }
  for (const r of out) r.cost += r.end - r.start;
  return out;
}

/**
 * Reads and verifies the blobs at `hits` and calls deliver() once per request with the indexes
 * (into `hits`) it covers and their results. Calls to deliver() may overlap when it is async.
 */
export async function readBlobs(
  repo: BlobSource,
  hits: readonly IndexHit[],
  deliver: (indexes: number[], results: BlobResult[]) => void | Promise<void>,
  options: ReadBlobsOptions = {},
): Promise<void> {
  if (hits.length === 0) return;
  const maxRequest = options.maxRequest ?? DEFAULT_MAX_REQUEST;
  const requests = planRequests(hits, options.maxGap, maxRequest);
  const maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
  const concurrency = Math.max(1, options.concurrency ?? 4);
  // The first failure stops the requests still in flight.
  const inner = new AbortController();
  const outer = options.signal;
  const onAbort = () => inner.abort(outer!.reason);
  if (outer?.aborted) onAbort();
  outer?.addEventListener('abort', onAbort, { once: true });
  const signal = inner.signal;
  const decoder = options.decoder;
  // Requests are copied into shared memory for the workers, and those buffers are reused: each
  // one is referenced from every worker it went to until that worker's next GC, so fresh ones
  // would pile up. The range is read straight into such a buffer when the backend can (a local
  // repository): no fresh buffer per request, no copy.
  const buffers = options.buffers;
  // Without ReadBuffers the slabs live for this call only: as large as its largest request, not
  // maxRequest (a backup's parent trees come a few KiB per call; an 8 MiB zeroed slab for each
  // call was most of an incremental backup's time).
  const slabs = buffers?.ranges ?? new SharedSlabs(Math.max(1, Math.min(maxRequest, requests.reduce((m, r) => Math.max(m, r.end - r.start), 0))), concurrency + 1);
  const sharedCopy = (b: Buffer, into: Uint8Array | undefined): Uint8Array => {
    if (into && b.buffer === into.buffer && b.byteOffset === into.byteOffset) return into;
    const u = into ?? slabs.take(b.length);
    u.set(b);
    return u;
  };

  const itemsOf = (key: Buffer, idx: number[], stored: Uint8Array[]): DecodeItem[] =>
    idx.map((i, k) => {
      const e = hits[i]!.entry;
      return { type: e.type, id: e.id, packKey: key, nonceIndex: e.nonceIndex, compressed: e.compressed, rawLength: e.rawLength, stored: stored[k]! };
    });

  /** Decodes one item into `into` (reused buffers), on this thread or in the pool. */
  const decodeOneInto = async (it: DecodeItem, into: Uint8Array): Promise<Buffer> => {
    if (decoder) return (await decoder.decode([it], signal, { into }))[0]!;
    decodeBlobInto(repo.keys, it, into, buffers!.scratch);
    return Buffer.from(into.buffer, into.byteOffset, into.byteLength);
  };

  /** Decodes each item on its own (errors apart), on this thread or in the pool; into `outs` when given. */
  const decodeEach = async (items: DecodeItem[], outs?: Uint8Array[]): Promise<BlobResult[]> => {
    const out: BlobResult[] = [];
    let slice = performance.now();
    for (const [k, it] of items.entries()) {
      throwIfAborted(signal);
      try {
        const data = outs ? await decodeOneInto(it, outs[k]!) : decoder ? (await decoder.decode([it], signal))[0]! : decodeBlob(repo.keys, it.packKey, it.nonceIndex, it.type, it.id, it.compressed, it.rawLength, it.stored);
        out.push(checked(it, data));
      } catch (e) {
        if (!isBlobError(e)) throw e;
        out.push({ error: e });
      }
      if (!decoder && performance.now() - slice > SLICE_MS) {
        await nextTurn();
        slice = performance.now();
      }
    }
    return out;
  };

  const checked = (it: DecodeItem, data: Buffer): BlobResult =>
    data.length === it.rawLength
      ? { data }
      : { error: new CofferError('CORRUPT', `Cannot read ${it.type} blob ${toHex(it.id)}: it has ${data.length} bytes, the index says ${it.rawLength}`, { hint: 'Run `coffer repo check`.' }) };

  /** Views of `into` for each item's raw bytes, back to back. */
  const outputsOf = (items: DecodeItem[], into: Uint8Array): Uint8Array[] => {
    let o = 0;
    return items.map((it) => into.subarray(o, (o += it.rawLength)));
  };

  const decodeAll = async (items: DecodeItem[], into?: Uint8Array): Promise<BlobResult[]> => {
    const outs = into ? outputsOf(items, into) : undefined;
    if (!decoder) return decodeEach(items, outs);
    try {
      const raws = await decoder.decode(items, signal, into ? { into } : {});
      return items.map((it, k) => checked(it, raws[k]!));
    } catch (e) {
      // One damaged blob fails the whole call: find out which, one by one.
      if (isCofferError(e, 'CORRUPT') && items.length > 1) return decodeEach(items, outs);
      if (isBlobError(e)) return items.map(() => ({ error: e }));
      throw e;
    }
  };

  /** The old way, for a request that failed as a whole: one get per blob. */
  const readEach = async (r: Request, key: Buffer, output: Uint8Array | undefined): Promise<BlobResult[]> => {
    const out: BlobResult[] = [];
    let o = 0;
    for (const i of r.items) {
      const into = output?.subarray(o, (o += hits[i]!.entry.rawLength));
      const e = hits[i]!.entry;
      let stored: Buffer;
      try {
        stored = await repo.backend.get(packName(r.packHex), { signal, offset: e.offset, length: e.length });
      } catch (err) {
        if (!isBlobError(err)) throw err;
        out.push({ error: err });
        continue;
      }
      out.push(...(await decodeAll(itemsOf(key, [i], [stored]), into)));
    }
    return out;
  };

  const run = async (r: Request): Promise<void> => {
    throwIfAborted(signal);
    let results: BlobResult[];
    let key: Buffer | undefined;
    // With reused buffers: where this request's blobs are decoded (handed back after deliver()).
    const output = buffers?.outputs.take(r.items.reduce((n, i) => n + hits[i]!.entry.rawLength, 0));
    try {
      key = await repo.packKey(r.packHex, { signal });
    } catch (e) {
      if (!isBlobError(e)) throw e;
      results = r.items.map(() => ({ error: e }));
    }
    if (key) {
      let range: Uint8Array | undefined;
      try {
        const into = decoder || buffers ? slabs.take(r.end - r.start) : undefined;
        const got = await repo.backend.get(packName(r.packHex), { signal, offset: r.start, length: r.end - r.start, into });
        if (got.length !== r.end - r.start) throw new CofferError('STORAGE_ERROR', `Cannot read ${packName(r.packHex)}: the backend returned ${got.length} of ${r.end - r.start} bytes`);
        // Shared with the workers: one copy at most here instead of one per blob in the pool.
        range = into ? sharedCopy(got, into) : got;
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || signal.aborted) throw e;
        if (r.items.length === 1 && !isBlobError(e)) throw e;
      }
      if (range) {
        const stored = r.items.map((i) => {
          const e = hits[i]!.entry;
          return range.subarray(e.offset - r.start, e.offset - r.start + e.length);
        });
        results = await decodeAll(itemsOf(key, r.items, stored), output);
        // The workers are done with it (a failed or cancelled call never gets here).
        slabs.give(range);
      } else {
        results = await readEach(r, key, output);
      }
    }
    throwIfAborted(signal);
    await deliver(r.items, results!);
    if (output) buffers!.outputs.give(output);
  };

  let next = 0;
  let active = 0;
  let activeCost = 0;
  let failure: { error: unknown } | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      const pump = () => {
        if (failure) {
          if (active === 0) reject(failure.error);
          return;
        }
        if (next >= requests.length && active === 0) {
          resolve();
          return;
        }
        while (next < requests.length && active < concurrency && (active === 0 || activeCost + requests[next]!.cost <= maxInFlight)) {
          const r = requests[next++]!;
          active++;
          activeCost += r.cost;
          run(r).then(
            () => {},
            (e: unknown) => {
              if (!failure) {
                failure = { error: e };
                inner.abort(e);
              }
            },
          ).finally(() => {
            active--;
            activeCost -= r.cost;
            pump();
          });
        }
      };
      pump();
    });
  } finally {
    outer?.removeEventListener('abort', onAbort);
  }
}
