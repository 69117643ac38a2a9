// Chunks a restore could not read, fetched from other copies of the same snapshot (issue #10:
// "when a read fails or a chunk fails verification in the middle of a restore, it continues from
// another copy of the same data"). The restore asks for each lost chunk by its id and by where it
// goes (paths and offsets inside the snapshot); each alternate copy, in the order given, is asked
// for whatever is still missing:
//
//  - An alternate with the same chunk-id key (the same master key: one dedup domain) holds the
//    same blob under the same id: it is read from there directly.
//  - An alternate with other keys has other ids, other chunk boundaries (the gear table is secret
//    too) and other tree ids for the same data. The same file is found there by its path in the
//    alternate's snapshot, and the byte range of the lost chunk is read from whichever of that
//    file's chunks cover it. Boundaries need not match: only the chunks overlapping the range are
//    read, and a whole file is never fetched for one chunk.
//
// Whatever the source, the bytes are accepted only if their id under the restored repository's
// own key is the chunk id the snapshot names: data from elsewhere is verified end to end against
// the snapshot being restored, not against the copy it came from. Alternates are opened on first
// need: a restore that never meets damage never pays their key derivation or index load.

import { isCofferError, throwIfAborted } from '../core/errors.ts';
import { chunkId, fromHex } from '../engine/hash.ts';
import type { IndexHit } from '../repository/index/chunk-index.ts';
import type { Repository } from '../repository/repository.ts';
import type { Snapshot } from '../repository/snapshot.ts';
import type { TreeNode } from '../repository/tree.ts';
import { readBlobs, type BlobDecoder } from './read-blobs.ts';
import { TreeLoader } from './tree-loader.ts';

/** One lost chunk: its id in the repository being restored, its length, and where it goes. */
export interface ChunkWant {
  id: string;
  length: number;
  /** The files (paths inside the snapshot) and offsets that need it; at least one. */
  places: Array<{ path: string; pos: number }>;
}

/** A chunk found elsewhere (verified against its id), or why no alternate gave it. */
export type ChunkFound = { data: Buffer; from: string; error?: undefined } | { data?: undefined; error: string };

/** What restore() asks for lost chunks (RestoreOptions.fallback). */
export interface ChunkFallback {
  /** The alternates, by name, in the order they are asked. */
  readonly names: readonly string[];
  /** One outcome per want, in order. Rejects only when the restore must stop (cancelled). */
  fetch(wants: readonly ChunkWant[], signal?: AbortSignal): Promise<ChunkFound[]>;
  /** A tree blob by its id (verified against it): only a copy with the same keys has it. */
  fetchTree(id: string, signal?: AbortSignal): Promise<ChunkFound>;
}

/** An opened alternate: its repository (index loaded), the snapshot restored, and a decoder with its keys. */
export interface OpenedAlternate {
  repo: Repository;
  snapshot: Snapshot;
  decoder?: BlobDecoder;
  /** Closes what open() opened. */
  close(): Promise<void>;
}

/** Another copy of the snapshot being restored. */
export interface AlternateCopy {
  /** How reports name it (the storage unit). */
  name: string;
  /** Opens it; called at most once, when a chunk first needs it. */
  open(signal?: AbortSignal): Promise<OpenedAlternate>;
}

/** The alternates, opened on first need; close() closes what was opened. */
export class AlternateSources implements ChunkFallback {
  readonly names: readonly string[];
  private readonly chunkIdKey: Buffer;
  private readonly alternates: readonly AlternateCopy[];
  private readonly opened = new Map<string, Promise<OpenedAlternate>>();
  /** Why an alternate could not be used at all (it could not be opened): asked no more. */
  private readonly broken = new Map<string, string>();
  /** Per alternate: file nodes by path (undefined: not in that snapshot or not a file). */
  private readonly files = new Map<string, Map<string, Promise<TreeNode | undefined>>>();
  private readonly trees = new Map<string, TreeLoader>();

  /** `chunkIdKey`: the key of the repository being restored (its RepoKeys.chunkIdKey). */
  constructor(chunkIdKey: Buffer, alternates: readonly AlternateCopy[]) {
    this.chunkIdKey = chunkIdKey;
    this.alternates = alternates;
    this.names = alternates.map((a) => a.name);
  }

