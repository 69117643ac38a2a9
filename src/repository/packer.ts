// BlobSaver: deduplicates blobs against the index and this session's own writes, has them
// compressed, encrypted and verified by the worker pool, appends them to packs, uploads full
// packs (a few in parallel), and writes index files only for packs that are fully uploaded.
// Order on the backend is therefore always packs → index; the snapshot comes after flush().

import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { BlobType, } from '../engine/format.ts';
import type { EncodedBlob } from '../engine/blob.ts';
import { PackWriter, type PackEntry } from '../engine/pack.ts';
import { toHex } from '../engine/hash.ts';
import type { IndexEntry, IndexPack } from './index/index-file.ts';
import { indexName, packName } from './layout.ts';
import type { Repository } from './repository.ts';

/** What BlobSaver needs of the worker pool. */
export interface Encoder {
  encode(items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array; packKey: Buffer; nonceIndex: number }>, signal?: AbortSignal): Promise<EncodedBlob[]>;
  /** Takes back a buffer encode() returned blobs in, once they are copied into their pack; false: not wanted. */
  recycle?(buffer: ArrayBuffer): boolean;
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
  /** Raw bytes that may be queued or being encoded before saveMany() waits (default 32 MiB). */
  maxInFlight?: number;
  /** Store blobs even if the index has them elsewhere (prune's repacking). */
  force?: boolean;
  /** Packs a pending prune condemned (read at the job's start): blobs only there are stored again. */
  condemned?: ReadonlySet<string>;
  /** Called after each pack is uploaded (for progress and crash-test hooks). */
  onPackUploaded?: (packId: string, size: number) => void;
  /**
   * The writer's session: asked before and after every index file is written whether it may have
   * been taken for dead (Session.assertAlive). An index file must not go out listing packs that
   * a prune may have deleted while this process was paused.
   */
  session?: { assertAlive(options?: CallOptions): Promise<void> };
}

/** A saveMany() call's blobs still to be encoded, and who to tell when none is left. */
interface Hold {
  left: number;
  done: () => void;
}

type Queued = { type: BlobType; id: Uint8Array; raw: Uint8Array; hold?: Hold };

/** Pack buffers kept for reuse between packs (others are freed once uploaded). */
const PACK_BUFFERS = 2;

/** A batch is sent to the workers once this many raw bytes are queued (or on the next tick). */
const BATCH_BYTES = 8 * 1024 * 1024;

interface OpenPack {
  writer: PackWriter;
  inflight: number;
  /** Raw bytes of the batches assigned to this pack (encoded or not yet). */
  reserved: number;
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
  private queue: Queued[] = [];
  /** Raw bytes queued or being encoded. */
  private inFlight = 0;
  private readonly maxInFlight: number;
  private readonly batchBytes: number;
  private spaceWaiters: Array<() => void> = [];
  private queueBytes = 0;
  private scheduled = false;
  private readonly batches = new Set<Promise<void>>();
  private failure: unknown;
  /** Pack buffers given back after their upload, for the next packs (at most PACK_BUFFERS). */
  private readonly packBuffers: ArrayBuffer[] = [];
  readonly stats: SaverStats = { blobsNew: 0, blobsKnown: 0, bytesNew: 0, bytesStored: 0, packs: 0, indexFiles: 0 };
  /** Index files this saver wrote (hex ids). */
  readonly indexFiles: string[] = [];

  constructor(repo: Repository, encoder: Encoder, options: BlobSaverOptions = {}) {
    this.repo = repo;
    this.encoder = encoder;
    this.options = options;
    this.packSize = repo.config.packSize;
    this.maxInFlight = options.maxInFlight ?? 32 * 1024 * 1024;
    // Batches much smaller than a pack keep packs close to their target size.
    this.batchBytes = Math.max(64 * 1024, Math.min(BATCH_BYTES, Math.floor(this.packSize / 4)));
  }

