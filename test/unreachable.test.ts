// An unreachable client's scheduled backup waits for its agent until the backup window closes,
// without using its attempts, and then counts as missed (not failed): the run did not happen.
import assert from 'node:assert/strict';
import { test } from 'node:test';

process.env.COFFER_UNREACHABLE_POLL_MS = '200';
const { startTestServer } = await import('../src/server/test-server.ts');

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

test('a backup for a client whose agent is not connected waits until its window ends, then is missed', async (t) => {
  const ts = await startTestServer(t);
  await ts.server.catalog.clients.upsert({ name: 'laptop1', platform: 'linux', agentId: 'remote@laptop1', hostIdentity: {} });
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'keep' }, spec: { copies: [{ operation: 'backup', storageUnit: 'default', retention: '7d' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'laptops' }, spec: { clients: ['laptop1'], selections: [{ paths: ['/etc/hostname'] }], schedules: [{ name: 'nightly', level: 'full', calendar: '0 1 * * *', window: { start: '01:00', duration: '6h' } }], lifecycle: 'keep' } },
  ] } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  const windowEnds = Date.now() + 2500;
  const job = await ts.server.catalog.jobs.enqueue({ kind: 'backup', client: 'laptop1', policy: 'laptops', schedule: 'nightly', spec: { notAfter: windowEnds }, maxAttempts: 2 });
  ts.server.dispatcher.wake();
  const done: Json = await ts.waitJob(job.id);
  assert.equal(done.state, 'missed', JSON.stringify(done));
  assert.ok(Date.now() >= windowEnds, 'it waited for the window to close');
  assert.equal(done.attempt, 1, 'waiting used no attempt');
  const logs = (await ts.api<Json>('GET', `/api/v1/jobs/${job.id}/logs`)).body.items.map((l: Json) => l.message).join('\n');
  assert.match(logs, /Waiting: client laptop1's agent is not connected/, logs);
  assert.match(logs, /Missed: the backup window closed/, logs);
});
