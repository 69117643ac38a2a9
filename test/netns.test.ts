// The multi-host test harness (src/testing/netns.ts): hosts in their own network namespaces on one
// bridge, real TCP between processes started inside them, link cuts and their repair, killed
// processes, two networks at once, and cleanup however the test process ends.
//
// These tests need root and iproute2 (CI runs as root). They do not skip without them: as a
// non-root developer you get each test failing with the reason (createNetwork() throws "Cannot
// create a test network: creating network namespaces needs root..."), so that a missing
// capability is never mistaken for a pass.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { createNetwork, isAlive, netnsAvailable, waitForOutput, type HostProcess, type Network } from '../src/testing/netns.ts';

const PORT = 7000; // each namespace has its own ports: no free-port hunting needed
const NETNS = join(import.meta.dirname, '..', 'src', 'testing', 'netns.ts');

/** Answers each line with "<tag> <client address> <line>" (argv: tag). */
const ECHO_SERVER = `
const tag = process.argv[1];
require('node:net').createServer((s) => {
  let buf = '';
  s.on('data', (d) => {
    buf += d;
    for (let nl; (nl = buf.indexOf('\\n')) >= 0; buf = buf.slice(nl + 1)) s.write(tag + ' ' + s.remoteAddress + ' ' + buf.slice(0, nl) + '\\n');
  });
  s.on('error', () => {});
}).listen(${PORT}, '0.0.0.0', () => console.log('listening'));
`;

/** One connection to address:port; stdin lines go to the server, replies and errors to stdout (argv: address, port). */
const LINE_CLIENT = `
const s = require('node:net').connect({ host: process.argv[1], port: Number(process.argv[2]) });
s.on('connect', () => console.log('connected'));
s.on('data', (d) => process.stdout.write(String(d)));
s.on('error', (e) => console.log('error ' + (e.code || e.message)));
s.on('close', () => { console.log('closed'); process.exit(0); });
process.stdin.on('data', (d) => s.write(d));
`;

/** Sends one line, prints the reply and exits (argv: address, port, line). */
const ONE_SHOT = `
const [address, port, line] = process.argv.slice(1);
const s = require('node:net').connect({ host: address, port: Number(port), timeout: 3000 });
s.on('connect', () => s.write(line + '\\n'));
s.on('data', (d) => { process.stdout.write(String(d)); s.end(); });
s.on('timeout', () => { console.log('error timeout'); process.exit(2); });
s.on('error', (e) => { console.log('error ' + (e.code || e.message)); process.exit(2); });
`;

async function startEcho(net: Network, host: string, tag: string): Promise<HostProcess> {
  const server = net.spawn(host, process.execPath, ['-e', ECHO_SERVER, tag]);
  await net.waitForPort(host, PORT);
  return server;
}

function ask(net: Network, from: string, to: string, line: string) {
  return net.exec(from, process.execPath, ['-e', ONE_SHOT, net.address(to), String(PORT), line]);
}

/** Builds a network for one test, destroyed after it; its processes' output is printed if the test fails. */
async function network(t: { after(fn: () => unknown): void }, hosts: string[]): Promise<Network> {
  const net = await createNetwork({ hosts });
  t.after(async () => {
    if (process.exitCode) console.error(net.report());
    await net.destroy();
  });
  return net;
}

function rootLinks(): string[] {
  return execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).split('\n').map((l) => l.split(':')[1]?.trim() ?? '').filter(Boolean);
}

function namespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0]!).filter(Boolean);
}

test('this machine can build test networks (root and iproute2)', () => {
  const a = netnsAvailable();
  assert.ok(a.ok, a.ok ? '' : `The multi-host tests cannot run here: ${a.reason}`);
});

