// Content ids. Chunk ids are keyed BLAKE3-256 (the key is secret, so ids do not reveal which
// well-known files a repository holds); object names are the unkeyed BLAKE3-256 of the stored
// bytes, so anyone can verify a stored object without the key.
import { Blake3Hasher, blake3 } from '@napi-rs/blake-hash';
import { CofferError, type ErrorCode } from '../core/errors.ts';
import { ID_SIZE, KEY_SIZE } from './format.ts';

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

// Creating a keyed hasher costs ~10 µs against ~2 µs for reset(); most calls use the same key,
// so the last keyed hasher is kept. Safe because the calls below are synchronous.
let lastKey: Buffer | undefined;
let lastHasher: Blake3Hasher | undefined;

/** Keyed BLAKE3-256 of `data`: the id of a data or tree blob. `key` is RepoKeys.chunkIdKey. */
export function chunkId(key: Uint8Array, data: Uint8Array): Buffer {
  if (key.length !== KEY_SIZE) {
    throw new CofferError('INTERNAL', `Cannot compute a chunk id: the key is ${key.length} bytes, not ${KEY_SIZE}`);
  }
  let h: Blake3Hasher;
  if (lastHasher !== undefined && lastKey !== undefined && lastKey.equals(key)) {
    h = lastHasher;
    h.reset();
  } else {
    lastKey = Buffer.from(key);
    h = Blake3Hasher.newKeyed(lastKey);
    lastHasher = h;
  }
  return h.update(asBuffer(data)).digestBuffer();
}

/** Unkeyed BLAKE3-256 of `data`: the name of a stored object (pack, index, snapshot). */
export function contentHash(data: Uint8Array): Buffer {
  return blake3(asBuffer(data));
}

export function toHex(id: Uint8Array): string {
  return asBuffer(id).toString('hex');
}

const HEX_ID = /^[0-9a-f]{64}$/;

/**
 * Parses a 64-character lowercase hex id read from storage; anything else throws CORRUPT.
 * Takes exactly one argument, so that `names.map(fromHex)` is safe.
 */
export function fromHex(hex: string): Buffer {
  return parseHexId(hex, 'CORRUPT');
}

/** Like fromHex(), throwing `code` instead (USAGE for ids typed by a user). */
export function parseHexId(hex: string, code: ErrorCode): Buffer {
  if (typeof hex !== 'string' || !HEX_ID.test(hex)) {
    const shown = typeof hex === 'string' ? JSON.stringify(hex.length > 80 ? hex.slice(0, 80) + '…' : hex) : typeof hex;
    throw new CofferError(code, `Cannot parse id ${shown}: expected ${ID_SIZE * 2} lowercase hex characters`);
  }
  return Buffer.from(hex, 'hex');
}
