// `coffer repo snapshots` and `coffer repo forget`: list and remove snapshots.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { SNAPSHOTS_PREFIX } from '../repository/layout.ts';
import { findSnapshot, loadAllSnapshots, matchesFilter, type SnapshotRef } from '../repository/snapshot.ts';
import { formatBytes, output, parseIntOption, withRepo, snapshotSelectionOptions, snapshotFilter, type SnapshotSelection } from './context.ts';

export function register(repo: Command): void {
  const command = repo
    .command('snapshots')
    .description('list snapshots');
  snapshotSelectionOptions(command, 'filter')
    .action(async (o: SnapshotSelection, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const all = (await loadAllSnapshots(r, { signal })).filter((s) => matchesFilter(s.snapshot, snapshotFilter(o)));
        for (const s of all) out.item({ type: 'snapshot', id: s.id, ...s.snapshot });
        out.summary({ snapshots: all.length }, () => [
          'ID            Time                      Host              Paths',
          ...all.map((s) => `${s.id.slice(0, 12)}  ${s.snapshot.time.padEnd(24)}  ${s.snapshot.host.hostname.padEnd(16)}  ${s.snapshot.paths.join(', ')}${s.snapshot.summary ? `  (${formatBytes(s.snapshot.summary.bytesScanned)})` : ''}`),
          `${all.length} snapshot(s)`,
        ]);
      });
    });
  repo
    .command('forget [snapshot...]')
    .description('remove snapshots by id, or all but the newest N per host and paths (--keep-last); run prune to free space')
    .option('--keep-last <n>', 'keep the newest N snapshots of each host and path set')
    .option('--dry-run', 'only show what would be removed')
    .action(async (ids: string[], o: { keepLast?: string; dryRun?: boolean }, cmd: Command) => {
      const out = output(cmd);
      if (!ids.length && o.keepLast === undefined) throw new CofferError('USAGE', 'Cannot forget: give snapshot ids or --keep-last N');
      await withRepo(cmd, async (r, signal) => {
        const remove = new Map<string, SnapshotRef>();
        for (const id of ids) {
          const s = await findSnapshot(r, id, {}, { signal });
          remove.set(s.id, s);
        }
        if (o.keepLast !== undefined) {
          const n = parseIntOption('--keep-last', o.keepLast, 1, 1_000_000);
          const groups = new Map<string, SnapshotRef[]>();
          for (const s of await loadAllSnapshots(r, { signal })) {
            const k = s.snapshot.host.hostname + '\0' + [...s.snapshot.paths].sort().join('\0');
            groups.set(k, [...(groups.get(k) ?? []), s]);
          }
          for (const list of groups.values()) for (const s of list.slice(0, Math.max(0, list.length - n))) remove.set(s.id, s);
        }
        const dryRun = !!o.dryRun;
        for (const { id, snapshot } of remove.values()) {
          if (!dryRun) await r.backend.delete(SNAPSHOTS_PREFIX + id, { signal });
          out.item({ type: 'forget', snapshot: id, time: snapshot.time, hostname: snapshot.host.hostname, paths: snapshot.paths, dryRun }, `${dryRun ? 'would remove' : 'removed'} snapshot ${id.slice(0, 12)}`);
        }
        out.summary({ removed: remove.size, dryRun }, () => `${remove.size} snapshot(s)${dryRun ? ' would be' : ''} removed; run \`coffer repo prune\` to free the space`);
      });
    });
}
