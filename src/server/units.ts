// Storage units marked unavailable: the disks are offline, the volumes are at the vault. An
// administrator says so (`coffer units unavailable NAME --reason ...`) and takes it back (`coffer
// units available NAME`); restores, the source choice of duplicates and browsing then pass over
// the unit's copies, and a restore whose only copies are there fails saying which units and how
// to bring one back.
//
// This is runtime state, not policy: it lives in the catalog's settings (key
// `unit.unavailable.NAME`), not in the StorageUnit document. A spec field would be reset by the
// next `coffer apply` of the policy repository, which knows nothing of today's offline disks, and
// an operator marking a unit offline at 3 a.m. should not have to edit and apply policy as code.
// Settings are shared by every server on one PostgreSQL catalog, like the rest of the state.

import { CofferError } from '../core/errors.ts';
import type { CatalogQueries } from '../catalog/catalog.ts';

const PREFIX = 'unit.unavailable.';

/** Why and since when a unit is unavailable, and who said so. */
export interface Unavailability {
  reason: string;
  /** Milliseconds since the epoch (the server's clock). */
  since: number;
  by: string;
}

/** The units marked unavailable now, by name. */
export async function unavailableUnits(catalog: Pick<CatalogQueries, 'settings'>): Promise<Map<string, Unavailability>> {
  const out = new Map<string, Unavailability>();
  for (const s of await catalog.settings.list()) {
    if (s.key.startsWith(PREFIX)) out.set(s.key.slice(PREFIX.length), s.value as Unavailability);
  }
  return out;
}

/** Marks a unit unavailable (again: the reason is replaced); NOT_FOUND if no such unit. */
export async function markUnavailable(catalog: Pick<CatalogQueries, 'settings' | 'storageUnits'>, unit: string, u: Unavailability): Promise<void> {
  await catalog.storageUnits.get(unit);
  await catalog.settings.set(PREFIX + unit, u);
}

/** Marks a unit available again; false if it was not marked unavailable. NOT_FOUND if no such unit. */
export async function markAvailable(catalog: Pick<CatalogQueries, 'settings' | 'storageUnits'>, unit: string): Promise<boolean> {
  await catalog.storageUnits.get(unit);
  return catalog.settings.remove(PREFIX + unit);
}

/** One line naming unavailable units and why: "offsite (volumes at the vault)". */
export function describeUnavailable(units: Array<[string, Unavailability]>): string {
  return units.map(([name, u]) => `${name} (${u.reason})`).join(', ');
}

/**
 * The error of an action that found copies only on unavailable units: CONFLICT for a person
 * waiting (a restore request), STORAGE_UNAVAILABLE for a queued job (retried later: the volumes
 * may be back by then).
 */
export function onlyUnavailable(action: string, units: Array<[string, Unavailability]>, options: { retry?: boolean } = {}): CofferError {
  const names = units.map(([n]) => n);
  const one = names.length === 1;
  return new CofferError(options.retry ? 'STORAGE_UNAVAILABLE' : 'CONFLICT', `Cannot ${action}: ${one ? 'its only readable copy is' : 'its readable copies are'} on storage unit${one ? '' : 's'} marked unavailable: ${describeUnavailable(units)}`, {
    hint: `Bring the volumes or disks back online, then run \`coffer units available ${names[0]}\` (an administrator)${options.retry ? '; the job is retried' : ''}.`,
  });
}
