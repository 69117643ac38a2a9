// A storage unit on S3 (a real S3-compatible server process), applied through the server with its
// credentials named by reference: the repository is created with a password kept in the keystore,
// backups and restores run, the credentials are never in the catalog or the API's answers, and a
// unit whose credentials are wrong is refused with what to do.
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { startS3Server } from '../src/testing/s3server.ts';
import { startTestServer } from '../src/server/test-server.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';

type Json = Record<string, any>;

test('an S3 storage unit with credentialsFrom: created, backed up to, restored from; no secret in the catalog or the API', async (t) => {
  const s3 = await startS3Server();
  t.after(() => s3.stop());
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a.bin'), randomBytes(11, 1_500_000));
  const ts = await startTestServer(t, { env: { ...process.env, UNIT_KEY_ID: s3.accessKeyId, UNIT_SECRET: s3.secretAccessKey, AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' } });
  const url = `s3://${s3.bucket}/units/offsite?endpoint=${encodeURIComponent(s3.endpoint)}`;
  const unit = (credentials: Json) => ({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'offsite' }, spec: { url, maxJobs: 2, credentialsFrom: credentials } });

  // Wrong credentials: refused, naming the document and field, nothing applied.
  const wrong = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [unit({ accessKeyId: 'env:UNIT_KEY_ID', secretAccessKey: 'env:NO_SUCH_VARIABLE' })] } });
  assert.equal(wrong.status, 422, JSON.stringify(wrong.body));
  assert.match(wrong.body.error.message, /StorageUnit\/offsite/);
  assert.match(wrong.body.error.message, /NO_SUCH_VARIABLE/);

  const docs = [
    unit({ accessKeyId: 'env:UNIT_KEY_ID', secretAccessKey: 'env:UNIT_SECRET' }),
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'cloud' }, spec: { copies: [{ operation: 'backup', storageUnit: 'offsite', retention: '7d' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'to-s3' }, spec: { clients: [ts.server.clientName], selections: [{ paths: [src] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'cloud' } },
  ];
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  assert.ok(applied.body.warnings.some((w: Json) => /a new repository/.test(w.message)), JSON.stringify(applied.body.warnings));

  const job = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'to-s3' } })).body.jobs[0].id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const image = (await ts.api<Json>('GET', '/api/v1/images', { query: { client: ts.server.clientName, policy: 'to-s3' } })).body.items[0];
  const to = join(dir, 'restored');
  const r = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/restores', { body: { image: image.id, toClient: ts.server.clientName, toPath: to } })).body.id);
  assert.equal(r.state, 'succeeded', JSON.stringify(r));
  assert.deepEqual(await readFile(join(to, src, 'a.bin')), randomBytes(11, 1_500_000));

  // Another unit on the same location: a repository the server has no password for under that name.
  const twin = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [{ ...unit({ accessKeyId: 'env:UNIT_KEY_ID', secretAccessKey: 'env:UNIT_SECRET' }), metadata: { name: 'twin' } }] } });
  assert.equal(twin.status, 422, JSON.stringify(twin.body));
  assert.match(twin.body.error.message, /holds a repository this server has no password for/);
  assert.match(twin.body.error.hint + twin.body.error.message, /passwordFrom/);

  // The secret is nowhere in what the server keeps or says.
  const exported = await ts.api<Json>('GET', '/api/v1/documents/storageunits/offsite');
  assert.deepEqual(exported.body.spec.credentialsFrom, { accessKeyId: 'env:UNIT_KEY_ID', secretAccessKey: 'env:UNIT_SECRET' });
  for (const name of await readdir(ts.dataDir)) {
    if (!name.startsWith('catalog.db')) continue;
    const bytes = await readFile(join(ts.dataDir, name));
    assert.equal(bytes.includes(Buffer.from(s3.secretAccessKey)), false, `${name} holds the S3 secret`);
  }
  const logs = await ts.api<Json>('GET', `/api/v1/jobs/${job.id}/logs`);
  assert.equal(JSON.stringify(logs.body).includes(s3.secretAccessKey), false);
  const audit = await ts.api<Json>('GET', '/api/v1/audit');
  assert.equal(JSON.stringify(audit.body).includes(s3.secretAccessKey), false);
});
