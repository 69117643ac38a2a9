// The local chunk index: blob id → (pack, offset, length, ...) for every blob the repository's
// index files list, in memory that does not grow with the repository (docs/index.md). All
// records live sorted in a cache file on local disk; memory holds a sparse table (the first 8
// bytes of the first id of each page), an LRU cache of pages within a byte budget, the pack
// table, and an overlay of recent additions that is merged into a new cache file when it grows
// past a limit. Building from scratch uses an external sort, so it is bounded too.
//
// Every (blob id, type, pack) location is kept: a blob stored twice (concurrent writers, or a
// repack) has two locations, and prune needs to see both. lookup() picks one deterministically:
// the first, in pack-id order, that the caller's `prefer` accepts (e.g. not condemned), else the
// first.

import { mkdirSync, readdirSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CofferError, isCofferError, throwIfAborted } from '../../core/errors.ts';
import { invalidPack, type BlobType, type IndexEntry, type IndexFileContent } from './index-file.ts';
import { CacheFile, CacheWriter, KIND_BASE, KIND_DELTA, PageScanner, damaged, storageError, type CacheSummary, type OpenOptions } from './cache-file.ts';
import { BloomFilter } from './filter.ts';
import { Overlay } from './overlay.ts';
import { PageCache } from './page-cache.ts';
import {
  FLAG_COMPRESSED, FLAG_SESSION, FLAG_SHADOW, FLAG_TREE, ID_SIZE, PACK_FILE_LISTED, PACK_RECORD_SIZE, PACK_SESSION_REF, PERSISTED_FLAGS,
  REC_FLAGS, REC_PACK, RECORD_SIZE, compareIdAt, entryFromRecord, firstWins, idWord, typeFlag, writeRecord,
} from './record.ts';
import { ExternalSorter, MergeStream, SORT_TAG, type RecordStream } from './sorter.ts';

export type { BlobType, IndexEntry, IndexFileContent } from './index-file.ts';

export interface ChunkIndexOptions {
  /** Directory for the cache files (e.g. ~/.cache/coffer/<repo-id>/index); created if missing. */
  cacheDir: string;
  /** Byte budget of the page cache. Default 16 MiB. */
  pageCacheBytes?: number;
  /** Overlay entries that trigger a merge into a new cache file. Default 200,000. */
  overlayLimit?: number;
  /** Entries per sorted run when building from many index files. Default 262,144 (~15 MiB). */
  sortRunEntries?: number;
  /** Records per page in cache files this process writes. Default 64. */
  pageRecords?: number;
  /** Bloom filter bits per entry for has(); 0 (the default) disables it. */
  filterBitsPerEntry?: number;
}

export interface IndexHit {
  packId: Buffer;
  packSize: number;
  entry: IndexEntry;
}

export interface LookupOptions {
  /** Among several locations, the first one (in pack-id order) to accept. */
  prefer?: (packId: Buffer) => boolean;
}

export interface SyncOptions {
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

export interface ChunkIndexStats {
  /** Records in the cache file (including session records another process left behind). */
  baseRecords: number;
  overlayRecords: number;
  pages: number;
  pageCacheHits: number;
  pageCacheMisses: number;
  /** Cache files written by merging the overlay or new index files into the old one. */
  merges: number;
  /** Cache files written from the repository's index files alone. */
  rebuilds: number;
  /** Delta files written (overlay entries from index files, kept for the next run). */
  deltaWrites: number;
  /** Index files loaded by sync(). */
  filesLoaded: number;
  /** Damaged cache files found and discarded. */
  discarded: number;
  /** Where memoryBytes() goes. */
  memory: { sparseTable: number; pageCache: number; packTable: number; overlay: number; filter: number; other: number };
}

const BASE_NAME = 'chunks.cfx';
const DELTA_NAME = 'chunks-delta.cfx';
const ZERO_GEN = Buffer.alloc(16);
/** Temporary files older than this are leftovers of a crashed process. */
const STALE_TEMP_MS = 3600_000;

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');

/** Packs of the index files loaded by one sync(), with the files (tags) that list each. */
class SyncPacks {
  ids: Buffer = Buffer.alloc(0);
  sizes: number[] = [];
  tags: number[][] = [];
  private readonly byKey = new Map<string, number>();

  add(packId: Uint8Array, size: number, tag: number): number {
    const key = Buffer.from(packId.buffer, packId.byteOffset, ID_SIZE).toString('latin1');
    let no = this.byKey.get(key);
    if (no === undefined) {
      no = this.sizes.length;
      if ((no + 1) * ID_SIZE > this.ids.length) {
        const b = Buffer.allocUnsafeSlow(Math.max(ID_SIZE * 64, this.ids.length * 2));
        this.ids.copy(b, 0);
        this.ids = b;
      }
      this.ids.set(packId, no * ID_SIZE);
      this.sizes.push(size);
      this.tags.push([tag]);
      this.byKey.set(key, no);
    } else if (!this.tags[no]!.includes(tag)) this.tags[no]!.push(tag);
    return no;
  }

  isActive(no: number, active: boolean[]): boolean {
    return this.tags[no]!.some((t) => active[t - 1]);
  }
}

interface RewritePlan {
  /** Which records of the current cache file to carry over. */
  base: 'visible' | 'session';
  overlay: boolean;
  sync?: { sorter: ExternalSorter; packs: SyncPacks; active: boolean[] };
  files: Iterable<string>;
  superseded: Iterable<string>;
  kind: 'merge' | 'rebuild';
  signal?: AbortSignal;
}

interface PackSource {
  id: Buffer;
  size: number;
  flags: number;
  src: 0 | 1 | 2;
  no: number;
}

export class ChunkIndex {
  private readonly dir: string;
  private readonly basePath: string;
  private readonly deltaPath: string;
  private readonly overlayLimit: number;
  private readonly sortRunEntries: number;
  private readonly pageRecords: number;
  private readonly filterBits: number;
  private base: CacheFile | undefined;
  /** Whether this process wrote the cache file, so its session records are its own. */
  private sessionVisible = false;
  private baseFiles = new Set<string>();
  private baseSuperseded = new Set<string>();
  private generation: Buffer = ZERO_GEN;
  private overlay = new Overlay();
  private readonly cache: PageCache;
  private filter: BloomFilter | undefined;
  private readonly scratch = Buffer.alloc(RECORD_SIZE);
  private cand = Buffer.alloc(RECORD_SIZE * 8);
  private candSrc: number[] = [];
  private closed = false;
  private syncing = false;
  /** Set when a page of the cache file turned out damaged: lookups refuse until sync() rebuilds. */
  private broken: CofferError | undefined;
  /** Bumped when the cache file is replaced. */
  private baseVersion = 0;
  private readonly counters = { merges: 0, rebuilds: 0, deltaWrites: 0, filesLoaded: 0, discarded: 0 };

