// Verification and automatic repair end to end (issue 10, "Verification"), on a real server with
// two storage units and a lifecycle that duplicates every backup: a verify of a sound unit
// changes nothing; one byte flipped on disk in a pack of the primary unit is found by the next
// verify, which names the file it damaged, marks the copy suspect and raises an alert; the repair
// job runs by itself, copies the lost data back from the offsite copy and resolves the alert; the
// next verify is clean and a restore from the primary gives the files back byte for byte. An image
// with no other copy stays suspect and its alert says so. Then the schedule: on the server's clock,
// `verify: { every: 1d, period: 2d }` reads half of the packs a day, all of them in two days.
// The CLI's `verify` and `alerts` run here with --json, checked against docs/json.md.
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { checkJsonOutput } from '../src/cli/json-schema.ts';
import { toHex, fromHex } from '../src/engine/hash.ts';
import { packName } from '../src/repository/layout.ts';
import { Repository } from '../src/repository/repository.ts';
import { loadSnapshot } from '../src/repository/snapshot.ts';
import { walkTree } from '../src/repository/walk.ts';
import { startTestServer, TEST_ADMIN_PASSWORD, type TestServer } from '../src/server/test-server.ts';
import { openBackend } from '../src/storage/url.ts';
import { FakeClock } from '../src/testing/fake-clock.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { commandOf, runCli } from './cli.ts';
import { waitUntil } from './server-process.ts';
import { VERIFY_COMMANDS } from './server-commands.ts';

type Json = Record<string, any>;
const ran = new Set<string>();

async function json(args: string[], env: Record<string, string>, expectCode: number): Promise<Json[]> {
  const r = await runCli(['--json', ...args], { env });
  const command = commandOf(args)!;
  const lines = checkJsonOutput(command, r.stdout, r.code) as Json[];
  assert.equal(r.stderr, '', `coffer --json ${args.join(' ')} wrote on stderr`);
  assert.equal(r.code, expectCode, `coffer --json ${args.join(' ')}: ${r.stdout.slice(-2000)}`);
  if (lines.at(-1)!.type === 'summary') ran.add(command);
  return lines;
}

/** Where the first chunk of `path` (a file of the image's snapshot) lies in the unit's storage. */
async function chunkOf(ts: TestServer, unit: string, snapshot: string, path: string): Promise<{ file: string; offset: number; length: number }> {
  const access = await ts.server.services.storageAccess(unit);
  const backend = await openBackend(access.url);
  const repo = await Repository.open(backend, access.password, { noCache: true });
  try {
    await repo.loadIndex();
    const snap = await loadSnapshot(repo, snapshot);
    let blob: string | undefined;
    await walkTree(repo, snap.tree, { node: (p, n) => void (p === path && (blob = n.content?.[0])) });
    assert.ok(blob, `${path} is in snapshot ${snapshot}`);
    const hit = repo.locate('data', fromHex(blob!))!;
    return { file: join(access.url, packName(toHex(hit.packId))), offset: hit.entry.offset, length: hit.entry.length };
  } finally {
    await repo.close();
    await backend.close();
  }
}

/** Flips one byte in the middle of a stored chunk, on disk. */
async function flipByte(where: { file: string; offset: number; length: number }): Promise<void> {
  const bytes = await readFile(where.file);
  bytes[where.offset + (where.length >> 1)]! ^= 0x01;
  await writeFile(where.file, bytes);
}

/** Every file of a repository directory with its content, but the session objects (a check's own). */
async function snapshotOfStorage(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (r === 'sessions') continue;
      if (e.isDirectory()) await walk(join(d, e.name), r);
      else out.set(r, (await readFile(join(d, e.name))).toString('base64'));
    }
  };
  await walk(dir, '');
  return out;
}

const jobs = async (ts: TestServer, kind: string) => (await ts.api<Json>('GET', '/api/v1/jobs', { query: { kind } })).body.items as Json[];
const copiesOf = async (ts: TestServer, image: string) => (await ts.api<Json>('GET', `/api/v1/images/${image}`)).body.copies as Json[];
const stateIn = (copies: Json[], unit: string) => copies.find((c) => c.storageUnit === unit)?.state;

