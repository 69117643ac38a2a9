// A clone killed midway, through the real server: the embedded agent is killed (SIGKILL) while a
// duplicate job is sending packs to the target; the server restarts the agent, the queue runs the
// job again, and the retry sends only what had not arrived (the packs the target's index files
// already listed stay). The copy is then whole: a restore from it alone is byte-identical.
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseDocuments } from '../src/policy/index.ts';
import { Repository } from '../src/repository/repository.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { randomBytes } from '../src/testing/random.ts';
import { TEST_KDF } from '../src/testing/repo.ts';
import { startTestServer } from '../src/server/test-server.ts';
import { tempDir } from '../src/testing/tmp.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

/** The pids of this process's children whose command line runs `agent stdio`. */
async function agentPids(): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const cmd = (await readFile(`/proc/${name}/cmdline`, 'utf8')).split('\0');
      if (ppid === process.pid && cmd.includes('agent') && cmd.includes('stdio')) out.push(Number(name));
    } catch {
      // The process ended while we looked.
    }
  }
  return out;
}

/** The files under a directory of the repository (data/ has a level of subdirectories, index/ none). */
async function count(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) n += e.isDirectory() ? (await readdir(join(dir, e.name))).length : 1;
  return n;
}

test('a duplicate whose agent is killed midway is run again and sends only what had not arrived', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'data');
  await mkdir(src);
  const FILES = 10;
  for (let i = 0; i < FILES; i++) await writeFile(join(src, `f${i}.bin`), randomBytes(300 + i, 1_000_000));
  const ts = await startTestServer(t, { env: { ...process.env, COFFER_JOB_RETRY_BASE_MS: '200' } });
  const client = ts.server.clientName;
  // The target has its own keys and small packs (the clone re-encrypts into many packs, an index
  // file every few of them) and a bandwidth limit, so that the kill lands in the middle.
  const offsite = join(dir, 'offsite');
  const pw = join(dir, 'offsite.pw');
  await writeFile(pw, 'offsite password\n', { mode: 0o600 });
  await (await Repository.init(new LocalBackend(offsite), 'offsite password', { kdf: TEST_KDF, cacheDir: join(dir, 'cache'), packSize: 256 * 1024 })).close();
  const docs = parseDocuments(`
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: primary }
spec: { url: ${join(dir, 'primary')} }
---
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: offsite }
spec: { url: ${offsite}, passwordFrom: "file:${pw}", bandwidth: 1MB/s }
---
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: one }
spec: { copies: [{ operation: backup, storageUnit: primary, retention: 30d }] }
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: p }
spec: { clients: [${client}], selections: [{ paths: [${src}] }], schedules: [{ name: d, level: full, calendar: "0 1 * * *" }], lifecycle: one }
`).map((d) => d.document);
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  const backup: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'p' } })).body.jobs[0].id);
  assert.equal(backup.state, 'succeeded', JSON.stringify(backup));
  const image = backup.result.image as string;

  const cl = await ts.api<Json>('POST', '/api/v1/clones', { body: { where: { client, policy: 'p' }, to: 'offsite', retention: '30d' } });
  assert.equal(cl.status, 202, JSON.stringify(cl.body));
  const jobId = cl.body.jobs[0].id as string;
  // Kill the agent once two index files list some of the packs that arrived (every 4 packs): with
  // one, what it listed came to 14.8 % of the data in one run, just short of the margin below.
  for (const until = Date.now() + 60_000; (await count(join(offsite, 'index'))) < 2; await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > until) {
      const j = (await ts.api<Json>('GET', `/api/v1/jobs/${jobId}`)).body;
      assert.fail(`the clone never got going: ${JSON.stringify(j)} ${await count(join(offsite, 'data'))} packs`);
    }
  }
  t.diagnostic(`killed with ${await count(join(offsite, 'data'))} packs and ${await count(join(offsite, 'index'))} index files in the target`);
  const [pid] = await agentPids();
  assert.ok(pid, 'the embedded agent runs as a child process');
  process.kill(pid, 'SIGKILL');

  const done: Json = await ts.waitJob(jobId);
  assert.equal(done.state, 'succeeded', JSON.stringify(done));
  assert.ok(done.attempt >= 2, `the job ran again after the kill (attempt ${done.attempt}): ${JSON.stringify(done)}\n${(await ts.api<Json>("GET", `/api/v1/jobs/${jobId}/logs`)).body.items.map((l: Json) => l.message).join("\n")}`);
  const logs = (await ts.api<Json>('GET', `/api/v1/jobs/${jobId}/logs`)).body.items.map((l: Json) => l.message).join('\n');
  // What the retry sent against the whole: the packs the index listed before the kill stay.
  const sent = done.result.newBytes as number;
  const total = FILES * 1_000_000;
  assert.ok(sent < total * 0.85, `the retry sent ${sent} of ${total} bytes: what had arrived was not sent again\n${logs}`);
  assert.ok(done.result.bytesPresent > 0, JSON.stringify(done.result));

  // The copy is whole: with primary unavailable, the restore reads offsite alone.
  const down = await ts.api<Json>('POST', '/api/v1/units/primary/unavailable', { body: { reason: 'test: read the clone alone' } });
  assert.equal(down.status, 200, JSON.stringify(down.body));
  const to = join(dir, 'restored');
  const r: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/restores', { body: { image, toClient: client, toPath: to } })).body.id);
  assert.equal(r.state, 'succeeded', JSON.stringify(r));
  for (let i = 0; i < FILES; i++) assert.deepEqual(await readFile(join(to, src, `f${i}.bin`)), randomBytes(300 + i, 1_000_000));
});
