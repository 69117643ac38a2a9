// Restores through a storage node, in one process over loopback TCP (as node.test.ts): the node's
// restore session and the agent's restore job side by side, as the server runs them. A remote
// restore reproduces the files byte for byte with their modes and times; the host pre-flight
// still guards it; the session serves only the snapshot's trees and the chunks its files name;
// a chunk damaged on the node fails its file with a message naming it, and no wrong byte is written.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { chmod, lstat, mkdir, open, readFile, readdir, utimes, writeFile } from 'node:fs/promises';
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
import { openRestoreSession } from './remote-restore.ts';
import { T, encodeIds } from './wire.ts';
import { fromHex } from '../engine/hash.ts';
import { Repository } from '../repository/repository.ts';
import { loadSnapshot } from '../repository/snapshot.ts';
import { decodeTree, type Tree } from '../repository/tree.ts';
import { packName } from '../repository/layout.ts';
import { openBackend } from '../storage/url.ts';

const token = () => cryptoRandom(32).toString('base64url');

async function sourceTree(dir: string): Promise<void> {
  await mkdir(join(dir, 'sub', 'deep'), { recursive: true });
  for (let i = 0; i < 20; i++) await writeFile(join(dir, `f${i}.bin`), randomBytes(700 + i, 3000 * i));
  await writeFile(join(dir, 'text.txt'), 'compressible line\n'.repeat(20_000));
  await writeFile(join(dir, 'empty'), '');
  await writeFile(join(dir, 'sub', 'big.bin'), randomBytes(799, 3_000_000));
  await writeFile(join(dir, 'sub', 'deep', 'same.bin'), randomBytes(700 + 5, 15_000)); // the same content as f5.bin
  await chmod(join(dir, 'f3.bin'), 0o640);
  await chmod(join(dir, 'sub', 'deep'), 0o750);
  await utimes(join(dir, 'f7.bin'), new Date('2001-02-03T04:05:06Z'), new Date('2001-02-03T04:05:06Z'));
  await utimes(join(dir, 'sub'), new Date('2011-02-03T04:05:06Z'), new Date('2011-02-03T04:05:06Z'));
}

const setup = startTestNode;
type Env = TestNode;
const serve = serveSession;

async function remoteBackup(env: Env, client: string, paths: string[]): Promise<string> {
  const session = token();
  const tags = [`image=${client}-1`];
  const { served, ready } = serve(env, 'node-backup', { session, client, parent: 'none', tags });
  await ready;
  const sent = await env.agent.run('backup', { remote: { address: env.address, session, node: 'node1' }, client, parent: 'none', tags, selection: { paths } }, () => {}, never());
  assert.equal(sent.state, 'succeeded', JSON.stringify(sent.error));
  const node = await served;
  assert.equal(node.state, 'succeeded', JSON.stringify(node.error));
  return node.result!.snapshot as string;
}

/** One remote restore: the node's session and the agent's restore job, side by side. */
async function remoteRestore(env: Env, client: string, snapshot: string, restoreSpec: Record<string, unknown>, agent = env.agent) {
  const session = token();
  const nodeEvents: JobEvent[] = [];
  const agentEvents: JobEvent[] = [];
  const { served, ready } = serve(env, 'node-restore', { session, client, snapshot }, nodeEvents);
  await ready;
  const restored = await agent.run('restore', { remote: { address: env.address, session, node: 'node1' }, snapshot, ...restoreSpec }, (e) => agentEvents.push(e), never());
  const node = await served;
  return { restored, node, nodeEvents, agentEvents };
}

/** Every entry below `dir` with its type, mode, size (files) and mtime (to the microsecond). */
async function describeTree(dir: string, at = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(join(dir, at))).sort()) {
    const rel = join(at, name);
    const st = await lstat(join(dir, rel), { bigint: true });
    const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
    out[rel] = `${kind} ${(st.mode & 0o7777n).toString(8)} ${kind === 'file' ? st.size : ''} ${st.mtimeNs / 1000n}`;
    if (st.isDirectory()) Object.assign(out, await describeTree(dir, rel));
  }
  return out;
}

