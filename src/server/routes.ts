// Every route of the API, with its schemas and who may call it: one table, read by the HTTP frame
// (http.ts), the OpenAPI document and the role matrix test. A route not in this table has no rule
// and is refused for everyone. Roles (docs/server.md): admin may do everything; operator runs,
// cancels and retries jobs and edits schedules; restore browses and restores the clients granted
// to it; auditor reads everything and changes nothing. Admin alone expires or deletes images,
// deletes documents and changes retention (lifecycles).

import { z } from 'zod';
import { CofferError } from '../core/errors.ts';
import { VERSION } from '../core/version.ts';
import { JOB_STATES, type Job } from '../catalog/jobs.ts';
import { KINDS, kindFromName, parseDuration, policyWideRow, tableColumns, tableRow, type Kind, type PolicyDocument } from '../policy/index.ts';
import type { Dispatcher, BusMessage } from './dispatcher.ts';
import { applyDocuments, getDocument, listDocuments, type SecretStore } from './documents.ts';
import { restorableCopies } from './executors.ts';
import { bestCopy } from './restore-executor.ts';
import { unitRoutes } from './routes-units.ts';
import { unavailableUnits } from './units.ts';
import { complianceRoutes } from './compliance-routes.ts';
import { MAX_CLONE_TARGETS } from './duplicate.ts';
import { parseGrants, ROLES, tokenInfo, type Principal, type Role } from './auth.ts';
import { route, type RequestContext, type RouteDef } from './http.ts';
import { lifecycleOf, runOnAgent, type Services } from './services.ts';
import { verifyRoutes } from './verify-routes.ts';
import { pkiRoutes, type PkiDeps } from './pki-routes.ts';
import { minimumLockOf, refuseLockedCopies } from './object-lock.ts';

export interface AuthApi {
  login(user: string, password: string, source: string): Promise<{ token: string; expires: number; user: string; role: Role }>;
  logout(principal: Principal): Promise<void>;
  hashPassword(password: string): Promise<string>;
  createToken(principal: Principal, options: { name: string; role: Role; expiresIn?: string }, source: string): Promise<{ id: string; token: string; expires?: number }>;
  revokeToken(principal: Principal, id: string, source: string): Promise<void>;
  /** Undefined when the principal may restore from `fromClient` to `toClient:toPath`; else why not. */
  mayRestore(principal: Principal, target: { fromClient: string; toClient: string; toPath: string }): string | undefined;
  /** Undefined when the principal may see the images and files of `client`; else why not. */
  mayBrowse(principal: Principal, client: string): string | undefined;
}

export interface ApiDeps {
  s: Services;
  dispatcher: Dispatcher;
  secrets: SecretStore;
  auth: AuthApi;
  timezone: string;
  /** After documents were applied: schedules follow, the scheduler wakes. */
  onApplied(docs: unknown[]): Promise<void>;
  /** The next runs of schedules, for `get schedules`: a page. */
  schedules(filter: { policy?: string; client?: string; limit?: number; cursor?: string }): Promise<unknown>;
  /** The certificate authority and the agent port (enrollment, revocation, nodes: pki-routes.ts). */
  pki?: PkiDeps;
}

const READERS = ['operator', 'auditor'] as const satisfies readonly Role[];
const EVERYONE = ['operator', 'auditor', 'restore'] as const satisfies readonly Role[];

const name = z.string().min(1).max(255);
const id = z.string().min(1).max(64);
const limit = z.coerce.number().int().min(1).max(1000).optional();
const cursor = z.string().max(1024).optional();
const time = z.coerce.number().int().min(0).optional();
const kindParam = z.string().max(64).transform((v, ctx) => {
  const k = kindFromName(v);
  if (!k) {
    ctx.addIssue({ code: 'custom', message: `unknown kind ${JSON.stringify(v)}: use one of ${KINDS.join(', ')}` });
    return z.NEVER;
  }
  return k;
});
const documentList = z.array(z.record(z.string(), z.unknown())).min(1).max(10_000);
const jobState = z.enum(JOB_STATES);
const wideFlag = z.enum(['true', 'false', '1', '0']).optional();

const forbidden = (why: string) => new CofferError('FORBIDDEN', `Not allowed: ${why}`, { hint: 'Ask an administrator for a grant.' });

/** A restore operator sees the jobs it asked for; everyone else sees all. */
function maySeeJob(p: Principal, job: Job): boolean {
  return p.role !== 'restore' || job.requestedBy === p.user;
}

function jobView(job: Job) {
  return job;
}

async function waitForEnd(d: Dispatcher, s: Services, jobId: string, timeoutMs: number): Promise<Job> {
  const job = await s.catalog.jobs.get(jobId);
  if (!['queued', 'running'].includes(job.state)) return job;
  return new Promise<Job>((resolve) => {
    const timer = setTimeout(() => {
      d.bus.off(jobId, on);
      resolve(s.catalog.jobs.get(jobId));
    }, timeoutMs);
    const on = (m: BusMessage) => {
      if (m.type !== 'end' || ['queued', 'running'].includes(m.job.state)) return;
      clearTimeout(timer);
      d.bus.off(jobId, on);
      resolve(m.job);
    };
    d.bus.on(jobId, on);
  });
}

