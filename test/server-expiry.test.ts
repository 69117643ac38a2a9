// Expiry (forget, record removal, prune) interrupted at random points by SIGKILLing the real
// `coffer server` process, then run again after a restart: the catalog and storage agree (no
// copy left ok whose snapshots are gone, no snapshot left whose copy expired, no image without
// copies) and the repository checks clean, data included. COFFER_TEST_SEED picks other points.
import assert from 'node:assert/strict';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { openCatalog } from '../src/catalog/catalog.ts';
import { Keystore, resolveSecret } from '../src/server/keystore.ts';
import { unitPasswordRef } from '../src/server/services.ts';
import { randomBytes, rng } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { runCli } from './cli.ts';
import { freePort, isAlive, startServerProcess, waitUntil, type ServerProcess } from './server-process.ts';

const ENV = {
  COFFER_JOB_RETRY_BASE_MS: '300',
  // Every expiry prunes, so that every round can be cut in the middle of a prune.
  COFFER_PRUNE_INTERVAL_MS: '0',
  // A killed prune's session is stale soon, so the next prune need not wait 15 minutes. Not
  // sooner: a writer paused for half of it fails its commit (session.ts), and at 1.5 s a busy
  // machine's pauses of 0.75 s failed a backup in one run of seed 9.
  COFFER_SESSION_HEARTBEAT_MS: '300',
  COFFER_SESSION_STALE_MS: '3000',
};
const IMAGES = 7;
const ROUNDS = 3;
const SEED = Number(process.env.COFFER_TEST_SEED ?? 9);

async function allImages(s: ServerProcess): Promise<any[]> {
  return (await s.api('GET', '/api/v1/images', { query: { policy: 'churn' } })).body.items;
}

