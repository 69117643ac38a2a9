// `coffer repo backup PATH...`: back up files and directories into a repository.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { backup } from '../jobs/backup.ts';
import { formatBytes, makePool, output, withRepo } from './context.ts';

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function register(repo: Command): void {
  repo
    .command('backup <path...>')
    .description('back up files and directories')
    .option('--tag <tag>', 'tag the snapshot (repeatable)', collect)
    .option('--dry-run', 'read and chunk everything, store nothing')
    .action(async (paths: string[], o: { tag?: string[]; dryRun?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const tty = process.stderr.isTTY && !out.json;
      await withRepo(cmd, async (r, signal) => {
        const pool = await makePool(cmd, r);
        try {
          const started = Date.now();
          const res = await backup(r, pool, paths, {
            signal,
            tags: o.tag,
            dryRun: o.dryRun,
            onWarning: (path, problem) => out.event({ type: 'warning', path, problem }, `warning: ${path}: ${problem}`),
            onProgress: (p) => {
              if (out.json) out.event({ type: 'progress', ...p });
              else if (tty) {
                const s = (Date.now() - started) / 1000;
                process.stderr.write(`\r\x1b[K${p.files} files, ${formatBytes(p.bytesScanned)} read, ${formatBytes(p.bytesNew)} new, ${formatBytes(p.bytesScanned / Math.max(s, 0.001))}/s`);
              }
            },
          });
          if (tty) process.stderr.write('\r\x1b[K');
          const s = res.summary;
          out.result({ type: 'summary', snapshot: res.snapshotId, ...s }, () => [
            `files: ${s.filesNew} new, ${s.filesChanged} changed, ${s.filesUnchanged} unchanged; ${s.dirs} directories`,
            `read ${formatBytes(s.bytesScanned)}, new after dedup ${formatBytes(s.bytesNew)}, stored ${formatBytes(s.bytesStored)} (dedup ratio ${(s.bytesScanned / Math.max(1, s.bytesNew)).toFixed(2)}x) in ${(s.durationMs / 1000).toFixed(1)} s`,
            res.snapshotId ? `snapshot ${res.snapshotId.slice(0, 12)} saved` : 'dry run: nothing stored',
          ]);
          if (res.warnings.length) {
            throw new CofferError('WARNINGS', `Backup completed with ${res.warnings.length} warning(s): some files were unreadable or changed while read`, { hint: 'See the warnings above; the snapshot holds everything else.' });
          }
        } finally {
          await pool.close();
        }
      });
    });
}
