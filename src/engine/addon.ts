// Where the native addon lives (src/native/coffer_native.c, built by node-gyp when `npm ci`
// runs), and the engine's own use of it: zstd with one reused context per thread, and read-ahead
// advice for the files a worker is about to read. The file-system functions for fidelity are
// loaded and wrapped by sources/native.ts; this layer works without the addon (compress.ts then
// uses node:zlib, and reads get no advice).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** Where `npm ci` puts the addon. */
export const NATIVE_MODULE_PATH = fileURLToPath(new URL('../../build/Release/coffer_native.node', import.meta.url));

export interface NativeZstd {
  /** One zstd frame of `data` at `level`, or null when it would not be smaller than `data`. */
  zstdCompress(data: Uint8Array, level: number): Buffer | null;
  /** Exactly `rawLength` bytes, or throws (code ZSTD_ERROR or ZSTD_LENGTH). */
  zstdDecompress(data: Uint8Array, rawLength: number): Buffer;
  /** One frame that fills `out` exactly, decompressed into it, or throws (ZSTD_ERROR, ZSTD_LENGTH); missing in older builds of the addon. */
  zstdDecompressInto?(data: Uint8Array, out: Uint8Array): void;
}

/** The addon's blob encoder (src/native/codec.c): see encodeBlobs there for the contract. */
export interface NativeCodec {
  encodeBlobs(
    raws: Uint8Array[], meta: Float64Array, ids: Uint8Array, keys: Uint8Array, level: number,
    out: Uint8Array, results: Float64Array, callback: (err: (Error & { code?: string }) | null) => void,
  ): void;
}

interface EngineAddon extends Partial<NativeZstd>, Partial<NativeCodec> {
  zstdAvailable?: () => boolean;
  codecAvailable?: () => boolean;
  willNeed?: (fd: number) => void;
}

let addon: EngineAddon | null | undefined;

function load(): EngineAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.platform === 'linux' && existsSync(NATIVE_MODULE_PATH)) {
    try {
      addon = createRequire(import.meta.url)(NATIVE_MODULE_PATH) as EngineAddon;
    } catch {
      /* sources/native.ts reports a broken addon where it matters; the engine falls back */
    }
  }
  return addon;
}

let zstd: NativeZstd | null | undefined;

/**
 * The addon's zstd functions, or null when the addon or the zstd symbols are missing (or
 * COFFER_NATIVE_ZSTD=0, to compare with node:zlib).
 */
export function nativeZstd(): NativeZstd | null {
  if (zstd !== undefined) return zstd;
  const m = load();
  zstd = m && process.env.COFFER_NATIVE_ZSTD !== '0' && m.zstdAvailable?.() && m.zstdCompress && m.zstdDecompress ? (m as NativeZstd) : null;
  return zstd;
}

let codec: NativeCodec | null | undefined;

/**
 * The addon's blob encoder on libuv's thread pool, or null when the addon or its zstd and
 * OpenSSL symbols are missing (or COFFER_NATIVE_CODEC=0: the worker threads encode then).
 */
export function nativeCodec(): NativeCodec | null {
  if (codec !== undefined) return codec;
  const m = load();
  codec = m && process.env.COFFER_NATIVE_CODEC !== '0' && m.codecAvailable?.() && m.encodeBlobs ? (m as NativeCodec) : null;
  return codec;
}

/** Asks the kernel to start reading file `fd` into the page cache (a no-op without the addon). */
export function willNeed(fd: number): void {
  load()?.willNeed?.(fd);
}
