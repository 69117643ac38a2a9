// Restore tests and the compliance report, end to end in a real server (its embedded agent, an
// SQLite catalog, storage units on disk) on a fake clock, and through the real CLI:
//
//   - a scheduled restore test restores the newest image to a fresh scratch directory, compares
//     every byte with the snapshot, records its restore time against the rto, and removes the
//     directory; a sample restores only that many files;
//   - a file changed on the client between the restore and the comparison (as a failing disk or
//     another process would change it) fails the test, naming the file: the test wraps the real
//     agent link and flips a byte of a restored file just before the agent's compare job starts;
//   - the report: a policy out of its rpo (the clock moves on), an image whose duplicate could not
//     be made (its target unit is broken) and one whose windowed copy is behind its window, an
//     offsiteRequired policy without an offsite copy, a held image; `coffer report compliance`
//     exits 6 while something is out of compliance and 0 once everything is in.
import assert from 'node:assert/strict';
import { mkdir, open, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { checkJsonOutput } from '../src/cli/json-schema.ts';
import type { AgentLink } from '../src/server/agent-link.ts';
import { startTestServer, TEST_ADMIN_PASSWORD, type TestServer } from '../src/server/test-server.ts';
import { FakeClock } from '../src/testing/fake-clock.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { runCli } from './cli.ts';
import { COMPLIANCE_COMMANDS } from './server-commands.ts';

type Json = Record<string, any>;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const T0 = Date.UTC(2030, 0, 7, 0, 30);
const ran = new Set<string>();

async function apply(ts: TestServer, documents: Json[]): Promise<void> {
  const r = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
}

const policy = (name: string, spec: Json) => ({ apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name }, spec: { schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], ...spec } });
const unit = (name: string, url: string, spec: Json = {}) => ({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name }, spec: { url, ...spec } });
const lifecycle = (name: string, copies: Json[]) => ({ apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name }, spec: { copies } });

/** Sessions last 12 h by the server's clock: a new one after the fake clock has moved on. */
async function relogin(ts: TestServer): Promise<void> {
  ts.adminToken = await ts.login('admin', TEST_ADMIN_PASSWORD);
}

async function backupNow(ts: TestServer, policyName: string): Promise<Json> {
  const r = await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: policyName } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  const job = await ts.waitJob(r.body.jobs[0].id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  return job;
}

