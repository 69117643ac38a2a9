// The server end to end, as an administrator uses it through the API: log in, apply storage, a
// lifecycle and a policy, back up the server's own host now, list and browse images, restore,
// export and re-apply with no change, expire, and the first-start defaults; the round trip on
// both catalogs, SQLite and a real PostgreSQL server.
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { toYaml, parseDocuments } from '../src/policy/index.ts';
import { startPostgres } from '../src/testing/postgres.ts';
import { randomBytes } from '../src/testing/random.ts';
import { startTestServer } from '../src/server/test-server.ts';
import { tempDir } from '../src/testing/tmp.ts';

type Json = Record<string, any>;

test('first start: admin with the given password, the default storage unit, this host as a client, reconcile queued', async (t) => {
  const ts = await startTestServer(t);
  const who = await ts.api<Json>('GET', '/api/v1/whoami');
  assert.deepEqual([who.status, who.body.user, who.body.role], [200, 'admin', 'admin']);
  const units = await ts.api<Json>('GET', '/api/v1/documents/storageunits');
  assert.deepEqual(units.body.items.map((d: Json) => d.metadata.name), ['default']);
  const clients = await ts.api<Json>('GET', '/api/v1/clients');
  assert.deepEqual(clients.body.items.map((c: Json) => [c.name, c.connected]), [[ts.server.clientName, true]]);
  const jobs = await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'reconcile' } });
  const reconcile = await ts.waitJob(jobs.body.items[0].id);
  assert.equal(reconcile.state, 'succeeded', JSON.stringify(reconcile));
  const anon = await ts.api<Json>('GET', '/api/v1/jobs', { token: null });
  assert.equal(anon.status, 401);
  assert.equal(anon.body.error.code, 'UNAUTHENTICATED');
  const openapi = await ts.api<Json>('GET', '/openapi.json', { token: null });
  assert.equal(openapi.status, 200);
  assert.ok(openapi.body.paths['/api/v1/images'], 'the OpenAPI document lists the routes');
});

test('apply, back up now, browse, restore, export round trip and expire, through the API (SQLite catalog)', (t) => roundTrip(t, {}));

test('the same on a PostgreSQL catalog', async (t) => {
  const pg = await startPostgres();
  t.after(() => pg.stop());
  // A subtest: its server stops (its after hooks run) before PostgreSQL does.
  await t.test('round trip', (st) => roundTrip(st, { catalog: pg.url }));
  // A server whose catalog went away still stops: it says why, and its agent exits.
  const ts = await startTestServer(t, { catalog: pg.url });
  const agent = ts.server.services.agents.get(ts.server.clientName);
  await pg.stop();
  await assert.rejects(ts.stop(), /cannot be reached/);
  assert.equal(agent.isOpen, false, 'the link to the agent is closed');
});