test('three hosts in their own namespaces talk TCP by address, and the root namespace gets no link', async (t) => {
  const before = rootLinks();
  const net = await network(t, ['server', 'alpha', 'beta']);
  assert.deepEqual(rootLinks(), before, 'no interface was added to the root namespace');
  assert.match(net.subnet, /^10\.\d+\.\d+\.0\/24$/);
  assert.equal(new Set(net.hosts.map((h) => net.address(h))).size, 3);

  await startEcho(net, 'server', 'S');
  const [a, b] = await Promise.all([ask(net, 'alpha', 'server', 'ping from alpha'), ask(net, 'beta', 'server', 'ping from beta')]);
  // The server saw each client at its own address.
  assert.equal(a.stdout, `S ${net.address('alpha')} ping from alpha\n`, a.stderr);
  assert.equal(b.stdout, `S ${net.address('beta')} ping from beta\n`, b.stderr);
  assert.throws(() => net.address('gamma'), /No host "gamma" in this test network: it has server, alpha, beta/);
});

test('a cut cable stalls a connection and mending it lets the same connection go on; a host-side cut fails at once', async (t) => {
  const net = await network(t, ['server', 'alpha', 'beta']);
  await startEcho(net, 'server', 'S');
  const client = net.spawn('alpha', process.execPath, ['-e', LINE_CLIENT, net.address('server'), String(PORT)], { stdin: 'pipe' });
  await waitForOutput(client, /connected/);
  client.child.stdin!.write('one\n');
  await waitForOutput(client, /S \S+ one\n/);

  await net.linkDown('alpha');
  client.child.stdin!.write('two\n');
  await assert.rejects(net.waitForPort('server', PORT, { from: 'alpha', timeoutMs: 800 }), /Cannot reach server .* from alpha within 800 ms/);
  assert.doesNotMatch(client.output(), /two/, 'nothing crosses a cut cable');
  assert.equal((await ask(net, 'beta', 'server', 'still here')).stdout, `S ${net.address('beta')} still here\n`, 'the other hosts are not cut off');

  await net.linkUp('alpha');
  // TCP retransmits the stalled line: the same connection carries on.
  await waitForOutput(client, /S \S+ two\n/, 15_000);
  client.child.stdin!.write('three\n');
  await waitForOutput(client, /S \S+ three\n/);
  assert.doesNotMatch(client.output(), /error|closed/);

  await net.linkDown('beta', { side: 'host' });
  const refused = await ask(net, 'beta', 'server', 'no route');
  assert.equal(refused.code, 2);
  assert.match(refused.stdout, /error ENETUNREACH/);
  await net.linkUp('beta', { side: 'host' });
  assert.equal((await ask(net, 'beta', 'server', 'back')).stdout, `S ${net.address('beta')} back\n`);
});

test('kill() ends a process with the children it started; destroy() removes every process and namespace', async () => {
  const net = await createNetwork({ hosts: ['alpha', 'beta'] });
  try {
    const parent = net.spawn('alpha', process.execPath, ['-e', `
      const c = require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
      console.log('child ' + c.pid); setInterval(() => {}, 1000);`]);
    await waitForOutput(parent, /child \d+/);
    const childPid = Number(/child (\d+)/.exec(parent.output())![1]);
    assert.ok(isAlive(childPid));
    assert.equal((await net.kill(parent)).signal, 'SIGKILL');
    await assert.rejects(waitForOutput(parent, /never printed/), /alpha: .* ended \(SIGKILL\) without printing \/never printed\/; it printed:\nchild \d+/s);
    await waitUntil(() => !isAlive(childPid), 'the killed process\'s child to end');

    const sleeper = net.spawn('beta', process.execPath, ['-e', 'setInterval(() => {}, 1000)']);
    assert.ok(isAlive(sleeper.pid));
    const names = net.namespaces;
    assert.deepEqual(names.filter((n) => namespaces().includes(n)), names);
    await net.destroy();
    assert.deepEqual(names.filter((n) => namespaces().includes(n)), [], 'every namespace is gone');
    assert.ok(!isAlive(sleeper.pid), 'the process is gone');
    assert.throws(() => net.spawn('alpha', 'true'), /destroyed/);
  } finally {
    await net.destroy();
  }
});