  private constructor(options: ChunkIndexOptions) {
    this.dir = options.cacheDir;
    this.basePath = join(this.dir, BASE_NAME);
    this.deltaPath = join(this.dir, DELTA_NAME);
    const int = (v: number | undefined, def: number, min: number, max: number, name: string): number => {
      if (v === undefined) return def;
      if (!Number.isSafeInteger(v) || v < min || v > max) throw new CofferError('USAGE', `Cannot open the chunk index: ${name} must be an integer in ${min}..${max}, not ${v}`);
      return v;
    };
    this.cache = new PageCache(int(options.pageCacheBytes, 16 << 20, 0, 2 ** 40, 'pageCacheBytes'));
    this.overlayLimit = int(options.overlayLimit, 200_000, 1, 1 << 24, 'overlayLimit');
    this.sortRunEntries = int(options.sortRunEntries, 262_144, 2, 1 << 21, 'sortRunEntries');
    this.pageRecords = int(options.pageRecords, 64, 1, 4096, 'pageRecords');
    this.filterBits = int(options.filterBitsPerEntry, 0, 0, 32, 'filterBitsPerEntry');
  }

  /**
   * Opens the index in `cacheDir`, loading the cache file if there is one. A cache file that is
   * damaged, of another version or half-written is deleted (sync() then rebuilds it from the
   * repository): it is never trusted.
   */
  static async open(options: ChunkIndexOptions): Promise<ChunkIndex> {
    const index = new ChunkIndex(options);
    index.loadCache();
    return index;
  }

  private loadCache(): void {
    try {
      // 0700 like the repository: the cache holds which chunks (content hashes) the repository has.
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw storageError('create', this.dir, e);
    }
    this.removeStaleTemps();
    // The filter (if any) fills during the verification pass; it is only kept with the file.
    let filter: BloomFilter | undefined;
    const base = this.openCacheFile(this.basePath, KIND_BASE, this.filterBits ? (count) => {
      const f = (filter = new BloomFilter(count + this.overlayLimit, this.filterBits));
      return (buf, pos) => f.add(buf, pos);
    } : undefined);
    if (base) {
      this.base = base;
      this.sessionVisible = false;
      this.baseFiles = new Set(base.files);
      this.baseSuperseded = new Set(base.superseded);
      this.generation = base.generation;
      this.cache.reset(base);
      this.filter = filter;
    } else this.resetFilter();
    const delta = this.openCacheFile(this.deltaPath, KIND_DELTA);
    if (delta) {
      try {
        this.loadDelta(delta);
      } catch (e) {
        if (!isCofferError(e, 'CORRUPT')) throw e;
        this.counters.discarded++;
        this.discard(this.deltaPath);
        this.overlay = new Overlay();
        this.resetFilter();
      } finally {
        delta.close();
      }
    }
  }

  /** Opens and verifies a cache file; a damaged one is deleted and undefined returned. */
  private openCacheFile(path: string, kind: number, visit?: OpenOptions['visit']): CacheFile | undefined {
    try {
      return CacheFile.open(path, kind, { visit });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      if (isCofferError(e, 'CORRUPT')) {
        this.counters.discarded++;
        this.discard(path);
        return undefined;
      }
      if (e instanceof CofferError) throw e;
      throw storageError('open', path, e);
    }
  }

  private discard(path: string): void {
    try {
      unlinkSync(path);
    } catch {
      // Already gone.
    }
  }

  private removeStaleTemps(): void {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch (e) {
      throw storageError('read', this.dir, e);
    }
    for (const n of names) {
      if (!n.endsWith('.tmp')) continue;
      const p = join(this.dir, n);
      try {
        // Another live process may be writing a recent one.
        if (Date.now() - statSync(p).mtimeMs > STALE_TEMP_MS) rmSync(p, { recursive: true, force: true });
      } catch {
        // Raced with its owner removing it.
      }
    }
  }

  private loadDelta(delta: CacheFile): void {
    if (!delta.baseGeneration.equals(this.generation)) throw damaged(delta.path, 'it belongs to another cache file');
    if (delta.recordCount > this.overlayLimit * 2) throw damaged(delta.path, 'it is larger than the overlay can hold');
    const packNos: number[] = [];
    for (let no = 0; no < delta.packCount; no++) {
      const p = no * PACK_RECORD_SIZE;
      packNos.push(this.overlay.packNo(delta.packTable.subarray(p, p + ID_SIZE), delta.packTable.readUInt32LE(p + ID_SIZE), PACK_FILE_LISTED));
    }
    const scan = new PageScanner(delta);
    while (scan.next()) {
      const buf = scan.buffer;
      const pos = scan.pos;
      if (buf[pos + REC_FLAGS]! & FLAG_SESSION) throw damaged(delta.path, 'it holds session records');
      const no = buf.readUInt32LE(pos + REC_PACK);
      buf.copy(this.scratch, 0, pos, pos + RECORD_SIZE);
      this.scratch.writeUInt32LE(packNos[no]!, REC_PACK);
      this.insertRecord(this.scratch, delta.packTable, no * PACK_RECORD_SIZE);
    }
    for (const f of delta.files) this.overlay.files.add(f);
    for (const s of delta.superseded) this.overlay.superseded.add(s);
  }