async function roundTrip(t: TestContext, options: { catalog?: string }): Promise<void> {
  const dir = await tempDir(t);
  const src = join(dir, 'www');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'index.html'), '<h1>hello</h1>\n');
  await writeFile(join(src, 'sub', 'data.bin'), randomBytes(5, 2_000_000));
  await writeFile(join(src, 'skip.tmp'), 'not backed up');
  const ts = await startTestServer(t, options);
  assert.equal(ts.server.catalog.where.startsWith('postgres'), options.catalog !== undefined, ts.server.catalog.where);
  const client = ts.server.clientName;
  const primary = join(dir, 'primary');
  await mkdir(primary);
  const docs = parseDocuments(`
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: primary }
spec: { url: ${primary}, maxJobs: 4 }
---
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: standard }
spec:
  copies:
    - { operation: backup, storageUnit: primary, retention: 30d }
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: web-server, labels: { owner: web-team } }
spec:
  clients: [${client}]
  selections:
    - paths: [${src}]
      exclude: ["*.tmp"]
    - command: printf 'dump of shop\\n'
      filename: shop.sql
  schedules:
    # Only on 29 February: no scheduled run interferes with the runs this test starts.
    - { name: leap, level: incremental, calendar: "0 1 29 2 *" }
  lifecycle: standard
  maxStreams: 2
`, { file: 'site.yaml' }).map((d) => d.document);

  const dry = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs, dryRun: true } });
  assert.equal(dry.status, 200, JSON.stringify(dry.body));
  assert.deepEqual(dry.body.changes.map((c: Json) => c.action), ['created', 'created', 'created']);
  assert.equal((await ts.api<Json>('GET', '/api/v1/documents/policy/web-server')).status, 404, 'a dry run applies nothing');
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));

  // Export and apply again: nothing changes.
  const exported = [];
  for (const kind of ['storageunits', 'lifecycles', 'policies']) exported.push(...(await ts.api<Json>('GET', `/api/v1/documents/${kind}`)).body.items);
  const yaml = toYaml(exported.filter((d: Json) => d.metadata.name !== 'default'));
  const again = await ts.api<Json>('POST', '/api/v1/diff', { body: { documents: parseDocuments(yaml).map((d) => d.document) } });
  assert.deepEqual(again.body.changes.map((c: Json) => c.action), ['unchanged', 'unchanged', 'unchanged'], yaml);

  const schedules = await ts.api<Json>('GET', '/api/v1/schedules', { query: { policy: 'web-server' } });
  assert.equal(schedules.status, 200, JSON.stringify(schedules.body));
  assert.equal(schedules.body.items.length, 1);

  // A backup now, then an incremental one.
  const started = await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'web-server', level: 'full' } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const job: Json = await ts.waitJob(started.body.jobs[0].id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.ok(job.result.scannedBytes >= 2_000_000);
  assert.equal(job.result.streams, 2);
  await writeFile(join(src, 'index.html'), '<h1>hello again</h1>\n');
  const second: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'web-server' } })).body.jobs[0].id);
  assert.equal(second.state, 'succeeded', JSON.stringify(second));
  assert.ok(second.result.newBytes < 100_000, `the incremental reads only what changed: ${second.result.newBytes}`);
  const logs = await ts.api<Json>('GET', `/api/v1/jobs/${second.id}/logs`);
  assert.ok(logs.body.items.some((l: Json) => /parent/.test(l.message)), JSON.stringify(logs.body.items));

  const images = await ts.api<Json>('GET', '/api/v1/images', { query: { client } });
  assert.equal(images.body.items.length, 2, JSON.stringify(images.body.items.map((i: Json) => [i.policy, i.schedule, i.level, i.state, i.jobId])));
  const newest = images.body.items[0];
  assert.equal(newest.state, 'ok');
  const detail = await ts.api<Json>('GET', `/api/v1/images/${newest.id}`);
  assert.equal(detail.body.copies[0].storageUnit, 'primary');
  assert.ok(detail.body.copies[0].expires > Date.now() + 29 * 86_400_000);

  // Browse: find the paths stream, then list the directory.
  let files: Json[] = [];
  for (const stream of Object.keys(newest.streams)) {
    const b = await ts.api<Json>('GET', `/api/v1/images/${newest.id}/browse`, { query: { stream, path: src } });
    if (b.status === 200) files = b.body.items;
  }
  assert.deepEqual(files.map((f) => f.name).sort(), ['index.html', 'sub']);

  // Find a file across the client's images.
  const found = await ts.api<Json>('GET', '/api/v1/find', { query: { pattern: '*.html', client } });
  assert.equal(found.status, 200, JSON.stringify(found.body));
  assert.deepEqual(found.body.items.map((m: Json) => [m.image, m.path]).sort(), images.body.items.map((i: Json) => [i.id, join(src, 'index.html')]).sort());

  // Restore to another directory of the same host.
  const to = join(dir, 'restored');
  const r = await ts.api<Json>('POST', '/api/v1/restores', { body: { image: newest.id, toClient: client, toPath: to } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  const rj = await ts.waitJob(r.body.id);
  assert.equal(rj.state, 'succeeded', JSON.stringify(rj));
  assert.equal(await readFile(join(to, src, 'index.html'), 'utf8'), '<h1>hello again</h1>\n');
  assert.deepEqual(await readFile(join(to, src, 'sub', 'data.bin')), randomBytes(5, 2_000_000));
  assert.equal(await readFile(join(to, 'shop.sql'), 'utf8'), 'dump of shop\n');
  await assert.rejects(stat(join(to, src, 'skip.tmp')), /ENOENT/);

  // Expire the older image: its copy and snapshots go.
  const older = images.body.items[1];
  const ex = await ts.api<Json>('DELETE', `/api/v1/images/${older.id}`);
  assert.equal(ex.status, 202, JSON.stringify(ex.body));
  const exJob = await ts.waitJob(ex.body.job.id);
  assert.equal(exJob.state, 'succeeded', JSON.stringify(exJob));
  assert.equal((await ts.api<Json>('GET', `/api/v1/images/${older.id}`)).status, 404);
  assert.equal((await ts.api<Json>('GET', '/api/v1/images', { query: { client } })).body.items.length, 1);

  // The audit log has the changes with who and the outcome.
  const audit = await ts.api<Json>('GET', '/api/v1/audit', { query: { action: 'documents.apply' } });
  assert.ok(audit.body.items.some((a: Json) => a.actor === 'admin' && a.outcome === 'ok'));
  const restores = await ts.api<Json>('GET', '/api/v1/audit', { query: { action: 'restore.start' } });
  assert.equal(restores.body.items[0].details.toPath, to);
}

test('bad documents are refused whole, naming the document, the path and what is wrong', async (t) => {
  const ts = await startTestServer(t);
  const r = await ts.api<Json>('POST', '/api/v1/apply', {
    body: {
      documents: [
        { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'ok' }, spec: { copies: [{ operation: 'backup', storageUnit: 'default', retention: '30d' }] } },
        { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'p' }, spec: { clients: ['no-such-host'], selections: [{ paths: ['/etc'] }], schedules: [{ name: 'd', level: 'full', calendar: '0 1 * * *' }], lifecycle: 'missing' } },
      ],
    },
  });
  assert.equal(r.status, 422, JSON.stringify(r.body));
  assert.match(r.body.error.message, /Policy\/p/);
  assert.match(r.body.error.message, /spec\.lifecycle/);
  assert.equal((await ts.api<Json>('GET', '/api/v1/documents/lifecycle/ok')).status, 404, 'nothing was applied');
  // A storage unit on a directory that holds other files: refused, nothing made there.
  const full = await tempDir(t);
  await writeFile(join(full, 'precious.txt'), 'mine');
  const su = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [{ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'full' }, spec: { url: full } }] } });
  assert.equal(su.status, 422, JSON.stringify(su.body));
  assert.match(su.body.error.message, /StorageUnit\/full: spec\.url: .* is not empty/);
  assert.deepEqual(await readdir(full), ['precious.txt']);
  assert.equal((await ts.api<Json>('GET', '/api/v1/documents/storageunit/full')).status, 404);
  const bad = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: 'nope' } });
  assert.equal(bad.status, 400);
  assert.match(bad.body.error.message, /body\.documents/);
});

