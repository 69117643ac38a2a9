// The local chunk-index cache file: every record sorted, in checksummed pages, followed by the pack
// table and the set of repository index files the records come from. It is a cache: anything
// wrong with it (damage, an unknown version, a crash half-way through writing) means it is
// discarded and rebuilt from the repository, never trusted. Files are written to a temporary name
// and renamed into place, so a reader sees either the old file or the new one.
//
// Layout, version 1 (docs/index.md, "Cache file"):
//   header (128 bytes): "CFXC" | u32 version | u32 kind (1 base, 2 delta) | u32 record size
//     | u32 records per page | u32 packs | u32 files | u32 superseded | u48 records (+2)
//     | u48 session records (+2) | generation[16] | base generation[16] | u48 meta offset (+2)
//     | u48 meta length (+2) | u32 meta CRC-32 | zeros | u32 CRC-32 of bytes 0..123
//   pages: up to P records of 53 bytes, then the CRC-32 of those records (u32)
//   meta: packs × 40 bytes (sorted by id) | files × 32-byte id | superseded × 32-byte id

import { closeSync, fstatSync, openSync, readSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { CofferError } from '../../core/errors.ts';
import {
  FLAG_SESSION, ID_SIZE, PACK_FILE_LISTED, PACK_RECORD_SIZE, PACK_SESSION_REF, PERSISTED_FLAGS, REC_FLAGS, REC_PACK, RECORD_SIZE,
  U32List, compareIdAt, idWord,
} from './record.ts';

export const CACHE_MAGIC = 'CFXC';
export const CACHE_VERSION = 1;
export const HEADER_SIZE = 128;
export const KIND_BASE = 1;
export const KIND_DELTA = 2;
export const MAX_PAGE_RECORDS = 4096;

export interface CacheMeta {
  kind: number;
  /** packCount × PACK_RECORD_SIZE bytes, sorted by pack id, no duplicates. */
  packTable: Buffer;
  /** Ids (hex) of the repository index files whose entries this file holds. */
  files: string[];
  /** Ids (hex) of index files that the files above supersede and that were still listed. */
  superseded: string[];
  /** Random id of this file; a delta names the base it extends. */
  generation: Buffer;
  baseGeneration: Buffer;
}

export interface CacheSummary {
  pageRecords: number;
  recordCount: number;
  sessionCount: number;
  /** First 8 bytes of the first id of each page, as two u32 arrays: the sparse table. */
  sparseHi: Uint32Array;
  sparseLo: Uint32Array;
}

export function pageBytes(pageRecords: number): number {
  return pageRecords * RECORD_SIZE + 4;
}

export function pageCount(recordCount: number, pageRecords: number): number {
  return Math.ceil(recordCount / pageRecords);
}

function dataBytes(recordCount: number, pageRecords: number): number {
  const full = Math.floor(recordCount / pageRecords);
  const rest = recordCount - full * pageRecords;
  return full * pageBytes(pageRecords) + (rest ? rest * RECORD_SIZE + 4 : 0);
}

export function storageError(action: string, path: string, e: unknown): CofferError {
  return new CofferError('STORAGE_ERROR', `Cannot ${action} the local index cache ${path}: ${(e as Error).message}`, {
    cause: e,
    hint: 'Check the free space and permissions of the cache directory (COFFER_CACHE_DIR), or delete it: it is rebuilt from the repository.',
  });
}

/** Thrown for a cache file that must not be used; the caller deletes it and rebuilds. */
export function damaged(path: string, why: string): CofferError {
  return new CofferError('CORRUPT', `Cannot use the local index cache ${path}: ${why}`, {
    hint: 'The cache is discarded and rebuilt from the repository; nothing in the repository is affected.',
  });
}

/** Compares (id, type, packNo) of two records. */
export function compareRecordKey(a: Buffer, ap: number, b: Buffer, bp: number): number {
  const c = compareIdAt(a, ap, b, bp);
  if (c) return c;
  const t = (a[ap + REC_FLAGS]! & 1) - (b[bp + REC_FLAGS]! & 1);
  if (t) return t;
  return a.readUInt32LE(ap + REC_PACK) - b.readUInt32LE(bp + REC_PACK);
}

/** Streams sorted records into pages of a new cache file; finish() writes meta and header. */
export class CacheWriter {
  readonly path: string;
  readonly pageRecords: number;
  private readonly fd: number;
  private readonly page: Buffer;
  private pageN = 0;
  private readonly out = Buffer.allocUnsafeSlow(1 << 20);
  private outLen = 0;
  private filePos = HEADER_SIZE;
  private readonly prev = Buffer.alloc(RECORD_SIZE);
  private hasPrev = false;
  private readonly hi = new U32List(1024);
  private readonly lo = new U32List(1024);
  recordCount = 0;
  sessionCount = 0;
  private closed = false;

  constructor(path: string, pageRecords: number) {
    this.path = path;
    this.pageRecords = pageRecords;
    this.page = Buffer.allocUnsafeSlow(pageBytes(pageRecords));
    try {
      this.fd = openSync(path, 'wx', 0o600);
    } catch (e) {
      throw storageError('create', path, e);
    }
  }

  /** Appends a record; records must come in strictly increasing (id, type, packNo) order. */
  append(src: Buffer, pos: number): void {
    if (this.hasPrev && compareRecordKey(this.prev, 0, src, pos) >= 0) {
      throw new CofferError('INTERNAL', `Cannot write the local index cache ${this.path}: records out of order`, { hint: 'This is a bug in Coffer. Please report it.' });
    }
    src.copy(this.prev, 0, pos, pos + RECORD_SIZE);
    this.hasPrev = true;
    if (this.pageN === 0) {
      this.hi.push(idWord(src, pos));
      this.lo.push(idWord(src, pos + 4));
    }
    src.copy(this.page, this.pageN * RECORD_SIZE, pos, pos + RECORD_SIZE);
    this.pageN++;
    this.recordCount++;
    if (src[pos + REC_FLAGS]! & FLAG_SESSION) this.sessionCount++;
    if (this.pageN === this.pageRecords) this.flushPage();
  }

  private flushPage(): void {
    const n = this.pageN * RECORD_SIZE;
    this.page.writeUInt32LE(crc32(this.page.subarray(0, n)), n);
    this.put(this.page.subarray(0, n + 4));
    this.pageN = 0;
  }

  private put(b: Buffer): void {
    if (this.outLen + b.length > this.out.length) this.drain();
    if (b.length > this.out.length) {
      this.writeAll(b);
      return;
    }
    b.copy(this.out, this.outLen);
    this.outLen += b.length;
  }

  private drain(): void {
    if (this.outLen) this.writeAll(this.out.subarray(0, this.outLen));
    this.outLen = 0;
  }

  private writeAll(b: Buffer, at?: number): void {
    let done = 0;
    try {
      while (done < b.length) {
        const n = writeSync(this.fd, b, done, b.length - done, at === undefined ? this.filePos : at + done);
        done += n;
        if (at === undefined) this.filePos += n;
      }
    } catch (e) {
      throw storageError('write', this.path, e);
    }
  }

  /** Writes meta and header, closes, and renames the file to `finalPath`. */
  finish(meta: CacheMeta, finalPath: string): CacheSummary {
    if (this.pageN) this.flushPage();
    const metaOffset = this.filePos + this.outLen;
    const metaBuf = Buffer.alloc(meta.packTable.length + (meta.files.length + meta.superseded.length) * ID_SIZE);
    meta.packTable.copy(metaBuf, 0);
    let p = meta.packTable.length;
    for (const h of [...meta.files, ...meta.superseded]) p += metaBuf.write(h, p, 'hex');
    this.put(metaBuf);
    this.drain();
    const h = Buffer.alloc(HEADER_SIZE);
    h.write(CACHE_MAGIC, 0, 'latin1');
    h.writeUInt32LE(CACHE_VERSION, 4);
    h.writeUInt32LE(meta.kind, 8);
    h.writeUInt32LE(RECORD_SIZE, 12);
    h.writeUInt32LE(this.pageRecords, 16);
    h.writeUInt32LE(meta.packTable.length / PACK_RECORD_SIZE, 20);
    h.writeUInt32LE(meta.files.length, 24);
    h.writeUInt32LE(meta.superseded.length, 28);
    h.writeUIntLE(this.recordCount, 32, 6);
    h.writeUIntLE(this.sessionCount, 40, 6);
    meta.generation.copy(h, 48);
    meta.baseGeneration.copy(h, 64);
    h.writeUIntLE(metaOffset, 80, 6);
    h.writeUIntLE(metaBuf.length, 88, 6);
    h.writeUInt32LE(crc32(metaBuf), 96);
    h.writeUInt32LE(crc32(h.subarray(0, 124)), 124);
    this.writeAll(h, 0);
    this.close();
    try {
      renameSync(this.path, finalPath);
    } catch (e) {
      this.abort();
      throw storageError('replace', finalPath, e);
    }
    return { pageRecords: this.pageRecords, recordCount: this.recordCount, sessionCount: this.sessionCount, sparseHi: this.hi.toArray(), sparseLo: this.lo.toArray() };
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      closeSync(this.fd);
    } catch {
      // Nothing to do: the file is abandoned or already complete.
    }
  }

  /** Closes and deletes the unfinished file. */
  abort(): void {
    this.close();
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone (renamed or never created).
    }
  }
}