test('two networks made at once do not collide, and neither reaches the other', async (t) => {
  const [one, two] = await Promise.all([network(t, ['server', 'alpha']), network(t, ['server', 'alpha'])]);
  assert.notEqual(one.subnet, two.subnet);
  assert.deepEqual(one.namespaces.filter((n) => two.namespaces.includes(n)), []);
  await Promise.all([startEcho(one, 'server', 'ONE'), startEcho(two, 'server', 'TWO')]);
  assert.match((await ask(one, 'alpha', 'server', 'x')).stdout, /^ONE /);
  assert.match((await ask(two, 'alpha', 'server', 'x')).stdout, /^TWO /);
  // The other network's server address: no route to it from here.
  const across = await one.exec('alpha', process.execPath, ['-e', ONE_SHOT, two.address('server'), String(PORT), 'x']);
  assert.match(across.stdout, /error ENETUNREACH/);
});

/** Starts a test process that builds a network with a process in it and waits; resolves with its namespaces and that process's pid. */
async function networkInChild(): Promise<{ child: ReturnType<typeof spawn>; names: string[]; pid: number }> {
  const child = spawn(process.execPath, ['-e', `
    const { createNetwork } = await import(${JSON.stringify(NETNS)});
    const net = await createNetwork({ hosts: ['solo'] });
    const p = net.spawn('solo', process.execPath, ['-e', 'setInterval(() => {}, 1000)']);
    console.log(JSON.stringify({ names: net.namespaces, pid: p.pid }));
    setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`the child exited (${code}) before making its network: ${out}`)));
  });
  return { child, ...(JSON.parse(line) as { names: string[]; pid: number }) };
}

test('a test process that is stopped by a signal removes its network; one SIGKILLed leaves it to the next createNetwork()', async (t) => {
  const stopped = await networkInChild();
  assert.equal(stopped.names.filter((n) => namespaces().includes(n)).length, 2);
  const exited = new Promise((r) => stopped.child.once('exit', (_code, signal) => r(signal)));
  stopped.child.kill('SIGTERM');
  assert.equal(await exited, 'SIGTERM');
  assert.deepEqual(stopped.names.filter((n) => namespaces().includes(n)), []);
  await waitUntil(() => !isAlive(stopped.pid), 'its process to be killed');

  const crashed = await networkInChild();
  const gone = new Promise((r) => crashed.child.once('exit', r));
  crashed.child.kill('SIGKILL');
  await gone;
  assert.equal(crashed.names.filter((n) => namespaces().includes(n)).length, 2, 'nothing could clean up after SIGKILL');
  assert.ok(isAlive(crashed.pid), 'its process outlived it');
  await network(t, ['next']);
  assert.deepEqual(crashed.names.filter((n) => namespaces().includes(n)), [], 'the next network removed the leftovers');
  await waitUntil(() => !isAlive(crashed.pid), 'the leftover process to be killed');
});

test('without root or without ip, building a network fails saying what is missing', () => {
  const probe = `
    const m = await import(${JSON.stringify(NETNS)});
    const a = m.netnsAvailable();
    try { await m.createNetwork({ hosts: ['x'] }); console.log(JSON.stringify({ a, made: true })); }
    catch (e) { console.log(JSON.stringify({ a, error: e.message })); }`;
  const run = (options: { env?: NodeJS.ProcessEnv; uid?: number; gid?: number }) =>
    JSON.parse(execFileSync(process.execPath, ['-e', probe], { encoding: 'utf8', cwd: '/', ...options })) as { a: { ok: boolean; reason?: string }; error?: string };

  const noIp = run({ env: { ...process.env, PATH: '/nonexistent' } });
  assert.equal(noIp.a.ok, false);
  assert.match(noIp.error!, /Cannot create a test network: the `ip` command of iproute2 is not installed.*apt-get install iproute2/);

  const nobody = run({ uid: 65534, gid: 65534 });
  assert.match(nobody.error!, /Cannot create a test network: creating network namespaces needs root, and this process runs as uid 65534/);
});

async function waitUntil(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
