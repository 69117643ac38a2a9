// The storage node's data service and a remote agent's backup through it, in one process over
// loopback TCP (the multi-host tests run the same over mutual TLS between network namespaces):
// source-side deduplication (a second client with the same files sends almost nothing), the
// snapshot restores byte for byte, a forged chunk is refused and logged, a session is single-use
// and bound to its client, and the parent's trees are the only ones an agent can read.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdir, writeFile, readFile } from 'node:fs/promises';
import { randomBytes as cryptoRandom } from 'node:crypto';
import { join } from 'node:path';
import { test } from 'node:test';
import { once } from 'node:events';
import { randomBytes } from '../testing/random.ts';
import { localHostIdentity } from '../sources/host.ts';
import type { JobEvent } from '../jobs/events.ts';
import { never, serveSession, startTestNode, type TestNode } from './test-node.ts';
import { NodeClient } from './client.ts';
import { openSession } from './remote-store.ts';
import { T, blobHeader, encodeIds } from './wire.ts';
import { chunkId } from '../engine/hash.ts';
import { Repository } from '../repository/repository.ts';
import { loadSnapshot } from '../repository/snapshot.ts';
import { openBackend } from '../storage/url.ts';

const token = () => cryptoRandom(32).toString('base64url');

async function sourceTree(dir: string, seed: number): Promise<void> {
  await mkdir(join(dir, 'sub'), { recursive: true });
  for (let i = 0; i < 30; i++) await writeFile(join(dir, `f${i}.bin`), randomBytes(seed * 100 + i, 2000 * i));
  await writeFile(join(dir, 'sub', 'big.bin'), randomBytes(seed * 100 + 99, 4_000_000));
}

const setup = startTestNode;
type Env = TestNode;
const serve = (env: Env, spec: { session: string; client: string; parent: string; tags: string[] }, events: JobEvent[] = []) => serveSession(env, 'node-backup', spec, events);

/** One remote backup: the node's session and the agent's job, side by side, as the server runs them. */
async function remoteBackup(env: Env, client: string, paths: string[], parent = 'none') {
  const session = token();
  const nodeEvents: JobEvent[] = [];
  const tags = [`image=${client}-1`];
  const { served, ready } = serve(env, { session, client, parent, tags }, nodeEvents);
  await ready;
  const sent = await env.agent.run('backup', { remote: { address: env.address, session, node: 'node1' }, client, parent, tags, selection: { paths } }, () => {}, never());
  const node = await served;
  return { sent, node, nodeEvents };
}

test('a remote backup sends only what the node lacks, and restores byte for byte', async (t) => {
  const env = await setup(t);
  const a = join(env.dir, 'a');
  await sourceTree(a, 1);
  const first = await remoteBackup(env, 'web01', [a]);
  assert.equal(first.sent.state, 'succeeded', JSON.stringify(first.sent.error));
  assert.equal(first.node.state, 'succeeded', JSON.stringify(first.node.error));
  const snap = first.node.result!.snapshot as string;
  assert.equal(first.sent.result!.snapshot, snap);
  const scanned = first.sent.result!.bytesScanned as number;
  const sent1 = first.sent.result!.bytesSent as number;
  assert.ok(scanned > 4_800_000, `scanned ${scanned}`);
  assert.ok(sent1 > 0.9 * scanned, `random data: sent ${sent1} of ${scanned}`);
  assert.ok((first.sent.result!.bytesStored as number) > 0.9 * scanned);

  // A second client with the same files: the chunks are there, only trees cross the network.
  const b = join(env.dir, 'b');
  await sourceTree(b, 1);
  const second = await remoteBackup(env, 'web02', [b]);
  assert.equal(second.sent.state, 'succeeded', JSON.stringify(second.sent.error));
  const sent2 = second.sent.result!.bytesSent as number;
  assert.ok(sent2 < 0.01 * scanned, `second client sent ${sent2} bytes for ${scanned} scanned`);

  // An incremental of the first client reads its parent's trees through the node.
  await writeFile(join(a, 'new.txt'), 'a new file\n');
  const third = await remoteBackup(env, 'web01', [a], snap);
  assert.equal(third.sent.state, 'succeeded', JSON.stringify(third.sent.error));
  assert.equal(third.sent.result!.filesUnchanged, 31);
  assert.equal(third.sent.result!.filesNew, 1);
  assert.ok((third.sent.result!.bytesSent as number) < 20_000);

  // What the node committed restores as it was read (the node holds the keys).
  const target = join(env.dir, 'out');
  const r = await env.node.run('restore', { storage: env.storage, snapshot: third.node.result!.snapshot, targetPath: target, force: true, confirmHost: localHostIdentity().hostname }, () => {}, never());
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  for (const f of ['f7.bin', 'sub/big.bin', 'new.txt']) assert.deepEqual(await readFile(join(target, a, f)), await readFile(join(a, f)));
});

