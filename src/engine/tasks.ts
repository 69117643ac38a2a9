// The work the pool's workers do, as plain synchronous functions: the worker calls them, tests
// compare the pool's answers with them, and callers without a pool can use them directly.
import { CofferError } from '../core/errors.ts';
import { Chunker, fixedCut } from './chunker.ts';
import { ID_SIZE } from './format.ts';
import { chunkId } from './hash.ts';

export type ChunkMode = 'cdc' | { fixed: number };

export interface ChunkResult {
  /** End offset (exclusive, relative to the start of data) of each complete chunk. */
  ends: number[];
  /** The chunk ids, 32 bytes each, concatenated in chunk order. */
  ids: Buffer;
  /** Bytes after the last cut, to be carried into the next call (0 at eof). */
  rest: number;
}

export function checkChunkMode(mode: unknown): asserts mode is ChunkMode {
  if (mode === 'cdc') return;
  const size = (mode as { fixed?: unknown } | null)?.fixed;
  if (typeof mode === 'object' && mode !== null && Number.isSafeInteger(size) && (size as number) >= 1 && (size as number) <= 1 << 30) return;
  throw new CofferError('USAGE', `Cannot chunk in mode ${JSON.stringify(mode)}: use 'cdc' or { fixed: size } with 1 ≤ size ≤ 1 GiB`);
}

/**
 * Cuts `data` (which starts at a chunk boundary) into chunks and hashes each one. Without eof the
 * bytes after the last cut are left over (`rest`): the caller passes them again, at the start of
 * the next buffer, with more data behind them.
 */
export function chunkAndHashSync(chunker: Chunker, chunkIdKey: Uint8Array, data: Uint8Array, eof: boolean, mode: ChunkMode): ChunkResult {
  const ends: number[] = [];
  const hashes: Buffer[] = [];
  const end = data.length;
  let start = 0;
  const fixed = mode === 'cdc' ? 0 : mode.fixed;
  while (start < end) {
    const cut = fixed === 0 ? chunker.cut(data, start, end, eof) : fixedCut(start, end, fixed, eof);
    if (cut < 0) break;
    if (cut <= start || cut > end) throw new CofferError('INTERNAL', `Cannot chunk: cut ${cut} outside (${start}, ${end}]`);
    hashes.push(chunkId(chunkIdKey, data.subarray(start, cut)));
    ends.push(cut);
    start = cut;
  }
  const ids = Buffer.allocUnsafeSlow(hashes.length * ID_SIZE);
  for (let i = 0; i < hashes.length; i++) hashes[i]!.copy(ids, i * ID_SIZE);
  return { ends, ids, rest: end - start };
}

/**
 * Decode items travel as columns: DECODE_COLS numbers per item in `cols` (type code, key index,
 * nonce index, compressed 0/1, raw length, offset and length of the stored bytes in `data`).
 * Twenty thousand small objects and buffer views took longer to clone than to decode.
 */
export const DECODE_COLS = 7;
