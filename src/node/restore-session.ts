// A storage node's restore session (docs/server.md "Restores through a storage node"): the server
// sends the node a `node-restore` job (the unit's storage access, the client, the snapshot) with a
// one-time session token, and the client's agent its ordinary restore job with that token and
// this node's address. The node opens the repository (it holds the keys) and serves that one
// snapshot, and only it:
//
//   SNAPSHOT  the snapshot's JSON
//   TREE      a tree of the snapshot: its root, or a subtree of a tree served before (TREE_R:
//             the plaintext and the raw length of every data chunk its files name)
//   READ      data chunks named by the files of trees served before, decrypted and verified
//             here, zstd-compressed for the wire (BLOBS)
//
// Anything else is FORBIDDEN and ends the session, so that a stolen agent credential reads no
// other snapshot's trees and no other client's data by guessing chunk ids. The agent holds the
// chunk-id key only: it checks every tree and chunk against its id before a byte is written.
// Reads use the restore's machinery (LocalRestoreSource: the registered session a prune waits
// for, readBlobs and TreeLoader, another copy of a blob the index knows when one fails, the damage
// recorded at the end). A chunk no copy gives is an error entry naming it: the agent fails the
// files that need it, never writes wrong bytes, and the server re-runs the restore from another
// copy of the image.

import { CofferError, toCofferError } from '../core/errors.ts';
import { Limiter } from '../core/limiter.ts';
import { compress } from '../engine/compress.ts';
import { toHex } from '../engine/hash.ts';
import type { EmitJobEvent } from '../jobs/events.ts';
import type { BlobDecoder, BlobResult } from '../jobs/read-blobs.ts';
import { LocalRestoreSource } from '../jobs/restore-source.ts';
import type { TreeLoader } from '../jobs/tree-loader.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import type { Repository } from '../repository/repository.ts';
import { loadSnapshot, type Snapshot } from '../repository/snapshot.ts';
import type { Tree } from '../repository/tree.ts';
import type { Connection } from './service.ts';
import { BLOB_FORM, DATA_PROTOCOL, FrameReader, NO_LENGTH, T, errorFrame, frame, jsonFrame, parseIds, servedHeader, type Frame } from './wire.ts';

/** What the server asks of the node for one restore (protocol.ts nodeRestoreSpec). */
export interface RestoreSessionSpec {
  session: string;
  /** The client whose agent connects (the restore's target host). */
  client: string;
  snapshot: string;
}

export interface NodeRestoreResult {
  snapshot: string;
  treesServed: number;
  blobsServed: number;
  /** Plaintext bytes of the chunks served. */
  bytesServed: number;
  /** Bytes written to the data connection (framing included). */
  bytesSent: number;
  /** Chunks that could not be read here (each was an error entry). */
  blobsDamaged: number;
  warnings: number;
}

/** What a restore session's hello says: the chunk-id key (to verify, not to decrypt). */
export interface RestoreHello {
  protocol: number;
  kind: 'restore';
  client: string;
  chunkIdKey: string;
}

/** Plaintext bytes one READ may ask for at most (the agent asks for less: remote-restore.ts). */
export const MAX_READ_BYTES = 32 << 20;
/** READs served at once: with MAX_READ_BYTES, what a session holds in memory. */
const READS_AT_ONCE = 2;
/** zstd level of chunks on the wire: fast, the link is what is saved. */
const WIRE_LEVEL = 1;

/** The storage node's load figures a session adds to (the server balances nodes by them). */
export interface NodeLoad {
  bytesInFlight: number;
}

/**
 * Opens the repository's restore machinery, reads the snapshot, waits for the agent (`wait`
 * registers the session and emits SESSION_READY), and serves it until it disconnects.
 */
