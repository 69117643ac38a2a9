// A remote agent's backup store (jobs/backup-store.ts): the agent reads, chunks and hashes
// locally, asks the storage node which chunks it lacks (HAVE, in batches), and sends only those,
// zstd-compressed (PUT). It holds the chunk-id key and the chunker's gear seed (what
// deduplication needs) but no key that decrypts: the node verifies each chunk against its id,
// encrypts, packs and commits (node/service.ts).

import { CofferError, throwIfAborted } from '../core/errors.ts';
import type { ChunkerParams } from '../engine/chunker.ts';
import type { BlobType } from '../engine/format.ts';
import { chunkId, toHex } from '../engine/hash.ts';
import { compress } from '../engine/compress.ts';
import type { SaverStats } from '../repository/packer.ts';
import { validateSnapshot, type Snapshot, type SnapshotRef } from '../repository/snapshot.ts';
import { decodeTree, type Tree } from '../repository/tree.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { BackupStore, BlobItem } from '../jobs/backup-store.ts';
import type { NodeClient } from './client.ts';
import { DATA_PROTOCOL, T, blobHeader, encodeIds, parseJson, type WireBlobType } from './wire.ts';


/** What the node says when a session opens. */
export interface SessionHello {
  protocol: number;
  kind: 'backup' | 'restore';
  client: string;
  chunker: ChunkerParams;
  imageChunkSize: number;
  compressionLevel: number;
  /** base64 of the chunk-id key and the gear seed: deduplication's keys, not encryption's. */
  chunkIdKey: string;
  gearSeed: string;
  /** A backup's parent snapshot, chosen by the server (none: a full read). */
  parent?: { id: string; snapshot: unknown };
}

/** Ids asked about in one HAVE request at most. */
const HAVE_BATCH = 4096;
/** A PUT request carries about this many bytes. */
const PUT_BYTES = 4 << 20;
/** Bytes sent but not yet acknowledged by the node before saveMany() waits. */
const MAX_UNACKED = 32 << 20;

/**
 * Test knob (multi-host tests): COFFER_TEST_FORGE_CHUNK=1 makes this agent send its first new
 * data chunk with one byte changed under its true id, as a compromised client would to poison
 * deduplicated data. The node must refuse it.
 */
const FORGE_ONE_CHUNK = process.env.COFFER_TEST_FORGE_CHUNK === '1';

const keyOf = (type: BlobType, id: Uint8Array) => `${type[0]}${toHex(id)}`;

export async function openSession(client: NodeClient, session: string, kind: 'backup' | 'restore', options: CallOptions = {}): Promise<SessionHello> {
  throwIfAborted(options.signal);
  const reply = await client.request(T.OPEN, Buffer.from(JSON.stringify({ protocol: DATA_PROTOCOL, session, kind })));
  const hello = parseJson(reply.payload, 'the storage node\'s hello') as unknown as SessionHello;
  if (hello.protocol !== DATA_PROTOCOL) throw new CofferError('PROTOCOL', `The storage node speaks data protocol ${String(hello.protocol)}, this agent ${DATA_PROTOCOL}`, { hint: 'Run the same Coffer version on agents and storage nodes.' });
  if (hello.kind !== kind) throw new CofferError('PROTOCOL', `The storage node opened a ${String(hello.kind)} session where a ${kind} was expected`);
  return hello;
}

export class RemoteBackupStore implements BackupStore {
  readonly chunker: ChunkerParams;
  readonly imageChunkSize: number;
  readonly chunkIdKey: Buffer;
  readonly stats: SaverStats = { blobsNew: 0, blobsKnown: 0, bytesNew: 0, bytesStored: 0, packs: 0, indexFiles: 0 };
  private readonly client: NodeClient;
  private readonly hello: SessionHello;
  private readonly level: number;
  private readonly signal: AbortSignal | undefined;
  /** Blobs the node has, or that this store sent or is sending (then the promise of their PUT). */
  private readonly known = new Map<string, true | Promise<void>>();
  private haveQueue: Array<{ type: WireBlobType; id: Uint8Array; resolve: (present: boolean) => void; reject: (e: unknown) => void }> = [];
  private haveScheduled = false;
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private batchScheduled = false;
  private unacked = 0;
  private readonly acks = new Set<Promise<void>>();
  private ackWaiters: Array<() => void> = [];
  private failure: unknown;
  private readonly trees = new Map<string, { promise: Promise<Tree>; expected: number }>();
  private forged = false;

