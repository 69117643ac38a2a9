// The repository: keys and config, encrypted objects (index files, snapshots), the chunk index,
// and reading blobs out of packs. Writing blobs goes through BlobSaver (packer.ts); trees and
// snapshots through tree.ts and snapshot.ts. Everything written is immutable and
// content-addressed, in the order packs → index → snapshot, so a crash anywhere leaves a valid
// repository (docs/format.md).

import { hostname, tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import type { Backend, CallOptions } from '../storage/backend.ts';
import type { BlobType } from '../engine/format.ts';
import { contentHash, toHex, fromHex } from '../engine/hash.ts';
import { deriveRepoKeys, newMasterKey, unwrapMasterKey, wrapMasterKey, DEFAULT_KDF, type KdfParams, type KeyFile, type RepoKeys } from '../engine/keys.ts';
import type { ChunkerParams } from '../engine/chunker.ts';
import { sealObject, openObject, type ObjectKind } from '../engine/envelope.ts';
import { decodeBlob, } from '../engine/blob.ts';
import { packKeyFromHeader, PACK_HEADER_SIZE } from '../engine/pack.ts';
import { ChunkIndex, type IndexHit } from './index/chunk-index.ts';
import { DEFAULT_TIMING, type SessionTiming } from './session.ts';
import { DamageSet, loadDamage, recordDamage, type DamageSource, type PackDamage } from './damage.ts';
import { decodeIndexFile, encodeIndexFile, splitPacks, INDEX_FILE_ENTRIES, type IndexFileContent, type IndexEntry, type IndexPack } from './index/index-file.ts';
import { CONFIG_COPY_NAME, CONFIG_NAME, INDEX_PREFIX, KEYS_PREFIX, idFromName, keyName, packName } from './layout.ts';
import { detectForeignRepository, foreignRepositoryError } from './foreign.ts';

export const REPO_VERSION = 1;

export interface RepoConfig {
  version: number;
  id: string;
  created: string;
  chunker: ChunkerParams;
  /** Block size for fixed-size chunking of disk images. */
  imageChunkSize: number;
  compressionLevel: number;
  /** Target pack size in bytes. */
  packSize: number;
}

/**
 * The chunker of new repositories: 128 KiB / 512 KiB / 2 MiB. Against 256 KiB / 1 MiB / 4 MiB
 * (the default until 2026-12) it stores about a third less per day of edits in place (a
 * changed range costs the chunks around it) for about twice the chunks of large files in the
 * index; full backups stay the same size (README, "Chunk sizes"). Repositories keep the
 * chunker they were made with.
 */
export const DEFAULT_CHUNKER: ChunkerParams = { minSize: 128 * 1024, avgSize: 512 * 1024, maxSize: 2 * 1024 * 1024 };
export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;

export interface InitOptions extends CallOptions {
  chunker?: ChunkerParams;
  imageChunkSize?: number;
  compressionLevel?: number;
  packSize?: number;
  kdf?: KdfParams;
  cacheDir?: string;
  /** Create the repository even where other objects (files, S3 keys) already are. */
  force?: boolean;
  /**
   * The master key (32 bytes) instead of a fresh random one: repositories made with the same
   * master key form one deduplication domain (the same chunk ids and gear table, so a clone
   * between them sends only what the target lacks, without re-chunking or rewriting trees). They
   * also share every key: whoever opens one can decrypt all (docs/format.md, "Deduplication
   * domains"). The caller keeps it secret; the config id is fresh either way.
   */
  master?: Uint8Array;
}

export interface OpenOptions extends CallOptions {
  /** Where the local index cache lives (the CLI's default: $COFFER_CACHE_DIR or ~/.cache/coffer); required unless noCache. */
  cacheDir?: string;
  /** Use a throwaway cache directory removed on close(). */
  noCache?: boolean;
  /** Heartbeat and stale times of the sessions of jobs on this handle (default DEFAULT_TIMING). */
  sessionTiming?: SessionTiming;
}

export interface KeyInfo {
  id: string;
  created: string;
  hostname: string;
  username: string;
  current: boolean;
}

function validateConfig(raw: unknown): RepoConfig {
  const c = raw as Partial<RepoConfig> | null;
  const bad = (why: string): never => {
    throw new CofferError('CORRUPT', `Cannot read the repository config: ${why}`, { hint: 'The config object is damaged; restore it from a copy of the repository.' });
  };
  if (!c || typeof c !== 'object') bad('not an object');
  if (c!.version !== REPO_VERSION) {
    throw new CofferError('UNSUPPORTED', `Cannot open repository format version ${String(c!.version)}: this Coffer reads version ${REPO_VERSION}`, { hint: 'Use a Coffer release that supports this repository version.' });
  }
  if (typeof c!.id !== 'string' || !/^[0-9a-f]{64}$/.test(c!.id)) bad('bad id');
  const ch = c!.chunker;
  const okInt = (v: unknown, lo: number, hi: number) => Number.isSafeInteger(v) && (v as number) >= lo && (v as number) <= hi;
  if (!ch || !okInt(ch.minSize, 64, 64 << 20) || !okInt(ch.avgSize, 256, 64 << 20) || !okInt(ch.maxSize, 1024, 128 << 20) || !(ch.minSize < ch.avgSize && ch.avgSize < ch.maxSize)) bad('bad chunker parameters');
  if (!okInt(c!.imageChunkSize, 4096, 64 << 20)) bad('bad image chunk size');
  if (!okInt(c!.compressionLevel, -7, 22)) bad('bad compression level');
  if (!okInt(c!.packSize, 64 * 1024, 1 << 30)) bad('bad pack size');
  return c as RepoConfig;
}

/** Reads and checks one copy of the config; anything wrong with it is CORRUPT (a newer version UNSUPPORTED). */
export async function readConfig(backend: Backend, keys: RepoKeys, name: string, options?: CallOptions & { sealed?: (bytes: Buffer) => void }): Promise<RepoConfig> {
  try {
    const sealed = await backend.get(name, options);
    const plain = openObject(keys, 'config', sealed);
    const config = validateConfig(JSON.parse(plain.toString('utf8')));
    options?.sealed?.(sealed);
    return config;
  } catch (e) {
    if (isCofferError(e, 'NOT_FOUND')) throw new CofferError('CORRUPT', `the ${name} object is missing`);
    if (e instanceof SyntaxError) throw new CofferError('CORRUPT', `the ${name} object is not valid JSON`);
    if (isCofferError(e, 'CORRUPT')) throw new CofferError('CORRUPT', `the ${name} object is damaged (${e.message})`, { cause: e });
    throw e;
  }
}

async function loadKeyFile(backend: Backend, name: string, options?: CallOptions): Promise<unknown> {
  const raw = await backend.get(name, options);
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    throw new CofferError('CORRUPT', `Cannot read key file ${name}: not valid JSON`);
  }
}

