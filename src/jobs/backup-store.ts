// Where a backup stores what it reads: the seam between the backup's walk (backup.ts: read,
// chunk, hash, build trees) and the repository. The local store is the repository itself (this
// process holds its keys, encrypts and packs: `coffer repo backup`, the embedded agent). A remote
// agent holds no repository key: its store (src/node/remote-store.ts) asks a storage node which
// chunks it lacks and sends only those, and the node encrypts, packs and commits.
//
// A store is opened for one backup and used in this order: findParent, then any number of
// hasBlob / saveMany / loadTree calls, then flush and commit; fail() after an error, end() always.

import type { ChunkerParams } from '../engine/chunker.ts';
import type { BlobType } from '../engine/format.ts';
import type { CallOptions } from '../storage/backend.ts';
import { BlobSaver, type Encoder, type SaverStats } from '../repository/packer.ts';
import { loadCondemned } from '../repository/prune.ts';
import type { Repository } from '../repository/repository.ts';
import { Session, isSessionGap } from '../repository/session.ts';
import { snapshotName } from '../repository/layout.ts';
import { findSnapshot, readSnapshots, saveSnapshot, type Snapshot, type SnapshotRef, type UnreadableSnapshot } from '../repository/snapshot.ts';
import type { Tree } from '../repository/tree.ts';
import type { BlobDecoder } from './read-blobs.ts';
import { TreeLoader } from './tree-loader.ts';

export interface BlobItem {
  type: BlobType;
  id: Uint8Array;
  raw: Uint8Array;
}

export interface BackupStore {
  /** The repository's chunker parameters and image block size (its config). */
  readonly chunker: ChunkerParams;
  readonly imageChunkSize: number;
  /** The key of chunk ids (keyed BLAKE3): what deduplicates, not what decrypts. */
  readonly chunkIdKey: Buffer;
  /** What was stored so far (after deduplication). */
  readonly stats: SaverStats;
  /**
   * The parent snapshot: the one named, or with `ref` undefined the newest of `host` with the
   * same paths; undefined for none. Unreadable snapshots passed over are told to onUnreadable.
   */
  findParent(ref: string | undefined, host: string, paths: string[], options: CallOptions & { onUnreadable?: (u: UnreadableSnapshot) => void }): Promise<SnapshotRef | undefined>;
  /**
   * True when the blob is stored and safe to reference (not only in a pack a prune condemned).
   * A remote store answers for the parent's blobs, which its node checks again at commit.
   */
  hasBlob(type: BlobType, id: Uint8Array): boolean;
  /** Stores blobs (those already stored are skipped); `released` once their raw bytes are no longer read. */
  saveMany(items: BlobItem[], released?: () => void): Promise<void>;
  /** A tree of the parent snapshot (validated). */
  loadTree(id: string): Promise<Tree>;
  /** Trees loadTree() will be asked for soon (once per id listed). */
  prefetchTrees(ids: string[]): void;
  clearTrees(): void;
  /** Everything saved is stored and indexed. */
  flush(): Promise<void>;
  /** Writes the snapshot (the commit point); returns its id. */
  commit(snapshot: Snapshot, options: CallOptions): Promise<string>;
  /** After a failure: keep what was stored usable for the next run. */
  fail(error: unknown): Promise<void>;
  /** Ends the store's session, whatever happened. */
  end(): Promise<void>;
}

export interface LocalStoreOptions extends CallOptions {
  /** Store nothing, commit nothing (a dry run). */
  dryRun?: boolean;
  onNotice?: (message: string) => void;
  onPackUploaded?: (packId: string) => void;
  /** Write an index file after this many packs (BlobSaver's indexEvery): what others can see sooner. */
  indexEvery?: number;
}

/** The store of a process that holds the repository's keys: a BlobSaver and the repository's session. */
export class LocalBackupStore implements BackupStore {
  private readonly repo: Repository;
  private readonly saver: BlobSaver;
  private readonly session: Session | undefined;
  private readonly condemned: ReadonlySet<string>;
  private readonly trees: TreeLoader;
  private readonly dryRun: boolean;

  private constructor(repo: Repository, saver: BlobSaver, session: Session | undefined, condemned: ReadonlySet<string>, trees: TreeLoader, dryRun: boolean) {
    this.repo = repo;
    this.saver = saver;
    this.session = session;
    this.condemned = condemned;
    this.trees = trees;
    this.dryRun = dryRun;
  }