async function restoreTestNow(ts: TestServer, policyName: string): Promise<Json> {
  const r = await ts.api<Json>('POST', '/api/v1/restore-tests', { body: { policy: policyName } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return ts.waitJob(r.body.jobs[0].id);
}

async function report(ts: TestServer, query: Record<string, string> = {}): Promise<Json> {
  const r = await ts.api<Json>('GET', '/api/v1/reports/compliance', { query });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

/** `coffer --json ARGS` against the server, its output checked against the contract. */
async function cli(ts: TestServer, args: string[], expectCode: number): Promise<Json[]> {
  const env = { COFFER_SERVER: ts.url, COFFER_TOKEN: ts.adminToken, XDG_CONFIG_HOME: '/nonexistent' };
  const r = await runCli(['--json', ...args], { env });
  const command = args[0] === 'report' ? 'report compliance' : args[0]!;
  const lines = checkJsonOutput(command, r.stdout, r.code);
  assert.equal(r.code, expectCode, `coffer --json ${args.join(' ')}: ${r.stdout.slice(-3000)}${r.stderr}`);
  ran.add(command);
  return lines;
}

test('a scheduled restore test restores the newest image to a fresh scratch directory, checks it, records its time against the rto and removes the directory; the report follows the rpo', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  const scratch = join(dir, 'scratch');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'a.txt'), 'alpha\n');
  await writeFile(join(src, 'sub', 'b.bin'), randomBytes(1, 3_000_000));
  await writeFile(join(src, 'sub', 'c[1].txt'), 'a name with glob characters\n');
  const clock = new FakeClock(T0);
  const ts = await startTestServer(t, { clock, timezone: 'UTC' });
  const client = ts.server.clientName;
  await apply(ts, [
    lifecycle('month', [{ operation: 'backup', storageUnit: 'default', retention: '30d' }]),
    policy('web', { clients: [client], selections: [{ paths: [src] }], lifecycle: 'month', rpo: '1d', rto: '1h', restoreTests: { every: '7d', path: scratch } }),
  ]);
  const backup = await backupNow(ts, 'web');

  // The restore test's schedule is a schedule of the policy, shown with the others.
  const schedules = (await ts.api<Json>('GET', '/api/v1/schedules', { query: { policy: 'web' } })).body.items;
  assert.deepEqual(schedules.map((s: Json) => [s.name, s.level]).sort(), [['@restore-test', 'restore-test'], ['leap', 'full']]);

  // Within the rpo, but no restore test has run yet: out of compliance for the rto.
  let r = await report(ts);
  let row = r.rows.find((x: Json) => x.policy === 'web');
  assert.equal(row.lastBackup.image, backup.result.image);
  assert.deepEqual(row.problems, ['no restore test has run yet']);
  assert.equal(r.compliant, false);
  const lines = await cli(ts, ['report', 'compliance'], 6);
  assert.equal(lines.find((l) => l.type === 'compliance' && l.policy === 'web')!.status, 'out');

  // At its first slot (every 7d, within the next 7 days), the scheduler queues the test.
  const next = (schedules.find((s: Json) => s.name === '@restore-test')).runs[0].slot as number;
  assert.ok(next > T0 && next <= T0 + 7 * DAY, JSON.stringify(schedules));
  await clock.runUntil(next + 60_000);
  await relogin(ts);
  let jobs: Json[] = [];
  for (let i = 0; i < 100 && jobs.length === 0; i++) {
    jobs = (await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'restore-test', policy: 'web' } })).body.items;
    if (jobs.length === 0) await new Promise((res) => setTimeout(res, 50));
  }
  assert.equal(jobs.length, 1, 'the schedule queued one restore test');
  assert.equal(jobs[0].schedule, '@restore-test');
  const done = await ts.waitJob(jobs[0].id);
  assert.equal(done.state, 'succeeded', JSON.stringify(done));
  const res = done.result as Json;
  assert.equal(res.image, backup.result.image);
  assert.equal(res.sample, 'all');
  assert.equal(res.checkedFiles, 3);
  assert.equal(res.checkedBytes, 3_000_000 + 6 + 28);
  assert.equal(res.mismatchCount, 0);
  assert.equal(res.passed, true);
  assert.equal(typeof res.restoreMs, 'number');
  assert.ok(res.restoreMs > 0 && res.restoreMs < HOUR, JSON.stringify(res));
  assert.deepEqual([res.rtoMs, res.withinRto], [HOUR, true]);
  assert.ok(res.scratchDir.startsWith(`${scratch}/coffer-restore-test-`), res.scratchDir);
  assert.deepEqual(await readdir(scratch), [], 'the scratch directory is removed');

  // The test passed, but the last backup is now days old: out of the rpo of 1d.
  r = await report(ts);
  row = r.rows.find((x: Json) => x.policy === 'web');
  assert.equal(row.restoreTest.job, done.id);
  assert.deepEqual([row.restoreTest.passed, row.restoreTest.withinRto, row.restoreTest.restoreMs], [true, true, res.restoreMs]);
  assert.equal(row.problems.length, 1, JSON.stringify(row.problems));
  assert.match(row.problems[0], /^the last good backup is \dd\d\dh old \(2030-01-07T00:30:00Z\), more than the rpo of 1d$/);

  // A backup now brings it back: everything complies, and the CLI exits 0.
  await backupNow(ts, 'web');
  r = await report(ts);
  assert.deepEqual(r.rows.map((x: Json) => [x.policy, x.status, x.problems]), [['web', 'ok', []]]);
  assert.equal(r.compliant, true);
  const ok = await cli(ts, ['report', 'compliance'], 0);
  assert.equal(ok.at(-1)!.compliant, true);
  const text = await runCli(['report', 'compliance', '--all'], { env: { COFFER_SERVER: ts.url, COFFER_TOKEN: ts.adminToken, XDG_CONFIG_HOME: '/nonexistent' } });
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^COMPLIANT: all 1 client of 1 policy meet their policies/m);

  // A sample restores and compares only that many files, picked at random; by hand, with the CLI.
  await apply(ts, [policy('web', { clients: [client], selections: [{ paths: [src] }], lifecycle: 'month', rpo: '1d', rto: '1h', restoreTests: { every: '7d', path: scratch, sample: 2 } })]);
  const sampled = await cli(ts, ['restore-test', '--policy', 'web', '--wait'], 0);
  const sjob = sampled.at(-1)!.jobs[0];
  assert.equal(sjob.state, 'succeeded', JSON.stringify(sjob));
  assert.deepEqual([sjob.result.sample, sjob.result.files, sjob.result.checkedFiles, sjob.result.mismatchCount], [2, 2, 2, 0]);
  assert.deepEqual(await readdir(scratch), []);
  const person = await runCli(['restore-test', '--policy', 'web', '--wait'], { env: { COFFER_SERVER: ts.url, COFFER_TOKEN: ts.adminToken, XDG_CONFIG_HOME: '/nonexistent' } });
  assert.equal(person.code, 0, person.stderr);
  assert.match(person.stdout, /^restore-test job \S+ of .* by web: succeeded in .*\n  image \S+ from default onto .*: 2 file\(s\), .* compared \(a sample of 2\)\n  restore time \S+ against an rto of 1h00m: within$/m);
});