  private resetFilter(): void {
    this.filter = undefined;
    if (!this.filterBits) return;
    const f = new BloomFilter((this.base?.recordCount ?? 0) + this.overlayLimit, this.filterBits);
    if (this.base) {
      const scan = new PageScanner(this.base);
      while (scan.next()) f.add(scan.buffer, scan.pos);
    }
    for (let i = 0; i < this.overlay.n; i++) f.add(this.overlay.recs, i * RECORD_SIZE);
    this.filter = f;
  }

  private assertUsable(action: string): void {
    if (this.closed) throw new CofferError('INTERNAL', `Cannot ${action}: the chunk index is closed`);
    if (this.broken) throw this.broken;
  }

  private checkId(id: Uint8Array, action: string): void {
    if (!(id instanceof Uint8Array) || id.length !== ID_SIZE) {
      throw new CofferError('INTERNAL', `Cannot ${action}: a blob id must be ${ID_SIZE} bytes, not ${(id as Uint8Array | undefined)?.length}`);
    }
  }

  // ---- reading ----------------------------------------------------------------------------

  private get baseVisibleCount(): number {
    if (!this.base) return 0;
    return this.sessionVisible ? this.base.recordCount : this.base.recordCount - this.base.sessionCount;
  }

  /** Number of (blob, pack) locations in the index. */
  get count(): number {
    return this.baseVisibleCount + this.overlay.n - this.overlay.shadowCount;
  }

  /**
   * Calls fn(buf, pos) for every visible record of the cache file with this id, in order, until
   * fn returns false. `buf` is only valid during the call.
   */
  private forEachBase(id: Uint8Array, fn: (buf: Buffer, pos: number) => boolean | void): void {
    const base = this.base;
    if (!base || base.pages === 0) return;
    const hi = idWord(id, 0);
    const lo = idWord(id, 4);
    const sh = base.sparseHi;
    const sl = base.sparseLo;
    // The last page whose first key is below the id's: the id's first record is there or later.
    let l = 0;
    let r = base.pages - 1;
    let p = 0;
    while (l <= r) {
      const m = (l + r) >> 1;
      if (sh[m]! < hi || (sh[m] === hi && sl[m]! < lo)) {
        p = m;
        l = m + 1;
      } else r = m - 1;
    }
    for (; p < base.pages; p++) {
      let off: number;
      try {
        off = this.cache.get(p);
      } catch (e) {
        throw this.fail(e);
      }
      const slab = this.cache.slab;
      const n = base.recordsInPage(p);
      let a = 0;
      let b = n;
      while (a < b) {
        const m = (a + b) >> 1;
        if (compareIdAt(slab, off + m * RECORD_SIZE, id, 0) < 0) a = m + 1;
        else b = m;
      }
      for (let i = a; i < n; i++) {
        const pos = off + i * RECORD_SIZE;
        if (compareIdAt(slab, pos, id, 0) !== 0) return;
        if (!this.sessionVisible && slab[pos + REC_FLAGS]! & FLAG_SESSION) continue;
        if (fn(slab, pos) === false) return;
      }
    }
  }

  /**
   * A damaged page: the cache file is deleted and every lookup refuses until sync() has rebuilt
   * it, because answering from what is left would silently miss blobs.
   */
  private fail(e: unknown): unknown {
    if (!isCofferError(e, 'CORRUPT')) return e;
    this.counters.discarded++;
    this.dropBase();
    this.broken = new CofferError('CORRUPT', `Cannot look up blobs: the local index cache was damaged (${e.message}) and has been removed`, {
      cause: e,
      hint: 'Run the command again: the index is rebuilt from the repository.',
    });
    return this.broken;
  }

  /** Forgets the cache file (it is deleted); overlay records that shadowed it stand alone. */
  private dropBase(): void {
    this.base?.close();
    this.base = undefined;
    this.discard(this.basePath);
    this.discard(this.deltaPath);
    this.baseFiles = new Set();
    this.baseSuperseded = new Set();
    this.generation = ZERO_GEN;
    this.cache.reset(undefined);
    this.baseVersion++;
    for (let i = 0; i < this.overlay.n; i++) this.overlay.recs[i * RECORD_SIZE + REC_FLAGS] = this.overlay.recs[i * RECORD_SIZE + REC_FLAGS]! & ~FLAG_SHADOW;
    this.overlay.shadowCount = 0;
    this.overlay.version++;
    this.resetFilter();
  }

  private candPackId(i: number): Buffer {
    const no = this.cand.readUInt32LE(i * RECORD_SIZE + REC_PACK);
    return this.candSrc[i] === 0 ? this.base!.packTable.subarray(no * PACK_RECORD_SIZE, no * PACK_RECORD_SIZE + ID_SIZE) : this.overlay.packIdAt(no);
  }

  private candPackSize(i: number): number {
    const no = this.cand.readUInt32LE(i * RECORD_SIZE + REC_PACK);
    return this.candSrc[i] === 0 ? this.base!.packTable.readUInt32LE(no * PACK_RECORD_SIZE + ID_SIZE) : this.overlay.packSizes[no]!;
  }

  /**
   * Copies every location of `id` (of the given type bit, or any if -1) into `cand`, one per
   * (type, pack), in (type, pack id) order; returns how many.
   */
  private collect(id: Uint8Array, typeBit: number): number {
    let n = 0;
    const add = (buf: Buffer, pos: number, src: number) => {
      if ((n + 1) * RECORD_SIZE > this.cand.length) {
        const c = Buffer.alloc(this.cand.length * 2);
        this.cand.copy(c);
        this.cand = c;
      }
      buf.copy(this.cand, n * RECORD_SIZE, pos, pos + RECORD_SIZE);
      this.candSrc[n++] = src;
    };
    const recs = this.overlay.recs;
    this.overlay.forEach(id, 0, (pos) => {
      if (typeBit < 0 || (recs[pos + REC_FLAGS]! & FLAG_TREE) === typeBit) add(recs, pos, 1);
    });
    const fromOverlay = n;
    this.forEachBase(id, (buf, pos) => {
      if (typeBit < 0 || (buf[pos + REC_FLAGS]! & FLAG_TREE) === typeBit) add(buf, pos, 0);
    });
    if (n <= 1) return n;
    // An overlay record with the same (type, pack) as a base one replaces it (FLAG_SHADOW).
    const keep: number[] = [];
    for (let i = 0; i < n; i++) {
      if (i >= fromOverlay) {
        let dup = false;
        for (let j = 0; j < fromOverlay && !dup; j++) dup = this.sameKey(i, j);
        if (dup) continue;
      }
      keep.push(i);
    }
    keep.sort((a, b) => {
      const t = (this.cand[a * RECORD_SIZE + REC_FLAGS]! & FLAG_TREE) - (this.cand[b * RECORD_SIZE + REC_FLAGS]! & FLAG_TREE);
      return t || Buffer.compare(this.candPackId(a), this.candPackId(b));
    });
    const c = Buffer.alloc(Math.max(this.cand.length, keep.length * RECORD_SIZE));
    const src: number[] = [];
    keep.forEach((k, i) => {
      this.cand.copy(c, i * RECORD_SIZE, k * RECORD_SIZE, (k + 1) * RECORD_SIZE);
      src[i] = this.candSrc[k]!;
    });
    this.cand = c;
    this.candSrc = src;
    return keep.length;
  }

