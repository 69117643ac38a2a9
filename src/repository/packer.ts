// BlobSaver: deduplicates blobs against the index and this session's own writes, has them
// compressed, encrypted and verified by the worker pool, appends them to packs, uploads full
// packs (a few in parallel), and writes index files only for packs that are fully uploaded.
// Order on the backend is therefore always packs → index; the snapshot comes after flush().

import { throwIfAborted } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { BlobType, } from '../engine/format.ts';
import type { EncodedBlob } from '../engine/blob.ts';
import { PackWriter, type PackEntry } from '../engine/pack.ts';
import { toHex } from '../engine/hash.ts';
import type { IndexPack } from './index/index-file.ts';
import { packName } from './layout.ts';
import type { Repository } from './repository.ts';

/** What BlobSaver needs of the worker pool. */
export interface Encoder {
  encode(items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array; packKey: Buffer; nonceIndex: number }>, signal?: AbortSignal): Promise<EncodedBlob[]>;
}

export interface SaverStats {
  /** Blobs stored by this saver (new after deduplication). */
  blobsNew: number;
  /** Blobs that were already in the repository or already written by this saver. */
  blobsKnown: number;
  /** Uncompressed bytes of new blobs. */
  bytesNew: number;
  /** Bytes of new blobs as stored (after compression and encryption). */
  bytesStored: number;
  packs: number;
  indexFiles: number;
}

export interface BlobSaverOptions extends CallOptions {
  uploadConcurrency?: number;
  /** Write an index file after this many uploaded packs (and at flush). */
  indexEvery?: number;
  /** Store blobs even if the index has them elsewhere (prune's repacking). */
  force?: boolean;
  /** Called after each pack is uploaded (for progress and crash-test hooks). */
  onPackUploaded?: (packId: string, size: number) => void;
}

/** A batch is sent to the workers once this many raw bytes are queued (or on the next tick). */
const BATCH_BYTES = 8 * 1024 * 1024;

interface OpenPack {
  writer: PackWriter;
  inflight: number;
  closing: boolean;
  done?: () => void;
}

