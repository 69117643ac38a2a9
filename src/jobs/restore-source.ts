// Where a restore reads a snapshot's trees and data: the seam between restore()'s walk, checks
// and writers (restore.ts) and what holds the data. The local source is the repository itself
// (this process holds its keys: `coffer repo restore`, the embedded agent): it registers the
// restore so that a prune waits, reads packs with readBlobs() and TreeLoader, tries another copy
// of a blob the index knows when one fails, and records the damage it met. A remote agent holds
// no repository key: its source (src/node/remote-restore.ts) asks a storage node, which reads the
// repository, and verifies every byte against the snapshot's chunk ids.
//
// A source is used for one restore, in this order: begin, load, then any number of locate /
// readData / openTrees / readFailed calls, then end (always, once begin succeeded).

import { isCofferError, type CofferError } from '../core/errors.ts';
import { fromHex, toHex } from '../engine/hash.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import type { PackDamage } from '../repository/damage.ts';
import { loadCondemned } from '../repository/prune.ts';
import type { Repository } from '../repository/repository.ts';
import { Session } from '../repository/session.ts';
import type { Tree } from '../repository/tree.ts';
import { readBlobs, type BlobDecoder, type BlobResult, type ReadBlobsOptions } from './read-blobs.ts';
import { otherRestoreRunning } from './restore-temps.ts';
import { TreeLoader } from './tree-loader.ts';

/** Reads a restore's trees: validated, or a CofferError (NOT_FOUND, CORRUPT, CANCELLED, ...). */
export interface RestoreTrees {
  get(id: string): Promise<Tree>;
}

/** Where a restore reads from; `L` is where one copy of a data blob is (the source's own handle). */
export interface RestoreSource<L> {
  /** The key of chunk ids: what data from elsewhere and files compared by content are checked against. */
  readonly chunkIdKey: Buffer;
  /**
   * Before anything is read: registers the restore (not in a dry run) so that a prune waits for
   * it. Says whether another restore may be writing temporary files now (restore-temps.ts).
   */
  begin(options: { signal?: AbortSignal; dryRun: boolean; notice: (message: string) => void }): Promise<{ othersMayWrite: boolean }>;
  /** Loads what locate() needs (the index). */
  load(options: { signal?: AbortSignal; notice: (message: string) => void }): Promise<void>;
  /** Where data blob `id` (hex) is read from; undefined when the source does not know it. */
  locate(id: string): L | undefined;
  /** The blob's plaintext length. */
  rawLength(at: L): number;
  /** The pack a copy is in, when the source reads packs (named in reports). */
  packOf(at: L): string | undefined;
  /** How a failed read names where it was: "in pack 0123456789ab". */
  describe(at: L): string;
  /**
   * Reads and verifies data blobs; deliver() is called with indexes into `at` and their results
   * (see readBlobs(): a damaged blob is its result's error, anything else rejects the call).
   */
  readData(at: readonly L[], deliver: (indexes: number[], results: BlobResult[]) => Promise<void>, options: ReadBlobsOptions): Promise<void>;
  /** A copy of blob `id` could not be read: notes the damage and says which copy to try next (`tried`: the packs tried). */
  readFailed(id: string, at: L, error: CofferError, tried: Set<string>): L | undefined;
  /** The restore's tree reader. */
  openTrees(options: { decoder?: BlobDecoder; signal?: AbortSignal; concurrency?: number }): RestoreTrees;
  /** After the restore, whatever happened: records damage met (not in a dry run), ends the registration. */
  end(options: { dryRun: boolean; notice: (message: string) => void }): Promise<void>;
}

/** The restore source of a process that holds the repository's keys. */
export class LocalRestoreSource implements RestoreSource<IndexHit> {
  private readonly repo: Repository;
  private session: Session | undefined;
  /** Packs a pending prune condemned (read once the session is registered): a copy elsewhere is read instead. */
  private condemned: ReadonlySet<string> = new Set();
  /**
   * Copies that could not be read, by pack: recorded in the repository at the end (damage.ts),
   * so that the next backup stores those blobs again instead of deduplicating against them.
   */
  private readonly readFailures = new Map<string, PackDamage>();

  constructor(repo: Repository) {
    this.repo = repo;
  }

  get chunkIdKey(): Buffer {
    return this.repo.keys.chunkIdKey;
  }

