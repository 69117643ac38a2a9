// `coffer repo find PATTERN`: which snapshots hold a file of this name (or glob, or path glob),
// across every snapshot of the repository, newest last: "when did I last have that file?".
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { findInSnapshots, nodeJson } from '../jobs/browse.ts';
import { describeUnreadable, matchesFilter, readSnapshots } from '../repository/snapshot.ts';
import type { EventLine } from './json-schema.ts';
import { output, withRepo, snapshotSelectionOptions, snapshotFilter, type SnapshotSelection, indexNotice } from './context.ts';
import { stdoutSink } from './cmd_repo_dump.ts';

export function register(repo: Command): void {
  const command = repo
    .command('find <pattern>')
    .description('find entries by name or glob in every snapshot ("*.sql"; with a "/", a path from the root: "/home/*/notes.txt")');
  snapshotSelectionOptions(command, 'filter')
    .action(async (pattern: string, o: SnapshotSelection, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const listing = await readSnapshots(r, { signal });
        for (const u of listing.unreadable) out.event({ type: 'warning', snapshot: u.id, problem: u.error.message }, `warning: ${describeUnreadable(u)}`);
        const snaps = listing.snapshots.filter((s) => matchesFilter(s.snapshot, snapshotFilter(o)));
        await r.loadIndex({ signal, onUnreadable: indexNotice(out) });
        let matches = 0;
        const seen = new Set<string>();
        const sink = stdoutSink();
        for await (const m of findInSnapshots(r, snaps, pattern, { signal })) {
          matches++;
          seen.add(m.snapshot);
          const line = out.render(
            { type: 'match', snapshot: m.snapshot, time: m.time, hostname: m.hostname, ...nodeJson(m.path, m.node) } as EventLine,
            `${m.snapshot.slice(0, 12)}  ${m.time}  ${m.hostname}  ${m.path}${m.node.type === 'dir' ? '/' : ''}`,
          );
          if (!(await sink.write(line + '\n'))) break;
        }
        await sink.end();
        out.info(`${matches} match(es) in ${seen.size} of ${snaps.length} snapshot(s)`);
        out.summary({ pattern, matches, snapshots: seen.size, searched: snaps.length, warnings: listing.unreadable.length });
        // Snapshots that could not be searched make the answer incomplete: exit code 3, as `snapshots` does.
        if (listing.unreadable.length) throw new CofferError('WARNINGS', `${listing.unreadable.length} snapshot(s) could not be read and were not searched`, { hint: 'See the warnings above; `coffer repo check` tells more.' });
      });
    });
}