export interface OpenOptions {
  /** The summary of a file this process just wrote: the page pass is skipped. */
  written?: CacheSummary;
  /**
   * Called with the record count before the verification pass; the function it returns sees
   * every record, in order (e.g. to fill a filter without reading the file twice).
   */
  visit?: (recordCount: number) => ((buf: Buffer, pos: number) => void) | undefined;
}

/**
 * An open, fully verified cache file. open() reads it once from end to end (checking every page
 * checksum, the record order and every pack reference) and builds the sparse table; later page
 * reads check their checksum again.
 */
export class CacheFile implements CacheSummary {
  readonly path: string;
  readonly fd: number;
  readonly kind: number;
  readonly pageRecords: number;
  readonly pageBytes: number;
  readonly recordCount: number;
  readonly sessionCount: number;
  readonly pages: number;
  readonly sparseHi: Uint32Array;
  readonly sparseLo: Uint32Array;
  readonly packTable: Buffer;
  readonly packCount: number;
  readonly files: string[];
  readonly superseded: string[];
  readonly generation: Buffer;
  readonly baseGeneration: Buffer;
  private closed = false;

  private constructor(path: string, fd: number, h: Buffer, meta: Buffer, summary: CacheSummary) {
    this.path = path;
    this.fd = fd;
    this.kind = h.readUInt32LE(8);
    this.pageRecords = summary.pageRecords;
    this.pageBytes = pageBytes(this.pageRecords);
    this.recordCount = summary.recordCount;
    this.sessionCount = summary.sessionCount;
    this.pages = pageCount(this.recordCount, this.pageRecords);
    this.sparseHi = summary.sparseHi;
    this.sparseLo = summary.sparseLo;
    this.packCount = h.readUInt32LE(20);
    this.packTable = meta.subarray(0, this.packCount * PACK_RECORD_SIZE);
    const nFiles = h.readUInt32LE(24);
    const nSup = h.readUInt32LE(28);
    const ids = (from: number, n: number) => Array.from({ length: n }, (_, i) => meta.toString('hex', from + i * ID_SIZE, from + (i + 1) * ID_SIZE));
    this.files = ids(this.packTable.length, nFiles);
    this.superseded = ids(this.packTable.length + nFiles * ID_SIZE, nSup);
    this.generation = Buffer.from(h.subarray(48, 64));
    this.baseGeneration = Buffer.from(h.subarray(64, 80));
  }