export class Repository {
  readonly backend: Backend;
  readonly config: RepoConfig;
  readonly keys: RepoKeys;
  readonly index: ChunkIndex;
  /**
   * The master key, for creating another repository in the same deduplication domain
   * (InitOptions.master). Whoever holds it can read everything in the domain.
   */
  get masterKeyForDomain(): Buffer {
    return Buffer.from(this.masterKey);
  }

  /** The key file this session opened with. */
  readonly keyId: string;
  private readonly masterKey: Buffer;
  private readonly tempCacheDir: string | undefined;
  /** Pack keys by pack id hex: saves one ranged read of the header per blob. */
  private readonly packKeys = new Map<string, Buffer>();
  /** Known damage (damage.ts), as of the last loadIndex(): damaged copies are not reused or preferred. */
  damage = new DamageSet();
  /** Set when the config was unreadable and its copy was used: what the operator should be told. */
  configNote: string | undefined;

  /** Heartbeat and stale times for the sessions of the jobs on this handle. */
  readonly sessionTiming: SessionTiming;

  private constructor(backend: Backend, config: RepoConfig, master: Buffer, keyId: string, index: ChunkIndex, tempCacheDir: string | undefined, sessionTiming: SessionTiming) {
    this.sessionTiming = sessionTiming;
    this.backend = backend;
    this.config = config;
    this.masterKey = master;
    this.keys = deriveRepoKeys(master);
    this.keyId = keyId;
    this.index = index;
    this.tempCacheDir = tempCacheDir;
  }

