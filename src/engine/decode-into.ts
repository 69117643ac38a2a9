// Decoding a blob into the caller's buffer: what decodeBlob() (blob.ts) does, decrypt, decompress
// and verify (GCM tag, then chunkId(raw) == id), but with the raw bytes landing in `out`, a view
// of a reused buffer (buffers.ts), instead of in fresh buffers. The restore decodes every byte it
// writes, and the fresh buffers decodeBlob() returns were, with the pack reads, most of its page
// faults.
//
// node:crypto cannot decrypt into a given buffer: each update() returns a new one. Fed in slices
// of DECRYPT_SLICE bytes, those buffers stay below glibc's mmap threshold (1 MiB, set by the
// launcher) and its trim threshold (128 KiB: a larger free block at the top of the heap goes back
// to the kernel), come from the heap, are copied on and freed at once, so the next slice reuses
// the same memory (256 KiB slices still faulted on every blob). Stored raw blobs are decrypted straight into `out`; compressed ones into the
// thread's scratch buffer and decompressed from there into `out` by the addon's
// zstdDecompressInto() (without it, or with an older addon, through a buffer of its own).
//
// `out` holds the decrypted bytes before the tag is checked; on any failure this throws CORRUPT
// and the caller must not use `out` (restore never writes a blob that failed).
import { createDecipheriv } from 'node:crypto';
import { CofferError, isCofferError } from '../core/errors.ts';
import { blobAad, blobNonce, keyObject, MAX_BLOB_SIZE, release } from './blob.ts';
import type { DecodeScratch } from './buffers.ts';
import { nativeZstd } from './addon.ts';
import { decompress } from './compress.ts';
import { BLOB_TYPE_CODE, ID_SIZE, KEY_SIZE, TAG_SIZE, type BlobType } from './format.ts';
import { chunkId } from './hash.ts';
import type { RepoKeys } from './keys.ts';

/** Ciphertext fed to the decipher at once: its output buffers stay under the mmap threshold. */
export const DECRYPT_SLICE = 64 * 1024;

function corrupt(why: string, type: BlobType, id: Uint8Array): CofferError {
  return new CofferError('CORRUPT', `Cannot read ${type} blob ${Buffer.from(id).toString('hex')}: ${why}`, {
    hint: "The pack holding it is damaged; run 'coffer repo check' and restore the pack from another copy.",
    details: { type, id: Buffer.from(id).toString('hex') },
  });
}

/**
 * Decompresses one zstd frame that must fill `out` exactly: with the addon straight into it,
 * else through decompress() (a buffer of its own, copied, freed).
 */
function decompressInto(data: Uint8Array, out: Uint8Array): void {
  const into = nativeZstd()?.zstdDecompressInto;
  if (into) {
    try {
      into(data, out);
    } catch (e) {
      throw new CofferError('CORRUPT', `Cannot decompress: ${(e as Error).message}`, { cause: e });
    }
    return;
  }
  const raw = decompress(data, out.length);
  out.set(raw);
  release(raw);
}

/** One blob to decode: as DecodeItem (pool.ts), with its stored bytes. */
export interface DecodeArgs {
  packKey: Buffer;
  nonceIndex: number;
  type: BlobType;
  id: Uint8Array;
  compressed: boolean;
  rawLength: number;
  stored: Uint8Array;
}

/**
 * Decrypts, decompresses and verifies one stored blob into `out` (exactly rawLength bytes).
 * Any failure throws CORRUPT (INTERNAL for a wrong call), and `out` is then garbage.
 */
export function decodeBlobInto(keys: RepoKeys, b: DecodeArgs, out: Uint8Array, scratch: DecodeScratch): void {
  const { type, id, rawLength, stored } = b;
  if (b.packKey.length !== KEY_SIZE || BLOB_TYPE_CODE[type] === undefined || id.length !== ID_SIZE || !Number.isSafeInteger(rawLength) || rawLength < 0 || rawLength > MAX_BLOB_SIZE) {
    throw new CofferError('INTERNAL', `Cannot decode a blob: bad arguments (type ${String(type)}, id of ${id.length} bytes, raw length ${String(rawLength)})`);
  }
  if (out.length !== rawLength) throw new CofferError('INTERNAL', `Cannot decode a blob: the output has ${out.length} bytes, not ${rawLength}`);
  if (stored.length < TAG_SIZE) throw corrupt(`${stored.length} stored bytes is too short`, type, id);
  const ctLength = stored.length - TAG_SIZE;
  if (b.compressed ? ctLength >= rawLength : ctLength !== rawLength) throw corrupt(`stored length ${ctLength} does not fit raw length ${rawLength}`, type, id);
  const decipher = createDecipheriv('aes-256-gcm', keyObject(b.packKey), blobNonce(b.nonceIndex));
  decipher.setAAD(blobAad(type, id, b.compressed, rawLength));
  decipher.setAuthTag(stored.subarray(ctLength));
  const plain = b.compressed ? scratch.get(ctLength) : out;
  try {
    let at = 0;
    for (let from = 0; from < ctLength; from += DECRYPT_SLICE) {
      const part = decipher.update(stored.subarray(from, Math.min(ctLength, from + DECRYPT_SLICE)));
      plain.set(part, at);
      at += part.length;
      release(part);
    }
    const fin = decipher.final();
    plain.set(fin, at);
    at += fin.length;
    if (at !== ctLength) throw new Error(`the cipher returned ${at} of ${ctLength} bytes`);
  } catch {
    throw corrupt('authentication failed', type, id);
  }
  if (b.compressed) {
    try {
      decompressInto(plain, out);
    } catch (e) {
      throw corrupt(isCofferError(e) ? e.message : String(e), type, id);
    }
  }
  const actual = chunkId(keys.chunkIdKey, out);
  if (!actual.equals(id)) throw corrupt(`content hashes to ${actual.toString('hex')}`, type, id);
}