  private sameKey(i: number, j: number): boolean {
    return (this.cand[i * RECORD_SIZE + REC_FLAGS]! & FLAG_TREE) === (this.cand[j * RECORD_SIZE + REC_FLAGS]! & FLAG_TREE) && this.candPackId(i).equals(this.candPackId(j));
  }

  private hit(i: number): IndexHit {
    return { packId: Buffer.from(this.candPackId(i)), packSize: this.candPackSize(i), entry: entryFromRecord(this.cand, i * RECORD_SIZE) };
  }

  /**
   * Where a blob is stored, or undefined. With several locations: the first in pack-id order that
   * `prefer` accepts (e.g. "not in a condemned pack"), else the first.
   */
  lookup(id: Uint8Array, type?: BlobType, options: LookupOptions = {}): IndexHit | undefined {
    this.assertUsable('look up a blob');
    this.checkId(id, 'look up a blob');
    const n = this.collect(id, type === undefined ? -1 : typeFlag(type));
    if (n === 0) return undefined;
    if (n === 1 || !options.prefer) return this.hit(0);
    // All hits first: `prefer` may itself use the index.
    const hits = Array.from({ length: n }, (_, i) => this.hit(i));
    return hits.find((h) => options.prefer!(h.packId)) ?? hits[0];
  }

  /**
   * Index files that were listed at the last sync but that a file in force supersedes (their
   * deletion failed, or has not happened yet): whoever writes a file superseding the files in
   * force must supersede these too, or they come back into force.
   */
  supersededFiles(): string[] {
    return [...new Set([...this.baseSuperseded, ...this.overlay.superseded])];
  }

  /** Every location of a blob (one per type and pack), in (type, pack id) order. */
  lookupAll(id: Uint8Array, type?: BlobType): IndexHit[] {
    this.assertUsable('look up a blob');
    this.checkId(id, 'look up a blob');
    const n = this.collect(id, type === undefined ? -1 : typeFlag(type));
    const out: IndexHit[] = [];
    for (let i = 0; i < n; i++) out.push(this.hit(i));
    return out;
  }

  /** Whether the index knows the blob. Cheaper than lookup(): no objects, filter first. */
  has(id: Uint8Array, type?: BlobType): boolean {
    this.assertUsable('look up a blob');
    this.checkId(id, 'look up a blob');
    if (this.filter && !this.filter.mayHave(id, 0)) return false;
    const typeBit = type === undefined ? -1 : typeFlag(type);
    let found = false;
    const recs = this.overlay.recs;
    this.overlay.forEach(id, 0, (pos) => {
      if (typeBit < 0 || (recs[pos + REC_FLAGS]! & FLAG_TREE) === typeBit) found = true;
    });
    if (found) return true;
    this.forEachBase(id, (buf, pos) => {
      if (typeBit < 0 || (buf[pos + REC_FLAGS]! & FLAG_TREE) === typeBit) {
        found = true;
        return false;
      }
      return true;
    });
    return found;
  }

  private basePackVisible(no: number): boolean {
    const f = this.base!.packTable[no * PACK_RECORD_SIZE + 36]!;
    return (f & PACK_FILE_LISTED) !== 0 || ((f & PACK_SESSION_REF) !== 0 && this.sessionVisible);
  }

  /** Number of the cache-file pack with this id, or -1. */
  private basePackNo(packId: Uint8Array, off: number): number {
    const base = this.base;
    if (!base) return -1;
    let l = 0;
    let r = base.packCount - 1;
    while (l <= r) {
      const m = (l + r) >> 1;
      const c = compareIdAt(base.packTable, m * PACK_RECORD_SIZE, packId, off);
      if (c === 0) return m;
      if (c < 0) l = m + 1;
      else r = m - 1;
    }
    return -1;
  }

  private modCount(): number {
    return this.baseVersion * 2 ** 26 + this.overlay.version;
  }

  private changed(v: number, what: string): void {
    if (this.modCount() !== v) throw new CofferError('CONFLICT', `Cannot continue listing the ${what} of the chunk index: it changed during the iteration`, { hint: 'This is a bug in Coffer. Please report it.' });
  }

  /** Every pack the index knows, once each. */
  *packs(): Generator<{ packId: Buffer; packSize: number }> {
    this.assertUsable('list packs');
    const v = this.modCount();
    const base = this.base;
    if (base) {
      for (let no = 0; no < base.packCount; no++) {
        this.changed(v, 'packs');
        if (!this.basePackVisible(no)) continue;
        const p = no * PACK_RECORD_SIZE;
        yield { packId: Buffer.from(base.packTable.subarray(p, p + ID_SIZE)), packSize: base.packTable.readUInt32LE(p + ID_SIZE) };
      }
    }
    for (let no = 0; no < this.overlay.packCount; no++) {
      this.changed(v, 'packs');
      const b = this.basePackNo(this.overlay.packIds, no * ID_SIZE);
      if (b >= 0 && this.basePackVisible(b)) continue;
      yield { packId: Buffer.from(this.overlay.packIdAt(no)), packSize: this.overlay.packSizes[no]! };
    }
  }

