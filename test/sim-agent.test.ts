// The simulated agent (src/testing/sim-agent.ts) against the server's real AgentLink: over mutual
// TLS on loopback, over a plain socket and over an in-process duplex pair; handshake, heartbeats,
// jobs answered, failed and cancelled, refusal of another protocol version, and either side
// closing.
import assert from 'node:assert/strict';
import { connect as netConnect, createServer as netServer, type Server, type Socket } from 'node:net';
import { duplexPair } from 'node:stream';
import { test } from 'node:test';
import { connect as tlsConnect, createServer as tlsServer, type TLSSocket } from 'node:tls';
import { PROTOCOL_VERSION } from '../src/agent/protocol.ts';
import { AgentLink } from '../src/server/agent-link.ts';
import { SimAgent } from '../src/testing/sim-agent.ts';
import { testCertificates } from '../src/testing/tls.ts';

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}

/** A listener that gives every connection an AgentLink; resolves links in order of arrival. */
function linkQueue(pingMs: number) {
  const waiting: ((l: AgentLink) => void)[] = [];
  const ready: AgentLink[] = [];
  return {
    accept(socket: Socket | TLSSocket) {
      const link = new AgentLink(socket, socket, { pingMs, helloTimeoutMs: 5_000 });
      const w = waiting.shift();
      if (w) w(link);
      else ready.push(link);
    },
    next(): Promise<AgentLink> {
      const l = ready.shift();
      return l ? Promise.resolve(l) : new Promise((r) => waiting.push(r));
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a simulated agent over mutual TLS says hello, keeps up heartbeats and answers jobs', async (t) => {
  const certs = await testCertificates();
  const links = linkQueue(40);
  const server = tlsServer({ ca: certs.ca, cert: certs.server.cert, key: certs.server.key, requestCert: true, rejectUnauthorized: true }, (s) => links.accept(s));
  t.after(() => server.close());
  const port = await listen(server);

  const socket = tlsConnect({ host: '127.0.0.1', port, ca: certs.ca, cert: certs.client.cert, key: certs.client.key });
  await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const pings: number[] = [];
  const sim = new SimAgent(socket, { name: 'web1', protocol: PROTOCOL_VERSION, onPing: (n) => void pings.push(n) });
  const link = await links.next();
  t.after(() => link.close());

  assert.deepEqual(await link.ready, { name: 'web1', version: 'sim', host: { hostname: 'web1' } });
  await sim.welcomed;
  const done = await link.start('job-1', 'backup', { any: 'spec' }, () => {});
  assert.deepEqual(done, { state: 'succeeded', result: {}, error: undefined });

  // Four pings: a link whose agent missed two pongs would have closed by the fourth.
  for (const deadline = Date.now() + 5_000; sim.stats.pings < 4 && Date.now() < deadline;) await sleep(10);
  assert.ok(link.isOpen, 'the link is still open');
  assert.ok(sim.stats.pings >= 4, `pings answered: ${sim.stats.pings}`);
  assert.deepEqual(pings, pings.map((_, i) => i + 1), 'pings arrive in order');
  assert.deepEqual(sim.stats, { pings: sim.stats.pings, jobs: 1, cancels: 0 });

  // The agent goes away: the server sees the connection end.
  sim.close();
  assert.match((await link.closed).reason, /the agent closed the connection/);
});

test('a simulated agent on a plain socket runs jobs as told: a result, a failure, a cancel; and sees the server close', async (t) => {
  const links = linkQueue(15_000);
  const server = netServer((s) => links.accept(s));
  t.after(() => server.close());
  const port = await listen(server);
  const socket = netConnect({ host: '127.0.0.1', port });
  const sim = new SimAgent(socket, {
    name: 'db1',
    protocol: PROTOCOL_VERSION,
    answer: async ({ kind, spec, signal }) => {
      if (kind === 'probe') return { state: 'failed', error: { code: 'NOT_FOUND', message: `no ${String((spec as { path: string }).path)}` } };
      if (kind === 'restore') {
        await new Promise((resolve) => signal.addEventListener('abort', resolve));
        return { state: 'succeeded' };
      }
      if (kind === 'broken') throw new Error('boom');
      return { state: 'succeeded', result: { bytesScanned: 10, bytesSent: 2, bytesStored: 1 } };
    },
  });
  const link = await links.next();
  await link.ready;
  await sim.welcomed;

  assert.deepEqual((await link.start('a', 'backup', {}, () => {})).result, { bytesScanned: 10, bytesSent: 2, bytesStored: 1 });
  assert.deepEqual((await link.start('b', 'probe', { path: '/x' }, () => {})).error, { code: 'NOT_FOUND', message: 'no /x' });
  const broken = await link.start('c', 'broken', {}, () => {});
  assert.equal(broken.state, 'failed');
  assert.match(broken.error!.message, /The simulated job failed: boom/);

  const restore = link.start('d', 'restore', {}, () => {});
  await sleep(20);
  assert.equal(sim.jobsRunning, 1);
  link.cancel('d');
  assert.equal((await restore).state, 'cancelled');
  assert.equal(sim.jobsRunning, 0);
  assert.equal(sim.stats.cancels, 1);

  // A job left running when the server closes: the agent aborts it and sees the end.
  const stuck = link.start('e', 'restore', {}, () => {});
  await sleep(20);
  link.close('the server is stopping');
  assert.equal((await stuck).state, 'interrupted');
  assert.match((await sim.closed).reason, /closed/);
  assert.equal(sim.jobsRunning, 0);
});

test('a simulated agent of another protocol version is refused with what to do; garbage from the server closes it', async () => {
  const [agentEnd, serverEnd] = duplexPair();
  const link = new AgentLink(serverEnd, serverEnd, { helloTimeoutMs: 5_000 });
  const sim = new SimAgent(agentEnd, { name: 'old', protocol: PROTOCOL_VERSION - 1 });
  await assert.rejects(sim.welcomed, /The server refused the simulated agent old: .*Update the agent/);
  await assert.rejects(link.ready, /Update the agent/);
  assert.match((await sim.closed).reason, /refused/);

  const [a, b] = duplexPair();
  const confused = new SimAgent(a, { name: 'x', protocol: PROTOCOL_VERSION });
  b.write('{"t":"welcome", nonsense\n');
  assert.match((await confused.closed).reason, /not JSON/);
});