  /**
   * Opens and verifies a cache file. Throws CORRUPT (via `damaged`) for anything wrong with it;
   * fs errors from opening it come through unchanged (ENOENT: there is no cache yet).
   */
  static open(path: string, expectKind: number, options: OpenOptions = {}): CacheFile {
    const fd = openSync(path, 'r');
    try {
      return CacheFile.verify(path, fd, expectKind, options);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  private static verify(path: string, fd: number, expectKind: number, { written, visit }: OpenOptions): CacheFile {
    const bad = (why: string): never => {
      throw damaged(path, why);
    };
    const size = fstatSync(fd).size;
    if (size < HEADER_SIZE) bad('it is shorter than its header');
    const h = Buffer.alloc(HEADER_SIZE);
    readExactly(fd, h, 0, HEADER_SIZE, 0, path);
    if (h.toString('latin1', 0, 4) !== CACHE_MAGIC) bad('bad magic');
    if (h.readUInt32LE(124) !== crc32(h.subarray(0, 124))) bad('header checksum mismatch');
    if (h.readUInt32LE(4) !== CACHE_VERSION) bad(`format version ${h.readUInt32LE(4)} is not ${CACHE_VERSION}`);
    if (h.readUInt32LE(8) !== expectKind) bad(`kind ${h.readUInt32LE(8)} is not ${expectKind}`);
    if (h.readUInt32LE(12) !== RECORD_SIZE) bad('unexpected record size');
    const pageRecords = h.readUInt32LE(16);
    if (pageRecords < 1 || pageRecords > MAX_PAGE_RECORDS) bad('bad page size');
    const packCount = h.readUInt32LE(20);
    const nFiles = h.readUInt32LE(24);
    const nSup = h.readUInt32LE(28);
    const recordCount = h.readUIntLE(32, 6);
    const sessionCount = h.readUIntLE(40, 6);
    const metaOffset = h.readUIntLE(80, 6);
    const metaLength = h.readUIntLE(88, 6);
    if (sessionCount > recordCount) bad('more session records than records');
    if (metaOffset !== HEADER_SIZE + dataBytes(recordCount, pageRecords)) bad('record count does not match the layout');
    if (metaLength !== packCount * PACK_RECORD_SIZE + (nFiles + nSup) * ID_SIZE) bad('meta length does not match its counts');
    if (metaOffset + metaLength !== size) bad(`size ${size} does not match its header`);
    // Allocations below are bounded by the actual file size, checked above.
    const meta = Buffer.allocUnsafeSlow(metaLength);
    readExactly(fd, meta, 0, metaLength, metaOffset, path);
    if (crc32(meta) !== h.readUInt32LE(96)) bad('meta checksum mismatch');
    for (let i = 0; i < packCount; i++) {
      const p = i * PACK_RECORD_SIZE;
      if (meta[p + 36]! & ~(PACK_FILE_LISTED | PACK_SESSION_REF) || meta[p + 37] || meta[p + 38] || meta[p + 39]) bad('bad pack flags');
      if (i > 0 && compareIdAt(meta, p - PACK_RECORD_SIZE, meta, p) >= 0) bad('pack table out of order');
    }

    if (written) {
      if (written.recordCount !== recordCount || written.sessionCount !== sessionCount || written.pageRecords !== pageRecords) bad('it is not the file just written');
      return new CacheFile(path, fd, h, meta, written);
    }
    const onRecord = visit?.(recordCount);
    // One sequential pass over every page.
    const pb = pageBytes(pageRecords);
    const pages = pageCount(recordCount, pageRecords);
    const hi = new Uint32Array(pages);
    const lo = new Uint32Array(pages);
    const perRead = Math.max(1, Math.floor((1 << 20) / pb));
    const chunk = Buffer.allocUnsafeSlow(perRead * pb);
    const prev = Buffer.alloc(RECORD_SIZE);
    let sessions = 0;
    let seen = 0;
    for (let p0 = 0; p0 < pages; p0 += perRead) {
      const n = Math.min(perRead, pages - p0);
      const start = HEADER_SIZE + p0 * pb;
      const end = p0 + n === pages ? metaOffset : start + n * pb;
      readExactly(fd, chunk, 0, end - start, start, path);
      for (let k = 0; k < n; k++) {
        const base = k * pb;
        const recs = Math.min(pageRecords, recordCount - (p0 + k) * pageRecords);
        const len = recs * RECORD_SIZE;
        if (chunk.readUInt32LE(base + len) !== crc32(chunk.subarray(base, base + len))) bad(`page ${p0 + k} checksum mismatch`);
        hi[p0 + k] = idWord(chunk, base);
        lo[p0 + k] = idWord(chunk, base + 4);
        for (let r = 0; r < recs; r++) {
          const pos = base + r * RECORD_SIZE;
          const flags = chunk[pos + REC_FLAGS]!;
          if (flags & ~PERSISTED_FLAGS) bad('bad record flags');
          if (chunk.readUInt32LE(pos + REC_PACK) >= packCount) bad('a record names a pack that is not in the pack table');
          if (seen > 0 && compareRecordKey(prev, 0, chunk, pos) >= 0) bad('records out of order');
          if (flags & FLAG_SESSION) sessions++;
          chunk.copy(prev, 0, pos, pos + RECORD_SIZE);
          seen++;
          onRecord?.(chunk, pos);
        }
      }
    }
    if (sessions !== sessionCount) bad('session record count mismatch');
    return new CacheFile(path, fd, h, meta, { pageRecords, recordCount, sessionCount, sparseHi: hi, sparseLo: lo });
  }

  recordsInPage(p: number): number {
    return Math.min(this.pageRecords, this.recordCount - p * this.pageRecords);
  }

  /** Reads page `p` into dst at dstOff and checks its checksum; returns its record count. */
  readPage(p: number, dst: Buffer, dstOff: number): number {
    const recs = this.recordsInPage(p);
    const len = recs * RECORD_SIZE;
    readExactly(this.fd, dst, dstOff, len + 4, HEADER_SIZE + p * this.pageBytes, this.path);
    if (dst.readUInt32LE(dstOff + len) !== crc32(dst.subarray(dstOff, dstOff + len))) throw damaged(this.path, `page ${p} checksum mismatch`);
    return recs;
  }

  /** Reads `n` consecutive pages from `p` into dst (for sequential scans); checks each one. */
  readPages(p: number, n: number, dst: Buffer): void {
    const start = HEADER_SIZE + p * this.pageBytes;
    const last = p + n - 1;
    const end = HEADER_SIZE + last * this.pageBytes + this.recordsInPage(last) * RECORD_SIZE + 4;
    readExactly(this.fd, dst, 0, end - start, start, this.path);
    for (let k = 0; k < n; k++) {
      const off = k * this.pageBytes;
      const len = this.recordsInPage(p + k) * RECORD_SIZE;
      if (dst.readUInt32LE(off + len) !== crc32(dst.subarray(off, off + len))) throw damaged(this.path, `page ${p + k} checksum mismatch`);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      closeSync(this.fd);
    } catch {
      // Already closed.
    }
  }
}

function readExactly(fd: number, dst: Buffer, off: number, len: number, position: number, path: string): void {
  let done = 0;
  while (done < len) {
    let n: number;
    try {
      n = readSync(fd, dst, off + done, len - done, position + done);
    } catch (e) {
      throw storageError('read', path, e);
    }
    if (n === 0) throw damaged(path, 'it is shorter than its header says');
    done += n;
  }
}

/**
 * Reads the records of a cache file in order, a batch of pages at a time, with its own buffer (so
 * a scan does not evict the page cache).
 */
export class PageScanner {
  private readonly file: CacheFile;
  private readonly buf: Buffer;
  private readonly perRead: number;
  private nextPage = 0;
  private batchPages = 0;
  private batchPage = 0;
  private recInPage = 0;
  private recsThisPage = 0;
  /** Buffer and offset of the current record, valid after next() returned true. */
  pos = 0;

  constructor(file: CacheFile, bufferBytes = 1 << 20) {
    this.file = file;
    this.perRead = Math.max(1, Math.floor(bufferBytes / file.pageBytes));
    this.buf = Buffer.allocUnsafeSlow(this.perRead * file.pageBytes);
  }

  get buffer(): Buffer {
    return this.buf;
  }

  next(): boolean {
    for (;;) {
      if (this.recInPage < this.recsThisPage) {
        this.pos = this.batchPage * this.file.pageBytes + this.recInPage * RECORD_SIZE;
        this.recInPage++;
        return true;
      }
      if (this.batchPage + 1 < this.batchPages) {
        this.batchPage++;
      } else {
        if (this.nextPage >= this.file.pages) return false;
        const n = Math.min(this.perRead, this.file.pages - this.nextPage);
        this.file.readPages(this.nextPage, n, this.buf);
        this.batchPages = n;
        this.batchPage = 0;
        this.nextPage += n;
      }
      this.recInPage = 0;
      this.recsThisPage = this.file.recordsInPage(this.nextPage - this.batchPages + this.batchPage);
    }
  }
}
