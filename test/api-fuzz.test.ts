// Fuzzing the REST API from its own description: every operation of GET /openapi.json is called
// as an admin with requests drawn by fast-check from its parameter and body schemas, valid ones
// and broken ones (wrong types, missing and extra fields, huge and odd strings, extreme numbers,
// nested junk, bodies that are not JSON, other content types, path parameters with slashes, dots
// and percent-encoding, odd query strings). Whatever comes in: never a 5xx, every 4xx in the one
// error shape, and a validation error names the field that is wrong. Valid requests do real work
// on a real server (backups of a small tree, restores into a temporary directory, expiring the
// image, deleting users and documents); the server must be sane afterwards. Seeded: the same
// requests every run (COFFER_FUZZ_SEED, COFFER_FUZZ_RUNS change that).
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { startTestServer } from '../src/server/test-server.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { assertErrorShape, jsonOf, mintToken, type Json } from './api.ts';
import { deepJson, garbageFor, garbageParam, validValue, type Hints, type JsonSchema } from './json-schema-arbitrary.ts';

const SEED = Number(process.env.COFFER_FUZZ_SEED ?? 0xc0ffe);
const RUNS = Number(process.env.COFFER_FUZZ_RUNS ?? 40);

interface Param { name: string; in: 'path' | 'query'; required: boolean; schema: JsonSchema }
interface Op { method: string; path: string; params: Param[]; body?: JsonSchema }
interface Req {
  how: string;
  path: string;
  query: string;
  headers: Record<string, string>;
  payload?: string;
  /** The one field this request broke: a validation error must name it. */
  field?: string;
}

function operations(doc: Json): Op[] {
  const ops: Op[] = [];
  for (const [path, item] of Object.entries(doc.paths as Record<string, Json>)) {
    for (const [method, op] of Object.entries(item)) {
      ops.push({
        method: method.toUpperCase(),
        path,
        params: ((op.parameters ?? []) as Param[]).filter((p) => p.in === 'path' || p.in === 'query'),
        body: op.requestBody?.content?.['application/json']?.schema,
      });
    }
  }
  return ops;
}

