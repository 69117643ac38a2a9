// Coffer across hosts: a server, two storage nodes and three agents, each a real process in its
// own network namespace with its own address (src/testing/netns.ts), talking mutual TLS. Every
// step goes through the real commands: `coffer server`, `node enroll|run`, `agent enroll|run`,
// and the API from inside the server's host (its API listens on that host's loopback only).
//
// Covered: enrollment and a backup from every agent; source-side deduplication (the second and
// third clients with the same files send almost nothing); a storage node killed mid-backup (the
// stream finishes on the other node); an agent's link cut mid-backup and restored (the job is
// retried and succeeds; nothing is committed twice or half: reconcile finds no snapshot the
// catalog does not know); a forged chunk from a compromised client (refused, logged, nothing
// committed); what an agent's credential cannot do (open another session, pass for another
// client); a cross-client restore without the grant (refused); a revoked agent (refused at once,
// its process stops with the reason).
//
// Needs root and iproute2, as CI has: without them each test fails saying what is missing.
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { randomBytes, textBytes } from '../src/testing/random.ts';
import { createNetwork, type HostProcess, type Network } from '../src/testing/netns.ts';

const MAIN = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');
const NODE = process.execPath;
const AGENT_PORT = 7481;
const DATA_PORT = 7482;
const PASSWORD = 'multi-host admin password';

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

/** Calls the API from inside the server's host: argv method, url, token, body (JSON or ''). */
const FETCH = `
const [method, url, token, body] = process.argv.slice(1);
fetch(url, { method, headers: { ...(token ? { authorization: 'Bearer ' + token } : {}), ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body } : {}) })
  .then(async (r) => { process.stdout.write(JSON.stringify({ status: r.status, body: await r.json().catch(() => null) })); })
  .catch((e) => { process.stdout.write(JSON.stringify({ status: 0, body: { message: e.message } })); });
`;

interface Site {
  net: Network;
  dir: string;
  server: HostProcess;
  token: string;
  procs: Map<string, HostProcess>;
  env: NodeJS.ProcessEnv;
  api(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: Json }>;
  waitJob(id: string, timeoutMs?: number): Promise<Json>;
  logs(id: string): Promise<string>;
  startNode(name: string): HostProcess;
  startAgent(name: string, host: string, extraEnv?: NodeJS.ProcessEnv): HostProcess;
  enroll(role: 'agent' | 'node', name: string, host: string): Promise<void>;
  report(): string;
}

async function site(t: { after(fn: () => unknown): void }): Promise<Site> {
  const net = await createNetwork({ hosts: ['server', 'node1', 'node2', 'agent1', 'agent2', 'agent3'] });
  t.after(() => net.destroy());
  const dir = join(tmpdir(), `coffer-multihost-${process.pid}-${Date.now()}`);
  await mkdir(dir, { recursive: true });
  t.after(() => rm(dir, { recursive: true, force: true }));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HOME: join(dir, 'home'),
    COFFER_AGENT_BACKOFF_MS: '200,1500',
    COFFER_JOB_RETRY_BASE_MS: '300',
    COFFER_AGENT_PING_MS: '700',
    COFFER_LOG_LEVEL: 'warn',
  };
  const server = net.spawn('server', NODE, [MAIN, 'server', '--data-dir', join(dir, 'server'), '--listen', '127.0.0.1:7480', '--agent-listen', `${net.address('server')}:${AGENT_PORT}`, '--workers', '1'], {
    env: { ...env, COFFER_ADMIN_PASSWORD: PASSWORD },
  });
  await net.waitForPort('server', AGENT_PORT, { timeoutMs: 60_000 });
  const procs = new Map<string, HostProcess>();
  const s: Site = {
    net, dir, server, token: '', procs, env,
    async api(method, path, body, token) {
      const r = await net.exec('server', NODE, ['-e', FETCH, method, `http://127.0.0.1:7480${path}`, token ?? s.token, body === undefined ? '' : JSON.stringify(body)]);
      return JSON.parse(r.stdout || '{"status":0}');
    },
    async waitJob(id, timeoutMs = 120_000) {
      for (const until = Date.now() + timeoutMs; ;) {
        const j = (await s.api('GET', `/api/v1/jobs/${id}`)).body;
        if (['succeeded', 'warnings', 'failed', 'cancelled', 'missed'].includes(j.state)) return j;
        if (Date.now() > until) assert.fail(`job ${id} did not end in ${timeoutMs} ms: ${JSON.stringify(j)}\n${await s.logs(id)}\n${s.report()}`);
        await new Promise((r) => setTimeout(r, 300));
      }
    },
    async logs(id) {
      return ((await s.api('GET', `/api/v1/jobs/${id}/logs?limit=1000`)).body?.items ?? []).map((l: Json) => `${l.level}: ${l.message}`).join('\n');
    },
    async enroll(role, name, host) {
      const e = await s.api('POST', `/api/v1/${role === 'agent' ? 'clients' : 'nodes'}/${name}/enrollment`, {});
      assert.equal(e.status, 201, JSON.stringify(e.body));
      const r = await net.exec(host, NODE, [MAIN, role, 'enroll', '--server', `${net.address('server')}:${AGENT_PORT}`, '--token', e.body.token, '--ca-fingerprint', e.body.caFingerprint, '--state-dir', join(dir, `${name}-state`)], { env, timeoutMs: 60_000 });
      assert.equal(r.code, 0, `${role} enroll ${name}: ${r.stdout}${r.stderr}`);
    },
    startNode(name) {
      const p = net.spawn(name, NODE, [MAIN, 'node', 'run', '--state-dir', join(dir, `${name}-state`), '--workers', '1', '--data-listen', `${net.address(name)}:${DATA_PORT}`], { env });
      procs.set(name, p);
      return p;
    },
    startAgent(name, host, extraEnv = {}) {
      const p = net.spawn(host, NODE, [MAIN, 'agent', 'run', '--state-dir', join(dir, `${name}-state`), '--workers', '1'], { env: { ...env, ...extraEnv } });
      procs.set(name, p);
      return p;
    },
    report: () => net.report(),
  };
  for (const until = Date.now() + 30_000; !s.token; await new Promise((r) => setTimeout(r, 300))) {
    const login = await s.api('POST', '/api/v1/login', { user: 'admin', password: PASSWORD }, '');
    if (login.status === 200) s.token = login.body.token;
    else if (Date.now() > until) assert.fail(`cannot log in: ${JSON.stringify(login)}\n${server.output()}`);
  }
  return s;
}

