// The server's secrets (repository passwords, S3 credentials, later the CA key), kept out of the
// catalog: a file DATA_DIR/keystore.json (mode 0600) whose entries are encrypted with AES-256-GCM
// under a key derived from the server key, each entry's name bound in as additional data so that
// entries cannot be swapped, and the whole set of entries under an HMAC so that removing or
// editing one is detected at open. (Putting back an older copy of the whole file is not.)
//
// The server key is 32 random bytes: DATA_DIR/server.key (created 0600 on first start), or given
// by the caller from COFFER_SERVER_KEY (base64) or COFFER_SERVER_KEY_FILE (containers). The file
// keeps a key id (derived from the key, not secret), so a wrong key reads as WRONG_PASSWORD and a
// damaged file as CORRUPT, never as garbage.
//
// One server process owns the file; writes are serialised within it and each replaces the file
// atomically (temp file, fsync, rename, fsync of the directory).
//
// Documents name secrets by reference (resolveSecret): `keystore:NAME`, `file:/path` (contents,
// one trailing newline dropped), `env:NAME`. A world- or group-readable file: reference is used
// with a warning, not refused: Kubernetes and Docker mount secrets 0644 by default, and refusing
// would break exactly the deployments that use file: references most.

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { CofferError } from '../core/errors.ts';

export const KEYSTORE_FILE = 'keystore.json';
export const SERVER_KEY_FILE = 'server.key';
const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const MAX_SECRET_BYTES = 64 * 1024;
const REF_FORM = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/;

export interface KeystoreOptions {
  dataDir: string;
  /** The server key itself (from COFFER_SERVER_KEY, base64-decoded by the caller). */
  key?: Buffer;
  /** A file holding the server key (COFFER_SERVER_KEY_FILE): 32 raw bytes, or their base64. */
  keyFile?: string;
  /** Told about things that work but should be fixed (a key file others can read). */
  onWarning?: (message: string) => void;
}

interface Entry {
  nonce: string;
  /** base64 of ciphertext || tag. */
  data: string;
}

interface KeystoreFile {
  version: 1;
  keyId: string;
  entries: Record<string, Entry>;
  /** HMAC-SHA256 over the entries (see entriesMac). */
  mac: string;
}

interface Keys {
  id: string;
  encryption: Buffer;
  mac: Buffer;
}

function deriveKeys(serverKey: Buffer): Keys {
  const derive = (label: string, length = KEY_BYTES) => Buffer.from(hkdfSync('sha256', serverKey, Buffer.alloc(0), Buffer.from(label, 'utf8'), length));
  return {
    id: derive('coffer keystore v1 key id', 8).toString('hex'),
    encryption: derive('coffer keystore v1 encryption'),
    mac: derive('coffer keystore v1 mac'),
  };
}

const aad = (ref: string) => Buffer.from(`coffer keystore v1\0${ref}`, 'utf8');

function entriesMac(keys: Keys, entries: Record<string, Entry>): string {
  const hmac = createHmac('sha256', keys.mac);
  for (const ref of Object.keys(entries).sort()) {
    const e = entries[ref]!;
    hmac.update(`${ref}\0${e.nonce}\0${e.data}\n`);
  }
  return hmac.digest('base64');
}

function corrupt(path: string, why: string): CofferError {
  return new CofferError('CORRUPT', `Cannot read the keystore ${path}: ${why}`, {
    hint: 'The file was damaged or edited. Restore it from a backup of the data directory; secrets in it otherwise have to be stored again.',
  });
}

/** A new random password for a repository: 32 random bytes, base64url (43 characters). */
export function generatePassword(): string {
  return randomBytes(32).toString('base64url');
}

export class Keystore {
  private readonly path: string;
  private readonly dataDir: string;
  private readonly keys: Keys;
  private entries: Record<string, Entry>;
  private writing: Promise<unknown> = Promise.resolve();

  private constructor(dataDir: string, keys: Keys, entries: Record<string, Entry>) {
    this.dataDir = dataDir;
    this.path = join(dataDir, KEYSTORE_FILE);
    this.keys = keys;
    this.entries = entries;
  }

