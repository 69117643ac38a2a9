// backup() and restore() for tests: the host identity that the CLI and agents pass in is filled
// with this host's, so that a test says only what it is about.
import { backup as backupJob, type BackupOptions, type BackupPool, type BackupResult } from '../jobs/backup.ts';
import { restore as restoreJob, type RestoreOptions, type RestoreResult } from '../jobs/restore.ts';
import type { Repository } from '../repository/repository.ts';
import type { Snapshot } from '../repository/snapshot.ts';
import { localHostIdentity } from '../sources/host.ts';

const here = localHostIdentity();

export function backup(repo: Repository, pool: BackupPool, paths: string[], options: Partial<BackupOptions> = {}): Promise<BackupResult> {
  return backupJob(repo, pool, paths, { host: here, ...options });
}

export function restore(repo: Repository, source: Snapshot | string, target: string, options: Partial<RestoreOptions> = {}): Promise<RestoreResult> {
  return restoreJob(repo, source, target, { targetHost: here, ...options });
}
