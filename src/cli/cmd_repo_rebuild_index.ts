// `coffer repo rebuild-index`: recreate the index from the packs' own trailers.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { rebuildIndex } from '../repository/rebuild-index.ts';
import { output, withRepo } from './context.ts';

export function register(repo: Command): void {
  repo
    .command('rebuild-index')
    .description('rebuild the index from the packs alone')
    .action(async (_o: unknown, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const res = await rebuildIndex(r, { signal });
        for (const d of res.damaged) out.item({ type: 'problem', severity: 'error', kind: 'pack-damaged', pack: d.pack, message: d.error });
        out.summary({ packs: res.packs, blobs: res.blobs, indexFilesWritten: res.indexFilesWritten, indexFilesDeleted: res.indexFilesDeleted }, () => [
          `indexed ${res.blobs} blobs in ${res.packs} packs; wrote ${res.indexFilesWritten} index file(s), removed ${res.indexFilesDeleted}`,
          ...res.damaged.map((d) => `damaged pack ${d.pack.slice(0, 12)} left out: ${d.error}`),
        ]);
        if (res.damaged.length) throw new CofferError('CHECK_FAILED', `${res.damaged.length} pack(s) could not be read and were left out of the index`, { hint: 'Run `coffer repo check` to see which files they affect.' });
      });
    });
}
