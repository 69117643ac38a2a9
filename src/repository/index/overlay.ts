// The in-memory part of the chunk index: locations added since the cache file was written (blobs
// this process just stored, entries of a few new index files). Records use the cache-file layout
// with pack numbers into the overlay's own pack list, in one growing buffer, found through an
// open-addressing hash table on the id. Its size is capped by ChunkIndex (overlayLimit), which
// merges it into a new cache file when it grows past that.

import { ID_SIZE, PACK_FILE_LISTED, REC_FLAGS, REC_PACK, RECORD_SIZE, FLAG_TREE, compareIdAt, idWord } from './record.ts';
import { sortById } from './sorter.ts';

export class Overlay {
  recs: Buffer = Buffer.alloc(0);
  n = 0;
  /** Records that stand in for a base session record with the same key (FLAG_SHADOW). */
  shadowCount = 0;
  private table = new Int32Array(0);
  private mask = -1;
  // Packs: ids back to back, with size and PACK_* flags.
  packIds: Buffer = Buffer.alloc(0);
  packSizes: number[] = [];
  packFlags: number[] = [];
  private readonly packByKey = new Map<string, number>();
  /** Index files (hex) whose entries the overlay holds (or the base already held). */
  readonly files = new Set<string>();
  /** Ids (hex) that those files supersede. */
  readonly superseded = new Set<string>();
  private sorted: Uint32Array | undefined;
  /** Bumped on every change, so iterators can tell that the overlay moved under them. */
  version = 0;

  get packCount(): number {
    return this.packSizes.length;
  }

  packIdAt(no: number): Buffer {
    return this.packIds.subarray(no * ID_SIZE, (no + 1) * ID_SIZE);
  }

  /** The overlay pack number for a pack id, created if new; `flags` are OR-ed in. */
  packNo(packId: Uint8Array, packSize: number, flags: number): number {
    const key = Buffer.from(packId.buffer, packId.byteOffset, ID_SIZE).toString('latin1');
    let no = this.packByKey.get(key);
    if (no === undefined) {
      no = this.packSizes.length;
      if ((no + 1) * ID_SIZE > this.packIds.length) {
        const grown = Buffer.allocUnsafeSlow(Math.max(ID_SIZE * 16, this.packIds.length * 2));
        this.packIds.copy(grown, 0);
        this.packIds = grown;
      }
      this.packIds.set(packId, no * ID_SIZE);
      this.packSizes.push(packSize);
      this.packFlags.push(0);
      this.packByKey.set(key, no);
      this.version++;
    }
    this.packFlags[no] = this.packFlags[no]! | flags;
    return no;
  }

  /** Index of the record with this (id, type, pack id), or -1. */
  findKey(id: Uint8Array, idOff: number, typeBit: number, packId: Uint8Array, packOff: number): number {
    if (this.n === 0) return -1;
    for (let s = idWord(id, idOff + 4) & this.mask; ; s = (s + 1) & this.mask) {
      const v = this.table[s]!;
      if (v === 0) return -1;
      const pos = (v - 1) * RECORD_SIZE;
      if (compareIdAt(this.recs, pos, id, idOff) === 0 && (this.recs[pos + REC_FLAGS]! & FLAG_TREE) === typeBit) {
        const no = this.recs.readUInt32LE(pos + REC_PACK);
        if (compareIdAt(this.packIds, no * ID_SIZE, packId, packOff) === 0) return v - 1;
      }
    }
  }

  /** Calls fn with the position of every record with this id (any type, any pack). */
  forEach(id: Uint8Array, idOff: number, fn: (pos: number) => void): void {
    if (this.n === 0) return;
    for (let s = idWord(id, idOff + 4) & this.mask; ; s = (s + 1) & this.mask) {
      const v = this.table[s]!;
      if (v === 0) return;
      const pos = (v - 1) * RECORD_SIZE;
      if (compareIdAt(this.recs, pos, id, idOff) === 0) fn(pos);
    }
  }

  /** Appends a record (already written at scratch[0..RECORD_SIZE)); returns its index. */
  append(scratch: Buffer): number {
    if ((this.n + 1) * RECORD_SIZE > this.recs.length) this.grow();
    const i = this.n++;
    scratch.copy(this.recs, i * RECORD_SIZE, 0, RECORD_SIZE);
    this.place(i);
    this.sorted = undefined;
    this.version++;
    return i;
  }

  /** Replaces record i (same key) with scratch, keeping flags in `keep`. */
  replace(i: number, scratch: Buffer, keep: number): void {
    const pos = i * RECORD_SIZE;
    const kept = this.recs[pos + REC_FLAGS]! & keep;
    scratch.copy(this.recs, pos, 0, RECORD_SIZE);
    this.recs[pos + REC_FLAGS] = this.recs[pos + REC_FLAGS]! | kept;
    this.version++;
  }

  private place(i: number): void {
    let s = idWord(this.recs, i * RECORD_SIZE + 4) & this.mask;
    while (this.table[s] !== 0) s = (s + 1) & this.mask;
    this.table[s] = i + 1;
  }

  private grow(): void {
    const cap = Math.max(1024, (this.recs.length / RECORD_SIZE) * 2);
    const recs = Buffer.allocUnsafeSlow(cap * RECORD_SIZE);
    this.recs.copy(recs, 0, 0, this.n * RECORD_SIZE);
    this.recs = recs;
    // A load factor of at most 1/2 keeps probes short.
    this.table = new Int32Array(cap * 2);
    this.mask = cap * 2 - 1;
    for (let i = 0; i < this.n; i++) this.place(i);
  }

  /** Record indexes in (id, type, pack id) order; cached until the next change. */
  sortedOrder(): Uint32Array {
    if (this.sorted) return this.sorted;
    const order = sortById(this.recs, this.n, RECORD_SIZE);
    const cmp = (a: number, b: number) => {
      const pa = a * RECORD_SIZE;
      const pb = b * RECORD_SIZE;
      const t = (this.recs[pa + REC_FLAGS]! & FLAG_TREE) - (this.recs[pb + REC_FLAGS]! & FLAG_TREE);
      if (t) return t;
      return compareIdAt(this.packIds, this.recs.readUInt32LE(pa + REC_PACK) * ID_SIZE, this.packIds, this.recs.readUInt32LE(pb + REC_PACK) * ID_SIZE);
    };
    for (let i = 0; i < order.length; ) {
      let j = i + 1;
      while (j < order.length && compareIdAt(this.recs, order[i]! * RECORD_SIZE, this.recs, order[j]! * RECORD_SIZE) === 0) j++;
      if (j - i > 1) order.subarray(i, j).sort(cmp);
      i = j;
    }
    this.sorted = order;
    return order;
  }

  /** Packs listed by an index file (as opposed to only added by this process). */
  isFileListed(no: number): boolean {
    return (this.packFlags[no]! & PACK_FILE_LISTED) !== 0;
  }

  memoryBytes(): number {
    return this.recs.length + this.table.byteLength + (this.sorted?.byteLength ?? 0) + this.packIds.length + this.packSizes.length * 16 + this.packByKey.size * 80 + (this.files.size + this.superseded.size) * 120;
  }
}
