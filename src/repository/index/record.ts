// The fixed-size record that the local chunk index stores for one (blob, pack) location, shared
// by the cache file, the in-memory overlay and the external sort. Records sort by blob id, then
// type (data before tree), then pack; within a cache file pack numbers follow pack id order, so
// that order is also (id, type, pack id).
//
// Layout (53 bytes, little-endian):
//   0 id[32] | 32 packNo u32 | 36 offset u32 | 40 length u32 | 44 rawLength u32
//   | 48 nonceIndex u32 | 52 flags u8

import type { BlobType, IndexEntry } from './index-file.ts';

export const RECORD_SIZE = 53;
export const ID_SIZE = 32;
export const REC_PACK = 32;
export const REC_OFFSET = 36;
export const REC_LENGTH = 40;
export const REC_RAW = 44;
export const REC_NONCE = 48;
export const REC_FLAGS = 52;

export const FLAG_TREE = 1;
export const FLAG_COMPRESSED = 2;
/**
 * Added by this process (ChunkIndex.add) and not yet confirmed by any index file. Such a record
 * is only trusted by the process that wrote it: its pack may never get an index file if that
 * process dies, and a later backup must not deduplicate against it.
 */
export const FLAG_SESSION = 4;
/** In the overlay only: this record replaces a session record of the base with the same key. */
export const FLAG_SHADOW = 8;
export const PERSISTED_FLAGS = FLAG_TREE | FLAG_COMPRESSED | FLAG_SESSION;

/** Pack table entry in a cache file: id[32] | size u32 | flags u8 | 3 zero bytes. */
export const PACK_RECORD_SIZE = 40;
/** The pack is listed by an index file the cache contains. */
export const PACK_FILE_LISTED = 1;
/** Some session record refers to the pack. */
export const PACK_SESSION_REF = 2;

/** First four bytes of an id as an unsigned big-endian number: decides almost every comparison. */
export function idWord(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** Compares two 32-byte ids. */
export function compareIdAt(a: Uint8Array, ao: number, b: Uint8Array, bo: number): number {
  for (let i = 0; i < ID_SIZE; i += 4) {
    const x = idWord(a, ao + i);
    const y = idWord(b, bo + i);
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

export function typeFlag(type: BlobType): number {
  return type === 'tree' ? FLAG_TREE : 0;
}

export function writeRecord(buf: Buffer, pos: number, id: Uint8Array, packNo: number, e: IndexEntry, flags: number): void {
  buf.set(id, pos);
  buf.writeUInt32LE(packNo, pos + REC_PACK);
  buf.writeUInt32LE(e.offset, pos + REC_OFFSET);
  buf.writeUInt32LE(e.length, pos + REC_LENGTH);
  buf.writeUInt32LE(e.rawLength, pos + REC_RAW);
  buf.writeUInt32LE(e.nonceIndex, pos + REC_NONCE);
  buf[pos + REC_FLAGS] = typeFlag(e.type) | (e.compressed ? FLAG_COMPRESSED : 0) | flags;
}

/** The entry a record describes, with its own copy of the id. */
export function entryFromRecord(buf: Buffer, pos: number): IndexEntry {
  const flags = buf[pos + REC_FLAGS]!;
  return {
    type: flags & FLAG_TREE ? 'tree' : 'data',
    id: Buffer.from(buf.subarray(pos, pos + ID_SIZE)),
    offset: buf.readUInt32LE(pos + REC_OFFSET),
    length: buf.readUInt32LE(pos + REC_LENGTH),
    rawLength: buf.readUInt32LE(pos + REC_RAW),
    compressed: (flags & FLAG_COMPRESSED) !== 0,
    nonceIndex: buf.readUInt32LE(pos + REC_NONCE),
  };
}

/**
 * Of two records with the same (id, type, pack), the one to keep: one confirmed by an index file
 * over a session one, else the one whose remaining bytes are smaller. Deterministic whatever
 * order the copies arrive in. Returns true if `a` wins.
 */
export function firstWins(a: Buffer, ap: number, b: Buffer, bp: number): boolean {
  const as = a[ap + REC_FLAGS]! & FLAG_SESSION;
  const bs = b[bp + REC_FLAGS]! & FLAG_SESSION;
  if (as !== bs) return as === 0;
  return Buffer.compare(a.subarray(ap + REC_OFFSET, ap + RECORD_SIZE), b.subarray(bp + REC_OFFSET, bp + RECORD_SIZE)) <= 0;
}

/** A growable array of u32, for tables whose final size is only known at the end. */
export class U32List {
  data: Uint32Array;
  length = 0;

  constructor(capacity = 16) {
    this.data = new Uint32Array(Math.max(1, capacity));
  }

  push(v: number): void {
    if (this.length === this.data.length) {
      const d = new Uint32Array(this.data.length * 2);
      d.set(this.data);
      this.data = d;
    }
    this.data[this.length++] = v;
  }

  /** A right-sized copy. */
  toArray(): Uint32Array {
    return this.data.slice(0, this.length);
  }
}