  /**
   * Opens DATA_DIR/keystore.json with the server key (creating DATA_DIR/server.key on first
   * start when no key is given). WRONG_PASSWORD when the key is not the one the keystore was
   * written with; CORRUPT when the file is damaged; USAGE for a malformed key.
   */
  static async open(options: KeystoreOptions): Promise<Keystore> {
    const path = join(options.dataDir, KEYSTORE_FILE);
    const warn = options.onWarning ?? (() => {});
    const existing = await readOptional(path);
    const serverKey = await loadServerKey(options, existing !== undefined, warn);
    const keys = deriveKeys(serverKey);
    if (existing === undefined) return new Keystore(options.dataDir, keys, {});
    await warnIfReadable(path, 'the keystore', warn);
    let parsed: unknown;
    try {
      parsed = JSON.parse(existing.toString('utf8'));
    } catch {
      throw corrupt(path, 'it is not JSON');
    }
    const file = parsed as Partial<KeystoreFile>;
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw corrupt(path, 'it is not a JSON object');
    if (file.version !== 1) {
      if (typeof file.version === 'number' && file.version > 1) {
        throw new CofferError('UNSUPPORTED', `Cannot read the keystore ${path}: it has version ${file.version}, this Coffer reads version 1`, { hint: 'Use a newer Coffer release.' });
      }
      throw corrupt(path, 'it has no valid version');
    }
    if (typeof file.keyId !== 'string' || typeof file.mac !== 'string' || file.entries === null || typeof file.entries !== 'object' || Array.isArray(file.entries)) {
      throw corrupt(path, 'keyId, entries or mac is missing');
    }
    if (file.keyId !== keys.id) {
      throw new CofferError('WRONG_PASSWORD', `Cannot open the keystore ${path}: it cannot be decrypted with this server key (the keystore was written with key ${file.keyId}, this key is ${keys.id})`, {
        hint: `Give the server key the keystore was created with: ${join(options.dataDir, SERVER_KEY_FILE)}, COFFER_SERVER_KEY or COFFER_SERVER_KEY_FILE.`,
      });
    }
    const entries: Record<string, Entry> = Object.create(null);
    for (const [ref, e] of Object.entries(file.entries as Record<string, unknown>)) {
      const entry = e as Partial<Entry> | null;
      if (!REF_FORM.test(ref) || entry === null || typeof entry !== 'object' || typeof entry.nonce !== 'string' || typeof entry.data !== 'string') {
        throw corrupt(path, `the entry ${JSON.stringify(ref)} is malformed`);
      }
      entries[ref] = { nonce: entry.nonce, data: entry.data };
    }
    const expected = Buffer.from(entriesMac(keys, entries), 'base64');
    const actual = Buffer.from(file.mac, 'base64');
    if (actual.length !== expected.length || !timingSafeEqual(actual, expected)) {
      throw corrupt(path, 'its entries do not match their checksum (an entry was changed, added or removed)');
    }
    return new Keystore(options.dataDir, keys, entries);
  }

  /** The names of the secrets held, sorted. */
  list(): string[] {
    return Object.keys(this.entries).sort();
  }

  has(ref: string): boolean {
    checkRef(ref);
    return Object.hasOwn(this.entries, ref);
  }

  /** The secret stored under `ref`; NOT_FOUND naming it; CORRUPT if it does not decrypt. */
  get(ref: string): string {
    checkRef(ref);
    const entry = this.entries[ref];
    if (entry === undefined || !Object.hasOwn(this.entries, ref)) {
      throw new CofferError('NOT_FOUND', `Cannot read the secret keystore:${ref}: the server's keystore has no such entry`, {
        hint: 'Store it first, or correct the reference.',
      });
    }
    const nonce = Buffer.from(entry.nonce, 'base64');
    const data = Buffer.from(entry.data, 'base64');
    if (nonce.length !== NONCE_BYTES || data.length < TAG_BYTES) throw corrupt(this.path, `the entry ${ref} is malformed`);
    const decipher = createDecipheriv('aes-256-gcm', this.keys.encryption, nonce);
    decipher.setAAD(aad(ref));
    decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
    try {
      return Buffer.concat([decipher.update(data.subarray(0, data.length - TAG_BYTES)), decipher.final()]).toString('utf8');
    } catch {
      throw corrupt(this.path, `the entry ${ref} fails its integrity check`);
    }
  }

  /** Stores (or replaces) a secret; the file is rewritten before this resolves. */
  async put(ref: string, secret: string): Promise<void> {
    checkRef(ref);
    if (typeof secret !== 'string' || secret === '') throw new CofferError('USAGE', `Cannot store keystore:${ref}: the secret is empty`);
    const plain = Buffer.from(secret, 'utf8');
    if (plain.length > MAX_SECRET_BYTES) throw new CofferError('USAGE', `Cannot store keystore:${ref}: the secret is larger than 64 KiB`);
    return this.update((entries) => {
      const nonce = randomBytes(NONCE_BYTES);
      const cipher = createCipheriv('aes-256-gcm', this.keys.encryption, nonce);
      cipher.setAAD(aad(ref));
      const data = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
      entries[ref] = { nonce: nonce.toString('base64'), data: data.toString('base64') };
    });
  }

  /** Removes a secret; true if there was one. */
  async delete(ref: string): Promise<boolean> {
    checkRef(ref);
    let had = false;
    await this.update((entries) => {
      had = Object.hasOwn(entries, ref);
      delete entries[ref];
    });
    return had;
  }