  async begin(options: { signal?: AbortSignal; dryRun: boolean; notice: (message: string) => void }): Promise<{ othersMayWrite: boolean }> {
    const { signal } = options;
    // A registered session makes a concurrent prune wait before it deletes packs this restore may
    // still read; registering comes before the index is (re)loaded, as the GC protocol requires.
    // A read-only repository (an immutable bucket in a disaster) must still restore.
    if (!options.dryRun) {
      try {
        this.session = await Session.start(this.repo, 'restore', { signal });
        // Copies in packs a pending prune condemned may vanish: read the sound copy if there is one.
        this.condemned = await loadCondemned(this.repo, { signal });
      } catch (e) {
        if (!(isCofferError(e, 'STORAGE_DENIED') || isCofferError(e, 'STORAGE_ERROR'))) {
          await this.end({ dryRun: true, notice: () => {} });
          throw e;
        }
        options.notice(`cannot register this restore in the repository (${(e as Error).message}): a prune running meanwhile could remove data it reads`);
      }
    }
    return { othersMayWrite: await otherRestoreRunning(this.repo, this.session, { signal }) };
  }

  async load(options: { signal?: AbortSignal; notice: (message: string) => void }): Promise<void> {
    await this.repo.loadIndex({ signal: options.signal, onUnreadable: (id, e) => options.notice(`index file ${id.slice(0, 12)} is unreadable (${e.message}) and was left out: what only it knew cannot be restored until \`coffer repo repair index\``) });
  }

  locate(id: string): IndexHit | undefined {
    return this.repo.locate('data', fromHex(id), this.condemned);
  }

  rawLength(at: IndexHit): number {
    return at.entry.rawLength;
  }

  packOf(at: IndexHit): string {
    return toHex(at.packId);
  }

  describe(at: IndexHit): string {
    return `in pack ${toHex(at.packId).slice(0, 12)}`;
  }

  readData(at: readonly IndexHit[], deliver: (indexes: number[], results: BlobResult[]) => Promise<void>, options: ReadBlobsOptions): Promise<void> {
    return readBlobs(this.repo, at, deliver, options);
  }

  readFailed(id: string, at: IndexHit, error: CofferError, tried: Set<string>): IndexHit | undefined {
    this.noteReadFailure(at, error);
    tried.add(toHex(at.packId));
    return this.repo.index.lookupAll(fromHex(id), 'data').find((h) => !tried.has(toHex(h.packId)));
  }

  /** With keepBytes, the loader also gives each tree's plaintext (getLoaded()). */
  openTrees(options: { decoder?: BlobDecoder; signal?: AbortSignal; concurrency?: number; keepBytes?: boolean }): TreeLoader {
    return new TreeLoader(this.repo, { ...options, onReadError: (_id, hit, e) => this.noteReadFailure(hit, e), condemned: this.condemned });
  }

  async end(options: { dryRun: boolean; notice: (message: string) => void }): Promise<void> {
    const readFailures = this.readFailures;
    if (readFailures.size && !options.dryRun) {
      // Recorded, so that the next backup of the intact source stores these blobs again.
      try {
        // A pack a prune deleted while this restore was paused is not damage: only packs the
        // index still lists, and no prune condemned, are recorded.
        const now = await loadCondemned(this.repo);
        await this.repo.loadIndex();
        const still = this.repo.indexedPacks((hex) => readFailures.has(hex) && !now.has(hex));
        const damage = [...readFailures.values()].filter((d) => still.has(d.pack));
        if (damage.length) {
          await this.repo.noteDamage('restore', damage);
          options.notice(`recorded the damage to ${damage.length} pack(s) in the repository: the next backup stores those blobs again; \`coffer repo repair packs\` salvages the rest`);
        }
      } catch (e) {
        options.notice(`cannot record the damage in the repository (${(e as Error).message}); \`coffer repo check --read-data\` finds it again`);
      }
    }
    await this.session?.end().catch(() => {});
    this.session = undefined;
  }

  private noteReadFailure(hit: IndexHit, error: CofferError): void {
    const pack = toHex(hit.packId);
    if (this.condemned.has(pack)) return; // a prune's to delete: not damage
    let d = this.readFailures.get(pack);
    if (!d) this.readFailures.set(pack, (d = { pack, problem: error.message, blobs: [] }));
    // A missing pack, or one whose header is unreadable, is unusable as a whole.
    if (error.code === 'NOT_FOUND' || /pack header/.test(error.message)) d.blobs = undefined;
    else d.blobs?.push({ type: hit.entry.type, id: toHex(hit.entry.id) });
  }
}
