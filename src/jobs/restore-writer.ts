// Writing restored files, on the main thread or in writer threads. A restored file costs about
// eight system calls (open, write, fchown, fchmod, utimensat, close, rename, ...) besides its
// bytes; for a snapshot of many small files those calls, not the data, are the work. Made on the
// main thread they leave it no time for anything else; made through the libuv pool they cost a
// thread hand-off each (measured: twice the CPU). A writer thread runs a batch of whole files with
// plain synchronous calls, and several writers run in parallel.
//
// The rules are restore's (restore.ts): a file is created under a fresh temporary name with
// O_EXCL|O_NOFOLLOW, written through that descriptor only, given its metadata (owner, xattrs,
// mode, times, in that order) and renamed into place once complete; on failure the temporary
// file is removed. The bytes a writer gets were verified (MAC and chunk id) before they were
// handed over. restore.ts uses the same functions for the files it finishes itself.

import { availableParallelism } from 'node:os';
import { chmodSync, closeSync, constants, fchmodSync, fchownSync, fstatSync, ftruncateSync, lchownSync, openSync, renameSync, rmdirSync, unlinkSync, writeSync } from 'node:fs';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { isAllZero } from '../core/bytes.ts';
import { workerExecArgv } from '../core/worker-argv.ts';
import { CofferError, isCofferError, type ErrorCode } from '../core/errors.ts';
import type { NodeType } from '../repository/tree.ts';
import { setTimesNs, writeXattrs, type Xattr } from '../sources/metadata.ts';

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK } = constants;
const SPARSE_BLOCK = 4096;

/** What applyMeta() needs of a tree node. */
export interface MetaNode {
  type: NodeType;
  uid: number;
  gid: number;
  mode: number;
  mtimeNs: string;
  atimeNs?: string;
  xattrs?: Xattr[];
}

function writeAll(fd: number, data: Uint8Array, offset: number, length: number, at: number): void {
  while (length > 0) {
    const n = writeSync(fd, data, offset, length, at);
    offset += n;
    length -= n;
    at += n;
  }
}

/** Writes `data` at `at`; with `holes`, zero blocks (4 KiB, aligned in the file) are skipped. */
export function writeBlock(fd: number, data: Uint8Array, at: number, holes: boolean): void {
  if (!holes) {
    writeAll(fd, data, 0, data.length, at);
    return;
  }
  let runStart = -1;
  for (let off = 0; off < data.length; ) {
    const end = Math.min(data.length, off + SPARSE_BLOCK - ((at + off) % SPARSE_BLOCK));
    const isZero = isAllZero(data.subarray(off, end));
    if (!isZero && runStart < 0) runStart = off;
    if (isZero && runStart >= 0) {
      writeAll(fd, data, runStart, off - runStart, at + runStart);
      runStart = -1;
    }
    off = end;
  }
  if (runStart >= 0) writeAll(fd, data, runStart, data.length - runStart, at + runStart);
}

/**
 * Ownership (as root), extended attributes, mode and times of a new entry at `p` (a temporary
 * name, or through its open descriptor `fd`). A step that fails is reported through `warn` and
 * the others still run: the entry's content is restored all the same.
 */
export function applyMeta(p: Buffer, node: MetaNode, fd: number | undefined, asRoot: boolean, warn: (problem: string) => void): void {
  const step = (what: string, fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      if (isCofferError(e, 'CANCELLED')) throw e;
      warn(`cannot restore ${what}: ${(e as Error).message}`);
    }
  };
  if (asRoot) step(`owner ${node.uid}:${node.gid}`, () => (fd !== undefined ? fchownSync(fd, node.uid, node.gid) : lchownSync(p, node.uid, node.gid)));
  // After chown (which clears security.capability), before chmod (user.* needs write access).
  if (node.xattrs?.length) {
    // The helpers act on the entry itself (lsetxattr, utimensat without following): safe on symlinks.
    step('extended attributes', () => writeXattrs(p, node.xattrs!, warn));
  }
  if (node.type !== 'symlink') {
    // A special file is changed by path: safe, as the name is our fresh temporary one.
    step('mode', () => (fd !== undefined ? fchmodSync(fd, node.mode) : chmodSync(p, node.mode)));
  }
  step('times', () => setTimesNs(p, node, { nofollow: true }));
}