  get id(): string {
    return this.config.id;
  }

  /**
   * Checks that a repository may be created on `backend`: fails with ALREADY_EXISTS if it holds
   * one, and with REFUSED if it holds anything else (unless `force`): a repository mixed into other
   * files is easily damaged by whoever tidies them, and prune or check would meet strangers.
   * init() checks this itself; the CLI also calls it before asking for a new passphrase.
   */
  static async checkInitLocation(backend: Backend, options: CallOptions & { force?: boolean } = {}): Promise<void> {
    const { signal } = options;
    let exists = false;
    try {
      await backend.stat(CONFIG_NAME, { signal });
      exists = true;
    } catch (e) {
      if (!isCofferError(e, 'NOT_FOUND')) throw e;
    }
    if (exists) {
      const foreign = await detectForeignRepository(backend, { signal });
      if (foreign) throw foreignRepositoryError(foreign, backend.location, 'initialise a repository');
      throw new CofferError('ALREADY_EXISTS', `Cannot initialise a repository at ${backend.location}: one already exists there`, { hint: 'Open it with its password, or choose an empty location.' });
    }
    if (options.force) return;
    let other: string | undefined;
    for await (const o of backend.list('', { signal })) {
      other = o.name;
      break;
    }
    if (other !== undefined) {
      throw new CofferError('REFUSED', `Cannot initialise a repository at ${backend.location}: it already holds other files, e.g. ${JSON.stringify(other)}`, {
        hint: 'Choose an empty directory or S3 prefix (one that does not exist yet is fine), or pass --force to create the repository beside what is there.',
        details: { location: backend.location, found: other },
      });
    }
  }

  /** Creates a new repository where checkInitLocation() allows it. */
  static async init(backend: Backend, password: string, options: InitOptions = {}): Promise<Repository> {
    const { signal } = options;
    await Repository.checkInitLocation(backend, options);
    if (options.master !== undefined && options.master.length !== 32) {
      throw new CofferError('USAGE', `Cannot initialise a repository with this master key: it is ${options.master.length} bytes, not 32`);
    }
    const master = options.master ? Buffer.from(options.master) : newMasterKey();
    const keys = deriveRepoKeys(master);
    const config: RepoConfig = {
      version: REPO_VERSION,
      id: toHex(contentHash(newMasterKey())),
      created: new Date().toISOString(),
      chunker: options.chunker ?? DEFAULT_CHUNKER,
      imageChunkSize: options.imageChunkSize ?? 1024 * 1024,
      compressionLevel: options.compressionLevel ?? 3,
      packSize: options.packSize ?? DEFAULT_PACK_SIZE,
    };
    validateConfig(config);
    // Key file first: a config without a key would be unreadable forever.
    const keyFile = await wrapMasterKey(master, password, options.kdf ?? DEFAULT_KDF, { hostname: hostname(), username: safeUsername() });
    const keyBytes = Buffer.from(JSON.stringify(keyFile));
    const keyId = toHex(contentHash(keyBytes));
    await backend.put(keyName(keyId), keyBytes, { signal });
    const sealedConfig = sealObject(keys, 'config', Buffer.from(JSON.stringify(config)));
    await backend.put(CONFIG_NAME, sealedConfig, { signal });
    await backend.put(CONFIG_COPY_NAME, sealedConfig, { signal });
    return Repository.openWithMaster(backend, config, master, keyId, options);
  }

