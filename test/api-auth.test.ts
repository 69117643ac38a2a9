// Authentication through the REST API: failed logins are rate limited (429 RATE_LIMITED with
// details.retryAfterS and a Retry-After header), the audit log records login failures and denied
// requests without a password, token or token hash in it, expired, revoked and logged-out tokens
// and tokens of disabled or deleted users get 401, and GET /openapi.json is a valid OpenAPI 3
// document with every route of the table under its method.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tokenHash } from '../src/server/auth.ts';
import { startTestServer, TEST_ADMIN_PASSWORD } from '../src/server/test-server.ts';
import { assertErrorShape, createRoleUsers, mintToken, ROLE_USERS, routeTable, type Json } from './api.ts';

test('failed logins through the API: 401 five times, then 429 RATE_LIMITED with retryAfterS and Retry-After, even with the right password', async (t) => {
  const ts = await startTestServer(t);
  const app = ts.server.app;
  const login = (user: string, password: string, remoteAddress: string) =>
    app.inject({ method: 'POST', url: '/api/v1/login', payload: { user, password }, remoteAddress });
  for (let i = 0; i < 5; i++) {
    const r = await login('admin', `wrong password ${i}`, '192.0.2.10');
    assert.equal(r.statusCode, 401, r.payload);
    assertErrorShape(r.json(), 'failed login');
    assert.equal(r.json().error.code, 'UNAUTHENTICATED');
    assert.equal(r.headers['retry-after'], undefined);
  }
  const limited = await login('admin', TEST_ADMIN_PASSWORD, '192.0.2.10');
  assert.equal(limited.statusCode, 429, limited.payload);
  const body = limited.json();
  assertErrorShape(body, 'rate limited login');
  assert.equal(body.error.code, 'RATE_LIMITED');
  const retryAfterS = body.error.details?.retryAfterS;
  assert.ok(Number.isInteger(retryAfterS) && retryAfterS >= 1 && retryAfterS <= 30, JSON.stringify(body));
  assert.equal(limited.headers['retry-after'], String(retryAfterS), 'Retry-After says the same as details.retryAfterS');
  assert.match(body.error.message, new RegExp(`try again in ${retryAfterS} s`));
  // The user name is locked from another address too; another user from a third address is not.
  const elsewhere = await login('admin', TEST_ADMIN_PASSWORD, '198.51.100.7');
  assert.equal(elsewhere.statusCode, 429, elsewhere.payload);
  const other = await login('nobody-here', 'some password', '203.0.113.5');
  assert.equal(other.statusCode, 401, other.payload);
  const denied = (await ts.server.catalog.audit.list({ action: 'login', outcome: 'denied', limit: 10 })).items;
  assert.equal(denied.length, 2);
  assert.deepEqual(denied.map((e) => e.details?.reason), ['rate limited', 'rate limited']);
});