  generatePassword(): string {
    return generatePassword();
  }

  // Writes run one after another; the in-memory entries change only once the file has.
  private update(change: (entries: Record<string, Entry>) => void): Promise<void> {
    const run = this.writing.then(async () => {
      const next: Record<string, Entry> = Object.assign(Object.create(null), this.entries);
      change(next);
      const file: KeystoreFile = { version: 1, keyId: this.keys.id, entries: next, mac: entriesMac(this.keys, next) };
      await writeAtomically(this.dataDir, KEYSTORE_FILE, `${JSON.stringify(file, null, 1)}\n`);
      this.entries = next;
    });
    this.writing = run.catch(() => {});
    return run;
  }
}

function checkRef(ref: string): void {
  if (typeof ref !== 'string' || !REF_FORM.test(ref)) {
    throw new CofferError('USAGE', `Cannot use the keystore name ${JSON.stringify(String(ref).slice(0, 64))}: names are 1 to 200 letters, digits and . _ / -, starting with a letter or digit`, {
      hint: 'e.g. storage-unit/primary/password',
    });
  }
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fileError(e, `read ${path}`);
  }
}

function fileError(e: unknown, action: string): CofferError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new CofferError('NOT_FOUND', `Cannot ${action}: it does not exist`, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new CofferError('STORAGE_DENIED', `Cannot ${action}: permission denied`, { cause: e, hint: 'Run the server as the user that owns its data directory.' });
  return new CofferError('STORAGE_ERROR', `Cannot ${action}: ${(e as Error).message}`, { cause: e });
}

async function warnIfReadable(path: string, what: string, warn: (message: string) => void): Promise<void> {
  if (process.platform === 'win32') return;
  try {
    const mode = (await stat(path)).mode & 0o777;
    if ((mode & 0o077) !== 0) warn(`${what} ${path} can be read by other users (mode ${mode.toString(8).padStart(4, '0')}); run chmod 600 ${path}`);
  } catch { /* reported by whoever reads it */ }
}

function keyFromBytes(bytes: Buffer, where: string): Buffer {
  if (bytes.length === KEY_BYTES) return Buffer.from(bytes);
  const text = bytes.toString('utf8').trim();
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text) || /^[A-Za-z0-9_-]{43}$/.test(text)) {
    const key = Buffer.from(text, text.includes('-') || text.includes('_') ? 'base64url' : 'base64');
    if (key.length === KEY_BYTES) return key;
  }
  throw new CofferError('USAGE', `Cannot use the server key from ${where}: it is not 32 bytes or their base64`, {
    hint: 'Make a key with: head -c 32 /dev/urandom | base64',
  });
}

async function loadServerKey(options: KeystoreOptions, keystoreExists: boolean, warn: (message: string) => void): Promise<Buffer> {
  if (options.key !== undefined && options.keyFile !== undefined) {
    throw new CofferError('USAGE', 'Cannot open the keystore: both a server key and a server key file were given', { hint: 'Set COFFER_SERVER_KEY or COFFER_SERVER_KEY_FILE, not both.' });
  }
  if (options.key !== undefined) {
    if (!Buffer.isBuffer(options.key) || options.key.length !== KEY_BYTES) {
      throw new CofferError('USAGE', `Cannot use the server key from COFFER_SERVER_KEY: it is ${Buffer.isBuffer(options.key) ? options.key.length : 0} bytes, not ${KEY_BYTES}`, {
        hint: 'Give the base64 of 32 random bytes, e.g. from: head -c 32 /dev/urandom | base64',
      });
    }
    return options.key;
  }
  if (options.keyFile !== undefined) {
    const bytes = await readOptional(options.keyFile);
    if (bytes === undefined) throw new CofferError('NOT_FOUND', `Cannot read the server key file ${options.keyFile}: it does not exist`, { hint: 'Check COFFER_SERVER_KEY_FILE.' });
    await warnIfReadable(options.keyFile, 'the server key file', warn);
    return keyFromBytes(bytes, options.keyFile);
  }
  const path = join(options.dataDir, SERVER_KEY_FILE);
  const bytes = await readOptional(path);
  if (bytes !== undefined) {
    await warnIfReadable(path, 'the server key', warn);
    return keyFromBytes(bytes, path);
  }
  if (keystoreExists) {
    throw new CofferError('NOT_FOUND', `Cannot open the keystore ${join(options.dataDir, KEYSTORE_FILE)}: its server key ${path} is missing`, {
      hint: 'Put the server key back (from a backup of the data directory), or give it with COFFER_SERVER_KEY or COFFER_SERVER_KEY_FILE. A new key would not open the secrets already stored.',
    });
  }
  const key = randomBytes(KEY_BYTES);
  await writeNew(options.dataDir, SERVER_KEY_FILE, `${key.toString('base64')}\n`);
  return key;
}