async function sameFiles(a: string, b: string): Promise<void> {
  assert.deepEqual(await describeTree(b), await describeTree(a));
  for (const rel of Object.keys(await describeTree(a))) {
    if ((await lstat(join(a, rel))).isFile()) assert.ok((await readFile(join(a, rel))).equals(await readFile(join(b, rel))), `${rel} has other content`);
  }
}

/** The tree at `path` (absolute, as backed up) in a snapshot. */
async function treeAt(repo: Repository, root: string, path: string): Promise<Tree> {
  let tree = decodeTree(await repo.readBlob('tree', fromHex(root)));
  for (const name of path.split('/').filter(Boolean)) {
    const n = tree.nodes.find((x) => x.name === name && x.type === 'dir');
    assert.ok(n?.subtree, `no directory ${name} in the snapshot`);
    tree = decodeTree(await repo.readBlob('tree', fromHex(n.subtree)));
  }
  return tree;
}

test('a remote restore reproduces the files byte for byte, with modes and times, and sends each chunk once', async (t) => {
  const env = await setup(t);
  const a = join(env.dir, 'a');
  await sourceTree(a);
  const snap = await remoteBackup(env, 'web01', [a]);

  const target = join(env.dir, 'out');
  const r = await remoteRestore(env, 'web01', snap, { targetPath: target, unit: 'disk1' });
  assert.equal(r.restored.state, 'succeeded', JSON.stringify(r.restored.error));
  assert.equal(r.node.state, 'succeeded', JSON.stringify(r.node.error));
  await sameFiles(a, join(target, a));
  const res = r.restored.result!;
  assert.equal((res.created as { files: number }).files, 24);
  assert.equal(res.node, 'node1');
  assert.equal((res.sources as Record<string, { chunks: number }>).disk1!.chunks > 0, true);
  // What crossed the network: the compressible text went compressed, the shared chunk once.
  const scanned = 20 * 19 * 1500 + 360_000 + 3_000_000 + 15_000;
  const received = res.bytesReceived as number;
  assert.ok(received < scanned, `received ${received} bytes for ${scanned} restored`);
  assert.ok(received > 0.9 * (scanned - 360_000 - 15_000), `received ${received}`);
  assert.equal(r.node.result!.blobsDamaged, 0);
  assert.ok(r.nodeEvents.some((e) => e.type === 'log' && /restore session of snapshot .* ended/.test(e.message)));

  // Again into the same place: everything is unchanged, and no chunk is asked for.
  const again = await remoteRestore(env, 'web01', snap, { targetPath: target });
  assert.equal(again.restored.state, 'succeeded', JSON.stringify(again.restored.error));
  assert.equal((again.restored.result!.unchanged as { files: number }).files, 24);
  assert.equal(again.node.result!.blobsServed, 0);

  // --include and a dry run go through the node too.
  const some = join(env.dir, 'some');
  const inc = await remoteRestore(env, 'web01', snap, { targetPath: some, include: [`${a}/sub`] });
  assert.equal(inc.restored.state, 'succeeded', JSON.stringify(inc.restored.error));
  assert.deepEqual(await readdir(join(some, a)), ['sub']);
  assert.ok((await readFile(join(some, a, 'sub', 'big.bin'))).equals(await readFile(join(a, 'sub', 'big.bin'))));
  const dry = await remoteRestore(env, 'web01', snap, { targetPath: join(env.dir, 'dry'), dryRun: true });
  assert.equal(dry.restored.state, 'succeeded', JSON.stringify(dry.restored.error));
  assert.equal((dry.restored.result!.created as { files: number }).files, 24);
  assert.equal(dry.node.result!.blobsServed, 0);
  await assert.rejects(lstat(join(env.dir, 'dry')), { code: 'ENOENT' });
});

