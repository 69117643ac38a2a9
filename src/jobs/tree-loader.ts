// Loading many trees, batched: the trees asked for in the same turn of the event loop (and the
// ones announced with prefetch()) are read with one readBlobs() call, pack by pack with
// coalesced ranged reads, and decoded (decrypted, decompressed, verified) in the worker pool.
// An incremental backup looks up the parent snapshot's tree of every directory it walks: one
// ranged get per tree (an open, a read and a close on local disk, a round trip on S3) plus a
// decode on the main thread took a quarter of its time.
//
// A prefetched tree is kept until get() takes it (as many times as it was prefetched): the
// caller prefetches only what it is about to ask for. clear() drops whatever is left.

import { CofferError, isCofferError } from '../core/errors.ts';
import { fromHex, toHex } from '../engine/hash.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import type { Repository } from '../repository/repository.ts';
import { decodeTree, type Tree } from '../repository/tree.ts';
import { readBlobs, type BlobDecoder } from './read-blobs.ts';

/** Trees are small and written next to each other: read across small gaps only. */
const TREE_GAP = 64 * 1024;

/** A tree and, with keepBytes, the plaintext it was decoded from. */
export interface LoadedTree {
  tree: Tree;
  bytes?: Buffer;
}

interface Entry {
  promise: Promise<LoadedTree>;
  resolve: (t: LoadedTree) => void;
  reject: (e: unknown) => void;
  /** get() calls still expected (from prefetch()); the entry is dropped when it reaches 0. */
  expected: number;
}

/** A copy of a tree that could not be read (damaged, truncated or missing pack). */
export type TreeReadError = (treeId: string, hit: IndexHit, error: CofferError) => void;

export class TreeLoader {
  private readonly repo: Repository;
  private readonly decoder: BlobDecoder | undefined;
  private readonly signal: AbortSignal | undefined;
  private readonly concurrency: number | undefined;
  private readonly onReadError: TreeReadError | undefined;
  private readonly condemned: ReadonlySet<string> | undefined;
  private readonly keepBytes: boolean;
  private readonly entries = new Map<string, Entry>();
  private pending: Array<[string, Entry]> = [];
  private scheduled = false;

  /**
   * `concurrency`: pack reads in flight per batch (readBlobs' default when not given).
   * `onReadError`: told of every copy that could not be read (the caller records the damage);
   * another copy of the tree, if the index knows one, is tried before the tree fails.
   * `keepBytes`: getLoaded() also gives each tree's plaintext (a storage node sends it on).
   */
  constructor(repo: Repository, options: { decoder?: BlobDecoder; signal?: AbortSignal; concurrency?: number; onReadError?: TreeReadError; condemned?: ReadonlySet<string>; keepBytes?: boolean } = {}) {
    this.repo = repo;
    this.decoder = options.decoder;
    this.signal = options.signal;
    this.concurrency = options.concurrency;
    this.onReadError = options.onReadError;
    this.condemned = options.condemned;
    this.keepBytes = options.keepBytes === true;
  }

  /** Starts loading trees that get() will be asked for soon (once per id listed). */
  prefetch(ids: Iterable<string>): void {
    for (const id of ids) {
      const e = this.entries.get(id);
      if (e) e.expected++;
      else this.entries.set(id, this.load(id, 1));
    }
  }

  /** The tree `id`: validated, or a CofferError (NOT_FOUND, CORRUPT, CANCELLED, ...). */
  get(id: string): Promise<Tree> {
    return this.getLoaded(id).then((l) => l.tree);
  }

  /** The tree `id` with, when the loader keeps them, its plaintext bytes. */
  getLoaded(id: string): Promise<LoadedTree> {
    const e = this.entries.get(id);
    if (!e) return this.load(id, 0).promise;
    if (--e.expected <= 0) this.entries.delete(id);
    return e.promise;
  }

  /** Forgets prefetched trees nobody asked for. */
  clear(): void {
    this.entries.clear();
  }

  private load(id: string, expected: number): Entry {
    let resolve!: (t: LoadedTree) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<LoadedTree>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A prefetched tree that fails and is never asked for must not be an unhandled rejection.
    promise.catch(() => {});
    const e: Entry = { promise, resolve, reject, expected };
    this.pending.push([id, e]);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    return e;
  }

  private flush(): void {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    const waiting = new Map<string, Entry[]>();
    const failed = new Map<string, unknown>();
    const want: string[] = [];
    const hits: IndexHit[] = [];
    for (const [id, e] of batch) {
      if (failed.has(id)) {
        e.reject(failed.get(id));
        continue;
      }
      const list = waiting.get(id);
      if (list) {
        list.push(e);
        continue;
      }
      let hit: IndexHit | undefined;
      try {
        hit = this.repo.locate('tree', fromHex(id), this.condemned);
        if (!hit) throw new CofferError('NOT_FOUND', `Cannot read tree blob ${id}: it is not in the index`, { hint: 'Run `coffer repo check`; if packs exist that the index misses, `coffer repo repair index`.' });
      } catch (err) {
        failed.set(id, err);
        e.reject(err);
        continue;
      }
      waiting.set(id, [e]);
      want.push(id);
      hits.push(hit);
    }
    this.read(want, hits, waiting, new Map());
  }

  /** Reads `hits` (of the trees `want`); a copy that fails is reported, and another one tried. */
  private read(want: string[], hits: IndexHit[], waiting: Map<string, Entry[]>, tried: Map<string, Set<string>>): void {
    if (hits.length === 0) return;
    const retryWant: string[] = [];
    const retryHits: IndexHit[] = [];
    readBlobs(this.repo, hits, (indexes, results) => {
      for (let k = 0; k < indexes.length; k++) {
        const id = want[indexes[k]!]!;
        const list = waiting.get(id)!;
        const r = results[k]!;
        let outcome: { loaded: LoadedTree } | { error: unknown };
        if (r.error) {
          const hit = hits[indexes[k]!]!;
          this.onReadError?.(id, hit, r.error);
          let seen = tried.get(id);
          if (!seen) tried.set(id, (seen = new Set()));
          seen.add(toHex(hit.packId));
          const other = this.repo.index.lookupAll(fromHex(id), 'tree').find((h) => !seen.has(toHex(h.packId)));
          if (other) {
            retryWant.push(id);
            retryHits.push(other);
            continue;
          }
          outcome = { error: r.error };
        } else {
          try {
            outcome = { loaded: this.keepBytes ? { tree: decodeTree(r.data), bytes: r.data } : { tree: decodeTree(r.data) } };
          } catch (err) {
            outcome = { error: err };
          }
        }
        for (const e of list) 'loaded' in outcome ? e.resolve(outcome.loaded) : e.reject(outcome.error);
      }
    }, { signal: this.signal, decoder: this.decoder, maxGap: TREE_GAP, concurrency: this.concurrency }).then(() => this.read(retryWant, retryHits, waiting, tried), (err: unknown) => {
      // The whole read failed (backend unreachable, cancelled): every tree not delivered fails
      // (rejecting a settled promise does nothing).
      const error = isCofferError(err) ? err : new CofferError('STORAGE_ERROR', `Cannot read trees: ${(err as Error)?.message ?? String(err)}`, { cause: err });
      for (const list of waiting.values()) for (const e of list) e.reject(error);
    });
  }
}