/** Percent-encodes the UTF-8 bytes of s (lone surrogates become U+FFFD), leaving unreserved characters. */
function pct(s: string): string {
  return [...Buffer.from(s, 'utf8')].map((b) => (/[A-Za-z0-9_.~-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');
}

// Raw path segments, not encoded: slashes, dots, percent-encodings good and bad.
const RAW_SEGMENTS = ['a/b', '..', '.', '%2F', 'a%2Fb', '%2e%2e', '%2E%2E%2Fetc', '%', '%ZZ', '%00', '%C0%AF', '%E2%80%AE', '%F0%9F%98%80', 'é', ';x=1', 'a?b=c', 'a#b', '%20', '~'];

const IDENT = fc.stringMatching(/^[a-zA-Z_][a-zA-Z0-9_]{0,15}$/);

function requestFor(op: Op, hints: Hints, token: () => string): fc.Arbitrary<Req> {
  const pathParams = op.params.filter((p) => p.in === 'path');
  const queryParams = op.params.filter((p) => p.in === 'query');
  const queryNames = new Set(queryParams.map((p) => p.name));

  const validPath = fc.record(Object.fromEntries(pathParams.map((p) => [p.name, validValue(p.schema, hints, p.name).map((v) => pct(String(v)))]))) as fc.Arbitrary<Record<string, string>>;
  const validQuery = fc.record(Object.fromEntries(queryParams.map((p) => [p.name, validValue(p.schema, hints, p.name)])), { requiredKeys: queryParams.filter((p) => p.required).map((p) => p.name) });
  const body = op.body ? validValue(op.body, hints) : fc.constant(undefined);

  const fill = (segments: Record<string, string>) => op.path.replace(/\{(\w+)\}/g, (_, n: string) => segments[n] ?? 'x');
  const queryString = (q: Record<string, unknown>) => Object.entries(q).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => `${pct(k)}=${pct(String(x))}`)).join('&');
  const json = (v: unknown) => (v === undefined ? {} : { payload: JSON.stringify(v), headers: { 'content-type': 'application/json' } });
  const make = (how: string, segments: Record<string, string>, q: string, b: { payload?: string; headers?: Record<string, string> }, field?: string): Req => ({
    how, path: fill(segments), query: q, headers: { ...b.headers }, ...(b.payload !== undefined ? { payload: b.payload } : {}), ...(field !== undefined ? { field } : {}),
  });

  const variants: Array<fc.WeightedArbitrary<Req>> = [];
  variants.push({ weight: 4, arbitrary: fc.tuple(validPath, validQuery, body).map(([s, q, b]) => make('valid', s, queryString(q), json(b))) });

  if (op.body) {
    const s = op.body;
    const props = s.properties ?? {};
    const bodyMutations: Array<fc.Arbitrary<{ how: string; value: unknown; field?: string }>> = [
      garbageFor(s).map((value) => ({ how: 'body of another type', value })),
      fc.tuple(body, IDENT.filter((k) => !(k in props))).map(([b, k]) => ({ how: `extra field ${k}`, value: { ...(b as Json), [k]: 1 }, field: k })),
    ];
    for (const k of Object.keys(props)) {
      bodyMutations.push(fc.tuple(body, garbageFor(props[k]!)).map(([b, g]) => ({ how: `garbage in ${k}`, value: { ...(b as Json), [k]: g }, field: k })));
    }
    for (const k of s.required ?? []) {
      bodyMutations.push(body.map((b) => {
        const { [k]: _gone, ...rest } = b as Json;
        return { how: `no ${k}`, value: rest, field: k };
      }));
    }
    variants.push({ weight: 5, arbitrary: fc.tuple(validPath, validQuery, fc.oneof(...bodyMutations)).map(([p, q, m]) => make(m.how, p, queryString(q), json(m.value), m.field)) });
  }

  // Bodies that are not JSON, or not said to be, or JSON that is hostile to parsers.
  const rawBody = fc.oneof(
    fc.constantFrom('{', '{"a":', 'nul', '\u0000', '[1,]', '{"a":1}{"b":2}', "{'a':1}", '{"__proto__":{"admin":true}}', '{"constructor":{"prototype":{"x":1}}}', '', ' ', '\ufeff{}', '1e99999')
      .map((payload) => ({ how: `raw JSON ${JSON.stringify(payload.slice(0, 20))}`, payload, headers: { 'content-type': 'application/json' } })),
    fc.constantFrom(2_000, 20_000).map((d) => ({ how: `JSON nested ${d} deep`, payload: deepJson(d), headers: { 'content-type': 'application/json' } })),
    fc.tuple(fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml', 'application/json; charset=latin1', 'application/jsonx', 'APPLICATION/JSON', 'application/json;;', '*/*', ''), body)
      .map(([type, b]) => ({ how: `content-type ${JSON.stringify(type)}`, payload: JSON.stringify(b ?? {}), headers: { 'content-type': type } })),
    fc.string({ unit: 'binary', maxLength: 64 }).map((payload) => ({ how: 'random bytes as JSON', payload, headers: { 'content-type': 'application/json' } })),
  );
  if (op.method !== 'GET') {
    variants.push({ weight: 2, arbitrary: fc.tuple(validPath, validQuery, rawBody).map(([p, q, r]) => make(r.how, p, queryString(q), r)) });
  }

  if (queryParams.length) {
    const queryMutation = fc.oneof(
      fc.tuple(fc.constantFrom(...queryParams), garbageParam()).map(([p, v]) => ({ how: `query ${p.name}=${v.slice(0, 20)}`, name: p.name, raw: `${pct(p.name)}=${pct(v)}` })),
      fc.tuple(fc.constantFrom(...queryParams), fc.array(garbageParam(), { minLength: 2, maxLength: 4 })).map(([p, vs]) => ({ how: `query ${p.name} repeated`, name: p.name, raw: vs.map((v) => `${pct(p.name)}=${pct(v)}`).join('&') })),
      IDENT.filter((k) => !queryNames.has(k)).map((k) => ({ how: `unknown query ${k}`, name: k, raw: `${k}=1` })),
    );
    variants.push({
      weight: 3,
      arbitrary: fc.tuple(validPath, validQuery, queryMutation, body).map(([p, q, m, b]) => {
        const { [m.name]: _replaced, ...rest } = q as Json;
        const valid = queryString(rest);
        // A repeated parameter that takes a list is not wrong.
        const field = m.how.endsWith('repeated') && queryParams.find((x) => x.name === m.name)?.schema.anyOf ? undefined : m.name;
        return make(m.how, p, valid ? `${valid}&${m.raw}` : m.raw, json(b), field);
      }),
    });
  }
  // Query strings no parser expects.
  variants.push({ weight: 1, arbitrary: fc.tuple(validPath, fc.constantFrom('%', '&&&', '=x', 'a[b]=c', '__proto__[admin]=1', 'constructor[prototype][x]=1', 'a=%ZZ', `${'q'.repeat(9000)}=1`, 'limit=1&limit=2'), body).map(([p, q, b]) => make(`query string ${q.slice(0, 20)}`, p, q, json(b))) });

  if (pathParams.length) {
    const segment = fc.oneof(
      fc.constantFrom(...RAW_SEGMENTS).map((raw) => ({ raw, bad: true })),
      garbageParam().map((v) => ({ raw: pct(v), bad: true })),
    );
    variants.push({
      weight: 3,
      arbitrary: fc.tuple(validPath, validQuery, fc.constantFrom(...pathParams), segment, body).map(([p, q, param, seg, b]) =>
        make(`path ${param.name}=${seg.raw.slice(0, 20)}`, { ...p, [param.name]: seg.raw }, queryString(q), json(b), seg.raw.includes('/') ? undefined : param.name)),
    });
  }

  return fc.oneof(...variants).map((r) => ({ ...r, headers: { ...r.headers, authorization: `Bearer ${token()}` } }));
}

test('fuzzing every operation of /openapi.json as admin: no 5xx, the error shape on every 4xx, validation errors name the field', async (t) => {
  const started = Date.now();
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  const restoreRoot = join(dir, 'restores');
  await mkdir(join(src, 'sub'), { recursive: true });
  await mkdir(restoreRoot);
  await writeFile(join(src, 'a.txt'), 'hello\n');
  await writeFile(join(src, 'sub', 'b.bin'), Buffer.alloc(70_000, 7));

  const ts = await startTestServer(t);
  const app = ts.server.app;
  const client = ts.server.clientName;
  const documents = [
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'keep' }, spec: { copies: [{ operation: 'backup', storageUnit: 'default', retention: '30d' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'fuzz' }, spec: { clients: [client], selections: [{ paths: [src] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'keep' } },
  ];
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  const backup = await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'fuzz', level: 'full' } });
  assert.equal(backup.status, 202, JSON.stringify(backup.body));
  const job = await ts.waitJob(backup.body.jobs[0].id);
  const logs = await ts.api<Json>('GET', `/api/v1/jobs/${job.id}/logs`);
  // Also without the native addon: that is one notice, not a warning per file.
  assert.equal(job.state, 'succeeded', JSON.stringify(logs.body));
  const image = (await ts.api<Json>('GET', '/api/v1/images', { query: { client } })).body.items[0];
  assert.ok(image?.id);
  const victim = await ts.api<Json>('POST', '/api/v1/users', { body: { name: 'fuzz-victim', role: 'restore', password: 'fuzz victim password' } });
  assert.equal(victim.status, 201);

  // Known good values by name, so valid requests reach the handlers' real work.
  const hints: Hints = {
    kind: ['policies', 'policy', 'storageunits', 'lifecycles', 'clients', 'Policy', 'StorageUnit'],
    name: ['fuzz', 'keep', 'default', 'fuzz-victim', client],
    id: [job.id as string, image.id],
    image: [image.id],
    policy: ['fuzz'],
    schedule: ['leap'],
    client: [client],
    toClient: [client],
    path: ['/', src, join(src, 'sub')],
    user: ['admin', 'fuzz-victim'],
    expires: ['30d', '12h', '1y'],
    password: ['a long enough password 1'],
    exact: ['kind'],
    documents: [documents, [{ ...documents[0], spec: { copies: [{ operation: 'backup', storageUnit: 'default', retention: '7d' }] } }]],
  };

  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as Json;
  // Changes that remove what others use come last.
  const ops = operations(doc).sort((a, b) => Number(a.method === 'DELETE') - Number(b.method === 'DELETE'));
  assert.ok(ops.length >= 30, `only ${ops.length} operations in /openapi.json`);

  let requests = 0;
  let namedFields = 0;
  const statuses = new Map<number, number>();
  const byOp: string[] = [];
  for (const op of ops) {
    await t.test(`${op.method} ${op.path}`, async (st) => {
      const seen = new Map<number, number>();
      let token = '';
      const arb = requestFor(op, hints, () => token);
      const seed = [...`${op.method} ${op.path}`].reduce((h, c) => (h * 31 + c.charCodeAt(0)) | 0, SEED);
      await fc.assert(fc.asyncProperty(arb, async (req) => {
        // A fresh admin session each time: POST /logout ends the one it is sent with.
        token = (await mintToken(ts, 'admin')).token;
        req.headers.authorization = `Bearer ${token}`;
        let payload = req.payload;
        // Restores go into the temporary directory only (the tests may run as root).
        if (op.path === '/api/v1/restores' && payload !== undefined) {
          const parsed = jsonOf(payload) as Json | undefined;
          if (parsed && typeof parsed === 'object' && typeof parsed.toPath === 'string' && parsed.toPath.startsWith('/')) {
            payload = JSON.stringify({ ...parsed, toPath: restoreRoot + parsed.toPath });
          }
        }
        const url = req.query ? `${req.path}?${req.query}` : req.path;
        const res = await app.inject({ method: op.method as 'GET', url, headers: req.headers, ...(payload !== undefined ? { payload } : {}) });
        requests++;
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        seen.set(res.statusCode, (seen.get(res.statusCode) ?? 0) + 1);
        const what = `${op.method} ${url.slice(0, 300)} (${req.how}) → ${res.statusCode} ${res.payload.slice(0, 500)}`;
        assert.ok(res.statusCode < 500, `a server error: ${what}`);
        if (res.statusCode >= 400) {
          const b = jsonOf(res.payload);
          assertErrorShape(b, what);
          const validation = /^Invalid request: (body|querystring|params|headers)\b/.test(b.error.message);
          if (validation) {
            assert.equal(res.statusCode, 400, what);
            assert.match(b.error.message, /(body|querystring|params|headers)(\.[^:]+)?: /, what);
            if (req.field !== undefined) {
              assert.ok(b.error.message.includes(req.field), `the message does not name ${req.field}: ${what}`);
              namedFields++;
            }
          }
        } else if ((res.headers['content-type'] ?? '').toString().startsWith('application/json')) {
          assert.notEqual(jsonOf(res.payload), undefined, `not JSON: ${what}`);
        }
      }), { seed, numRuns: RUNS, endOnFailure: true });
      const summary = JSON.stringify(Object.fromEntries([...seen].sort((a, b) => a[0] - b[0])));
      st.diagnostic(`statuses ${summary}`);
      byOp.push(`${op.method} ${op.path} ${summary}`);
    });
  }

  // Still sane: up, the admin's account works, the catalog answers, the agent is connected.
  const health = await ts.api<Json>('GET', '/api/v1/health', { token: null });
  assert.equal(health.status, 200);
  const fresh = (await mintToken(ts, 'admin')).token;
  const who = await ts.api<Json>('GET', '/api/v1/whoami', { token: fresh });
  assert.deepEqual([who.status, who.body.user, who.body.role], [200, 'admin', 'admin']);
  const jobs = await ts.api<Json>('GET', '/api/v1/jobs', { token: fresh, query: { limit: '1000' } });
  assert.equal(jobs.status, 200, JSON.stringify(jobs.body));
  const status = await ts.api<Json>('GET', '/api/v1/status', { token: fresh });
  assert.ok((status.body.agents as string[]).includes(client), JSON.stringify(status.body));
  t.diagnostic(`${requests} requests over ${ops.length} operations (${namedFields} validation errors checked to name the broken field) in ${((Date.now() - started) / 1000).toFixed(1)} s; statuses ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}`);
});