export async function serveRestoreSession(spec: RestoreSessionSpec, repo: Repository, pool: BlobDecoder, emit: EmitJobEvent, signal: AbortSignal, wait: (emit: EmitJobEvent) => Promise<[Connection, number]>, load: NodeLoad): Promise<NodeRestoreResult> {
  const source = new LocalRestoreSource(repo);
  const notice = (message: string) => emit({ type: 'log', level: 'warn', message });
  await source.begin({ signal, dryRun: false, notice });
  try {
    await source.load({ signal, notice });
    const snapshot = await loadSnapshot(repo, spec.snapshot, { signal });
    const [conn, openId] = await wait(emit);
    const session = new RestoreSession(spec, snapshot, source, pool, conn, emit, load, signal);
    return await session.run(openId, signal);
  } finally {
    await source.end({ dryRun: false, notice: (message) => emit({ type: 'log', level: 'info', message }) });
  }
}

/** A short, stable key of a 32-byte id (one byte per character). */
const keyOf = (id: Uint8Array) => Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('latin1');

class RestoreSession {
  private readonly spec: RestoreSessionSpec;
  private readonly snapshot: Snapshot;
  private readonly source: LocalRestoreSource;
  private readonly conn: Connection;
  private readonly emit: EmitJobEvent;
  private readonly load: NodeLoad;
  private readonly trees: TreeLoader;
  private readonly decoder: BlobDecoder;
  /** Trees the agent may read: the snapshot's root, and the subtrees of trees served. */
  private readonly readable = new Set<string>();
  /** Data chunks the agent may read: those named by files of trees served (bounded by the snapshot). */
  private readonly allowed = new Set<string>();
  private readonly reads = new Limiter(READS_AT_ONCE);
  private readonly stats = { treesServed: 0, blobsServed: 0, bytesServed: 0, bytesSent: 0, blobsDamaged: 0 };
  private end: (e?: unknown) => void = () => {};
  private ended = false;

  constructor(spec: RestoreSessionSpec, snapshot: Snapshot, source: LocalRestoreSource, pool: BlobDecoder, conn: Connection, emit: EmitJobEvent, load: NodeLoad, signal: AbortSignal) {
    this.spec = spec;
    this.snapshot = snapshot;
    this.source = source;
    this.conn = conn;
    this.emit = emit;
    this.load = load;
    this.readable.add(snapshot.tree);
    this.trees = source.openTrees({ decoder: pool, signal, keepBytes: true });
    this.decoder = pool;
  }

