// External sort for building the chunk index from any number of index files in bounded memory:
// records collect in a buffer of at most `runEntries`; a full buffer is sorted by blob id and
// written to a temporary run file; at the end the runs (fewer than FAN_IN, merged in passes if
// there are more) and the sorted remainder are read back through a k-way heap merge.
//
// Sort records are index records (record.ts) plus a u32 tag: which index file they came from.

import { closeSync, mkdirSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CofferError, throwIfAborted } from '../../core/errors.ts';
import { storageError } from './cache-file.ts';
import { RECORD_SIZE, compareIdAt, idWord } from './record.ts';

export const SORT_RECORD_SIZE = RECORD_SIZE + 4;
export const SORT_TAG = RECORD_SIZE;
/** Runs merged at once: bounds open files and read buffers (FAN_IN × READ_RECORDS records). */
export const FAN_IN = 32;
const READ_RECORDS = 2048;
/** Index bits packed beside the 32-bit id prefix in a float64 sort key (32 + 21 ≤ 53). */
const INDEX_BITS = 21;
export const MAX_RUN_ENTRIES = 1 << INDEX_BITS;
const INDEX_SCALE = 2 ** INDEX_BITS;

/** A stream of records in id order; `buf` and `pos` locate the current one after next(). */
export interface RecordStream {
  buf: Buffer;
  pos: number;
  next(): boolean;
  close(): void;
}

/**
 * Sorts `n` records of `size` bytes in `buf` by id and returns their indexes in order. Numbers
 * sort natively (Float64Array.sort): the key is the id's first 32 bits with the record index
 * below them; ties on those 32 bits (rare for random ids, common for duplicates) are then
 * ordered by the full id.
 */
export function sortById(buf: Buffer, n: number, size: number): Uint32Array {
  if (n > MAX_RUN_ENTRIES) throw new CofferError('INTERNAL', `Cannot sort ${n} records at once: at most ${MAX_RUN_ENTRIES}`);
  const keys = new Float64Array(n);
  for (let i = 0; i < n; i++) keys[i] = idWord(buf, i * size) * INDEX_SCALE + i;
  keys.sort();
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = keys[i]! % INDEX_SCALE;
  const cmp = (a: number, b: number) => compareIdAt(buf, a * size, buf, b * size);
  for (let i = 0; i < n; ) {
    const w = Math.floor(keys[i]! / INDEX_SCALE);
    let j = i + 1;
    while (j < n && Math.floor(keys[j]! / INDEX_SCALE) === w) j++;
    if (j - i > 1) order.subarray(i, j).sort(cmp);
    i = j;
  }
  return order;
}

/** Records of a buffer, in a given order. */
export class BufferStream implements RecordStream {
  buf: Buffer;
  pos = 0;
  private readonly order: Uint32Array;
  private readonly size: number;
  private i = 0;

  constructor(buf: Buffer, order: Uint32Array, size: number) {
    this.buf = buf;
    this.order = order;
    this.size = size;
  }

  next(): boolean {
    if (this.i >= this.order.length) return false;
    this.pos = this.order[this.i++]! * this.size;
    return true;
  }

  close(): void {}
}

/** Sequential reader of one run file. */
class RunStream implements RecordStream {
  buf = Buffer.allocUnsafeSlow(READ_RECORDS * SORT_RECORD_SIZE);
  pos = 0;
  private readonly path: string;
  private readonly fd: number;
  private filePos = 0;
  private have = 0;
  private i = 0;

  constructor(path: string) {
    this.path = path;
    try {
      this.fd = openSync(path, 'r');
    } catch (e) {
      throw storageError('read', path, e);
    }
  }

  next(): boolean {
    if (this.i >= this.have) {
      let got = 0;
      try {
        for (;;) {
          const n = readSync(this.fd, this.buf, got, this.buf.length - got, this.filePos + got);
          if (n === 0) break;
          got += n;
          if (got === this.buf.length) break;
        }
      } catch (e) {
        throw storageError('read', this.path, e);
      }
      if (got % SORT_RECORD_SIZE) throw new CofferError('INTERNAL', `Cannot read sort run ${this.path}: it ends inside a record`);
      this.filePos += got;
      this.have = got / SORT_RECORD_SIZE;
      this.i = 0;
      if (this.have === 0) return false;
    }
    this.pos = this.i++ * SORT_RECORD_SIZE;
    return true;
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch {
      // Already closed.
    }
  }
}

/** K-way merge of id-ordered streams; `source` tells which input the current record is from. */
export class MergeStream implements RecordStream {
  buf: Buffer = Buffer.alloc(0);
  pos = 0;
  source = -1;
  private readonly inputs: RecordStream[];
  private readonly heap: number[] = [];
  private readonly word: number[];
  private started = false;

  constructor(inputs: RecordStream[]) {
    this.inputs = inputs;
    this.word = inputs.map(() => 0);
  }

  private less(a: number, b: number): boolean {
    const wa = this.word[a]!;
    const wb = this.word[b]!;
    if (wa !== wb) return wa < wb;
    const x = this.inputs[a]!;
    const y = this.inputs[b]!;
    const c = compareIdAt(x.buf, x.pos, y.buf, y.pos);
    return c < 0 || (c === 0 && a < b);
  }

