// Helpers for the API tests (api-roles, api-fuzz, api-auth): the route table as routes.ts builds
// it, the routes a running fastify app actually registered, users of every role and tokens for
// them minted straight in the catalog (no scrypt per request), and the error shape check.
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { newTokenSecret, tokenHash, type Role } from '../src/server/auth.ts';
import type { Rule } from '../src/server/http.ts';
import { buildRoutes, type ApiDeps } from '../src/server/routes.ts';
import type { TestServer } from '../src/server/test-server.ts';

export type Json = Record<string, any>;

export interface TableRoute {
  method: string;
  url: string;
  rule: Rule;
}

/**
 * The route table (routes.ts) without a server: buildRoutes() only closes over its dependencies
 * in the handlers, so its methods, URLs and rules can be read with none.
 */
export function routeTable(): TableRoute[] {
  return buildRoutes({} as ApiDeps).map((r) => ({ method: r.method, url: r.url, rule: r.rule }));
}

/**
 * Every (method, url) the app registered, read from fastify's own route tree (printRoutes), so a
 * route added any other way than through the table shows up too. HEAD routes fastify adds for
 * GET routes are included.
 */
export function registeredRoutes(app: FastifyInstance): Array<{ method: string; url: string }> {
  const text = app.printRoutes({ commonPrefix: false });
  const out: Array<{ method: string; url: string }> = [];
  const stack: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^([│ ]*)[├└]── (\S*)(?: \(([A-Z, ]+)\))?/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    const path = (stack[depth - 1] ?? '') + m[2]!;
    stack[depth] = path;
    for (const method of (m[3] ?? '').split(',').map((s) => s.trim()).filter(Boolean)) out.push({ method, url: path });
  }
  assert.ok(out.length > 0, `cannot read the routes from printRoutes():\n${text}`);
  return out;
}

export const ROLE_USERS: Record<Exclude<Role, 'admin'>, string> & { admin: string } = {
  admin: 'admin',
  operator: 'op1',
  restore: 'rest1',
  auditor: 'aud1',
};

export const RESTORE_DEST = '/tmp/coffer-restores';

/** Creates one user per role besides admin, through the API; the restore user gets grants on this host's client. */
export async function createRoleUsers(ts: TestServer): Promise<void> {
  const client = ts.server.clientName;
  for (const role of ['operator', 'restore', 'auditor'] as const) {
    const body: Json = { name: ROLE_USERS[role], role, password: `password of ${role} 123` };
    if (role === 'restore') body.grants = { clients: [client], destinations: [{ client, paths: [RESTORE_DEST] }] };
    const r = await ts.api<Json>('POST', '/api/v1/users', { body });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }
}

/** A fresh session token for a user, made in the catalog as login() makes one (without scrypt). */
export async function mintToken(ts: TestServer, user: string, options: { expires?: number; role?: Role } = {}): Promise<{ token: string; id: string }> {
  const secret = newTokenSecret();
  const row = await ts.server.catalog.tokens.create({
    name: 'test session', user, hash: tokenHash(secret), kind: 'session', expires: options.expires ?? Date.now() + 3_600_000,
    ...(options.role ? { role: options.role } : {}),
  });
  return { token: secret, id: row.id };
}

/** Asserts the one error shape: `{ error: { code, message, hint?, details? } }` and nothing else. */
export function assertErrorShape(body: unknown, context: string): asserts body is { error: { code: string; message: string; hint?: string; details?: Json } } {
  assert.ok(body && typeof body === 'object' && !Array.isArray(body), `${context}: the body is not an object: ${JSON.stringify(body)}`);
  assert.deepEqual(Object.keys(body), ['error'], `${context}: ${JSON.stringify(body)}`);
  const e = (body as Json).error;
  assert.equal(typeof e.code, 'string', `${context}: no error.code: ${JSON.stringify(body)}`);
  assert.equal(typeof e.message, 'string', `${context}: no error.message: ${JSON.stringify(body)}`);
  assert.ok(e.message.length > 0, `${context}: empty message`);
  for (const k of Object.keys(e)) assert.ok(['code', 'message', 'hint', 'details'].includes(k), `${context}: unexpected error.${k}: ${JSON.stringify(body)}`);
  if (e.hint !== undefined) assert.equal(typeof e.hint, 'string', context);
  if (e.details !== undefined) assert.ok(e.details && typeof e.details === 'object', context);
}

/** Parses a JSON body or returns undefined (empty or not JSON). */
export function jsonOf(payload: string): unknown {
  if (!payload) return undefined;
  try {
    return JSON.parse(payload);
  } catch {
    return undefined;
  }
}
