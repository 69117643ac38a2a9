// Where each kind of object lives on a backend. Every name here is part of the on-disk format
// (docs/format.md, "Repository layout"): DO NOT MODIFY without a format version bump.

import { CofferError } from '../core/errors.ts';

export const CONFIG_NAME = 'config';
/** A second copy of the config, written by init: one damaged object must not make the repository unopenable. */
export const CONFIG_COPY_NAME = 'config.copy';
export const KEYS_PREFIX = 'keys/';
export const DATA_PREFIX = 'data/';
export const INDEX_PREFIX = 'index/';
export const SNAPSHOTS_PREFIX = 'snapshots/';
export const SESSIONS_PREFIX = 'sessions/';
export const GC_PREFIX = 'gc/';
export const DAMAGE_PREFIX = 'damage/';
/** Damaged objects that a repair took out of use, kept under their old name below this. */
export const QUARANTINE_PREFIX = 'quarantine/';

const HEX64 = /^[0-9a-f]{64}$/;

export function packName(hex: string): string {
  return `${DATA_PREFIX}${hex.slice(0, 2)}/${hex}`;
}
export function indexName(hex: string): string {
  return `${INDEX_PREFIX}${hex}`;
}
export function snapshotName(hex: string): string {
  return `${SNAPSHOTS_PREFIX}${hex}`;
}
export function keyName(hex: string): string {
  return `${KEYS_PREFIX}${hex}`;
}

/**
 * Parses the id out of a listed object name under `prefix`. Returns undefined for names that are
 * not Coffer objects (a stray file someone dropped into the repository is ignored, not trusted).
 */
export function idFromName(prefix: string, name: string): string | undefined {
  if (!name.startsWith(prefix)) return undefined;
  const rest = name.slice(prefix.length);
  if (prefix === DATA_PREFIX) {
    const m = /^([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(rest);
    return m && m[2]!.startsWith(m[1]!) ? m[2] : undefined;
  }
  return HEX64.test(rest) ? rest : undefined;
}

export function isHexId(s: string): boolean {
  return HEX64.test(s);
}

export function requireHexId(s: string, what: string): string {
  if (!HEX64.test(s)) throw new CofferError('CORRUPT', `Cannot use ${what} ${JSON.stringify(s.slice(0, 80))}: not a 64-digit hex id`);
  return s;
}
