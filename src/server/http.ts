// The REST API's frame: fastify with zod schemas on every route, the OpenAPI document, one error
// shape, and access control that denies by default. Every route comes from one table (routes.ts)
// that gives its rule; a route registered any other way has no rule and is refused for everyone.
// Denied attempts and every change are written to the audit log.

import fastifySwagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, isResponseSerializationError, jsonSchemaTransform, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import type { z } from 'zod';
import { CofferError, toCofferError } from '../core/errors.ts';
import { VERSION } from '../core/version.ts';
import type { Catalog } from '../catalog/catalog.ts';

import type { Principal, Role } from './auth.ts';

export type { Principal, Role };

/**
 * Who may call a route. `public`: anyone (login, health, the API description). Otherwise the
 * roles listed (admin always may: it is allowed everything), and then `check`, which may refuse
 * with a reason after the request is parsed (a restore operator asking for another client).
 */
export type Rule = { public: true } | { roles: readonly Role[] };

export interface RequestContext<P = unknown, Q = unknown, B = unknown> {
  params: P;
  query: Q;
  body: B;
  principal: Principal;
  source: string;
  request: FastifyRequest;
  reply: FastifyReply;
  /** Adds details to the audit record of this request. */
  auditDetails(details: Record<string, unknown>): void;
  /** The audit target of this request (default: the URL path). */
  auditTarget(target: string): void;
}

export interface RouteDef<P extends z.ZodType = z.ZodType, Q extends z.ZodType = z.ZodType, B extends z.ZodType = z.ZodType> {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  url: string;
  summary: string;
  tags: string[];
  rule: Rule;
  /** The audit action of a change (e.g. 'policy.apply'); reads are not audited unless given. */
  audit?: string;
  params?: P;
  query?: Q;
  body?: B;
  /** The answer; an object (sent as JSON) or undefined when the handler used reply itself. */
  handler(ctx: RequestContext<z.infer<P>, z.infer<Q>, z.infer<B>>): Promise<unknown>;
  /** Status of a success (default 200). */
  status?: number;
}

/** Defines a route with its types inferred from its schemas. */
export function route<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType>(def: RouteDef<P, Q, B>): RouteDef {
  return def as unknown as RouteDef;
}

export interface HttpOptions {
  catalog: Catalog;
  /** Turns an Authorization header into a principal, or throws UNAUTHENTICATED. */
  authenticate(header: string | undefined, source: string): Promise<Principal>;
  routes: readonly RouteDef[];
  logger?: boolean | object;
  /** Largest request body (default 8 MiB: a directory of policy documents). */
  bodyLimit?: number;
  /** Serve HTTPS with this key and certificate chain (the API beyond loopback: server/ca.ts). */
  https?: { key: string; cert: string };
}

declare module 'fastify' {
  interface FastifyContextConfig {
    rule?: Rule;
    audit?: string;
  }
  interface FastifyRequest {
    principal?: Principal;
    auditTarget?: string;
    auditDetails?: Record<string, unknown>;
  }
}

/** The error body of every failure: `{ error: { code, message, hint?, details? } }`. */
export function errorBody(e: CofferError): { error: Record<string, unknown> } {
  return { error: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), ...(e.details ? { details: e.details } : {}) } };
}

/** Retry-After (seconds) on a RATE_LIMITED answer that says how long to wait (details.retryAfterS). */
function retryAfter(reply: FastifyReply, e: CofferError): void {
  const s = e.details?.retryAfterS;
  if (e.code === 'RATE_LIMITED' && typeof s === 'number' && Number.isFinite(s)) reply.header('retry-after', String(Math.max(1, Math.ceil(s))));
}

