// The agent: its job executors (runtime), and the protocol between a server's AgentLink and a
// real `coffer agent stdio` child process: handshake, jobs with events, cancel, a killed agent,
// a peer of another protocol version, and garbage on the wire.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { readFile, writeFile, mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { randomBytes } from '../testing/random.ts';
import { tempDir } from '../testing/tmp.ts';
import { localHostIdentity } from '../sources/host.ts';
import type { JobEvent } from '../jobs/events.ts';
import { AgentLink, startEmbeddedAgent } from '../server/agent-link.ts';
import { encodeMessage, parseToServer, LineReader, PROTOCOL_VERSION } from './protocol.ts';
import { AgentRuntime } from './runtime.ts';

async function sourceTree(dir: string): Promise<void> {
  await mkdir(join(dir, 'sub'), { recursive: true });
  for (let i = 0; i < 20; i++) await writeFile(join(dir, `f${i}.bin`), randomBytes(i, 1000 * i));
  await writeFile(join(dir, 'sub', 'big.bin'), randomBytes(99, 3_000_000));
}

function collector() {
  const events: JobEvent[] = [];
  return { events, emit: (e: JobEvent) => void events.push(e) };
}

const never = () => new AbortController().signal;

test('the runtime initialises a repository, backs up with pre and post commands, lists, browses, restores and forgets', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await sourceTree(src);
  const storage = { url: join(dir, 'repo'), password: 'unit password' };
  const rt = new AgentRuntime({ stateDir: join(dir, 'state'), host: localHostIdentity(), workers: 2, idleMs: 50 });
  t.after(() => rt.close());

  const init = await rt.run('init', { storage }, () => {}, never());
  assert.equal(init.state, 'succeeded', JSON.stringify(init.error));
  assert.match(String(init.result!.repository), /^[0-9a-f]{64}$/);

  const log = join(dir, 'prepost.log');
  const c = collector();
  const b = await rt.run('backup', {
    storage, client: 'web01', parent: 'none', selection: { paths: [src], exclude: ['*.tmp'] },
    pre: { run: `echo pre >> ${log}` }, post: { run: `echo post >> ${log}` },
  }, c.emit, never());
  assert.equal(b.state, 'succeeded', JSON.stringify(b.error));
  assert.equal(await readFile(log, 'utf8'), 'pre\npost\n');
  assert.equal(b.result!.filesNew, 21);
  assert.ok((b.result!.bytesScanned as number) > 3_000_000);
  assert.ok(c.events.some((e) => e.type === 'result'));
  assert.ok(c.events.some((e) => e.type === 'log' && e.message.includes('pre command')));
  const snapshot = b.result!.snapshot as string;

  const listed = await rt.run('snapshots', { storage }, () => {}, never());
  const snaps = listed.result!.snapshots as Array<{ id: string; host: { hostname: string } }>;
  assert.deepEqual(snaps.map((s) => s.id), [snapshot]);
  assert.equal(snaps[0]!.host.hostname, 'web01');

  const ls = await rt.run('list', { storage, snapshot, path: src, limit: 5 }, () => {}, never());
  assert.equal(ls.state, 'succeeded', JSON.stringify(ls.error));
  const page1 = ls.result!.entries as Array<{ name: string }>;
  assert.equal(page1.length, 5);
  assert.equal(ls.result!.more, true);
  const ls2 = await rt.run('list', { storage, snapshot, path: src, limit: 100, after: page1.at(-1)!.name }, () => {}, never());
  assert.equal(page1.length + (ls2.result!.entries as unknown[]).length, 21);

  const to = join(dir, 'restored');
  const r = await rt.run('restore', { storage, snapshot, targetPath: to }, () => {}, never());
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  assert.deepEqual(await readFile(join(to, src, 'sub', 'big.bin')), randomBytes(99, 3_000_000));

  const f = await rt.run('forget', { storage, snapshots: [snapshot], prune: true }, () => {}, never());
  assert.equal(f.state, 'succeeded', JSON.stringify(f.error));
  assert.equal(f.result!.forgotten, 1);
  assert.ok(((f.result!.prune as { packsDeleted: number }).packsDeleted) > 0);
  // Forgetting again (an expiry that was interrupted and runs again) succeeds.
  assert.equal((await rt.run('forget', { storage, snapshots: [snapshot], prune: false }, () => {}, never())).state, 'succeeded');
  const after = await rt.run('snapshots', { storage }, () => {}, never());
  assert.deepEqual(after.result!.snapshots, []);
});

