// A remote agent's restore source (jobs/restore-source.ts): restore() runs here with all of its
// safety (host pre-flight, overwrite modes, include/exclude, metadata, dry run), but reads the
// snapshot, its trees and its data chunks from a storage node's restore session
// (node/restore-session.ts) instead of a repository. The agent holds the chunk-id key only (from
// the session's hello): every tree and every chunk is checked against its id before it is used,
// so a node that sends other bytes (damaged, or not the node it claims to be) gets nothing
// written. What the node cannot read comes back as that chunk's error: the files needing it fail
// with a message naming it. Other copies (the local source's alternates) are not asked from here:
// the server re-runs the restore from the next copy of the image.

import { CofferError, throwIfAborted, type ErrorCode } from '../core/errors.ts';
import { decompress } from '../engine/compress.ts';
import { chunkId, fromHex } from '../engine/hash.ts';
import type { BlobResult, ReadBlobsOptions } from '../jobs/read-blobs.ts';
import type { RestoreSource, RestoreTrees } from '../jobs/restore-source.ts';
import { validateSnapshot, type Snapshot } from '../repository/snapshot.ts';
import { decodeTree, type Tree } from '../repository/tree.ts';
import type { CallOptions } from '../storage/backend.ts';
import type { NodeClient } from './client.ts';
import type { RestoreHello } from './restore-session.ts';
import { DATA_PROTOCOL, NO_LENGTH, T, encodeIds, parseBlobs, parseJson } from './wire.ts';

/** A data chunk the node can give: its id and its plaintext length (from the tree that names it). */
export interface RemoteBlob {
  id: Buffer;
  rawLength: number;
}

/** Error codes that mean a chunk is damaged or missing (restore fails its files, not the restore). */
const DAMAGE_CODES: readonly ErrorCode[] = ['CORRUPT', 'NOT_FOUND', 'INVALID_RANGE', 'UNSUPPORTED'];

/** Plaintext bytes asked for in one READ at most (the node serves up to MAX_READ_BYTES). */
const READ_BYTES = 4 << 20;
/** Chunk ids in one READ at most. */
const READ_IDS = 8192;
/** Bytes in flight when the restore does not say (RESTORE_MAX_IN_FLIGHT). */
const DEFAULT_IN_FLIGHT = 32 << 20;

/** Opens a restore session on the node; the hello gives the chunk-id key. */
export async function openRestoreSession(client: NodeClient, session: string, options: CallOptions = {}): Promise<RestoreHello> {
  throwIfAborted(options.signal);
  const reply = await client.request(T.OPEN, Buffer.from(JSON.stringify({ protocol: DATA_PROTOCOL, session, kind: 'restore' })));
  const v = parseJson(reply.payload, 'the storage node\'s hello');
  if (v.protocol !== DATA_PROTOCOL) throw new CofferError('PROTOCOL', `The storage node speaks data protocol ${String(v.protocol)}, this agent ${DATA_PROTOCOL}`, { hint: 'Run the same Coffer version on agents and storage nodes.' });
  if (v.kind !== 'restore') throw new CofferError('PROTOCOL', `The storage node opened a ${String(v.kind)} session where a restore was expected`);
  if (typeof v.chunkIdKey !== 'string' || Buffer.from(v.chunkIdKey, 'base64').length !== 32) throw new CofferError('PROTOCOL', 'The storage node\'s hello has no chunk-id key');
  return { protocol: DATA_PROTOCOL, kind: 'restore', client: String(v.client), chunkIdKey: v.chunkIdKey };
}

export class RemoteRestoreSource implements RestoreSource<RemoteBlob> {
  readonly chunkIdKey: Buffer;
  private readonly client: NodeClient;
  private readonly node: string;
  /** Chunks named by the trees read so far, by id (hex). */
  private readonly blobs = new Map<string, RemoteBlob>();

  /** `node`: the node's name, for messages. */
  constructor(client: NodeClient, hello: RestoreHello, node: string) {
    this.client = client;
    this.node = node;
    this.chunkIdKey = Buffer.from(hello.chunkIdKey, 'base64');
  }

  /** Bytes received from the node (framing included). */
  get bytesReceived(): number {
    return this.client.bytesReceived;
  }

  /** The snapshot the session serves; it must be `id`. */
  async snapshot(id: string, options: CallOptions = {}): Promise<Snapshot> {
    throwIfAborted(options.signal);
    const reply = await this.client.request(T.SNAPSHOT, Buffer.from('{}'));
    const v = parseJson(reply.payload, 'the snapshot from the storage node');
    if (v.id !== id) throw new CofferError('PROTOCOL', `The storage node serves snapshot ${String(v.id).slice(0, 12)}, not ${id.slice(0, 12)}`, { hint: 'The server opened the session for another restore; the job is retried.' });
    return validateSnapshot(v.snapshot, id);
  }

  /** Nothing to register here (the node did); another restore's young temporary files are kept. */
  async begin(): Promise<{ othersMayWrite: boolean }> {
    return { othersMayWrite: true };
  }

  async load(): Promise<void> {}

  locate(id: string): RemoteBlob | undefined {
    return this.blobs.get(id);
  }

  rawLength(at: RemoteBlob): number {
    return at.rawLength;
  }

