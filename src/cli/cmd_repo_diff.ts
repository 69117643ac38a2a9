// `coffer repo diff SNAP1 SNAP2`: what changed between two snapshots: added (+), removed (-),
// modified (M: content, size, type or link target) and metadata-only (U: mode, owner, mtime,
// xattrs) entries, in path order. Subtrees that did not change are not even read.
import type { Command } from 'commander';
import { diffTrees, type DiffChange, type DiffStats } from '../jobs/browse.ts';
import { findSnapshot } from '../repository/snapshot.ts';
import { output, withRepo, unreadableNotice, indexNotice } from './context.ts';
import { stdoutSink } from './cmd_repo_dump.ts';

const MARK: Record<DiffChange, string> = { added: '+', removed: '-', modified: 'M', metadata: 'U' };

export function register(repo: Command): void {
  repo
    .command('diff <snapshot1> <snapshot2>')
    .description('show the paths added, removed, modified or with changed metadata between two snapshots')
    .action(async (ref1: string, ref2: string, _o: unknown, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const a = await findSnapshot(r, ref1, {}, { signal, onUnreadable: unreadableNotice(out) });
        const b = await findSnapshot(r, ref2, {}, { signal, onUnreadable: unreadableNotice(out) });
        await r.loadIndex({ signal, onUnreadable: indexNotice(out) });
        const stats: DiffStats = { added: 0, removed: 0, modified: 0, metadata: 0 };
        const sink = stdoutSink();
        for await (const d of diffTrees(r, a.snapshot.tree, b.snapshot.tree, { signal })) {
          stats[d.change]++;
          const node = d.after ?? d.before!;
          const line = out.render(
            { type: 'change', change: d.change, path: d.path, nodeType: node.type, ...(d.what ? { what: d.what } : {}) },
            `${MARK[d.change]}  ${d.path}${node.type === 'dir' ? '/' : ''}${d.what ? `  (${d.what.join(', ')})` : ''}`,
          );
          if (!(await sink.write(line + '\n'))) break;
        }
        await sink.end();
        out.summary({ from: a.id, to: b.id, ...stats }, () => `${stats.added} added, ${stats.removed} removed, ${stats.modified} modified, ${stats.metadata} with changed metadata (${a.id.slice(0, 12)} → ${b.id.slice(0, 12)})`);
      });
    });
}