test('a forged chunk is refused and logged, and nothing of the session is committed', async (t) => {
  const env = await setup(t);
  const session = token();
  const events: JobEvent[] = [];
  const { served, ready } = serve(env, { session, client: 'rogue', parent: 'none', tags: [] }, events);
  await ready;
  const s = connect(env.port, '127.0.0.1');
  await once(s, 'connect');
  const c = new NodeClient(s);
  const hello = await openSession(c, session, 'backup');
  const key = Buffer.from(hello.chunkIdKey, 'base64');
  // Honest chunk first: accepted.
  const good = Buffer.from('honest content '.repeat(100));
  await c.request(T.PUT, [blobHeader('data', chunkId(key, good), good.length, good.length, false), good]);
  const have = await c.request(T.HAVE, encodeIds([{ type: 'data', id: chunkId(key, good) }]));
  assert.equal(have.payload[0], 1);
  // Content under another chunk's id: what a compromised client would use to poison others' backups.
  const victim = chunkId(key, Buffer.from('someone else\'s data'));
  const evil = Buffer.from('malware');
  await assert.rejects(c.request(T.PUT, [blobHeader('data', victim, evil.length, evil.length, false), evil]), (e: Error & { code?: string }) => e.code === 'CORRUPT' && /forged chunk/.test(e.message));
  const done = await served;
  assert.equal(done.state, 'failed');
  assert.equal(done.error!.code, 'CORRUPT');
  assert.ok(events.some((e) => e.type === 'log' && e.level === 'error' && /forged chunk from client rogue/.test(e.message)), 'the node logs the forgery with the client');
  const listed = await env.node.run('snapshots', { storage: env.storage }, () => {}, never());
  assert.deepEqual(listed.result!.snapshots, []);
  // The session is spent: its token opens nothing any more.
  const s2 = connect(env.port, '127.0.0.1');
  await once(s2, 'connect');
  await assert.rejects(openSession(new NodeClient(s2), session, 'backup'), /No such session/);
});

test('a session reads only its parent\'s trees and commits only its client\'s snapshot', async (t) => {
  const env = await setup(t);
  const a = join(env.dir, 'a');
  await sourceTree(a, 2);
  const other = await remoteBackup(env, 'other', [a]);
  assert.equal(other.node.state, 'succeeded', JSON.stringify(other.node.error));
  const repo = await Repository.open(await openBackend(env.storage.url), env.storage.password, { noCache: true });
  const otherTree = (await loadSnapshot(repo, other.node.result!.snapshot as string)).tree;
  await repo.close();

  const session = token();
  const { served, ready } = serve(env, { session, client: 'mallory', parent: 'none', tags: ['image=x'] });
  await ready;
  const s = connect(env.port, '127.0.0.1');
  await once(s, 'connect');
  const c = new NodeClient(s);
  await openSession(c, session, 'backup');
  await assert.rejects(c.request(T.TREE, encodeIds([{ type: 'tree', id: Buffer.from(otherTree, 'hex') }])), (e: Error & { code?: string }) => e.code === 'FORBIDDEN');
  const done = await served;
  assert.equal(done.state, 'failed');

  // A snapshot for another host is refused at commit.
  const session2 = token();
  const { served: served2, ready: ready2 } = serve(env, { session: session2, client: 'mallory', parent: 'none', tags: [] });
  await ready2;
  const s2 = connect(env.port, '127.0.0.1');
  await once(s2, 'connect');
  const c2 = new NodeClient(s2);
  await openSession(c2, session2, 'backup');
  const snap = { version: 1, time: new Date().toISOString(), tree: otherTree, paths: ['/x'], host: { ...localHostIdentity(), hostname: 'other' }, username: 'u', tags: [], program: 'p' };
  await assert.rejects(c2.request(T.COMMIT, Buffer.from(JSON.stringify(snap))), (e: Error & { code?: string }) => e.code === 'FORBIDDEN' && /cannot commit a snapshot of host other/.test(e.message));
  assert.equal((await served2).state, 'failed');
});

