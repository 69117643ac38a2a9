// Remote agents and storage nodes over mutual TLS (docs/server.md "Remote agents and storage
// nodes"): a real server in this process with its agent port on loopback, and real `coffer agent`
// and `coffer node` processes that enroll with one-time tokens, connect out, run a real backup
// through the server's executors, renew their certificates, reconnect after the server restarts,
// and stop for good when revoked. Every CLI command of the slice runs here with --json and is
// checked against docs/json.md's contract.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { checkJsonOutput } from '../src/cli/json-schema.ts';
import { apiNeedsTls } from '../src/server/pki-server.ts';
import { hashEnrollmentToken } from '../src/server/agent-port.ts';
import { CertificateAuthority } from '../src/server/ca.ts';
import { certificateInfo, normalizeFingerprint } from '../src/agent/pki.ts';
import { connectToNode } from '../src/agent/data-port.ts';
import { readRemoteState } from '../src/agent/remote.ts';
import { startTestServer, TEST_ADMIN_PASSWORD, type TestServer } from '../src/server/test-server.ts';
import { freePort } from '../src/testing/ports.ts';
import { MAIN, runCli } from './cli.ts';
import { PKI_COMMANDS } from './server-commands.ts';
import { waitUntil } from './server-process.ts';

type Json = any;
const ran = new Set<string>();
const succeeded = new Set<string>();

