// The API of verification (src/server/verify.ts): start a verify job on demand, list the alerts
// that verify jobs raise, and acknowledge one. Part of the route table (routes.ts), with its roles:
// an operator starts verify jobs and acknowledges alerts; an auditor reads the alerts.

import { z } from 'zod';
import { CofferError } from '../core/errors.ts';
import { ALERT_STATES } from '../catalog/alerts.ts';
import { route, type RouteDef } from './http.ts';
import type { ApiDeps } from './routes.ts';

const name = z.string().min(1).max(255);
const id = z.string().min(1).max(64);
const limit = z.coerce.number().int().min(1).max(1000).optional();
const cursor = z.string().max(1024).optional();

export function verifyRoutes(deps: ApiDeps): RouteDef[] {
  return [
    route({
      method: 'POST', url: '/api/v1/verify', summary: 'Verify a storage unit now, or one image\'s copy in it (a job): all packs, or a share from the unit\'s cursor on', tags: ['jobs'], rule: { roles: ['operator'] }, audit: 'verify.start', status: 202,
      body: z.strictObject({
        unit: name,
        image: id.optional(),
        all: z.boolean().optional(),
        subsetPercent: z.number().gt(0).max(100).optional(),
      }),
      handler: async (ctx) => {
        const { s, dispatcher } = deps;
        const b = ctx.body;
        ctx.auditTarget(`StorageUnit/${b.unit}`);
        ctx.auditDetails({ ...(b.image ? { image: b.image } : {}), ...(b.subsetPercent !== undefined ? { subsetPercent: b.subsetPercent } : { all: true }) });
        if (b.all && b.subsetPercent !== undefined) throw new CofferError('USAGE', 'Cannot verify: give either all or subsetPercent, not both', { hint: 'Use --all to read every pack, or --subset N% to read a share of them.' });
        await s.catalog.storageUnits.get(b.unit);
        if (b.image) {
          const copies = (await s.catalog.copies.list({ imageId: (await s.catalog.images.get(b.image)).id, storageUnit: b.unit, state: ['ok', 'suspect'], limit: 1 })).items;
          if (copies.length === 0) throw new CofferError('NOT_FOUND', `Cannot verify image ${b.image} in storage unit ${b.unit}: it has no copy there in state ok or suspect`, { hint: 'See its copies with GET /api/v1/images/ID; give the unit that holds one.' });
        }
        const job = await s.catalog.jobs.enqueue({
          kind: 'verify', storageUnit: b.unit, priority: 10, maxAttempts: 1, requestedBy: ctx.principal.user,
          spec: { unit: b.unit, ...(b.image ? { image: b.image } : {}), ...(b.subsetPercent !== undefined ? { subsetPercent: b.subsetPercent } : {}) },
        });
        dispatcher.wake();
        return job;
      },
    }),
    route({
      method: 'GET', url: '/api/v1/alerts', summary: 'Alerts (damage found by verify jobs), newest first; open and acknowledged ones unless state is given', tags: ['server'], rule: { roles: ['operator', 'auditor'] },
      query: z.strictObject({ state: z.union([z.enum(ALERT_STATES), z.literal('all')]).optional(), unit: name.optional(), limit, cursor }),
      handler: async (ctx) => {
        const q = ctx.query;
        const state = q.state === 'all' ? undefined : q.state ?? ['open' as const, 'acknowledged' as const];
        return deps.s.catalog.alerts.list({ ...(state ? { state } : {}), ...(q.unit ? { storageUnit: q.unit } : {}), limit: q.limit, cursor: q.cursor });
      },
    }),
    route({
      method: 'POST', url: '/api/v1/alerts/:id/ack', summary: 'Acknowledge an alert: seen, someone is on it (it stays until resolved)', tags: ['server'], rule: { roles: ['operator'] }, audit: 'alert.ack',
      params: z.strictObject({ id }),
      handler: async (ctx) => {
        ctx.auditTarget(`alert/${ctx.params.id}`);
        return deps.s.catalog.alerts.acknowledge(ctx.params.id, ctx.principal.user);
      },
    }),
  ];
}
