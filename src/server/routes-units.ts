// The API of storage unit availability (units.ts): list the units with their state, mark one
// unavailable with a reason, mark it available again. Changing it is for administrators and is
// audited; reading it is for everyone who reads the catalog. Part of the route table (routes.ts).

import { z } from 'zod';
import { route, type RequestContext, type RouteDef } from './http.ts';
import type { Services } from './services.ts';
import { markAvailable, markUnavailable, unavailableUnits } from './units.ts';

const READERS = ['operator', 'auditor'] as const;
const name = z.string().min(1).max(255);

/** A unit as `coffer units` lists it. */
export interface UnitView {
  name: string;
  url: string;
  priority: number;
  offsite: boolean;
  available: boolean;
  /** When unavailable: why, since when, and who said so. */
  reason?: string;
  since?: number;
  by?: string;
}

export function unitRoutes(s: Services): RouteDef[] {
  const view = async (unit: string): Promise<UnitView> => {
    const u = await s.catalog.storageUnits.get(unit);
    const spec = u.spec as { priority?: number; offsite?: boolean };
    const down = (await unavailableUnits(s.catalog)).get(unit);
    return { name: u.name, url: u.url, priority: spec.priority ?? 0, offsite: spec.offsite ?? false, available: !down, ...(down ? { reason: down.reason, since: down.since, by: down.by } : {}) };
  };
  return [
    route({
      method: 'GET', url: '/api/v1/units', summary: 'Storage units with their priority and availability', tags: ['storage'], rule: { roles: READERS },
      handler: async () => {
        const items: UnitView[] = [];
        for (let cursor: string | undefined; ;) {
          const page = await s.catalog.storageUnits.list({ limit: 1000, cursor });
          for (const u of page.items) items.push(await view(u.name));
          if (!page.next) break;
          cursor = page.next;
        }
        return { items };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/units/:name/unavailable', summary: 'Mark a storage unit unavailable: restores, duplicates and browsing pass over its copies (admin)', tags: ['storage'], rule: { roles: [] }, audit: 'unit.unavailable',
      params: z.strictObject({ name }), body: z.strictObject({ reason: z.string().trim().min(1).max(1024) }),
      handler: async (ctx: RequestContext<{ name: string }, unknown, { reason: string }>) => {
        ctx.auditTarget(`StorageUnit/${ctx.params.name}`);
        ctx.auditDetails({ reason: ctx.body.reason });
        await markUnavailable(s.catalog, ctx.params.name, { reason: ctx.body.reason, since: s.now(), by: ctx.principal.user });
        return view(ctx.params.name);
      },
    }),
    route({
      method: 'POST', url: '/api/v1/units/:name/available', summary: 'Mark a storage unit available again (admin)', tags: ['storage'], rule: { roles: [] }, audit: 'unit.available',
      params: z.strictObject({ name }),
      handler: async (ctx: RequestContext<{ name: string }>) => {
        ctx.auditTarget(`StorageUnit/${ctx.params.name}`);
        const was = await markAvailable(s.catalog, ctx.params.name);
        ctx.auditDetails({ wasUnavailable: was });
        return { ...(await view(ctx.params.name)), changed: was };
      },
    }),
  ];
}
