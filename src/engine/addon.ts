// Where the native addon lives (src/native/coffer_native.c, built by node-gyp when `npm ci`
// runs), and the engine's own use of it: zstd with one reused context per thread. The file-system
// functions are loaded and wrapped by sources/native.ts; this layer needs only the codec, and
// works without the addon (compress.ts then uses node:zlib).
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
}

let zstd: NativeZstd | null | undefined;

/** The addon's zstd functions, or null when the addon or the zstd symbols are missing. */
export function nativeZstd(): NativeZstd | null {
  if (zstd !== undefined) return zstd;
  zstd = null;
  if (process.platform === 'linux' && process.env.COFFER_NATIVE_ZSTD !== '0' && existsSync(NATIVE_MODULE_PATH)) {
    try {
      const m = createRequire(import.meta.url)(NATIVE_MODULE_PATH) as Partial<NativeZstd> & { zstdAvailable?: () => boolean };
      if (typeof m.zstdAvailable === 'function' && m.zstdAvailable() && m.zstdCompress && m.zstdDecompress) zstd = m as NativeZstd;
    } catch {
      /* sources/native.ts reports a broken addon where it matters; the codec falls back */
    }
  }
  return zstd;
}
