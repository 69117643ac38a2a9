// Envelopes: single encrypted objects (config, index files, snapshots, sessions, gc state).
// Each object gets its own key from a random salt, so a fixed nonce is safe and there is no
// per-key message limit to track.
//
// Layout: magic(8) version(1) kind(1) flags(1) reserved(1) = 0, rawLength(u32 LE), salt(32),
// then AES-256-GCM ciphertext and 16-byte tag. key = HKDF-SHA256(encryption, salt,
// "coffer v1 object " + kind), nonce = 12 zero bytes, AAD = the 48-byte header.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CofferError, isCofferError } from '../core/errors.ts';
import { compress, decompress } from './compress.ts';
import {
  FLAG_COMPRESSED, LABEL_OBJECT_PREFIX, NONCE_SIZE, OBJECT_KIND_CODE, OBJECT_MAGIC, OBJECT_VERSION, SALT_SIZE, TAG_SIZE,
  type ObjectKind,
} from './format.ts';
import { hkdf32, type RepoKeys } from './keys.ts';

export type { ObjectKind } from './format.ts';

export const OBJECT_HEADER_SIZE = 8 + 4 + 4 + SALT_SIZE;
/** Largest plaintext an envelope may hold; also the cap on decompression (zstd bombs). */
export const MAX_OBJECT_SIZE = 1 << 30;
/** Compression level of sealObject() when none is given. */
export const DEFAULT_OBJECT_LEVEL = 3;

const ZERO_NONCE = Buffer.alloc(NONCE_SIZE);

function objectKey(keys: RepoKeys, kind: ObjectKind, salt: Uint8Array): Buffer {
  return hkdf32(keys.encryption, salt, LABEL_OBJECT_PREFIX + kind);
}

/**
 * Encrypts one object. `level` is the zstd level (default 3); the payload is stored raw when
 * compression does not shrink it. `options.salt` exists for golden test vectors only: a real
 * salt MUST be random, or two objects would share a key and nonce.
 */
export function sealObject(keys: RepoKeys, kind: ObjectKind, plaintext: Uint8Array, level: number = DEFAULT_OBJECT_LEVEL, options: { salt?: Uint8Array } = {}): Buffer {
  const code = OBJECT_KIND_CODE[kind];
  if (code === undefined) throw new CofferError('INTERNAL', `Cannot seal an object: unknown kind ${String(kind)}`);
  if (plaintext.length > MAX_OBJECT_SIZE) {
    throw new CofferError('INTERNAL', `Cannot seal a ${kind} object of ${plaintext.length} bytes: the limit is 1 GiB`);
  }
  const salt = options.salt ?? randomBytes(SALT_SIZE);
  if (salt.length !== SALT_SIZE) throw new CofferError('INTERNAL', 'Cannot seal an object: the salt must be 32 bytes');
  const packed = compress(plaintext, level);
  const payload = packed ?? plaintext;
  const header = Buffer.alloc(OBJECT_HEADER_SIZE);
  OBJECT_MAGIC.copy(header, 0);
  header[8] = OBJECT_VERSION;
  header[9] = code;
  header[10] = packed ? FLAG_COMPRESSED : 0;
  header.writeUInt32LE(plaintext.length, 12);
  header.set(salt, 16);
  const cipher = createCipheriv('aes-256-gcm', objectKey(keys, kind, salt), ZERO_NONCE);
  cipher.setAAD(header);
  return Buffer.concat([header, cipher.update(payload), cipher.final(), cipher.getAuthTag()]);
}

function corrupt(kind: ObjectKind, why: string): CofferError {
  return new CofferError('CORRUPT', `Cannot open the ${kind} object: ${why}`, {
    hint: "The object is damaged or is not what its name says; run 'coffer repo check'.",
  });
}

const KIND_BY_CODE = new Map<number, ObjectKind>(Object.entries(OBJECT_KIND_CODE).map(([k, v]) => [v, k as ObjectKind]));

/** Decrypts an object sealed as `kind`. Anything wrong (kind, truncation, any byte) → CORRUPT. */
export function openObject(keys: RepoKeys, kind: ObjectKind, data: Uint8Array): Buffer {
  if (OBJECT_KIND_CODE[kind] === undefined) throw new CofferError('INTERNAL', `Cannot open an object: unknown kind ${String(kind)}`);
  if (data.length < OBJECT_HEADER_SIZE + TAG_SIZE) throw corrupt(kind, `only ${data.length} bytes (truncated)`);
  const header = data.subarray(0, OBJECT_HEADER_SIZE);
  if (!OBJECT_MAGIC.equals(header.subarray(0, 8))) throw corrupt(kind, 'not a Coffer object (bad magic)');
  const version = header[8]!;
  if (version !== OBJECT_VERSION) {
    if (version > OBJECT_VERSION) {
      throw new CofferError('UNSUPPORTED', `Cannot open a ${kind} object of format version ${version}: this Coffer reads version ${OBJECT_VERSION}`, {
        hint: 'It was written by a newer Coffer; use a newer release.',
      });
    }
    throw corrupt(kind, `bad version ${version}`);
  }
  const actualKind = KIND_BY_CODE.get(header[9]!);
  if (actualKind !== kind) throw corrupt(kind, actualKind ? `it is a ${actualKind} object` : `unknown kind code ${header[9]!}`);
  const flags = header[10]!;
  if ((flags & ~FLAG_COMPRESSED) !== 0 || header[11] !== 0) throw corrupt(kind, 'unknown flags');
  const compressed = (flags & FLAG_COMPRESSED) !== 0;
  const rawLength = Buffer.from(header.buffer, header.byteOffset, header.length).readUInt32LE(12);
  const ctLength = data.length - OBJECT_HEADER_SIZE - TAG_SIZE;
  if (rawLength > MAX_OBJECT_SIZE) throw corrupt(kind, `claims ${rawLength} bytes, over the 1 GiB limit`);
  if (compressed ? ctLength >= rawLength : ctLength !== rawLength) throw corrupt(kind, 'length does not match the header (truncated?)');
  const decipher = createDecipheriv('aes-256-gcm', objectKey(keys, kind, header.subarray(16, OBJECT_HEADER_SIZE)), ZERO_NONCE);
  decipher.setAAD(header);
  decipher.setAuthTag(data.subarray(data.length - TAG_SIZE));
  let plain: Buffer;
  try {
    plain = Buffer.concat([decipher.update(data.subarray(OBJECT_HEADER_SIZE, data.length - TAG_SIZE)), decipher.final()]);
  } catch {
    throw corrupt(kind, 'authentication failed (damaged, or from another repository)');
  }
  if (!compressed) return plain;
  try {
    return decompress(plain, rawLength);
  } catch (e) {
    throw corrupt(kind, isCofferError(e) ? e.message : String(e));
  }
}