test('the runtime refuses bad specs by field, fails a backup whose pre command fails (post still runs), and probes paths and storage', async (t) => {
  const dir = await tempDir(t);
  const rt = new AgentRuntime({ stateDir: join(dir, 'state'), host: localHostIdentity(), workers: 1 });
  t.after(() => rt.close());

  const unknown = await rt.run('format-disk', {}, () => {}, never());
  assert.equal(unknown.state, 'failed');
  assert.equal(unknown.error!.code, 'UNSUPPORTED');

  const bad = await rt.run('backup', { storage: { url: dir, password: 'x' }, client: 'c', parent: 'latest', selection: { paths: [] } }, () => {}, never());
  assert.equal(bad.state, 'failed');
  assert.equal(bad.error!.code, 'USAGE');
  assert.match(bad.error!.message, /parent|selection/);

  const storage = { url: join(dir, 'repo'), password: 'pw' };
  assert.equal((await rt.run('init', { storage }, () => {}, never())).state, 'succeeded');
  const log = join(dir, 'post.log');
  const c = collector();
  const failed = await rt.run('backup', {
    storage, client: 'c', parent: 'none', selection: { paths: [dir] },
    pre: { run: 'echo preparing; echo broken >&2; exit 3' }, post: { run: `echo post ran > ${log}` },
  }, c.emit, never());
  assert.equal(failed.state, 'failed');
  assert.equal(failed.error!.code, 'REFUSED');
  assert.match(failed.error!.message, /pre command failed \(exit code 3\)/);
  assert.equal(await readFile(log, 'utf8'), 'post ran\n');
  assert.ok(c.events.some((e) => e.type === 'log' && e.message.includes('broken')));

  const slow = await rt.run('backup', { storage, client: 'c', parent: 'none', selection: { paths: [dir] }, pre: { run: 'sleep 30', timeoutMs: 200 } }, () => {}, never());
  assert.equal(slow.state, 'failed');
  assert.match(slow.error!.message, /did not finish within/);

  const probe = await rt.run('probe', { paths: [dir, join(dir, 'missing')], storage: { url: join(dir, 'no', 'such'), password: 'x' } }, () => {}, never());
  assert.equal(probe.state, 'succeeded');
  const problems = probe.result!.problems as Array<{ path?: string; storage?: string; problem: string }>;
  assert.deepEqual(problems.filter((p) => p.path).map((p) => [p.path, p.problem]), [[join(dir, 'missing'), 'does not exist']]);
  const good = await rt.run('probe', { storage }, () => {}, never());
  assert.deepEqual(good.result!.problems, []);
  assert.ok(!(await readdir(storage.url)).some((n) => n.startsWith('probe-')), 'the probe object is removed');

  // usage: the bytes of every object the repository keeps, as the file system has them.
  const usage = await rt.run('usage', { storage }, () => {}, never());
  assert.equal(usage.state, 'succeeded', JSON.stringify(usage.error));
  let bytes = 0;
  let objects = 0;
  for (const e of await readdir(storage.url, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    bytes += (await stat(join(e.parentPath, e.name))).size;
    objects++;
  }
  assert.ok(objects > 1 && bytes > 0, `${objects} objects, ${bytes} bytes`);
  assert.deepEqual(usage.result, { bytes, objects });
  const badUsage = await rt.run('usage', { storage, extra: 1 }, () => {}, never());
  assert.equal(badUsage.state, 'failed');
});

test('an embedded agent process: handshake, a backup with progress events, cancel, and a kill that leaves the job interrupted', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'big.bin'), randomBytes(7, 40_000_000));
  const agent = startEmbeddedAgent({ stateDir: join(dir, 'state'), name: 'embedded', workers: 1, pingMs: 200 });
  t.after(() => agent.stop());
  const hello = await agent.link.ready;
  assert.equal(hello.name, 'embedded');
  assert.equal(typeof hello.host.machineId === 'string' || hello.host.machineId === undefined, true);

  const storage = { url: join(dir, 'repo'), password: 'pw' };
  assert.equal((await agent.link.start('j-init', 'init', { storage }, () => {})).state, 'succeeded');

  const events: JobEvent[] = [];
  const done = await agent.link.start('j1', 'backup', { storage, client: 'embedded', parent: 'none', selection: { paths: [src] } }, (e) => events.push(e));
  assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
  assert.equal(done.result!.filesNew, 1);
  assert.ok(events.some((e) => e.type === 'result'));

  // Cancel: the job ends as cancelled, and the agent keeps serving.
  await writeFile(join(src, 'big2.bin'), randomBytes(8, 60_000_000));
  const cancelled = agent.link.start('j2', 'backup', { storage, client: 'embedded', parent: 'none', selection: { paths: [src] } }, () => {});
  setTimeout(() => agent.link.cancel('j2'), 100);
  assert.equal((await cancelled).state, 'cancelled');
  assert.equal((await agent.link.start('j3', 'snapshots', { storage }, () => {})).state, 'succeeded');

  // A killed agent: the running job ends as interrupted, and the link reports why.
  const killed = agent.link.start('j4', 'backup', { storage, client: 'embedded', parent: 'none', selection: { paths: [src] } }, () => {});
  setTimeout(() => agent.child.kill('SIGKILL'), 100);
  const k = await killed;
  assert.equal(k.state, 'interrupted');
  assert.match((await agent.link.closed).reason, /exited \(SIGKILL\)/);
});

