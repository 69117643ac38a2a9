// The real `coffer server` process stopped during a backup, the hard way (SIGKILL: no chance to
// record anything) and the clean way (SIGTERM), then started again on the same data directory:
// the job is interrupted and retried until it succeeds, the embedded agent does not outlive its
// server, and the catalog matches storage (reconcile finds no lost copy and no unknown snapshot).
import assert from 'node:assert/strict';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { openCatalog } from '../src/catalog/catalog.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { freePort, isAlive, startServerProcess, waitUntil, type ServerProcess } from './server-process.ts';

// Short backoffs and session times: a retry after a restart starts within a second.
const ENV = { COFFER_JOB_RETRY_BASE_MS: '300', COFFER_SESSION_HEARTBEAT_MS: '500', COFFER_SESSION_STALE_MS: '3000' };

/** A policy with a small directory, then a stream that takes at least 3 s (one stream at a time). */
async function setUp(t: { after(fn: () => unknown): void }) {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a.bin'), randomBytes(1, 300_000));
  await writeFile(join(src, 'b.txt'), 'hello\n');
  return { dir, src, dataDir: join(dir, 'data'), port: await freePort() };
}

async function applyPolicy(s: ServerProcess, src: string): Promise<string> {
  const client = (await s.api('GET', '/api/v1/clients')).body.items[0].name as string;
  const documents = [
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'month' }, spec: { copies: [{ operation: 'backup', storageUnit: 'default', retention: '30d' }] } },
    {
      apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'slow' },
      spec: {
        clients: [client],
        selections: [
          { paths: [src] },
          { command: 'head -c 8000000 /dev/urandom; sleep 3; echo end', filename: 'slow.bin' },
        ],
        // Only on 29 February: nothing scheduled runs during the test.
        schedules: [{ name: 'leap', level: 'incremental', calendar: '0 1 29 2 *' }],
        lifecycle: 'month',
        maxStreams: 1,
      },
    },
  ];
  const r = await s.api('POST', '/api/v1/apply', { body: { documents } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return client;
}

/** Starts the backup and returns once its first stream is committed and the slow one runs. */
async function backupInTheMiddle(s: ServerProcess): Promise<string> {
  const started = await s.api('POST', '/api/v1/backups', { body: { policy: 'slow', level: 'full' } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const id = started.body.jobs[0].id as string;
  await waitUntil('the first stream to be committed', async () => {
    const logs = await s.api('GET', `/api/v1/jobs/${id}/logs`);
    return logs.body.items.some((l: any) => /snapshot [0-9a-f]{12} \(full read\)/.test(l.message));
  }, 30_000, 100);
  await new Promise((r) => setTimeout(r, 700));
  const job = await s.api('GET', `/api/v1/jobs/${id}`);
  assert.equal(job.body.state, 'running', 'the backup still runs (the slow stream sleeps 3 s)');
  return id;
}

async function snapshotFiles(dataDir: string): Promise<string[]> {
  return (await readdir(join(dataDir, 'storage', 'default', 'snapshots'))).sort();
}

async function treeListing(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).sort();
}

/** Reconcile through the API; returns the default unit's entry. */
async function reconcile(s: ServerProcess): Promise<any> {
  const r = await s.api('POST', '/api/v1/catalog/reconcile', { body: {} });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  const job = await s.waitJob(r.body.id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const units = job.result.units as any[];
  for (const u of units) {
    assert.deepEqual(u.lost, [], `no lost copies in ${u.unit}`);
    assert.deepEqual(u.unknown, [], `no unknown snapshots in ${u.unit}`);
  }
  return units.find((u) => u.unit === 'default');
}

/** The catalog's snapshot ids of the default unit's copies in state ok. */
async function okSnapshots(s: ServerProcess): Promise<string[]> {
  const images = (await s.api('GET', '/api/v1/images', { query: { policy: 'slow' } })).body.items as any[];
  const ids: string[] = [];
  for (const i of images) {
    for (const c of (await s.api('GET', `/api/v1/images/${i.id}`)).body.copies) if (c.state === 'ok') ids.push(...Object.values(c.snapshots) as string[]);
  }
  return ids.sort();
}

test('SIGKILL during a backup: the agent exits, the job is retried after the restart and succeeds, and the catalog matches storage', async (t) => {
  const { src, dataDir, port } = await setUp(t);
  const first = await startServerProcess(t, { dataDir, port, env: ENV });
  await applyPolicy(first, src);
  const jobId = await backupInTheMiddle(first);
  const killedImage = (await first.api('GET', '/api/v1/images', { query: { policy: 'slow' } })).body.items[0];
  assert.equal(killedImage.state, 'pending');

  const exit = await first.kill('SIGKILL');
  assert.equal(exit.signal, 'SIGKILL');
  // The agent sees its stdin close, stops the job and exits: no orphan that goes on writing.
  await waitUntil('the embedded agent to exit after its server was killed', () => !isAlive(first.agentPid), 15_000);
  const storage = join(dataDir, 'storage', 'default');
  const before = await treeListing(storage);
  await new Promise((r) => setTimeout(r, 1000));
  assert.deepEqual(await treeListing(storage), before, 'nothing writes to storage once the server is dead');
  const leftovers = await snapshotFiles(dataDir);
  assert.equal(leftovers.length, 1, 'the killed attempt committed its first stream');

  const second = await startServerProcess(t, { dataDir, port, env: ENV });
  assert.match(second.log(), /job interrupted by the last stop: queued again/);
  const job = await second.waitJob(jobId);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.attempt, 2);
  const logs = (await second.api('GET', `/api/v1/jobs/${jobId}/logs`)).body.items.map((l: any) => l.message) as string[];
  assert.ok(logs.some((m) => /Interrupted by a server restart during attempt 1/.test(m)), logs.join('\n'));

  // The killed attempt's image failed at the start; its leftover snapshot is recorded by the
  // reconcile at start as an expired copy, and the expiry forgets it.
  const killed = await second.api('GET', `/api/v1/images/${killedImage.id}`);
  if (killed.status === 200) assert.equal(killed.body.state, 'failed');
  const startReconcile = (await second.api('GET', '/api/v1/jobs', { query: { kind: 'reconcile' } })).body.items[0];
  const sr = await second.waitJob(startReconcile.id);
  assert.deepEqual(sr.result.units.find((u: any) => u.unit === 'default').leftovers, [{ id: leftovers[0], image: killedImage.id }], JSON.stringify(sr.result));
  const ex = await second.api('POST', '/api/v1/expire');
  assert.equal((await second.waitJob(ex.body.id)).state, 'succeeded');
  assert.equal((await second.api('GET', `/api/v1/images/${killedImage.id}`)).status, 404, 'the failed image went with its leftovers');

  const images = (await second.api('GET', '/api/v1/images', { query: { policy: 'slow' } })).body.items as any[];
  assert.deepEqual(images.map((i) => [i.jobId, i.state]), [[jobId, 'ok']]);
  const detail = (await second.api('GET', `/api/v1/images/${images[0].id}`)).body;
  assert.deepEqual(detail.copies.map((c: any) => [c.storageUnit, c.state, Object.keys(c.snapshots).length]), [['default', 'ok', 2]]);
  const entry = await reconcile(second);
  assert.deepEqual(entry.leftovers, []);
  assert.deepEqual(await snapshotFiles(dataDir), await okSnapshots(second), 'storage holds exactly the snapshots of ok copies');

  const stop = await second.kill('SIGTERM');
  assert.equal(stop.code, 0, second.log().slice(-2000));
  await waitUntil('the agent to exit with its server', () => !isAlive(second.agentPid), 15_000);
});

test('SIGTERM during a backup: the job is recorded as interrupted and queued again, and runs to success after the next start', async (t) => {
  const { src, dataDir, port } = await setUp(t);
  const first = await startServerProcess(t, { dataDir, port, env: ENV });
  await applyPolicy(first, src);
  const jobId = await backupInTheMiddle(first);
  const exit = await first.kill('SIGTERM');
  assert.equal(exit.code, 0, first.log().slice(-2000));
  await waitUntil('the embedded agent to exit', () => !isAlive(first.agentPid), 15_000);

  // While the server is down, the catalog says what happened.
  const catalog = await openCatalog(join(dataDir, 'catalog.db'));
  try {
    const job = await catalog.jobs.get(jobId);
    assert.deepEqual([job.state, job.attempt, job.error?.code], ['queued', 2, 'INTERRUPTED']);
    const images = (await catalog.images.list({ policy: 'slow' })).items;
    assert.deepEqual(images.map((i) => i.state), ['failed'], 'the stopped attempt settled its image');
  } finally {
    await catalog.close();
  }

  const second = await startServerProcess(t, { dataDir, port, env: ENV });
  const job = await second.waitJob(jobId);
  assert.deepEqual([job.state, job.attempt], ['succeeded', 2], JSON.stringify(job));
  await reconcile(second);
  await second.waitJob((await second.api('POST', '/api/v1/expire')).body.id);
  // The stopped attempt's committed stream is kept as a copy of its failed image, with the
  // lifecycle's retention: what the catalog lists is exactly what storage holds.
  assert.deepEqual(await snapshotFiles(dataDir), await okSnapshots(second));
  assert.equal((await second.kill('SIGTERM')).code, 0);
});
