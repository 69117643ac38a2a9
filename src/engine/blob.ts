// Blob encoding: compress (when it helps), then AES-256-GCM under the pack's subkey with a
// counter nonce. Encoding verifies its own output by decoding it again, so that a faulty
// compressor or cipher can never produce a committed backup that does not restore.
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto';
import { CofferError, isCofferError } from '../core/errors.ts';
import { compress, decompress } from './compress.ts';
import { BLOB_AAD_MAGIC, BLOB_TYPE_CODE, BLOB_VERSION, FLAG_COMPRESSED, ID_SIZE, KEY_SIZE, NONCE_SIZE, TAG_SIZE, type BlobType } from './format.ts';
import { chunkId } from './hash.ts';
import type { RepoKeys } from './keys.ts';

export interface EncodedBlob {
  /** AES-256-GCM ciphertext || 16-byte tag, as stored in the pack. */
  stored: Buffer;
  compressed: boolean;
  rawLength: number;
}

/** Blob nonces count up to this (exclusive); the pack trailer stores them as u32. */
export const MAX_NONCE_INDEX = 0xffffffff;
/** Largest raw blob: lengths are stored as u32. */
export const MAX_BLOB_SIZE = 0xffffffff;

/** The 12-byte blob nonce: 4 zero bytes, then nonceIndex as a big-endian u64. */
export function blobNonce(nonceIndex: number): Buffer {
  if (!Number.isSafeInteger(nonceIndex) || nonceIndex < 0 || nonceIndex >= MAX_NONCE_INDEX) {
    throw new CofferError('INTERNAL', `Cannot use blob nonce index ${String(nonceIndex)}: out of range`);
  }
  const n = Buffer.alloc(NONCE_SIZE);
  n.writeBigUInt64BE(BigInt(nonceIndex), 4);
  return n;
}

export const BLOB_AAD_SIZE = 8 + 4 + 4 + ID_SIZE;

/**
 * Additional authenticated data of a blob: magic(8) version(1) type(1) flags(1) reserved(1)
 * rawLength(u32 LE) id(32). A blob only opens as the type, id, length and compression state the
 * index or trailer claims for it.
 */
export function blobAad(type: BlobType, id: Uint8Array, compressed: boolean, rawLength: number): Buffer {
  const aad = Buffer.alloc(BLOB_AAD_SIZE);
  BLOB_AAD_MAGIC.copy(aad, 0);
  aad[8] = BLOB_VERSION;
  aad[9] = BLOB_TYPE_CODE[type];
  aad[10] = compressed ? FLAG_COMPRESSED : 0;
  aad.writeUInt32LE(rawLength, 12);
  aad.set(id, 16);
  return aad;
}

// A raw key Buffer makes node:crypto build a KeyObject on every cipher (about a tenth of decode
// time for small blobs in profiles); a pack's blobs share one key, so keep a few KeyObjects.
const keyObjects = new Map<string, KeyObject>();
/** The KeyObject of a pack key, from a small cache. */
export function keyObject(packKey: Buffer): KeyObject {
  const k = packKey.toString('latin1');
  let ko = keyObjects.get(k);
  if (!ko) {
    if (keyObjects.size >= 64) keyObjects.clear();
    ko = createSecretKey(packKey);
    keyObjects.set(k, ko);
  }
  return ko;
}

/**
 * Frees a buffer's memory now instead of at the next garbage collection, if the buffer is the
 * whole of its own ArrayBuffer (never a slice of Node's shared pool or of a bigger buffer): the
 * caller must not use it again. Encoding churns through several blob-sized intermediate buffers
 * per blob; left to the collector, a worker thread (small heap, rare collections) held a hundred
 * megabytes of them.
 */
export function release(b: Uint8Array | null | undefined): void {
  if (!b) return;
  const ab = b.buffer;
  if (ab instanceof ArrayBuffer && !ab.detached && b.byteOffset === 0 && b.byteLength === ab.byteLength && ab.byteLength > 0) ab.transfer(0);
}

function checkArgs(action: string, packKey: Uint8Array, type: BlobType, id: Uint8Array, rawLength: number): void {
  if (packKey.length !== KEY_SIZE) throw new CofferError('INTERNAL', `Cannot ${action}: the pack key is ${packKey.length} bytes`);
  if (BLOB_TYPE_CODE[type] === undefined) throw new CofferError('INTERNAL', `Cannot ${action}: unknown blob type ${String(type)}`);
  if (id.length !== ID_SIZE) throw new CofferError('INTERNAL', `Cannot ${action}: the id is ${id.length} bytes, not ${ID_SIZE}`);
  if (!Number.isSafeInteger(rawLength) || rawLength < 0 || rawLength > MAX_BLOB_SIZE) {
    throw new CofferError('INTERNAL', `Cannot ${action}: bad raw length ${String(rawLength)}`);
  }
}

/**
 * The error of an encoder whose output fails its check (or whose input does not hash to its
 * id): a bug, or faulty memory or CPU, never bad user input; nothing is committed with it.
 */