test('hostile data connections: garbage, a frame too long, a truncated PUT, another client\'s session', async (t) => {
  const env = await setup(t);
  const session = token();
  const { served, ready } = serve(env, { session, client: 'web01', parent: 'none', tags: [] });
  await ready;
  const raw = async (bytes: Buffer) => {
    const s = connect(env.port, '127.0.0.1');
    await once(s, 'connect');
    s.write(bytes);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    await once(s, 'close');
    return Buffer.concat(chunks);
  };
  // Not our protocol at all: refused, and the session still waits for its agent.
  const garbage = await raw(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  assert.match(garbage.subarray(9).toString(), /does not speak the Coffer data protocol/);
  assert.ok(env.logs.some((l) => /refused/.test(l)), env.logs.join('\n'));
  // Another client's certificate cannot open this client's session, even with its token.
  const { createServer } = await import('node:net');
  const intruder = createServer((socket) => env.service.accept(socket, 'web02'));
  intruder.listen(0, '127.0.0.1');
  await once(intruder, 'listening');
  t.after(() => intruder.close());
  const s1 = connect((intruder.address() as { port: number }).port, '127.0.0.1');
  await once(s1, 'connect');
  await assert.rejects(openSession(new NodeClient(s1), session, 'backup'), (e: Error & { code?: string }) => e.code === 'FORBIDDEN' && /client web01's/.test(e.message));
  // The right client opens it; a PUT that ends inside a blob ends the session with PROTOCOL.
  const s2 = connect(env.port, '127.0.0.1');
  await once(s2, 'connect');
  const c = new NodeClient(s2);
  await openSession(c, session, 'backup');
  await assert.rejects(c.request(T.PUT, [blobHeader('data', Buffer.alloc(32), 100, 100, false), Buffer.alloc(10)]), (e: Error & { code?: string }) => e.code === 'PROTOCOL');
  const done = await served;
  assert.equal(done.state, 'failed');
  assert.equal(done.error!.code, 'PROTOCOL');
});

test('backups running at once find what the others stored since they began: the session reads new index files when its agent asks', async (t) => {
  const env = await setup(t);
  const a = join(env.dir, 'a');
  await sourceTree(a, 3);
  // web02's session opens (and loads the index) before web01 stores anything.
  const session = token();
  const { served, ready } = serve(env, { session, client: 'web02', parent: 'none', tags: [] });
  await ready;
  const first = await remoteBackup(env, 'web01', [a]);
  assert.equal(first.node.state, 'succeeded', JSON.stringify(first.node.error));
  // web02's agent asks about the same chunks: the session reads the index files written since it
  // began (at its first question, then every few seconds), and finds them.
  const sent = await env.agent.run('backup', { remote: { address: env.address, session, node: 'node1' }, client: 'web02', parent: 'none', tags: [], selection: { paths: [a] } }, () => {}, never());
  assert.equal(sent.state, 'succeeded', JSON.stringify(sent.error));
  assert.equal((await served).state, 'succeeded');
  const scanned = sent.result!.bytesScanned as number;
  assert.ok((sent.result!.bytesSent as number) < 0.01 * scanned, `web02 sent ${String(sent.result!.bytesSent)} of ${scanned}`);
});