  /**
   * Every location in (id, type, pack id) order, streaming: memory stays bounded whatever the
   * size of the index. The index must not change while this runs (CONFLICT).
   */
  *entries(): Generator<{ packId: Buffer; entry: IndexEntry }> {
    this.assertUsable('list the index');
    const v = this.modCount();
    const base = this.base;
    const scan = base && base.pages ? new PageScanner(base) : undefined;
    const order = this.overlay.sortedOrder();
    const recs = this.overlay.recs;
    let oi = 0;
    const nextBase = (): boolean => {
      if (!scan) return false;
      for (;;) {
        let ok: boolean;
        try {
          ok = scan.next();
        } catch (e) {
          throw this.fail(e);
        }
        if (!ok) return false;
        if (this.sessionVisible || !(scan.buffer[scan.pos + REC_FLAGS]! & FLAG_SESSION)) return true;
      }
    };
    const basePack = (pos: number) => scan!.buffer.readUInt32LE(pos + REC_PACK) * PACK_RECORD_SIZE;
    let haveBase = nextBase();
    while (haveBase || oi < order.length) {
      this.changed(v, 'entries');
      let c = 0;
      const op = oi < order.length ? order[oi]! * RECORD_SIZE : -1;
      if (!haveBase) c = 1;
      else if (op < 0) c = -1;
      else {
        const bb = scan!.buffer;
        const bp = scan!.pos;
        c = compareIdAt(bb, bp, recs, op) || (bb[bp + REC_FLAGS]! & FLAG_TREE) - (recs[op + REC_FLAGS]! & FLAG_TREE);
        if (!c) c = compareIdAt(base!.packTable, basePack(bp), this.overlay.packIds, recs.readUInt32LE(op + REC_PACK) * ID_SIZE);
      }
      if (c < 0) {
        const bp = scan!.pos;
        const pp = basePack(bp);
        yield { packId: Buffer.from(base!.packTable.subarray(pp, pp + ID_SIZE)), entry: entryFromRecord(scan!.buffer, bp) };
        haveBase = nextBase();
      } else {
        yield { packId: Buffer.from(this.overlay.packIdAt(recs.readUInt32LE(op + REC_PACK))), entry: entryFromRecord(recs, op) };
        oi++;
        if (c === 0) haveBase = nextBase();
      }
    }
  }

  // ---- adding -----------------------------------------------------------------------------

  /**
   * Inserts the record in `rec` (pack number already the overlay's) whose pack id is at
   * packIds[packOff]: skipped if the cache file or the overlay already has that location, unless
   * this copy is confirmed by an index file and theirs is not.
   */
  private insertRecord(rec: Buffer, packIds: Buffer, packOff: number): void {
    const typeBit = rec[REC_FLAGS]! & FLAG_TREE;
    const session = rec[REC_FLAGS]! & FLAG_SESSION;
    let inBase = 0; // 1: confirmed there, 2: a session record there
    if (this.base && (!this.filter || this.filter.mayHave(rec, 0))) {
      const table = this.base.packTable;
      this.forEachBase(rec, (buf, pos) => {
        if ((buf[pos + REC_FLAGS]! & FLAG_TREE) !== typeBit) return true;
        if (compareIdAt(table, buf.readUInt32LE(pos + REC_PACK) * PACK_RECORD_SIZE, packIds, packOff) !== 0) return true;
        inBase = buf[pos + REC_FLAGS]! & FLAG_SESSION ? 2 : 1;
        return false;
      });
    }
    if (inBase === 1 || (inBase === 2 && session)) return;
    if (inBase === 2) rec[REC_FLAGS] = rec[REC_FLAGS]! | FLAG_SHADOW;
    const i = this.overlay.findKey(rec, 0, typeBit, packIds, packOff);
    if (i >= 0) {
      if (!session && this.overlay.recs[i * RECORD_SIZE + REC_FLAGS]! & FLAG_SESSION) this.overlay.replace(i, rec, FLAG_SHADOW);
      return;
    }
    this.overlay.append(rec);
    if (inBase === 2) this.overlay.shadowCount++;
    this.filter?.add(rec, 0);
  }

  /**
   * Records blobs this process has just written to a pack (before any index file lists them).
   * They are visible to this process at once and never trusted by another one: if this process
   * dies before writing their index file, the next run does not believe they exist.
   */
  add(packId: Buffer, packSize: number, entries: IndexEntry[]): void {
    this.assertUsable('add blobs to the chunk index');
    const why = invalidPack({ packId, packSize, entries });
    if (why) throw new CofferError('INTERNAL', `Cannot add pack ${packId instanceof Uint8Array ? hex(packId).slice(0, 12) : '?'} to the chunk index: ${why}`, { hint: 'This is a bug in Coffer. Please report it.' });
    const no = this.overlay.packNo(packId, packSize, PACK_SESSION_REF);
    for (const e of entries) {
      writeRecord(this.scratch, 0, e.id, no, e, FLAG_SESSION);
      this.insertRecord(this.scratch, this.overlay.packIds, no * ID_SIZE);
    }
    if (this.overlay.n >= this.overlayLimit) {
      this.rewrite({ base: 'visible', overlay: true, files: [...this.baseFiles, ...this.overlay.files], superseded: [...this.baseSuperseded, ...this.overlay.superseded], kind: 'merge' });
      this.overlay = new Overlay();
    }
  }

  // ---- synchronising with the repository --------------------------------------------------

  /**
   * Brings the index up to date with the repository's index files: `list` holds the ids now in
   * the repository, `load` reads one. Files already in the index are not read again; new ones are
   * read one at a time. Files that some file lists in `supersedes` are ignored (not even read if
   * that is known in time). If a file the index holds has vanished or become superseded (prune,
   * rebuild-index), the cache file is rebuilt from the files still in force.
   *
   * Either completes, or leaves the index as it was (an error from `load`, e.g. NOT_FOUND for a
   * file deleted after the listing, or cancellation).
   */
  async sync(list: Buffer[], load: (id: Buffer) => Promise<IndexFileContent>, options: SyncOptions = {}): Promise<void> {
    // Not assertUsable(): a damaged cache file is exactly what sync() repairs.
    if (this.closed) throw new CofferError('INTERNAL', 'Cannot synchronise the chunk index: it is closed');
    if (this.syncing) throw new CofferError('CONFLICT', 'Cannot synchronise the chunk index: a sync is already running', { hint: 'This is a bug in Coffer. Please report it.' });
    this.syncing = true;
    try {
      await this.doSync(list, load, options);
    } finally {
      this.syncing = false;
    }
  }