  /** Opens an existing repository with a passphrase that one of its key files accepts. */
  static async open(backend: Backend, password: string, options: OpenOptions = {}): Promise<Repository> {
    const { signal } = options;
    const names: string[] = [];
    for await (const o of backend.list(KEYS_PREFIX, { signal })) if (idFromName(KEYS_PREFIX, o.name)) names.push(o.name);
    if (names.length === 0) {
      try {
        await backend.stat(CONFIG_NAME, { signal });
      } catch (e) {
        if (isCofferError(e, 'NOT_FOUND')) {
          throw new CofferError('NOT_FOUND', `Cannot open the repository at ${backend.location}: there is no repository there`, { hint: 'Check the location, or create one with `coffer repo init`.' });
        }
        throw e;
      }
      const foreign = await detectForeignRepository(backend, { signal });
      if (foreign) throw foreignRepositoryError(foreign, backend.location, 'open the repository');
      throw new CofferError('CORRUPT', `Cannot open the repository at ${backend.location}: it has no key files`, { hint: 'The keys/ folder is missing or empty; restore it from a copy of the repository.' });
    }
    names.sort();
    let master: Buffer | undefined;
    let keyId = '';
    let lastCorrupt: unknown;
    for (const name of names) {
      throwIfAborted(signal);
      try {
        master = await unwrapMasterKey(await loadKeyFile(backend, name, { signal }), password);
        keyId = name.slice(KEYS_PREFIX.length);
        break;
      } catch (e) {
        if (isCofferError(e, 'WRONG_PASSWORD')) continue;
        if (isCofferError(e, 'CORRUPT')) {
          lastCorrupt = e;
          continue;
        }
        throw e;
      }
    }
    if (!master) {
      // restic's key files sit where ours do and look damaged to us: say what they are instead.
      const foreign = await detectForeignRepository(backend, { signal });
      if (foreign) throw foreignRepositoryError(foreign, backend.location, 'open the repository');
      if (lastCorrupt && names.length === 1) throw lastCorrupt;
      throw new CofferError('WRONG_PASSWORD', `Cannot open the repository at ${backend.location}: the password is wrong`, { hint: 'No key file accepts this password. Check COFFER_PASSWORD, --password-file or COFFER_PASSWORD_COMMAND.' });
    }
    const keys = deriveRepoKeys(master);
    let config: RepoConfig;
    let configNote: string | undefined;
    try {
      config = await readConfig(backend, keys, CONFIG_NAME, { signal });
    } catch (e) {
      // The copy init wrote, if it reads: the config never changes after init. So a config that
      // claims a newer format than its copy's is damaged too (a flipped version byte); a newer
      // format says so in both.
      if (!isCofferError(e, 'CORRUPT') && !isCofferError(e, 'UNSUPPORTED')) throw e;
      try {
        config = await readConfig(backend, keys, CONFIG_COPY_NAME, { signal });
      } catch (e2) {
        if (!isCofferError(e2, 'CORRUPT') && !isCofferError(e2, 'UNSUPPORTED')) throw e2;
        if (e.code === 'UNSUPPORTED') throw e;
        if (e2.code === 'UNSUPPORTED') throw e2;
        throw new CofferError('CORRUPT', `Cannot open the repository at ${backend.location}: ${e.message}, and its copy too (${e2.message})`, {
          hint: 'The config never changes after `repo init`: copy the file `config` from any copy of this repository (a clone, a backup of the bucket or directory) into place, then run `coffer repo repair config`.',
        });
      }
      const what = e.code === 'UNSUPPORTED' ? `the ${CONFIG_NAME} object is damaged (${e.message}, but its copy is of this version)` : e.message;
      configNote = `${what}; opened with its copy ${CONFIG_COPY_NAME}. Run \`coffer repo repair config\` to rewrite it from the copy.`;
    }
    const repo = await Repository.openWithMaster(backend, config, master, keyId, options);
    repo.configNote = configNote;
    return repo;
  }

  private static async openWithMaster(backend: Backend, config: RepoConfig, master: Buffer, keyId: string, options: OpenOptions): Promise<Repository> {
    let tempCacheDir: string | undefined;
    let cacheDir: string;
    if (options.noCache) {
      tempCacheDir = await mkdtemp(join(tmpdir(), 'coffer-cache-'));
      cacheDir = tempCacheDir;
    } else {
      if (!options.cacheDir) throw new CofferError('INTERNAL', 'Cannot open the repository: no cache directory given (cacheDir or noCache)');
      cacheDir = join(options.cacheDir, config.id);
    }
    const index = await ChunkIndex.open({ cacheDir: join(cacheDir, 'index') });
    return new Repository(backend, config, master, keyId, index, tempCacheDir, options.sessionTiming ?? DEFAULT_TIMING);
  }

  async close(): Promise<void> {
    await this.index.close();
    if (this.tempCacheDir) await rm(this.tempCacheDir, { recursive: true, force: true });
  }

