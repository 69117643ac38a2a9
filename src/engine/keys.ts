// Keys: the repository master key, the subkeys derived from it, and key files that wrap the
// master key under a passphrase (scrypt + AES-256-GCM), so passphrases can be added and revoked
// without re-encrypting any data.
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, scrypt } from 'node:crypto';
import { CofferError } from '../core/errors.ts';
import { KEY_SIZE, LABEL_CHUNK_ID, LABEL_ENCRYPTION, LABEL_GEAR, NONCE_SIZE, TAG_SIZE } from './format.ts';

export interface RepoKeys {
  /** Root of every encryption subkey (per pack, per object). Never used directly as a cipher key. */
  encryption: Buffer;
  /** BLAKE3 key for chunk ids. */
  chunkIdKey: Buffer;
  /** Seed of the secret gear table of the content-defined chunker. */
  gearSeed: Buffer;
}

/** HKDF-SHA256 with a 32-byte output. */
export function hkdf32(ikm: Uint8Array, salt: Uint8Array, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'utf8'), KEY_SIZE));
}

export function newMasterKey(): Buffer {
  return randomBytes(KEY_SIZE);
}

/** Derives the repository subkeys: HKDF-SHA256(master, salt = empty, info = label). */
export function deriveRepoKeys(master: Uint8Array): RepoKeys {
  if (master.length !== KEY_SIZE) {
    throw new CofferError('INTERNAL', `Cannot derive keys: the master key is ${master.length} bytes, not ${KEY_SIZE}`);
  }
  const none = Buffer.alloc(0);
  return {
    encryption: hkdf32(master, none, LABEL_ENCRYPTION),
    chunkIdKey: hkdf32(master, none, LABEL_CHUNK_ID),
    gearSeed: hkdf32(master, none, LABEL_GEAR),
  };
}

export interface KdfParams {
  N: number;
  r: number;
  p: number;
}

/** scrypt N=2^15, r=8, p=1: about 0.1 s and 32 MiB on a current core. */
export const DEFAULT_KDF: KdfParams = { N: 2 ** 15, r: 8, p: 1 };

export interface KeyFile {
  version: 1;
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  /** base64 scrypt salt (32 bytes when written by this code). */
  salt: string;
  /** base64 of nonce(12) || AES-256-GCM ciphertext of the master key(32) || tag(16). */
  data: string;
  /** ISO 8601 time the key was created. Informational, not authenticated. */
  created: string;
  hostname: string;
  username: string;
}

// Limits on untrusted key files, so that a hostile one cannot make unwrapMasterKey() spend
// gigabytes or minutes: scrypt needs about 128·N·r bytes and N·r·p units of work.
const LIMITS = { maxN: 2 ** 22, maxR: 32, maxP: 16, maxMem: 1 << 30, maxWork: 2 ** 26 };
const SALT_MIN = 16;
const SALT_MAX = 64;
const WRAPPED_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE;

function kdfProblem(params: { N: unknown; r: unknown; p: unknown }): string | undefined {
  const { N, r, p } = params;
  if (!Number.isSafeInteger(N) || (N as number) < 2 || (N as number) > LIMITS.maxN) return `N must be an integer from 2 to 2^22`;
  const n = N as number;
  if ((n & (n - 1)) !== 0) return 'N must be a power of two';
  if (!Number.isSafeInteger(r) || (r as number) < 1 || (r as number) > LIMITS.maxR) return `r must be an integer from 1 to ${LIMITS.maxR}`;
  if (!Number.isSafeInteger(p) || (p as number) < 1 || (p as number) > LIMITS.maxP) return `p must be an integer from 1 to ${LIMITS.maxP}`;
  if (128 * n * (r as number) > LIMITS.maxMem) return 'N·r needs more than 1 GiB of memory';
  if (n * (r as number) * (p as number) > LIMITS.maxWork) return 'N·r·p is more than 2^26';
  return undefined;
}

// The passphrase enters scrypt as the UTF-8 of its NFC form, so that the same passphrase typed
// on systems that compose accents differently (macOS input gives NFD at times) opens the key.
function scryptAsync(passphrase: string, salt: Buffer, params: KdfParams): Promise<Buffer> {
  const maxmem = 128 * params.N * params.r + 128 * params.r * params.p + (16 << 20);
  return new Promise((resolve, reject) => {
    scrypt(Buffer.from(passphrase.normalize('NFC'), 'utf8'), salt, KEY_SIZE, { N: params.N, r: params.r, p: params.p, maxmem }, (err, key) => {
      if (err) reject(new CofferError('INTERNAL', `Cannot derive a key from the passphrase: ${err.message}`, { cause: err }));
      else resolve(key);
    });
  });
}

