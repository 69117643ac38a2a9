// The scratch directories of restore tests on a client. A restore test restores only into a
// directory it has just created itself (mkdir, which fails if the name exists), below a scratch
// place the policy names, and removes that directory when it is done: so a test never restores
// over anything, whatever is at the scratch place. The place is checked here again, on the
// client, after resolving symlinks: the policy's check sees only the path as written.

import { lstat, mkdir, realpath, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CofferError } from '../core/errors.ts';
import { scratchPathProblem } from '../policy/index.ts';

/** Names of the directories a restore test creates: removing one removes nothing else. */
export const SCRATCH_NAME = /^coffer-restore-test-[0-9a-z]{1,64}$/;

function checkName(name: string): void {
  if (!SCRATCH_NAME.test(name)) throw new CofferError('USAGE', `Cannot use ${JSON.stringify(name)} as a restore test's directory: it is not coffer-restore-test-<id>`);
}

/** The scratch place, resolved through symlinks, after refusing one that is or is in a system directory. */
async function resolveBase(base: string): Promise<string> {
  const refuse = (p: string, problem: string, hint: string) => new CofferError('REFUSED', `Cannot use ${p} as the scratch place of a restore test: ${problem}`, { hint });
  const written = scratchPathProblem(base);
  if (written) throw refuse(base, written.problem, written.hint);
  await mkdir(base, { recursive: true, mode: 0o700 });
  const real = await realpath(base);
  const resolved = scratchPathProblem(real);
  if (resolved) throw refuse(`${base} (${real})`, resolved.problem, resolved.hint);
  if (!(await lstat(real)).isDirectory()) throw refuse(base, 'it is not a directory', 'Give a directory.');
  return real;
}

/** Creates a new, empty scratch directory `name` below `base` (which is created if missing); ALREADY_EXISTS if the name is taken. */
export async function createScratch(base: string, name: string): Promise<string> {
  checkName(name);
  const dir = join(await resolveBase(base), name);
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new CofferError('ALREADY_EXISTS', `Cannot create the restore test's directory ${dir}: it exists already`, { hint: 'A restore test only restores into a directory it has just created; remove the old one.' });
    throw e;
  }
  return dir;
}

/** Removes the scratch directory `name` below `base` and everything in it; nothing when it is gone already. */
export async function removeScratch(base: string, name: string): Promise<{ dir: string; removed: boolean }> {
  checkName(name);
  const dir = join(await realpath(base).catch(() => base), name);
  const st = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (st === undefined) return { dir, removed: false };
  // A symlink in its place is removed as a link: rm never follows it.
  await rm(dir, { recursive: true, force: true });
  return { dir, removed: true };
}

/** The agent's `scratch` job: create or remove a restore test's directory. */
export async function scratchJob(spec: { action: 'create' | 'remove'; base: string; name: string }): Promise<Record<string, unknown>> {
  if (spec.action === 'create') return { dir: await createScratch(spec.base, spec.name) };
  return removeScratch(spec.base, spec.name);
}
