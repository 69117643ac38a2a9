// The scheduler end to end in a real server, on a fake clock (startServer's `clock`: the
// scheduler, the catalog, the queue and the executors all read it): a schedule's slot comes, its
// backup is queued and runs; a scheduled backup that the queue cannot start before its window
// closes (its storage unit is busy) is recorded as missed and never runs.
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { FakeClock } from '../src/testing/fake-clock.ts';
import { startTestServer } from '../src/server/test-server.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { waitUntil } from './server-process.ts';

type Json = Record<string, any>;
const T0 = Date.UTC(2030, 0, 7, 0, 30); // a Monday, 00:30 UTC
const at = (h: number, m = 0) => Date.UTC(2030, 0, 7, h, m);

test('a schedule fires on the server clock and its backup runs; a run its window closes on before it can start is missed', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  const one = join(dir, 'one');
  await mkdir(src);
  await mkdir(one);
  await writeFile(join(src, 'f.txt'), 'scheduled\n');
  const clock = new FakeClock(T0);
  const ts = await startTestServer(t, { clock, timezone: 'UTC' });
  const client = ts.server.clientName;
  const policy = (name: string, spec: Json) => ({ apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name }, spec: { clients: [client], lifecycle: 'week', ...spec } });
  const applied = await ts.api<Json>('POST', '/api/v1/apply', {
    body: {
      documents: [
        // A unit that runs one job at a time.
        { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'one' }, spec: { url: one, maxJobs: 1 } },
        { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'week' }, spec: { copies: [{ operation: 'backup', storageUnit: 'one', retention: '7d' }] } },
        policy('nightly', { selections: [{ paths: [src] }], schedules: [{ name: 'at-one', level: 'full', calendar: '0 1 * * *', window: { start: '01:00', duration: '1h' } }] }),
        // Started by hand only (29 February), and slow: it keeps the unit busy.
        policy('slow', { selections: [{ command: 'sleep 4; echo slow', filename: 'slow.txt' }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }] }),
        policy('late', { selections: [{ paths: [src] }], schedules: [{ name: 'at-two', level: 'full', calendar: '0 2 * * *', window: { start: '02:00', duration: '1h' } }] }),
      ],
    },
  });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  const backups = async (p: string) => (await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'backup', policy: p } })).body.items as Json[];

  // Nothing before the slot.
  await clock.runUntil(at(0, 59));
  assert.deepEqual(await backups('nightly'), []);

  // 01:00: the slot's job is queued by the scheduler and runs.
  await clock.runUntil(at(1, 1));
  const [job] = await backups('nightly');
  assert.ok(job, 'the schedule queued a backup at 01:00');
  assert.deepEqual([job.schedule, job.slot], ['at-one', at(1)]);
  const done = await ts.waitJob(job.id, 30_000);
  assert.equal(done.state, 'succeeded', JSON.stringify(done));
  const images = (await ts.api<Json>('GET', '/api/v1/images', { query: { policy: 'nightly' } })).body.items;
  assert.deepEqual(images.map((i: Json) => [i.schedule, i.level, i.state, i.time]), [['at-one', 'full', 'ok', at(1, 1)]], 'the image is timed by the server clock');
  const copy = (await ts.api<Json>('GET', `/api/v1/images/${images[0].id}`)).body.copies[0];
  assert.equal(copy.expires, at(1, 1) + 7 * 86_400_000, 'retention runs on the server clock');

  // 01:30: a slow backup by hand takes the unit's one place.
  await clock.runUntil(at(1, 30));
  const slow = (await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'slow', level: 'full' } })).body.jobs[0];
  await waitUntil('the slow backup to run', async () => (await ts.api<Json>('GET', `/api/v1/jobs/${slow.id}`)).body.state === 'running', 10_000);

  // 02:00: the late policy's slot is queued, but cannot start; at 03:01 its window has closed.
  await clock.runUntil(at(2, 1));
  const [late] = await backups('late');
  assert.ok(late, 'the schedule queued a backup at 02:00');
  assert.equal(late.state, 'queued', JSON.stringify(late));
  await clock.runUntil(at(3, 1));
  assert.equal((await ts.api<Json>('GET', `/api/v1/jobs/${late.id}`)).body.state, 'queued', 'still waiting for the unit');
  const slowDone = await ts.waitJob(slow.id, 30_000);
  assert.equal(slowDone.state, 'succeeded', JSON.stringify(slowDone));
  const missed = await ts.waitJob(late.id, 30_000);
  assert.equal(missed.state, 'missed', JSON.stringify(missed));
  assert.match((missed.error as Json).message, /window closed/);
  assert.deepEqual((await ts.api<Json>('GET', '/api/v1/images', { query: { policy: 'late' } })).body.items, [], 'a missed run makes no image');
  const missedList = await ts.api<Json>('GET', '/api/v1/jobs', { query: { state: 'missed' } });
  assert.equal(missedList.status, 200, JSON.stringify(missedList.body));
  const listed = missedList.body.items.map((j: Json) => j.id);
  assert.deepEqual(listed, [late.id], 'coffer jobs --state missed lists it');
});