test('the audit log records failed logins, denied requests and changes with no password, token or token hash in it', async (t) => {
  const ts = await startTestServer(t);
  const app = ts.server.app;
  await createRoleUsers(ts);
  const secrets: string[] = [];
  const secret = (s: string) => (secrets.push(s), s);

  // Failed logins: a wrong password, an unknown user, a password typed as JSON garbage.
  for (const [user, password] of [['admin', secret('canary-password-one-1234')], ['no-such-user', secret('canary-password-two-5678')], [ROLE_USERS.operator, secret('canary-password-three-90')]]) {
    const r = await app.inject({ method: 'POST', url: '/api/v1/login', payload: { user, password }, remoteAddress: '192.0.2.20' });
    assert.equal(r.statusCode, 401, r.payload);
  }
  // Requests with tokens that are not valid: unknown, malformed, expired.
  const unknown = secret(`cof_${'A'.repeat(43)}`);
  const expired = await mintToken(ts, 'admin', { expires: Date.now() - 1000 });
  secret(expired.token);
  for (const header of [`Bearer ${unknown}`, `Bearer ${secret('not-a-token-canary-xyz')}`, `Bearer ${expired.token}`, `Basic ${secret(Buffer.from('admin:canary-basic-password').toString('base64'))}`]) {
    const r = await app.inject({ method: 'GET', url: '/api/v1/jobs', headers: { authorization: header } });
    assert.equal(r.statusCode, 401, r.payload);
  }
  // Denied requests that carry secrets in their bodies, with valid tokens of the wrong role.
  const operator = await mintToken(ts, ROLE_USERS.operator);
  const auditor = await mintToken(ts, ROLE_USERS.auditor);
  secret(operator.token);
  secret(auditor.token);
  const denials = [
    { token: operator.token, actor: ROLE_USERS.operator, action: 'user.create', method: 'POST', url: '/api/v1/users', payload: { name: 'sneaky', role: 'admin', password: secret('canary-password-four-abc') } },
    { token: auditor.token, actor: ROLE_USERS.auditor, action: 'user.change', method: 'PATCH', url: '/api/v1/users/admin', payload: { password: secret('canary-password-five-def') } },
    { token: operator.token, actor: ROLE_USERS.operator, action: 'user.change', method: 'PATCH', url: '/api/v1/users/admin', payload: { password: secret('canary-password-six-ghij') } },
    { token: auditor.token, actor: ROLE_USERS.auditor, action: 'token.create', method: 'POST', url: '/api/v1/tokens', payload: { name: 'x', role: 'admin' } },
  ] as const;
  for (const d of denials) {
    const r = await app.inject({ method: d.method, url: d.url, payload: d.payload, headers: { authorization: `Bearer ${d.token}` } });
    assert.equal(r.statusCode, 403, `${d.method} ${d.url}: ${r.payload}`);
  }
  // Changes that handle secrets: a user created and its password changed, an API token made.
  const created = await ts.api<Json>('POST', '/api/v1/users', { body: { name: 'newbie', role: 'auditor', password: secret('canary-password-seven-kl') } });
  assert.equal(created.status, 201);
  const changed = await ts.api<Json>('PATCH', '/api/v1/users/newbie', { body: { password: secret('canary-password-eight-mn') } });
  assert.equal(changed.status, 200);
  const token = await ts.api<Json>('POST', '/api/v1/tokens', { body: { name: 'ci', role: 'operator' } });
  assert.equal(token.status, 201);
  secret(token.body.token);
  secret(ts.adminToken);

  const entries = (await ts.server.catalog.audit.list({ limit: 1000 })).items;
  const text = JSON.stringify(entries);
  for (const s of secrets) {
    assert.ok(!text.includes(s), `the audit log holds a secret: ${s}`);
    if (s.startsWith('cof_')) assert.ok(!text.includes(tokenHash(s)), `the audit log holds a token hash: ${s}`);
  }
  // ... and yet says what happened.
  const failedLogins = entries.filter((e) => e.action === 'login' && e.outcome === 'failed');
  assert.deepEqual(failedLogins.map((e) => e.actor).sort(), ['admin', 'no-such-user', ROLE_USERS.operator].sort());
  assert.ok(failedLogins.every((e) => e.source === '192.0.2.20'));
  assert.equal(entries.filter((e) => e.action === 'auth' && e.outcome === 'denied').length, 4);
  const denied = entries.filter((e) => e.outcome === 'denied' && e.action !== 'auth');
  for (const d of denials) assert.ok(denied.some((e) => e.action === d.action && e.actor === d.actor), `no denied entry for ${d.method} ${d.url}: ${JSON.stringify(denied)}`);
  assert.ok(entries.some((e) => e.action === 'user.create' && e.outcome === 'ok' && e.target === 'user/newbie'));
  assert.ok(entries.some((e) => e.action === 'user.change' && e.outcome === 'ok' && e.target === 'user/newbie'));
});

test('expired, revoked and logged-out tokens, and tokens of disabled or deleted users, get 401 UNAUTHENTICATED', async (t) => {
  const ts = await startTestServer(t);
  const who = async (token: string) => ts.api<Json>('GET', '/api/v1/whoami', { token });
  const refused = async (token: string, why: RegExp) => {
    const r = await who(token);
    assert.equal(r.status, 401, JSON.stringify(r.body));
    assertErrorShape(r.body, 'refused token');
    assert.equal(r.body.error.code, 'UNAUTHENTICATED');
    assert.match(r.body.error.message, why);
  };
  await createRoleUsers(ts);

  const expired = await mintToken(ts, ROLE_USERS.operator, { expires: Date.now() - 1 });
  await refused(expired.token, /expired/);

  // An API token revoked through the API, by its owner and by an admin.
  const opSession = await ts.login(ROLE_USERS.operator, 'password of operator 123');
  assert.equal((await who(opSession)).status, 200);
  const made = await ts.api<Json>('POST', '/api/v1/tokens', { token: opSession, body: { name: 'script', role: 'auditor', expires: '30d' } });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  assert.equal((await who(made.body.token)).body.role, 'auditor');
  const revoked = await ts.api<Json>('DELETE', `/api/v1/tokens/${made.body.id}`, { token: opSession });
  assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
  await refused(made.body.token, /revoked/);
  const second = await ts.api<Json>('POST', '/api/v1/tokens', { token: opSession, body: { name: 'script2', role: 'operator' } });
  assert.equal((await ts.api<Json>('DELETE', `/api/v1/tokens/${second.body.id}`)).status, 200);
  await refused(second.body.token, /revoked/);

  // Logged out: the session is over.
  assert.equal((await ts.api<Json>('POST', '/api/v1/logout', { token: opSession })).status, 200);
  await refused(opSession, /revoked/);

  // A disabled user's tokens stop working, and work again when enabled.
  const aud = await ts.login(ROLE_USERS.auditor, 'password of auditor 123');
  assert.equal((await ts.api<Json>('PATCH', `/api/v1/users/${ROLE_USERS.auditor}`, { body: { disabled: true } })).status, 200);
  await refused(aud, /disabled/);
  assert.equal((await ts.api<Json>('PATCH', `/api/v1/users/${ROLE_USERS.auditor}`, { body: { disabled: false } })).status, 200);
  assert.equal((await who(aud)).status, 200);

  // A deleted user's tokens are gone with it.
  const rest = await ts.login(ROLE_USERS.restore, 'password of restore 123');
  assert.equal((await ts.api<Json>('DELETE', `/api/v1/users/${ROLE_USERS.restore}`)).status, 200);
  const r = await who(rest);
  assert.equal(r.status, 401, JSON.stringify(r.body));

  // A token whose role is more than its user now has.
  const narrowed = await mintToken(ts, ROLE_USERS.auditor, { role: 'operator' });
  await refused(narrowed.token, /more than the user/);
});

