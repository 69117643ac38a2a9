// The plaintext binary form of one repository index file: which blobs each pack holds, and which
// older index files this one replaces. Encryption and authentication are the layer above; this
// decoder still treats its input as hostile, because a bug or a damaged-but-authentic file must
// end in a CORRUPT error, never in a crash, a hang or a giant allocation.
//
// Format, version 1 (docs/index.md, "Index file format"). DO NOT MODIFY without a version bump:
//   "CFIX" | u8 version | varint nSupersedes | nSupersedes × 32-byte id | varint nPacks | packs
//   pack:  32-byte pack id | varint packSize | varint nEntries | entries
//   entry: u8 flags (bit 0 tree, bit 1 compressed) | 32-byte blob id
//          | varint offset | varint length | varint rawLength | varint nonceIndex
// Varints are unsigned LEB128, minimal, at most 5 bytes, value ≤ 2^32 − 1.

import { CofferError } from '../../core/errors.ts';

export type BlobType = 'data' | 'tree';

export interface IndexEntry {
  type: BlobType;
  /** 32-byte blob id. */
  id: Buffer;
  offset: number;
  length: number;
  rawLength: number;
  compressed: boolean;
  nonceIndex: number;
}

export interface IndexPack {
  /** 32-byte pack id. */
  packId: Buffer;
  packSize: number;
  entries: IndexEntry[];
}

export interface IndexFileContent {
  /** Ids of the index files this one replaces. */
  supersedes: Buffer[];
  packs: IndexPack[];
}

export const INDEX_FILE_MAGIC = 'CFIX';
export const INDEX_FILE_VERSION = 1;
/** Every number in the format (sizes, offsets, lengths, nonce indexes) fits in 32 bits. */
export const MAX_U32 = 0xffffffff;

const ID_SIZE = 32;
const FLAG_TREE = 1;
const FLAG_COMPRESSED = 2;
const MIN_PACK_BYTES = ID_SIZE + 1 + 1;
const MIN_ENTRY_BYTES = 1 + ID_SIZE + 4;

/**
 * A set of 32-byte ids (with a small tag, e.g. the blob type) for duplicate checks: open
 * addressing over typed arrays, sized once for the number of ids, so that checking a file of a
 * million entries allocates no per-entry objects.
 */
class IdSet {
  private readonly keys: Buffer;
  private readonly tags: Uint8Array;
  private readonly words: Int32Array;
  private readonly table: Int32Array;
  private readonly mask: number;
  private n = 0;

  constructor(capacity: number) {
    let size = 16;
    while (size < capacity * 2) size *= 2;
    this.table = new Int32Array(size);
    this.mask = size - 1;
    this.keys = Buffer.allocUnsafe(Math.max(1, capacity) * ID_SIZE);
    this.tags = new Uint8Array(Math.max(1, capacity));
    this.words = new Int32Array(Math.max(1, capacity));
  }

  /** Adds (id, tag); false if it was already there. */
  add(id: Uint8Array, off: number, tag: number): boolean {
    const word = ((id[off + 4]! << 24) | (id[off + 5]! << 16) | (id[off + 6]! << 8) | id[off + 7]!) ^ tag;
    let s = word & this.mask;
    for (;;) {
      const v = this.table[s]!;
      if (v === 0) break;
      if (this.words[v - 1] === word) {
        const k = (v - 1) * ID_SIZE;
        if (this.tags[v - 1] === tag && this.keys.compare(id, off, off + ID_SIZE, k, k + ID_SIZE) === 0) return false;
      }
      s = (s + 1) & this.mask;
    }
    for (let i = 0; i < ID_SIZE; i++) this.keys[this.n * ID_SIZE + i] = id[off + i]!;
    this.tags[this.n] = tag;
    this.words[this.n] = word;
    this.table[s] = ++this.n;
    return true;
  }
}

function isU32(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 0 && (v as number) <= MAX_U32;
}

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

/**
 * Checks what an index file may hold; shared by the encoder (a writer bug must not reach storage)
 * and by ChunkIndex.add(). Returns the reason it is invalid, or undefined.
 */
