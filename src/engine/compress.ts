// zstd compression of blobs and objects. Blobs that do not shrink are stored raw, which also
// keeps already-compressed data from paying the decompression cost on restore. The native addon
// (addon.ts) reuses one zstd context per thread; without it, node:zlib builds one per call.
// Both write the same frames (content size recorded, no checksum).
import { constants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { CofferError } from '../core/errors.ts';
import { nativeZstd } from './addon.ts';

export const MIN_LEVEL = -7;
export const MAX_LEVEL = 22;

export function checkLevel(level: number): void {
  if (!Number.isSafeInteger(level) || level < MIN_LEVEL || level > MAX_LEVEL) {
    throw new CofferError('USAGE', `Cannot compress at level ${String(level)}: zstd levels run from ${MIN_LEVEL} to ${MAX_LEVEL}`);
  }
}

/**
 * zstd-compresses `raw` at `level` (zstd's scale: -7 fastest … 22 smallest; 0 = zstd's default, 3).
 * Returns null when the output would not be smaller than the input: store it raw.
 */
export function compress(raw: Uint8Array, level: number): Buffer | null {
  checkLevel(level);
  if (raw.length === 0) return null;
  const z = nativeZstd();
  if (z) return z.zstdCompress(raw, level);
  const out = zstdCompressSync(raw, {
    params: {
      [constants.ZSTD_c_compressionLevel]: level,
      // One-shot: the frame records the content size; no checksum, AES-GCM already authenticates.
      [constants.ZSTD_c_checksumFlag]: 0,
    },
  });
  return out.length < raw.length ? out : null;
}

// Output buffers are allocated whole: an output-sized chunkSize makes decompression 1.2-1.8x
// faster (DESIGN). Above this, stream in pieces of this size instead.
const MAX_CHUNK = 256 << 20;
/** The addon decompresses into one buffer of up to this many bytes (blobs are far smaller). */
const NATIVE_MAX = 0xffffffff;

/**
 * Decompresses one zstd frame that must expand to exactly `rawLength` bytes. Anything else
 * (garbage, truncation, wrong size) throws CORRUPT; it never allocates much more than rawLength.
 */
export function decompress(data: Uint8Array, rawLength: number): Buffer {
  if (!Number.isSafeInteger(rawLength) || rawLength < 0) {
    throw new CofferError('CORRUPT', `Cannot decompress: bad expected length ${String(rawLength)}`);
  }
  let out: Buffer;
  const z = nativeZstd();
  try {
    if (z && rawLength <= NATIVE_MAX) return z.zstdDecompress(data, rawLength);
    out = zstdDecompressSync(data, {
      // maxOutputLength must be ≥ 1; a frame expanding to one byte more than expected is caught
      // below as a length mismatch.
      maxOutputLength: Math.max(1, rawLength),
      chunkSize: Math.min(MAX_CHUNK, Math.max(64, rawLength)),
    });
  } catch (e) {
    throw new CofferError('CORRUPT', `Cannot decompress: ${(e as Error).message}`, { cause: e });
  }
  if (out.length !== rawLength) {
    throw new CofferError('CORRUPT', `Cannot decompress: got ${out.length} bytes, expected ${rawLength}`);
  }
  return out;
}