  constructor(client: NodeClient, hello: SessionHello, options: CallOptions = {}) {
    this.client = client;
    this.hello = hello;
    this.chunker = hello.chunker;
    this.imageChunkSize = hello.imageChunkSize;
    this.chunkIdKey = Buffer.from(hello.chunkIdKey, 'base64');
    this.level = hello.compressionLevel;
    this.signal = options.signal;
  }

  /** Bytes this store sent over the network, framing included. */
  get bytesSent(): number {
    return this.client.bytesSent;
  }

  async findParent(ref: string | undefined): Promise<SnapshotRef | undefined> {
    const p = this.hello.parent;
    if (ref === undefined) return p ? { id: p.id, snapshot: validateSnapshot(p.snapshot, p.id) } : undefined;
    if (!p || p.id !== ref) throw new CofferError('REFUSED', `Cannot use snapshot ${ref.slice(0, 12)} as the parent: the server opened this session with ${p ? `parent ${p.id.slice(0, 12)}` : 'no parent'}`);
    return { id: p.id, snapshot: validateSnapshot(p.snapshot, p.id) };
  }

  /**
   * The parent's blobs: the node checks every reference of every tree it receives (a blob gone
   * since fails the commit there), so the agent need not ask about each unchanged file.
   */
  hasBlob(): boolean {
    return true;
  }

  async saveMany(items: BlobItem[], released?: () => void): Promise<void> {
    try {
      this.check();
      const waits: Array<Promise<void>> = [];
      const fresh = new Map<string, BlobItem>();
      for (const it of items) {
        const k = keyOf(it.type, it.id);
        const seen = this.known.get(k);
        if (seen === true) this.stats.blobsKnown++;
        else if (seen) waits.push(seen);
        else fresh.set(k, it);
      }
      if (fresh.size) {
        // Another call with the same blobs meanwhile waits for this one's PUT, not its own.
        const sent = this.sendMissing([...fresh.values()], () => {
          released?.();
          released = undefined;
        });
        sent.catch(() => {});
        for (const k of fresh.keys()) this.known.set(k, sent);
        await sent;
        for (const k of fresh.keys()) this.known.set(k, true);
      }
      await Promise.all(waits);
    } finally {
      released?.();
    }
  }

  /** Asks which of `items` the node lacks, compresses those (then `released`), and queues their PUT. */
  private async sendMissing(items: BlobItem[], released: () => void): Promise<void> {
    const present = await Promise.all(items.map((it) => this.have(it.type as WireBlobType, it.id)));
    const missing = items.filter((_, i) => !present[i]);
    this.stats.blobsKnown += items.length - missing.length;
    const encoded = await Promise.all(missing.map((it) => this.compress(it)));
    released();
    for (let i = 0; i < missing.length; i++) await this.queuePut(missing[i]!, encoded[i]!);
  }

  loadTree(id: string): Promise<Tree> {
    const e = this.trees.get(id);
    if (!e) return this.fetchTree(id);
    if (--e.expected <= 0) this.trees.delete(id);
    return e.promise;
  }

  prefetchTrees(ids: string[]): void {
    for (const id of ids) {
      const e = this.trees.get(id);
      if (e) e.expected++;
      else {
        const promise = this.fetchTree(id);
        promise.catch(() => {});
        this.trees.set(id, { promise, expected: 1 });
      }
    }
  }

  clearTrees(): void {
    this.trees.clear();
  }

  async flush(): Promise<void> {
    this.sendBatch();
    while (this.acks.size) await Promise.all([...this.acks]);
    this.check();
  }

  async commit(snapshot: Snapshot, options: CallOptions): Promise<string> {
    throwIfAborted(options.signal);
    await this.flush();
    const reply = await this.client.request(T.COMMIT, Buffer.from(JSON.stringify(snapshot)));
    const r = parseJson(reply.payload, 'the storage node\'s commit');
    if (typeof r.snapshot !== 'string' || !/^[0-9a-f]{64}$/.test(r.snapshot)) throw new CofferError('PROTOCOL', 'The storage node committed the snapshot without saying its id');
    const stats = r.stats as Partial<SaverStats> | undefined;
    if (stats) {
      this.stats.bytesStored = Number(stats.bytesStored ?? 0);
      this.stats.packs = Number(stats.packs ?? 0);
      this.stats.indexFiles = Number(stats.indexFiles ?? 0);
    }
    return r.snapshot;
  }