  // ---- keys -------------------------------------------------------------------------------

  async listKeys(options?: CallOptions): Promise<KeyInfo[]> {
    const out: KeyInfo[] = [];
    for await (const o of this.backend.list(KEYS_PREFIX, options)) {
      const id = idFromName(KEYS_PREFIX, o.name);
      if (!id) continue;
      const kf = (await loadKeyFile(this.backend, o.name, options)) as Partial<KeyFile>;
      out.push({ id, created: String(kf?.created ?? ''), hostname: String(kf?.hostname ?? ''), username: String(kf?.username ?? ''), current: id === this.keyId });
    }
    return out.sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  }

  async addKey(password: string, options: CallOptions & { kdf?: KdfParams; hostname?: string; username?: string } = {}): Promise<string> {
    const kf = await wrapMasterKey(this.masterKey, password, options.kdf ?? DEFAULT_KDF, { hostname: options.hostname ?? hostname(), username: options.username ?? safeUsername() });
    const bytes = Buffer.from(JSON.stringify(kf));
    const id = toHex(contentHash(bytes));
    await this.backend.put(keyName(id), bytes, options);
    return id;
  }

  /** Removes a key file by id or unique id prefix. Refuses to remove the key in use or the last one. */
  async removeKey(idOrPrefix: string, options?: CallOptions): Promise<string> {
    const keys = await this.listKeys(options);
    const matches = keys.filter((k) => k.id.startsWith(idOrPrefix));
    if (matches.length === 0) throw new CofferError('NOT_FOUND', `Cannot remove key ${idOrPrefix}: no such key`, { hint: 'List keys with `coffer repo key list`.' });
    if (matches.length > 1) throw new CofferError('USAGE', `Cannot remove key ${idOrPrefix}: the prefix matches ${matches.length} keys`, { hint: 'Give more digits of the id.' });
    const k = matches[0]!;
    if (k.current) throw new CofferError('REFUSED', `Cannot remove key ${k.id.slice(0, 12)}: it is the key this command opened the repository with`, { hint: 'Open the repository with another password, then remove this key.' });
    if (keys.length === 1) throw new CofferError('REFUSED', 'Cannot remove the last key: the repository would become unreadable');
    await this.backend.delete(keyName(k.id), options);
    return k.id;
  }

  // ---- encrypted objects ------------------------------------------------------------------

  /** Seals and stores a content-addressed object under `prefix`; returns its id (hex). */
  async saveObject(kind: ObjectKind, prefix: string, plaintext: Uint8Array, options?: CallOptions): Promise<string> {
    const sealed = sealObject(this.keys, kind, plaintext);
    // Check before upload that what we are about to store decodes back to the same bytes.
    const back = openObject(this.keys, kind, sealed);
    if (!back.equals(plaintext)) throw new CofferError('INTERNAL', `Cannot save a ${kind} object: it did not decode back to what was written`);
    const id = toHex(contentHash(sealed));
    await this.backend.put(prefix + id, sealed, options);
    return id;
  }

  /** Loads a content-addressed object; verifies its name against its hash and its MAC. */
  async loadObject(kind: ObjectKind, prefix: string, id: string, options?: CallOptions): Promise<Buffer> {
    const sealed = await this.backend.get(prefix + id, options);
    if (toHex(contentHash(sealed)) !== id) {
      throw new CofferError('CORRUPT', `Cannot read ${prefix}${id}: its content does not match its name (hash mismatch)`, { hint: 'Run `coffer repo check` to see what is affected.' });
    }
    return openObject(this.keys, kind, sealed);
  }

  // ---- index ------------------------------------------------------------------------------

  /** Ids (hex) of the index files currently in the repository. */
  async listIndexFiles(options?: CallOptions): Promise<string[]> {
    const out: string[] = [];
    for await (const o of this.backend.list(INDEX_PREFIX, options)) {
      const id = idFromName(INDEX_PREFIX, o.name);
      if (id) out.push(id);
    }
    return out;
  }

  async loadIndexFile(id: string, options?: CallOptions): Promise<IndexFileContent> {
    return decodeIndexFile(await this.loadObject('index', INDEX_PREFIX, id, options));
  }