test('verify finds a flipped byte, names the file, marks the copy suspect and alerts; the repair from the good copy runs by itself; the next verify is clean and the restore byte-identical', async (t) => {
  const dir = await tempDir(t);
  const ts = await startTestServer(t);
  const client = ts.server.clientName;
  const env = { COFFER_SERVER: ts.url, COFFER_TOKEN: ts.adminToken, XDG_CONFIG_HOME: join(dir, 'config') };
  const primary = join(dir, 'primary');
  const offsite = join(dir, 'offsite');
  // Two sets of files: `gold` is duplicated offsite, `lone` lives in primary only.
  const gold = join(dir, 'gold');
  const lone = join(dir, 'lone');
  await mkdir(join(gold, 'sub'), { recursive: true });
  await mkdir(lone);
  const goldFiles: Record<string, Buffer> = {};
  for (let i = 0; i < 5; i++) goldFiles[`f${i}.bin`] = randomBytes(100 + i, 300_000 + i * 1000);
  goldFiles['sub/ledger.bin'] = randomBytes(200, 900_000);
  goldFiles['sub/notes.txt'] = Buffer.from('the notes\n');
  for (const [name, data] of Object.entries(goldFiles)) await writeFile(join(gold, name), data);
  await writeFile(join(lone, 'only.bin'), randomBytes(300, 500_000));

  const docs = [
    { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'primary' }, spec: { url: primary } },
    { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'offsite' }, spec: { url: offsite, offsite: true } },
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'two' }, spec: { copies: [{ operation: 'backup', storageUnit: 'primary', retention: '14d' }, { operation: 'duplicate', storageUnit: 'offsite', retention: '1y' }] } },
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'one' }, spec: { copies: [{ operation: 'backup', storageUnit: 'primary', retention: '14d' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'gold' }, spec: { clients: [client], selections: [{ paths: [gold] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'two' } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'lone' }, spec: { clients: [client], selections: [{ paths: [lone] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'one' } },
  ];
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: docs } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  for (const policy of ['gold', 'lone']) {
    const b: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy } })).body.jobs[0].id);
    assert.equal(b.state, 'succeeded', JSON.stringify(b));
  }
  const dup: Json = await ts.waitJob((await jobs(ts, 'duplicate'))[0]!.id);
  assert.equal(dup.state, 'succeeded', JSON.stringify(dup));
  const image = (await ts.api<Json>('GET', '/api/v1/images', { query: { policy: 'gold' } })).body.items[0];
  const loneImage = (await ts.api<Json>('GET', '/api/v1/images', { query: { policy: 'lone' } })).body.items[0];
  const snapshot = Object.values(image.streams)[0] as string;

  await t.test('a verify of a sound unit changes nothing', async () => {
    const before = await snapshotOfStorage(primary);
    const copiesBefore = await copiesOf(ts, image.id);
    const lines = await json(['verify', '--unit', 'primary', '--all', '--wait'], env, 0);
    const job = lines.at(-1)!.jobs[0];
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.ok(job.result.packsRead > 0 && job.result.packsRead === job.result.packs, JSON.stringify(job.result));
    assert.deepEqual([job.result.damagedPacks, job.result.affectedFiles, job.result.slicePercent], [0, 0, 100]);
    assert.deepEqual(await copiesOf(ts, image.id), copiesBefore, 'no copy changed');
    assert.deepEqual((await ts.api<Json>('GET', '/api/v1/alerts', { query: { state: 'all' } })).body.items, []);
    assert.deepEqual(await jobs(ts, 'repair'), []);
    const after = await snapshotOfStorage(primary);
    assert.deepEqual([...after.keys()].sort(), [...before.keys()].sort(), 'no object written or removed');
    for (const [k, v] of before) assert.equal(after.get(k), v, `${k} changed`);
  });

  const ledger = `${gold}/sub/ledger.bin`;
  await t.test('one byte flipped in a pack of the primary: verify names the file, marks the copy suspect, alerts, and the repair runs by itself', async () => {
    await flipByte(await chunkOf(ts, 'primary', snapshot, ledger));
    const lines = await json(['verify', '--unit', 'primary', '--wait'], env, 3);
    const job = lines.at(-1)!.jobs[0];
    assert.equal(job.state, 'warnings', JSON.stringify(job));
    assert.deepEqual([job.result.damagedPacks, job.result.affectedFiles, job.result.suspect], [1, 1, 1], JSON.stringify(job.result));
    // The alert: the image, the file, and where the repair comes from.
    const alert = (await ts.api<Json>('GET', '/api/v1/alerts', { query: { state: 'all' } })).body.items.find((a: Json) => a.id === job.result.alert);
    assert.ok(alert, 'an alert was raised');
    assert.deepEqual([alert.kind, alert.severity, alert.storageUnit, alert.images], ['damage', 'error', 'primary', [image.id]]);
    assert.match(alert.message, new RegExp(`image ${image.id}.*${ledger.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
    assert.deepEqual(alert.details.copies.map((c: Json) => [c.image, c.files, c.goodCopy]), [[image.id, [ledger], 'offsite']]);
    assert.match(alert.hint, /offsite/);
    const vlog = (await ts.api<Json>('GET', `/api/v1/jobs/${job.id}/logs`)).body.items.map((l: Json) => l.message).join('\n');
    assert.match(vlog, /damaged/);
    // Marked suspect at once; the repair job was queued by the verify and runs by itself.
    assert.ok(job.result.repairJob);
    const repair: Json = await ts.waitJob(job.result.repairJob);
    assert.equal(repair.state, 'succeeded', JSON.stringify(repair));
    assert.deepEqual([repair.result.packs, repair.result.repaired.map((r: Json) => [r.image, r.from]), repair.result.unrepaired], [1, [[image.id, 'offsite']], []]);
    assert.ok(repair.result.repaired[0].blobsSent >= 1, 'the lost chunk was copied back');
    const rlog = (await ts.api<Json>('GET', `/api/v1/jobs/${repair.id}/logs`)).body.items.map((l: Json) => l.message).join('\n');
    assert.match(rlog, new RegExp(`image ${image.id}: \\d+ blobs? \\(\\d+ bytes\\) copied back into primary from its copy in offsite`), rlog);
    assert.deepEqual((await copiesOf(ts, image.id)).map((c) => [c.storageUnit, c.state]).sort(), [['offsite', 'ok'], ['primary', 'ok']]);
    assert.equal(stateIn(await copiesOf(ts, loneImage.id), 'primary'), 'ok', 'the image the damage did not touch stays ok');
    const resolved = (await ts.api<Json>('GET', '/api/v1/alerts', { query: { state: 'resolved' } })).body.items;
    assert.deepEqual(resolved.map((a: Json) => a.id), [alert.id]);
    assert.match(resolved[0].resolution, new RegExp(`repaired by job ${repair.id}: image ${image.id} from offsite`));
    assert.deepEqual((await ts.api<Json>('GET', '/api/v1/alerts')).body.items, [], 'nothing is left open');
    // The snapshot ids stay: the copy's record still points at the same snapshots.
    assert.deepEqual(stateIn(await copiesOf(ts, image.id), 'primary') && (await copiesOf(ts, image.id)).find((c) => c.storageUnit === 'primary')!.snapshots, image.streams);
  });

  await t.test('the next verify is clean, and a restore from the primary gives every file back byte for byte', async () => {
    const v: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/verify', { body: { unit: 'primary', all: true } })).body.id);
    assert.equal(v.state, 'succeeded', JSON.stringify(v));
    assert.deepEqual([v.result.damagedPacks, v.result.affectedFiles], [0, 0]);
    assert.equal(v.result.packsRead, v.result.packs);
    const to = join(dir, 'restored');
    const r: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/restores', { body: { image: image.id, toClient: client, toPath: to } })).body.id);
    assert.equal(r.state, 'succeeded', JSON.stringify(r));
    assert.deepEqual(r.result.copies, ['primary'], 'restored from the repaired copy alone');
    for (const [name, data] of Object.entries(goldFiles)) assert.deepEqual(await readFile(join(to, gold, name)), data, name);
  });

  await t.test('an image with no good copy elsewhere stays suspect, and its alert says so; an operator acknowledges it', async () => {
    const only = `${lone}/only.bin`;
    await flipByte(await chunkOf(ts, 'primary', Object.values(loneImage.streams)[0] as string, only));
    // One image's copy: only its packs are read.
    const lines = await json(['verify', '--unit', 'primary', '--image', loneImage.id, '--wait'], env, 3);
    const job = lines.at(-1)!.jobs[0];
    assert.ok(job.result.packsRead < job.result.packs, JSON.stringify(job.result));
    assert.deepEqual([job.result.affectedFiles, job.result.suspect, job.result.repairJob], [1, 1, undefined], JSON.stringify(job.result));
    assert.equal(stateIn(await copiesOf(ts, loneImage.id), 'primary'), 'suspect');
    assert.equal(stateIn(await copiesOf(ts, image.id), 'primary'), 'ok');
    assert.equal((await jobs(ts, 'repair')).length, 1, 'no repair queued: there is nothing to repair from');
    const listed = await json(['alerts', 'list'], env, 0);
    const alerts = listed.filter((l) => l.type === 'alert').map((l) => l.alert);
    assert.equal(alerts.length, 1);
    assert.deepEqual([alerts[0].state, alerts[0].images], ['open', [loneImage.id]]);
    assert.match(alerts[0].message, new RegExp(`${only.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
    assert.match(alerts[0].hint, /No good copy in another storage unit: image \S+; its copy in primary stays suspect.*coffer repo repair snapshots/);
    const text = await runCli(['alerts'], { env });
    assert.equal(text.code, 0);
    assert.match(text.stdout, /ERROR\s+open/);
    const acked = await json(['alerts', 'ack', alerts[0].id], env, 0);
    assert.deepEqual([acked.at(-1)!.alert.state, acked.at(-1)!.alert.resolvedBy], ['acknowledged', 'admin']);
    assert.equal((await json(['alerts', 'list', '--all'], env, 0)).filter((l) => l.type === 'alert').length, 2);
    const audit = (await ts.api<Json>('GET', '/api/v1/audit', { query: { action: 'alert.ack' } })).body.items;
    assert.deepEqual(audit.map((a: Json) => [a.actor, a.target, a.outcome]), [['admin', `alert/${alerts[0].id}`, 'ok']]);
    const missing = await json(['alerts', 'ack', 'no-such-alert'], env, 1);
    assert.equal(missing.at(-1)!.code, 'NOT_FOUND');
  });

  await t.test('bad requests: a unit that does not exist, --all with --subset, a share out of range, an image without a copy there', async () => {
    const noUnit = await json(['verify', '--unit', 'nowhere'], env, 1);
    assert.equal(noUnit.at(-1)!.code, 'NOT_FOUND');
    const both = await json(['verify', '--unit', 'primary', '--all', '--subset', '5%'], env, 2);
    assert.match(both.at(-1)!.message, /either --all or --subset/);
    const share = await json(['verify', '--unit', 'primary', '--subset', '150%'], env, 2);
    assert.match(share.at(-1)!.message, /between 0% and 100%/);
    const noCopy = await json(['verify', '--unit', 'offsite', '--image', loneImage.id], env, 1);
    assert.match(noCopy.at(-1)!.message, /no copy there/);
    const api = await ts.api<Json>('POST', '/api/v1/verify', { body: { unit: 'primary', subsetPercent: 0 } });
    assert.equal(api.status, 400);
  });

  await t.test('the CLI commands of verification ran with --json and ended with their summary', () => {
    for (const c of VERIFY_COMMANDS) assert.ok(ran.has(c), `${c} never ended with a summary here`);
  });
});

test('a unit\'s verify schedule, on the server clock: every 1d over a period of 2d reads half of the packs a day and every pack in two days', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  for (let i = 0; i < 10; i++) await writeFile(join(src, `f${i}.bin`), randomBytes(500 + i, 200_000));
  const T0 = Date.UTC(2030, 0, 7, 0, 0);
  const DAY = 86_400_000;
  const clock = new FakeClock(T0);
  const ts = await startTestServer(t, { clock, timezone: 'UTC' });
  const unitDir = join(dir, 'checked');
  const unit = (verify: Json) => ({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'checked' }, spec: { url: unitDir, verify } });
  // Refused with what is wrong and what to write instead.
  const bad = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [unit({ every: '1d', period: '12h' })] } });
  assert.equal(bad.status, 422, JSON.stringify(bad.body));
  assert.match(JSON.stringify(bad.body), /period.*shorter than every \(1d\)/);
  const bad2 = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [unit({ every: 'daily' })] } });
  assert.equal(bad2.status, 422);
  assert.match(JSON.stringify(bad2.body), /every/);
  const applied = await ts.api<Json>('POST', '/api/v1/apply', {
    body: {
      documents: [
        unit({ every: '1d', period: '2d' }),
        { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'l' }, spec: { copies: [{ operation: 'backup', storageUnit: 'checked', retention: '7d' }] } },
        { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'p' }, spec: { clients: [ts.server.clientName], selections: [{ paths: [src] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'l' } },
      ],
    },
  });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  // The first run at once (the unit is still empty).
  await waitUntil('the first scheduled verify', async () => (await jobs(ts, 'verify')).length === 1);
  const first: Json = await ts.waitJob((await jobs(ts, 'verify'))[0]!.id);
  assert.equal(first.state, 'succeeded', JSON.stringify(first));
  assert.equal(first.result.slicePercent, 50);
  // Several backups, each with a new file: several packs.
  for (let i = 0; i < 6; i++) {
    await writeFile(join(src, `new${i}.bin`), randomBytes(900 + i, 100_000));
    const b: Json = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'p' } })).body.jobs[0].id);
    assert.equal(b.state, 'succeeded', JSON.stringify(b));
  }

  const runs: Json[] = [];
  for (const day of [1, 2]) {
    await clock.runUntil(T0 + day * DAY + 60_000);
    // A day later the login session has expired: log in again.
    ts.adminToken = await ts.login('admin', TEST_ADMIN_PASSWORD);
    await waitUntil(`the scheduled verify of day ${day}`, async () => (await jobs(ts, 'verify')).length === day + 1);
    const job: Json = await ts.waitJob((await jobs(ts, 'verify'))[0]!.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.equal(job.requestedBy, 'server');
    assert.equal(job.result.slicePercent, 50);
    runs.push(job.result);
  }
  // Two halves of the pack-id space: every pack read once, none twice.
  assert.ok(runs[0]!.packs >= 6, JSON.stringify(runs));
  assert.equal(runs[0]!.packs, runs[1]!.packs);
  assert.equal(runs[0]!.packsRead + runs[1]!.packsRead, runs[0]!.packs, JSON.stringify(runs));
});