  /** Answers the agent's OPEN, then serves until the agent disconnects or breaks a rule. */
  run(openId: number, signal: AbortSignal): Promise<NodeRestoreResult> {
    const { conn } = this;
    return new Promise<NodeRestoreResult>((resolve, reject) => {
      const reader = new FrameReader((f) => this.handle(f, signal), (e) => this.end(e));
      const onData = (b: Buffer) => reader.push(b);
      const onAbort = () => this.end(new CofferError('CANCELLED', 'The session was cancelled'));
      this.end = (e?: unknown) => {
        if (this.ended) return;
        this.ended = true;
        signal.removeEventListener('abort', onAbort);
        reader.stop();
        conn.socket.off('data', onData);
        if (e === undefined) {
          conn.socket.end();
          const warnings = this.stats.blobsDamaged;
          this.emit({ type: 'log', level: 'info', message: `restore session of snapshot ${this.spec.snapshot.slice(0, 12)} for client ${this.spec.client} ended: ${this.stats.treesServed} tree(s) and ${this.stats.blobsServed} chunk(s), ${this.stats.bytesServed} bytes, served` });
          return resolve({ snapshot: this.spec.snapshot, ...this.stats, warnings });
        }
        conn.socket.destroy();
        reject(e);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const hello: RestoreHello = { protocol: DATA_PROTOCOL, kind: 'restore', client: this.spec.client, chunkIdKey: this.source.chunkIdKey.toString('base64') };
      this.send(jsonFrame(T.HELLO, openId, hello));
      conn.socket.on('data', onData);
      // The agent closes the connection when its restore is done (or has failed: the server
      // knows from the agent's job); either way this session has served what it was asked.
      conn.socket.once('close', () => this.end());
    });
  }

  private send(b: Buffer): void {
    this.stats.bytesSent += b.length;
    this.conn.send(b);
  }

  /** A request that breaks the session's rules: refused, logged, and the session ends. */
  private refuse(f: Frame, e: unknown): void {
    const err = toCofferError(e);
    if (err.code === 'FORBIDDEN') this.emit({ type: 'log', level: 'error', message: `${err.message}: refused, and client ${this.spec.client}'s restore session ended`, data: { client: this.spec.client } });
    this.send(errorFrame(f.id, err));
    this.end(err);
  }

  private handle(f: Frame, signal: AbortSignal): void {
    try {
      switch (f.type) {
        case T.SNAPSHOT:
          this.send(jsonFrame(T.OK, f.id, { id: this.spec.snapshot, snapshot: this.snapshot }));
          return;
        case T.TREE:
          this.tree(f).catch((e) => this.refuse(f, e));
          return;
        case T.READ:
          this.read(f, signal).catch((e) => this.refuse(f, e));
          return;
        default:
          throw new CofferError('PROTOCOL', `Message type ${f.type} is not allowed in a restore session`);
      }
    } catch (e) {
      this.refuse(f, e);
    }
  }

  /** A tree of the snapshot, with the raw lengths of the chunks its files name. */
  private async tree(f: Frame): Promise<void> {
    const ids = parseIds(f.payload);
    if (ids.length !== 1 || ids[0]!.type !== 'tree') throw new CofferError('PROTOCOL', 'A TREE request names one tree');
    const hex = toHex(ids[0]!.id);
    if (!this.readable.has(hex)) throw new CofferError('FORBIDDEN', `Client ${this.spec.client} asked for tree ${hex.slice(0, 12)}, which is not a tree of snapshot ${this.spec.snapshot.slice(0, 12)}`);
    let loaded: { tree: Tree; bytes?: Buffer };
    try {
      loaded = await this.trees.getLoaded(hex);
    } catch (e) {
      // Damaged or missing here: the agent names it like any lost directory; the session goes on.
      const err = toCofferError(e);
      if (!['CORRUPT', 'NOT_FOUND', 'INVALID_RANGE', 'UNSUPPORTED'].includes(err.code)) throw err;
      this.stats.blobsDamaged++;
      this.emit({ type: 'log', level: 'warn', message: `tree ${hex.slice(0, 12)} of snapshot ${this.spec.snapshot.slice(0, 12)} cannot be read on this storage node: ${err.message}` });
      if (!this.ended) this.send(errorFrame(f.id, err));
      return;
    }
    const lengths: number[] = [];
    for (const n of loaded.tree.nodes) {
      if (n.type === 'dir' && n.subtree) this.readable.add(n.subtree);
      if (n.type !== 'file' || !n.content) continue;
      for (const c of n.content) {
        this.allowed.add(keyOf(Buffer.from(c, 'hex')));
        lengths.push(this.source.locate(c)?.entry.rawLength ?? NO_LENGTH);
      }
    }
    const bytes = loaded.bytes!;
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32BE(bytes.length, 0);
    const tail = Buffer.allocUnsafe(4 * lengths.length);
    lengths.forEach((l, i) => tail.writeUInt32BE(l, 4 * i));
    this.stats.treesServed++;
    if (!this.ended) this.send(frame(T.TREE_R, f.id, [head, bytes, tail]));
  }

  /** Data chunks of trees served: read, verified and decrypted here, compressed for the wire. */
  private async read(f: Frame, signal: AbortSignal): Promise<void> {
    const ids = parseIds(f.payload);
    const hits: Array<IndexHit | undefined> = [];
    let total = 0;
    for (const { type, id } of ids) {
      const hex = toHex(id);
      if (type !== 'data') throw new CofferError('PROTOCOL', 'A READ names data chunks only (trees are asked for with TREE)');
      if (!this.allowed.has(keyOf(id))) throw new CofferError('FORBIDDEN', `Client ${this.spec.client} asked for chunk ${hex.slice(0, 12)}, which no file of snapshot ${this.spec.snapshot.slice(0, 12)} served so far names`);
      const hit = this.source.locate(hex);
      hits.push(hit);
      total += hit?.entry.rawLength ?? 0;
    }
    if (total > MAX_READ_BYTES) throw new CofferError('PROTOCOL', `A READ of ${total} bytes is more than a session serves at once (${MAX_READ_BYTES})`);
    await this.reads.acquire();
    this.load.bytesInFlight += total;
    try {
      const results = await this.readAll(ids.map((x) => toHex(x.id)), hits, signal);
      const parts: Buffer[] = [];
      for (let i = 0; i < results.length; i++) {
        const r = results[i]!;
        if (r.error) {
          this.stats.blobsDamaged++;
          const e = new CofferError(r.error.code, `chunk ${toHex(ids[i]!.id).slice(0, 12)} cannot be read on this storage node: ${r.error.message}`);
          this.emit({ type: 'log', level: 'warn', message: `${e.message} (client ${this.spec.client}'s restore of snapshot ${this.spec.snapshot.slice(0, 12)})` });
          const body = Buffer.from(JSON.stringify({ code: e.code, message: e.message }));
          parts.push(servedHeader(0, body.length, BLOB_FORM.error), body);
          continue;
        }
        const raw = r.data;
        // Only what the repository stores compressed (what did not shrink there will not shrink
        // at a faster level either). On this thread, with the addon's reused context: node:zlib's
        // asynchronous calls cost more in stream bookkeeping than the compression itself.
        const z = raw.length >= 64 && hits[i]!.entry.compressed ? compress(raw, WIRE_LEVEL) : null;
        if (z) parts.push(servedHeader(raw.length, z.length, BLOB_FORM.zstd), z);
        else parts.push(servedHeader(raw.length, raw.length, BLOB_FORM.plain), raw);
        this.stats.blobsServed++;
        this.stats.bytesServed += raw.length;
      }
      if (this.ended) return;
      this.send(frame(T.BLOBS, f.id, parts));
      await this.drained();
    } finally {
      this.load.bytesInFlight -= total;
      this.reads.release();
    }
  }

  /** Every blob's outcome, trying each copy the index knows before one counts as damaged. */
  private async readAll(ids: string[], hits: Array<IndexHit | undefined>, signal: AbortSignal): Promise<BlobResult[]> {
    const out: BlobResult[] = hits.map((h, i) => (h ? undefined : { error: new CofferError('NOT_FOUND', `data blob ${ids[i]!.slice(0, 12)} is not in the repository index`) })) as BlobResult[];
    const tried = new Map<number, Set<string>>();
    let want = hits.flatMap((h, i) => (h ? [i] : []));
    let at = want.map((i) => hits[i]!);
    while (want.length) {
      const again: number[] = [];
      const againAt: IndexHit[] = [];
      await this.source.readData(at, async (indexes, results) => {
        for (let k = 0; k < indexes.length; k++) {
          const i = want[indexes[k]!]!;
          const r = results[k]!;
          if (!r.error) {
            out[i] = r;
            continue;
          }
          let seen = tried.get(i);
          if (!seen) tried.set(i, (seen = new Set()));
          const hit = at[indexes[k]!]!;
          const other = this.source.readFailed(ids[i]!, hit, r.error, seen);
          if (other) {
            again.push(i);
            againAt.push(other);
          } else out[i] = { error: new CofferError(r.error.code, `${r.error.message} (pack ${toHex(hit.packId).slice(0, 12)})`) };
        }
      }, { signal, decoder: this.decoder });
      want = again;
      at = againAt;
    }
    return out;
  }

  /** Waits while the agent has not taken what was sent (so that a slow agent bounds the node's memory). */
  private drained(): Promise<void> {
    const s = this.conn.socket;
    if (!s.writableNeedDrain || s.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        s.off('drain', done);
        s.off('close', done);
        resolve();
      };
      s.once('drain', done);
      s.once('close', done);
    });
  }
}
