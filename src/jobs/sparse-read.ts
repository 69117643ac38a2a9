// Backing up sparse files without reading their holes. A hole reads as zeros, so the backup must
// store exactly the chunks (and ids) that reading those zeros would give, or dedup against earlier
// snapshots and other copies of the file would break. Chunk boundaries depend only on the bytes
// from a chunk's start (chunker.ts), so:
//  - near a hole's edges, the zeros are put into the read buffer without a read (no I/O), and cut
//    and hashed like any data: the chunk that runs from data into a hole, or from a hole into
//    data, comes out as from a full read;
//  - once a chunk starts inside a hole, every chunk that fits in the rest of the hole is the same
//    all-zero chunk: max-size (or the first cut that the gear hash makes in zeros, which is the same
//    wherever it starts) for content-defined chunking, the block size for fixed-size chunking. Its
//    length and id are worked out once per backup, and the hole is skipped whole.
// A 2 GiB file with 4 MiB of data backs up in 0.5 s instead of 10-19 s (restic 0.14: 4.2 s).

import type { ChunkerParams } from '../engine/chunker.ts';
import { toHex } from '../engine/hash.ts';

/** The holes of a file: the complement of its data regions (dataRegions()) within its size. */
export class HoleMap {
  private readonly starts: number[];
  private readonly ends: number[];
  /** The size the regions were found for: beyond it, everything is read. */
  readonly size: number;
  readonly holeBytes: number;

  /** `regions`: sorted, disjoint [start, end) data regions within [0, size). */
  constructor(regions: ReadonlyArray<readonly [number, number]>, size: number) {
    this.starts = regions.map((r) => r[0]);
    this.ends = regions.map((r) => r[1]);
    this.size = size;
    this.holeBytes = size - regions.reduce((n, [a, b]) => n + (b - a), 0);
  }

  /** Index of the last region starting at or before `pos`, or -1. */
  private regionAt(pos: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid]! <= pos) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }

  /** The end of the hole that `pos` is in; `pos` itself when it is in data or at or past the size. */
  holeEnd(pos: number): number {
    if (pos >= this.size) return pos;
    const i = this.regionAt(pos);
    if (i >= 0 && pos < this.ends[i]!) return pos;
    return i + 1 < this.starts.length ? this.starts[i + 1]! : this.size;
  }

  /** The end of the data that `pos` is in (Infinity past the size: read to the real end). */
  dataEnd(pos: number): number {
    if (pos >= this.size) return Infinity;
    const i = this.regionAt(pos);
    return i >= 0 && pos < this.ends[i]! ? this.ends[i]! : pos;
  }
}

export interface ZeroChunk {
  length: number;
  id: Buffer;
  hex: string;
  /** `length` zero bytes, to store the blob once if the repository lacks it. Never changed. */
  raw: Buffer;
}

/** What ZeroChunks needs of the worker pool: the same chunking and hashing as every read. */
export interface ZeroChunker {
  chunkAndHash(data: Uint8Array, eof: boolean, mode: 'cdc' | { fixed: number }, signal?: AbortSignal): Promise<{ ends: number[]; ids: Buffer[] }>;
}

/** The all-zero chunk that starts inside a long hole, per chunking mode, computed once. */
export class ZeroChunks {
  private readonly pool: ZeroChunker;
  private readonly chunker: ChunkerParams;
  private readonly cache = new Map<string, Promise<ZeroChunk>>();

  constructor(pool: ZeroChunker, chunker: ChunkerParams) {
    this.pool = pool;
    this.chunker = chunker;
  }

  get(fixed: number | undefined, signal?: AbortSignal): Promise<ZeroChunk> {
    const key = fixed === undefined ? 'cdc' : String(fixed);
    let p = this.cache.get(key);
    if (!p) {
      // maxSize zeros always hold the first chunk: no chunk is longer.
      const zeros = Buffer.alloc(fixed ?? this.chunker.maxSize);
      p = this.pool.chunkAndHash(zeros, false, fixed === undefined ? 'cdc' : { fixed }, signal).then((r) => {
        const length = r.ends[0]!;
        const id = Buffer.from(r.ids[0]!);
        return { length, id, hex: toHex(id), raw: zeros.subarray(0, length) };
      });
      p.catch(() => this.cache.delete(key));
      this.cache.set(key, p);
    }
    return p;
  }
}