export function invalidPack(p: IndexPack): string | undefined {
  if (!(p.packId instanceof Uint8Array) || p.packId.length !== ID_SIZE) return 'a pack id is not 32 bytes';
  if (!isU32(p.packSize)) return `pack size ${String(p.packSize)} is not an integer in 0..2^32-1`;
  if (!Array.isArray(p.entries)) return 'a pack has no entry list';
  for (const e of p.entries) {
    if (e.type !== 'data' && e.type !== 'tree') return `blob type ${String(e.type)} is unknown`;
    if (!(e.id instanceof Uint8Array) || e.id.length !== ID_SIZE) return 'a blob id is not 32 bytes';
    if (!isU32(e.offset) || !isU32(e.length) || !isU32(e.rawLength) || !isU32(e.nonceIndex)) return 'a blob offset, length, raw length or nonce index is not an integer in 0..2^32-1';
    if (e.offset + e.length > p.packSize) return `a blob at ${e.offset}+${e.length} runs past the end of its ${p.packSize}-byte pack`;
  }
  return undefined;
}

/** Encodes one index file. Throws INTERNAL for content the decoder would reject (a writer bug). */
export function encodeIndexFile(c: IndexFileContent): Buffer {
  const bad = (why: string): never => {
    throw new CofferError('INTERNAL', `Cannot encode an index file: ${why}`, { hint: 'This is a bug in Coffer. Please report it.' });
  };
  const seenSuper = new IdSet(c.supersedes.length);
  for (const s of c.supersedes) {
    if (!(s instanceof Uint8Array) || s.length !== ID_SIZE) bad('a superseded index id is not 32 bytes');
    if (!seenSuper.add(s, 0, 0)) bad('a superseded index id is listed twice');
  }
  let size = 4 + 1 + varintSize(c.supersedes.length) + c.supersedes.length * ID_SIZE + varintSize(c.packs.length);
  const seenPacks = new IdSet(c.packs.length);
  for (const p of c.packs) {
    const why = invalidPack(p);
    if (why) bad(why);
    if (!seenPacks.add(p.packId, 0, 0)) bad('a pack is listed twice');
    const seenBlobs = new IdSet(p.entries.length);
    size += ID_SIZE + varintSize(p.packSize) + varintSize(p.entries.length);
    for (const e of p.entries) {
      if (!seenBlobs.add(e.id, 0, e.type === 'tree' ? 1 : 0)) bad('a pack lists the same blob twice');
      size += 1 + ID_SIZE + varintSize(e.offset) + varintSize(e.length) + varintSize(e.rawLength) + varintSize(e.nonceIndex);
    }
  }
  const out = Buffer.allocUnsafe(size);
  let pos = out.write(INDEX_FILE_MAGIC, 0, 'latin1');
  out[pos++] = INDEX_FILE_VERSION;
  const varint = (v: number) => {
    while (v >= 0x80) {
      out[pos++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    out[pos++] = v;
  };
  const id = (b: Uint8Array) => {
    out.set(b, pos);
    pos += ID_SIZE;
  };
  varint(c.supersedes.length);
  for (const s of c.supersedes) id(s);
  varint(c.packs.length);
  for (const p of c.packs) {
    id(p.packId);
    varint(p.packSize);
    varint(p.entries.length);
    for (const e of p.entries) {
      out[pos++] = (e.type === 'tree' ? FLAG_TREE : 0) | (e.compressed ? FLAG_COMPRESSED : 0);
      id(e.id);
      varint(e.offset);
      varint(e.length);
      varint(e.rawLength);
      varint(e.nonceIndex);
    }
  }
  if (pos !== size) bad(`size mismatch (${pos} != ${size})`);
  return out;
}

/**
 * Decodes one index file, strictly: anything structurally wrong is CORRUPT. Counts are checked
 * against the bytes that remain before anything is allocated for them. Returned ids are views of
 * one private copy of the input.
 */
export function decodeIndexFile(data: Uint8Array): IndexFileContent {
  const corrupt = (why: string, at: number): never => {
    throw new CofferError('CORRUPT', `Cannot read an index file: ${why} (at byte ${at} of ${data.length})`, {
      hint: 'The index file is damaged. Run `coffer repo check`; `coffer repo repair index` recreates the index from the packs.',
    });
  };
  if (data.length < 5 || Buffer.from(data.buffer, data.byteOffset, 4).toString('latin1') !== INDEX_FILE_MAGIC) corrupt('it does not start with "CFIX"', 0);
  if (data[4] !== INDEX_FILE_VERSION) {
    throw new CofferError('UNSUPPORTED', `Cannot read an index file of format version ${data[4]}: this Coffer reads version ${INDEX_FILE_VERSION}`, { hint: 'Use a Coffer release that supports this repository.' });
  }
  const buf = Buffer.from(data); // private copy: callers may reuse their buffer
  const end = buf.length;
  let pos = 5;
  const varint = (): number => {
    const start = pos;
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 5; i++) {
      if (pos >= end) return corrupt('it ends inside a number', start);
      const b = buf[pos++]!;
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (b === 0 && i > 0) corrupt('a number is not minimally encoded', start);
        if (v > MAX_U32) corrupt('a number is larger than 2^32-1', start);
        return v;
      }
      mul *= 128;
    }
    return corrupt('a number is longer than 5 bytes', start);
  };
  const count = (minBytes: number, what: string): number => {
    const at = pos;
    const n = varint();
    if (n * minBytes > end - pos) corrupt(`it claims ${n} ${what}, more than its remaining ${end - pos} bytes can hold`, at);
    return n;
  };
  const id = (): Buffer => {
    if (end - pos < ID_SIZE) corrupt('it ends inside an id', pos);
    const b = buf.subarray(pos, pos + ID_SIZE);
    pos += ID_SIZE;
    return b;
  };

  const supersedes: Buffer[] = [];
  const nSuper = count(ID_SIZE, 'superseded index files');
  const seenSuper = new IdSet(nSuper);
  for (let i = 0; i < nSuper; i++) {
    const at = pos;
    const s = id();
    if (!seenSuper.add(buf, at, 0)) corrupt('a superseded index id is listed twice', at);
    supersedes.push(s);
  }
  const packs: IndexPack[] = [];
  const nPacks = count(MIN_PACK_BYTES, 'packs');
  const seenPacks = new IdSet(nPacks);
  for (let i = 0; i < nPacks; i++) {
    const at = pos;
    const packId = id();
    if (!seenPacks.add(buf, at, 0)) corrupt('a pack is listed twice', at);
    const packSize = varint();
    const nEntries = count(MIN_ENTRY_BYTES, 'blobs');
    const entries: IndexEntry[] = [];
    const seenBlobs = new IdSet(nEntries);
    for (let j = 0; j < nEntries; j++) {
      const eat = pos;
      if (pos >= end) corrupt('it ends inside a blob entry', pos);
      const flags = buf[pos++]!;
      if (flags & ~(FLAG_TREE | FLAG_COMPRESSED)) corrupt(`unknown blob flags 0x${flags.toString(16)}`, eat);
      const blobId = id();
      const offset = varint();
      const length = varint();
      const rawLength = varint();
      const nonceIndex = varint();
      if (offset + length > packSize) corrupt(`a blob at ${offset}+${length} runs past the end of its ${packSize}-byte pack`, eat);
      const type: BlobType = flags & FLAG_TREE ? 'tree' : 'data';
      if (!seenBlobs.add(buf, eat + 1, flags & FLAG_TREE)) corrupt('a pack lists the same blob twice', eat);
      entries.push({ type, id: blobId, offset, length, rawLength, compressed: (flags & FLAG_COMPRESSED) !== 0, nonceIndex });
    }
    packs.push({ packId, packSize, entries });
  }
  if (pos !== end) corrupt(`${end - pos} bytes of trailing garbage`, pos);
  return { supersedes, packs };
}

/**
 * Index files are written in parts of about this many blob entries (~2.5 MiB each), so that no
 * reader ever has to hold one huge index file in memory.
 */
export const INDEX_FILE_ENTRIES = 50_000;

/** Packs in runs of at most `max` entries each (a pack with more is a run of its own). */
export function splitPacks(packs: readonly IndexPack[], max: number): IndexPack[][] {
  const out: IndexPack[][] = [];
  let cur: IndexPack[] = [];
  let n = 0;
  for (const p of packs) {
    if (cur.length && n + p.entries.length > max) {
      out.push(cur);
      cur = [];
      n = 0;
    }
    cur.push(p);
    n += p.entries.length;
  }
  if (cur.length || out.length === 0) out.push(cur);
  return out;
}
