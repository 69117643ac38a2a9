// The storage node's data service (docs/server.md "Storage nodes"): the sessions the server
// opens on this node for agents' jobs, and the agents' data connections to them (wire.ts).
//
// A backup session: the server sends the node a `node-backup` job (the unit's storage access,
// the client, the parent, the tags) with a one-time session token, and the client's agent the
// same token and this node's address. The node opens the repository (it holds the keys), and
// the agent connects, asks which chunks the repository lacks, and sends those. Every chunk is
// checked against its id (keyed BLAKE3 of its plaintext) before it is stored: a client that
// sends content under another chunk's id is refused and the session ends, so that no client
// can poison data that other clients' backups reference. Every tree is checked too: it must
// parse, and every chunk and subtree it names must be stored already (or in this session).
// The snapshot is written by the node, only for the session's client, with the session's
// tags and parent; nothing half-sent is ever committed.

import type { Duplex } from 'node:stream';
import { CofferError, toCofferError } from '../core/errors.ts';
import type { BlobType } from '../engine/format.ts';
import { chunkId, toHex } from '../engine/hash.ts';
import { decompress } from '../engine/compress.ts';
import { LocalBackupStore, type BlobItem } from '../jobs/backup-store.ts';
import type { BlobDecoder } from '../jobs/read-blobs.ts';
import type { EmitJobEvent } from '../jobs/events.ts';
import type { Encoder } from '../repository/packer.ts';
import type { Repository } from '../repository/repository.ts';
import { findSnapshot, validateSnapshot, type Snapshot } from '../repository/snapshot.ts';
import { decodeTree } from '../repository/tree.ts';
import type { SessionHello } from './remote-store.ts';
import { serveRestoreSession, type NodeRestoreResult, type RestoreSessionSpec } from './restore-session.ts';
import { DATA_PROTOCOL, FrameReader, T, errorFrame, frame, jsonFrame, parseIds, parseJson, parsePut, type Frame } from './wire.ts';


/** What the server asks of the node for one backup (protocol.ts nodeBackupSpec). */
export interface BackupSessionSpec {
  session: string;
  client: string;
  parent: string;
  tags: string[];
}

export interface NodeBackupResult {
  snapshot: string;
  /** Bytes the agent sent on the data connection (framing included). */
  bytesReceived: number;
  blobsReceived: number;
  blobsNew: number;
  bytesNew: number;
  bytesStored: number;
  packs: number;
}

/** The data of the log event that says a session waits for its agent. */
export const SESSION_READY = 'sessionReady';

/** True for the event a node's session job emits once its agent may connect. */
export const isSessionReady = (e: { type: string; data?: Record<string, unknown> }): boolean => e.type === 'log' && e.data?.[SESSION_READY] === true;

/** A node's backup session writes an index file after this many packs (a local backup: 64). */
const SESSION_INDEX_EVERY = 4;
/** A session reads new index files at most this often, when its agent asks which chunks are stored. */
const INDEX_REFRESH_MS = 5_000;

/** How long a session waits for its agent to connect (default 10 min). */
const CONNECT_TIMEOUT_MS = Number(process.env.COFFER_NODE_CONNECT_TIMEOUT_MS ?? 600_000);

/** A session's kind: what the agent may do in it. */
export type SessionKind = 'backup' | 'restore';

interface Waiting {
  kind: SessionKind;
  /** The client whose agent may open the session. */
  client: string;
  /** Hands the session its connection and the id of the OPEN request to answer. */
  attach: (conn: Connection, openId: number) => void;
}

export interface NodeServiceOptions {
  /** Diagnostics that have no job to go to (a connection that never opened a session). */
  log?: (message: string) => void;
}

/** A data connection: frames in, frames out, and who is on the other end. */
export interface Connection {
  socket: Duplex;
  /** The certificate's identity of the peer (undefined: an unauthenticated transport, tests and loopback). */
  peer: string | undefined;
  bytesIn: number;
  send(b: Buffer): void;
}

export class NodeService {
  private readonly waiting = new Map<string, Waiting>();
  private readonly options: NodeServiceOptions;
  /** Bytes in flight on data connections now (a load figure the server balances by). */
  bytesInFlight = 0;

  constructor(options: NodeServiceOptions = {}) {
    this.options = options;
  }