  /** True if the blob is already stored or being stored (no need to send it). */
  known(type: BlobType, id: Uint8Array): boolean {
    return this.mine.has(type + toHex(id)) || this.repo.hasBlob(type, id, this.options.condemned);
  }

  /**
   * Queues the blobs that are not known yet for storing and returns once there is room for more
   * (backpressure: at most `maxInFlight` raw bytes queued or being encoded). The caller need not
   * wait for the blobs to be stored; failures surface in a later call and in flush(). The raw
   * buffers must not change afterwards, until `released` is called: once every blob of this call
   * is encoded (or known already, or its batch failed), so that the caller can use the memory
   * again. Calls made in the same tick are batched into one request to the encoder, so many
   * small files cost one round trip.
   */
  async saveMany(items: Array<{ type: BlobType; id: Uint8Array; raw: Uint8Array }>, released?: () => void): Promise<void> {
    try {
      this.check();
    } catch (e) {
      released?.();
      throw e;
    }
    const fresh: Queued[] = [];
    const hold: Hold | undefined = released ? { left: 0, done: released } : undefined;
    for (const it of items) {
      const key = it.type + toHex(it.id);
      if (this.mine.has(key) || (!this.options.force && this.repo.hasBlob(it.type, it.id, this.options.condemned))) {
        this.stats.blobsKnown++;
        continue;
      }
      this.mine.add(key);
      fresh.push(hold ? { type: it.type, id: it.id, raw: it.raw, hold } : it);
      if (hold) hold.left++;
      this.queueBytes += it.raw.length;
      this.inFlight += it.raw.length;
    }
    if (hold && hold.left === 0) released!();
    if (fresh.length) {
      this.queue.push(...fresh);
      if (this.queueBytes >= this.batchBytes) this.drain();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.drain());
      }
    }
    while (this.inFlight > this.maxInFlight) {
      await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
      this.check();
    }
  }

  private drain(): void {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = [];
    this.queueBytes = 0;
    let start = 0;
    let bytes = 0;
    for (let i = 0; i < queue.length; i++) {
      bytes += queue[i]!.raw.length;
      if (bytes >= this.batchBytes || i === queue.length - 1) {
        this.startBatch(queue.slice(start, i + 1), bytes);
        start = i + 1;
        bytes = 0;
      }
    }
  }

  private startBatch(batch: Queued[], bytes: number): void {
    const done = this.saveBatch(batch).catch((e) => {
      for (const it of batch) this.mine.delete(it.type + toHex(it.id));
      this.failure ??= e;
    }).finally(() => {
      releaseHolds(batch);
      this.batches.delete(done);
      this.inFlight -= bytes;
      // Wake every waiter: each re-checks the limit (and a failure) itself.
      for (const w of this.spaceWaiters.splice(0)) w();
    });
    this.batches.add(done);
  }

  private async saveBatch(fresh: Queued[]): Promise<void> {
    const pack = this.openPack();
    const nonces = fresh.map(() => pack.writer.reserveNonce());
    pack.inflight++;
    // Batches run concurrently: count what is promised to this pack, not only what it holds,
    // so that packs stay near their target size.
    for (const it of fresh) pack.reserved += it.raw.length;
    if (pack === this.current && pack.reserved >= this.packSize) this.closeCurrent();
    try {
      const encoded = await this.encoder.encode(
        fresh.map((it, i) => ({ type: it.type, id: it.id, raw: it.raw, packKey: pack.writer.packKey, nonceIndex: nonces[i]! })),
        this.options.signal,
      );
      const outputs = new Set<ArrayBufferLike>();
      for (let i = 0; i < fresh.length; i++) {
        const it = fresh[i]!;
        const enc = encoded[i]!;
        pack.writer.append(it.type, it.id, enc, nonces[i]!);
        outputs.add(enc.stored.buffer);
        this.stats.blobsNew++;
        this.stats.bytesNew += it.raw.length;
        this.stats.bytesStored += enc.stored.length;
      }
      // Copied into the pack: the encoder's buffers (used nowhere else) go back to it, or are
      // freed now instead of at the next collection, which let ~50 MB pile up.
      for (const b of outputs) if (b instanceof ArrayBuffer && !b.detached && !this.encoder.recycle?.(b)) b.transfer(0);
    } finally {
      // Encoded (or failed): the raw bytes are not read again.
      releaseHolds(fresh);
      pack.inflight--;
      if (pack.closing && pack.inflight === 0) pack.done?.();
    }
    if (pack === this.current && pack.writer.size >= this.packSize) this.closeCurrent();
    await this.throttle();
  }

  async save(type: BlobType, id: Uint8Array, raw: Uint8Array): Promise<void> {
    await this.saveMany([{ type, id, raw }]);
  }

  /**
   * Stores a whole pack as it is (a clone between repositories of one deduplication domain, whose
   * packs open under the same keys): `bytes` must be a pack whose name is `packId` (the caller
   * verified its BLAKE3), and `entries` its blobs, none of which this saver holds or was given.
   * The upload goes through the same pipeline as the saver's own packs (upload limit, index files
   * every `indexEvery` packs, salvage() after a failure). The caller keeps `bytes`: they are not
   * freed here, so one buffer can go to several savers.
   */
  async adoptPack(packId: Buffer, bytes: Uint8Array, entries: readonly IndexEntry[]): Promise<void> {
    this.check();
    for (const e of entries) {
      const key = e.type + toHex(e.id);
      if (this.mine.has(key)) throw new CofferError('INTERNAL', `Cannot adopt pack ${toHex(packId)}: this saver already stores ${e.type} blob ${toHex(e.id)}`);
      this.mine.add(key);
      this.stats.blobsNew++;
      this.stats.bytesNew += e.rawLength;
      this.stats.bytesStored += e.length;
    }
    this.upload(packId, bytes, [...entries], false);
    await this.throttle();
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

  /**
   * After a failure or Ctrl-C: lets what is under way settle, then writes the index for every
   * pack that was fully uploaded, so that the next backup reuses those packs. No snapshot.
   */
  async salvage(): Promise<void> {
    while (this.batches.size || this.closingPacks.size || this.uploads.size) {
      await Promise.allSettled([...this.batches, ...this.closingPacks, ...this.uploads]);
    }
    if (this.pendingIndex.length === 0) return;
    // Deliberately without the (aborted) signal: these are small writes.
    await this.options.session?.assertAlive();
    const packs = this.pendingIndex;
    this.pendingIndex = [];
    if (packs.length === 0) return;
    this.indexFiles.push(await this.repo.saveIndexFile({ supersedes: [], packs }));
    this.stats.indexFiles++;
    await this.options.session?.assertAlive();
  }

  /**
   * After this writer's session was found to have had a gap (Session.assertAlive): a prune may
   * have deleted packs it uploaded, and its index files may list them. Writes one index that
   * lists only its packs still stored and not condemned by a pending prune, in place of its own
   * index files, so that nobody deduplicates against a deleted blob. Call it after a fresh
   * heartbeat (assertAlive writes one, even when it throws), with the condemned packs read since.
   * Returns how many of its packs were gone.
   */
  async retract(condemned: ReadonlySet<string>): Promise<number> {
    while (this.batches.size || this.closingPacks.size || this.uploads.size) {
      await Promise.allSettled([...this.batches, ...this.closingPacks, ...this.uploads]);
    }
    const candidates: IndexPack[] = this.pendingIndex;
    this.pendingIndex = [];
    const own = [...this.indexFiles];
    for (const id of own) {
      try {
        candidates.push(...(await this.repo.loadIndexFile(id)).packs);
      } catch (e) {
        // Consolidated into a prune's index and deleted: its surviving packs are listed there.
        if (!isCofferError(e, 'NOT_FOUND')) throw e;
      }
    }
    const keep: IndexPack[] = [];
    let lost = 0;
    for (const p of candidates) {
      const hex = toHex(p.packId);
      let stored = !condemned.has(hex);
      if (stored) {
        try {
          await this.repo.backend.stat(packName(hex));
        } catch (e) {
          if (!isCofferError(e, 'NOT_FOUND')) throw e;
          stored = false;
        }
      }
      if (stored) keep.push(p);
      else lost++;
    }
    if (lost === 0 && candidates.length === 0) return 0;
    const written = await this.repo.saveIndexFiles(keep, own);
    for (const id of own) if (!written.includes(id)) await this.repo.backend.delete(indexName(id));
    this.indexFiles.splice(0, this.indexFiles.length, ...written);
    return lost;
  }

  private check(): void {
    if (this.failure) throw this.failure;
    throwIfAborted(this.options.signal);
  }

  private openPack(): OpenPack {
    if (!this.current) this.current = { writer: new PackWriter(this.repo.keys, { memory: this.packMemory }), inflight: 0, reserved: 0, closing: false };
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
    this.upload(id, bytes, entries.map(toIndexEntry), true);
  }

  /**
   * Pack buffers (PackWriter's memory): one given back after an earlier upload when one is big
   * enough, else a new one with room for packs a quarter over the target size. A new buffer
   * per pack cost a page fault per 4 KiB of every pack written.
   */
  private readonly packMemory = {
    take: (size: number): Buffer => {
      const i = this.packBuffers.findIndex((b) => b.byteLength >= size);
      const ab = i >= 0 ? this.packBuffers.splice(i, 1)[0]! : new ArrayBuffer(Math.max(size, Math.ceil(this.packSize * 1.25)));
      return Buffer.from(ab);
    },
    give: (ab: ArrayBuffer): void => this.givePackBuffer(ab),
  };

  private givePackBuffer(ab: ArrayBuffer): void {
    if (ab.detached) return;
    if (this.packBuffers.length < PACK_BUFFERS) this.packBuffers.push(ab);
    else ab.transfer(0);
  }

  /** Uploads a finished pack, then lists it in the in-memory index and the next index file. */
  private upload(id: Buffer, bytes: Uint8Array, entries: IndexEntry[], free: boolean): void {
    const hex = toHex(id);
    const p: Promise<void> = (async () => {
      await this.repo.backend.put(packName(hex), bytes, { signal: this.options.signal });
      const size = bytes.length;
      // Stored: the pack's memory is kept for the next pack or freed now rather than at the next
      // collection (backends keep no reference to what they were given once put() has resolved).
      if (free && bytes.buffer instanceof ArrayBuffer) this.givePackBuffer(bytes.buffer);
      this.stats.packs++;
      this.repo.index.add(id, size, entries);
      this.pendingIndex.push({ packId: id, packSize: size, entries });
      this.options.onPackUploaded?.(hex, size);
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
    const { signal, session } = this.options;
    await session?.assertAlive({ signal });
    const packs = this.pendingIndex;
    this.pendingIndex = [];
    if (packs.length === 0) return;
    const id = await this.repo.saveIndexFile({ supersedes: [], packs }, { signal });
    this.indexFiles.push(id);
    this.stats.indexFiles++;
    // Paused between the check and the write? Then the index may list deleted packs: retract().
    await session?.assertAlive({ signal });
  }
}

/** Tells the callers of saveMany() whose last blobs these were that their memory is free (once). */
function releaseHolds(items: Queued[]): void {
  for (const it of items) {
    const hold = it.hold;
    if (!hold) continue;
    it.hold = undefined;
    if (--hold.left === 0) hold.done();
  }
}

export function toIndexEntry(e: PackEntry): import('./index/index-file.ts').IndexEntry {
  return { type: e.type, id: e.id, offset: e.offset, length: e.length, rawLength: e.rawLength, compressed: e.compressed, nonceIndex: e.nonceIndex };
}
