// The data protocol between an agent and a storage node (docs/server.md "Storage nodes"): binary
// frames over one TLS connection that the agent opens to the node for one job (a session the
// server set up on the node beforehand). Control messages are JSON; chunk ids, chunks and trees
// are bytes, so that data is never base64'd.
//
//   frame   u32 BE length of what follows | u8 type | u32 BE request id | payload
//
// The agent sends requests (type < 128) with its own request ids; the node answers each with one
// reply (type >= 128) carrying the same id, in any order. A reply of type ERR ends the request
// with an error; the node closes the connection after an error that ends the session.

import { CofferError, ERROR_CODES, type ErrorCode } from '../core/errors.ts';

export const DATA_PROTOCOL = 1;

/** The largest frame either side accepts: a PUT batch is at most a few MiB, a tree can be large. */
export const MAX_FRAME = 256 << 20;

export const T = {
  /** json { protocol, session } → HELLO */
  OPEN: 1,
  /** n × (u8 type, 32-byte id) → HAVE_R: one byte per id, 1 when the node has it */
  HAVE: 2,
  /** n × (u8 type, 32-byte id, u32 raw length, u32 length, u8 compressed, bytes) → OK { stored } */
  PUT: 3,
  /**
   * (u8 type, 32-byte id) of a tree of the parent snapshot → BYTES: the tree's plaintext; in a
   * restore session, of a tree of the snapshot restored → TREE_R
   */
  TREE: 4,
  /** json snapshot → OK { snapshot, stats } */
  COMMIT: 5,
  /** json { reason }: the agent gives up; no reply */
  ABORT: 6,
  /** json {} → OK { id, snapshot }: the snapshot a restore session reads */
  SNAPSHOT: 7,
  /**
   * n × (u8 type, 32-byte id) of data chunks named by trees served in this session → BLOBS: each
   * blob as (u32 raw length, u32 length, u8 form, bytes), in the order asked; form 0 plain,
   * 1 zstd, 2 an error ({ code, message } JSON: that chunk cannot be read, the others can)
   */
  READ: 8,

  HELLO: 128,
  OK: 129,
  HAVE_R: 130,
  BYTES: 131,
  BLOBS: 132,
  ERR: 133,
  /**
   * A restore session's tree: u32 tree length | the tree's plaintext | u32 raw length of every
   * data chunk its files name, in order (NO_LENGTH: not in the repository's index)
   */
  TREE_R: 134,
} as const;

/** The length TREE_R gives a chunk the repository's index does not know. */
export const NO_LENGTH = 0xffff_ffff;

/** Forms of a blob in a BLOBS reply. */
export const BLOB_FORM = { plain: 0, zstd: 1, error: 2 } as const;

export const ID_SIZE = 32;
export const BLOB_TYPES = ['data', 'tree'] as const;
export type WireBlobType = (typeof BLOB_TYPES)[number];

export interface Frame {
  type: number;
  id: number;
  payload: Buffer;
}

/** Encodes one frame; the payload is copied once into the frame. */
export function frame(type: number, id: number, payload: Uint8Array | readonly Uint8Array[]): Buffer {
  const parts = payload instanceof Uint8Array ? [payload] : payload;
  const length = parts.reduce((n, p) => n + p.length, 0);
  const out = Buffer.allocUnsafe(9 + length);
  out.writeUInt32BE(5 + length, 0);
  out[4] = type;
  out.writeUInt32BE(id >>> 0, 5);
  let at = 9;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export const jsonFrame = (type: number, id: number, value: unknown): Buffer => frame(type, id, Buffer.from(JSON.stringify(value), 'utf8'));

export function errorFrame(id: number, e: CofferError): Buffer {
  return jsonFrame(T.ERR, id, { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) });
}

/** The CofferError an ERR frame carries. */
export function errorOf(payload: Buffer): CofferError {
  try {
    const v = JSON.parse(payload.toString('utf8')) as { code?: string; message?: string; hint?: string };
    const code: ErrorCode = (ERROR_CODES as readonly string[]).includes(v.code ?? '') ? (v.code as ErrorCode) : 'INTERNAL';
    return new CofferError(code, String(v.message ?? 'the storage node refused the request'), v.hint ? { hint: v.hint } : {});
  } catch {
    return new CofferError('PROTOCOL', 'The storage node sent an error that does not parse');
  }
}

export function parseJson(payload: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new CofferError('PROTOCOL', `Cannot read ${what}: it is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CofferError('PROTOCOL', `Cannot read ${what}: not a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * Splits a byte stream into frames. A frame longer than MAX_FRAME, or shorter than its header,
 * is a protocol error: the stream is not ours, or it is damaged.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private readonly onFrame: (f: Frame) => void;
  private readonly onError: (e: CofferError) => void;
  private stopped = false;

  constructor(onFrame: (f: Frame) => void, onError: (e: CofferError) => void) {
    this.onFrame = onFrame;
    this.onError = onError;
  }

  push(chunk: Buffer): void {
    if (this.stopped) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (!this.stopped && this.buffered >= 4) {
      const head = this.peek(4);
      const length = head.readUInt32BE(0);
      if (length < 5 || length > MAX_FRAME) {
        this.stopped = true;
        this.onError(new CofferError('PROTOCOL', `A frame of ${length} bytes is not allowed (5 to ${MAX_FRAME}): the other side does not speak the Coffer data protocol`));
        return;
      }
      if (this.buffered < 4 + length) return;
      const all = this.take(4 + length);
      this.onFrame({ type: all[4]!, id: all.readUInt32BE(5), payload: all.subarray(9) });
    }
  }

  stop(): void {
    this.stopped = true;
    this.chunks = [];
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!;
    const b = Buffer.concat(this.chunks);
    this.chunks = [b];
    return b;
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const b = Buffer.concat(this.chunks);
      out = b.subarray(0, n);
      this.chunks = b.length > n ? [b.subarray(n)] : [];
    }
    this.buffered -= n;
    return out;
  }
}

