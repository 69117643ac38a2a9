// Recognises the repositories of other backup tools (restic, Borg) at a location, so that opening
// one says what it is rather than calling its key files damaged and sending the user to restore
// them from a copy. Only looked at after a Coffer repository failed to open: best effort, a few
// small reads, and any storage error leaves the original error to be reported.
//
// restic (checked against restic 0.14): `config`, `keys/`, `data/xx/`, `index/`, `snapshots/`,
// `locks/`, the same names as ours; told apart by its key files, JSON without our `version` field
// ({"created", "username", "hostname", "kdf": "scrypt", "N", "r", "p", "salt", "data"}), and its
// config, which is binary without our envelope's magic. Borg 1.x: a `README` that starts "This is
// a Borg Backup repository.", an INI `config` with a `[repository]` section, `data/0/<n>` segments.

import { CofferError, isCofferError } from '../core/errors.ts';
import type { Backend, CallOptions } from '../storage/backend.ts';
import { OBJECT_MAGIC } from '../engine/format.ts';
import { CONFIG_NAME, KEYS_PREFIX } from './layout.ts';

export type ForeignTool = 'restic' | 'Borg';

/** Objects larger than this are not what the signatures look for, and are not read. */
const MAX_READ = 64 * 1024;
/** How many of a restic repository's key files are looked at. */
const MAX_KEYS = 4;

/** An object's bytes; undefined when it is missing, large or unreadable. */
async function small(backend: Backend, name: string, options: CallOptions | undefined): Promise<Buffer | undefined> {
  try {
    if ((await backend.stat(name, options)).size > MAX_READ) return undefined;
    return await backend.get(name, options);
  } catch (e) {
    if (isCofferError(e, 'CANCELLED')) throw e;
    return undefined;
  }
}

/** restic's key file: our fields without our `version`. */
function isResticKeyFile(bytes: Buffer): boolean {
  let kf: unknown;
  try {
    kf = JSON.parse(bytes.toString('utf8'));
  } catch {
    return false;
  }
  if (kf === null || typeof kf !== 'object' || Array.isArray(kf)) return false;
  const k = kf as Record<string, unknown>;
  return !('version' in k) && k.kdf === 'scrypt' && typeof k.N === 'number' && typeof k.salt === 'string' && typeof k.data === 'string';
}

/** Which other tool's repository is at the backend's location, if any. */
export async function detectForeignRepository(backend: Backend, options?: CallOptions): Promise<ForeignTool | undefined> {
  const readme = await small(backend, 'README', options);
  if (readme?.toString('utf8').startsWith('This is a Borg Backup repository')) return 'Borg';
  const config = await small(backend, CONFIG_NAME, options);
  if (config?.subarray(0, OBJECT_MAGIC.length).equals(OBJECT_MAGIC)) return undefined; // ours
  if (config && /^\[repository\]\s*$/m.test(config.toString('latin1'))) return 'Borg';
  let looked = 0;
  try {
    for await (const o of backend.list(KEYS_PREFIX, options)) {
      const bytes = await small(backend, o.name, options);
      if (bytes && isResticKeyFile(bytes)) return 'restic';
      if (++looked >= MAX_KEYS) break;
    }
  } catch (e) {
    if (isCofferError(e, 'CANCELLED')) throw e;
  }
  return undefined;
}

/** The error for a location that holds `tool`'s repository: what it is, and what to do. */
export function foreignRepositoryError(tool: ForeignTool, location: string, action: string): CofferError {
  const read = tool === 'restic' ? `restic -r ${location} snapshots` : `borg list ${location}`;
  return new CofferError('UNSUPPORTED', `Cannot ${action} at ${location}: this is a ${tool} repository, not a Coffer one`, {
    hint: `Coffer cannot read ${tool} repositories; use ${tool} for it (e.g. \`${read}\`). Give Coffer the location of a Coffer repository, or create one in an empty place with \`coffer repo init\`.`,
    details: { tool, location },
  });
}