  private async doSync(list: Buffer[], load: (id: Buffer) => Promise<IndexFileContent>, options: SyncOptions): Promise<void> {
    const { signal, onProgress } = options;
    throwIfAborted(signal);
    const listed = new Set<string>();
    for (const id of list) {
      if (!(id instanceof Uint8Array) || id.length !== ID_SIZE) throw new CofferError('INTERNAL', 'Cannot synchronise the chunk index: an index file id is not 32 bytes');
      listed.add(hex(id));
    }
    const known = new Set([...this.baseFiles, ...this.overlay.files]);
    const superseded = new Set([...this.baseSuperseded, ...this.overlay.superseded]);
    let rebuild = [...known].some((f) => !listed.has(f) || superseded.has(f));
    const toLoad = [...listed].filter((f) => !known.has(f) && !superseded.has(f));
    if (!toLoad.length && !rebuild) {
      this.broken = undefined;
      return;
    }

    const sorter = new ExternalSorter(this.dir, this.sortRunEntries);
    const packs = new SyncPacks();
    const loaded: string[] = []; // tag = position + 1
    try {
      let done = 0;
      let total = toLoad.length;
      const loadOne = async (f: string) => {
        throwIfAborted(signal);
        // Superseded by a file read earlier in this sync: no need to read it at all.
        if (superseded.has(f)) {
          onProgress?.(++done, total);
          return;
        }
        const content = await load(Buffer.from(f, 'hex'));
        throwIfAborted(signal);
        for (const p of content.packs) {
          const why = invalidPack(p);
          if (why) throw new CofferError('CORRUPT', `Cannot use index file ${f.slice(0, 12)}: ${why}`, { hint: 'Run `coffer repo check`; `coffer repo repair index` recreates the index from the packs.' });
        }
        const tag = loaded.push(f);
        for (const s of content.supersedes) superseded.add(hex(s));
        for (const p of content.packs) {
          const no = packs.add(p.packId, p.packSize, tag);
          for (const e of p.entries) {
            const pos = sorter.slot();
            writeRecord(sorter.buffer, pos, e.id, no, e, 0);
            sorter.buffer.writeUInt32LE(tag, pos + SORT_TAG);
          }
        }
        this.counters.filesLoaded++;
        onProgress?.(++done, total);
      };
      for (const f of toLoad) await loadOne(f);
      if (!rebuild) rebuild = [...known].some((f) => superseded.has(f));
      if (rebuild) {
        // The cache file cannot drop one file's entries: start again from the files in force.
        const again = [...known].filter((f) => listed.has(f) && !superseded.has(f));
        total += again.length;
        for (const f of again) await loadOne(f);
      }
      throwIfAborted(signal);

      // Commit: synchronous from here on, so no lookup sees a half-updated index.
      const active = loaded.map((f) => !superseded.has(f));
      const activeFiles = loaded.filter((_, i) => active[i]);
      const inForce = (s: Iterable<string>) => [...s].filter((f) => listed.has(f));
      if (rebuild) {
        const old = this.overlay;
        this.rewrite({ base: 'session', overlay: false, sync: { sorter, packs, active }, files: activeFiles, superseded: inForce(superseded), kind: 'rebuild', signal });
        this.overlay = new Overlay();
        this.carrySessionRecords(old);
      } else if (this.overlay.n + sorter.count > this.overlayLimit) {
        this.rewrite({
          base: 'visible', overlay: true, sync: { sorter, packs, active },
          files: [...this.baseFiles, ...this.overlay.files, ...activeFiles],
          superseded: inForce(superseded), kind: 'merge', signal,
        });
        this.overlay = new Overlay();
      } else {
        const stream = new MergeStream(sorter.finish(signal));
        const overlayNo = new Map<number, number>();
        const ovNo = (no: number) => {
          let o = overlayNo.get(no);
          if (o === undefined) overlayNo.set(no, (o = this.overlay.packNo(packs.ids.subarray(no * ID_SIZE, (no + 1) * ID_SIZE), packs.sizes[no]!, PACK_FILE_LISTED)));
          return o;
        };
        // Packs with no entries are part of the index too.
        for (let no = 0; no < packs.sizes.length; no++) if (packs.isActive(no, active)) ovNo(no);
        try {
          while (stream.next()) {
            const buf = stream.buf;
            const pos = stream.pos;
            if (!active[buf.readUInt32LE(pos + SORT_TAG) - 1]) continue;
            const no = buf.readUInt32LE(pos + REC_PACK);
            buf.copy(this.scratch, 0, pos, pos + RECORD_SIZE);
            this.scratch.writeUInt32LE(ovNo(no), REC_PACK);
            this.insertRecord(this.scratch, packs.ids, no * ID_SIZE);
          }
        } finally {
          stream.close();
        }
        for (const f of activeFiles) this.overlay.files.add(f);
        const sup = inForce(superseded);
        this.overlay.superseded.clear();
        for (const s of sup) this.overlay.superseded.add(s);
        this.writeDelta();
      }
      this.broken = undefined;
    } finally {
      sorter.cleanup();
    }
  }

  /** After a rebuild: this process's own unconfirmed blobs go back into the (new) overlay. */
  private carrySessionRecords(old: Overlay): void {
    const nos = new Map<number, number>();
    const no = (o: number) => {
      let n = nos.get(o);
      if (n === undefined) nos.set(o, (n = this.overlay.packNo(old.packIdAt(o), old.packSizes[o]!, PACK_SESSION_REF)));
      return n;
    };
    // Only packs that still have a session record: a pack whose records an index file confirmed
    // and a prune then dropped must not come back as an empty pack of this session.
    for (let i = 0; i < old.n; i++) {
      const pos = i * RECORD_SIZE;
      if (!(old.recs[pos + REC_FLAGS]! & FLAG_SESSION)) continue;
      const o = old.recs.readUInt32LE(pos + REC_PACK);
      old.recs.copy(this.scratch, 0, pos, pos + RECORD_SIZE);
      this.scratch[REC_FLAGS] = this.scratch[REC_FLAGS]! & PERSISTED_FLAGS;
      this.scratch.writeUInt32LE(no(o), REC_PACK);
      this.insertRecord(this.scratch, old.packIds, o * ID_SIZE);
    }
  }

