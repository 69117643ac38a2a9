// Temporary files that earlier restores left behind. A restore writes every entry under a fresh
// `.coffer-restore-<16 hex digits>` name and renames it into place; one that is killed (SIGKILL,
// power loss) cannot remove those. The next restore into the same directories removes them and
// reports how many, but only ever names of exactly that form, never directories, only in the
// directories it goes into, and never what a restore running at the same time may still be
// writing:
//
// - A temporary file whose ctime is older than STALE_TEMP_MS (15 minutes, the age at which a
//   repository session counts as dead) is stale: ctime moves with every write and cannot be set
//   back (utimes sets mtime, and moves ctime to now).
// - A younger one is removed only when no other restore of this repository is running: none is
//   registered in its sessions/, or those that are ran on this host from processes that are gone
//   (a killed restore's session object outlives it by up to 15 minutes). Otherwise it is kept and
//   counted, and the restore says so.
// Not covered: a concurrent restore from another repository, or from a read-only repository (it
// cannot register), into the same directories; if its young temporary file is removed, that entry
// fails with a warning there, nothing is lost silently.

import { lstat, readdir, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import type { Repository } from '../repository/repository.ts';
import { listSessions, type Session } from '../repository/session.ts';
import { childPath } from '../sources/scan.ts';

export const TMP_PREFIX = '.coffer-restore-';
/** Exactly the names tempPath() in restore.ts makes: the prefix and 8 random bytes in hex. */
const TMP_NAME = /^\.coffer-restore-[0-9a-f]{16}$/;
/** Temporary files older than this (by ctime) are stale whatever else runs. */
export const STALE_TEMP_MS = 15 * 60_000;

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * True when a restore other than `own`'s may be running on this repository (or we cannot tell).
 * Staleness is judged by the storage's clock, read off a fresh heartbeat of `own`; a restore
 * that could not register (read-only repository) has only this host's clock.
 */
export async function otherRestoreRunning(repo: Repository, own: Session | undefined, options: { signal?: AbortSignal } = {}): Promise<boolean> {
  try {
    const here = hostname();
    const now = own ? await own.storageNow(options) : Date.now();
    const ownSessionId = own?.info.id;
    return (await listSessions(repo, { ...options, now })).some((s) =>
      s.unreadable || (s.kind === 'restore' && s.id !== ownSessionId && !s.stale && !(s.hostname === here && processGone(s.pid))));
  } catch {
    return true;
  }
}

export interface StaleTempOptions {
  /** Another restore may be writing into the same directories: keep young temporary files. */
  othersMayWrite: boolean;
  /** Default STALE_TEMP_MS. */
  minAgeMs?: number;
  /** Count, remove nothing. */
  dryRun: boolean;
  onWarning: (path: string, problem: string) => void;
}

/** Finds and removes stale temporary files, directory by directory, and counts them. */
export class StaleTemps {
  removed = 0;
  kept = 0;
  private readonly options: StaleTempOptions;

  constructor(options: StaleTempOptions) {
    this.options = options;
  }

  /** Sweeps one directory (`inner`: its path in the snapshot, for warnings). Never throws. */
  async sweep(dir: Buffer, inner: string): Promise<void> {
    let names: Buffer[];
    try {
      names = await readdir(dir, { encoding: 'buffer' });
    } catch {
      return; // the restore itself reports a directory it cannot use
    }
    const minAge = this.options.minAgeMs ?? STALE_TEMP_MS;
    for (const name of names) {
      if (!TMP_NAME.test(name.toString('latin1'))) continue;
      const p = childPath(dir, name);
      try {
        const st = await lstat(p);
        if (st.isDirectory()) continue;
        if (this.options.othersMayWrite && Date.now() - st.ctimeMs < minAge) {
          this.kept++;
          continue;
        }
        if (!this.options.dryRun) await unlink(p);
        this.removed++;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // its restore renamed or removed it
        this.options.onWarning(`${inner}/${name.toString('utf8')}`, `cannot remove a temporary file of an earlier restore: ${(e as Error).message}`);
      }
    }
  }

  /** What the operator should be told. */
  notices(): string[] {
    const out: string[] = [];
    const files = (n: number) => `${n} temporary file${n === 1 ? '' : 's'} (${TMP_PREFIX}*)`;
    if (this.removed) out.push(`${this.options.dryRun ? 'would remove' : 'removed'} ${files(this.removed)} left by an earlier restore that was interrupted`);
    if (this.kept) {
      out.push(`left ${files(this.kept)} in place: another restore of this repository is running and they are younger than ${Math.round((this.options.minAgeMs ?? STALE_TEMP_MS) / 60_000)} minutes, so they may be its own; a later restore removes them`);
    }
    return out;
  }
}