test('the host pre-flight refuses another host\'s data over this host\'s own files without --force and --confirm-host', async (t) => {
  const env = await setup(t, { ...localHostIdentity(), hostname: 'db01' });
  const a = join(env.dir, 'a');
  await sourceTree(a);
  const snap = await remoteBackup(env, 'web01', [a]);
  // The agent's home directory is one restoreSafety() protects.
  const home = join(env.dir, 'home');
  await mkdir(home);
  const saved = process.env.HOME;
  process.env.HOME = home;
  t.after(() => {
    process.env.HOME = saved;
  });
  const target = join(home, 'restored');
  const refused = await remoteRestore(env, 'db01', snap, { targetPath: target });
  assert.equal(refused.restored.state, 'failed');
  assert.equal(refused.restored.error!.code, 'REFUSED');
  assert.match(refused.restored.error!.message, /web01/);
  assert.match(refused.restored.error!.message, /db01/);
  await assert.rejects(lstat(target), { code: 'ENOENT' });
  assert.equal(refused.node.result!.blobsServed, 0);

  const forcedOnly = await remoteRestore(env, 'db01', snap, { targetPath: target, force: true });
  assert.equal(forcedOnly.restored.error?.code, 'REFUSED');
  const wrongName = await remoteRestore(env, 'db01', snap, { targetPath: target, force: true, confirmHost: 'web01' });
  assert.equal(wrongName.restored.error?.code, 'REFUSED');
  await assert.rejects(lstat(target), { code: 'ENOENT' });

  const confirmed = await remoteRestore(env, 'db01', snap, { targetPath: target, force: true, confirmHost: 'db01' });
  assert.equal(confirmed.restored.state, 'succeeded', JSON.stringify(confirmed.restored.error));
  await sameFiles(a, join(target, a));
});

test('a restore session serves only its snapshot\'s trees and the chunks its files name', async (t) => {
  const env = await setup(t);
  const a = join(env.dir, 'a');
  await sourceTree(a);
  const mine = await remoteBackup(env, 'web01', [a]);
  const b = join(env.dir, 'b');
  await mkdir(b);
  await writeFile(join(b, 'secret'), randomBytes(4242, 50_000));
  const theirs = await remoteBackup(env, 'other', [b]);

  const repo = await Repository.open(await openBackend(env.storage.url), env.storage.password, { noCache: true });
  t.after(() => repo.close());
  await repo.loadIndex();
  const myRoot = (await loadSnapshot(repo, mine)).tree;
  const theirSnap = await loadSnapshot(repo, theirs);
  const secret = (await treeAt(repo, theirSnap.tree, b)).nodes.find((n) => n.name === 'secret')!.content![0]!;
  const myFile = (await treeAt(repo, myRoot, a)).nodes.find((n) => n.name === 'f9.bin')!.content![0]!;

  /** A node session for web01 on snapshot `mine`, opened by hand as a stolen credential would. */
  const open = async () => {
    const session = token();
    const events: JobEvent[] = [];
    const { served, ready } = serve(env, 'node-restore', { session, client: 'web01', snapshot: mine }, events);
    await ready;
    const s = connect(env.port, '127.0.0.1');
    await once(s, 'connect');
    const c = new NodeClient(s);
    await openRestoreSession(c, session);
    return { c, served, events, session };
  };
  const forbidden = (e: Error & { code?: string }) => e.code === 'FORBIDDEN';

  // Another client's chunk, guessed or learnt: refused, logged, and the session ends.
  const s1 = await open();
  await assert.rejects(s1.c.request(T.READ, encodeIds([{ type: 'data', id: fromHex(secret) }])), forbidden);
  const done1 = await s1.served;
  assert.equal(done1.state, 'failed');
  assert.equal(done1.error!.code, 'FORBIDDEN');
  assert.ok(s1.events.some((e) => e.type === 'log' && e.level === 'error' && /chunk .* which no file of snapshot/.test(e.message)));

  // Another snapshot's tree: refused.
  const s2 = await open();
  await assert.rejects(s2.c.request(T.TREE, encodeIds([{ type: 'tree', id: fromHex(theirSnap.tree) }])), forbidden);
  assert.equal((await s2.served).error!.code, 'FORBIDDEN');

  // A chunk of this very snapshot, before the tree naming it was read: refused too.
  const s3 = await open();
  await assert.rejects(s3.c.request(T.READ, encodeIds([{ type: 'data', id: fromHex(myFile) }])), forbidden);
  assert.equal((await s3.served).error!.code, 'FORBIDDEN');

  // Read in order, the same chunk is served; and the snapshot is the one the server named.
  const s4 = await open();
  const snapReply = JSON.parse((await s4.c.request(T.SNAPSHOT, Buffer.from('{}'))).payload.toString()) as { id: string };
  assert.equal(snapReply.id, mine);
  let tree = myRoot;
  for (const name of a.split('/').filter(Boolean)) {
    const reply = await s4.c.request(T.TREE, encodeIds([{ type: 'tree', id: fromHex(tree) }]));
    assert.equal(reply.type, T.TREE_R);
    const t2 = decodeTree(reply.payload.subarray(4, 4 + reply.payload.readUInt32BE(0)));
    tree = t2.nodes.find((n) => n.name === name)!.subtree!;
  }
  await s4.c.request(T.TREE, encodeIds([{ type: 'tree', id: fromHex(tree) }]));
  const blobs = await s4.c.request(T.READ, encodeIds([{ type: 'data', id: fromHex(myFile) }]));
  assert.equal(blobs.type, T.BLOBS);
  s4.c.close();
  const done4 = await s4.served;
  assert.equal(done4.state, 'succeeded', JSON.stringify(done4.error));
  assert.equal(done4.result!.blobsServed, 1);

  // A restore session's token does not open a backup session (nor is it spent by the attempt).
  const session = token();
  const { served, ready } = serve(env, 'node-restore', { session, client: 'web01', snapshot: mine });
  await ready;
  const s5 = connect(env.port, '127.0.0.1');
  await once(s5, 'connect');
  await assert.rejects(openSession(new NodeClient(s5), session, 'backup'), /it is a restore session/);
  const s6 = connect(env.port, '127.0.0.1');
  await once(s6, 'connect');
  const c6 = new NodeClient(s6);
  await openRestoreSession(c6, session);
  c6.close();
  assert.equal((await served).state, 'succeeded');
});

