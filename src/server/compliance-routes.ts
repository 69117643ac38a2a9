// The API of restore tests and the compliance report (routes.ts takes these into its one table):
// POST /api/v1/restore-tests queues restore tests now (operator, audited), GET
// /api/v1/reports/compliance answers the report (admin, operator, auditor).

import { z } from 'zod';
import { CofferError } from '../core/errors.ts';
import type { Job } from '../catalog/jobs.ts';
import type { PolicyDocument } from '../policy/index.ts';
import { complianceReport } from './compliance.ts';
import { route, type RouteDef } from './http.ts';
import type { ApiDeps } from './routes.ts';
import { RESTORE_TEST_KIND } from './schedule-store.ts';

const name = z.string().min(1).max(255);

export function complianceRoutes(deps: Pick<ApiDeps, 's' | 'dispatcher'>): RouteDef[] {
  const { s, dispatcher } = deps;
  return [
    route({
      method: 'POST', url: '/api/v1/restore-tests', summary: 'Run a policy\'s restore test now, for its clients or one (jobs)', tags: ['jobs'], rule: { roles: ['operator'] }, audit: 'restore-test.start', status: 202,
      body: z.strictObject({ policy: name, client: name.optional() }),
      handler: async (ctx) => {
        const b = ctx.body;
        ctx.auditTarget(`Policy/${b.policy}`);
        const policy = (await s.catalog.policies.get(b.policy)).spec as PolicyDocument['spec'];
        if (b.client && !policy.clients.includes(b.client)) throw new CofferError('USAGE', `Policy ${b.policy} does not protect client ${b.client}`, { hint: `Its clients: ${policy.clients.join(', ')}.` });
        const jobs: Job[] = [];
        for (const client of b.client ? [b.client] : policy.clients) {
          jobs.push(await s.catalog.jobs.enqueue({ kind: RESTORE_TEST_KIND, client, policy: b.policy, priority: 10, maxAttempts: 1, spec: { adHoc: true }, requestedBy: ctx.principal.user }));
        }
        dispatcher.wake();
        return { jobs };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/reports/compliance', summary: 'Per policy and client: RPO, restore tests against the RTO, missing copies; images on hold', tags: ['reports'], rule: { roles: ['operator', 'auditor'] },
      query: z.strictObject({ policy: name.optional() }),
      handler: async (ctx) => complianceReport(s, ctx.query.policy === undefined ? {} : { policy: ctx.query.policy }),
    }),
  ];
}