export function encodeFault(why: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}): CofferError {
  return new CofferError('INTERNAL', `Cannot encode a blob: ${why}`, {
    ...options,
    hint: 'Nothing was committed. This points at a bug or at faulty memory or CPU; report it.',
  });
}

/**
 * Compresses (unless that does not shrink it), encrypts and then verifies one blob. `nonceIndex`
 * must never be used twice with the same packKey (PackWriter.reserveNonce() hands them out).
 * Throws INTERNAL if the result does not decode back to `raw` with id `id`.
 */
export function encodeBlob(
  keys: RepoKeys,
  packKey: Buffer,
  nonceIndex: number,
  type: BlobType,
  id: Uint8Array,
  raw: Uint8Array,
  level: number,
): EncodedBlob {
  checkArgs('encode a blob', packKey, type, id, raw.length);
  const packed = compress(raw, level);
  const compressed = packed !== null;
  const payload = packed ?? raw;
  const cipher = createCipheriv('aes-256-gcm', keyObject(packKey), blobNonce(nonceIndex));
  cipher.setAAD(blobAad(type, id, compressed, raw.length));
  // One exactly-sized buffer owning its memory, so that a worker can transfer it without a copy.
  const stored = Buffer.allocUnsafeSlow(payload.length + TAG_SIZE);
  const ct = cipher.update(payload);
  ct.copy(stored, 0);
  let n = ct.length;
  const fin = cipher.final();
  fin.copy(stored, n);
  n += fin.length;
  cipher.getAuthTag().copy(stored, n);
  if (n !== payload.length) throw new CofferError('INTERNAL', 'Cannot encode a blob: the cipher returned the wrong length');
  release(ct);
  release(fin);
  release(packed);
  const blob: EncodedBlob = { stored, compressed, rawLength: raw.length };
  // Verify: decrypt, decompress and re-hash exactly as a restore would.
  let back: Buffer;
  try {
    back = decodeBlob(keys, packKey, nonceIndex, type, id, compressed, raw.length, stored);
  } catch (e) {
    const why = isCofferError(e) ? e.message : String(e);
    throw encodeFault(`it does not decode back (${why})`, { cause: e, details: { type, id: Buffer.from(id).toString('hex') } });
  }
  // decodeBlob() checked chunkId(back) == id; also compare with the input, in case the caller
  // passed a wrong id that happened to match (it cannot, but this is cheap next to the rest).
  if (back.length !== raw.length || !back.equals(raw)) {
    throw new CofferError('INTERNAL', 'Cannot encode a blob: it decodes to different bytes', { details: { type } });
  }
  // `back` is decodeBlob()'s own output (never `raw` or `stored`): free it.
  release(back);
  return blob;
}

function corrupt(why: string, type: BlobType, id: Uint8Array): CofferError {
  return new CofferError('CORRUPT', `Cannot read ${type} blob ${Buffer.from(id).toString('hex')}: ${why}`, {
    hint: "The pack holding it is damaged; run 'coffer repo check' and restore the pack from another copy.",
    details: { type, id: Buffer.from(id).toString('hex') },
  });
}

/**
 * Decrypts, decompresses and verifies one stored blob: the GCM tag and chunkId(raw) == id.
 * Any failure throws CORRUPT; wrong data is never returned.
 */
export function decodeBlob(
  keys: RepoKeys,
  packKey: Buffer,
  nonceIndex: number,
  type: BlobType,
  id: Uint8Array,
  compressed: boolean,
  rawLength: number,
  stored: Uint8Array,
): Buffer {
  checkArgs('decode a blob', packKey, type, id, rawLength);
  if (stored.length < TAG_SIZE) throw corrupt(`${stored.length} stored bytes is too short`, type, id);
  const ctLength = stored.length - TAG_SIZE;
  // Cheap structural checks before any work: raw blobs are stored at their length, compressed
  // ones only when they shrank.
  if (compressed ? ctLength >= rawLength : ctLength !== rawLength) {
    throw corrupt(`stored length ${ctLength} does not fit raw length ${rawLength}`, type, id);
  }
  const decipher = createDecipheriv('aes-256-gcm', keyObject(packKey), blobNonce(nonceIndex));
  decipher.setAAD(blobAad(type, id, compressed, rawLength));
  decipher.setAuthTag(stored.subarray(ctLength));
  let plain: Buffer;
  try {
    const body = decipher.update(stored.subarray(0, ctLength));
    const fin = decipher.final();
    plain = fin.length === 0 ? body : Buffer.concat([body, fin]);
  } catch {
    throw corrupt('authentication failed', type, id);
  }
  let raw: Buffer;
  if (compressed) {
    try {
      raw = decompress(plain, rawLength);
    } catch (e) {
      throw corrupt(isCofferError(e) ? e.message : String(e), type, id);
    }
    release(plain);
  } else {
    raw = plain;
  }
  const actual = chunkId(keys.chunkIdKey, raw);
  if (!actual.equals(id)) throw corrupt(`content hashes to ${actual.toString('hex')}`, type, id);
  return raw;
}