  async saveIndexFile(content: IndexFileContent, options?: CallOptions): Promise<string> {
    return this.saveObject('index', INDEX_PREFIX, encodeIndexFile(content), options);
  }

  /**
   * Writes `packs` as new index files of bounded size that replace the index files `supersedes`:
   * all parts but the last supersede nothing, the last supersedes them all (a reader between
   * the two sees some packs listed twice, which it tolerates). Returns the ids written; the
   * caller deletes the superseded files afterwards (except any written here again: same content,
   * same name).
   */
  async saveIndexFiles(packs: readonly IndexPack[], supersedes: readonly string[], options: CallOptions & { entriesPerFile?: number; onPart?: () => void } = {}): Promise<string[]> {
    const parts = splitPacks(packs, options.entriesPerFile ?? INDEX_FILE_ENTRIES);
    const written: string[] = [];
    for (const part of parts.slice(0, -1)) {
      written.push(await this.saveIndexFile({ supersedes: [], packs: part }, options));
      options.onPart?.();
    }
    const superseded = supersedes.filter((id) => !written.includes(id));
    written.push(await this.saveIndexFile({ supersedes: superseded.map((h) => fromHex(h)), packs: parts.at(-1)! }, options));
    return written;
  }

  /**
   * Brings the local chunk index up to date with the repository's index files and returns their
   * ids (exactly the set now in the local index). An index file
   * can vanish between the listing and its download when a concurrent prune consolidates the
   * index; the superseding file is always written first, so listing again is enough.
   */
  loadIndex(options: CallOptions & { onProgress?: (done: number, total: number) => void; onUnreadable?: (id: string, error: CofferError) => void } = {}): Promise<string[]> {
    // One at a time: jobs sharing this handle each bring the index up to date before they start,
    // and the chunk index syncs one list at a time.
    const run = this.indexQueue.then(() => this.syncIndex(options));
    this.indexQueue = run.catch(() => {});
    return run;
  }

  private indexQueue: Promise<unknown> = Promise.resolve();

  private async syncIndex(options: CallOptions & { onProgress?: (done: number, total: number) => void; onUnreadable?: (id: string, error: CofferError) => void }): Promise<string[]> {
    // With onUnreadable, an index file that fails its checks is left out (and reported) instead
    // of failing the call: a backup then stores again what only that file knew, a restore
    // restores everything else. Left out of the list, not loaded as empty, so that nothing of it
    // is cached and the next call tries it again (put back from a copy, or repaired).
    const skipped = new Set<string>();
    for (let attempt = 0; ; attempt++) {
      const ids = (await this.listIndexFiles(options)).filter((id) => !skipped.has(id));
      let bad: { id: string; error: CofferError } | undefined;
      try {
        await this.index.sync(ids.map((h) => fromHex(h)), async (id) => {
          try {
            return await this.loadIndexFile(toHex(id), options);
          } catch (e) {
            if (options.onUnreadable && (isCofferError(e, 'CORRUPT') || isCofferError(e, 'UNSUPPORTED'))) bad = { id: toHex(id), error: e };
            throw e;
          }
        }, options);
        this.damage = await loadDamage(this, { signal: options.signal });
        return ids;
      } catch (e) {
        if (bad && !skipped.has(bad.id)) {
          skipped.add(bad.id);
          options.onUnreadable!(bad.id, bad.error);
          continue;
        }
        if (isCofferError(e, 'NOT_FOUND') && attempt < 5) continue;
        throw e;
      }
    }
  }

  /** The packs the local index lists (those `which` accepts, by id hex), each with its entries. */
  indexedPacks(which?: (packHex: string) => boolean): Map<string, IndexPack> {
    const packs = new Map<string, IndexPack>();
    for (const p of this.index.packs()) {
      const hex = toHex(p.packId);
      if (!which || which(hex)) packs.set(hex, { packId: p.packId, packSize: p.packSize, entries: [] });
    }
    for (const { packId, entry } of this.index.entries()) packs.get(toHex(packId))?.entries.push(entry);
    return packs;
  }

