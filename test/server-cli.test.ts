// The server-side commands of the real `coffer` CLI (child processes) against a real server
// (started in this process): login, apply/get/diff round trips, a backup now followed to its
// end, jobs, images, browse, a restore compared with the source, roles (a restore operator denied
// an ungranted client, exit 5), tokens (a revoked one exits 4), the audit log. Every command runs
// with --json at least once and its output is checked against the contract (docs/json.md).
import assert from 'node:assert/strict';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { checkJsonOutput, COMMAND_OUTPUT } from '../src/cli/json-schema.ts';
import { startTestServer, TEST_ADMIN_PASSWORD } from '../src/server/test-server.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { commandOf, runCli } from './cli.ts';
import { SERVER_COMMANDS } from './server-commands.ts';

type Line = Record<string, any> & { type: string };
const ran = new Set<string>();
const succeeded = new Set<string>();

/** Runs `coffer --json ARGS`, checks every line against the contract and that stderr is empty. */
async function json(args: string[], env: Record<string, string>, expectCode?: number, input?: string): Promise<{ code: number | null; lines: Line[]; final: Line }> {
  const r = await runCli(['--json', ...args], { env, ...(input !== undefined ? { input } : {}) });
  const command = commandOf(args);
  const lines = checkJsonOutput(command, r.stdout, r.code) as Line[];
  assert.equal(r.stderr, '', `coffer --json ${args.join(' ')} wrote on stderr`);
  if (expectCode !== undefined) assert.equal(r.code, expectCode, `coffer --json ${args.join(' ')}: ${r.stdout.slice(-2000)}`);
  if (command) {
    ran.add(command);
    if (lines.at(-1)!.type === 'summary') succeeded.add(command);
  }
  return { code: r.code, lines, final: lines.at(-1)! };
}

/** Runs `coffer ARGS` for a person: text. */
async function human(args: string[], env: Record<string, string>, expectCode: number, input?: string) {
  const r = await runCli(args, { env, ...(input !== undefined ? { input } : {}) });
  assert.equal(r.code, expectCode, `coffer ${args.join(' ')}: ${r.stdout}\n${r.stderr}`);
  return r;
}

const ofType = (lines: Line[], type: string) => lines.filter((l) => l.type === type);