  /** Saves the overlay's index-file entries next to the cache file, so the next run need not read those files again. */
  private writeDelta(): void {
    const ov = this.overlay;
    const packNos: number[] = [];
    for (let no = 0; no < ov.packCount; no++) if (ov.isFileListed(no)) packNos.push(no);
    if (ov.files.size === 0) {
      this.discard(this.deltaPath);
      return;
    }
    packNos.sort((a, b) => compareIdAt(ov.packIds, a * ID_SIZE, ov.packIds, b * ID_SIZE));
    const map = new Int32Array(ov.packCount).fill(-1);
    const table = Buffer.alloc(packNos.length * PACK_RECORD_SIZE);
    packNos.forEach((no, i) => {
      map[no] = i;
      ov.packIds.copy(table, i * PACK_RECORD_SIZE, no * ID_SIZE, (no + 1) * ID_SIZE);
      table.writeUInt32LE(ov.packSizes[no]!, i * PACK_RECORD_SIZE + ID_SIZE);
      table[i * PACK_RECORD_SIZE + 36] = PACK_FILE_LISTED;
    });
    const writer = new CacheWriter(this.tempPath('delta'), this.pageRecords);
    try {
      for (const i of ov.sortedOrder()) {
        const pos = i * RECORD_SIZE;
        if (ov.recs[pos + REC_FLAGS]! & FLAG_SESSION) continue;
        ov.recs.copy(this.scratch, 0, pos, pos + RECORD_SIZE);
        this.scratch[REC_FLAGS] = this.scratch[REC_FLAGS]! & (FLAG_TREE | FLAG_COMPRESSED);
        this.scratch.writeUInt32LE(map[ov.recs.readUInt32LE(pos + REC_PACK)]!, REC_PACK);
        writer.append(this.scratch, 0);
      }
      writer.finish({ kind: KIND_DELTA, packTable: table, files: [...ov.files].sort(), superseded: [...ov.superseded].sort(), generation: randomBytes(16), baseGeneration: this.generation }, this.deltaPath);
    } catch (e) {
      writer.abort();
      throw e;
    }
    this.counters.deltaWrites++;
  }