test('a restored file that differs from the snapshot fails the restore test, naming the file', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  const scratch = join(dir, 'scratch');
  await mkdir(src);
  await writeFile(join(src, 'good.txt'), 'unchanged\n');
  await writeFile(join(src, 'victim.bin'), randomBytes(2, 2_000_000));
  const ts = await startTestServer(t);
  const client = ts.server.clientName;
  await apply(ts, [
    lifecycle('month', [{ operation: 'backup', storageUnit: 'default', retention: '30d' }]),
    policy('db', { clients: [client], selections: [{ paths: [src] }], lifecycle: 'month', rto: '4h', restoreTests: { every: '7d', path: scratch } }),
  ]);
  await backupNow(ts, 'db');

  // Between the restore and the comparison, a byte of the restored file changes on the client.
  const agents = ts.server.services.agents;
  const real: AgentLink = agents.get(client);
  let flipped = '';
  const wrapped = Object.create(real, {
    start: {
      value: async (id: string, kind: string, spec: Json, onEvent: (e: unknown) => void) => {
        if (kind === 'compare') {
          flipped = join(spec.root, src, 'victim.bin');
          const fh = await open(flipped, 'r+');
          const b = Buffer.alloc(1);
          await fh.read(b, 0, 1, 1_234_567);
          b[0] = b[0]! ^ 0x01;
          await fh.write(b, 0, 1, 1_234_567);
          await fh.close();
        }
        return real.start(id, kind, spec, onEvent as never);
      },
    },
  }) as AgentLink;
  agents.set(client, wrapped);
  const failed = await restoreTestNow(ts, 'db');
  agents.set(client, real);
  assert.ok(flipped, 'the compare job ran');
  assert.equal(failed.state, 'failed', JSON.stringify(failed));
  assert.equal(failed.error.code, 'CHECK_FAILED');
  assert.match(failed.error.message, new RegExp(`1 entry differs from the snapshot: ${src}/victim\\.bin \\(differs from the snapshot in bytes \\d+-\\d+ \\(chunk [0-9a-f]{12}\\)\\)`));
  assert.deepEqual(failed.result.mismatches.map((m: Json) => m.path), [`${src}/victim.bin`]);
  assert.deepEqual([failed.result.checkedFiles, failed.result.mismatchCount, failed.result.passed], [1, 1, false]);
  assert.deepEqual(await readdir(scratch), [], 'the scratch directory is removed after a failure too');

  // The report says so; the next test, with nothing changed, passes.
  let row = (await report(ts)).rows[0];
  assert.equal(row.restoreTest.passed, false);
  assert.match(row.problems.join('\n'), new RegExp(`the last restore test \\(job ${failed.id} on .*\\) failed: Restore test of image .* failed: 1 entry differs`));
  const passed = await restoreTestNow(ts, 'db');
  assert.equal(passed.state, 'succeeded', JSON.stringify(passed));
  row = (await report(ts)).rows[0];
  assert.deepEqual([row.status, row.problems], ['ok', []]);
});

