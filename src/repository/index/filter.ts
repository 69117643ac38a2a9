// An optional Bloom filter in front of the chunk index, so that has() for a blob that is not
// stored (the common case when backing up new data) usually answers without reading a page.
// Memory: bitsPerEntry / 8 bytes per chunk (10 bits: 1.25 bytes and ~1% false positives). Blob
// ids are keyed hashes, so their own bytes serve as the hash functions.

import { idWord } from './record.ts';

export class BloomFilter {
  private readonly bits: Uint32Array;
  private readonly m: number;
  private readonly k: number;

  /** A filter for about `capacity` ids at `bitsPerEntry` bits each. */
  constructor(capacity: number, bitsPerEntry: number) {
    this.m = Math.max(1, Math.ceil((Math.max(1024, capacity) * bitsPerEntry) / 32)) * 32;
    this.k = Math.max(1, Math.min(16, Math.round(bitsPerEntry * Math.LN2)));
    this.bits = new Uint32Array(this.m / 32);
  }

  add(id: Uint8Array, off: number): void {
    const h1 = idWord(id, off + 8);
    const h2 = (idWord(id, off + 12) | 1) >>> 0;
    for (let i = 0; i < this.k; i++) {
      const b = (h1 + i * h2) % this.m;
      this.bits[b >>> 5] = this.bits[b >>> 5]! | (1 << (b & 31));
    }
  }

  mayHave(id: Uint8Array, off: number): boolean {
    const h1 = idWord(id, off + 8);
    const h2 = (idWord(id, off + 12) | 1) >>> 0;
    for (let i = 0; i < this.k; i++) {
      const b = (h1 + i * h2) % this.m;
      if ((this.bits[b >>> 5]! & (1 << (b & 31))) === 0) return false;
    }
    return true;
  }

  get bytes(): number {
    return this.bits.byteLength;
  }
}