/** Waits until the server lists these agents and nodes as connected. */
async function connected(s: Site, clients: string[], nodes: string[]): Promise<void> {
  for (const until = Date.now() + 60_000; ;) {
    const c = (await s.api('GET', '/api/v1/clients?limit=100')).body.items as Json[];
    const n = (await s.api('GET', '/api/v1/nodes')).body as Json;
    const nodeList = (Array.isArray(n) ? n : n.items ?? n.nodes ?? []) as Json[];
    const okClients = clients.every((name) => c.some((x) => x.name === name && x.connected));
    const okNodes = nodes.every((name) => nodeList.some((x) => x.name === name && x.connected));
    if (okClients && okNodes) return;
    if (Date.now() > until) assert.fail(`not connected in time: clients ${JSON.stringify(c)} nodes ${JSON.stringify(n)}\n${s.report()}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function backup(s: Site, policy: string, client: string): Promise<Json> {
  const r = await s.api('POST', '/api/v1/backups', { policy, client, level: 'full' });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.jobs[0].id;
}

/** The reconcile job's report: snapshots in storage that the catalog does not know, per unit. */
async function unknownSnapshots(s: Site): Promise<Json[]> {
  const r = await s.api('POST', '/api/v1/catalog/reconcile', {});
  assert.equal(r.status, 202, JSON.stringify(r.body));
  const j = await s.waitJob(r.body.id);
  assert.equal(j.state, 'succeeded', JSON.stringify(j));
  return (j.result.units as Json[]).flatMap((u) => u.unknown);
}

test('a server, two storage nodes and three agents on their own hosts: enrollment, source-side dedup, a node killed and a link cut mid-backup, forged chunks, revocation', async (t) => {
  const s = await site(t);
  const { net, dir } = s;
  try {
    // Enrollment: two nodes and three agents, each enrolled on its own host with a one-time token.
    for (const n of ['node1', 'node2']) {
      await s.enroll('node', n, n);
      s.startNode(n);
    }
    for (const a of ['agent1', 'agent2', 'agent3']) {
      await s.enroll('agent', a, a);
      s.startAgent(a, a);
    }
    await connected(s, ['agent1', 'agent2', 'agent3'], ['node1', 'node2']);

    // The same files on every client (the hosts share one file system: each reads the same tree).
    const common = join(dir, 'common');
    await mkdir(join(common, 'etc'), { recursive: true });
    for (let i = 0; i < 8; i++) await writeFile(join(common, `data${i}.bin`), randomBytes(100 + i, 600_000));
    for (let i = 0; i < 20; i++) await writeFile(join(common, 'etc', `conf${i}.txt`), textBytes(200 + i, 5_000));
    const big = join(dir, 'big');
    await mkdir(big);
    for (let i = 0; i < 8; i++) await writeFile(join(big, `part${i}.bin`), randomBytes(300 + i, 4_000_000));
    const unit = join(dir, 'shared-unit');
    const apply = await s.api('POST', '/api/v1/apply', { documents: [
      // One unit on storage both nodes reach (as S3 would be), slowed so that kills land mid-job.
      { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'shared' }, spec: { url: unit, nodes: ['node1', 'node2'], bandwidth: '6MB/s' } },
      { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'keep' }, spec: { copies: [{ operation: 'backup', storageUnit: 'shared', retention: '30d' }] } },
      { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'files' }, spec: { clients: ['agent1', 'agent2', 'agent3'], selections: [{ paths: [common] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'keep' } },
      { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'big' }, spec: { clients: ['agent3'], selections: [{ paths: [big] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'keep' } },
    ] });
    assert.equal(apply.status, 200, JSON.stringify(apply.body));

    // A backup from every agent; the first sends its data, the others almost nothing.
    const first = await s.waitJob(await backup(s, 'files', 'agent1'));
    assert.equal(first.state, 'succeeded', JSON.stringify(first) + await s.logs(first.id) + s.report());
    const scanned = first.result.scannedBytes as number;
    assert.ok(scanned > 4_800_000, JSON.stringify(first.result));
    assert.ok(first.result.sentBytes > 0.9 * 4_800_000, `agent1 sent its new data: ${JSON.stringify(first.result)}`);
    const others = await Promise.all(['agent2', 'agent3'].map(async (a) => s.waitJob(await backup(s, 'files', a))));
    for (const j of others) {
      assert.equal(j.state, 'succeeded', JSON.stringify(j) + await s.logs(j.id));
      assert.ok(j.result.sentBytes < 0.02 * scanned, `${j.client} sent ${j.result.sentBytes} bytes for ${j.result.scannedBytes} scanned: only what the nodes lacked`);
    }

    // A storage node killed mid-backup: the stream moves to the other node and finishes there.
    const killJob = await backup(s, 'big', 'agent3');
    let victim: string | undefined;
    for (const until = Date.now() + 60_000; !victim; await new Promise((r) => setTimeout(r, 200))) {
      const m = /storage node (node[12]) \(/.exec(await s.logs(killJob));
      if (m) victim = m[1];
      else if (Date.now() > until) assert.fail(`the big backup never reached a node: ${await s.logs(killJob)}`);
    }
    await new Promise((r) => setTimeout(r, 1500)); // some chunks have arrived there
    await net.kill(s.procs.get(victim!)!);
    const afterKill = await s.waitJob(killJob);
    const killLogs = await s.logs(killJob);
    assert.equal(afterKill.state, 'succeeded', JSON.stringify(afterKill) + killLogs);
    const survivor = victim === 'node1' ? 'node2' : 'node1';
    assert.match(killLogs, new RegExp(`storage node ${victim} failed this stream`), killLogs);
    assert.match(killLogs, new RegExp(`storage node ${survivor} \\(`), killLogs);
    s.startNode(victim!);
    await connected(s, [], [victim!]);

    // agent3's link cut mid-backup, then restored: the job is retried and succeeds.
    await writeFile(join(big, 'part-new.bin'), randomBytes(999, 8_000_000));
    const cutJob = await backup(s, 'big', 'agent3');
    for (const until = Date.now() + 60_000; !/takes client agent3's stream/.test(await s.logs(cutJob)); await new Promise((r) => setTimeout(r, 200))) {
      if (Date.now() > until) assert.fail(`the second big backup never started: ${await s.logs(cutJob)}`);
    }
    await new Promise((r) => setTimeout(r, 800));
    await net.linkDown('agent3');
    await new Promise((r) => setTimeout(r, 4000)); // the server misses its pongs and drops the link
    await net.linkUp('agent3');
    const afterCut = await s.waitJob(cutJob, 180_000);
    assert.equal(afterCut.state, 'succeeded', JSON.stringify(afterCut) + await s.logs(cutJob) + s.report());
    assert.ok(afterCut.attempt >= 2, `the job ran again after the cut (attempt ${afterCut.attempt}): ${await s.logs(cutJob)}`);
    const images = (await s.api('GET', '/api/v1/images?client=agent3&limit=100')).body.items as Json[];
    const okBig = images.filter((i) => i.policy === 'big' && i.state === 'ok');
    assert.equal(okBig.length, 2, `one ok image per big backup: ${JSON.stringify(images)}`);

    // A compromised client sends a forged chunk: refused, logged with its name, nothing committed.
    await s.enroll('agent', 'rogue', 'agent1');
    s.startAgent('rogue', 'agent1', { COFFER_TEST_FORGE_CHUNK: '1' });
    await connected(s, ['rogue'], []);
    const rogueData = join(dir, 'rogue');
    await mkdir(rogueData);
    await writeFile(join(rogueData, 'payload.bin'), randomBytes(4242, 500_000));
    const rp = await s.api('POST', '/api/v1/apply', { documents: [
      { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'rogue' }, spec: { clients: ['rogue'], selections: [{ paths: [rogueData] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'keep' } },
    ] });
    assert.equal(rp.status, 200, JSON.stringify(rp.body));
    const forged = await s.waitJob(await backup(s, 'rogue', 'rogue'));
    const forgedLogs = await s.logs(forged.id);
    assert.equal(forged.state, 'failed', JSON.stringify(forged) + forgedLogs);
    assert.match(forgedLogs, /forged chunk from client rogue/, forgedLogs);
    // Nothing in storage the catalog does not know: no half-committed or doubled snapshot from
    // the killed node, the cut link, or the forgery.
    assert.deepEqual(await unknownSnapshots(s), []);

    // A restore flows from a node to the agent, which holds no repository key.
    const restoreTo = join(dir, 'restored1');
    const rs = await s.api('POST', '/api/v1/restores', { image: first.result.image, toClient: 'agent1', toPath: restoreTo });
    assert.equal(rs.status, 202, JSON.stringify(rs.body));
    const restored = await s.waitJob(rs.body.id);
    const restoreLogs = await s.logs(restored.id);
    assert.equal(restored.state, 'succeeded', JSON.stringify(restored) + restoreLogs);
    assert.match(restoreLogs, /storage node node[12] \(.*\) serves the restore from unit shared to client agent1/, restoreLogs);
    for (const f of ['data3.bin', 'etc/conf7.txt']) assert.deepEqual(await readFile(join(restoreTo, common, f)), await readFile(join(common, f)));

    // What an agent's credential cannot do: pass for another client, or open a session it was not given.
    const spoof = await net.exec('agent1', NODE, [MAIN, 'agent', 'run', '--state-dir', join(dir, 'agent1-state'), '--name', 'agent2', '--workers', '1'], { env: s.env, timeoutMs: 60_000 });
    assert.notEqual(spoof.code, 0);
    assert.match(spoof.stderr, /agent2|name/i, spoof.stderr);

    // A cross-client restore by a restore operator granted agent1 only: refused.
    const user = await s.api('POST', '/api/v1/users', { name: 'ops', role: 'restore', password: 'ops password', grants: { clients: ['agent1'], destinations: [{ client: 'agent1', paths: ['/tmp'] }] } });
    assert.equal(user.status, 201, JSON.stringify(user.body));
    const ops = (await s.api('POST', '/api/v1/login', { user: 'ops', password: 'ops password' }, '')).body.token as string;
    const image1 = first.result.image as string;
    const cross = await s.api('POST', '/api/v1/restores', { image: image1, toClient: 'agent3', toPath: '/tmp/x' }, ops);
    assert.equal(cross.status, 403, JSON.stringify(cross.body));

    // A revoked agent is refused at once: its live connection closes and its process stops with the reason.
    const revoke = await s.api('POST', '/api/v1/clients/agent2/revoke', {});
    assert.equal(revoke.status, 200, JSON.stringify(revoke.body));
    const agent2 = s.procs.get('agent2')!;
    const exit = await Promise.race([agent2.exited, new Promise<'alive'>((r) => setTimeout(() => r('alive'), 30_000))]);
    assert.notEqual(exit, 'alive', `agent2 still runs after its revocation:\n${agent2.output()}`);
    assert.notEqual((exit as { code: number | null }).code, 0);
    assert.match(agent2.output(), /revoked/i, agent2.output());
    const clients = (await s.api('GET', '/api/v1/clients?limit=100')).body.items as Json[];
    assert.equal(clients.find((c) => c.name === 'agent2')?.connected, false, JSON.stringify(clients));
  } catch (e) {
    (e as Error).message += `\n${s.report()}`;
    throw e;
  }
});