/** What a writer needs to create and finish a file. */
export interface FileHeader {
  /** A fresh temporary name in the file's directory, and the name it ends up with. */
  tmp: Uint8Array;
  final: Uint8Array;
  /** An empty directory is at `final` and is replaced (--overwrite always). */
  replaceDir: boolean;
  size: number;
  /** The node is sparse: the file is truncated to its size whatever was written. */
  sparse: boolean;
  /** Zero blocks are left as holes. */
  holes: boolean;
  meta: MetaNode;
  /** Report the inode (the first of a hard-link group). */
  wantIno: boolean;
}

/**
 * Writing some of a file's content. A file's ops go to one writer, in order: the first carries
 * the header (create the temporary file), the last finishes the file and renames it into place.
 */
export interface WriteOp {
  /** The caller's id for the file. */
  file: number;
  header?: FileHeader;
  /** Where each blob goes (an index into the batch's blobs); holes are not listed. */
  parts: Array<{ blob: number; pos: number }>;
  last: boolean;
  /** With `last`: put the file here instead of the header's `final` (a salvaged file's name). */
  final?: Uint8Array;
}

export interface SerializedError {
  message: string;
  /** An errno name (ENOSPC, ...) for file-system errors. */
  errno?: string;
  syscall?: string;
  coffer?: ErrorCode;
  hint?: string;
}

/** `kept`: the temporary name is not ours any more (someone replaced it) and was left alone. */
export type WriteOutcome = { ok: true; ino?: bigint; warnings: string[] } | { ok: false; error: SerializedError; kept?: boolean; warnings: string[] };

const asBuffer = (u: Uint8Array): Buffer => (Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength));

/** A file between its first and its last op. */
interface OpenFile {
  h: FileHeader;
  tmp: Buffer;
  /** Closed when too many files are open; reopened (and checked) when needed. */
  fd: number | undefined;
  dev: bigint;
  ino: bigint;
  /** Where the last byte written ends: ftruncate() is needed only if holes reach the end. */
  written: number;
}

/** Files a writer keeps open between ops; beyond this the least recently used is closed. */
const MAX_OPEN = 128;

class Replaced extends CofferError {}

/**
 * Runs write ops with plain synchronous calls, keeping files open between their ops. Used by the
 * writer threads (and directly by tests).
 */
export class FileOps {
  private readonly files = new Map<number, OpenFile>();
  private readonly asRoot: boolean;

  constructor(asRoot: boolean) {
    this.asRoot = asRoot;
  }

  /** Runs one op; on failure the file is closed and its temporary file removed (if still ours). */
  run(op: WriteOp, blobs: readonly Uint8Array[], warn: (problem: string) => void): bigint | undefined {
    let f = this.files.get(op.file);
    if (op.header) {
      if (f) throw new CofferError('INTERNAL', `Cannot restore ${asBuffer(op.header.final).toString()}: it was started twice`);
      const tmp = asBuffer(op.header.tmp);
      const fd = openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
      let st;
      try {
        st = fstatSync(fd, { bigint: true });
      } catch (e) {
        closeSync(fd);
        unlinkQuietly(tmp);
        throw e;
      }
      f = { h: op.header, tmp, fd, dev: st.dev, ino: st.ino, written: 0 };
      this.files.set(op.file, f);
    } else if (!f) {
      // An earlier op of this file failed and removed it; that failure was reported.
      throw new CofferError('INTERNAL', 'Cannot write to a restored file: it is not open');
    } else {
      // Most recently used last.
      this.files.delete(op.file);
      this.files.set(op.file, f);
    }
    try {
      const fd = this.descriptor(f);
      for (const p of op.parts) {
        const data = blobs[p.blob]!;
        writeBlock(fd, data, p.pos, f.h.holes);
        f.written = Math.max(f.written, p.pos + data.length);
      }
      if (!op.last) {
        this.evict();
        return undefined;
      }
      try {
        if (f.written !== f.h.size || f.h.sparse) ftruncateSync(fd, f.h.size);
        applyMeta(f.tmp, f.h.meta, fd, this.asRoot, warn);
      } finally {
        f.fd = undefined;
        closeSync(fd);
      }
      const final = asBuffer(op.final ?? f.h.final);
      if (f.h.replaceDir && !op.final) rmdirSync(final);
      renameSync(f.tmp, final);
      this.files.delete(op.file);
      return f.h.wantIno ? f.ino : undefined;
    } catch (e) {
      this.files.delete(op.file);
      if (f.fd !== undefined) {
        try {
          closeSync(f.fd);
        } catch {
          // failing anyway
        }
      }
      if (!(e instanceof Replaced)) unlinkQuietly(f.tmp);
      throw e;
    }
  }

