// `coffer repo dump SNAPSHOT PATH`: write one file of a snapshot to stdout, blob by blob, waiting
// for the reader, so that `coffer repo dump latest /db.sql | psql` streams without a temporary
// copy. Every blob is verified before it is written. --json is refused with a usage error line:
// stdout carries the file's bytes, and --json promises nothing but JSON lines there
// (docs/json.md); the exit code says whether the whole file was written.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { dumpFile, lookupPath } from '../jobs/browse.ts';
import { describeUnreadable, findSnapshot } from '../repository/snapshot.ts';
import { output, withRepo, snapshotSelectionOptions, snapshotFilter, type SnapshotSelection } from './context.ts';

/**
 * Standard output for the browse commands: waits when the reader is slow, and notices when the
 * reader has gone (EPIPE, e.g. `| head`) instead of crashing on the unhandled 'error' event.
 */
export interface StdoutSink {
  /** False once the reader has closed the pipe: the caller stops. */
  write(data: string | Buffer): Promise<boolean>;
  /** Resolves once everything written has been handed to the OS. */
  end(): Promise<void>;
}

export function stdoutSink(): StdoutSink {
  const out = process.stdout;
  let closed = false;
  let failure: Error | undefined;
  out.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') closed = true;
    else failure ??= e;
  });
  return {
    async write(data) {
      if (failure) throw failure;
      if (closed) return false;
      if (!out.write(data)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            out.off('drain', done);
            out.off('close', done);
            resolve();
          };
          out.on('drain', done);
          out.on('close', done);
        });
      }
      return !closed;
    },
    end() {
      return new Promise<void>((resolve) => out.write('', () => resolve()));
    },
  };
}

export function register(repo: Command): void {
  const command = repo
    .command('dump <snapshot> <path>')
    .description("write one file of a snapshot to stdout (e.g. coffer repo dump latest /db.sql | psql)");
  snapshotSelectionOptions(command, 'latest')
    .action(async (ref: string, path: string, o: SnapshotSelection, cmd: Command) => {
      if (output(cmd).json) {
        throw new CofferError('USAGE', 'Cannot dump with --json: dump writes the file itself to standard output, where --json allows only JSON lines', {
          hint: 'Run dump without --json; its exit code says whether the whole file was written (0) or why not, with the message on standard error.',
        });
      }
      await withRepo(cmd, async (r, signal) => {
        const snap = await findSnapshot(r, ref, snapshotFilter(o), { signal, onUnreadable: (u) => process.stderr.write(`note: ${describeUnreadable(u)}\n`) });
        await r.loadIndex({ signal, onUnreadable: (id, e) => process.stderr.write(`note: index file ${id.slice(0, 12)} is unreadable (${e.message}) and was left out; \`coffer repo repair index\` repairs the index\n`) });
        const at = await lookupPath(r, snap.snapshot.tree, path, { signal });
        if (!at.node) throw new CofferError('USAGE', 'Cannot dump /: it is the snapshot root, a directory', { hint: 'List it with `coffer repo ls SNAPSHOT`.' });
        const sink = stdoutSink();
        await dumpFile(r, at.node, at.path, async (data) => {
          if (!(await sink.write(data))) throw new CofferError('CANCELLED', `Cannot dump ${at.path}: the reader closed the pipe before the end of the file`);
        }, { signal });
        await sink.end();
      });
    });
}