test('GET /openapi.json is a valid OpenAPI 3 document: every route of the table under its method, its path parameters declared', async (t) => {
  const ts = await startTestServer(t);
  const r = await ts.server.app.inject({ method: 'GET', url: '/openapi.json' });
  assert.equal(r.statusCode, 200);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const doc = r.json() as Json;
  assert.match(doc.openapi, /^3\.(0|1)\.\d+$/);
  assert.equal(typeof doc.info?.title, 'string');
  assert.equal(typeof doc.info?.version, 'string');
  assert.ok(doc.paths && typeof doc.paths === 'object');
  const schemes = Object.keys(doc.components?.securitySchemes ?? {});
  const checkSecurity = (security: unknown, where: string) => {
    assert.ok(Array.isArray(security), `${where}: security is not a list`);
    for (const req of security as Json[]) for (const name of Object.keys(req)) assert.ok(schemes.includes(name), `${where}: unknown security scheme ${name}`);
  };
  if (doc.security) checkSecurity(doc.security, 'document');

  const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
  const operationIds = new Set<string>();
  for (const [path, item] of Object.entries(doc.paths as Record<string, Json>)) {
    assert.match(path, /^\//, `path ${path} does not start with /`);
    assert.doesNotMatch(path, /:\w/, `path ${path} uses :param, not {param}`);
    const templated = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!).sort();
    for (const [method, op] of Object.entries(item)) {
      const where = `${method.toUpperCase()} ${path}`;
      assert.ok(METHODS.includes(method), `${where}: not an HTTP method`);
      assert.ok(op.responses && Object.keys(op.responses).length > 0, `${where}: no responses`);
      for (const [code, resp] of Object.entries(op.responses as Record<string, Json>)) {
        assert.match(code, /^([1-5]\d\d|[1-5]XX|default)$/, `${where}: response ${code}`);
        assert.equal(typeof resp.description, 'string', `${where}: response ${code} has no description`);
      }
      if (op.operationId !== undefined) {
        assert.ok(!operationIds.has(op.operationId), `${where}: operationId ${op.operationId} used twice`);
        operationIds.add(op.operationId);
      }
      const params = (op.parameters ?? []) as Json[];
      const seen = new Set<string>();
      for (const p of params) {
        assert.ok(['path', 'query', 'header', 'cookie'].includes(p.in), `${where}: parameter ${p.name} in ${p.in}`);
        assert.equal(typeof p.name, 'string', `${where}: a parameter without a name`);
        assert.ok(!seen.has(`${p.in}:${p.name}`), `${where}: parameter ${p.name} twice`);
        seen.add(`${p.in}:${p.name}`);
        assert.ok(p.schema && typeof p.schema === 'object', `${where}: parameter ${p.name} has no schema`);
        if (p.in === 'path') assert.equal(p.required, true, `${where}: path parameter ${p.name} is not required`);
      }
      assert.deepEqual(params.filter((p) => p.in === 'path').map((p) => p.name).sort(), templated, `${where}: path parameters and the template differ`);
      if (op.requestBody) {
        assert.ok(op.requestBody.content && Object.keys(op.requestBody.content).length > 0, `${where}: a request body without content`);
        for (const [type, media] of Object.entries(op.requestBody.content as Record<string, Json>)) {
          assert.match(type, /^[\w.+-]+\/[\w.+-]+$/, `${where}: media type ${type}`);
          assert.ok(media.schema && typeof media.schema === 'object', `${where}: ${type} without a schema`);
        }
      }
      if (op.security !== undefined) checkSecurity(op.security, where);
    }
  }
  // Every route of the table, with its method; public ones need no token.
  for (const route of routeTable()) {
    const path = route.url.replace(/:(\w+)/g, '{$1}');
    const op = doc.paths[path]?.[route.method.toLowerCase()];
    assert.ok(op, `${route.method} ${route.url} is not in /openapi.json`);
    if ('public' in route.rule) assert.deepEqual(op.security, [], `${route.method} ${route.url} is public but asks for a token`);
    else assert.notDeepEqual(op.security, [], `${route.method} ${route.url} needs a token but says it does not`);
  }
  const documented = Object.values(doc.paths as Record<string, Json>).reduce((n, item) => n + Object.keys(item).length, 0);
  assert.equal(documented, routeTable().length, 'operations in /openapi.json that are not in the table');
});