test(`expiry SIGKILLed at random points (seed ${SEED}) and run again leaves catalog and storage consistent and the repository checkable`, async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  const dataDir = join(dir, 'data');
  await mkdir(src);
  await writeFile(join(src, 'shared.bin'), randomBytes(1000, 1_500_000));
  const port = await freePort();
  let s = await startServerProcess(t, { dataDir, port, env: ENV });
  const client = (await s.api('GET', '/api/v1/clients')).body.items[0].name;
  const applied = await s.api('POST', '/api/v1/apply', {
    body: {
      documents: [
        { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'month' }, spec: { copies: [{ operation: 'backup', storageUnit: 'default', retention: '30d' }] } },
        { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'churn' }, spec: { clients: [client], selections: [{ paths: [src] }], schedules: [{ name: 'leap', level: 'incremental', calendar: '0 1 29 2 *' }], lifecycle: 'month' } },
      ],
    },
  });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));

  // Images that each hold data of their own (and share some): forgetting one leaves packs for
  // the prune to delete or repack.
  for (let i = 0; i < IMAGES; i++) {
    await rm(join(src, `own-${i - 1}.bin`), { force: true });
    await writeFile(join(src, `own-${i}.bin`), randomBytes(2000 + i, 1_200_000));
    const r = await s.api('POST', '/api/v1/backups', { body: { policy: 'churn' } });
    const job = await s.waitJob(r.body.jobs[0].id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
  }
  assert.equal((await allImages(s)).length, IMAGES);

  // The repository's password, from the keystore, for `coffer repo check`.
  const catalog = await openCatalog(join(dataDir, 'catalog.db'));
  const unit = await catalog.storageUnits.get('default');
  await catalog.close();
  const password = await resolveSecret(unit.passwordRef ?? unitPasswordRef('default'), { keystore: await Keystore.open({ dataDir }) });

  const random = rng(SEED);
  const expired = new Set<string>();
  for (let round = 0; round < ROUNDS; round++) {
    // Expire the two oldest images, and kill the server somewhere in what follows.
    const oldest = (await allImages(s)).slice(-2).map((i) => i.id as string);
    for (const id of oldest) {
      const r = await s.api('DELETE', `/api/v1/images/${id}`);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      expired.add(id);
    }
    // An expiry of two images takes a few hundred ms here: most kills land inside it.
    const delay = Math.floor(random() * 500);
    await new Promise((r) => setTimeout(r, delay));
    const at = (await s.api('GET', '/api/v1/jobs', { query: { kind: 'expire', limit: '3' } })).body.items.map((j: any) => `${j.id.slice(-6)} ${j.state}`).join(', ');
    await s.kill('SIGKILL');
    await waitUntil('the agent to exit after its server was killed', () => !isAlive(s.agentPid), 15_000);
    const what = `round ${round}, killed ${delay} ms after the expiry was asked for (expire jobs then: ${at})`;

    s = await startServerProcess(t, { dataDir, port, env: ENV });
    // The expiry queued at start and the interrupted one (queued again) end; then run it again.
    const logs = [];
    for (const j of (await s.api('GET', '/api/v1/jobs', { query: { kind: 'expire', limit: '4' } })).body.items) {
      logs.push(...(await s.api('GET', `/api/v1/jobs/${j.id}/logs`)).body.items.map((l: any) => `${j.id.slice(-6)}: ${l.message.split('\n')[0].slice(0, 100)}`));
    }
    t.diagnostic(`${what}; expiry logs after the restart:\n  ${logs.join('\n  ')}`);
    const open = (await s.api('GET', '/api/v1/jobs', { query: { kind: 'expire', limit: '20' } })).body.items.filter((j: any) => j.state === 'queued' || j.state === 'running');
    for (const j of open) {
      const ended = await s.waitJob(j.id);
      assert.equal(ended.state, 'succeeded', `${what}: ${JSON.stringify(ended)}\n${JSON.stringify((await s.api('GET', `/api/v1/jobs/${j.id}/logs`)).body.items.map((l: any) => l.message))}`);
    }
    const again = await s.waitJob((await s.api('POST', '/api/v1/expire')).body.id);
    assert.equal(again.state, 'succeeded', `${what}: ${JSON.stringify(again)}`);

    // No expiry failed, before the kill or after (a killed one is queued again, not failed).
    const failed = (await s.api('GET', '/api/v1/jobs', { query: { kind: 'expire', state: 'failed' } })).body.items;
    assert.deepEqual(failed.map((j: any) => j.error), [], what);
    // Images whose copies expired are gone; every other image has its one copy, ok.
    const images = await allImages(s);
    for (const id of expired) assert.ok(!images.some((i) => i.id === id), `${what}: image ${id} expired and is gone`);
    assert.equal(images.length, IMAGES - expired.size, what);
    const kept: string[] = [];
    for (const i of images) {
      const copies = (await s.api('GET', `/api/v1/images/${i.id}`)).body.copies;
      assert.deepEqual(copies.map((c: any) => c.state), ['ok'], `${what}: image ${i.id}`);
      kept.push(...Object.values(copies[0].snapshots) as string[]);
    }
    // Storage holds exactly the snapshots of those copies: none whose copy expired is left.
    assert.deepEqual((await readdir(join(dataDir, 'storage', 'default', 'snapshots'))).sort(), kept.sort(), what);
    // Reconcile agrees: no copy lost, no snapshot unknown.
    const rec = await s.waitJob((await s.api('POST', '/api/v1/catalog/reconcile', { body: {} })).body.id);
    assert.equal(rec.state, 'succeeded', `${what}: ${JSON.stringify(rec.result)}`);
    // And the prune, interrupted or not, left a repository that checks clean, pack data included.
    const check = await runCli(['repo', 'check', '--read-data', '--repo', unit.url, '--no-cache'], { env: { COFFER_PASSWORD: password } });
    assert.equal(check.code, 0, `${what}: coffer repo check:\n${check.stdout}\n${check.stderr}`);
  }

  // What is left restores.
  const newest = (await allImages(s))[0];
  const to = join(dir, 'restored');
  const r = await s.waitJob((await s.api('POST', '/api/v1/restores', { body: { image: newest.id, toClient: client, toPath: to } })).body.id);
  assert.equal(r.state, 'succeeded', JSON.stringify(r));
  assert.deepEqual(await readdir(join(to, src)), ['own-6.bin', 'shared.bin']);
  assert.equal((await s.kill('SIGTERM')).code, 0);
});
