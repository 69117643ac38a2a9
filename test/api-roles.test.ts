// The route × role matrix of the REST API. The policy is written down here a second time, from
// docs/server.md (API: roles), independently of the rules in src/server/routes.ts; the test
// compares the two, so a rule changed by mistake fails, and every route the app registered is
// called as anonymous and as each role through fastify.inject: anonymous gets 401 except on
// public routes, a role the rule does not allow gets 403 FORBIDDEN and a denied audit entry, an
// allowed role never meets the frame's 401/403 and never a 5xx. A route without a rule, however
// it was added, is refused even to an admin (deny by default).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { authenticate, type Role } from '../src/server/auth.ts';
import { buildHttp } from '../src/server/http.ts';
import { startTestServer, type TestServer } from '../src/server/test-server.ts';
import { assertErrorShape, createRoleUsers, jsonOf, mintToken, registeredRoutes, ROLE_USERS, routeTable, type Json } from './api.ts';

const ROLES = ['admin', 'operator', 'restore', 'auditor'] as const satisfies readonly Role[];

// docs/server.md: admin everything; operator runs, cancels and retries jobs and edits schedules
// (and reads what an auditor reads); restore browses and restores the clients granted to it;
// auditor reads everything and the audit log and changes nothing. Expiring or deleting images,
// deleting documents, changing retention and managing users: admin only. Everyone logs out,
// sees who they are, changes their own password and manages their own API tokens.
const ALL = ['admin', 'operator', 'restore', 'auditor'] as const;
const READ = ['admin', 'operator', 'auditor'] as const;
const RUN = ['admin', 'operator'] as const;
const ADMIN = ['admin'] as const;
const EXPECTED: Record<string, 'public' | readonly Role[]> = {
  'GET /api/v1/health': 'public',
  'POST /api/v1/login': 'public',
  'GET /openapi.json': 'public', // the frame's own route, not in the table
  'POST /api/v1/logout': ALL,
  'GET /api/v1/whoami': ALL,
  'GET /api/v1/status': ALL,
  'GET /api/v1/documents/:kind': READ,
  'GET /api/v1/documents/:kind/:name': READ,
  'GET /api/v1/documents/:kind/:name/history': READ,
  'POST /api/v1/apply': RUN, // the operator changes schedules only (checked per document)
  'POST /api/v1/diff': READ,
  'DELETE /api/v1/documents/:kind/:name': ADMIN,
  'GET /api/v1/clients': ALL, // a restore operator sees its granted clients only
  'GET /api/v1/schedules': READ,
  'POST /api/v1/backups': RUN,
  'GET /api/v1/jobs': ALL, // a restore operator sees its own jobs only
  'GET /api/v1/jobs/:id': ALL,
  'GET /api/v1/jobs/:id/logs': ALL,
  'GET /api/v1/jobs/:id/events': ALL,
  'POST /api/v1/jobs/:id/cancel': RUN,
  'POST /api/v1/jobs/:id/retry': RUN,
  'GET /api/v1/images': ALL, // restore: granted clients only
  'GET /api/v1/images/:id': ALL,
  'GET /api/v1/images/:id/browse': ALL,
  'GET /api/v1/find': ALL, // restore: granted clients only
  'POST /api/v1/restores': ['admin', 'restore'],
  'DELETE /api/v1/images/:id': ADMIN,
  'POST /api/v1/expire': ADMIN,
  'POST /api/v1/lock-extend': RUN, // extends to the copies' own expiry: nothing is lost, nothing can be shortened
  'POST /api/v1/catalog/reconcile': READ, // a check; importing (apply) is admin only, in the handler
  'POST /api/v1/clones': RUN,
  'POST /api/v1/images/:id/hold': ADMIN,
  'POST /api/v1/images/:id/release': ADMIN,
  'GET /api/v1/units': READ,
  'POST /api/v1/units/:name/unavailable': ADMIN,
  'POST /api/v1/units/:name/available': ADMIN,
  'POST /api/v1/restore-tests': RUN,
  'GET /api/v1/reports/compliance': READ,
  'GET /api/v1/users': READ, // an auditor reads everything (no password hashes)
  'POST /api/v1/users': ADMIN,
  'PATCH /api/v1/users/:name': ALL, // others than admin: their own password only
  'DELETE /api/v1/users/:name': ADMIN,
  'GET /api/v1/tokens': ALL,
  'POST /api/v1/tokens': ALL,
  'DELETE /api/v1/tokens/:id': ALL,
  'GET /api/v1/audit': ['admin', 'auditor'],
  'POST /api/v1/verify': RUN, // a job that reads storage, and repairs what it finds damaged
  'GET /api/v1/alerts': READ,
  'POST /api/v1/alerts/:id/ack': RUN,
  // Remote agents and storage nodes: enrollment tokens and revocation are the admin's; the list
  // of nodes is read like the catalog.
  'POST /api/v1/clients/:name/enrollment': ADMIN,
  'POST /api/v1/nodes/:name/enrollment': ADMIN,
  'POST /api/v1/clients/:name/revoke': ADMIN,
  'POST /api/v1/nodes/:name/revoke': ADMIN,
  'GET /api/v1/nodes': READ,
};