  /**
   * Whether this copy can be relied on: it is not known to be damaged, nor in one of `condemned`
   * (the packs a pending prune will delete, which a job reads once at its start: per job, not
   * per repository handle, as several jobs may share one).
   */
  isSound(hit: IndexHit, condemned?: ReadonlySet<string>): boolean {
    if (!condemned?.size && this.damage.size === 0) return true;
    const pack = toHex(hit.packId);
    return !condemned?.has(pack) && !this.damage.isDamaged(pack, hit.entry.type, toHex(hit.entry.id));
  }

  /**
   * True if a sound copy of the blob is stored (see isSound()), so it can be reused. A blob may
   * sit both in a condemned or damaged pack and in a sound one (after repacking, or after a
   * backup stored a damaged blob again): the sound copy counts.
   */
  hasBlob(type: BlobType, id: Uint8Array, condemned?: ReadonlySet<string>): boolean {
    if (!condemned?.size && this.damage.size === 0) return this.index.has(id, type);
    return this.index.lookupAll(id, type).some((h) => this.isSound(h, condemned));
  }

  /** Where to read a blob: a sound copy if there is one, else any (reading it tells what is wrong). */
  locate(type: BlobType, id: Uint8Array, condemned?: ReadonlySet<string>): IndexHit | undefined {
    if (!condemned?.size && this.damage.size === 0) return this.index.lookup(id, type);
    const all = this.index.lookupAll(id, type);
    return all.find((h) => this.isSound(h, condemned)) ?? all[0];
  }

  /** Records damage found by `foundBy` that is not known yet (damage.ts); returns the record id. */
  async noteDamage(foundBy: DamageSource, packs: PackDamage[], options?: CallOptions): Promise<string | undefined> {
    return recordDamage(this, foundBy, packs, this.damage, options);
  }

  // ---- reading blobs ----------------------------------------------------------------------

  async packKey(packHex: string, options?: CallOptions): Promise<Buffer> {
    let key = this.packKeys.get(packHex);
    if (!key) {
      const header = await this.backend.get(packName(packHex), { ...options, offset: 0, length: PACK_HEADER_SIZE });
      key = packKeyFromHeader(this.keys, header);
      if (this.packKeys.size > 4096) this.packKeys.clear();
      this.packKeys.set(packHex, key);
    }
    return key;
  }

  /**
   * Reads and verifies one blob: a sound copy first, then any other the index knows if that one
   * turns out damaged or gone. NOT_FOUND if the index does not know it; the last copy's error if
   * none reads.
   */
  async readBlob(type: BlobType, id: Uint8Array, options?: CallOptions): Promise<Buffer> {
    const hit = this.locate(type, id);
    if (!hit) throw new CofferError('NOT_FOUND', `Cannot read ${type} blob ${toHex(id)}: it is not in the index`, { hint: 'Run `coffer repo check`; if packs exist that the index misses, `coffer repo repair index`.' });
    try {
      return await this.readBlobAt(hit.packId, hit.entry, options);
    } catch (e) {
      if (!isCofferError(e, 'CORRUPT') && !isCofferError(e, 'NOT_FOUND') && !isCofferError(e, 'INVALID_RANGE')) throw e;
      let last = e;
      for (const other of this.index.lookupAll(id, type)) {
        if (other.packId.equals(hit.packId)) continue;
        try {
          return await this.readBlobAt(other.packId, other.entry, options);
        } catch (e2) {
          if (!isCofferError(e2, 'CORRUPT') && !isCofferError(e2, 'NOT_FOUND') && !isCofferError(e2, 'INVALID_RANGE')) throw e2;
          last = e2;
        }
      }
      throw last;
    }
  }

  async readBlobAt(packId: Uint8Array, entry: IndexEntry, options?: CallOptions): Promise<Buffer> {
    const packHex = toHex(packId);
    const key = await this.packKey(packHex, options);
    const stored = await this.backend.get(packName(packHex), { ...options, offset: entry.offset, length: entry.length });
    return decodeBlob(this.keys, key, entry.nonceIndex, entry.type, entry.id, entry.compressed, entry.rawLength, stored);
  }
}

export function safeUsername(): string {
  try {
    return userInfo().username;
  } catch {
    return String(process.getuid?.() ?? 'unknown');
  }
}