  /** Registers the backup's session, reads the prune plans and the index. */
  static async open(repo: Repository, pool: Encoder & BlobDecoder, options: LocalStoreOptions = {}): Promise<LocalBackupStore> {
    const { signal } = options;
    const session = options.dryRun ? undefined : await Session.start(repo, 'backup', { signal });
    try {
      // Register first, then read the GC plans: a prune that marks after this point waits for us.
      const condemned = await loadCondemned(repo, { signal });
      await repo.loadIndex({ signal, onUnreadable: (id, e) => options.onNotice?.(`index file ${id.slice(0, 12)} is unreadable (${e.message}) and was left out: what only it knew is stored again; \`coffer repo repair index\` repairs the index`) });
      const saver = new BlobSaver(repo, pool, { signal, onPackUploaded: options.onPackUploaded, session, condemned, ...(options.indexEvery ? { indexEvery: options.indexEvery } : {}) });
      return new LocalBackupStore(repo, saver, session, condemned, new TreeLoader(repo, { decoder: pool, signal }), options.dryRun === true);
    } catch (e) {
      await session?.end().catch(() => {});
      throw e;
    }
  }

  get chunker(): ChunkerParams {
    return this.repo.config.chunker;
  }

  get imageChunkSize(): number {
    return this.repo.config.imageChunkSize;
  }

  get chunkIdKey(): Buffer {
    return this.repo.keys.chunkIdKey;
  }

  get stats(): SaverStats {
    return this.saver.stats;
  }

  async findParent(ref: string | undefined, host: string, paths: string[], options: CallOptions & { onUnreadable?: (u: UnreadableSnapshot) => void }): Promise<SnapshotRef | undefined> {
    if (ref !== undefined) return findSnapshot(this.repo, ref, {}, options);
    return findParent(this.repo, host, paths, options);
  }

  hasBlob(type: BlobType, id: Uint8Array): boolean {
    return this.repo.hasBlob(type, id, this.condemned);
  }

  /**
   * Reads the index files written since the index was loaded (by other backups running now), so
   * that what they stored is not stored again; a failure to list leaves the index as it was.
   */
  async refreshIndex(options: CallOptions = {}): Promise<void> {
    await this.repo.loadIndex({ ...options, onUnreadable: () => {} }).catch(() => {});
  }

  async saveMany(items: BlobItem[], released?: () => void): Promise<void> {
    if (this.dryRun) return released?.();
    await this.saver.saveMany(items, released);
  }

  loadTree(id: string): Promise<Tree> {
    return this.trees.get(id);
  }

  prefetchTrees(ids: string[]): void {
    this.trees.prefetch(ids);
  }

  clearTrees(): void {
    this.trees.clear();
  }

  async flush(): Promise<void> {
    if (!this.dryRun) await this.saver.flush();
  }

  async commit(snapshot: Snapshot, options: CallOptions): Promise<string> {
    // The commit point, guarded on both sides: alive without a break up to now, by the
    // storage's clock (else a prune may have deleted what the snapshot would reference), and
    // still after the write (a pause between the check and the write): then the snapshot goes.
    await this.session!.assertAlive(options);
    const id = await saveSnapshot(this.repo, snapshot, options);
    try {
      await this.session!.assertAlive(options);
    } catch (e) {
      if (isSessionGap(e)) await this.repo.backend.delete(snapshotName(id)).catch(() => {});
      throw e;
    }
    return id;
  }

  /**
   * After a failure or Ctrl-C: indexes what was uploaded, so that the next run reuses it. After a
   * session gap (or one found while indexing), a prune may have deleted some of it instead: the
   * writer's index files are replaced by ones that list only what is still stored (retract()).
   */
  async fail(e: unknown): Promise<void> {
    if (this.dryRun) return;
    try {
      if (!isSessionGap(e)) return await this.saver.salvage();
    } catch (e2) {
      if (!isSessionGap(e2)) return;
    }
    try {
      await this.saver.retract(await loadCondemned(this.repo));
    } catch {
      // What is left is an index listing packs a prune deleted: `coffer repo check` finds it.
    }
  }

  async end(): Promise<void> {
    this.trees.clear();
    await this.session?.end().catch(() => {});
  }
}

/** The parent snapshot: the newest readable one of this host with the same set of paths. */
export async function findParent(repo: Repository, host: string, paths: string[], options: { signal?: AbortSignal; onUnreadable?: (u: UnreadableSnapshot) => void } = {}): Promise<SnapshotRef | undefined> {
  const want = [...paths].sort().join('\0');
  const { snapshots, unreadable } = await readSnapshots(repo, options);
  for (const u of unreadable) options.onUnreadable?.(u);
  return snapshots.filter((s) => s.snapshot.host.hostname === host && [...s.snapshot.paths].sort().join('\0') === want).at(-1);
}