  packOf(): undefined {
    return undefined;
  }

  describe(): string {
    return `on storage node ${this.node}`;
  }

  /** No other copy is known here: the node tried every copy its repository has. */
  readFailed(): undefined {
    return undefined;
  }

  async end(): Promise<void> {
    this.blobs.clear();
  }

  openTrees(options: { signal?: AbortSignal }): RestoreTrees {
    return { get: (id) => this.fetchTree(id, options.signal) };
  }

  /**
   * Asks for the chunks in READs of up to READ_BYTES, several in flight (as many as the
   * restore's maxInFlight allows), and hands each reply's chunks on once they are verified.
   */
  async readData(at: readonly RemoteBlob[], deliver: (indexes: number[], results: BlobResult[]) => Promise<void>, options: ReadBlobsOptions): Promise<void> {
    const batches: number[][] = [];
    let cur: number[] = [];
    let bytes = 0;
    for (let i = 0; i < at.length; i++) {
      const n = at[i]!.rawLength;
      if (cur.length && (bytes + n > READ_BYTES || cur.length >= READ_IDS)) {
        batches.push(cur);
        cur = [];
        bytes = 0;
      }
      cur.push(i);
      bytes += n;
    }
    if (cur.length) batches.push(cur);
    const lanes = Math.max(1, Math.floor((options.maxInFlight ?? DEFAULT_IN_FLIGHT) / READ_BYTES));
    let next = 0;
    const lane = async () => {
      while (next < batches.length) {
        throwIfAborted(options.signal);
        const indexes = batches[next++]!;
        const results = await this.read(indexes.map((i) => at[i]!));
        await deliver(indexes, results);
      }
    };
    await Promise.all(Array.from({ length: Math.min(lanes, batches.length) }, lane));
  }

  /** One READ: each chunk's verified plaintext, or why it cannot be had. */
  private async read(want: RemoteBlob[]): Promise<BlobResult[]> {
    const reply = await this.client.request(T.READ, encodeIds(want.map((b) => ({ type: 'data' as const, id: b.id }))));
    if (reply.type !== T.BLOBS) throw new CofferError('PROTOCOL', `The storage node answered a READ with message type ${reply.type}`);
    const served = parseBlobs(reply.payload, want.length);
    return served.map((s, i): BlobResult => {
      const b = want[i]!;
      const name = b.id.toString('hex').slice(0, 12);
      // The node's word for damage (CORRUPT, NOT_FOUND, ...) stays; anything else counts as damage too.
      if (s.error) return { error: new CofferError(DAMAGE_CODES.includes(s.error.code as ErrorCode) ? (s.error.code as ErrorCode) : 'CORRUPT', s.error.message) };
      let raw: Buffer;
      try {
        raw = s.compressed ? decompress(s.bytes, b.rawLength) : s.bytes;
      } catch (e) {
        return { error: new CofferError('CORRUPT', `chunk ${name} from storage node ${this.node} does not decompress: ${(e as Error).message}`) };
      }
      // The node decrypted it; this agent checks it is the chunk the snapshot names.
      if (raw.length !== b.rawLength || !chunkId(this.chunkIdKey, raw).equals(b.id)) {
        return { error: new CofferError('CORRUPT', `chunk ${name} from storage node ${this.node} does not match its id: the node sent other content`) };
      }
      return { data: raw };
    });
  }

  /** A tree of the snapshot, checked against its id; the lengths of the chunks it names are kept. */
  private async fetchTree(id: string, signal: AbortSignal | undefined): Promise<Tree> {
    throwIfAborted(signal);
    const want = fromHex(id);
    const reply = await this.client.request(T.TREE, encodeIds([{ type: 'tree', id: want }]));
    const p = reply.payload;
    if (reply.type !== T.TREE_R || p.length < 4 || p.length < 4 + p.readUInt32BE(0)) throw new CofferError('PROTOCOL', `The storage node answered tree ${id.slice(0, 12)} with a malformed reply`);
    const bytes = p.subarray(4, 4 + p.readUInt32BE(0));
    if (!chunkId(this.chunkIdKey, bytes).equals(want)) throw new CofferError('CORRUPT', `Tree ${id.slice(0, 12)} from storage node ${this.node} does not match its id: the node sent other content`);
    const tree = decodeTree(bytes);
    let at = 4 + bytes.length;
    const lengths: Array<[string, number]> = [];
    for (const n of tree.nodes) {
      if (n.type !== 'file' || !n.content) continue;
      for (const c of n.content) {
        if (at + 4 > p.length) throw new CofferError('PROTOCOL', `The storage node sent tree ${id.slice(0, 12)} without the lengths of its chunks`);
        lengths.push([c, p.readUInt32BE(at)]);
        at += 4;
      }
    }
    if (at !== p.length) throw new CofferError('PROTOCOL', `The storage node sent tree ${id.slice(0, 12)} with more lengths than it has chunks`);
    // A length the node got wrong fails that chunk's check (and the file's size check), never a byte.
    for (const [c, length] of lengths) if (length !== NO_LENGTH && !this.blobs.has(c)) this.blobs.set(c, { id: fromHex(c), rawLength: length });
    return tree;
  }
}
