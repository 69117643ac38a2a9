// `coffer repo restore SNAPSHOT --target DIR`: restore a snapshot, or selected paths of it, into a
// directory (or in place with --target /). Before anything is written it shows whose data goes
// onto which host, and refuses to overwrite a system directory with another host's data unless
// the operator names this host (--force --confirm-host NAME).
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { localHostIdentity } from '../sources/host.ts';
import { COMPARE_BASES, OVERWRITE_POLICIES, checkRestoreTarget, describeHost, restore, type CompareBasis, type OverwritePolicy, type RestoreCounts, type RestoreEntry } from '../jobs/restore.ts';
import { findSnapshot } from '../repository/snapshot.ts';
import { collect, formatBytes, globals, makePool, output, parseIntOption, withRepo, snapshotSelectionOptions, snapshotFilter, type SnapshotSelection, unreadableNotice } from './context.ts';

interface RestoreCliOptions extends SnapshotSelection {
  target: string;
  include?: string[];
  exclude?: string[];
  overwrite: string;
  compare: string;
  dryRun?: boolean;
  force?: boolean;
  confirmHost?: string;
  sparse: boolean;
  verbose?: boolean;
  parallel?: string;
  salvage?: boolean;
}

function counts(c: RestoreCounts): string {
  const parts = [`${c.files} files`, `${c.dirs} dirs`, `${c.symlinks} symlinks`];
  if (c.hardlinks) parts.push(`${c.hardlinks} hard links`);
  if (c.special) parts.push(`${c.special} special`);
  return `${parts.join(', ')}, ${formatBytes(c.bytes)}`;
}

const VERBS: Record<RestoreEntry['action'], [now: string, dry: string]> = {
  create: ['created', 'would create'],
  overwrite: ['overwrote', 'would overwrite'],
  metadata: ['metadata', 'metadata'],
  unchanged: ['unchanged', 'unchanged'],
  skip: ['skipped', 'would skip'],
};

