// The one loader of the native addon (src/native/coffer_native.c, built by `npm ci` into
// native/build/Release/ when a C compiler is there: native/ is an optional local package), and
// the engine's own use of it: zstd with one reused context per thread, and read-ahead advice for
// the files a worker is about to read. The file-system functions for fidelity are wrapped by
// sources/native.ts on top of this loader; this layer works without the addon (compress.ts then
// uses node:zlib, and reads get no advice).
//
// Two environment variables steer the loader, for tests and CI: COFFER_NATIVE=0 runs as if the
// addon were not built (the portable path), and COFFER_NATIVE_PATH loads it from another file
// (the AddressSanitizer build of scripts/build-native-asan.ts).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** Where `npm ci` (or `npm run build:native`) puts the addon. */
export const BUILT_MODULE_PATH = fileURLToPath(new URL('../../native/build/Release/coffer_native.node', import.meta.url));

/** The addon this process loads: $COFFER_NATIVE_PATH when set, else BUILT_MODULE_PATH. */
export const NATIVE_MODULE_PATH = process.env.COFFER_NATIVE_PATH || BUILT_MODULE_PATH;

/** How to get the addon, for messages: the same advice everywhere. */
export const BUILD_HINT = 'Install python3, make and a C compiler (Debian: apt-get install build-essential python3), then run `npm run build:native` (or npm ci again).';

/** The outcome of loading the addon: its exports, or why there are none. */
export type AddonLoad =
  | { ok: true; path: string; exports: Record<string, unknown> }
  | { ok: false; path: string; reason: string; hint: string; cause?: unknown };

/** Whether COFFER_NATIVE=0 (or false/no/off) asks to run without the addon. */
export function nativeDisabled(): boolean {
  return /^(0|false|no|off)$/i.test(process.env.COFFER_NATIVE ?? '');
}

/**
 * Loads the addon from `path`, or, without `path`, the one this process uses (honouring
 * COFFER_NATIVE=0). Never throws: a missing or broken addon gives the reason and what to do.
 */
export function loadAddon(path?: string): AddonLoad {
  const at = path ?? NATIVE_MODULE_PATH;
  if (path === undefined && nativeDisabled()) {
    return { ok: false, path: at, reason: 'the native addon is disabled (COFFER_NATIVE=0)', hint: 'Unset COFFER_NATIVE to use it.' };
  }
  if (process.platform !== 'linux') {
    return {
      ok: false,
      path: at,
      reason: `full file-system fidelity needs Linux, this is ${process.platform}`,
      hint: 'Times are kept to the precision node:fs offers; extended attributes, ACLs, devices and holes are not backed up or restored here.',
    };
  }
  if (!existsSync(at)) return { ok: false, path: at, reason: `the native addon is not built (${at} is missing)`, hint: BUILD_HINT };
  try {
    return { ok: true, path: at, exports: createRequire(import.meta.url)(at) as Record<string, unknown> };
  } catch (e) {
    return {
      ok: false,
      path: at,
      reason: `the native addon ${at} cannot be loaded (${(e as Error).message})`,
      hint: `Rebuild it: ${BUILD_HINT}`,
      cause: e,
    };
  }
}

let loaded: AddonLoad | undefined;

/** The addon this process uses, loaded once (see loadAddon()). */
export function addon(): AddonLoad {
  loaded ??= loadAddon();
  return loaded;
}

export interface NativeZstd {
  /** One zstd frame of `data` at `level`, or null when it would not be smaller than `data`. */
  zstdCompress(data: Uint8Array, level: number): Buffer | null;
  /** Exactly `rawLength` bytes from exactly one frame, or throws (code ZSTD_ERROR or ZSTD_LENGTH). */
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

function engineAddon(): EngineAddon | null {
  const a = addon();
  return a.ok ? (a.exports as EngineAddon) : null;
}

let zstd: NativeZstd | null | undefined;

/**
 * The addon's zstd functions, or null when the addon or the zstd symbols are missing (or
 * COFFER_NATIVE_ZSTD=0, to compare with node:zlib).
 */
export function nativeZstd(): NativeZstd | null {
  if (zstd !== undefined) return zstd;
  const m = engineAddon();
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
  const m = engineAddon();
  codec = m && process.env.COFFER_NATIVE_CODEC !== '0' && m.codecAvailable?.() && m.encodeBlobs ? (m as NativeCodec) : null;
  return codec;
}

/** Asks the kernel to start reading file `fd` into the page cache (a no-op without the addon). */
export function willNeed(fd: number): void {
  engineAddon()?.willNeed?.(fd);
}