  private tempPath(what: string): string {
    return join(this.dir, `${what}-${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
  }

  /**
   * Writes a new cache file from the current one, the overlay and/or a sync's sorted runs, in one
   * streaming k-way merge, and switches to it. Pack numbers are reassigned in pack-id order.
   */
  private rewrite(plan: RewritePlan): void {
    const base = this.base;
    const ov = this.overlay;
    const sync = plan.sync;
    // 1. The pack table.
    const sources: PackSource[] = [];
    if (base) {
      for (let no = 0; no < base.packCount; no++) {
        const p = no * PACK_RECORD_SIZE;
        const f = base.packTable[p + 36]!;
        const sessionRef = (f & PACK_SESSION_REF) !== 0 && this.sessionVisible;
        if (plan.base === 'visible' ? (f & PACK_FILE_LISTED) !== 0 || sessionRef : sessionRef) {
          sources.push({ id: base.packTable.subarray(p, p + ID_SIZE), size: base.packTable.readUInt32LE(p + ID_SIZE), flags: plan.base === 'visible' ? f & PACK_FILE_LISTED : 0, src: 0, no });
        }
      }
    }
    if (plan.overlay) {
      for (let no = 0; no < ov.packCount; no++) sources.push({ id: ov.packIdAt(no), size: ov.packSizes[no]!, flags: ov.packFlags[no]! & PACK_FILE_LISTED, src: 1, no });
    }
    if (sync) {
      for (let no = 0; no < sync.packs.sizes.length; no++) {
        if (sync.packs.isActive(no, sync.active)) sources.push({ id: sync.packs.ids.subarray(no * ID_SIZE, (no + 1) * ID_SIZE), size: sync.packs.sizes[no]!, flags: PACK_FILE_LISTED, src: 2, no });
      }
    }
    sources.sort((a, b) => Buffer.compare(a.id, b.id)); // stable: the first source's size wins
    const maps = [new Int32Array(base?.packCount ?? 0).fill(-1), new Int32Array(ov.packCount).fill(-1), new Int32Array(sync?.packs.sizes.length ?? 0).fill(-1)];
    let packCount = 0;
    const finalFlags: number[] = [];
    const table = Buffer.alloc(sources.length * PACK_RECORD_SIZE);
    for (let i = 0; i < sources.length; i++) {
      const s = sources[i]!;
      if (i === 0 || !s.id.equals(sources[i - 1]!.id)) {
        s.id.copy(table, packCount * PACK_RECORD_SIZE);
        table.writeUInt32LE(s.size, packCount * PACK_RECORD_SIZE + ID_SIZE);
        finalFlags.push(0);
        packCount++;
      }
      finalFlags[packCount - 1] = finalFlags[packCount - 1]! | s.flags;
      maps[s.src]![s.no] = packCount - 1;
    }
    sources.length = 0;

    // 2. The records: one merge over every input, a group of same-id records at a time.
    const inputs: RecordStream[] = [];
    const kinds: number[] = [];
    let upperBound = 0;
    if (base && base.pages) {
      const scan = new PageScanner(base);
      inputs.push({ buf: scan.buffer, pos: 0, next() { const ok = scan.next(); this.pos = scan.pos; return ok; }, close() {} });
      kinds.push(0);
      upperBound += base.recordCount;
    }
    if (plan.overlay && ov.n) {
      inputs.push(new (class implements RecordStream {
        buf = ov.recs;
        pos = 0;
        private i = 0;
        private readonly order = ov.sortedOrder();
        next(): boolean {
          if (this.i >= this.order.length) return false;
          this.pos = this.order[this.i++]! * RECORD_SIZE;
          return true;
        }
        close(): void {}
      })());
      kinds.push(1);
      upperBound += ov.n;
    }
    if (sync) {
      for (const s of sync.sorter.finish(plan.signal)) {
        inputs.push(s);
        kinds.push(2);
      }
      upperBound += sync.sorter.count;
    }
    const filter = this.filterBits ? new BloomFilter(upperBound + this.overlayLimit, this.filterBits) : undefined;
    const merge = new MergeStream(inputs);
    let writer: CacheWriter;
    try {
      writer = new CacheWriter(this.tempPath('base'), this.pageRecords);
    } catch (e) {
      merge.close();
      throw e;
    }
    let group = Buffer.alloc(RECORD_SIZE * 16);
    let gn = 0;
    const emit = (buf: Buffer, pos: number) => {
      writer.append(buf, pos);
      if (buf[pos + REC_FLAGS]! & FLAG_SESSION) finalFlags[buf.readUInt32LE(pos + REC_PACK)] = finalFlags[buf.readUInt32LE(pos + REC_PACK)]! | PACK_SESSION_REF;
      filter?.add(buf, pos);
    };
    const flush = () => {
      if (gn === 1) emit(group, 0);
      else if (gn > 1) {
        const key = (i: number) => (group[i * RECORD_SIZE + REC_FLAGS]! & FLAG_TREE) * 2 ** 32 + group.readUInt32LE(i * RECORD_SIZE + REC_PACK);
        const order = Array.from({ length: gn }, (_, i) => i).sort((a, b) => key(a) - key(b));
        for (let i = 0; i < order.length; ) {
          let best = order[i]!;
          let j = i + 1;
          for (; j < order.length && key(order[j]!) === key(best); j++) {
            if (!firstWins(group, best * RECORD_SIZE, group, order[j]! * RECORD_SIZE)) best = order[j]!;
          }
          emit(group, best * RECORD_SIZE);
          i = j;
        }
      }
      gn = 0;
    };
    let completed = false;
    try {
      while (merge.next()) {
        const buf = merge.buf;
        const pos = merge.pos;
        const kind = kinds[merge.source]!;
        const flags = buf[pos + REC_FLAGS]!;
        if (kind === 0) {
          if (flags & FLAG_SESSION ? !this.sessionVisible : plan.base === 'session') continue;
        } else if (kind === 2) {
          if (!sync!.active[buf.readUInt32LE(pos + SORT_TAG) - 1]) continue;
        }
        const mapped = maps[kind]![buf.readUInt32LE(pos + REC_PACK)]!;
        if (mapped < 0) throw new CofferError('INTERNAL', 'Cannot rewrite the local index cache: a record refers to a pack that is not in the new pack table');
        if (gn && compareIdAt(group, 0, buf, pos) !== 0) flush();
        if ((gn + 1) * RECORD_SIZE > group.length) {
          const g = Buffer.alloc(group.length * 2);
          group.copy(g);
          group = g;
        }
        const gp = gn * RECORD_SIZE;
        buf.copy(group, gp, pos, pos + RECORD_SIZE);
        group.writeUInt32LE(mapped, gp + REC_PACK);
        group[gp + REC_FLAGS] = flags & PERSISTED_FLAGS;
        gn++;
      }
      flush();
      for (let i = 0; i < packCount; i++) table[i * PACK_RECORD_SIZE + 36] = finalFlags[i]!;
      const generation = randomBytes(16);
      const summary: CacheSummary = writer.finish(
        { kind: KIND_BASE, packTable: table.subarray(0, packCount * PACK_RECORD_SIZE), files: [...new Set(plan.files)].sort(), superseded: [...new Set(plan.superseded)].sort(), generation, baseGeneration: ZERO_GEN },
        this.basePath,
      );
      completed = true;
      const next = CacheFile.open(this.basePath, KIND_BASE, { written: summary });
      this.base?.close();
      this.base = next;
      this.sessionVisible = true;
      this.baseFiles = new Set(next.files);
      this.baseSuperseded = new Set(next.superseded);
      this.generation = next.generation;
      this.cache.reset(next);
      this.baseVersion++;
      this.filter = filter;
      this.counters[plan.kind === 'merge' ? 'merges' : 'rebuilds']++;
      // The delta described the old cache file; its entries are in the new one (or reloaded).
      this.discard(this.deltaPath);
    } catch (e) {
      if (!completed) writer.abort();
      if (isCofferError(e, 'CORRUPT')) throw this.fail(e);
      throw e;
    } finally {
      merge.close();
    }
  }

  // ---- the rest ---------------------------------------------------------------------------

  /** An estimate of the bytes this structure holds in memory, excluding V8's fixed overhead. */
  memoryBytes(): number {
    const m = this.memory();
    return m.sparseTable + m.pageCache + m.packTable + m.overlay + m.filter + m.other;
  }

  private memory(): ChunkIndexStats['memory'] {
    const base = this.base;
    return {
      sparseTable: base ? base.sparseHi.byteLength + base.sparseLo.byteLength : 0,
      pageCache: this.cache.memoryBytes(),
      // The pack table shares one buffer with the (small) lists of index files.
      packTable: base ? base.packTable.buffer.byteLength : 0,
      overlay: this.overlay.memoryBytes(),
      filter: this.filter?.bytes ?? 0,
      other: (this.baseFiles.size + this.baseSuperseded.size) * 120 + this.cand.length + RECORD_SIZE,
    };
  }

  stats(): ChunkIndexStats {
    return {
      baseRecords: this.base?.recordCount ?? 0,
      overlayRecords: this.overlay.n,
      pages: this.base?.pages ?? 0,
      pageCacheHits: this.cache.hits,
      pageCacheMisses: this.cache.misses,
      ...this.counters,
      memory: this.memory(),
    };
  }

  /** Closes the cache file. Everything from index files is already saved; session blobs are not meant to be. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.base?.close();
    this.base = undefined;
    this.cache.reset(undefined);
    this.overlay = new Overlay();
  }
}