  /**
   * Takes one data connection. Its first frame must open a session this node has; with `peer`
   * (the TLS client certificate's name), the session's client must be that peer.
   */
  accept(socket: Duplex, peer: string | undefined): void {
    const conn: Connection = {
      socket,
      peer,
      bytesIn: 0,
      send: (b) => {
        if (!socket.destroyed) socket.write(b);
      },
    };
    let opened = false;
    const refuse = (id: number, e: CofferError) => {
      this.options.log?.(`data connection${peer ? ` from ${peer}` : ''} refused: ${e.message}`);
      conn.send(errorFrame(id, e));
      socket.end();
      reader.stop();
    };
    const reader = new FrameReader((f) => {
      if (opened) return;
      opened = true;
      if (f.type !== T.OPEN) return refuse(f.id, new CofferError('PROTOCOL', 'The first message on a data connection must open a session'));
      let v: Record<string, unknown>;
      try {
        v = parseJson(f.payload, 'the session request');
      } catch (e) {
        return refuse(f.id, toCofferError(e));
      }
      if (v.protocol !== DATA_PROTOCOL) return refuse(f.id, new CofferError('PROTOCOL', `This storage node speaks data protocol ${DATA_PROTOCOL}, the agent ${String(v.protocol)}`, { hint: 'Run the same Coffer version on agents and storage nodes.' }));
      const w = typeof v.session === 'string' ? this.waiting.get(v.session) : undefined;
      if (!w) return refuse(f.id, new CofferError('REFUSED', 'No such session on this storage node: it ended, was never opened, or belongs to another node', { hint: 'The server opens sessions for the jobs it runs; the job is retried.' }));
      if (peer !== undefined && peer !== w.client) return refuse(f.id, new CofferError('FORBIDDEN', `Session refused: it is client ${w.client}'s, and this connection is ${peer}'s`));
      if (v.kind !== undefined && v.kind !== w.kind) return refuse(f.id, new CofferError('REFUSED', `Session refused: it is a ${w.kind} session, and the agent asked for a ${String(v.kind)}`, { hint: 'The server gives each job its own session; the job is retried.' }));
      // One connection per session: the token is spent. The agent sends nothing more before
      // the session's hello, so nothing is left in this reader.
      this.waiting.delete(v.session as string);
      reader.stop();
      w.attach(conn, f.id);
    }, (e) => refuse(0, e));
    const onData = (b: Buffer) => {
      conn.bytesIn += b.length;
      if (!opened) reader.push(b);
    };
    socket.on('data', onData);
    socket.on('error', () => socket.destroy());
  }

  /**
   * Runs a backup session: waits for the client's agent, takes its chunks and trees, and
   * commits its snapshot. `repo` and `pool` are opened by the caller for the session's length.
   */
  async serveBackup(spec: BackupSessionSpec, repo: Repository, pool: Encoder & BlobDecoder, emit: EmitJobEvent, signal: AbortSignal): Promise<NodeBackupResult> {
    this.checkToken(spec.session);
    // The parent, read before the agent comes: it is part of the session's hello.
    const parent = spec.parent === 'none' ? undefined : await findSnapshot(repo, spec.parent, {}, { signal });
    if (parent && parent.snapshot.host.hostname !== spec.client) {
      throw new CofferError('REFUSED', `Cannot use snapshot ${spec.parent.slice(0, 12)} as client ${spec.client}'s parent: it is ${parent.snapshot.host.hostname}'s`);
    }
    // Index files every few packs, and the index read again while agents ask (HAVE): backups of
    // many clients at once then find what the others stored minutes ago, not only at their start.
    const store = await LocalBackupStore.open(repo, pool, { signal, indexEvery: SESSION_INDEX_EVERY, onNotice: (m) => emit({ type: 'log', level: 'warn', message: m }) });
    let conn: Connection;
    let openId: number;
    try {
      [conn, openId] = await this.waitForAgent(spec.session, 'backup', spec.client, emit, signal);
    } catch (e) {
      await store.end();
      throw e;
    }
    const session = new BackupSession(spec, repo, store, conn, openId, parent ? { id: parent.id, snapshot: parent.snapshot } : undefined, emit, this);
    try {
      return await session.run(signal);
    } finally {
      await store.end();
    }
  }

  /**
   * Runs a restore session (restore-session.ts): waits for the client's agent, then serves it the
   * snapshot, its trees and the data chunks they name, and nothing else. `repo` and `pool` are
   * opened by the caller for the session's length.
   */
  async serveRestore(spec: RestoreSessionSpec, repo: Repository, pool: BlobDecoder, emit: EmitJobEvent, signal: AbortSignal): Promise<NodeRestoreResult> {
    this.checkToken(spec.session);
    return serveRestoreSession(spec, repo, pool, emit, signal, (ready) => this.waitForAgent(spec.session, 'restore', spec.client, ready, signal), this);
  }