  async fail(e: unknown): Promise<void> {
    // The node indexes what it stored, so that the next run reuses it.
    this.client.send(T.ABORT, Buffer.from(JSON.stringify({ reason: e instanceof Error ? e.message : String(e) })));
  }

  async end(): Promise<void> {
    this.trees.clear();
    // Give the ABORT or the commit's reply a moment to be written before the socket goes.
    await this.client.drained().catch(() => {});
    this.client.close();
  }

  private check(): void {
    if (this.failure) throw this.failure;
    if (this.client.error) throw this.client.error;
    throwIfAborted(this.signal);
  }

  private have(type: WireBlobType, id: Uint8Array): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.haveQueue.push({ type, id, resolve, reject });
      if (this.haveQueue.length >= HAVE_BATCH) this.sendHave();
      else if (!this.haveScheduled) {
        this.haveScheduled = true;
        setImmediate(() => this.sendHave());
      }
    });
  }

  private sendHave(): void {
    this.haveScheduled = false;
    const q = this.haveQueue;
    this.haveQueue = [];
    if (!q.length) return;
    this.client.request(T.HAVE, encodeIds(q)).then((reply) => {
      if (reply.type !== T.HAVE_R || reply.payload.length !== q.length) throw new CofferError('PROTOCOL', `The storage node answered ${q.length} ids with ${reply.payload.length}`);
      q.forEach((w, i) => w.resolve(reply.payload[i] === 1));
    }).catch((e) => {
      for (const w of q) w.reject(e);
    });
  }

  private async compress(it: BlobItem): Promise<{ bytes: Uint8Array; compressed: boolean }> {
    if (FORGE_ONE_CHUNK && !this.forged && it.type === 'data' && it.raw.length > 0) {
      // The test knob of a compromised client: content that is not what its id says.
      this.forged = true;
      const raw = Buffer.from(it.raw);
      raw[0]! ^= 0xff;
      return { bytes: raw, compressed: false };
    }
    if (it.raw.length < 64) return { bytes: Buffer.from(it.raw), compressed: false };
    // On this thread, with the addon's reused context: node:zlib's asynchronous calls cost more
    // main-thread time in their stream bookkeeping (callbacks every 16 KiB, GC) than the
    // compression itself (a profile of one VM's remote backup: 6 s of 25).
    const z = compress(it.raw, this.level);
    return z ? { bytes: z, compressed: true } : { bytes: Buffer.from(it.raw), compressed: false };
  }

  private async queuePut(it: BlobItem, enc: { bytes: Uint8Array; compressed: boolean }): Promise<void> {
    while (this.unacked >= MAX_UNACKED) {
      this.check();
      await new Promise<void>((resolve) => this.ackWaiters.push(resolve));
    }
    this.check();
    this.batch.push(blobHeader(it.type as WireBlobType, it.id, it.raw.length, enc.bytes.length, enc.compressed), Buffer.from(enc.bytes.buffer, enc.bytes.byteOffset, enc.bytes.byteLength));
    this.batchBytes += enc.bytes.length + 42;
    this.stats.blobsNew++;
    this.stats.bytesNew += it.raw.length;
    if (this.batchBytes >= PUT_BYTES) this.sendBatch();
    else if (!this.batchScheduled) {
      this.batchScheduled = true;
      setImmediate(() => this.sendBatch());
    }
  }

  private sendBatch(): void {
    this.batchScheduled = false;
    if (!this.batch.length) return;
    const parts = this.batch;
    const bytes = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    this.unacked += bytes;
    const ack = this.client.request(T.PUT, parts).then(() => {}, (e) => {
      this.failure ??= e;
    }).finally(() => {
      this.unacked -= bytes;
      this.acks.delete(ack);
      const w = this.ackWaiters;
      this.ackWaiters = [];
      for (const f of w) f();
    });
    this.acks.add(ack);
  }

  private async fetchTree(id: string): Promise<Tree> {
    this.check();
    const want = Buffer.from(id, 'hex');
    const reply = await this.client.request(T.TREE, encodeIds([{ type: 'tree', id: want }]));
    // The node decrypted it; the agent checks it is the tree it asked for.
    if (!chunkId(this.chunkIdKey, reply.payload).equals(want)) throw new CofferError('CORRUPT', `The storage node sent tree ${id.slice(0, 12)} with other content`);
    return decodeTree(reply.payload);
  }
}
