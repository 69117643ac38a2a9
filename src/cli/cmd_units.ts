// `coffer units`: the server's storage units with their priority and availability, and marking
// one unavailable (disks offline, volumes at the vault) or available again (admin, audited).
// Restores, duplicates and browsing pass over the copies on an unavailable unit; a restore whose
// only copies are there fails naming the units (docs/server.md, "Restores use the best copy").

import type { Command } from 'commander';
import type { UnitView } from '../server/routes-units.ts';
import { output } from './context.ts';
import { apiFor, apiLine, localTime, serverOption, table } from './remote.ts';

function describe(u: UnitView): string {
  return u.available ? `storage unit ${u.name} is available` : `storage unit ${u.name} is unavailable since ${localTime(u.since!)} (${u.reason}, by ${u.by})`;
}

export function register(program: Command): void {
  const units = program.command('units').description('storage units: list (the default) with availability; mark one unavailable or available (admin)');
  serverOption(units.command('list', { isDefault: true }).description('list storage units: priority (restores read higher first), offsite, availability'))
    .action(async (_o: unknown, cmd: Command) => {
      const out = output(cmd);
      const r = await apiFor(cmd).request<{ items: UnitView[] }>('GET', '/api/v1/units');
      for (const unit of r.items) out.item(apiLine({ type: 'unit', unit }));
      const down = r.items.filter((u) => !u.available);
      out.summary({ units: r.items.length, unavailable: down.length }, () => table(['NAME', 'PRIORITY', 'OFFSITE', 'AVAILABLE', 'URL'], r.items.map((u) => [
        u.name, String(u.priority), u.offsite ? 'yes' : 'no', u.available ? 'yes' : `no: ${u.reason} (since ${localTime(u.since!)}, ${u.by})`, u.url,
      ])));
    });
  serverOption(units.command('unavailable <name>').description('mark a storage unit unavailable (admin): restores, duplicates and browsing pass over its copies until it is available again')
    .requiredOption('--reason <text>', 'why: "disks offline for maintenance", "volumes at the vault" (shown with the unit and in the audit log)'))
    .action(async (name: string, o: { reason: string }, cmd: Command) => {
      const unit = await apiFor(cmd).request<UnitView>('POST', `/api/v1/units/${encodeURIComponent(name)}/unavailable`, { body: { reason: o.reason } });
      output(cmd).summary({ unit }, () => describe(unit));
    });
  serverOption(units.command('available <name>').description('mark a storage unit available again (admin)'))
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const r = await apiFor(cmd).request<UnitView & { changed: boolean }>('POST', `/api/v1/units/${encodeURIComponent(name)}/available`);
      const { changed, ...unit } = r;
      output(cmd).summary({ unit, changed }, () => changed ? describe(unit) : `storage unit ${unit.name} was not marked unavailable: nothing changed`);
    });
}