export function buildRoutes(deps: ApiDeps): RouteDef[] {
  const { s, dispatcher } = deps;
  const P = (ctx: RequestContext) => ctx.principal;

  return [
    // ---- session ------------------------------------------------------------------------------
    route({
      method: 'GET', url: '/api/v1/health', summary: 'Is the server up (no login needed)', tags: ['server'], rule: { public: true },
      handler: async () => ({ ok: true, version: VERSION }),
    }),
    route({
      method: 'POST', url: '/api/v1/login', summary: 'Log in: a session token for a user name and password', tags: ['session'], rule: { public: true },
      body: z.strictObject({ user: name, password: z.string().min(1).max(1024) }),
      handler: async (ctx) => deps.auth.login(ctx.body.user, ctx.body.password, ctx.source),
    }),
    route({
      method: 'POST', url: '/api/v1/logout', summary: 'End this session (revokes its token)', tags: ['session'], rule: { roles: EVERYONE }, audit: 'logout',
      handler: async (ctx) => {
        await deps.auth.logout(P(ctx));
        return { ok: true };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/whoami', summary: 'Who the token belongs to', tags: ['session'], rule: { roles: EVERYONE },
      handler: async (ctx) => ({ user: P(ctx).user, role: P(ctx).role, grants: P(ctx).grants, expires: P(ctx).expires ?? null }),
    }),
    route({
      method: 'GET', url: '/api/v1/status', summary: 'Jobs by state, clients and connected agents', tags: ['server'], rule: { roles: EVERYONE },
      handler: async () => ({ version: VERSION, jobs: await s.catalog.jobs.counts(), agents: s.agents.names(), running: dispatcher.runningJobs }),
    }),

    // ---- documents ----------------------------------------------------------------------------
    route({
      method: 'GET', url: '/api/v1/documents/:kind', summary: 'Documents of a kind (with table rows)', tags: ['documents'], rule: { roles: READERS },
      params: z.strictObject({ kind: kindParam }), query: z.strictObject({ wide: wideFlag }),
      handler: async (ctx) => {
        const kind = ctx.params.kind as Kind;
        const wide = ctx.query.wide === 'true' || ctx.query.wide === '1';
        const docs = await listDocuments(s.catalog, kind);
        return {
          kind,
          columns: tableColumns(kind, { wide }),
          items: docs,
          rows: docs.map((d) => (wide && d.kind === 'Policy' ? policyWideRow(d as PolicyDocument) : tableRow(d, { wide }))),
        };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/documents/:kind/:name', summary: 'One document, as applied', tags: ['documents'], rule: { roles: READERS },
      params: z.strictObject({ kind: kindParam, name }),
      handler: async (ctx) => {
        const doc = await getDocument(s.catalog, ctx.params.kind as Kind, ctx.params.name);
        if (!doc) throw new CofferError('NOT_FOUND', `No ${ctx.params.kind} named ${ctx.params.name}`, { hint: `List them with \`coffer get ${String(ctx.params.kind).toLowerCase()}\`.` });
        return doc;
      },
    }),
    route({
      method: 'GET', url: '/api/v1/documents/:kind/:name/history', summary: 'Every revision of a document', tags: ['documents'], rule: { roles: READERS },
      params: z.strictObject({ kind: kindParam, name }), query: z.strictObject({ limit, cursor }),
      handler: async (ctx) => {
        const k = ctx.params.kind as Kind;
        const m = k === 'Policy' ? s.catalog.policies : k === 'Lifecycle' ? s.catalog.lifecycles : k === 'StorageUnit' ? s.catalog.storageUnits : s.catalog.clients;
        return m.history(ctx.params.name, { limit: ctx.query.limit, cursor: ctx.query.cursor });
      },
    }),
    route({
      method: 'POST', url: '/api/v1/apply', summary: 'Apply documents (all or nothing); dryRun checks only', tags: ['documents'], rule: { roles: ['operator'] }, audit: 'documents.apply',
      body: z.strictObject({ documents: documentList, dryRun: z.boolean().optional() }),
      handler: async (ctx) => {
        ctx.auditDetails({ documents: ctx.body.documents.map((d) => `${String(d.kind)}/${String((d.metadata as { name?: unknown } | undefined)?.name)}`), dryRun: !!ctx.body.dryRun });
        const out = await applyDocuments(s, deps.secrets, { documents: ctx.body.documents, dryRun: ctx.body.dryRun, by: P(ctx).user, role: P(ctx).role }, { timezone: deps.timezone, onApplied: deps.onApplied });
        ctx.auditDetails({ changed: out.changes.filter((c) => c.action !== 'unchanged').map((c) => c.id) });
        return out;
      },
    }),
    route({
      method: 'POST', url: '/api/v1/diff', summary: 'What applying documents would change', tags: ['documents'], rule: { roles: READERS },
      body: z.strictObject({ documents: documentList }),
      handler: async (ctx) => applyDocuments(s, deps.secrets, { documents: ctx.body.documents, dryRun: true, by: P(ctx).user, role: 'admin' }, { timezone: deps.timezone }),
    }),
    route({
      method: 'DELETE', url: '/api/v1/documents/:kind/:name', summary: 'Delete a document (admin)', tags: ['documents'], rule: { roles: [] }, audit: 'documents.delete',
      params: z.strictObject({ kind: kindParam, name }),
      handler: async (ctx) => {
        const k = ctx.params.kind as Kind;
        ctx.auditTarget(`${k}/${ctx.params.name}`);
        await s.catalog.transaction(async (tx) => {
          if (k === 'Policy') await tx.policies.remove(ctx.params.name, { by: P(ctx).user });
          else if (k === 'Lifecycle') await tx.lifecycles.remove(ctx.params.name, { by: P(ctx).user });
          else if (k === 'StorageUnit') await tx.storageUnits.remove(ctx.params.name, { by: P(ctx).user });
          else await tx.clients.remove(ctx.params.name, { by: P(ctx).user });
        });
        // After the commit: onApplied() works on the catalog itself, and waiting for it inside the
        // transaction waited forever for the transaction's own lock. (The policy's schedules went
        // with it: ON DELETE CASCADE.)
        if (k === 'Policy') await deps.onApplied([]);
        return { deleted: `${k}/${ctx.params.name}` };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/clients', summary: 'Registered clients and whether their agent is connected', tags: ['clients'], rule: { roles: EVERYONE },
      query: z.strictObject({ limit, cursor }),
      handler: async (ctx) => {
        const page = await s.catalog.clients.list({ limit: ctx.query.limit, cursor: ctx.query.cursor });
        const items = page.items.filter((c) => deps.auth.mayBrowse(P(ctx), c.name) === undefined).map((c) => ({ ...c, connected: s.agents.has(c.name) }));
        return { items, ...(page.next ? { next: page.next } : {}) };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/schedules', summary: 'Schedules with their next runs', tags: ['schedules'], rule: { roles: READERS },
      query: z.strictObject({ policy: name.optional(), client: name.optional(), limit, cursor }),
      handler: async (ctx) => deps.schedules(ctx.query),
    }),

    // ---- jobs ---------------------------------------------------------------------------------
    route({
      method: 'POST', url: '/api/v1/backups', summary: 'Start a backup now through a policy', tags: ['jobs'], rule: { roles: ['operator'] }, audit: 'backup.start', status: 202,
      body: z.strictObject({ policy: name, client: name.optional(), schedule: name.optional(), level: z.enum(['full', 'incremental']).optional() }),
      handler: async (ctx) => {
        const b = ctx.body;
        ctx.auditTarget(`Policy/${b.policy}`);
        const policy = (await s.catalog.policies.get(b.policy)).spec as PolicyDocument['spec'];
        if (b.schedule && !policy.schedules.some((x) => x.name === b.schedule)) {
          throw new CofferError('NOT_FOUND', `Policy ${b.policy} has no schedule ${b.schedule}`, { hint: `Its schedules: ${policy.schedules.map((x) => x.name).join(', ')}.` });
        }
        if (b.client && !policy.clients.includes(b.client)) throw new CofferError('USAGE', `Policy ${b.policy} does not protect client ${b.client}`, { hint: `Its clients: ${policy.clients.join(', ')}.` });
        const clients = b.client ? [b.client] : policy.clients;
        const level = b.level ?? (b.schedule ? undefined : 'incremental');
        // The unit the backup writes to, so that the queue holds it to the unit's maxJobs.
        const unit = (await lifecycleOf(s.catalog, policy, b.schedule))?.copies[0]?.storageUnit;
        const jobs: Job[] = [];
        for (const client of clients) {
          jobs.push(await s.catalog.jobs.enqueue({ kind: 'backup', client, policy: b.policy, schedule: b.schedule, storageUnit: unit, priority: 10, spec: { ...(level ? { level } : {}), adHoc: true }, requestedBy: P(ctx).user }));
        }
        dispatcher.wake();
        return { jobs };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/jobs', summary: 'Jobs, newest first', tags: ['jobs'], rule: { roles: EVERYONE },
      query: z.strictObject({ state: z.union([jobState, z.array(jobState)]).optional(), kind: z.string().max(64).optional(), client: name.optional(), policy: name.optional(), limit, cursor }),
      handler: async (ctx) => {
        const q = ctx.query;
        const page = await s.catalog.jobs.list({ state: q.state, kind: q.kind, client: q.client, policy: q.policy, limit: q.limit, cursor: q.cursor });
        return { items: page.items.filter((j) => maySeeJob(P(ctx), j)).map(jobView), ...(page.next ? { next: page.next } : {}) };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/jobs/:id', summary: 'One job; with wait, answers when it has ended (or after waitMs)', tags: ['jobs'], rule: { roles: EVERYONE },
      params: z.strictObject({ id }), query: z.strictObject({ waitMs: z.coerce.number().int().min(0).max(600_000).optional() }),
      handler: async (ctx) => {
        const job = await s.catalog.jobs.get(ctx.params.id);
        if (!maySeeJob(P(ctx), job)) throw new CofferError('NOT_FOUND', `No job ${ctx.params.id}`);
        return ctx.query.waitMs ? waitForEnd(dispatcher, s, job.id, ctx.query.waitMs) : job;
      },
    }),
    route({
      method: 'GET', url: '/api/v1/jobs/:id/logs', summary: 'A job\'s log lines after a sequence number', tags: ['jobs'], rule: { roles: EVERYONE },
      params: z.strictObject({ id }), query: z.strictObject({ after: z.coerce.number().int().min(0).optional(), limit }),
      handler: async (ctx) => {
        const job = await s.catalog.jobs.get(ctx.params.id);
        if (!maySeeJob(P(ctx), job)) throw new CofferError('NOT_FOUND', `No job ${ctx.params.id}`);
        return { items: await s.catalog.jobs.logs(job.id, { afterSeq: ctx.query.after, limit: ctx.query.limit }), state: job.state };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/jobs/:id/events', summary: 'A job\'s progress, log lines and end as server-sent events', tags: ['jobs'], rule: { roles: EVERYONE },
      params: z.strictObject({ id }), query: z.strictObject({ after: z.coerce.number().int().min(0).optional() }),
      handler: async (ctx) => {
        const job = await s.catalog.jobs.get(ctx.params.id);
        if (!maySeeJob(P(ctx), job)) throw new CofferError('NOT_FOUND', `No job ${ctx.params.id}`);
        streamJobEvents(ctx, deps, job, Number(ctx.request.headers['last-event-id'] ?? ctx.query.after ?? 0) || 0);
        return undefined;
      },
    }),
    route({
      method: 'POST', url: '/api/v1/jobs/:id/cancel', summary: 'Cancel a queued or running job', tags: ['jobs'], rule: { roles: ['operator'] }, audit: 'job.cancel',
      params: z.strictObject({ id }),
      handler: async (ctx) => {
        ctx.auditTarget(`job/${ctx.params.id}`);
        return dispatcher.cancel(ctx.params.id);
      },
    }),
    route({
      method: 'POST', url: '/api/v1/jobs/:id/retry', summary: 'Run a failed, cancelled or interrupted job again (a new job)', tags: ['jobs'], rule: { roles: ['operator'] }, audit: 'job.retry', status: 202,
      params: z.strictObject({ id }),
      handler: async (ctx) => {
        ctx.auditTarget(`job/${ctx.params.id}`);
        const old = await s.catalog.jobs.get(ctx.params.id);
        if (!['failed', 'cancelled', 'interrupted'].includes(old.state)) throw new CofferError('CONFLICT', `Cannot retry job ${old.id}: it is ${old.state}`, { hint: 'Only failed, cancelled or interrupted jobs are retried.' });
        if (old.kind === 'restore' && P(ctx).role !== 'admin') throw forbidden('only an administrator or the restore operator who asked may run a restore again; start it anew');
        const { notAfter: _n, ...spec } = old.spec;
        const job = await s.catalog.jobs.enqueue({ kind: old.kind, client: old.client, policy: old.policy, schedule: old.schedule, storageUnit: old.storageUnit, priority: old.priority, spec: { ...spec, retryOf: old.id }, requestedBy: P(ctx).user });
        dispatcher.wake();
        return job;
      },
    }),

    // ---- images and restores ------------------------------------------------------------------
    route({
      method: 'GET', url: '/api/v1/images', summary: 'Images (backups), newest first', tags: ['images'], rule: { roles: EVERYONE },
      query: z.strictObject({ client: name.optional(), policy: name.optional(), state: z.enum(['pending', 'ok', 'partial', 'failed']).optional(), since: time, until: time, limit, cursor }),
      handler: async (ctx) => {
        const q = ctx.query;
        if (P(ctx).role === 'restore' && !q.client) throw new CofferError('USAGE', 'A restore operator lists images of one client at a time: give client', { hint: 'Add --client NAME.' });
        if (q.client) {
          const why = deps.auth.mayBrowse(P(ctx), q.client);
          if (why) throw forbidden(why);
        }
        const page = await s.catalog.images.list({ client: q.client, policy: q.policy, state: q.state, since: q.since, until: q.until, limit: q.limit, cursor: q.cursor });
        return page;
      },
    }),
    route({
      method: 'GET', url: '/api/v1/images/:id', summary: 'One image with its copies', tags: ['images'], rule: { roles: EVERYONE },
      params: z.strictObject({ id }),
      handler: async (ctx) => {
        const image = await s.catalog.images.get(ctx.params.id);
        const why = deps.auth.mayBrowse(P(ctx), image.client);
        if (why) throw forbidden(why);
        const copies = (await s.catalog.copies.list({ imageId: image.id, limit: 1000 })).items;
        // A copy on a unit marked unavailable says so: restores pass over it.
        const down = await unavailableUnits(s.catalog);
        return { ...image, copies: copies.map((c) => (down.has(c.storageUnit) ? { ...c, unitUnavailable: down.get(c.storageUnit)!.reason } : c)) };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/images/:id/browse', summary: 'The entries of a directory in an image', tags: ['images'], rule: { roles: EVERYONE },
      params: z.strictObject({ id }), query: z.strictObject({ path: z.string().max(4096).optional(), stream: z.string().max(64).optional(), after: z.string().max(4096).optional(), limit }),
      handler: async (ctx) => {
        const image = await s.catalog.images.get(ctx.params.id);
        const why = deps.auth.mayBrowse(P(ctx), image.client);
        if (why) throw forbidden(why);
        const copy = (await restorableCopies(s, image))[0];
        if (!copy) throw new CofferError('NOT_FOUND', `Cannot browse image ${image.id}: it has no readable copy`);
        const keys = Object.keys(copy.snapshots);
        const key = ctx.query.stream ?? keys[0]!;
        const snapshot = copy.snapshots[key];
        if (!snapshot) throw new CofferError('NOT_FOUND', `Image ${image.id} has no stream ${key}`, { hint: `Its streams: ${keys.join(', ')}.` });
        const r = await runOnAgent(s.node(copy.storageUnit), 'list', { storage: await s.storageAccess(copy.storageUnit), snapshot, path: ctx.query.path ?? '/', limit: ctx.query.limit ?? 1000, ...(ctx.query.after !== undefined ? { after: ctx.query.after } : {}) }, { signal: AbortSignal.timeout(120_000) });
        return { image: image.id, stream: key, streams: keys, path: ctx.query.path ?? '/', items: r.entries, ...(r.more ? { next: (r.entries as Array<{ name: string }>).at(-1)?.name } : {}) };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/find', summary: 'Files matching a name or path pattern in a client\'s images, newest first', tags: ['images'], rule: { roles: EVERYONE },
      query: z.strictObject({ pattern: z.string().min(1).max(4096), client: name, policy: name.optional(), since: time, images: z.coerce.number().int().min(1).max(1000).optional(), limit }),
      handler: async (ctx) => {
        const q = ctx.query;
        const why = deps.auth.mayBrowse(P(ctx), q.client);
        if (why) throw forbidden(why);
        const images = (await s.catalog.images.list({ client: q.client, policy: q.policy, since: q.since, state: 'ok', limit: q.images ?? 100 })).items;
        // One agent job per storage unit, over the snapshots of the images' best copies there.
        const byUnit = new Map<string, { snapshots: string[]; image: Map<string, string> }>();
        for (const image of images) {
          const copy = (await restorableCopies(s, image))[0];
          if (!copy) continue;
          const u = byUnit.get(copy.storageUnit) ?? { snapshots: [], image: new Map<string, string>() };
          for (const snap of Object.values(copy.snapshots)) {
            u.snapshots.push(snap);
            u.image.set(snap, image.id);
          }
          byUnit.set(copy.storageUnit, u);
        }
        const limit = q.limit ?? 1000;
        const items: Array<Record<string, unknown>> = [];
        const unreadable: unknown[] = [];
        let more = false;
        for (const [unit, u] of byUnit) {
          if (items.length >= limit) break;
          const r = await runOnAgent(s.node(unit), 'find', { storage: await s.storageAccess(unit), snapshots: u.snapshots, pattern: q.pattern, limit: limit - items.length }, { signal: AbortSignal.timeout(300_000) });
          for (const m of r.matches as Array<Record<string, unknown>>) items.push({ image: u.image.get(m.snapshot as string), ...m });
          unreadable.push(...(r.unreadable as unknown[]));
          if (r.more) more = true;
        }
        return { items, more, imagesSearched: images.length, unreadable };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/restores', summary: 'Restore an image onto a client (a job; dryRun shows what would happen)', tags: ['images'], rule: { roles: ['restore'] }, audit: 'restore.start', status: 202,
      body: z.strictObject({
        image: id, toClient: name, toPath: z.string().min(1).max(4096).startsWith('/'),
        include: z.array(z.string().min(1).max(4096)).max(10_000).optional(), exclude: z.array(z.string().min(1).max(4096)).max(10_000).optional(),
        overwrite: z.enum(['never', 'if-changed', 'always']).optional(), dryRun: z.boolean().optional(), force: z.boolean().optional(), confirmHost: z.string().max(255).optional(),
      }),
      handler: async (ctx) => {
        const b = ctx.body;
        const image = await s.catalog.images.get(b.image);
        ctx.auditTarget(`image/${image.id}`);
        ctx.auditDetails({ fromClient: image.client, toClient: b.toClient, toPath: b.toPath, dryRun: !!b.dryRun, force: !!b.force });
        const why = deps.auth.mayRestore(P(ctx), { fromClient: image.client, toClient: b.toClient, toPath: b.toPath });
        if (why) throw forbidden(why);
        if (!(await s.catalog.clients.find(b.toClient))) throw new CofferError('NOT_FOUND', `No client ${b.toClient} is registered`, { hint: 'See `coffer get clients`.' });
        const copy = await bestCopy(s, image, `restore image ${image.id}`);
        const job = await s.catalog.jobs.enqueue({ kind: 'restore', client: b.toClient, storageUnit: copy.storageUnit, priority: 20, maxAttempts: 1, spec: { ...b }, requestedBy: P(ctx).user });
        dispatcher.wake();
        return job;
      },
    }),
    route({
      method: 'DELETE', url: '/api/v1/images/:id', summary: 'Expire an image now: every copy not on hold (admin)', tags: ['images'], rule: { roles: [] }, audit: 'image.expire', status: 202,
      params: z.strictObject({ id }),
      handler: async (ctx) => {
        const image = await s.catalog.images.get(ctx.params.id);
        ctx.auditTarget(`image/${image.id}`);
        const copies = (await s.catalog.copies.list({ imageId: image.id, limit: 1000 })).items;
        const held = copies.filter((c) => c.hold);
        if (held.length) throw new CofferError('REFUSED', `Cannot expire image ${image.id}: ${held.length} cop${held.length === 1 ? 'y is' : 'ies are'} on legal hold (${held[0]!.hold})`, { hint: 'Release the hold first.' });
        // Not even an administrator deletes a copy in an immutable unit before its lock ends.
        await refuseLockedCopies(s, image.id, copies);
        const now = s.now();
        for (const c of copies) if (c.state !== 'expired') await s.catalog.copies.update(c.id, { expires: now });
        const job = await s.catalog.jobs.enqueue({ kind: 'expire', priority: 5, maxAttempts: 5, spec: { image: image.id }, requestedBy: P(ctx).user });
        dispatcher.wake();
        return { image: image.id, copies: copies.length, job };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/images/:id/hold', summary: 'Legal hold: keep every copy of an image whatever its retention (admin)', tags: ['images'], rule: { roles: [] }, audit: 'image.hold',
      params: z.strictObject({ id }), body: z.strictObject({ reason: z.string().trim().min(1).max(1024) }),
      handler: async (ctx) => {
        const image = await s.catalog.images.get(ctx.params.id);
        ctx.auditTarget(`image/${image.id}`);
        ctx.auditDetails({ reason: ctx.body.reason });
        const copies = (await s.catalog.copies.list({ imageId: image.id, state: ['ok', 'suspect'], limit: 1000 })).items;
        if (copies.length === 0) throw new CofferError('CONFLICT', `Cannot hold image ${image.id}: it has no copy left to keep`, { hint: 'Its copies have expired or are lost.' });
        const held = await s.catalog.transaction(async (tx) => {
          const out = [];
          for (const c of copies) out.push(await tx.copies.hold(c.id, ctx.body.reason));
          return out;
        });
        return { image: image.id, reason: ctx.body.reason, copies: held };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/images/:id/release', summary: 'Release a legal hold: the copies expire at their own time again (admin)', tags: ['images'], rule: { roles: [] }, audit: 'image.release',
      params: z.strictObject({ id }),
      handler: async (ctx) => {
        const image = await s.catalog.images.get(ctx.params.id);
        ctx.auditTarget(`image/${image.id}`);
        const copies = (await s.catalog.copies.list({ imageId: image.id, held: true, limit: 1000 })).items;
        if (copies.length === 0) throw new CofferError('CONFLICT', `Cannot release image ${image.id}: it is not on hold`);
        ctx.auditDetails({ reasons: [...new Set(copies.map((c) => c.hold))] });
        const released = await s.catalog.transaction(async (tx) => {
          const out = [];
          for (const c of copies) out.push(await tx.copies.release(c.id));
          return out;
        });
        // A copy whose time has passed goes at the next expiry run.
        return { image: image.id, copies: released };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/clones', summary: 'Clone the images a query finds to one or more storage units (one duplicate job per image, one read for all its new copies; dryRun lists them)', tags: ['images'], rule: { roles: ['operator'] }, audit: 'clone.start', status: 202,
      body: z.strictObject({
        where: z.strictObject({ client: name.optional(), policy: name.optional(), level: z.enum(['full', 'incremental']).optional(), since: z.number().int().min(0).optional(), until: z.number().int().min(0).optional() }),
        /** One unit, or several: each image gets a copy in the first `copies` of them that lack one. */
        to: z.union([name, z.array(name).min(1).max(MAX_CLONE_TARGETS)]),
        copies: z.number().int().min(1).max(MAX_CLONE_TARGETS).optional(),
        retention: z.string().max(32).optional(),
        limit: z.number().int().min(1).max(10_000).optional(),
        dryRun: z.boolean().optional(),
      }),
      handler: async (ctx) => {
        const b = ctx.body;
        const units = [...new Set(typeof b.to === 'string' ? [b.to] : b.to)];
        const copies = b.copies ?? units.length;
        ctx.auditTarget(units.map((u) => `StorageUnit/${u}`).join(','));
        ctx.auditDetails({ where: b.where, copies, dryRun: !!b.dryRun });
        if (copies > units.length) throw new CofferError('USAGE', `Cannot make ${copies} copies of each image on ${units.length} storage unit(s) (${units.join(', ')})`, { hint: 'List at least as many units as copies, or ask for fewer copies.' });
        for (const u of units) await s.catalog.storageUnits.get(u);
        if (b.retention !== undefined && b.retention !== 'infinite') parseDuration(b.retention);
        const picked: Array<{ image: string; from: string; targets: Array<{ to: string; retention: string }> }> = [];
        const skipped: Array<{ image: string; reason: string }> = [];
        const max = b.limit ?? 1000;
        for (let cursor: string | undefined; picked.length + skipped.length < max;) {
          const page = await s.catalog.images.list({ client: b.where.client, policy: b.where.policy, since: b.where.since, until: b.where.until, state: 'ok', limit: 100, cursor });
          for (const image of page.items) {
            if (picked.length + skipped.length >= max) break;
            if (b.where.level && image.level !== b.where.level) continue;
            const held = await restorableCopies(s, image);
            const lacking = units.filter((u) => !held.some((c) => c.storageUnit === u));
            if (lacking.length === 0) {
              skipped.push({ image: image.id, reason: `already has a copy in ${units.join(', ')}` });
              continue;
            }
            const from = held[0];
            if (!from) {
              skipped.push({ image: image.id, reason: 'no readable copy' });
              continue;
            }
            // The retention of a copy in each unit: as given, else as the image's lifecycle says.
            const policy = b.retention === undefined ? (await s.catalog.policies.find(image.policy))?.spec as PolicyDocument['spec'] | undefined : undefined;
            const lifecycle = policy ? await lifecycleOf(s.catalog, policy, image.schedule) : undefined;
            const targets: Array<{ to: string; retention: string }> = [];
            const noRetention: string[] = [];
            for (const to of lacking) {
              if (targets.length === copies) break;
              const retention = b.retention ?? lifecycle?.copies.find((c) => c.storageUnit === to)?.retention;
              if (retention === undefined) noRetention.push(to);
              else targets.push({ to, retention });
            }
            if (targets.length === 0) {
              skipped.push({ image: image.id, reason: `its lifecycle has no copy in ${noRetention.join(', ')}: give a retention` });
              continue;
            }
            picked.push({ image: image.id, from: from.storageUnit, targets });
          }
          if (!page.next) break;
          cursor = page.next;
        }
        const jobs: Job[] = [];
        if (!b.dryRun) {
          for (const p of picked) {
            const image = await s.catalog.images.get(p.image);
            jobs.push(await s.catalog.jobs.enqueue({ kind: 'duplicate', client: image.client, policy: image.policy, storageUnit: p.targets[0]!.to, priority: 0, maxAttempts: 5, spec: { image: p.image, from: p.from, targets: p.targets }, requestedBy: P(ctx).user }));
          }
          dispatcher.wake();
        }
        return { to: units, copies, dryRun: !!b.dryRun, images: picked, skipped, jobs };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/expire', summary: 'Run the expiry job now (admin)', tags: ['images'], rule: { roles: [] }, audit: 'expire.start', status: 202,
      handler: async (ctx) => {
        const job = await s.catalog.jobs.enqueue({ kind: 'expire', priority: 5, maxAttempts: 5, spec: {}, requestedBy: P(ctx).user });
        dispatcher.wake();
        return job;
      },
    }),
    route({
      method: 'POST', url: '/api/v1/lock-extend', summary: 'Extend the Object Locks of immutable storage units to their copies\' expiry now (all units, or one)', tags: ['server'], rule: { roles: ['operator'] }, audit: 'locks.extend', status: 202,
      body: z.strictObject({ unit: z.string().min(1).max(255).optional() }),
      handler: async (ctx) => {
        if (ctx.body.unit !== undefined) {
          const unit = await s.catalog.storageUnits.get(ctx.body.unit);
          if (minimumLockOf(unit) === undefined) throw new CofferError('USAGE', `Cannot extend locks in storage unit ${unit.name}: it is not immutable`, { hint: 'Only units with immutable: true (S3 with Object Lock) have locks.' });
          ctx.auditTarget(`StorageUnit/${unit.name}`);
        }
        const job = await s.catalog.jobs.enqueue({ kind: 'lock-extend', priority: 5, maxAttempts: 3, spec: ctx.body.unit !== undefined ? { unit: ctx.body.unit } : {}, requestedBy: P(ctx).user });
        dispatcher.wake();
        return job;
      },
    }),
    route({
      method: 'POST', url: '/api/v1/catalog/reconcile', summary: 'Compare the catalog with every storage unit (apply: import unknown snapshots, admin)', tags: ['server'], rule: { roles: READERS }, audit: 'catalog.reconcile', status: 202,
      body: z.strictObject({ apply: z.boolean().optional() }),
      handler: async (ctx) => {
        if (ctx.body.apply && P(ctx).role !== 'admin') throw forbidden('importing snapshots into the catalog (--apply) needs the admin role');
        const job = await s.catalog.jobs.enqueue({ kind: 'reconcile', priority: 30, maxAttempts: 1, spec: { apply: !!ctx.body.apply }, requestedBy: P(ctx).user });
        dispatcher.wake();
        return job;
      },
    }),

    // ---- storage units: availability (routes-units.ts) ----------------------------------------
    ...unitRoutes(s),

    // ---- users, tokens, audit -----------------------------------------------------------------
    route({
      method: 'GET', url: '/api/v1/users', summary: 'Users, without their password hashes (admin, operator, auditor)', tags: ['users'], rule: { roles: READERS },
      query: z.strictObject({ limit, cursor }),
      handler: async (ctx) => {
        const page = await s.catalog.users.list({ limit: ctx.query.limit, cursor: ctx.query.cursor });
        return { items: page.items.map(({ passwordHash: _h, ...u }) => u), ...(page.next ? { next: page.next } : {}) };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/users', summary: 'Create a user (admin)', tags: ['users'], rule: { roles: [] }, audit: 'user.create', status: 201,
      body: z.strictObject({ name: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'lower-case letters, digits, ".", "_" and "-"'), role: z.enum(ROLES), password: z.string().min(1).max(1024), grants: z.record(z.string(), z.unknown()).optional() }),
      handler: async (ctx) => {
        ctx.auditTarget(`user/${ctx.body.name}`);
        ctx.auditDetails({ role: ctx.body.role });
        const u = await s.catalog.users.create({ name: ctx.body.name, role: ctx.body.role, passwordHash: await deps.auth.hashPassword(ctx.body.password), ...(ctx.body.grants ? { grants: { ...parseGrants(ctx.body.grants) } } : {}) });
        const { passwordHash: _h, ...rest } = u;
        return rest;
      },
    }),
    route({
      method: 'PATCH', url: '/api/v1/users/:name', summary: 'Change a user (admin; anyone may change their own password)', tags: ['users'], rule: { roles: EVERYONE }, audit: 'user.change',
      params: z.strictObject({ name }),
      body: z.strictObject({ role: z.enum(ROLES).optional(), password: z.string().min(1).max(1024).optional(), grants: z.record(z.string(), z.unknown()).optional(), disabled: z.boolean().optional() }),
      handler: async (ctx) => {
        const p = P(ctx);
        ctx.auditTarget(`user/${ctx.params.name}`);
        ctx.auditDetails({ fields: Object.keys(ctx.body) });
        if (p.role !== 'admin' && (ctx.params.name !== p.user || Object.keys(ctx.body).some((k) => k !== 'password'))) throw forbidden('only an administrator changes other users, roles, grants or accounts');
        const change = {
          ...(ctx.body.role ? { role: ctx.body.role } : {}),
          ...(ctx.body.grants ? { grants: { ...parseGrants(ctx.body.grants) } } : {}),
          ...(ctx.body.disabled !== undefined ? { disabled: ctx.body.disabled } : {}),
          ...(ctx.body.password ? { passwordHash: await deps.auth.hashPassword(ctx.body.password) } : {}),
        };
        const u = await s.catalog.users.update(ctx.params.name, change);
        const { passwordHash: _h, ...rest } = u;
        return rest;
      },
    }),
    route({
      method: 'DELETE', url: '/api/v1/users/:name', summary: 'Delete a user and their tokens (admin)', tags: ['users'], rule: { roles: [] }, audit: 'user.delete',
      params: z.strictObject({ name }),
      handler: async (ctx) => {
        ctx.auditTarget(`user/${ctx.params.name}`);
        if (ctx.params.name === P(ctx).user) throw new CofferError('REFUSED', 'Cannot delete yourself', { hint: 'Another administrator can.' });
        await s.catalog.users.remove(ctx.params.name);
        return { deleted: ctx.params.name };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/tokens', summary: 'Your tokens (an admin sees everyone\'s)', tags: ['users'], rule: { roles: EVERYONE },
      query: z.strictObject({ user: name.optional(), limit, cursor }),
      handler: async (ctx) => {
        const p = P(ctx);
        const user = p.role === 'admin' ? ctx.query.user : p.user;
        const page = await s.catalog.tokens.list({ user, limit: ctx.query.limit, cursor: ctx.query.cursor });
        return { items: page.items.map(tokenInfo), ...(page.next ? { next: page.next } : {}) };
      },
    }),
    route({
      method: 'POST', url: '/api/v1/tokens', summary: 'Create an API token (shown once)', tags: ['users'], rule: { roles: EVERYONE }, status: 201,
      body: z.strictObject({ name: z.string().min(1).max(255), role: z.enum(ROLES), expires: z.string().max(32).optional() }),
      handler: async (ctx) => deps.auth.createToken(P(ctx), { name: ctx.body.name, role: ctx.body.role, expiresIn: ctx.body.expires }, ctx.source),
    }),
    route({
      method: 'DELETE', url: '/api/v1/tokens/:id', summary: 'Revoke a token (yours; an admin: any)', tags: ['users'], rule: { roles: EVERYONE },
      params: z.strictObject({ id }),
      handler: async (ctx) => {
        await deps.auth.revokeToken(P(ctx), ctx.params.id, ctx.source);
        return { revoked: ctx.params.id };
      },
    }),
    route({
      method: 'GET', url: '/api/v1/audit', summary: 'The audit log, newest first (admin, auditor)', tags: ['users'], rule: { roles: ['auditor'] },
      query: z.strictObject({ actor: z.string().max(255).optional(), action: z.string().max(64).optional(), target: z.string().max(1024).optional(), outcome: z.enum(['ok', 'denied', 'failed']).optional(), since: time, until: time, limit, cursor }),
      handler: async (ctx) => s.catalog.audit.list(ctx.query),
    }),

    // ---- verification and alerts (verify-routes.ts) -------------------------------------------
    ...verifyRoutes(deps),
    // ---- restore tests and the compliance report (compliance-routes.ts) -----------------------
    ...complianceRoutes(deps),
    // ---- enrollment, revocation, storage nodes (pki-routes.ts) --------------------------------
    ...pkiRoutes(deps),
  ];
}

/** Server-sent events of one job: its log from `after`, then live progress and log lines, then its end. */
function streamJobEvents(ctx: RequestContext, deps: ApiDeps, job: Job, after: number): void {
  const { s, dispatcher } = deps;
  const raw = ctx.reply.raw;
  ctx.reply.hijack();
  raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  let closed = false;
  let seq = after;
  const send = (event: string, data: unknown, id?: number) => {
    if (closed) return;
    raw.write(`${id !== undefined ? `id: ${id}\n` : ''}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  const finish = () => {
    if (closed) return;
    closed = true;
    dispatcher.bus.off(job.id, onBus);
    clearInterval(keepAlive);
    raw.end();
  };
  let draining = Promise.resolve();
  const drainLogs = () => {
    draining = draining.then(async () => {
      for (;;) {
        const lines = await s.catalog.jobs.logs(job.id, { afterSeq: seq, limit: 500 });
        for (const l of lines) send('log', l, l.seq);
        if (lines.length) seq = lines.at(-1)!.seq;
        if (lines.length < 500) break;
      }
    }).catch(() => finish());
    return draining;
  };
  const onBus = (m: BusMessage) => {
    if (m.type === 'event' && m.event.type === 'progress') send('progress', m.event);
    else if (m.type === 'event' && m.event.type !== 'result') void drainLogs();
    else if (m.type === 'end' && !['queued', 'running'].includes(m.job.state)) {
      void drainLogs().then(() => {
        send('end', m.job);
        finish();
      });
    }
  };
  const keepAlive = setInterval(() => !closed && raw.write(': keep-alive\n\n'), 15_000);
  raw.on('close', finish);
  dispatcher.bus.on(job.id, onBus);
  void drainLogs().then(async () => {
    if (job.progress) send('progress', job.progress);
    const now = await s.catalog.jobs.get(job.id);
    if (!['queued', 'running'].includes(now.state)) {
      await drainLogs();
      send('end', now);
      finish();
    }
  });
}
