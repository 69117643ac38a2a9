// `repo rebuild-index`: recreates the index from the packs alone (each pack's encrypted trailer
// lists its blobs). New index files supersede every index file that existed before; only then
// are the old ones deleted. Packs whose trailer is unreadable are reported and left out.

import { isCofferError, throwIfAborted } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import { fromHex } from '../engine/hash.ts';
import { readPackIndex } from '../engine/pack.ts';
import type { IndexPack } from './index/index-file.ts';
import { DATA_PREFIX, idFromName, indexName, packName } from './layout.ts';
import { toIndexEntry } from './packer.ts';
import type { Repository } from './repository.ts';
import { Session } from './session.ts';

export interface RebuildResult {
  packs: number;
  blobs: number;
  indexFilesWritten: number;
  indexFilesDeleted: number;
  damaged: Array<{ pack: string; error: string }>;
}

export async function rebuildIndex(repo: Repository, options: CallOptions & { onProgress?: (done: number, total: number) => void; packsPerIndex?: number } = {}): Promise<RebuildResult> {
  const { signal } = options;
  const session = await Session.start(repo, 'rebuild-index', { signal });
  try {
    const old = await repo.listIndexFiles({ signal });
    const packs: Array<{ hex: string; size: number }> = [];
    for await (const o of repo.backend.list(DATA_PREFIX, { signal })) {
      const hex = idFromName(DATA_PREFIX, o.name);
      if (hex) packs.push({ hex, size: o.size });
    }
    const result: RebuildResult = { packs: 0, blobs: 0, indexFilesWritten: 0, indexFilesDeleted: 0, damaged: [] };
    let batch: IndexPack[] = [];
    const written: string[] = [];
    const flush = async (last: boolean) => {
      if (!batch.length && !(last && written.length === 0)) return;
      // Every new file supersedes all the old ones: whichever a reader sees first, it never
      // mixes stale entries in.
      written.push(await repo.saveIndexFile({ supersedes: old.map(fromHex), packs: batch }, { signal }));
      batch = [];
    };
    let done = 0;
    for (const p of packs) {
      throwIfAborted(signal);
      options.onProgress?.(done++, packs.length);
      try {
        const entries = await readPackIndex(repo.keys, p.size, (offset, length) => repo.backend.get(packName(p.hex), { offset, length, signal }));
        batch.push({ packId: fromHex(p.hex), packSize: p.size, entries: entries.map(toIndexEntry) });
        result.packs++;
        result.blobs += entries.length;
      } catch (e) {
        if (isCofferError(e, 'CANCELLED') || isCofferError(e, 'STORAGE_UNAVAILABLE') || isCofferError(e, 'STORAGE_DENIED')) throw e;
        result.damaged.push({ pack: p.hex, error: (e as Error).message });
      }
      if (batch.length >= (options.packsPerIndex ?? 256)) await flush(false);
    }
    await flush(true);
    result.indexFilesWritten = written.length;
    for (const id of old) {
      await repo.backend.delete(indexName(id), { signal });
      result.indexFilesDeleted++;
    }
    await repo.loadIndex({ signal });
    return result;
  } finally {
    await session.end().catch(() => {});
  }
}
