// Where a restore test may restore to: a scratch place on a client. The test restores into a
// fresh directory it creates below this path and removes afterwards, so nothing there is ever
// overwritten; still, a path that is the root, a system directory or inside one (where a typo
// in a policy would put a restore among the files a host runs on) is refused, at apply time by
// the Policy schema and again by the agent before it creates anything. Pure: no file system.

/** Directories below which nothing is restored, whatever the name: the host's own files. */
const SYSTEM_TREES = ['/bin', '/boot', '/dev', '/etc', '/lib', '/proc', '/run', '/sbin', '/sys', '/usr',
  '/var/lib', '/var/log', '/var/cache', '/var/spool', '/var/run', '/var/lock', '/var/mail', '/var/backups'];

/** Directories that may hold a scratch place below them, but are not one themselves. */
const SYSTEM_DIRS = ['/var', '/home', '/root', '/opt', '/srv', '/tmp', '/mnt', '/media', '/var/tmp'];

/** The default scratch place of a restore test. */
export const DEFAULT_SCRATCH_PATH = '/var/tmp/coffer-restore-test';

/**
 * What is wrong with `path` as a restore test's scratch place, or undefined when it is fine.
 * `path` is absolute and normalised (the schema checks that first; the agent passes a realpath).
 */
export function scratchPathProblem(path: string): { problem: string; hint: string } | undefined {
  const hint = `Give a directory of its own, e.g. ${DEFAULT_SCRATCH_PATH} or /srv/restore-test.`;
  const p = path.replace(/\/+$/, '') || '/';
  if (p === '/') return { problem: 'is the root directory: a restore test never restores there', hint };
  // Every /lib* (lib32, lib64, libx32, ...) counts.
  const top = `/${p.split('/')[1]!}`;
  const tree = /^\/lib[^/]*$/.test(top) ? top : SYSTEM_TREES.find((d) => p === d || p.startsWith(`${d}/`));
  if (tree !== undefined) return { problem: `${JSON.stringify(p)} is ${p === tree ? 'a system directory' : `inside the system directory ${tree}`}: a restore test never restores there`, hint };
  if (SYSTEM_DIRS.includes(p)) return { problem: `${JSON.stringify(p)} is a system directory: a restore test needs a directory of its own below it`, hint };
  return undefined;
}
