// `coffer quickstart` (what `npm start` runs until the server lands): creates a local repository
// under ./.coffer-quickstart (password in a 0600 file beside it), backs up a sample folder,
// lists the snapshots and checks the repository. Running it again makes an incremental backup.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { LocalBackend } from '../storage/local.ts';
import { Repository } from '../repository/repository.ts';
import { backup } from '../jobs/backup.ts';
import { localHostIdentity } from '../sources/host.ts';
import { check } from '../repository/check.ts';
import { loadAllSnapshots } from '../repository/snapshot.ts';
import { WorkerPool } from '../engine/pool.ts';
import { formatBytes, interruptSignal, output } from './context.ts';

export function register(program: Command): void {
  program
    .command('quickstart')
    .description('create a local demo repository, back up a sample folder and check it')
    .option('--dir <dir>', 'where the demo repository lives', '.coffer-quickstart')
    .option('--source <dir>', 'folder to back up (default: this project\'s src/)')
    .action(async (o: { dir: string; source?: string }, cmd: Command) => {
      const out = output(cmd);
      const signal = interruptSignal();
      const dir = resolve(o.dir);
      const source = resolve(o.source ?? join(import.meta.dirname, '..'));
      mkdirSync(dir, { recursive: true });
      const pwFile = join(dir, 'password');
      if (!existsSync(pwFile)) writeFileSync(pwFile, randomBytes(18).toString('base64url') + '\n', { mode: 0o600 });
      const password = readFileSync(pwFile, 'utf8').trim();
      const backend = new LocalBackend(join(dir, 'repo'));
      const fresh = !existsSync(join(dir, 'repo', 'config'));
      const repo = fresh
        ? await Repository.init(backend, password, { cacheDir: join(dir, 'cache') })
        : await Repository.open(backend, password, { cacheDir: join(dir, 'cache') });
      const pool = await WorkerPool.create({ keys: repo.keys, chunker: repo.config.chunker, level: repo.config.compressionLevel });
      try {
        if (fresh) out.info(`created repository ${repo.id.slice(0, 12)} in ${join(dir, 'repo')} (password in ${pwFile})`);
        const res = await backup(repo, pool, [source], { signal, host: localHostIdentity(), tags: ['quickstart'], onWarning: (path, problem) => out.warning(path, problem) });
        const s = res.summary;
        out.info(`backed up ${source}: ${s.filesNew} files, ${formatBytes(s.bytesScanned)} read, ${formatBytes(s.bytesNew)} new, ${formatBytes(s.bytesStored)} stored -> snapshot ${res.snapshotId!.slice(0, 12)}`);
        const snaps = await loadAllSnapshots(repo, { signal });
        const c = await check(repo, { signal, readData: true });
        out.summary({ repository: join(dir, 'repo'), created: fresh, snapshot: res.snapshotId, snapshots: snaps.length, check: c.ok ? 'ok' : 'failed', warnings: res.warnings.length }, () => [
          `${snaps.length} snapshot(s) in the repository; check --read-data: ${c.ok ? 'no errors' : 'ERRORS'}`,
          `try: COFFER_PASSWORD_COMMAND="cat ${pwFile}" npx coffer repo snapshots --repo ${join(dir, 'repo')}`,
        ]);
        if (res.warnings.length) throw new CofferError('WARNINGS', `Backup completed with ${res.warnings.length} warning(s): some files were unreadable or changed while read`, { hint: 'See the warnings above; the snapshot holds everything else.' });
      } finally {
        await pool.close();
        await repo.close();
        await backend.close();
      }
    });
}
