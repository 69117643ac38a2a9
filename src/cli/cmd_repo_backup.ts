// `coffer repo backup PATH...`: back up files and directories, a stream (--stdin, --command) or
// disk images (--image) into a repository. Incremental by default against the newest snapshot of
// the same host and paths.
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { CofferError } from '../core/errors.ts';
import { backup, backupReport, type BackupProgress } from '../jobs/backup.ts';
import { FILE_CHUNKINGS, type FileChunking } from '../jobs/file-chunking.ts';
import { localHostIdentity } from '../sources/host.ts';
import { collect, formatBytes, makePool, output, withRepo } from './context.ts';

interface BackupCliOptions {
  tag?: string[];
  dryRun?: boolean;
  exclude?: string[];
  excludeFile?: string[];
  oneFileSystem?: boolean;
  excludeCaches?: boolean;
  excludeIfPresent?: string[];
  parent?: string;
  force?: boolean;
  stdin?: boolean;
  stdinFilename?: string;
  command?: string;
  image?: boolean;
  imageChunking?: string;
  fileChunking?: string;
  host?: string;
}

function readExcludeFile(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  } catch (e) {
    throw new CofferError('USAGE', `Cannot read the exclude file ${path}: ${(e as Error).message}`);
  }
}

function eta(p: BackupProgress, seconds: number): string {
  if (!p.bytesTotal || p.bytesScanned <= 0 || p.bytesScanned >= p.bytesTotal) return '';
  const left = ((p.bytesTotal - p.bytesScanned) / p.bytesScanned) * seconds;
  return `, ETA ${left < 60 ? `${Math.ceil(left)} s` : `${Math.ceil(left / 60)} min`}`;
}