  /** A session token must be new on this node (checked before the session's work begins). */
  private checkToken(session: string): void {
    if (this.waiting.has(session)) throw new CofferError('CONFLICT', 'A session with this token is open already');
  }

  /**
   * Registers a session and waits for its agent's connection (at most CONNECT_TIMEOUT_MS):
   * the connection and the id of its OPEN request. Emits SESSION_READY once it waits.
   */
  private waitForAgent(session: string, kind: SessionKind, client: string, emit: EmitJobEvent, signal: AbortSignal): Promise<[Connection, number]> {
    return new Promise<[Connection, number]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(session);
        reject(new CofferError('STORAGE_UNAVAILABLE', `Client ${client}'s agent did not connect to this storage node within ${Math.round(CONNECT_TIMEOUT_MS / 1000)} s`, { hint: 'Check that the agent can reach the node\'s data address; the job is retried.' }));
      }, CONNECT_TIMEOUT_MS);
      const onAbort = () => {
        clearTimeout(timer);
        this.waiting.delete(session);
        reject(new CofferError('CANCELLED', 'The session was cancelled before the agent connected'));
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.set(session, {
        kind,
        client,
        attach: (c, id) => {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          resolve([c, id]);
        },
      });
      // The server starts the agent's job when it reads this (SESSION_READY).
      emit({ type: 'log', level: 'info', message: `session open: waiting for client ${client}'s agent`, data: { [SESSION_READY]: true } });
    });
  }
}

/** One backup session on one data connection. */
class BackupSession {
  private readonly spec: BackupSessionSpec;
  private readonly repo: Repository;
  private readonly store: LocalBackupStore;
  private readonly conn: Connection;
  private readonly parent: { id: string; snapshot: Snapshot } | undefined;
  private readonly emit: EmitJobEvent;
  private readonly service: NodeService;
  /** Blobs received in this session: their check, which resolves once they are verified and handed to the store. */
  private readonly received = new Map<string, Promise<void>>();
  private readonly openId: number;
  /** Trees of the parent the agent may read: the root, and the subtrees of trees it read. */
  private readonly readable = new Set<string>();
  private blobsReceived = 0;
  /** When the index was last brought up to date (the session's first question always does). */
  private indexRead = 0;

  constructor(spec: BackupSessionSpec, repo: Repository, store: LocalBackupStore, conn: Connection, openId: number, parent: { id: string; snapshot: Snapshot } | undefined, emit: EmitJobEvent, service: NodeService) {
    this.spec = spec;
    this.openId = openId;
    this.repo = repo;
    this.store = store;
    this.conn = conn;
    this.parent = parent;
    this.emit = emit;
    this.service = service;
    if (parent) this.readable.add(parent.snapshot.tree);
  }

  run(signal: AbortSignal): Promise<NodeBackupResult> {
    const { conn, repo } = this;
    return new Promise<NodeBackupResult>((resolve, reject) => {
      let done = false;
      const finish = (e: unknown, r?: NodeBackupResult) => {
        if (done) return;
        done = true;
        signal.removeEventListener('abort', onAbort);
        reader.stop();
        conn.socket.off('data', onData);
        if (e === undefined) {
          conn.socket.end();
          return resolve(r!);
        }
        // Keep what was stored usable for the next run (its index), then fail.
        conn.socket.destroy();
        void this.store.fail(e).finally(() => reject(e));
      };
      const onAbort = () => finish(new CofferError('CANCELLED', 'The session was cancelled'));
      signal.addEventListener('abort', onAbort, { once: true });
      let chain = Promise.resolve();
      const reader = new FrameReader((f) => {
        // Frames are handled in order, except that PUTs are checked concurrently (each
        // registers its blobs at once, so a later tree that names them waits for their check).
        if (f.type === T.PUT) {
          const work = this.put(f);
          chain = chain.then(() => work);
          chain.catch(() => {}); // a failure is reported by put() itself
          return;
        }
        chain = chain.then(() => this.handle(f)).then((r) => {
          if (r) finish(undefined, r);
        });
        chain.catch(() => {});
      }, (e) => finish(e));
      chain.catch(() => {});
      const onData = (b: Buffer) => reader.push(b);
      // The OPEN frame came before the session existed; answer it now.
      const hello: SessionHello = {
        protocol: DATA_PROTOCOL,
        kind: 'backup',
        client: this.spec.client,
        chunker: repo.config.chunker,
        imageChunkSize: repo.config.imageChunkSize,
        compressionLevel: repo.config.compressionLevel,
        chunkIdKey: repo.keys.chunkIdKey.toString('base64'),
        gearSeed: repo.keys.gearSeed.toString('base64'),
        ...(this.parent ? { parent: { id: this.parent.id, snapshot: this.parent.snapshot } } : {}),
      };
      conn.send(jsonFrame(T.HELLO, this.openId, hello));
      conn.socket.on('data', onData);
      conn.socket.once('close', () => finish(new CofferError('STORAGE_UNAVAILABLE', `The connection from client ${this.spec.client}'s agent ended before its snapshot was committed`, { hint: 'What was stored is kept for the next run; the job is retried.' })));
      // Every failure of a frame ends the session: a protocol error, a forged chunk.
      const fail = (f: Frame, e: unknown) => {
        const err = toCofferError(e);
        conn.send(errorFrame(f.id, err));
        finish(err);
      };
      this.onFailure = fail;
    });
  }