function describeValidation(err: { validation?: Array<{ instancePath?: string; message?: string; params?: { issue?: { path?: PropertyKey[]; message?: string } } }>; validationContext?: string }): string {
  const where = err.validationContext ?? 'request';
  const issues = (err.validation ?? []).slice(0, 5).map((v) => {
    const path = v.params?.issue?.path?.map(String).join('.') ?? (v.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.');
    return `${where}${path ? `.${path}` : ''}: ${v.params?.issue?.message ?? v.message ?? 'invalid'}`;
  });
  return issues.join('; ') || `${where}: invalid`;
}

export async function buildHttp(options: HttpOptions): Promise<FastifyInstance> {
  const app = Fastify({
    ...(options.https ? { https: { key: options.https.key, cert: options.https.cert, minVersion: 'TLSv1.3' } } : {}),
    logger: options.logger ?? false,
    bodyLimit: options.bodyLimit ?? 8 << 20,
    // Behind nothing by default: the source address is the peer's.
    trustProxy: false,
    ajv: undefined,
    // Path parameters up to 255 characters (a name), percent-encoded: find-my-way's default of 100
    // would refuse a long but valid name before its schema could say anything.
    routerOptions: { maxParamLength: 4096 },
    // What fastify refuses before routing (a URL it cannot decode, a parameter over that length)
    // answers in the one error shape too.
    frameworkErrors: (error, _request, reply) => {
      const status = (error as { statusCode?: number }).statusCode ?? 400;
      const r = reply as unknown as FastifyReply;
      void r.code(status >= 400 && status < 500 ? status : 400).send(errorBody(new CofferError('USAGE', `Invalid request: ${error.message}`, { hint: 'Percent-encode path parameters (encodeURIComponent); see /openapi.json for the routes.' })));
    },
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Coffer server API', version: VERSION, description: 'Backup server: policies, schedules, jobs, images, restores, users and audit. Authenticate with `Authorization: Bearer <token>` (POST /api/v1/login, or an API token).' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });

  const audit = async (request: FastifyRequest, outcome: 'ok' | 'denied' | 'failed', action: string, details?: Record<string, unknown>) => {
    try {
      await options.catalog.audit.append({
        actor: request.principal?.user ?? 'anonymous',
        source: request.ip,
        action,
        target: request.auditTarget ?? request.url.split('?')[0]!,
        outcome,
        details: { method: request.method, ...request.auditDetails, ...details },
      });
    } catch (e) {
      request.log.error({ err: e }, 'cannot write the audit log');
    }
  };

  app.setErrorHandler(async (error: unknown, request, reply) => {
    let e: CofferError;
    if (hasZodFastifySchemaValidationErrors(error)) {
      e = new CofferError('USAGE', `Invalid request: ${describeValidation(error as Parameters<typeof describeValidation>[0])}`, { hint: 'See /openapi.json for what this route takes.' });
    } else if (isResponseSerializationError(error)) {
      e = new CofferError('INTERNAL', 'The server built an answer that does not match its schema', { cause: error });
    } else if (error instanceof CofferError) {
      e = error;
    } else {
      const fe = error as { statusCode?: number; code?: string; message?: string };
      // fastify's own 4xx (a body that is not JSON, too large, a bad content type, ...).
      if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
        const code = fe.statusCode === 413 ? 'USAGE' : fe.statusCode === 415 ? 'USAGE' : 'USAGE';
        e = new CofferError(code, `Invalid request: ${fe.message ?? 'bad request'}`, { hint: fe.statusCode === 413 ? 'Send less at once.' : 'See /openapi.json for what this route takes.' });
        reply.code(fe.statusCode);
        return errorBody(e);
      }
      e = toCofferError(error);
    }
    const status = e.httpStatus;
    if (status >= 500) request.log.error({ err: error, url: request.url }, e.message);
    const action = request.routeOptions.config?.audit;
    // A refusal by a safety rule (REFUSED, also 403: a legal hold, an immutable copy) is recorded
    // as a failed attempt; a role's denial (FORBIDDEN) was recorded as denied already.
    if (action && status !== 401 && e.code !== 'FORBIDDEN') await audit(request, 'failed', action, { error: e.code });
    retryAfter(reply, e);
    reply.code(status);
    return errorBody(e);
  });

  app.setNotFoundHandler(async (request, reply) => {
    reply.code(404);
    return errorBody(new CofferError('NOT_FOUND', `No such API route: ${request.method} ${request.url.split('?')[0]}`, { hint: 'See /openapi.json for the routes.' }));
  });

  // Deny by default: a route carries its rule in its config, or nobody may call it.
  app.addHook('onRequest', async (request, reply) => {
    const rule = request.routeOptions.config?.rule;
    if (request.is404) return;
    if (rule && 'public' in rule) return;
    const source = request.ip;
    let principal: Principal;
    try {
      principal = await options.authenticate(request.headers.authorization, source);
    } catch (e) {
      const err = toCofferError(e);
      if (err.code !== 'UNAUTHENTICATED' && err.code !== 'RATE_LIMITED') throw err;
      await audit(request, 'denied', 'auth', { reason: err.message });
      retryAfter(reply, err);
      reply.code(err.httpStatus);
      return reply.send(errorBody(err));
    }
    request.principal = principal;
    if (!rule) {
      await audit(request, 'denied', 'route.unruled');
      reply.code(403);
      return reply.send(errorBody(new CofferError('FORBIDDEN', `Not allowed: ${request.method} ${request.routeOptions.url} has no access rule, so nobody may call it`, { hint: 'This is a bug in the server: report it.' })));
    }
    if (principal.role !== 'admin' && !rule.roles.includes(principal.role)) {
      await audit(request, 'denied', request.routeOptions.config?.audit ?? 'read', { role: principal.role });
      reply.code(403);
      return reply.send(errorBody(new CofferError('FORBIDDEN', `Not allowed: the ${principal.role} role may not ${request.method} ${request.routeOptions.url}`, { hint: `This needs the ${[...new Set(['admin', ...rule.roles])].join(' or ')} role; ask an administrator.` })));
    }
  });

  for (const def of options.routes) {
    app.route({
      method: def.method,
      url: def.url,
      config: { rule: def.rule, audit: def.audit },
      schema: {
        summary: def.summary,
        tags: def.tags,
        ...(def.params ? { params: def.params } : {}),
        ...(def.query ? { querystring: def.query } : {}),
        ...(def.body ? { body: def.body } : {}),
        ...('public' in def.rule ? { security: [] } : {}),
      },
      handler: async (request, reply) => {
        const ctx: RequestContext = {
          params: request.params,
          query: request.query,
          body: request.body,
          // Public routes have no principal; their handlers do not use it.
          principal: request.principal as Principal,
          source: request.ip,
          request,
          reply,
          auditDetails: (d) => void (request.auditDetails = { ...request.auditDetails, ...d }),
          auditTarget: (t) => void (request.auditTarget = t),
        };
        try {
          const out = await def.handler(ctx);
          if (def.audit) await audit(request, 'ok', def.audit);
          if (reply.sent || out === undefined) return reply;
          reply.code(def.status ?? 200);
          return out;
        } catch (e) {
          const err = toCofferError(e);
          if (def.audit && err.code === 'FORBIDDEN') {
            await audit(request, 'denied', def.audit, { reason: err.message });
            reply.code(403);
            return errorBody(err);
          }
          throw err;
        }
      },
    });
  }

  app.get('/openapi.json', { config: { rule: { public: true } }, schema: { hide: true } }, async () => app.swagger());
  return app as unknown as FastifyInstance;
}