test('a scratch place that is a system directory is refused when the policy is applied, and by the agent', async (t) => {
  const ts = await startTestServer(t);
  const client = ts.server.clientName;
  const bad = await ts.api<Json>('POST', '/api/v1/apply', {
    body: { documents: [lifecycle('month', [{ operation: 'backup', storageUnit: 'default', retention: '30d' }]), policy('p', { clients: [client], selections: [{ paths: ['/srv'] }], lifecycle: 'month', restoreTests: { every: '7d', path: '/etc/restore' } })] },
  });
  assert.equal(bad.status, 422, JSON.stringify(bad.body));
  assert.match(JSON.stringify(bad.body), /spec\.restoreTests\.path.*inside the system directory \/etc: a restore test never restores there/);
  // The agent checks again, after resolving symlinks: a scratch place that leads into /etc.
  const dir = await tempDir(t);
  const link = join(dir, 'looks-harmless');
  await (await import('node:fs/promises')).symlink('/etc', link);
  const { runOnAgent } = await import('../src/server/services.ts');
  await assert.rejects(runOnAgent(ts.server.services.agents.get(client), 'scratch', { action: 'create', base: link, name: 'coffer-restore-test-x1' }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'REFUSED');
    assert.match(e.message, /\(\/etc\).*"\/etc" is a system directory|\/etc/);
    return true;
  });
  await assert.rejects(runOnAgent(ts.server.services.agents.get(client), 'scratch', { action: 'create', base: '/', name: 'coffer-restore-test-x1' }), /the root directory/);
});