  async fetch(wants: readonly ChunkWant[], signal?: AbortSignal): Promise<ChunkFound[]> {
    const out: Array<ChunkFound | undefined> = wants.map(() => undefined);
    const why: string[][] = wants.map(() => []);
    for (const alt of this.alternates) {
      const open = wants.map((_, i) => i).filter((i) => out[i] === undefined);
      if (open.length === 0) break;
      throwIfAborted(signal);
      let a: OpenedAlternate;
      try {
        a = await this.open(alt, signal);
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || signal?.aborted) throw e;
        for (const i of open) why[i]!.push(`${alt.name}: ${this.broken.get(alt.name)}`);
        continue;
      }
      const got = a.repo.keys.chunkIdKey.equals(this.chunkIdKey)
        ? await this.sameKeys(a, open.map((i) => wants[i]!), signal)
        : await this.otherKeys(alt.name, a, open.map((i) => wants[i]!), signal);
      for (let k = 0; k < open.length; k++) {
        const i = open[k]!;
        const g = got[k]!;
        if (g.data && chunkId(this.chunkIdKey, g.data).equals(fromHex(wants[i]!.id))) out[i] = { data: g.data, from: alt.name };
        else why[i]!.push(`${alt.name}: ${g.error ?? 'its data differs from the snapshot\'s chunk'}`);
      }
    }
    return out.map((o, i) => o ?? { error: why[i]!.length ? why[i]!.join('; ') : 'no other copy was given' });
  }

  async fetchTree(id: string, signal?: AbortSignal): Promise<ChunkFound> {
    const why: string[] = [];
    for (const alt of this.alternates) {
      throwIfAborted(signal);
      let a: OpenedAlternate;
      try {
        a = await this.open(alt, signal);
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || signal?.aborted) throw e;
        why.push(`${alt.name}: ${this.broken.get(alt.name)}`);
        continue;
      }
      // Under other keys the same directory is another tree, whose entries name other chunks.
      if (!a.repo.keys.chunkIdKey.equals(this.chunkIdKey)) {
        why.push(`${alt.name}: other keys, other tree ids`);
        continue;
      }
      const hit = a.repo.locate('tree', fromHex(id));
      if (!hit) {
        why.push(`${alt.name}: it does not hold this tree`);
        continue;
      }
      let got: { data?: Buffer; error?: string } = {};
      await readBlobs(a.repo, [hit], (_i, results) => void (got = results[0]!.error ? { error: results[0]!.error.message } : { data: results[0]!.data }), { signal, decoder: a.decoder });
      if (got.data && chunkId(this.chunkIdKey, got.data).equals(fromHex(id))) return { data: got.data, from: alt.name };
      why.push(`${alt.name}: ${got.error ?? 'its data differs from the snapshot\'s tree'}`);
    }
    return { error: why.length ? why.join('; ') : 'no other copy was given' };
  }

  /** Closes every alternate that was opened. */
  async close(): Promise<void> {
    this.trees.clear();
    for (const p of this.opened.values()) {
      try {
        await (await p).close();
      } catch {
        // an alternate that failed to open has nothing to close
      }
    }
  }

  private open(alt: AlternateCopy, signal?: AbortSignal): Promise<OpenedAlternate> {
    let p = this.opened.get(alt.name);
    if (!p) {
      p = alt.open(signal);
      p.catch((e: unknown) => this.broken.set(alt.name, `cannot be opened (${(e as Error).message})`));
      this.opened.set(alt.name, p);
    }
    return p;
  }

  /** Same keys: the same blob ids. */
  private async sameKeys(a: OpenedAlternate, wants: readonly ChunkWant[], signal?: AbortSignal): Promise<Array<{ data?: Buffer; error?: string }>> {
    const out: Array<{ data?: Buffer; error?: string }> = wants.map(() => ({ error: 'it does not hold this chunk' }));
    const hits: IndexHit[] = [];
    const which: number[] = [];
    for (let i = 0; i < wants.length; i++) {
      const hit = a.repo.locate('data', fromHex(wants[i]!.id));
      if (!hit) continue;
      hits.push(hit);
      which.push(i);
    }
    await readBlobs(a.repo, hits, (indexes, results) => {
      for (let k = 0; k < indexes.length; k++) {
        const r = results[k]!;
        out[which[indexes[k]!]!] = r.error ? { error: r.error.message } : { data: r.data };
      }
    }, { signal, decoder: a.decoder });
    return out;
  }

  /** Other keys: the same byte ranges of the same files, from whatever chunks cover them there. */
  private async otherKeys(name: string, a: OpenedAlternate, wants: readonly ChunkWant[], signal?: AbortSignal): Promise<Array<{ data?: Buffer; error?: string }>> {
    const out: Array<{ data?: Buffer; error?: string }> = wants.map(() => ({}));
    // Per want: the alternate's chunks covering its range (the first place whose file is there).
    const plans: Array<{ parts: Array<{ id: string; start: number }>; pos: number } | undefined> = [];
    for (let i = 0; i < wants.length; i++) {
      const w = wants[i]!;
      let plan: (typeof plans)[number];
      let problem = '';
      for (const place of w.places) {
        const node = await this.fileNode(name, a, place.path, signal);
        if (!node) {
          problem = `${place.path} cannot be found as a file in its snapshot`;
          continue;
        }
        const parts = coveringChunks(a.repo, node, place.pos, w.length);
        if (typeof parts === 'string') {
          problem = `${place.path}: ${parts}`;
          continue;
        }
        plan = { parts, pos: place.pos };
        break;
      }
      plans.push(plan);
      if (!plan) out[i] = { error: problem };
    }
    const ids = [...new Set(plans.flatMap((p) => p?.parts.map((x) => x.id) ?? []))];
    const hits = ids.map((id) => a.repo.locate('data', fromHex(id))!);
    const data = new Map<string, Buffer>();
    const failed = new Map<string, string>();
    await readBlobs(a.repo, hits, (indexes, results) => {
      for (let k = 0; k < indexes.length; k++) {
        const r = results[k]!;
        const id = ids[indexes[k]!]!;
        if (r.error) failed.set(id, r.error.message);
        else data.set(id, r.data);
      }
    }, { signal, decoder: a.decoder });
    for (let i = 0; i < wants.length; i++) {
      const plan = plans[i];
      if (!plan) continue;
      const bad = plan.parts.find((p) => failed.has(p.id));
      if (bad) {
        out[i] = { error: `its chunk ${bad.id.slice(0, 12)} cannot be read either (${failed.get(bad.id)})` };
        continue;
      }
      const w = wants[i]!;
      const buf = Buffer.allocUnsafe(w.length);
      for (const p of plan.parts) {
        const d = data.get(p.id)!;
        // The overlap of [p.start, p.start + d.length) with [plan.pos, plan.pos + w.length).
        const from = Math.max(p.start, plan.pos);
        const to = Math.min(p.start + d.length, plan.pos + w.length);
        d.copy(buf, from - plan.pos, from - p.start, to - p.start);
      }
      out[i] = { data: buf };
    }
    return out;
  }

  /** The node of the file at `path` in the alternate's snapshot; undefined if it has none there. */
  private fileNode(name: string, a: OpenedAlternate, path: string, signal?: AbortSignal): Promise<TreeNode | undefined> {
    let byPath = this.files.get(name);
    if (!byPath) this.files.set(name, (byPath = new Map()));
    let p = byPath.get(path);
    if (!p) {
      p = this.lookup(name, a, path, signal);
      byPath.set(path, p);
    }
    return p;
  }

  private async lookup(name: string, a: OpenedAlternate, path: string, signal?: AbortSignal): Promise<TreeNode | undefined> {
    let loader = this.trees.get(name);
    if (!loader) this.trees.set(name, (loader = new TreeLoader(a.repo, { decoder: a.decoder, signal })));
    const segments = path.split('/').filter((s) => s !== '');
    let tree = a.snapshot.tree;
    for (let i = 0; i < segments.length; i++) {
      let nodes: TreeNode[];
      try {
        nodes = (await loader.get(tree)).nodes;
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || signal?.aborted) throw e;
        return undefined;
      }
      const node = nodes.find((n) => n.name === segments[i]);
      if (!node) return undefined;
      if (i === segments.length - 1) return node.type === 'file' ? node : undefined;
      if (node.type !== 'dir' || !node.subtree) return undefined;
      tree = node.subtree;
    }
    return undefined;
  }
}

/**
 * The chunks of `node` (a file in `repo`) that cover `length` bytes at `pos`, with where each
 * starts in the file; a string says why they cannot be told (a chunk the index does not know).
 */
export function coveringChunks(repo: Pick<Repository, 'locate'>, node: TreeNode, pos: number, length: number): Array<{ id: string; start: number }> | string {
  if ((node.size ?? 0) < pos + length) return `it is ${node.size ?? 0} bytes there, too short for bytes ${pos}-${pos + length}`;
  const parts: Array<{ id: string; start: number }> = [];
  let start = 0;
  for (const id of node.content ?? []) {
    if (start >= pos + length) break;
    const hit = repo.locate('data', fromHex(id));
    if (!hit) return `its chunk ${id.slice(0, 12)} is not in that repository's index`;
    const end = start + hit.entry.rawLength;
    if (end > pos) parts.push({ id, start });
    start = end;
  }
  if (start < pos + length) return `its chunks add up to fewer bytes than its size`;
  return parts;
}
