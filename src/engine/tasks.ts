// The work the pool's workers do, as plain synchronous functions: the worker calls them, tests
// compare the pool's answers with them, and callers without a pool can use them directly.
import { closeSync, constants as fsConstants, fstatSync, openSync, readSync } from 'node:fs';
import { CofferError } from '../core/errors.ts';
import { willNeed } from './addon.ts';
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

/**
 * Encode items as columns: ENCODE_COLS numbers per item in `cols` (type code, key index, nonce
 * index, offset and length of the raw bytes in `raws`, index into `shared` or -1).
 */
export const ENCODE_COLS = 6;

/** What a caller expects of a small file it asks readFilesSync() to read (from its lstat). */
export interface ExpectedFile {
  path: Uint8Array;
  size: bigint;
  ino: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/** One file read by readFilesSync(): its bytes (as one chunk), id and whether it changed. */
export type ReadFileResult =
  | { ok: true; data: Buffer; id: Buffer; changed: boolean }
  | { ok: false; message: string; errno?: string };

/**
 * Reads small files whole, each as one chunk, and hashes them: for a backup of many small files
 * the open/fstat/read/close round trips and the hashing are most of the work, and here (in a
 * worker) they cost no main-thread time. A file is opened without following a final symlink and
 * without blocking (a FIFO put in its place does not hang the reader). It counts as changed
 * when it is not the file that was stat'ed (inode), or its size, mtime or ctime differ from
 * `expected` before or after the read, or the bytes read are not its size. At most `limit`
 * bytes are read (a file that grew beyond is kept as read, and changed).
 */
export function readFilesSync(chunkIdKey: Uint8Array, files: readonly ExpectedFile[], limit: number): ReadFileResult[] {
  // Open every file first and ask the kernel to read them ahead: on a cold disk the batch's reads
  // then run side by side instead of one after another (addon.ts, willNeed).
  const fds = files.map((f): number | ReadFileResult => {
    try {
      const fd = openSync(Buffer.from(f.path.buffer, f.path.byteOffset, f.path.byteLength), fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
      if (f.size > 0n) willNeed(fd);
      return fd;
    } catch (e) {
      return failure(e);
    }
  });
  return files.map((f, i): ReadFileResult => {
    const fd = fds[i]!;
    if (typeof fd !== 'number') return fd;
    try {
      const before = fstatSync(fd, { bigint: true });
      if (!before.isFile()) return { ok: false, message: 'it is not a regular file any more' };
      const want = Math.min(limit, Number(before.size > f.size ? before.size : f.size));
      // One byte more than expected: a file that grew is noticed without a second read call.
      const buf = Buffer.allocUnsafeSlow(Math.min(limit, want + 1));
      let n = 0;
      while (n < buf.length) {
        const got = readSync(fd, buf, n, buf.length - n, n);
        if (got === 0) break;
        n += got;
      }
      const after = fstatSync(fd, { bigint: true });
      const same = (s: typeof after) => s.ino === f.ino && s.size === f.size && s.mtimeNs === f.mtimeNs && s.ctimeNs === f.ctimeNs;
      const data = buf.subarray(0, n);
      return { ok: true, data, id: chunkId(chunkIdKey, data), changed: !same(before) || !same(after) || BigInt(n) !== f.size };
    } catch (e) {
      return failure(e);
    } finally {
      closeSync(fd);
    }
  });
}

function failure(e: unknown): ReadFileResult {
  const err = e as NodeJS.ErrnoException;
  return { ok: false, message: err instanceof Error ? err.message : String(e), errno: typeof err?.code === 'string' ? err.code : undefined };
}