const FRAME_ROUTES = ['GET /openapi.json'];

function expectedFor(method: string, url: string): 'public' | readonly Role[] | undefined {
  return EXPECTED[`${method === 'HEAD' ? 'GET' : method} ${url}`];
}

test('every route in the table has an entry in the expectation table, and every entry a route', () => {
  const table = routeTable().map((r) => `${r.method} ${r.url}`);
  assert.equal(new Set(table).size, table.length, 'a route is in the table twice');
  const missing = table.filter((k) => !(k in EXPECTED));
  assert.deepEqual(missing, [], `routes without an expected rule in test/api-roles.test.ts (add them, from docs/server.md): ${missing.join(', ')}`);
  const stale = Object.keys(EXPECTED).filter((k) => !table.includes(k) && !FRAME_ROUTES.includes(k));
  assert.deepEqual(stale, [], 'expectations for routes that are no longer in the table');
});

test('the rules of the route table are the policy of docs/server.md', () => {
  const wrong: string[] = [];
  for (const r of routeTable()) {
    const expected = EXPECTED[`${r.method} ${r.url}`];
    const actual = 'public' in r.rule ? 'public' : ['admin', ...r.rule.roles];
    const norm = (v: 'public' | readonly string[] | undefined) => (v === 'public' || v === undefined ? v : [...new Set(v)].sort().join(','));
    if (norm(actual) !== norm(expected)) wrong.push(`${r.method} ${r.url}: the table allows ${norm(actual)}, the policy ${norm(expected)}`);
  }
  assert.deepEqual(wrong, []);
});

async function server(t: { after(fn: () => unknown): void }): Promise<TestServer> {
  const ts = await startTestServer(t);
  await createRoleUsers(ts);
  return ts;
}

test('the app serves exactly the routes of the table (and /openapi.json)', async (t) => {
  const ts = await startTestServer(t);
  const registered = registeredRoutes(ts.server.app).filter((r) => r.method !== 'HEAD').map((r) => `${r.method} ${r.url}`).sort();
  const table = [...routeTable().map((r) => `${r.method} ${r.url}`), ...FRAME_ROUTES].sort();
  assert.deepEqual(registered, table);
});