  private onFailure: (f: Frame, e: unknown) => void = () => {};

  private async handle(f: Frame): Promise<NodeBackupResult | undefined> {
    try {
      switch (f.type) {
        case T.HAVE: {
          const ids = parseIds(f.payload);
          if (Date.now() - this.indexRead >= INDEX_REFRESH_MS) {
            this.indexRead = Date.now();
            await this.store.refreshIndex();
          }
          const out = Buffer.alloc(ids.length);
          for (let i = 0; i < ids.length; i++) {
            const { type, id } = ids[i]!;
            out[i] = this.store.hasBlob(type, id) || this.received.has(type[0] + toHex(id)) ? 1 : 0;
          }
          this.conn.send(frame(T.HAVE_R, f.id, out));
          return undefined;
        }
        case T.TREE: {
          const [want] = parseIds(f.payload);
          const hex = toHex(want!.id);
          if (want!.type !== 'tree' || !this.readable.has(hex)) throw new CofferError('FORBIDDEN', `Tree ${hex.slice(0, 12)} is not a tree of this session's parent snapshot`);
          const bytes = await this.repo.readBlob('tree', want!.id);
          const tree = decodeTree(bytes);
          for (const n of tree.nodes) if (n.type === 'dir' && n.subtree) this.readable.add(n.subtree);
          this.conn.send(frame(T.BYTES, f.id, bytes));
          return undefined;
        }
        case T.COMMIT:
          return await this.commit(f);
        case T.ABORT: {
          const v = parseJson(f.payload, 'the abort');
          throw new CofferError('CANCELLED', `The agent gave up: ${String(v.reason ?? 'no reason given')}`);
        }
        default:
          throw new CofferError('PROTOCOL', `Message type ${f.type} is not allowed in a backup session`);
      }
    } catch (e) {
      this.onFailure(f, e);
      throw e;
    }
  }

  /** Checks a PUT's blobs against their ids (and trees against what they name), then stores them. */
  private put(f: Frame): Promise<void> {
    let blobs;
    try {
      blobs = parsePut(f.payload);
    } catch (e) {
      this.onFailure(f, e);
      return Promise.reject(e);
    }
    const checks: Array<Promise<BlobItem>> = [];
    for (const b of blobs) {
      const key = b.type[0] + toHex(b.id);
      const check = this.check(b.type, Buffer.from(b.id), b.rawLength, b.compressed, b.bytes);
      const checked = check.then(() => {});
      checked.catch(() => {}); // the failure is the PUT's, reported there
      this.received.set(key, checked);
      checks.push(check);
    }
    this.service.bytesInFlight += f.payload.length;
    const work = (async () => {
      const items = await Promise.all(checks);
      this.blobsReceived += items.length;
      await this.store.saveMany(items);
      this.conn.send(jsonFrame(T.OK, f.id, { blobs: items.length }));
    })().finally(() => {
      this.service.bytesInFlight -= f.payload.length;
    });
    work.catch((e) => this.onFailure(f, e));
    return work;
  }