/** A fake agent on a pair of streams: what the server's link does with it. */
function fakeAgent() {
  const toServer = new PassThrough();
  const toAgent = new PassThrough();
  const link = new AgentLink(toServer, toAgent, { helloTimeoutMs: 2000 });
  const received: string[] = [];
  const reader = new LineReader((l) => void received.push(l), () => {});
  toAgent.on('data', (c: Buffer) => reader.push(c));
  return { link, toServer, received };
}

test('the link refuses an agent of another protocol version with what to do, and closes on garbage or an oversized line', async () => {
  const newer = fakeAgent();
  newer.toServer.write(JSON.stringify({ t: 'hello', protocol: PROTOCOL_VERSION + 1, agent: { name: 'x', version: '9', host: {} } }) + '\n');
  await assert.rejects(newer.link.ready, /newer\. Update the server first/);
  assert.match(newer.received[0]!, /"t":"refuse"/);

  const garbage = fakeAgent();
  garbage.toServer.write('{"t":"hello", this is not json\n');
  assert.match((await garbage.link.closed).reason, /not JSON/);

  const huge = fakeAgent();
  huge.toServer.write(encodeMessage({ t: 'hello', protocol: PROTOCOL_VERSION, agent: { name: 'x', version: '1', host: {} } }));
  await huge.link.ready;
  const running = huge.link.start('j', 'snapshots', {}, () => {});
  huge.toServer.write(Buffer.alloc(17 << 20, 0x61));
  assert.match((await huge.link.closed).reason, /longer than/);
  assert.equal((await running).state, 'interrupted');

  const badEvent = fakeAgent();
  badEvent.toServer.write(encodeMessage({ t: 'hello', protocol: PROTOCOL_VERSION, agent: { name: 'x', version: '1', host: {} } }));
  await badEvent.link.ready;
  badEvent.toServer.write(JSON.stringify({ t: 'job.event', job: 'j', event: { type: 'log', level: 'loud', message: 'x' } }) + '\n');
  assert.match((await badEvent.link.closed).reason, /log\.level/);
  assert.throws(() => parseToServer('{"t":"job.done","job":"j","state":"exploded"}'), /PROTOCOL|bad message/);
});