  /** Closes every file still open (after a failed restore; their names are removed by the caller). */
  closeAll(): void {
    for (const f of this.files.values()) {
      if (f.fd !== undefined) {
        try {
          closeSync(f.fd);
        } catch {
          // nothing to do
        }
      }
    }
    this.files.clear();
  }

  private descriptor(f: OpenFile): number {
    if (f.fd !== undefined) return f.fd;
    // Between two ops the name is all that links us to the file: it must still be our inode.
    // (O_NONBLOCK: a FIFO put in its place must not hang the restore.)
    const fd = openSync(f.tmp, O_WRONLY | O_NOFOLLOW | O_NONBLOCK);
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile() || st.dev !== f.dev || st.ino !== f.ino) {
      closeSync(fd);
      throw new Replaced('REFUSED', `Cannot restore ${asBuffer(f.h.final).toString()}: its temporary file ${f.tmp.toString()} was replaced while the restore wrote it`, {
        hint: 'Make sure nothing else changes the target directory while a restore writes into it.',
      });
    }
    f.fd = fd;
    return fd;
  }

  private evict(): void {
    let open = 0;
    for (const f of this.files.values()) if (f.fd !== undefined) open++;
    for (const f of this.files.values()) {
      if (open <= MAX_OPEN) break;
      if (f.fd === undefined) continue;
      closeSync(f.fd);
      f.fd = undefined;
      open--;
    }
  }
}

function unlinkQuietly(p: Buffer): void {
  try {
    unlinkSync(p);
  } catch {
    // gone already
  }
}

export function serializeError(e: unknown): SerializedError {
  if (isCofferError(e)) return { message: e.message, coffer: e.code, hint: e.hint };
  const err = e as NodeJS.ErrnoException;
  return { message: err instanceof Error ? err.message : String(e), errno: typeof err?.code === 'string' ? err.code : undefined, syscall: err?.syscall };
}

/** The error again, as restore classifies it: a CofferError, an errno error, or a bug. */
export function deserializeError(s: SerializedError): Error {
  if (s.coffer) return new CofferError(s.coffer, s.message, { hint: s.hint });
  return Object.assign(new Error(s.message), s.errno ? { code: s.errno, syscall: s.syscall } : {});
}

// ---- writer threads ---------------------------------------------------------------------------

interface WriterInit {
  cofferRestoreWriter: true;
  asRoot: boolean;
}
type Request = { id: number; ops: WriteOp[]; blobs: Uint8Array[] } | { id: number; closeAll: true };
interface Reply { id: number; outcomes: WriteOutcome[] }

function runOps(files: FileOps, ops: WriteOp[], blobs: Uint8Array[]): WriteOutcome[] {
  return ops.map((op): WriteOutcome => {
    const warnings: string[] = [];
    try {
      const ino = files.run(op, blobs, (p) => warnings.push(p));
      return { ok: true, ino, warnings };
    } catch (e) {
      return { ok: false, error: serializeError(e), ...(e instanceof Replaced ? { kept: true } : {}), warnings };
    }
  });
}

interface Writer {
  worker: Worker;
  pending: Map<number, { resolve: (o: WriteOutcome[]) => void; reject: (e: unknown) => void }>;
  dead?: CofferError;
}

/**
 * Writer threads. write() hands ops to a writer; the blobs' memory moves to it (transferred, not
 * copied), so the caller must not use them afterwards; blobs in shared memory are shared, and
 * the caller may reuse that memory once write() has settled.
 */
export class FileWriters {
  private readonly writers: Writer[] = [];
  private nextId = 1;
  private closed = false;