export function register(repo: Command): void {
  const command = repo
    .command('restore <snapshot>')
    .description('restore a snapshot ("latest" or an id), or paths of it, into a directory (--target / puts files back in place)')
    .requiredOption('--target <dir>', 'directory to restore into (created if missing); / restores in place')
    .option('--include <pattern>', 'only this path or glob of the snapshot and what is below it: /home/alice/docs, "/home/*/.bashrc", "**/*.conf"; without a "/", a name at any depth ("*.sql") (repeatable)', collect)
    .option('--exclude <pattern>', 'leave out this path, glob or name and everything below it (repeatable)', collect)
    .option('--overwrite <policy>', 'existing entries: never (keep and report), if-changed (replace files that differ, see --compare; restore the metadata of the others), always', 'if-changed')
    .option('--compare <basis>', 'how an existing file is judged unchanged: size-mtime (same size and mtime as in the snapshot; nothing is read, so a change that kept both is missed) or content (read it and compare every chunk with the snapshot by hash)', 'size-mtime')
    .option('--dry-run', 'show what would be created, overwritten and left alone; write nothing')
    .option('--force', "with --confirm-host: allow overwriting a system directory with another host's data")
    .option('--confirm-host <name>', "this host's name: required with --force, and checked whenever given")
    .option('--no-sparse', 'write zeros instead of holes (e.g. for swap files)')
    .option('-v, --verbose', 'list every entry restored')
    .option('--parallel <n>', 'entries prepared at once (default 16)')
    .option('--salvage', 'also write files whose data is partly unreadable, the unreadable ranges zero-filled, as NAME.damaged (the restore still fails)');
  snapshotSelectionOptions(command, 'latest')
    .action(async (ref: string, o: RestoreCliOptions, cmd: Command) => {
      const out = output(cmd);
      if (!(OVERWRITE_POLICIES as readonly string[]).includes(o.overwrite)) {
        throw new CofferError('USAGE', `Cannot restore with --overwrite ${JSON.stringify(o.overwrite)}: give never, if-changed or always`);
      }
      if (!(COMPARE_BASES as readonly string[]).includes(o.compare)) {
        throw new CofferError('USAGE', `Cannot restore with --compare ${JSON.stringify(o.compare)}: give size-mtime or content`);
      }
      if (o.compare === 'content' && o.overwrite === 'always') {
        throw new CofferError('USAGE', 'Cannot restore with --compare content and --overwrite always: always replaces every existing file without comparing', { hint: 'Use --overwrite if-changed --compare content to replace only the files whose content differs.' });
      }
      const fileConcurrency = o.parallel === undefined ? undefined : parseIntOption('--parallel', o.parallel, 1, 256);
      // A reader that goes away (`--dry-run | head`) must not kill a restore halfway through.
      process.stdout.on('error', () => {});
      await withRepo(cmd, async (r, signal) => {
        const snap = await findSnapshot(r, ref, snapshotFilter(o), { signal, onUnreadable: unreadableNotice(out) });
        const source = snap.snapshot.host;
        const here = localHostIdentity();
        // Whose data goes where, before the safety check can refuse and before any write.
        out.event(
          { type: 'hosts', snapshot: snap.id, time: snap.snapshot.time, source, target: here, targetPath: o.target },
          [`restoring snapshot ${snap.id.slice(0, 12)} of ${snap.snapshot.time}${o.dryRun ? ' (dry run)' : ''}`, `  from host ${describeHost(source)}`, `  onto host ${describeHost(here)} at ${o.target}`].join('\n'),
        );
        const safety = { force: o.force, confirmHost: o.confirmHost, targetHost: here };
        const checked = await checkRestoreTarget(source, o.target, safety);
        for (const n of checked.verdict.warnings) out.event({ type: 'notice', message: n }, `note: ${n}`);
        const dry = !!o.dryRun;
        // Blobs are decoded (decrypted, decompressed, verified) on this thread into reused buffers
        // while writer threads write: on the one-VM benchmark (bench/restore-one-vm.sh, 2 cores)
        // that took 50 MB less peak RSS, a fifth fewer page faults and 15 % less CPU than two
        // worker threads, for 15 % more wall time. --workers N (or COFFER_WORKERS) decodes in N
        // worker threads, when time matters more than the host's memory. A dry run reads nothing.
        const workers = globals(cmd).workers !== undefined || !!process.env.COFFER_WORKERS;
        const pool = dry || !workers ? undefined : await makePool(cmd, r);
        const res = await restore(r, snap.snapshot, o.target, {
          pool,
          signal,
          ...safety,
          include: o.include,
          exclude: o.exclude,
          overwrite: o.overwrite as OverwritePolicy,
          compare: o.compare as CompareBasis,
          dryRun: dry,
          sparse: o.sparse,
          fileConcurrency,
          salvage: o.salvage,
          onEntry: (e) => {
            // A dry run lists everything; a real one lists what it kept back, or all with -v.
            if (!dry && !o.verbose && e.action !== 'skip') return;
            const verb = VERBS[e.action][dry ? 1 : 0];
            out.event({ type: 'entry', action: e.action, path: e.path, nodeType: e.type, ...(e.size !== undefined ? { size: e.size } : {}), ...(e.reason ? { reason: e.reason } : {}), dryRun: dry }, `${verb.padEnd(15)} ${e.path}${e.type === 'dir' ? '/' : ''}${e.reason ? `  (${e.reason})` : ''}`);
          },
          onWarning: (path, problem) => out.warning(path, problem),
        }).catch((e: unknown) => {
          // What the restore wanted said (e.g. that it recorded damage) is said on failure too.
          const partial = (e as CofferError).details?.result as { notices?: string[] } | undefined;
          for (const n of partial?.notices ?? []) if (!checked.verdict.warnings.includes(n)) out.event({ type: 'notice', message: n }, `note: ${n}`);
          throw e;
        }).finally(() => pool?.close());
        for (const n of res.notices) if (!checked.verdict.warnings.includes(n)) out.event({ type: 'notice', message: n }, `note: ${n}`);
        // What "unchanged" rests on: by size and mtime, a file changed behind them counts as unchanged.
        const basis = o.overwrite === 'always' ? '' : res.compare === 'content' ? ' (content compared)' : ' (judged by size and mtime; --compare content reads them)';
        out.summary({ snapshot: snap.id, target: res.target, dryRun: dry, created: res.created, overwritten: res.overwritten, metadataRestored: res.metadataRestored, unchanged: res.unchanged, compare: res.compare, skipped: res.skipped, warnings: res.warnings.length, staleTemps: res.staleTemps }, () => [
          `${dry ? 'would create:   ' : 'created:        '}${counts(res.created)}`,
          `${dry ? 'would overwrite:' : 'overwritten:    '}${counts(res.overwritten)}`,
          `${dry ? 'metadata to fix:' : 'metadata fixed: '}${counts(res.metadataRestored)} (content unchanged)`,
          `unchanged:      ${counts(res.unchanged)}${basis}`,
          `${dry ? 'would skip:     ' : 'skipped:        '}${counts(res.skipped)}${res.skipped.files + res.skipped.symlinks + res.skipped.special + res.skipped.hardlinks > 0 && o.overwrite === 'never' ? ' (existing, --overwrite never)' : ''}`,
          `warnings:       ${res.warnings.length}`,
          dry ? 'dry run: nothing was written' : `restored into ${res.target}`,
        ]);
        if (res.warnings.length) throw new CofferError('WARNINGS', `Restore completed with ${res.warnings.length} warning(s)`, { hint: 'See the warnings above; everything else was restored.' });
      });
    });
}