  private async check(type: BlobType, id: Buffer, rawLength: number, compressed: boolean, bytes: Buffer): Promise<BlobItem> {
    let raw: Buffer;
    if (compressed) {
      try {
        // On this thread (see remote-store.ts compress): exactly rawLength bytes, or CORRUPT.
        raw = decompress(bytes, rawLength);
      } catch (e) {
        throw new CofferError('CORRUPT', `Chunk ${toHex(id).slice(0, 12)} from client ${this.spec.client} does not decompress: ${(e as Error).message}`);
      }
    } else raw = Buffer.from(bytes);
    if (raw.length !== rawLength) throw new CofferError('CORRUPT', `Chunk ${toHex(id).slice(0, 12)} from client ${this.spec.client} is ${raw.length} bytes, not the ${rawLength} announced`);
    if (!chunkId(this.repo.keys.chunkIdKey, raw).equals(id)) {
      const message = `Refused a forged chunk from client ${this.spec.client}: its content does not match its id ${toHex(id).slice(0, 12)}; nothing of it was stored and the session ended`;
      this.emit({ type: 'log', level: 'error', message, data: { client: this.spec.client, chunk: toHex(id), type } });
      throw new CofferError('CORRUPT', message, { hint: 'A client that sends content under another chunk\'s id is damaged or compromised: check the host.' });
    }
    if (type === 'tree') await this.checkTree(id, raw);
    return { type, id, raw };
  }

  /** A tree must parse, and name only chunks and subtrees that are stored or in this session. */
  private async checkTree(id: Buffer, raw: Buffer): Promise<void> {
    let tree;
    try {
      tree = decodeTree(raw);
    } catch (e) {
      throw new CofferError('CORRUPT', `Tree ${toHex(id).slice(0, 12)} from client ${this.spec.client} is not a valid tree: ${(e as Error).message}`);
    }
    const missing: string[] = [];
    const pending: Array<Promise<void>> = [];
    const need = (type: BlobType, hex: string) => {
      const r = this.received.get(type[0] + hex);
      if (r) pending.push(r);
      else if (!this.store.hasBlob(type, Buffer.from(hex, 'hex'))) missing.push(`${type} ${hex.slice(0, 12)}`);
    };
    for (const n of tree.nodes) {
      if (n.type === 'dir' && n.subtree) need('tree', n.subtree);
      if (n.type === 'file' && n.content) for (const c of n.content) need('data', c);
    }
    if (missing.length) {
      throw new CofferError('CORRUPT', `Tree ${toHex(id).slice(0, 12)} from client ${this.spec.client} names ${missing.length} blob(s) the repository does not hold: ${missing.slice(0, 5).join(', ')}`, { hint: 'Run a full backup (`coffer backup now --level full`); if it happens again, check the client.' });
    }
    await Promise.all(pending);
  }

  private async commit(f: Frame): Promise<NodeBackupResult> {
    const v = parseJson(f.payload, 'the snapshot');
    const snap = validateSnapshot(v, 'from the agent');
    const spec = this.spec;
    if (snap.host.hostname !== spec.client) throw new CofferError('FORBIDDEN', `Client ${spec.client} cannot commit a snapshot of host ${snap.host.hostname}`);
    const want = [...spec.tags].sort().join('\0');
    if ([...snap.tags].sort().join('\0') !== want) throw new CofferError('FORBIDDEN', `The snapshot's tags are not the ones the server gave this session (${spec.tags.join(', ')})`);
    if ((snap.parent ?? 'none') !== (spec.parent === 'none' ? 'none' : spec.parent)) throw new CofferError('FORBIDDEN', 'The snapshot names another parent than the one the server gave this session');
    // Everything received is checked and stored before the snapshot that names it.
    await Promise.all(this.received.values());
    const root = this.received.get('t' + snap.tree);
    if (!root && !this.store.hasBlob('tree', Buffer.from(snap.tree, 'hex'))) throw new CofferError('CORRUPT', `The snapshot's tree ${snap.tree.slice(0, 12)} is not stored`);
    await this.store.flush();
    // What was stored is the node's to say: the agent sent its snapshot before the last packs closed.
    if (snap.summary) snap.summary = { ...snap.summary, bytesStored: this.store.stats.bytesStored };
    const id = await this.store.commit(snap, {});
    const stats = this.store.stats;
    this.conn.send(jsonFrame(T.OK, f.id, { snapshot: id, stats }));
    this.emit({ type: 'log', level: 'info', message: `snapshot ${id.slice(0, 12)} of client ${spec.client} committed: ${this.blobsReceived} blob(s) received, ${stats.blobsNew} new, ${stats.bytesStored} bytes stored` });
    return { snapshot: id, bytesReceived: this.conn.bytesIn, blobsReceived: this.blobsReceived, blobsNew: stats.blobsNew, bytesNew: stats.bytesNew, bytesStored: stats.bytesStored, packs: stats.packs };
  }
}