test('a backup is duplicated to the lifecycle\'s second unit automatically, and a restore falls back to that copy when the first is damaged', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'data');
  await mkdir(src);
  for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}.bin`), randomBytes(40 + i, 400_000));
  const ts = await startTestServer(t);
  const client = ts.server.clientName;
  const primary = join(dir, 'primary');
  const offsite = join(dir, 'offsite');
  const docs = parseDocuments(`
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: primary }
spec: { url: ${primary} }
---
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: offsite }
spec: { url: ${offsite}, offsite: true }
---
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: two-copies }
spec:
  copies:
    - { operation: backup, storageUnit: primary, retention: 14d }
    - { operation: duplicate, storageUnit: offsite, retention: 1y }
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: dup }
spec:
  clients: [${client}]
  selections: [{ paths: [${src}] }]
  schedules: [{ name: leap, level: full, calendar: "0 1 29 2 *" }]
  lifecycle: two-copies
`).map((d) => d.document);
  assert.equal((await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } })).status, 200);
  const backup: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'dup' } })).body.jobs[0].id);
  assert.equal(backup.state, 'succeeded', JSON.stringify(backup));
  const dupJobs = (await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'duplicate' } })).body.items;
  assert.equal(dupJobs.length, 1);
  const dup: Json = await ts.waitJob(dupJobs[0].id);
  assert.equal(dup.state, 'succeeded', JSON.stringify(dup));
  assert.ok(dup.result.newBytes >= 2_400_000, JSON.stringify(dup.result));
  const image = (await ts.api<Json>('GET', '/api/v1/images', { query: { client, policy: 'dup' } })).body.items[0];
  const copies = (await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body.copies;
  assert.deepEqual(copies.map((c: Json) => [c.storageUnit, c.state]).sort(), [['offsite', 'ok'], ['primary', 'ok']]);
  const year = copies.find((c: Json) => c.storageUnit === 'offsite');
  assert.ok(year.expires - image.time > 364 * 86_400_000, 'the clone has its own retention');

  // On demand: clone what a query finds to a third unit; a second time there is nothing to do.
  const archive = join(dir, 'archive');
  const au = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [{ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'archive' }, spec: { url: archive } }] } });
  assert.equal(au.status, 200, JSON.stringify(au.body));
  const where = { client, policy: 'dup' };
  const none = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: 'archive' } });
  assert.deepEqual([none.status, none.body.images.length, none.body.skipped[0]?.reason], [202, 0, 'its lifecycle has no copy in archive: give a retention']);
  const dry = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: 'archive', retention: '7y', dryRun: true } });
  assert.deepEqual([dry.body.images.map((i: Json) => i.image), dry.body.jobs.length], [[image.id], 0]);
  const cl = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: 'archive', retention: '7y' } });
  const clJob: Json = await ts.waitJob(cl.body.jobs[0].id);
  assert.equal(clJob.state, 'succeeded', JSON.stringify(clJob));
  const again = await ts.api<Json>('POST', '/api/v1/clones', { body: { where, to: 'archive', retention: '7y' } });
  assert.deepEqual([again.body.images.length, again.body.skipped[0].reason], [0, 'already has a copy in archive']);
  assert.equal((await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body.copies.length, 3);

  // Flip bytes in every pack of the primary copy: the restore takes what it cannot read there
  // from the offsite copy, and marks the primary copy suspect.
  const packsDir = join(primary, 'data');
  for (const sub of await readdir(packsDir)) {
    for (const name of await readdir(join(packsDir, sub))) {
      const p = join(packsDir, sub, name);
      const bytes = await readFile(p);
      for (let i = 100; i < bytes.length - 100; i += 997) bytes[i]! ^= 0xff;
      await writeFile(p, bytes);
    }
  }
  const to = join(dir, 'restored');
  const r: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/restores', { body: { image: image.id, toClient: client, toPath: to } })).body.id);
  assert.equal(r.state, 'succeeded', JSON.stringify(r));
  // The server's units share one deduplication domain: what primary cannot give is read chunk
  // by chunk (trees too) from offsite, by the same ids, and the result says so.
  assert.ok(r.result.sources?.offsite?.chunks > 0, JSON.stringify(r.result));
  const rlog = (await ts.api<Json>('GET', `/api/v1/jobs/${r.id}/logs`)).body.items.map((l: Json) => l.message).join('\n');
  assert.match(rlog, /could not be read from primary and were restored from offsite/, rlog);
  for (let i = 0; i < 6; i++) assert.deepEqual(await readFile(join(to, src, `f${i}.bin`)), randomBytes(40 + i, 400_000));
  const after = (await ts.api<Json>('GET', `/api/v1/images/${image.id}`)).body.copies;
  assert.equal(after.find((c: Json) => c.storageUnit === 'primary').state, 'suspect');
});