async function tempDir(t: { after(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'coffer-pki-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `coffer --json ARGS` with the contract checked; the command's exit code must be `code`. */
async function json(args: string[], env: Record<string, string>, code: number): Promise<Json> {
  const r = await runCli(['--json', ...args], { env });
  const command = PKI_COMMANDS.find((c) => args.join(' ').startsWith(c)) ?? (args[0] === 'login' ? undefined : args.slice(0, 2).join(' '));
  const lines = checkJsonOutput(args[0] === 'login' ? 'login' : command, r.stdout, r.code);
  assert.equal(r.code, code, `coffer --json ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  if (command) {
    ran.add(command);
    if (lines.at(-1)!.type === 'summary') succeeded.add(command);
  }
  return lines.at(-1);
}

/** The CLI as an admin of this server (COFFER_SERVER + COFFER_TOKEN). */
const adminEnv = (ts: TestServer) => ({ COFFER_SERVER: ts.url, COFFER_TOKEN: ts.adminToken });

interface AgentProcess {
  child: ChildProcess;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `coffer ROLE run --state-dir DIR` as a child process, stopped at the end of the test. */
function runAgent(t: { after(fn: () => unknown): void }, role: 'agent' | 'node', stateDir: string, extra: string[] = []): AgentProcess {
  const child = spawn(process.execPath, [MAIN, role, 'run', '--state-dir', stateDir, '--workers', '1', ...extra], {
    env: { ...process.env, COFFER_AGENT_BACKOFF_MS: '200,1000' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { child, stderr: () => stderr, exited };
}

test('the decision to serve the API over HTTPS: beyond loopback only', () => {
  for (const h of ['127.0.0.1', '127.0.0.2', 'localhost', '::1', '[::1]']) assert.equal(apiNeedsTls(h), false, h);
  for (const h of ['0.0.0.0', '::', '10.0.0.5', 'backup.example.com', '192.168.1.1']) assert.equal(apiNeedsTls(h), true, h);
  assert.equal(normalizeFingerprint('SHA256:' + 'AB:'.repeat(31) + 'AB'), 'ab'.repeat(32));
  assert.throws(() => normalizeFingerprint('abc'), /64 hex digits/);
});

test('the CA is made once in the data directory: the key 0600, the same CA at every start', async (t) => {
  const dir = await tempDir(t);
  const a = await CertificateAuthority.open(dir);
  assert.equal(statSync(join(dir, 'ca.key')).mode & 0o777, 0o600);
  const b = await CertificateAuthority.open(dir);
  assert.equal(a.fingerprint, b.fingerprint);
  await rm(join(dir, 'ca.pem'));
  await assert.rejects(CertificateAuthority.open(dir), /one of ca\.key and ca\.pem is missing/);
});

test('enrollment with one-time tokens, a name that is not the certificate\'s, revocation', async (t) => {
  const ts = await startTestServer(t, { agentListen: { host: '127.0.0.1', port: 0 } });
  const port = ts.server.agentPort!;
  const admin = adminEnv(ts);
  const dir = await tempDir(t);

  // An enrollment token: printed once with the CA fingerprint and the command to run.
  const added = await json(['clients', 'add', 'web1', '--enroll-token', '--expires', '1h'], admin, 0);
  assert.equal(added.caFingerprint, ts.server.ca.fingerprint);
  assert.equal(added.server, port.address);
  assert.match(added.command, new RegExp(`^coffer agent enroll --server ${port.address} --token ${added.token} --ca-fingerprint ${added.caFingerprint} `));
  assert.ok(added.expires > Date.now() + 3_500_000 && added.expires <= Date.now() + 3_600_000);
  await json(['clients', 'add', 'web1'], admin, 2); // says how: --enroll-token
  const own = await json(['clients', 'add', ts.server.clientName, '--enroll-token'], admin, 1);
  assert.match(own.message, /this server's own host/);
  const badExpiry = await json(['clients', 'add', 'web1', '--enroll-token', '--expires', '90d'], admin, 2);
  assert.match(badExpiry.message, /1 minute to 30 days/);

  // A wrong CA fingerprint: refused before the token is sent (it stays usable).
  const state = join(dir, 'web1');
  const wrong = await json(['agent', 'enroll', '--server', port.address, '--token', added.token, '--ca-fingerprint', 'ab'.repeat(32), '--state-dir', state], {}, 1);
  assert.equal(wrong.code, 'REFUSED');
  assert.match(wrong.message, new RegExp(`fingerprint is ${ts.server.ca.fingerprint}, not ${'ab'.repeat(32)}`));
  assert.equal(existsSync(join(state, 'key.pem')), false);
  // A name that is not the token's: refused, the token is not used up.
  const otherName = await json(['agent', 'enroll', '--server', port.address, '--token', added.token, '--name', 'db1', '--state-dir', state], {}, 4);
  assert.match(otherName.message, /enrolls agent web1, not db1/);
  // The right one (fingerprint given with colons, upper case): enrolled.
  const colons = ts.server.ca.fingerprint.toUpperCase().match(/../g)!.join(':');
  const enrolled = await json(['agent', 'enroll', '--server', port.address, '--token', added.token, '--ca-fingerprint', colons, '--state-dir', state], {}, 0);
  assert.deepEqual([enrolled.name, enrolled.role, enrolled.trust, enrolled.caFingerprint], ['web1', 'agent', 'given', ts.server.ca.fingerprint]);
  assert.equal(statSync(join(state, 'key.pem')).mode & 0o777, 0o600);
  const cert = certificateInfo(readFileSync(join(state, 'cert.pem'), 'utf8'));
  assert.deepEqual(cert.identity, { role: 'agent', name: 'web1' });
  assert.ok(cert.notAfter - Date.now() > 89 * 86_400_000, 'default lifetime 90 days');
  assert.equal((await ts.server.catalog.pki.findCertificate(cert.serial))?.name, 'web1');
  // The token worked once.
  const again = await json(['agent', 'enroll', '--server', port.address, '--token', added.token, '--state-dir', join(dir, 'again')], {}, 4);
  assert.match(again.message, /was already used \(.*\): tokens work once/);
  // An expired token, and one that does not exist.
  await ts.server.catalog.pki.addEnrollment({ hash: hashEnrollmentToken('cen_expired'), name: 'old', role: 'agent', expires: Date.now() - 1000, createdBy: 'admin' });
  const expired = await json(['agent', 'enroll', '--server', port.address, '--token', 'cen_expired', '--state-dir', join(dir, 'old')], {}, 4);
  assert.match(expired.message, /expired at/);
  const unknown = await json(['agent', 'enroll', '--server', port.address, '--token', 'cen_nope', '--state-dir', join(dir, 'nope')], {}, 4);
  assert.match(unknown.message, /not valid on this server/);
  // A node token does not enroll an agent.
  const nodeToken = await json(['nodes', 'add', 'store1', '--enroll-token'], admin, 0);
  const asAgent = await json(['agent', 'enroll', '--server', port.address, '--token', nodeToken.token, '--state-dir', join(dir, 'as-agent')], {}, 4);
  assert.match(asAgent.message, /enrolls a storage node, not a agent: run `coffer node enroll`/);

  // The agent runs: it connects out and registers as client web1.
  const agent = runAgent(t, 'agent', state);
  await waitUntil('web1 to connect', () => ts.server.services.agents.has('web1'), 30_000);
  const clients = await ts.api<Json>('GET', '/api/v1/clients');
  const web1 = clients.body.items.find((c: Json) => c.name === 'web1');
  assert.ok(web1, JSON.stringify(clients.body));
  assert.equal(web1.agentId, `remote@${web1.hostIdentity.hostname}`);
  assert.ok(web1.lastSeen > 0);

  // Another process with web1's certificate that calls itself db1: refused with the reason, and
  // it stops; the live connection of web1 is untouched.
  const liar = runAgent(t, 'agent', state, ['--name', 'db1']);
  const lied = await liar.exited;
  assert.equal(lied.code, 1, liar.stderr());
  assert.match(liar.stderr(), /issued for agent web1, but its hello says db1/);
  assert.ok(ts.server.services.agents.has('web1'));

  // Revocation: the live link ends at once, the agent says why and exits non-zero.
  const link = ts.server.services.agents.get('web1');
  const revoked = await json(['clients', 'revoke', 'web1'], admin, 0);
  assert.deepEqual([revoked.certificates, revoked.disconnected], [1, true]);
  assert.equal(link.isOpen, false);
  const gone = await agent.exited;
  assert.equal(gone.code, 4, agent.stderr());
  assert.match(agent.stderr(), /revoked by an administrator.*enroll it again with a new token/);
  const audit = await ts.api<Json>('GET', '/api/v1/audit', { query: { action: 'agent.revoke' } });
  assert.equal(audit.body.items[0].target, 'agent/web1');
  // A reconnect with the revoked certificate is refused at its first message.
  const back = runAgent(t, 'agent', state);
  assert.equal((await back.exited).code, 4);
  assert.match(back.stderr(), /revoked/);
  assert.equal(ts.server.services.agents.has('web1'), false);
  // Revoking what never was: NOT_FOUND.
  const never = await json(['clients', 'revoke', 'ghost'], admin, 1);
  assert.equal(never.code, 'NOT_FOUND');
  // Other roles may not make tokens or revoke.
  const operatorToken = (await ts.api<Json>('POST', '/api/v1/tokens', { body: { name: 'op', role: 'operator' } })).body.token;
  const denied = await json(['clients', 'add', 'x', '--enroll-token'], { COFFER_SERVER: ts.url, COFFER_TOKEN: operatorToken }, 5);
  assert.equal(denied.code, 'FORBIDDEN');
});

test('a remote agent backs up through a remote storage node, over mutual TLS both ways', async (t) => {
  const ts = await startTestServer(t, { agentListen: { host: '127.0.0.1', port: 0 } });
  const admin = adminEnv(ts);
  const dir = await tempDir(t);
  const address = ts.server.agentPort!.address;
  // The node, with its data port on loopback.
  const nodeToken = await json(['nodes', 'add', 'store1', '--enroll-token'], admin, 0);
  await json(['node', 'enroll', '--server', address, '--token', nodeToken.token, '--ca-fingerprint', nodeToken.caFingerprint, '--state-dir', join(dir, 'node')], {}, 0);
  const node = runAgent(t, 'node', join(dir, 'node'), ['--data-listen', '127.0.0.1:0']);
  await waitUntil('store1 to connect', () => ts.server.services.nodes.get('store1') !== undefined, 30_000);
  assert.match(ts.server.services.nodes.get('store1')!.dataAddress ?? '', /^127\.0\.0\.1:\d+$/, node.stderr());
  // The agent.
  const agentToken = await json(['clients', 'add', 'web1', '--enroll-token'], admin, 0);
  await json(['agent', 'enroll', '--server', address, '--token', agentToken.token, '--ca-fingerprint', agentToken.caFingerprint, '--state-dir', join(dir, 'agent')], {}, 0);
  const agent = runAgent(t, 'agent', join(dir, 'agent'));
  await waitUntil('web1 to connect', () => ts.server.services.agents.has('web1'), 30_000);
  assert.equal(ts.server.services.agents.isRemote('web1'), true);

  // A unit that only store1 serves, and a backup of a directory on "web1" into it.
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'index.html'), '<h1>hello</h1>\n'.repeat(1000));
  await writeFile(join(src, 'random.bin'), randomBytes(300_000));
  const applied = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [
    { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'far' }, spec: { url: join(dir, 'far'), nodes: ['store1'] } },
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'keep' }, spec: { copies: [{ operation: 'backup', storageUnit: 'far', retention: '30d' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'remote' }, spec: { clients: ['web1'], selections: [{ paths: [src] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'keep' } },
  ] } });
  assert.equal(applied.status, 200, JSON.stringify(applied.body));
  const started = await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'remote', level: 'full' } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const job = await ts.waitJob(started.body.jobs[0].id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job) + agent.stderr() + node.stderr());
  assert.equal(job.client, 'web1');
  const result = job.result as Json;
  assert.ok(result.scannedBytes >= 200_000, JSON.stringify(result));
  assert.ok(result.sentBytes >= 300_000, `the new chunks crossed the network: ${JSON.stringify(result)}`);
  // The agent's data connection accepts only the node the server named.
  const dataAddress = ts.server.services.nodes.get('store1')!.dataAddress!;
  const agentState = readRemoteState(join(dir, 'agent'), 'agent');
  await assert.rejects(connectToNode({ address: dataAddress, session: 'x'.repeat(43), node: 'store2' }, agentState, AbortSignal.timeout(10_000)), /is node store1, not node store2/);
  // A second backup of the same files sends almost nothing: the node has every chunk.
  const second = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'remote', level: 'full' } })).body.jobs[0].id);
  assert.equal(second.state, 'succeeded', JSON.stringify(second));
  assert.ok((second.result as Json).sentBytes < result.sentBytes / 4, JSON.stringify(second.result));

  // A unit that names no node is the server's own: the embedded node serves remote agents too,
  // on its data port beside the agent port, with a node certificate of the same CA.
  const embedded = ts.server.services.nodes.get(ts.server.clientName)!;
  assert.match(embedded.dataAddress ?? '', /^127\.0\.0\.1:\d+$/, 'the embedded node has a data port');
  const near = await ts.api<Json>('POST', '/api/v1/apply', { body: { documents: [
    { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'near' }, spec: { url: join(dir, 'near') } },
    { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'local' }, spec: { copies: [{ operation: 'backup', storageUnit: 'near', retention: '30d' }] } },
    { apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: 'home' }, spec: { clients: ['web1'], selections: [{ paths: [src] }], schedules: [{ name: 'leap', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: 'local' } },
  ] } });
  assert.equal(near.status, 200, JSON.stringify(near.body));
  const home = await ts.waitJob((await ts.api<Json>('POST', '/api/v1/backups', { body: { policy: 'home', level: 'full' } })).body.jobs[0].id);
  assert.equal(home.state, 'succeeded', JSON.stringify(home) + agent.stderr());
  assert.ok((home.result as Json).sentBytes >= 300_000, JSON.stringify(home.result));
  const logs = (await ts.api<Json>('GET', `/api/v1/jobs/${home.id}/logs`)).body.items.map((l: Json) => l.message).join('\n');
  assert.match(logs, new RegExp(`storage node ${ts.server.clientName} \\(127\\.0\\.0\\.1:\\d+\\) takes client web1's stream to unit near`), logs);
});

test('a storage node enrolls, is listed, renews its certificate without reconnecting, survives a server restart, and is revoked', async (t) => {
  const dataDir = await tempDir(t);
  const agentPort = await freePort();
  const env = { ...process.env, COFFER_CERT_LIFETIME_MS: '8000' };
  const options = { dataDir, agentListen: { host: '127.0.0.1', port: agentPort }, agentPingMs: 500, env };
  let ts = await startTestServer(t, options);
  const dir = await tempDir(t);
  const state = join(dir, 'node');
  const token = await json(['nodes', 'add', 'store1', '--enroll-token'], adminEnv(ts), 0);
  assert.match(token.command, /^coffer node enroll /);
  // No fingerprint: the CA seen is trusted and reported.
  const enrolled = await json(['node', 'enroll', '--server', `127.0.0.1:${agentPort}`, '--token', token.token, '--state-dir', state], {}, 0);
  assert.deepEqual([enrolled.trust, enrolled.caFingerprint], ['first-use', ts.server.ca.fingerprint]);
  const node = runAgent(t, 'node', state);
  await waitUntil('store1 to connect', () => ts.server.services.nodes.get('store1') !== undefined, 30_000);
  const listed = await json(['nodes', 'list'], adminEnv(ts), 0);
  const store1 = listed.nodes.find((n: Json) => n.name === 'store1');
  assert.equal(store1.connected, true);
  assert.match(store1.address, /^127\.0\.0\.1:\d+$/);
  assert.ok(store1.version && store1.lastSeen > 0);

  // Renewal: with 8 s certificates the node renews after about 5 s, over the same connection.
  const link = ts.server.services.nodes.get('store1')!.link;
  const first = certificateInfo(readFileSync(join(state, 'cert.pem'), 'utf8'));
  await waitUntil('the certificate to be renewed', () => certificateInfo(readFileSync(join(state, 'cert.pem'), 'utf8')).serial !== first.serial, 20_000, 100);
  assert.equal(ts.server.services.nodes.get('store1')?.link, link, 'the same connection: renewal interrupts nothing');
  assert.ok(link.isOpen);
  const renewed = certificateInfo(readFileSync(join(state, 'cert.pem'), 'utf8'));
  assert.ok(renewed.notAfter > first.notAfter);
  assert.equal((await ts.server.catalog.pki.findCertificate(renewed.serial))?.name, 'store1');
  assert.match(node.stderr(), /certificate renewed until/);

  // The server restarts: the node reconnects (with its renewed certificate) after backoff.
  await ts.stop();
  await waitUntil('the node to notice', () => /disconnected from/.test(node.stderr()), 10_000);
  ts = await startTestServer(t, options);
  await waitUntil('store1 to reconnect', () => ts.server.services.nodes.get('store1') !== undefined, 30_000);
  assert.match(node.stderr(), /reconnecting in/);

  // Revoked: disconnected at once, and the process exits with the reason.
  const revoked = await json(['nodes', 'revoke', 'store1'], adminEnv(ts), 0);
  assert.equal(revoked.disconnected, true);
  assert.ok(revoked.certificates >= 2, 'the enrolled and the renewed certificates');
  assert.equal((await node.exited).code, 4);
  const after = await json(['nodes', 'list'], adminEnv(ts), 0);
  assert.deepEqual(after.nodes.map((n: Json) => [n.name, n.connected, n.revoked, n.embedded ?? false]), [[ts.server.clientName, true, false, true], ['store1', false, true, false]]);
});

test('an agent drops a server that stopped answering, and `run` refuses --json and a missing enrollment', async (t) => {
  const ts = await startTestServer(t, { agentListen: { host: '127.0.0.1', port: 0 }, agentPingMs: 300 });
  const dir = await tempDir(t);
  const state = join(dir, 'a');
  const token = await json(['clients', 'add', 'quiet', '--enroll-token'], adminEnv(ts), 0);
  await json(['agent', 'enroll', '--server', ts.server.agentPort!.address, '--token', token.token, '--state-dir', state, '--name', 'quiet'], {}, 0);
  const agent = runAgent(t, 'agent', state);
  await waitUntil('quiet to connect', () => ts.server.services.agents.has('quiet'), 30_000);
  // The server's side stops reading and writing (a frozen server): the agent gives up on it after three pings' time.
  const link = ts.server.services.agents.get('quiet') as unknown as { input: NodeJS.ReadableStream; pingTimer: NodeJS.Timeout };
  clearInterval(link.pingTimer);
  link.input.pause();
  await waitUntil('the agent to drop the silent connection', () => /heard nothing from the server/.test(agent.stderr()), 10_000);
  await waitUntil('it to reconnect', () => (agent.stderr().match(/connected to/g) ?? []).length >= 2, 20_000);
  agent.child.kill('SIGTERM');
  const stopped = await agent.exited;
  assert.equal(stopped.code, 0, agent.stderr());
  assert.match(agent.stderr(), /SIGTERM: stopping/);

  for (const role of ['agent', 'node'] as const) {
    const r = await json([role, 'run', '--state-dir', state], {}, 2);
    assert.match(r.message, /--json/);
  }
  const none = await runCli(['node', 'run', '--state-dir', join(dir, 'nothing')]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /holds no enrollment.*\n.*coffer node enroll/);
  const wrongRole = await runCli(['node', 'run', '--state-dir', state]);
  assert.match(wrongRole.stderr, /it was enrolled as a agent/);
});

test('the API over HTTPS with the CA\'s certificate, and `coffer login --ca-fingerprint`', async (t) => {
  const ts = await startTestServer(t, { apiTls: true });
  assert.match(ts.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const home = await tempDir(t);
  const env = { XDG_CONFIG_HOME: home, COFFER_TOKEN: '', COFFER_SERVER: '' };
  // Without a fingerprint the system's CAs do not know this one.
  const untrusted = await runCli(['--json', 'login', '--server', ts.url, '--user', 'admin', '--password-stdin'], { env, input: TEST_ADMIN_PASSWORD });
  assert.equal(untrusted.code, 1, untrusted.stdout);
  assert.match(untrusted.stdout, /Cannot trust the Coffer server.*--ca-fingerprint/);
  const wrong = await runCli(['--json', 'login', '--server', ts.url, '--user', 'admin', '--password-stdin', '--ca-fingerprint', 'cd'.repeat(32)], { env, input: TEST_ADMIN_PASSWORD });
  assert.equal(wrong.code, 1, wrong.stdout);
  assert.match(wrong.stdout, /Refusing to log in/);
  const ok = await runCli(['--json', 'login', '--server', ts.url, '--user', 'admin', '--password-stdin', '--ca-fingerprint', ts.server.ca.fingerprint], { env, input: TEST_ADMIN_PASSWORD });
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  checkJsonOutput('login', ok.stdout, ok.code);
  // The saved login carries the CA: later commands trust the server.
  const listed = await json(['nodes', 'list'], env, 0);
  assert.deepEqual(listed.nodes.map((n: Json) => n.name), [ts.server.clientName], 'only the embedded node');
  // --cacert does the same from the file.
  const viaFile = await runCli(['--json', 'login', '--server', ts.url, '--user', 'admin', '--password-stdin', '--cacert', join(ts.dataDir, 'ca.pem')], { env, input: TEST_ADMIN_PASSWORD });
  assert.equal(viaFile.code, 0, viaFile.stdout);
});

test('every command of the slice ran here with --json and ended with its summary where it has one', () => {
  for (const c of PKI_COMMANDS) {
    assert.ok(ran.has(c), `${c} was never run with --json in this file`);
    if (!c.endsWith(' run')) assert.ok(succeeded.has(c), `${c} never ended with a summary in this file`);
  }
});