// The KDF parameters are bound into the AAD so that the wrapped key only opens with exactly the
// parameters it was written with.
function keyFileAad(params: KdfParams): Buffer {
  return Buffer.from(`coffer v1 key scrypt ${params.N} ${params.r} ${params.p}`, 'utf8');
}

/** Wraps the master key under `passphrase`. The result is stored as JSON. */
export async function wrapMasterKey(
  master: Uint8Array,
  passphrase: string,
  params: KdfParams = DEFAULT_KDF,
  meta: { hostname?: string; username?: string; now?: Date } = {},
): Promise<KeyFile> {
  if (master.length !== KEY_SIZE) {
    throw new CofferError('INTERNAL', `Cannot wrap the master key: it is ${master.length} bytes, not ${KEY_SIZE}`);
  }
  if (typeof passphrase !== 'string' || passphrase.length === 0) {
    throw new CofferError('USAGE', 'Cannot create a key: the passphrase is empty', { hint: 'Give a non-empty passphrase.' });
  }
  const problem = kdfProblem(params);
  if (problem) throw new CofferError('USAGE', `Cannot create a key with these scrypt parameters: ${problem}`);
  const salt = randomBytes(32);
  const kek = await scryptAsync(passphrase, salt, params);
  const nonce = randomBytes(NONCE_SIZE);
  const cipher = createCipheriv('aes-256-gcm', kek, nonce);
  cipher.setAAD(keyFileAad(params));
  const ct = Buffer.concat([cipher.update(master), cipher.final()]);
  const data = Buffer.concat([nonce, ct, cipher.getAuthTag()]);
  return {
    version: 1,
    kdf: 'scrypt',
    N: params.N,
    r: params.r,
    p: params.p,
    salt: salt.toString('base64'),
    data: data.toString('base64'),
    created: (meta.now ?? new Date()).toISOString(),
    hostname: meta.hostname ?? '',
    username: meta.username ?? '',
  };
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function corrupt(why: string): CofferError {
  return new CofferError('CORRUPT', `Cannot read the key file: ${why}`, {
    hint: 'The key file is damaged or was not written by Coffer; use another key or restore it from a copy.',
  });
}

function decodeB64(v: unknown, field: string, min: number, max: number): Buffer {
  // Bound the string before decoding so a huge field cannot force a huge allocation.
  if (typeof v !== 'string' || v.length > Math.ceil(max / 3) * 4 || !BASE64.test(v)) throw corrupt(`${field} is not base64`);
  const b = Buffer.from(v, 'base64');
  if (b.length < min || b.length > max) throw corrupt(`${field} has the wrong length (${b.length} bytes)`);
  return b;
}

/**
 * Opens a key file (parsed JSON from storage, untrusted) with `passphrase`. Throws CORRUPT for a
 * malformed file and WRONG_PASSWORD when the passphrase does not open it.
 */
export async function unwrapMasterKey(keyFile: unknown, passphrase: string): Promise<Buffer> {
  if (keyFile === null || typeof keyFile !== 'object' || Array.isArray(keyFile)) throw corrupt('not a JSON object');
  const kf = keyFile as Record<string, unknown>;
  if (kf.version !== 1) {
    if (Number.isSafeInteger(kf.version) && (kf.version as number) > 1) {
      throw new CofferError('UNSUPPORTED', `Cannot read key file version ${String(kf.version)}: this Coffer reads version 1`, {
        hint: 'Use a newer Coffer release.',
      });
    }
    throw corrupt('bad version');
  }
  if (kf.kdf !== 'scrypt') throw corrupt('unknown KDF');
  const problem = kdfProblem({ N: kf.N, r: kf.r, p: kf.p });
  if (problem) throw corrupt(`unacceptable scrypt parameters: ${problem}`);
  const params: KdfParams = { N: kf.N as number, r: kf.r as number, p: kf.p as number };
  const salt = decodeB64(kf.salt, 'salt', SALT_MIN, SALT_MAX);
  const data = decodeB64(kf.data, 'data', WRAPPED_SIZE, WRAPPED_SIZE);
  if (typeof passphrase !== 'string') throw new CofferError('USAGE', 'Cannot open the key file: no passphrase given');
  const kek = await scryptAsync(passphrase, salt, params);
  const decipher = createDecipheriv('aes-256-gcm', kek, data.subarray(0, NONCE_SIZE));
  decipher.setAAD(keyFileAad(params));
  decipher.setAuthTag(data.subarray(NONCE_SIZE + KEY_SIZE));
  try {
    return Buffer.concat([decipher.update(data.subarray(NONCE_SIZE, NONCE_SIZE + KEY_SIZE)), decipher.final()]);
  } catch {
    throw new CofferError('WRONG_PASSWORD', 'Cannot open the key file: wrong passphrase', {
      hint: 'Check the passphrase (COFFER_PASSWORD, --password-file or COFFER_PASSWORD_COMMAND).',
    });
  }
}