export function register(repo: Command): void {
  repo
    .command('backup [path...]')
    .description('back up files and directories, a stream (--stdin, --command) or disk images (--image)')
    .option('--tag <tag>', 'tag the snapshot (repeatable)', collect)
    .option('--dry-run', 'read and chunk everything, store nothing')
    .option('-e, --exclude <pattern>', 'exclude paths matching a gitignore-style pattern (repeatable)', collect)
    .option('--exclude-file <file>', 'read exclude patterns from a file, one per line (repeatable)', collect)
    .option('-x, --one-file-system', 'do not cross file-system boundaries')
    .option('--exclude-caches', 'skip directories holding a CACHEDIR.TAG')
    .option('--exclude-if-present <name>', 'skip directories holding a file of this name (repeatable)', collect)
    .option('--parent <snapshot>', 'compare with this snapshot instead of the newest of the same host and paths')
    .option('--force', 'read every file again (no parent snapshot)')
    .option('--stdin', 'back up standard input as one file')
    .option('--stdin-filename <name>', 'name of the file for --stdin or --command', 'stdin')
    .option('--command <command>', 'back up the output of a command (e.g. "pg_dump mydb"); fails if it exits non-zero')
    .option('--image', 'the paths are disk images or block devices: read whole, zero blocks as holes')
    .option('--image-chunking <how>', 'with --image: cdc (default; content-defined: finds the same data at other offsets, e.g. the same files in different VM images) or fixed (1 MiB blocks)')
    .option('--file-chunking <how>', 'auto (default: files that are a whole number of 4 KiB pages, such as databases and VM disks, in small fixed blocks; other files content-defined) or cdc (every file content-defined)')
    .option('--host <name>', 'record this host name instead of the local one')
    .action(async (paths: string[], o: BackupCliOptions, cmd: Command) => {
      const out = output(cmd);
      if ((o.stdin || o.command) && paths.length) throw new CofferError('USAGE', 'Cannot back up paths together with --stdin or --command', { hint: 'Run two backups.' });
      if (o.stdin && o.command) throw new CofferError('USAGE', 'Cannot use --stdin and --command together');
      if (!o.stdin && !o.command && paths.length === 0) throw new CofferError('USAGE', 'Cannot back up: no paths given', { hint: 'Name files or directories, or use --stdin / --command.' });
      if (o.stdinFilename && (o.stdinFilename.includes('/') || o.stdinFilename === '.' || o.stdinFilename === '..')) {
        throw new CofferError('USAGE', `Cannot use --stdin-filename ${JSON.stringify(o.stdinFilename)}: give a plain file name`);
      }
      if (o.imageChunking !== undefined && o.imageChunking !== 'fixed' && o.imageChunking !== 'cdc') {
        throw new CofferError('USAGE', `Cannot use --image-chunking ${JSON.stringify(o.imageChunking)}: give fixed or cdc`);
      }
      if (o.imageChunking !== undefined && !o.image) throw new CofferError('USAGE', 'Cannot use --image-chunking without --image');
      if (o.fileChunking !== undefined && !(FILE_CHUNKINGS as readonly string[]).includes(o.fileChunking)) {
        throw new CofferError('USAGE', `Cannot use --file-chunking ${JSON.stringify(o.fileChunking)}: give ${FILE_CHUNKINGS.join(' or ')}`);
      }
      if (o.fileChunking !== undefined && o.image) throw new CofferError('USAGE', 'Cannot use --file-chunking with --image', { hint: 'Images are cut as --image-chunking says.' });
      const patterns = [...(o.exclude ?? []), ...(o.excludeFile ?? []).flatMap(readExcludeFile)];
      const tty = process.stderr.isTTY && !out.json;
      await withRepo(cmd, async (r, signal) => {
        const pool = await makePool(cmd, r);
        let bar: cliProgress.SingleBar | undefined;
        try {
          const started = Date.now();
          if (tty) {
            bar = new cliProgress.SingleBar({ format: '{bar} {percentage}% | {done} | {files} files | {rate}/s{eta}', hideCursor: true, clearOnComplete: true, stream: process.stderr }, cliProgress.Presets.shades_classic);
            bar.start(1, 0, { done: '0 B', files: 0, rate: '0 B', eta: '' });
          }
          const host = localHostIdentity();
          const res = await backup(r, pool, paths, {
            signal,
            tags: o.tag,
            dryRun: o.dryRun,
            patterns,
            oneFileSystem: o.oneFileSystem,
            excludeCaches: o.excludeCaches,
            excludeIfPresent: o.excludeIfPresent,
            parent: o.force ? 'none' : o.parent,
            images: o.image,
            imageChunking: o.imageChunking as 'fixed' | 'cdc' | undefined,
            fileChunking: o.fileChunking as FileChunking | undefined,
            // --host renames this machine, it does not make it another one: the machine id stays,
            // so that restore can still tell two machines of the same name apart.
            host: o.host ? { ...host, hostname: o.host } : host,
            stream: o.command ? { name: o.stdinFilename ?? 'stdin', command: o.command } : o.stdin ? { name: o.stdinFilename ?? 'stdin', stream: process.stdin } : undefined,
            onWarning: (path, problem) => {
              if (bar) process.stderr.write('\r\x1b[K');
              out.warning(path, problem);
            },
            onNotice: (message) => {
              if (bar) process.stderr.write('\r\x1b[K');
              out.event({ type: 'notice', message }, `note: ${message}`);
            },
            onProgress: (p) => {
              if (out.json) {
                out.event({ type: 'progress', files: p.files, dirs: p.dirs, bytesScanned: p.bytesScanned, bytesRead: p.bytesRead, bytesNew: p.bytesNew, bytesTotal: p.bytesTotal, currentPath: p.currentPath });
              } else if (bar) {
                const s = Math.max((Date.now() - started) / 1000, 0.001);
                bar.setTotal(Math.max(p.bytesTotal ?? 0, p.bytesScanned, 1));
                bar.update(p.bytesScanned, { done: formatBytes(p.bytesScanned), files: p.files, rate: formatBytes(p.bytesScanned / s), eta: eta(p, s) });
              }
            },
          });
          bar?.stop();
          bar = undefined;
          const s = res.summary;
          // Named field by field (backupReport): the --json contract (docs/json.md) does not grow by accident.
          out.summary({ ...backupReport(res), dryRun: !!o.dryRun }, () => [
            `files: ${s.filesNew} new, ${s.filesChanged} changed, ${s.filesUnchanged} unchanged; ${s.dirs} directories${res.parent ? ` (parent ${res.parent.slice(0, 12)})` : ''}`,
            `scanned ${formatBytes(s.bytesScanned)} (read ${formatBytes(s.bytesRead ?? s.bytesScanned)}), new after dedup ${formatBytes(s.bytesNew)}, stored ${formatBytes(s.bytesStored)} after compression${s.bytesNew > 0 ? ` (dedup ratio ${(s.bytesScanned / s.bytesNew).toFixed(2)}x)` : ""} in ${(s.durationMs / 1000).toFixed(1)} s`,
            res.snapshotId ? `snapshot ${res.snapshotId.slice(0, 12)} saved` : 'dry run: nothing stored',
          ]);
          if (res.warnings.length) {
            throw new CofferError('WARNINGS', `Backup completed with ${res.warnings.length} warning(s): some files were unreadable or changed while read`, { hint: 'See the warnings above; the snapshot holds everything else.' });
          }
        } finally {
          bar?.stop();
          await pool.close();
        }
      });
    });
}