test('route × role matrix: 401 for anonymous, 403 FORBIDDEN and an audit entry for a role not allowed, never the frame\'s refusal or a 5xx for an allowed one', async (t) => {
  const ts = await server(t);
  const app = ts.server.app;
  const catalog = ts.server.catalog;
  const routes = registeredRoutes(app);
  assert.ok(routes.length >= routeTable().length + 1);
  const problems: string[] = [];
  let calls = 0;
  for (const r of routes) {
    const expected = expectedFor(r.method, r.url);
    if (expected === undefined) {
      problems.push(`${r.method} ${r.url}: registered but not in the expectation table`);
      continue;
    }
    for (const caller of ['anonymous', ...ROLES] as const) {
      const user = caller === 'anonymous' ? undefined : ROLE_USERS[caller];
      // Path parameters: a kind that exists, the caller's own name (PATCH /users/:name is for
      // oneself), an id that does not exist. No body: an allowed call stops at validation.
      const url = r.url.replace(':kind', 'policies').replace(':name', user ?? 'nobody').replace(/:[a-z]+/gi, 'no-such-id');
      // A fresh session for each call: POST /logout ends the one it is called with.
      const headers: Record<string, string> = {};
      if (user) headers.authorization = `Bearer ${(await mintToken(ts, user)).token}`;
      const lastDenied = user ? (await catalog.audit.list({ actor: user, outcome: 'denied', limit: 1 })).items[0]?.id ?? 0 : 0;
      const res = await app.inject({ method: r.method as 'GET', url, headers });
      calls++;
      const body = jsonOf(res.payload) as Json | undefined;
      const what = `${caller} ${r.method} ${url} → ${res.statusCode} ${res.payload.slice(0, 300)}`;
      if (res.statusCode >= 500) {
        problems.push(`${what}: a server error`);
        continue;
      }
      if (r.method !== 'HEAD' && res.statusCode >= 400) assertErrorShape(body, what);
      if (expected === 'public') {
        if (res.statusCode === 401 || res.statusCode === 403) problems.push(`${what}: a public route refused`);
        continue;
      }
      if (caller === 'anonymous') {
        if (res.statusCode !== 401 || (r.method !== 'HEAD' && body?.error?.code !== 'UNAUTHENTICATED')) problems.push(`${what}: expected 401 UNAUTHENTICATED`);
        continue;
      }
      const allowed = expected.includes(caller);
      if (allowed) {
        if (res.statusCode === 401 || body?.error?.code === 'FORBIDDEN') problems.push(`${what}: the role ${caller} is allowed, but was refused`);
        continue;
      }
      if (res.statusCode !== 403 || (r.method !== 'HEAD' && body?.error?.code !== 'FORBIDDEN')) {
        problems.push(`${what}: expected 403 FORBIDDEN for the role ${caller}`);
        continue;
      }
      const denied = (await catalog.audit.list({ actor: user, outcome: 'denied', limit: 1 })).items[0];
      if (!denied || denied.id <= lastDenied) problems.push(`${what}: no denied entry in the audit log`);
      else if (denied.target !== url || (denied.details as Json | undefined)?.method !== r.method || (denied.details as Json | undefined)?.role !== caller) {
        problems.push(`${what}: the denied audit entry does not say what was refused: ${JSON.stringify(denied)}`);
      }
    }
  }
  assert.deepEqual(problems, [], `${problems.length} of ${calls} calls wrong:\n${problems.join('\n')}`);
  t.diagnostic(`${calls} calls over ${routes.length} routes`);
});

test('deny by default: routes added to the app without a rule are refused, to an admin too, and audited', async (t) => {
  const ts = await startTestServer(t);
  const catalog = ts.server.catalog;
  // A second app from the same frame, on the same catalog and tokens, with routes registered
  // around the table as a careless change might: plain, with an empty config, inside a plugin.
  const app = await buildHttp({ catalog, authenticate: (h) => authenticate(catalog, h), routes: [] });
  let reached = 0;
  app.get('/api/v1/raw', async () => ({ reached: ++reached }));
  app.route({ method: 'POST', url: '/api/v1/raw-config', config: {}, handler: async () => ({ reached: ++reached }) });
  await app.register(async (child) => {
    child.delete('/api/v1/raw-plugin/:id', async () => ({ reached: ++reached }));
  });
  await app.ready();
  t.after(() => app.close());
  const admin = { authorization: `Bearer ${ts.adminToken}` };
  for (const [method, url] of [['GET', '/api/v1/raw'], ['HEAD', '/api/v1/raw'], ['POST', '/api/v1/raw-config'], ['DELETE', '/api/v1/raw-plugin/x']] as const) {
    const res = await app.inject({ method, url, headers: admin });
    assert.equal(res.statusCode, 403, `${method} ${url} as admin: ${res.payload}`);
    if (method !== 'HEAD') {
      assert.equal(res.json().error.code, 'FORBIDDEN');
      assert.match(res.json().error.message, /no access rule/);
    }
    const anon = await app.inject({ method, url });
    assert.equal(anon.statusCode, 401, `${method} ${url} anonymous`);
    const denied = (await catalog.audit.list({ actor: 'admin', outcome: 'denied', action: 'route.unruled', limit: 1 })).items[0];
    assert.equal(denied?.target, url);
    assert.equal((denied?.details as Json).method, method);
  }
  assert.equal(reached, 0, 'a handler without a rule ran');
});
