// A least-recently-used cache of cache-file pages within a fixed byte budget. Pages live in one
// preallocated slab (no allocation per lookup); slots form a doubly linked list in recency order
// (typed arrays, no objects), and a Map from page number to slot finds them. Everything is sized
// by the budget, none of it by the file.

import type { CacheFile } from './cache-file.ts';

export class PageCache {
  private readonly budget: number;
  private file: CacheFile | undefined;
  slab: Buffer = Buffer.alloc(0);
  private pageBytes = 1;
  private slots = 0;
  private used = 0;
  private readonly pageSlot = new Map<number, number>();
  private slotPage = new Int32Array(0);
  // Recency list over slots: head is the most recently used, tail the next to evict.
  private prev = new Int32Array(0);
  private next = new Int32Array(0);
  private head = -1;
  private tail = -1;
  hits = 0;
  misses = 0;

  constructor(budgetBytes: number) {
    this.budget = budgetBytes;
  }

  /** Switches to another file (or none), dropping every cached page. */
  reset(file: CacheFile | undefined): void {
    this.file = file;
    this.used = 0;
    this.head = this.tail = -1;
    if (!file || file.pages === 0) {
      this.slab = Buffer.alloc(0);
      this.slots = 0;
      this.pageSlot.clear();
      return;
    }
    this.pageBytes = file.pageBytes;
    // At least one page, whatever the budget; never more slots than the file has pages.
    this.slots = Math.max(1, Math.min(file.pages, Math.floor(this.budget / file.pageBytes)));
    if (this.slab.length !== this.slots * this.pageBytes) this.slab = Buffer.allocUnsafeSlow(this.slots * this.pageBytes);
    this.pageSlot.clear();
    this.slotPage = new Int32Array(this.slots);
    this.prev = new Int32Array(this.slots);
    this.next = new Int32Array(this.slots);
  }

  private unlink(s: number): void {
    const p = this.prev[s]!;
    const n = this.next[s]!;
    if (p >= 0) this.next[p] = n;
    else this.head = n;
    if (n >= 0) this.prev[n] = p;
    else this.tail = p;
  }

  private pushFront(s: number): void {
    this.prev[s] = -1;
    this.next[s] = this.head;
    if (this.head >= 0) this.prev[this.head] = s;
    this.head = s;
    if (this.tail < 0) this.tail = s;
  }

  /** Offset in `slab` of page p, reading it if needed. */
  get(p: number): number {
    const hit = this.pageSlot.get(p);
    if (hit !== undefined) {
      this.hits++;
      if (this.head !== hit) {
        this.unlink(hit);
        this.pushFront(hit);
      }
      return hit * this.pageBytes;
    }
    this.misses++;
    let slot: number;
    if (this.used < this.slots) slot = this.used++;
    else {
      slot = this.tail;
      this.unlink(slot);
      if (this.slotPage[slot]! >= 0) this.pageSlot.delete(this.slotPage[slot]!);
    }
    try {
      this.file!.readPage(p, this.slab, slot * this.pageBytes);
    } catch (e) {
      // The slot holds garbage: keep it out of the table, at the eviction end of the list.
      this.slotPage[slot] = -1;
      this.prev[slot] = this.tail;
      this.next[slot] = -1;
      if (this.tail >= 0) this.next[this.tail] = slot;
      else this.head = slot;
      this.tail = slot;
      throw e;
    }
    this.pageSlot.set(p, slot);
    this.slotPage[slot] = p;
    this.pushFront(slot);
    return slot * this.pageBytes;
  }

  memoryBytes(): number {
    return this.slab.length + this.slotPage.byteLength * 3 + this.pageSlot.size * 40;
  }
}