/** The (type, id) pairs of a HAVE or READ payload. */
export function parseIds(payload: Buffer): Array<{ type: WireBlobType; id: Buffer }> {
  if (payload.length % (1 + ID_SIZE) !== 0) throw new CofferError('PROTOCOL', `A list of ids of ${payload.length} bytes is not a whole number of ${1 + ID_SIZE}-byte entries`);
  const out: Array<{ type: WireBlobType; id: Buffer }> = [];
  for (let at = 0; at < payload.length; at += 1 + ID_SIZE) out.push({ type: blobType(payload[at]!), id: payload.subarray(at + 1, at + 1 + ID_SIZE) });
  return out;
}

export function encodeIds(items: ReadonlyArray<{ type: WireBlobType; id: Uint8Array }>): Buffer {
  const out = Buffer.allocUnsafe(items.length * (1 + ID_SIZE));
  items.forEach((it, i) => {
    out[i * (1 + ID_SIZE)] = BLOB_TYPES.indexOf(it.type);
    out.set(it.id, i * (1 + ID_SIZE) + 1);
  });
  return out;
}

function blobType(b: number): WireBlobType {
  const t = BLOB_TYPES[b];
  if (!t) throw new CofferError('PROTOCOL', `Blob type ${b} is not known (0 data, 1 tree)`);
  return t;
}

export interface WireBlob {
  type: WireBlobType;
  id: Buffer;
  rawLength: number;
  compressed: boolean;
  bytes: Buffer;
}

/** The blobs of a PUT payload: each (u8 type, id, u32 raw length, u32 length, u8 compressed, bytes). */
export function parsePut(payload: Buffer): WireBlob[] {
  const out: WireBlob[] = [];
  let at = 0;
  while (at < payload.length) {
    if (payload.length - at < 1 + ID_SIZE + 9) throw new CofferError('PROTOCOL', 'A PUT ends inside a blob header');
    const type = blobType(payload[at]!);
    const id = payload.subarray(at + 1, at + 1 + ID_SIZE);
    at += 1 + ID_SIZE;
    const rawLength = payload.readUInt32BE(at);
    const length = payload.readUInt32BE(at + 4);
    const compressed = payload[at + 8] === 1;
    at += 9;
    if (payload.length - at < length) throw new CofferError('PROTOCOL', 'A PUT ends inside a blob');
    out.push({ type, id, rawLength, compressed, bytes: payload.subarray(at, at + length) });
    at += length;
  }
  return out;
}

export function blobHeader(type: WireBlobType, id: Uint8Array, rawLength: number, length: number, compressed: boolean): Buffer {
  const h = Buffer.allocUnsafe(1 + ID_SIZE + 9);
  h[0] = BLOB_TYPES.indexOf(type);
  h.set(id, 1);
  h.writeUInt32BE(rawLength, 1 + ID_SIZE);
  h.writeUInt32BE(length, 1 + ID_SIZE + 4);
  h[1 + ID_SIZE + 8] = compressed ? 1 : 0;
  return h;
}

/** One blob of a BLOBS reply: its bytes as sent (plain or zstd), or why the node could not read it. */
export type ServedBlob = { rawLength: number; compressed: boolean; bytes: Buffer; error?: undefined } | { error: { code: string; message: string } };

/** A BLOBS entry's header (the bytes follow it). */
export function servedHeader(rawLength: number, length: number, form: number): Buffer {
  const h = Buffer.allocUnsafe(9);
  h.writeUInt32BE(rawLength, 0);
  h.writeUInt32BE(length, 4);
  h[8] = form;
  return h;
}

/** The blobs of a BLOBS payload; there must be exactly `count`. */
export function parseBlobs(payload: Buffer, count: number): ServedBlob[] {
  const out: ServedBlob[] = [];
  let at = 0;
  while (at < payload.length) {
    if (payload.length - at < 9) throw new CofferError('PROTOCOL', 'A BLOBS reply ends inside a blob header');
    const rawLength = payload.readUInt32BE(at);
    const length = payload.readUInt32BE(at + 4);
    const form = payload[at + 8]!;
    at += 9;
    if (payload.length - at < length) throw new CofferError('PROTOCOL', 'A BLOBS reply ends inside a blob');
    const bytes = payload.subarray(at, at + length);
    at += length;
    if (form === BLOB_FORM.error) {
      const e = errorOf(bytes);
      out.push({ error: { code: e.code, message: e.message } });
    } else if (form === BLOB_FORM.plain || form === BLOB_FORM.zstd) out.push({ rawLength, compressed: form === BLOB_FORM.zstd, bytes });
    else throw new CofferError('PROTOCOL', `A BLOBS reply has a blob of form ${form} (0 plain, 1 zstd, 2 error)`);
  }
  if (out.length !== count) throw new CofferError('PROTOCOL', `The storage node answered ${count} chunk id(s) with ${out.length} blob(s)`);
  return out;
}