/** Creates a file readable by its owner only (never more, even briefly), durably. */
async function writeNew(dir: string, name: string, content: string): Promise<void> {
  const path = join(dir, name);
  let handle;
  try {
    handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | (constants.O_NOFOLLOW ?? 0), 0o600);
  } catch (e) {
    throw fileError(e, `create ${path}`);
  }
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await syncDir(dir);
}

async function writeAtomically(dir: string, name: string, content: string): Promise<void> {
  const temp = `${name}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    await writeNew(dir, temp, content);
    await rename(join(dir, temp), join(dir, name));
  } catch (e) {
    await unlink(join(dir, temp)).catch(() => {});
    throw e instanceof CofferError ? e : fileError(e, `replace ${join(dir, name)}`);
  }
  await syncDir(dir);
}

async function syncDir(dir: string): Promise<void> {
  if (process.platform === 'win32') return; // directories cannot be opened for fsync there
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

// ---------------------------------------------------------------------------------------------
// References

export interface ResolveSecretOptions {
  /** For keystore: references. */
  keystore?: Pick<Keystore, 'get'>;
  /** For env: references: the server's environment, passed in (process.env at the edge). */
  env?: Record<string, string | undefined>;
  onWarning?: (message: string) => void;
}

/**
 * The secret a document refers to: `keystore:NAME`, `file:/absolute/path` (its contents, one
 * trailing newline dropped; a file others may read is used with a warning), `env:NAME`.
 * INVALID_CONFIG for another form or an empty secret; NOT_FOUND naming what is missing. Error
 * messages name the reference, never the secret.
 */
export async function resolveSecret(ref: string, options: ResolveSecretOptions = {}): Promise<string> {
  const invalid = (why: string, hint?: string) => new CofferError('INVALID_CONFIG', `Cannot read the secret ${ref}: ${why}`, hint === undefined ? {} : { hint });
  if (typeof ref !== 'string') throw new CofferError('INVALID_CONFIG', 'Cannot read a secret: the reference is not text', { hint: 'Write keystore:NAME, file:/path or env:NAME.' });
  const colon = ref.indexOf(':');
  const scheme = colon < 0 ? '' : ref.slice(0, colon);
  const rest = colon < 0 ? '' : ref.slice(colon + 1);
  switch (scheme) {
    case 'keystore': {
      if (options.keystore === undefined) throw new CofferError('INTERNAL', `Cannot read the secret ${ref}: no keystore was given`);
      return options.keystore.get(rest);
    }
    case 'env': {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(rest)) throw invalid('it does not name an environment variable', 'Write env:NAME, e.g. env:COFFER_REPO_PASSWORD.');
      const value = (options.env ?? {})[rest];
      if (value === undefined) throw new CofferError('NOT_FOUND', `Cannot read the secret ${ref}: the server's environment has no variable ${rest}`, { hint: `Set ${rest} where the server starts, or change the reference.` });
      if (value === '') throw invalid(`the environment variable ${rest} is empty`);
      return value;
    }
    case 'file': {
      const path = rest;
      if (!isAbsolute(path) || path.includes('\0')) throw invalid('the path is not absolute', 'Write file:/absolute/path.');
      let handle;
      try {
        handle = await open(path, 'r');
      } catch (e) {
        const err = fileError(e, `read the secret ${ref}`);
        if (err.code === 'NOT_FOUND') throw new CofferError('NOT_FOUND', `Cannot read the secret ${ref}: the file does not exist on the server`, { hint: 'Create it (mode 600), or change the reference.' });
        throw err;
      }
      let text: string;
      try {
        const info = await handle.stat();
        if (!info.isFile()) throw invalid('it is not a regular file');
        if (info.size > MAX_SECRET_BYTES) throw invalid('the file is larger than 64 KiB; it does not hold just a secret');
        if (process.platform !== 'win32' && (info.mode & 0o077) !== 0) {
          options.onWarning?.(`the secret file ${path} can be read by other users (mode ${(info.mode & 0o777).toString(8).padStart(4, '0')}); run chmod 600 ${path}`);
        }
        text = (await handle.readFile()).toString('utf8');
      } finally {
        await handle.close();
      }
      const secret = text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;
      if (secret === '') throw invalid('the file is empty');
      return secret;
    }
    default:
      // The value is not shown: whoever wrote it may have written the secret itself.
      throw new CofferError('INVALID_CONFIG', 'Cannot read a secret: the value is not a secret reference (keystore:NAME, file:/path or env:NAME)', {
        hint: 'Write keystore:NAME, file:/absolute/path or env:NAME; never the secret itself.',
      });
  }
}