  private pull(i: number): boolean {
    const s = this.inputs[i]!;
    if (!s.next()) return false;
    this.word[i] = idWord(s.buf, s.pos);
    return true;
  }

  private down(k: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * k + 1;
      if (l >= h.length) return;
      let m = l;
      if (l + 1 < h.length && this.less(h[l + 1]!, h[l]!)) m = l + 1;
      if (!this.less(h[m]!, h[k]!)) return;
      [h[m], h[k]] = [h[k]!, h[m]!];
      k = m;
    }
  }

  next(): boolean {
    const h = this.heap;
    if (!this.started) {
      this.started = true;
      for (let i = 0; i < this.inputs.length; i++) if (this.pull(i)) h.push(i);
      for (let k = (h.length >> 1) - 1; k >= 0; k--) this.down(k);
    } else if (this.source >= 0) {
      // Advance the input whose record was handed out last.
      if (this.pull(this.source)) this.down(0);
      else {
        const last = h.pop()!;
        if (h.length) {
          h[0] = last;
          this.down(0);
        }
      }
    }
    if (!h.length) {
      this.source = -1;
      return false;
    }
    this.source = h[0]!;
    const s = this.inputs[this.source]!;
    this.buf = s.buf;
    this.pos = s.pos;
    return true;
  }

  close(): void {
    for (const s of this.inputs) s.close();
  }
}

/** Collects sort records, spilling sorted runs to `dir`; see the module comment. */
export class ExternalSorter {
  private readonly dir: string;
  private readonly runEntries: number;
  private buf: Buffer;
  private n = 0;
  private readonly runs: string[] = [];
  private made = false;
  private seq = 0;
  count = 0;

  constructor(parentDir: string, runEntries: number) {
    this.dir = join(parentDir, `sort-${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
    this.runEntries = Math.max(2, Math.min(MAX_RUN_ENTRIES, runEntries));
    this.buf = Buffer.allocUnsafeSlow(Math.min(this.runEntries, 4096) * SORT_RECORD_SIZE);
  }

  /** Returns the offset in `buffer` where the caller writes the next record (SORT_RECORD_SIZE). */
  slot(): number {
    if (this.n * SORT_RECORD_SIZE === this.buf.length) {
      if (this.n >= this.runEntries) this.spill();
      else {
        const b = Buffer.allocUnsafeSlow(Math.min(this.runEntries, this.n * 2) * SORT_RECORD_SIZE);
        this.buf.copy(b, 0, 0, this.n * SORT_RECORD_SIZE);
        this.buf = b;
      }
    }
    this.count++;
    return this.n++ * SORT_RECORD_SIZE;
  }

  get buffer(): Buffer {
    return this.buf;
  }

  private newRunPath(): string {
    if (!this.made) {
      try {
        mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      } catch (e) {
        throw storageError('create a sort directory for', this.dir, e);
      }
      this.made = true;
    }
    return join(this.dir, `run-${this.seq++}`);
  }

  private spill(): void {
    const order = sortById(this.buf, this.n, SORT_RECORD_SIZE);
    this.runs.push(writeRun(this.newRunPath(), new BufferStream(this.buf, order, SORT_RECORD_SIZE)));
    this.n = 0;
  }

  /**
   * The sorted stream of everything pushed: merges runs down to fewer than FAN_IN first. The
   * in-memory remainder stays in memory (it is one input of the final merge).
   */
  finish(signal?: AbortSignal): RecordStream[] {
    while (this.runs.length >= FAN_IN) {
      throwIfAborted(signal);
      const group = this.runs.splice(0, FAN_IN);
      const merged = new MergeStream(group.map((p) => new RunStream(p)));
      try {
        this.runs.push(writeRun(this.newRunPath(), merged));
      } finally {
        merged.close();
      }
      for (const p of group) rmSync(p, { force: true });
    }
    const out: RecordStream[] = this.runs.map((p) => new RunStream(p));
    if (this.n) out.push(new BufferStream(this.buf, sortById(this.buf, this.n, SORT_RECORD_SIZE), SORT_RECORD_SIZE));
    return out;
  }

  /** Deletes the run files. */
  cleanup(): void {
    if (this.made) rmSync(this.dir, { recursive: true, force: true });
    this.buf = Buffer.alloc(0);
    this.n = 0;
  }
}

function writeRun(path: string, src: RecordStream): string {
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    throw storageError('create', path, e);
  }
  const out = Buffer.allocUnsafeSlow(READ_RECORDS * SORT_RECORD_SIZE * 4);
  let len = 0;
  let filePos = 0;
  const flush = () => {
    let done = 0;
    while (done < len) {
      const n = writeSync(fd, out, done, len - done, filePos);
      done += n;
      filePos += n;
    }
    len = 0;
  };
  try {
    while (src.next()) {
      if (len + SORT_RECORD_SIZE > out.length) flush();
      src.buf.copy(out, len, src.pos, src.pos + SORT_RECORD_SIZE);
      len += SORT_RECORD_SIZE;
    }
    flush();
  } catch (e) {
    throw e instanceof CofferError ? e : storageError('write', path, e);
  } finally {
    closeSync(fd);
  }
  return path;
}
