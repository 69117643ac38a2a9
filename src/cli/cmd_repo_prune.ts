// `coffer repo prune`: delete data that no snapshot needs, safely alongside running backups.
import type { Command } from 'commander';
import { prune } from '../repository/prune.ts';
import { formatBytes, makePool, output, parseIntOption, withRepo } from './context.ts';

export function register(repo: Command): void {
  repo
    .command('prune')
    .description('remove unused data (safe while other backups run: deletion waits for them)')
    .option('--dry-run', 'only show what would be marked')
    .option('--grace <minutes>', 'minimum minutes between marking and deleting (default 0)')
    .option('--repack-threshold <percent>', 'repack packs with more than this % unused (default 20)')
    .action(async (o: { dryRun?: boolean; grace?: string; repackThreshold?: string }, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const pool = await makePool(cmd, r);
        try {
          const res = await prune(r, {
            signal,
            dryRun: o.dryRun,
            encoder: pool,
            graceMs: o.grace ? parseIntOption('--grace', o.grace, 0, 525_600) * 60_000 : 0,
            repackThreshold: o.repackThreshold ? parseIntOption('--repack-threshold', o.repackThreshold, 0, 100) / 100 : undefined,
            onProgress: (m) => out.event({ type: 'progress', message: m }, m),
          });
          out.summary({
            dryRun: res.dryRun,
            packsCondemned: res.packsCondemned,
            bytesCondemned: res.bytesCondemned,
            packsRepacked: res.packsRepacked,
            blobsRepacked: res.blobsRepacked,
            packsDeleted: res.packsDeleted,
            bytesDeleted: res.bytesDeleted,
            indexFilesDeleted: res.indexFilesDeleted,
            packsKept: res.packsKept,
            plansWaiting: res.plansWaiting,
          }, () => [
            `${o.dryRun ? 'would mark' : 'marked'} ${res.packsCondemned} pack(s) (${formatBytes(res.bytesCondemned)}), repacked ${res.packsRepacked} (${res.blobsRepacked} blobs)`,
            `deleted ${res.packsDeleted} pack(s) (${formatBytes(res.bytesDeleted)}) and ${res.indexFilesDeleted} index file(s); kept ${res.packsKept} still in use`,
            ...(res.plansWaiting ? [`${res.plansWaiting} GC plan(s) wait for running sessions; run prune again later to finish`] : []),
          ]);
        } finally {
          await pool.close();
        }
      });
    });
}
