// `coffer repo ls SNAPSHOT [PATH]`: list a directory of a snapshot (or everything below it with
// --recursive) without restoring anything. --long adds mode, owner, size and mtime; --json prints
// one `node` line per entry and a summary.
import type { Command } from 'commander';
import { listSnapshot, modeString, nodeJson, nodeTime } from '../jobs/browse.ts';
import { findSnapshot } from '../repository/snapshot.ts';
import type { TreeNode } from '../repository/tree.ts';
import type { EventLine } from './json-schema.ts';
import { output, withRepo, snapshotSelectionOptions, snapshotFilter, type SnapshotSelection, unreadableNotice, indexNotice } from './context.ts';
import { stdoutSink } from './cmd_repo_dump.ts';

function longLine(path: string, n: TreeNode): string {
  const owner = `${n.user ?? n.uid}/${n.group ?? n.gid}`;
  const size = n.type === 'file' ? String(n.size ?? 0) : '-';
  const link = n.type === 'symlink' ? ` -> ${n.linkTarget}` : '';
  return `${modeString(n)}  ${owner.padEnd(17)} ${size.padStart(12)}  ${nodeTime(n).replace('T', ' ').slice(0, 19)}  ${path}${link}`;
}

export function register(repo: Command): void {
  const command = repo
    .command('ls <snapshot> [path]')
    .description('list the entries of a directory in a snapshot ("latest" or an id)')
    .option('-R, --recursive', 'list everything below the directory')
    .option('-l, --long', 'show mode, owner, size and modification time');
  snapshotSelectionOptions(command, 'latest')
    .action(async (ref: string, path: string | undefined, o: { recursive?: boolean; long?: boolean } & SnapshotSelection, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const snap = await findSnapshot(r, ref, snapshotFilter(o), { signal, onUnreadable: unreadableNotice(out) });
        await r.loadIndex({ signal, onUnreadable: indexNotice(out) });
        const sink = stdoutSink();
        let entries = 0;
        for await (const { path: p, node } of listSnapshot(r, snap.snapshot.tree, path ?? '/', { signal, recursive: o.recursive })) {
          entries++;
          const line = out.render({ type: 'node', ...nodeJson(p, node) } as EventLine, o.long ? longLine(p, node) : p + (node.type === 'dir' ? '/' : ''));
          if (!(await sink.write(line + '\n'))) break;
        }
        await sink.end();
        out.summary({ snapshot: snap.id, path: path ?? '/', entries });
      });
    });
}