export class BlobSaver {
  private readonly repo: Repository;
  private readonly encoder: Encoder;
  private readonly options: BlobSaverOptions;
  private readonly packSize: number;
  private current: OpenPack | undefined;
  /** Ids (hex, with type) written or being written by this saver. */
  private readonly mine = new Set<string>();
  private readonly uploads = new Set<Promise<void>>();
  private readonly closingPacks = new Set<Promise<void>>();
  private pendingIndex: IndexPack[] = [];
  private queue: Array<{ items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }>; resolve: (v: boolean[]) => void; reject: (e: unknown) => void }> = [];
  private queueBytes = 0;
  private scheduled = false;
  private readonly batches = new Set<Promise<void>>();
  private failure: unknown;
  readonly stats: SaverStats = { blobsNew: 0, blobsKnown: 0, bytesNew: 0, bytesStored: 0, packs: 0, indexFiles: 0 };
  /** Index files this saver wrote (hex ids). */
  readonly indexFiles: string[] = [];

  constructor(repo: Repository, encoder: Encoder, options: BlobSaverOptions = {}) {
    this.repo = repo;
    this.encoder = encoder;
    this.options = options;
    this.packSize = repo.config.packSize;
  }

  /** True if the blob is already stored or being stored (no need to send it). */
  known(type: BlobType, id: Uint8Array): boolean {
    return this.mine.has(type + toHex(id)) || this.repo.hasBlob(type, id);
  }

  /**
   * Saves the blobs that are not known yet. Returns, per item, whether it was new. The raw
   * buffers must stay unchanged until the promise resolves. Calls made in the same tick are
   * batched into one request to the worker pool, so many small files cost one round trip.
   */
  saveMany(items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }>): Promise<boolean[]> {
    this.check();
    return new Promise<boolean[]>((resolve, reject) => {
      this.queue.push({ items, resolve, reject });
      for (const it of items) this.queueBytes += it.raw.length;
      if (this.queueBytes >= BATCH_BYTES) this.drain();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.drain());
      }
    });
  }

  private drain(): void {
    this.scheduled = false;
    const batch = this.queue;
    if (batch.length === 0) return;
    this.queue = [];
    this.queueBytes = 0;
    const all = batch.flatMap((b) => b.items);
    const done = this.saveBatch(all).then(async (isNew) => {
      let k = 0;
      for (const b of batch) {
        b.resolve(isNew.slice(k, k + b.items.length));
        k += b.items.length;
      }
    }, (e) => {
      for (const b of batch) b.reject(e);
    });
    this.batches.add(done);
    void done.finally(() => this.batches.delete(done));
  }

  private async saveBatch(items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }>): Promise<boolean[]> {
    this.check();
    const isNew = items.map((it) => {
      const key = it.type + toHex(it.id);
      if (this.mine.has(key) || (!this.options.force && this.repo.hasBlob(it.type, it.id))) {
        this.stats.blobsKnown++;
        return false;
      }
      this.mine.add(key);
      return true;
    });
    const fresh = items.filter((_, i) => isNew[i]);
    if (fresh.length === 0) return isNew;
    const pack = this.openPack();
    const nonces = fresh.map(() => pack.writer.reserveNonce());
    pack.inflight++;
    try {
      const encoded = await this.encoder.encode(
        fresh.map((it, i) => ({ type: it.type, id: it.id, raw: it.raw, packKey: pack.writer.packKey, nonceIndex: nonces[i]! })),
        this.options.signal,
      );
      for (let i = 0; i < fresh.length; i++) {
        const it = fresh[i]!;
        const enc = encoded[i]!;
        pack.writer.append(it.type, it.id, enc, nonces[i]!);
        this.stats.blobsNew++;
        this.stats.bytesNew += it.raw.length;
        this.stats.bytesStored += enc.stored.length;
      }
    } catch (e) {
      for (const it of fresh) this.mine.delete(it.type + toHex(it.id));
      this.failure ??= e;
      throw e;
    } finally {
      pack.inflight--;
      if (pack.closing && pack.inflight === 0) pack.done?.();
    }
    if (pack === this.current && pack.writer.size >= this.packSize) this.closeCurrent();
    await this.throttle();
    return isNew;
  }

  async save(type: BlobType, id: Uint8Array, raw: Uint8Array): Promise<boolean> {
    return (await this.saveMany([{ type, id, raw }]))[0]!;
  }

  /** Finishes the open pack, waits for every upload and writes the index for them. */
  async flush(): Promise<void> {
    this.check();
    this.drain();
    while (this.batches.size) await Promise.allSettled([...this.batches]);
    this.check();
    if (this.current) this.closeCurrent();
    while (this.closingPacks.size || this.uploads.size) {
      await Promise.allSettled([...this.closingPacks, ...this.uploads]);
    }
    this.check();
    await this.writeIndex();
  }

  private check(): void {
    if (this.failure) throw this.failure;
    throwIfAborted(this.options.signal);
  }

  private openPack(): OpenPack {
    if (!this.current) this.current = { writer: new PackWriter(this.repo.keys), inflight: 0, closing: false };
    return this.current;
  }

  private closeCurrent(): void {
    const pack = this.current!;
    this.current = undefined;
    pack.closing = true;
    const ready = pack.inflight === 0 ? Promise.resolve() : new Promise<void>((resolve) => (pack.done = resolve));
    const p: Promise<void> = ready.then(() => {
      this.closingPacks.delete(p);
      if (pack.writer.count === 0) return;
      this.startUpload(pack.writer);
    });
    this.closingPacks.add(p);
  }

  private startUpload(writer: PackWriter): void {
    const { bytes, id, entries } = writer.finish();
    const hex = toHex(id);
    const p: Promise<void> = (async () => {
      await this.repo.backend.put(packName(hex), bytes, { signal: this.options.signal });
      this.stats.packs++;
      this.repo.index.add(id, bytes.length, entries.map(toIndexEntry));
      this.pendingIndex.push({ packId: id, packSize: bytes.length, entries: entries.map(toIndexEntry) });
      this.options.onPackUploaded?.(hex, bytes.length);
      if (this.pendingIndex.length >= (this.options.indexEvery ?? 64)) await this.writeIndex();
    })().then(
      () => void this.uploads.delete(p),
      (e) => {
        this.uploads.delete(p);
        this.failure ??= e;
      },
    );
    this.uploads.add(p);
  }

  /** Keeps the number of packs in memory bounded: waits while too many uploads are in flight. */
  private async throttle(): Promise<void> {
    const limit = this.options.uploadConcurrency ?? 2;
    while (this.uploads.size + this.closingPacks.size > limit) {
      await Promise.race([...this.uploads, ...this.closingPacks]);
      this.check();
    }
  }

  private async writeIndex(): Promise<void> {
    if (this.pendingIndex.length === 0) return;
    const packs = this.pendingIndex;
    this.pendingIndex = [];
    const id = await this.repo.saveIndexFile({ supersedes: [], packs }, { signal: this.options.signal });
    this.indexFiles.push(id);
    this.stats.indexFiles++;
  }
}

export function toIndexEntry(e: PackEntry): import('./index/index-file.ts').IndexEntry {
  return { type: e.type, id: e.id, offset: e.offset, length: e.length, rawLength: e.rawLength, compressed: e.compressed, nonceIndex: e.nonceIndex };
}