test('the server commands of the CLI, against a real server', async (t) => {
  const dir = await tempDir(t);
  const ts = await startTestServer(t);
  const url = ts.url;
  const client = ts.server.clientName;
  const src = join(dir, 'www');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'index.html'), '<h1>hello</h1>\n');
  await writeFile(join(src, 'sub', 'data.bin'), randomBytes(7, 300_000));
  await mkdir(join(dir, 'primary'));
  // No token from the environment: each run says where its login is.
  const base = { COFFER_SERVER: '', COFFER_TOKEN: '' };
  const admin = { ...base, XDG_CONFIG_HOME: join(dir, 'config-admin') };

  await t.test('without a login: exit 4 and how to log in; a server that is down: exit 1', async () => {
    const [r, j, down] = await Promise.all([
      human(['jobs', 'list'], admin, 4),
      json(['jobs', 'list'], admin, 4),
      human(['images'], { ...base, COFFER_SERVER: 'http://127.0.0.1:9', COFFER_TOKEN: 'cof_x' }, 1),
    ]);
    assert.match(r.stderr, /Not logged in/);
    assert.match(r.stderr, /coffer login/);
    assert.equal(j.final.code, 'UNAUTHENTICATED');
    assert.match(down.stderr, /Cannot reach the Coffer server at http:\/\/127\.0\.0\.1:9/);
  });

  await t.test('login: a wrong password exits 4; --password-stdin saves the session 0600; logout forgets it', async () => {
    const wrong = await json(['login', '--server', url, '--user', 'admin', '--password-stdin'], admin, 4, 'not the password\n');
    assert.equal(wrong.final.code, 'UNAUTHENTICATED');
    const ok = await json(['login', '--server', url, '--user', 'admin', '--password-stdin'], admin, 0, `${TEST_ADMIN_PASSWORD}\n`);
    assert.deepEqual([ok.final.server, ok.final.user, ok.final.role], [url, 'admin', 'admin']);
    assert.equal((await stat(ok.final.loginFile)).mode & 0o777, 0o600);
    const scratch = { ...base, XDG_CONFIG_HOME: join(dir, 'config-scratch') };
    await human(['login', '--server', url, '--user', 'admin', '--password-stdin'], scratch, 0, TEST_ADMIN_PASSWORD);
    const out = await json(['logout'], scratch, 0);
    assert.deepEqual([out.final.loggedOut, out.final.revoked], [true, true]);
    await human(['get', 'policies'], scratch, 4);
  });

  const site = join(dir, 'site.yaml');
  const siteText = `apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: primary }
spec: { url: ${join(dir, 'primary')} }
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
metadata: { name: web, labels: { owner: web-team } }
spec:
  clients: [${client}]
  selections:
    - paths: [${src}]
  schedules:
    # Only on 29 February: no scheduled run interferes.
    - { name: leap, level: incremental, calendar: "0 1 29 2 *" }
  lifecycle: standard
  rpo: 24h
  purpose: the web site
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: slow }
spec:
  clients: [${client}]
  selections:
    - { command: "sleep 20; echo slow", filename: slow.txt }
  schedules:
    - { name: leap, level: full, calendar: "0 1 29 2 *" }
  lifecycle: standard
`;

  await t.test('apply, get -o yaml, apply again: nothing changes and diff exits 0 printing nothing; a change makes diff exit 1', async () => {
    await writeFile(site, siteText);
    const dry = await json(['apply', '-f', site, '--dry-run'], admin, 0);
    assert.deepEqual(ofType(dry.lines, 'apply').map((l) => [l.id, l.action, l.dryRun]), [['StorageUnit/primary', 'created', true], ['Lifecycle/standard', 'created', true], ['Policy/web', 'created', true], ['Policy/slow', 'created', true]]);
    await human(['get', 'policy', 'web'], admin, 1);
    const applied = await human(['apply', '-f', site], admin, 0);
    assert.match(applied.stdout, /^Policy\/web created$/m);

    const exported = join(dir, 'exported');
    await mkdir(exported);
    await Promise.all(['su', 'lifecycles', 'policies'].map(async (kind) => {
      const r = await human(['get', kind, '-o', 'yaml'], admin, 0);
      assert.match(r.stdout, /apiVersion: coffer\/v1/);
      await writeFile(join(exported, `${kind}.yaml`), r.stdout);
    }));
    const [same, sameJson] = await Promise.all([human(['diff', '-f', exported], admin, 0), json(['diff', '-f', exported], admin, 0)]);
    assert.equal(same.stdout, '', 'no change: diff prints nothing');
    assert.equal(sameJson.final.changed, 0);
    const again = await json(['apply', '-f', exported], admin, 0);
    assert.ok(ofType(again.lines, 'apply').every((l) => l.action === 'unchanged'), JSON.stringify(again.lines));

    const changed = join(dir, 'changed.yaml');
    await writeFile(changed, siteText.replace('rpo: 24h', 'rpo: 12h'));
    const [diff, diffJson] = await Promise.all([human(['diff', '-f', changed], admin, 1), json(['diff', '-f', changed], admin, 1)]);
    assert.match(diff.stdout, /^-\s*rpo: 24h$/m);
    assert.match(diff.stdout, /^\+\s*rpo: 12h$/m);
    assert.doesNotMatch(diff.stderr, /^coffer:/m, 'changes found are an answer, not an error');
    assert.deepEqual([diffJson.final.type, diffJson.final.changed, diffJson.final.exitCode], ['summary', 1, 1]);
    assert.deepEqual(ofType(diffJson.lines, 'apply').map((l) => [l.id, l.fields]), [['Policy/web', ['spec.rpo']]]);
  });

  await t.test('a bad file: file:line:col, exit 2, nothing sent', async () => {
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, siteText.replace('"0 1 29 2 *" }\n  lifecycle: standard\n  rpo', '"0 1 32 2 *" }\n  lifecycle: standard\n  rpo'));
    const [r, j] = await Promise.all([human(['apply', '-f', bad], admin, 2), json(['apply', '-f', bad], admin, 2), json(['diff', '-f', bad], admin, 2)]);
    assert.match(r.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:22:\\d+: spec\\.schedules\\[0\\]\\.calendar`));
    assert.equal(j.final.code, 'INVALID_CONFIG');
  });

  await t.test('get: tables, -o wide, schedules, clients, jobs and images; delete', async () => {
    const [table, wide, docs, schedules, clients, unknown] = await Promise.all([
      human(['get', 'policies'], admin, 0),
      human(['get', 'policies', '-o', 'wide'], admin, 0),
      json(['get', 'policies'], admin, 0),
      json(['get', 'schedules', 'web'], admin, 0),
      json(['get', 'clients'], admin, 0),
      json(['get', 'widgets'], admin, 2),
    ]);
    assert.match(table.stdout, /^NAME\s+CLIENTS\s+SCHEDULES\s+LIFECYCLE\s+RPO\s+OWNER$/m);
    assert.match(table.stdout, /^web\s+/m);
    assert.match(wide.stdout, /PURPOSE/);
    assert.match(wide.stdout, /the web site/);
    assert.deepEqual(ofType(docs.lines, 'document').map((l) => l.document.metadata.name).sort(), ['slow', 'web']);
    assert.deepEqual(ofType(schedules.lines, 'schedule').map((l) => [l.schedule.policy, l.schedule.name]), [['web', 'leap']]);
    assert.deepEqual(ofType(clients.lines, 'client').map((l) => [l.client.name, l.client.connected]), [[client, true]]);
    await writeFile(join(dir, 'temp.yaml'), 'apiVersion: coffer/v1\nkind: Lifecycle\nmetadata: { name: temp }\nspec:\n  copies:\n    - { operation: backup, storageUnit: primary, retention: 1d }\n');
    await human(['apply', '-f', join(dir, 'temp.yaml')], admin, 0);
    const del = await json(['delete', 'lifecycle', 'temp'], admin, 0);
    assert.equal(del.final.deleted, 'Lifecycle/temp');
    await json(['get', 'lifecycle', 'temp'], admin, 1);
    assert.equal(unknown.final.code, 'USAGE');
    // Its history stays: applied, then deleted, each with who.
    const [hist, histText, rev1] = await Promise.all([
      json(['history', 'lifecycle', 'temp'], admin, 0),
      human(['history', 'lifecycle', 'temp'], admin, 0),
      human(['history', 'lifecycle', 'temp', '--revision', '1'], admin, 0),
    ]);
    assert.deepEqual(ofType(hist.lines, 'revision').map((l) => [l.revision.revision, l.revision.appliedBy, l.revision.document === undefined]).sort(), [[1, 'admin', false], [2, 'admin', true]]);
    assert.match(histText.stdout, /^REVISION\s+APPLIED\s+BY\s+CHANGE$/m);
    assert.match(rev1.stdout, /retention: 1d/);
    await json(['history', 'lifecycle', 'never-was'], admin, 1);
  });

  let jobId = '';
  let imageId = '';
  await t.test('backup now --wait, jobs list, show and logs, images and browse', async () => {
    const b = await json(['backup', 'now', '--policy', 'web', '--level', 'full', '--wait'], admin, 0);
    const job = b.final.jobs[0];
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    jobId = job.id;
    const [list, table, show, shown, logs, followed, images] = await Promise.all([
      json(['jobs', 'list', '--kind', 'backup'], admin, 0),
      human(['jobs', '--state', 'succeeded', '--kind', 'backup'], admin, 0),
      json(['jobs', 'show', jobId], admin, 0),
      human(['jobs', 'show', jobId], admin, 0),
      json(['jobs', 'logs', jobId], admin, 0),
      json(['jobs', 'logs', jobId, '--follow'], admin, 0),
      json(['images', '--client', client, '--since', '1h'], admin, 0),
    ]);
    assert.ok(ofType(list.lines, 'job').some((l) => l.job.id === jobId));
    assert.match(table.stdout, /^ID\s+KIND\s+STATE\s+CLIENT\s+POLICY\s+STARTED\s+DURATION\s+BYTES$/m);
    assert.match(table.stdout, new RegExp(`^${jobId}\\s+backup\\s+succeeded\\s+${client}\\s+web\\s`, 'm'));
    assert.equal(show.final.job.result.scannedBytes >= 300_000, true);
    assert.match(shown.stdout, /^State:\s+succeeded/m);
    assert.ok(ofType(logs.lines, 'log').length >= 1);
    assert.equal(logs.final.lines, ofType(logs.lines, 'log').length);
    assert.equal(followed.final.state, 'succeeded');
    assert.deepEqual(ofType(followed.lines, 'log').map((l) => l.seq), ofType(logs.lines, 'log').map((l) => l.seq), 'an ended job: its whole log, then the end');

    const image = ofType(images.lines, 'image').find((l) => l.image.jobId === jobId);
    assert.ok(image, JSON.stringify(images.lines));
    imageId = image.image.id;
    const [browse, ls] = await Promise.all([json(['browse', imageId, src], admin, 0), human(['browse', imageId, join(src, 'sub')], admin, 0)]);
    assert.deepEqual(ofType(browse.lines, 'browseEntry').map((l) => l.entry.name).sort(), ['index.html', 'sub']);
    assert.match(ls.stdout, /^file\s+293\.0 KiB\s.*data\.bin$/m);
    const [found, foundText] = await Promise.all([json(['find', '*.bin', '--client', client], admin, 0), human(['find', 'data.bin', '--client', client], admin, 0)]);
    assert.deepEqual(ofType(found.lines, 'found').map((l) => [l.image, l.path]), [[imageId, join(src, 'sub', 'data.bin')]]);
    assert.equal(found.final.matches, 1);
    assert.match(foundText.stdout, new RegExp(`^${imageId}\\s.*data\\.bin$`, 'm'));
  });

  await t.test('restore --wait into a directory: the same content; a failed restore exits 1, retry makes a new job', async () => {
    const to = join(dir, 'restored');
    const r = await json(['restore', imageId, '--to-client', client, '--to-path', to, '--wait'], admin, 0);
    assert.equal(r.final.jobs[0].state, 'succeeded');
    assert.equal(await readFile(join(to, src, 'index.html'), 'utf8'), '<h1>hello</h1>\n');
    assert.deepEqual(await readFile(join(to, src, 'sub', 'data.bin')), randomBytes(7, 300_000));
    // Into a path under a file: the job fails.
    const failed = await json(['restore', imageId, '--to-client', client, '--to-path', join(src, 'index.html', 'x'), '--wait'], admin, 1);
    assert.deepEqual([failed.final.type, failed.final.jobs[0].state], ['summary', 'failed']);
    const waited = await json(['jobs', 'wait', failed.final.jobs[0].id], admin, 1);
    assert.equal(waited.final.jobs[0].state, 'failed');
    const retry = await json(['jobs', 'retry', failed.final.jobs[0].id, '--wait'], admin, 1);
    assert.notEqual(retry.final.jobs[0].id, failed.final.jobs[0].id);
  });

  await t.test('hold and release (legal hold): every copy kept, released again; nothing to release is an error', async () => {
    const held = await json(['hold', imageId, '--reason', 'case 42'], admin, 0);
    assert.deepEqual([held.final.image, held.final.reason, held.final.copies], [imageId, 'case 42', 1]);
    const text = await human(['hold', imageId, '--reason', 'case 43'], admin, 0);
    assert.match(text.stdout, /1 copy held \(primary\): case 43/);
    const released = await json(['release', imageId], admin, 0);
    assert.equal(released.final.copies, 1);
    const again = await json(['release', imageId], admin, 1);
    assert.equal(again.final.code, 'CONFLICT');
    const cloned = await json(['clone', '--where', `client=${client} since=1h`, '--to', 'primary', '--dry-run'], admin, 0);
    assert.deepEqual([cloned.final.images, cloned.final.skipped, cloned.final.jobs], [0, 1, []]);
    const badWhere = await json(['clone', '--where', 'colour=blue', '--to', 'primary'], admin, 2);
    assert.match(String(badWhere.final.message), /Cannot filter on "colour"/);
    const noReason = await human(['hold', imageId], admin, 2);
    assert.match(noReason.stderr, /--reason/);
  });

  await t.test('jobs cancel: a running backup ends cancelled, and wait exits 130', async () => {
    const started = await json(['backup', 'now', '--policy', 'slow'], admin, 0);
    const id = started.final.jobs[0].id;
    const cancelled = await json(['jobs', 'cancel', id], admin, 0);
    assert.equal(cancelled.final.job.state, 'cancelled');
    const waited = await json(['jobs', 'wait', id], admin, 130);
    assert.equal(waited.final.exitCode, 130);
  });

  await t.test('users and roles: a restore operator is refused an ungranted client (exit 5), and the audit log shows it', async () => {
    const added = await json(['users', 'add', 'rita', '--role', 'restore', '--password-stdin', '--grant-client', 'some-other-host', '--grant-destination', '*'], admin, 0, 'rita password\n');
    assert.deepEqual([added.final.user.name, added.final.user.role], ['rita', 'restore']);
    const rita = { ...base, XDG_CONFIG_HOME: join(dir, 'config-rita') };
    await human(['login', '--server', url, '--user', 'rita', '--password-stdin'], rita, 0, 'rita password\n');
    const [denied, text, , users] = await Promise.all([
      json(['restore', imageId, '--to-client', client, '--to-path', join(dir, 'rita')], rita, 5),
      human(['images', '--client', client], rita, 5),
      human(['users', 'list'], rita, 5),
      json(['users', 'list'], admin, 0),
    ]);
    assert.equal(denied.final.code, 'FORBIDDEN');
    assert.match(text.stderr, /Not allowed/);
    assert.deepEqual(ofType(users.lines, 'user').map((l) => l.user.name).sort(), ['admin', 'rita']);
    const set = await json(['users', 'set', 'rita', '--grant-client', client], admin, 0);
    assert.deepEqual(set.final.user.grants.clients, [client]);
    const [audit, table] = await Promise.all([
      json(['audit', '--outcome', 'denied', '--action', 'restore.start', '--since', '1h'], admin, 0),
      human(['audit', '--actor', 'rita', '--limit', '5'], admin, 0),
    ]);
    assert.deepEqual(ofType(audit.lines, 'audit').map((l) => [l.entry.actor, l.entry.target]), [['rita', `image/${imageId}`]]);
    assert.match(table.stdout, /rita\s+restore\.start\s+image\/\S+\s+denied/);
    await json(['users', 'set', 'rita', '--disable'], admin, 0);
    await human(['images', '--client', client], rita, 4);
    const removed = await json(['users', 'remove', 'rita'], admin, 0);
    assert.equal(removed.final.deleted, 'rita');
  });

  await t.test('tokens: create prints the secret once, scripts use COFFER_SERVER and COFFER_TOKEN, a revoked token exits 4', async () => {
    const created = await json(['tokens', 'create', '--name', 'ci', '--role', 'auditor', '--expires', '1d'], admin, 0);
    const script = { ...base, XDG_CONFIG_HOME: join(dir, 'config-none'), COFFER_SERVER: url, COFFER_TOKEN: created.final.token };
    const [jobs, , list] = await Promise.all([
      human(['jobs', 'list', '--limit', '1'], script, 0),
      human(['apply', '-f', site], script, 5),
      json(['tokens', 'list'], admin, 0),
    ]);
    assert.match(jobs.stdout, /^ID\s+KIND/m);
    assert.ok(ofType(list.lines, 'token').some((l) => l.token.id === created.final.id && l.token.name === 'ci'));
    const revoked = await json(['tokens', 'revoke', created.final.id], admin, 0);
    assert.equal(revoked.final.revoked, created.final.id);
    const after = await json(['jobs', 'list'], script, 4);
    assert.equal(after.final.code, 'UNAUTHENTICATED');
  });

  await t.test('units: unavailable with a reason (shown in the list), available again; an unknown unit exits 1', async () => {
    const down = await json(['units', 'unavailable', 'primary', '--reason', 'disks offline'], admin, 0);
    assert.deepEqual([down.final.unit.name, down.final.unit.available, down.final.unit.reason, down.final.unit.by], ['primary', false, 'disks offline', 'admin']);
    const [list, text] = await Promise.all([json(['units', 'list'], admin, 0), human(['units'], admin, 0)]);
    assert.deepEqual(ofType(list.lines, 'unit').map((l) => [l.unit.name, l.unit.available]).sort(), [['default', true], ['primary', false]]);
    assert.deepEqual([list.final.units, list.final.unavailable], [2, 1]);
    assert.match(text.stdout, /^primary\s+0\s+no\s+no: disks offline/m);
    const up = await json(['units', 'available', 'primary'], admin, 0);
    assert.deepEqual([up.final.unit.available, up.final.changed], [true, true]);
    const again = await json(['units', 'available', 'primary'], admin, 0);
    assert.equal(again.final.changed, false);
    const unknown = await json(['units', 'unavailable', 'nope', '--reason', 'x'], admin, 1);
    assert.equal(unknown.final.code, 'NOT_FOUND');
  });

  await t.test('catalog reconcile, expire and lock-extend --wait; logout', async () => {
    const [rec, ex, lock] = await Promise.all([json(['catalog', 'reconcile', '--wait'], admin, 0), json(['expire', '--wait'], admin, 0), json(['lock-extend', '--wait'], admin, 0)]);
    assert.equal(rec.final.jobs[0].kind, 'reconcile');
    assert.equal(ex.final.jobs[0].kind, 'expire');
    assert.equal(lock.final.jobs[0].kind, 'lock-extend');
    assert.deepEqual(lock.final.jobs[0].result.units, [], 'no unit is immutable here');
    const notImmutable = await json(['lock-extend', '--unit', 'default'], admin, 2);
    assert.equal(notImmutable.final.code, 'USAGE');
    const out = await json(['logout'], admin, 0);
    assert.equal(out.final.loggedOut, true);
    await human(['jobs'], admin, 4);
  });

  await t.test('every server command ran here with --json and ended with its summary at least once', () => {
    for (const c of SERVER_COMMANDS) {
      assert.ok(COMMAND_OUTPUT[c], `${c} has no --json contract`);
      assert.ok(ran.has(c), `${c} was never run with --json in this file`);
      assert.ok(succeeded.has(c), `${c} never ended with a summary in this file`);
    }
  });
});