test('the report names images without the copies their lifecycle requires, an offsiteRequired policy without an offsite copy, and held images', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'f.txt'), 'copies\n');
  const clock = new FakeClock(T0);
  const ts = await startTestServer(t, { clock, timezone: 'UTC', env: { ...process.env, COFFER_JOB_RETRY_BASE_MS: '50' } });
  const client = ts.server.clientName;
  const broken = join(dir, 'broken');
  const late = join(dir, 'late');
  const vault = join(dir, 'vault');
  for (const d of [broken, late, vault]) await mkdir(d);
  await apply(ts, [
    unit('broken', broken), unit('late', late), unit('vault', vault, { offsite: true }),
    lifecycle('two', [
      { operation: 'backup', storageUnit: 'default', retention: '30d' },
      { operation: 'duplicate', storageUnit: 'broken', retention: '30d' },
      { operation: 'duplicate', storageUnit: 'late', retention: '30d', window: { start: '06:00', duration: '1h' } },
    ]),
    lifecycle('offsite', [{ operation: 'backup', storageUnit: 'default', retention: '30d' }, { operation: 'duplicate', storageUnit: 'vault', retention: '1y' }]),
    policy('copies', { clients: [client], selections: [{ paths: [src] }], lifecycle: 'two' }),
    policy('vaulted', { clients: [client], selections: [{ paths: [src] }], lifecycle: 'offsite', offsiteRequired: true }),
  ]);
  // The duplicates' target units are broken (their repository config is gone): no copy is made.
  for (const d of [broken, late, vault]) for (const f of ['config', 'config.copy']) await rm(join(d, f), { force: true });
  const image = (await backupNow(ts, 'copies')).result.image as string;
  const vaultedImage = (await backupNow(ts, 'vaulted')).result.image as string;
  // The windowed duplicate is queued by the lifecycle pass, a moment after the backup's end.
  let duplicates: Json[] = [];
  for (const until = Date.now() + 30_000; duplicates.length < 3 && Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
    duplicates = (await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind: 'duplicate' } })).body.items;
  }
  assert.equal(duplicates.length, 3, JSON.stringify(duplicates));
  for (const j of duplicates) {
    // The windowed duplicate waits for its window (06:00, the lifecycle pass queued it for then).
    if (j.storageUnit === 'late') {
      assert.equal(j.state, 'queued', JSON.stringify(j));
      assert.equal(j.notBefore, T0 + 5.5 * HOUR, JSON.stringify(j));
      continue;
    }
    const ended = await ts.waitJob(j.id);
    assert.equal(ended.state, 'failed', JSON.stringify(ended));
  }
  const held = await ts.api<Json>('POST', `/api/v1/images/${vaultedImage}/hold`, { body: { reason: 'case 42' } });
  assert.equal(held.status, 200, JSON.stringify(held.body));

  // At once: nothing is due yet.
  let r = await report(ts);
  const rowOf = (p: string) => r.rows.find((x: Json) => x.policy === p);
  assert.deepEqual(rowOf('copies').problems, []);
  assert.deepEqual(rowOf('vaulted').problems, []);
  assert.deepEqual(rowOf('vaulted').offsite, { images: 0, oldestImage: null, oldestTime: null });
  assert.deepEqual(r.holds.map((h: Json) => [h.image, h.policy, h.reason]), [[vaultedImage, 'vaulted', 'case 42']]);
  assert.equal(r.holdsTotal, 1);

  // Two hours on: the unwindowed duplicate is overdue, the windowed one not yet; no offsite copy.
  await clock.runUntil(T0 + 2 * HOUR);
  await relogin(ts);
  r = await report(ts);
  assert.deepEqual(rowOf('copies').copies, [{ storageUnit: 'broken', operation: 'duplicate', windowed: false, images: 1, oldestImage: image, oldestTime: T0 }]);
  assert.deepEqual(rowOf('copies').problems, [`1 image(s) lack their duplicate copy on broken (oldest ${image} of 2030-01-07T00:30:00Z)`]);
  assert.deepEqual(rowOf('vaulted').offsite, { images: 1, oldestImage: vaultedImage, oldestTime: T0 });
  assert.deepEqual(rowOf('vaulted').problems, [
    `1 image(s) lack their duplicate copy on vault (oldest ${vaultedImage} of 2030-01-07T00:30:00Z)`,
    `1 image(s) have no copy on an offsite storage unit (oldest ${vaultedImage} of 2030-01-07T00:30:00Z)`,
  ]);

  // A day later the windowed copy is behind its window too; the CLI lists it all and exits 6.
  await clock.runUntil(T0 + DAY + 2 * HOUR);
  await relogin(ts);
  r = await report(ts);
  assert.deepEqual(rowOf('copies').copies.map((c: Json) => [c.storageUnit, c.windowed, c.images]), [['broken', false, 1], ['late', true, 1]]);
  assert.match(rowOf('copies').problems[1], /^1 image\(s\) have no duplicate copy on late: it is behind its window/);
  const lines = await cli(ts, ['report', 'compliance'], 6);
  assert.deepEqual(lines.filter((l) => l.type === 'held').map((l) => l.image), [vaultedImage]);
  assert.deepEqual(lines.at(-1), { type: 'summary', compliant: false, time: T0 + DAY + 2 * HOUR, policies: 2, clients: 2, outOfCompliance: 2, holds: 1, exitCode: 6 });
  const text = await runCli(['report', 'compliance', '--policy', 'copies'], { env: { COFFER_SERVER: ts.url, COFFER_TOKEN: ts.adminToken, XDG_CONFIG_HOME: '/nonexistent' } });
  assert.equal(text.code, 6, text.stderr);
  assert.match(text.stdout, /copies\/.*: 1 image\(s\) lack their duplicate copy on broken/);
  assert.match(text.stdout, /^OUT OF COMPLIANCE: 1 of 1 client of 1 policy/m);
  const unknown = await runCli(['report', 'compliance', '--policy', 'nope'], { env: { COFFER_SERVER: ts.url, COFFER_TOKEN: ts.adminToken, XDG_CONFIG_HOME: '/nonexistent' } });
  assert.equal(unknown.code, 1, 'an unknown policy is an error, not a verdict');
});

test('every restore test and report command ran here with --json', () => {
  for (const c of COMPLIANCE_COMMANDS) assert.ok(ran.has(c), `${c} was never run with --json in this file`);
});