  constructor(count = Math.min(2, availableParallelism()), asRoot = process.getuid?.() === 0) {
    const init: WriterInit = { cofferRestoreWriter: true, asRoot };
    for (let i = 0; i < Math.max(1, count); i++) {
      const worker = new Worker(new URL(import.meta.url), { workerData: init, name: `coffer-restore-writer-${i}`, execArgv: workerExecArgv() });
      const w: Writer = { worker, pending: new Map() };
      worker.on('message', (m: Reply) => {
        const p = w.pending.get(m.id);
        if (!p) return;
        w.pending.delete(m.id);
        if (w.pending.size === 0) worker.unref();
        p.resolve(m.outcomes);
      });
      const fail = (why: string, cause?: unknown) => {
        if (w.dead) return;
        w.dead = new CofferError('INTERNAL', `Cannot write restored files: writer ${i} stopped (${why})`, { cause, hint: 'This is a bug in Coffer or the machine ran out of memory.' });
        for (const p of w.pending.values()) p.reject(w.dead);
        w.pending.clear();
      };
      worker.on('error', (e) => fail(e instanceof Error ? e.message : String(e), e));
      worker.on('exit', (code) => fail(`exit code ${code}`));
      // Only a writer with work keeps the process alive (a 'message' listener refs it: after it).
      worker.unref();
      this.writers.push(w);
    }
  }

  get count(): number {
    return this.writers.length;
  }

  /** The writer with the least work queued. */
  leastBusy(): number {
    let best = 0;
    for (let i = 1; i < this.writers.length; i++) if (this.writers[i]!.pending.size < this.writers[best]!.pending.size) best = i;
    return best;
  }

  /**
   * Runs ops on writer `index`, in order after the ops sent to it before (posted before this
   * returns); resolves with one outcome per op.
   */
  write(index: number, ops: WriteOp[], blobs: Uint8Array[]): Promise<WriteOutcome[]> {
    const transfer: ArrayBuffer[] = [];
    const seen = new Set<ArrayBuffer>();
    const sent = blobs.map((b) => {
      // Shared memory (readBlobs()'s reused buffers) is shared with the writer as it is.
      if (b.buffer instanceof SharedArrayBuffer) return b;
      // Only a buffer that owns all of its ArrayBuffer can move; others (pool slices) are copied.
      const owns = b.buffer instanceof ArrayBuffer && b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && !seen.has(b.buffer);
      const u = owns ? b : new Uint8Array(b);
      seen.add(u.buffer as ArrayBuffer);
      transfer.push(u.buffer as ArrayBuffer);
      return u;
    });
    return this.send(index, { id: this.nextId++, ops, blobs: sent }, transfer);
  }

  /** Closes the files the writers still hold open (their temporary names are the caller's to remove). */
  async closeFiles(): Promise<void> {
    await Promise.allSettled(this.writers.map((_, i) => this.send(i, { id: this.nextId++, closeAll: true }, [])));
  }

  /** Stops the writers once their work in flight is done (files must not be left half done). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled(this.writers.map(async (w) => {
      while (w.pending.size && !w.dead) await new Promise<void>((r) => setTimeout(r, 5));
      await w.worker.terminate();
    }));
  }

  private send(index: number, req: Request, transfer: ArrayBuffer[]): Promise<WriteOutcome[]> {
    const w = this.writers[index]!;
    if (this.closed) return Promise.reject(new CofferError('INTERNAL', 'Cannot write restored files: the writers are closed'));
    if (w.dead) return Promise.reject(w.dead);
    return new Promise<WriteOutcome[]>((resolve, reject) => {
      w.pending.set(req.id, { resolve, reject });
      w.worker.ref();
      try {
        w.worker.postMessage(req, transfer);
      } catch (e) {
        w.pending.delete(req.id);
        reject(new CofferError('INTERNAL', `Cannot write restored files: ${(e as Error).message}`, { cause: e }));
      }
    });
  }
}

if (!isMainThread && (workerData as WriterInit | undefined)?.cofferRestoreWriter) {
  const files = new FileOps((workerData as WriterInit).asRoot);
  parentPort!.on('message', (req: Request) => {
    if ('closeAll' in req) {
      files.closeAll();
      parentPort!.postMessage({ id: req.id, outcomes: [] } satisfies Reply);
      return;
    }
    const outcomes = runOps(files, req.ops, req.blobs);
    // Free the blobs now: this thread allocates too little for its GC to run often, and the
    // blobs it was handed would pile up (hundreds of megabytes) until it did.
    for (const b of req.blobs) if (b.buffer instanceof ArrayBuffer && !b.buffer.detached) b.buffer.transfer(0);
    parentPort!.postMessage({ id: req.id, outcomes } satisfies Reply);
  });
}