test('a chunk damaged on the node fails its file with a message naming the chunk, and no wrong byte is written', async (t) => {
  const env = await setup(t);
  const a = join(env.dir, 'a');
  await sourceTree(a);
  const snap = await remoteBackup(env, 'web01', [a]);

  // Flip a byte inside one chunk of sub/big.bin in its pack.
  const repo = await Repository.open(await openBackend(env.storage.url), env.storage.password, { noCache: true });
  await repo.loadIndex();
  const root = (await loadSnapshot(repo, snap)).tree;
  const big = (await treeAt(repo, root, join(a, 'sub'))).nodes.find((n) => n.name === 'big.bin')!;
  const chunk = big.content![1]!;
  const hit = repo.locate('data', fromHex(chunk))!;
  await repo.close();
  const fh = await open(join(env.storage.url, packName(hit.packId.toString('hex'))), 'r+');
  const at = hit.entry.offset + Math.floor(hit.entry.length / 2);
  const one = Buffer.alloc(1);
  await fh.read(one, 0, 1, at);
  one[0] = one[0]! ^ 0x40;
  await fh.write(one, 0, 1, at);
  await fh.close();

  const target = join(env.dir, 'out');
  const r = await remoteRestore(env, 'web01', snap, { targetPath: target });
  assert.equal(r.restored.state, 'failed');
  assert.equal(r.restored.error!.code, 'CORRUPT');
  assert.match(r.restored.error!.message, /Cannot restore 1 entry/);
  const warning = r.agentEvents.find((e) => e.type === 'warning' && e.path === `${a}/sub/big.bin`);
  assert.ok(warning && warning.type === 'warning', 'the damaged file is named');
  assert.match(warning.problem, new RegExp(`${chunk.slice(0, 12)}.*storage node node1`));
  // The damaged file is not there (not even partly); every other file is, whole.
  await assert.rejects(lstat(join(target, a, 'sub', 'big.bin')), { code: 'ENOENT' });
  for (const name of await readdir(a)) {
    if ((await lstat(join(a, name))).isFile()) assert.ok((await readFile(join(target, a, name))).equals(await readFile(join(a, name))), name);
  }
  assert.ok(!(await readdir(join(target, a, 'sub'))).some((n) => n.startsWith('.coffer-restore-')), 'no temporary file is left');
  // The node says which chunk it could not read, and records the damage for the next backup.
  assert.equal(r.node.state, 'warnings', JSON.stringify(r.node.error));
  assert.equal(r.node.result!.blobsDamaged, 1);
  assert.ok(r.nodeEvents.some((e) => e.type === 'log' && e.message.includes(`chunk ${chunk.slice(0, 12)} cannot be read on this storage node`)));
  assert.ok(r.nodeEvents.some((e) => e.type === 'log' && /recorded the damage to 1 pack/.test(e.message)));
});
