// `coffer repo snapshots` and `coffer repo forget`: list and remove snapshots.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { SNAPSHOTS_PREFIX } from '../repository/layout.ts';
import { describeUnreadable, findSnapshot, matchesFilter, readSnapshots, resolveSnapshotId, type Snapshot, type SnapshotRef } from '../repository/snapshot.ts';
import { formatBytes, output, parseIntOption, withRepo, snapshotSelectionOptions, snapshotFilter, type SnapshotSelection } from './context.ts';

export function register(repo: Command): void {
  const command = repo
    .command('snapshots')
    .description('list snapshots');
  snapshotSelectionOptions(command, 'filter')
    .action(async (o: SnapshotSelection, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const listing = await readSnapshots(r, { signal });
        for (const u of listing.unreadable) out.event({ type: 'warning', snapshot: u.id, problem: u.error.message }, `warning: ${describeUnreadable(u)}`);
        const all = listing.snapshots.filter((s) => matchesFilter(s.snapshot, snapshotFilter(o)));
        for (const s of all) out.item({ type: 'snapshot', id: s.id, ...s.snapshot });
        out.summary({ snapshots: all.length, warnings: listing.unreadable.length }, () => [
          'ID            Time                      Host              Paths',
          ...all.map((s) => `${s.id.slice(0, 12)}  ${s.snapshot.time.padEnd(24)}  ${s.snapshot.host.hostname.padEnd(16)}  ${s.snapshot.paths.join(', ')}${s.snapshot.summary ? `  (${formatBytes(s.snapshot.summary.bytesScanned)})` : ''}${s.snapshot.tags.length ? `  [${s.snapshot.tags.join(', ')}]` : ''}${s.snapshot.repairedFrom ? `  repaired from ${s.snapshot.repairedFrom.slice(0, 12)}` : ''}`),
          `${all.length} snapshot(s)${listing.unreadable.length ? `, ${listing.unreadable.length} unreadable` : ''}`,
        ]);
        if (listing.unreadable.length) throw new CofferError('WARNINGS', `${listing.unreadable.length} snapshot(s) could not be read`, { hint: 'See the warnings above; `coffer repo check` tells more.' });
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
        // Ids to remove, with the snapshot when it could be read (a damaged one is removed by id).
        const remove = new Map<string, Snapshot | undefined>();
        // By id without reading the snapshot: a damaged one must be removable too.
        for (const id of ids) {
          if (id === 'latest') {
            const s = await findSnapshot(r, id, {}, { signal });
            remove.set(s.id, s.snapshot);
          } else remove.set(await resolveSnapshotId(r, id, { signal }), undefined);
        }
        if (o.keepLast !== undefined) {
          const n = parseIntOption('--keep-last', o.keepLast, 1, 1_000_000);
          const groups = new Map<string, SnapshotRef[]>();
          // An unreadable snapshot belongs to no known group: it is kept, and said so.
          const listing = await readSnapshots(r, { signal });
          for (const u of listing.unreadable) out.event({ type: 'notice', snapshot: u.id, message: describeUnreadable(u) }, `note: ${describeUnreadable(u)}`);
          for (const s of listing.snapshots) {
            const k = s.snapshot.host.hostname + '\0' + [...s.snapshot.paths].sort().join('\0');
            groups.set(k, [...(groups.get(k) ?? []), s]);
          }
          for (const list of groups.values()) for (const s of list.slice(0, Math.max(0, list.length - n))) remove.set(s.id, s.snapshot);
        }
        const dryRun = !!o.dryRun;
        for (const [id, snapshot] of remove) {
          if (!dryRun) await r.backend.delete(SNAPSHOTS_PREFIX + id, { signal });
          const known = snapshot ? { time: snapshot.time, hostname: snapshot.host.hostname, paths: snapshot.paths } : {};
          out.item({ type: 'forget', snapshot: id, ...known, dryRun }, `${dryRun ? 'would remove' : 'removed'} snapshot ${id.slice(0, 12)}`);
        }
        out.summary({ removed: remove.size, dryRun }, () => `${remove.size} snapshot(s)${dryRun ? ' would be' : ''} removed; run \`coffer repo prune\` to free the space`);
      });
    });
}
