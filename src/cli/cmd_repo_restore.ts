// `coffer repo restore SNAPSHOT --target DIR`: restore a snapshot or part of it.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { restore } from '../jobs/restore.ts';
import { findSnapshot } from '../repository/snapshot.ts';
import { formatBytes, output, withRepo } from './context.ts';

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function register(repo: Command): void {
  repo
    .command('restore <snapshot>')
    .description('restore a snapshot ("latest" or an id) into a target directory')
    .requiredOption('--target <dir>', 'directory to restore into')
    .option('--include <path>', 'only this path inside the snapshot (repeatable)', collect)
    .option('--host <name>', 'with latest: the newest snapshot of this host')
    .option('--path <path>', 'with latest: the newest snapshot of this path', collect)
    .option('--tag <tag>', 'with latest: the newest snapshot with this tag', collect)
    .action(async (ref: string, o: { target: string; include?: string[]; host?: string; path?: string[]; tag?: string[] }, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const snap = await findSnapshot(r, ref, { host: o.host, paths: o.path, tags: o.tag }, { signal });
        out.info(`restoring snapshot ${snap.id.slice(0, 12)} of ${snap.snapshot.host.hostname} (${snap.snapshot.host.os}/${snap.snapshot.host.arch}) from ${snap.snapshot.time} to ${o.target}`);
        await r.loadIndex({ signal });
        const res = await restore(r, snap.snapshot.tree, o.target, {
          signal,
          include: o.include,
          onWarning: (path, problem) => out.event({ type: 'warning', path, problem }, `warning: ${path}: ${problem}`),
        });
        out.result({ type: 'summary', snapshot: snap.id, ...res, warnings: res.warnings.length }, () => `restored ${res.files} files, ${res.dirs} directories, ${res.symlinks} symlinks, ${formatBytes(res.bytes)}`);
        if (res.warnings.length) throw new CofferError('WARNINGS', `Restore completed with ${res.warnings.length} warning(s)`);
      });
    });
}
