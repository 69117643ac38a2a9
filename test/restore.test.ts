// Restore: the cross-host safety rule (as a pure function and through the CLI), hostile
// snapshots that try to write outside the target, overwrite policies and dry runs, include and
// exclude patterns, hard links, sparse files, metadata, damaged data and cancellation.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostname } from 'node:os';
import { chmod, chown, lchown, link, lstat, mkdir, open, readdir, readFile, readlink, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { CofferError, isCofferError } from '../src/core/errors.ts';
import { chunkId, toHex } from '../src/engine/hash.ts';
import { localHostIdentity } from '../src/sources/host.ts';
import { backup } from '../src/testing/jobs.ts';
import { compilePathFilter, compilePattern, matchesPattern, restoreSafety, systemDirOf, type RestoreEntry } from '../src/jobs/restore.ts';
import { restore } from '../src/testing/jobs.ts';
import { BlobSaver } from '../src/repository/packer.ts';
import { Repository } from '../src/repository/repository.ts';
import { listAll, type GetOptions } from '../src/storage/backend.ts';
import { saveSnapshot, type HostIdentity, type Snapshot } from '../src/repository/snapshot.ts';
import { nameBytes } from '../src/repository/tree.ts';
import { createSpecial, readXattrs, setTimesNs, writeXattrs } from '../src/sources/metadata.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import { makeTestRepo, TEST_PASSWORD, type TestRepo } from '../src/testing/repo.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { listTree, makeSourceTree } from './helpers.ts';
import { runCli } from './cli.ts';

const OTHER: HostIdentity = { hostname: 'other-host', os: 'linux', arch: 'x64' };
const HERE: HostIdentity = { hostname: 'this-host', os: 'linux', osRelease: 'Debian GNU/Linux 12 (bookworm)', arch: 'x64', machineId: 'aaaa1111' };

/** The path of `src` inside a snapshot that backed it up by its absolute path. */
const inSnap = (root: string, src: string, ...rest: string[]) => join(root, ...src.split('/').filter(Boolean), ...rest);

/** Saves raw (possibly hostile) trees and data blobs straight into the repository. */
function crafter(tr: TestRepo) {
  const saver = new BlobSaver(tr.repo, tr.pool);
  const save = async (type: 'data' | 'tree', raw: Buffer) => {
    const id = chunkId(tr.repo.keys.chunkIdKey, raw);
    await saver.save(type, id, raw);
    return toHex(id);
  };
  return {
    data: (raw: Buffer) => save('data', raw),
    /** Nodes are sorted by name bytes, as decodeTree() demands; nothing else is checked. */
    tree: (nodes: Array<Record<string, unknown>>) => {
      const sorted = [...nodes].sort((a, b) => Buffer.compare(nameBytes(a as { name: string; rawName?: string }), nameBytes(b as { name: string; rawName?: string })));
      return save('tree', Buffer.from(JSON.stringify({ nodes: sorted })));
    },
    async flush() {
      await saver.flush();
      await tr.repo.loadIndex();
    },
  };
}

const base = { mode: 0o644, uid: 0, gid: 0, mtimeNs: '1600000000000000000' };
const fileNode = (name: string, id: string, size: number, extra: Record<string, unknown> = {}) => ({ ...base, name, type: 'file', size, content: [id], ...extra });
const dirNode = (name: string, subtree: string, extra: Record<string, unknown> = {}) => ({ ...base, mode: 0o755, name, type: 'dir', subtree, ...extra });
const linkNode = (name: string, target: string, extra: Record<string, unknown> = {}) => ({ ...base, mode: 0o777, name, type: 'symlink', linkTarget: target, ...extra });

/** Flips the byte at `at` and puts the file's times back: size and mtime say nothing changed. */
async function flipByteKeepingTimes(path: string, at: number): Promise<void> {
  const st = await lstat(path, { bigint: true });
  const fh = await open(path, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, at);
  b[0]! ^= 0xff;
  await fh.write(b, 0, 1, at);
  await fh.close();
  setTimesNs(path, { mtimeNs: st.mtimeNs.toString(), atimeNs: st.atimeNs.toString() });
}

const b64 = (s: string) => Buffer.from(s).toString('base64');

async function noTempFiles(dir: string): Promise<void> {
  const all = await readdir(dir, { recursive: true });
  assert.deepEqual(all.filter((n) => n.includes('.coffer-restore-')), [], 'temporary files left behind');
}

describe('restoreSafety()', () => {
  it('allows the same host anywhere, and only notes a changed OS release for system directories', () => {
    for (const t of ['/', '/etc', '/home/alice', '/tmp/x']) assert.equal(restoreSafety(HERE, HERE, t).refuse, undefined, t);
    const upgraded = { ...HERE, osRelease: 'Debian GNU/Linux 13 (trixie)' };
    const v = restoreSafety(HERE, upgraded, '/');
    assert.equal(v.refuse, undefined);
    assert.match(v.warnings.join('\n'), /Debian GNU\/Linux 12.*Debian GNU\/Linux 13/);
    assert.deepEqual(restoreSafety(HERE, upgraded, '/srv/x').warnings, []);
    // A machine id known on one side only is no difference; host names compare case-insensitively.
    assert.equal(restoreSafety({ ...HERE, machineId: undefined, hostname: 'THIS-HOST' }, HERE, '/').refuse, undefined);
  });

  it('refuses a foreign host, machine, os or arch over every system directory, naming both hosts', () => {
    const foreign: Array<[HostIdentity, RegExp]> = [
      [OTHER, /hostname "other-host" is not "this-host"/],
      [{ ...HERE, machineId: 'bbbb2222' }, /machine ids differ/],
      [{ ...HERE, os: 'sunos' }, /os sunos is not linux/],
      [{ ...HERE, arch: 'arm64' }, /arch arm64 is not x64/],
    ];
    const systemTargets = ['/', '/usr', '/usr/local/restore', '/etc', '/var/lib/db', '/boot', '/bin', '/sbin', '/lib', '/lib64', '/libx32/x', '/opt', '/root', '/home', '/home/alice', '/home/alice/restored', '/tmp/../etc', '/etc/'];
    for (const [src, why] of foreign) {
      for (const t of systemTargets) {
        const v = restoreSafety(src, HERE, t);
        assert.ok(v.refuse, `${src.hostname}/${src.os}/${src.arch} into ${t} must be refused`);
        assert.match(v.refuse, /Cannot restore into/);
        assert.match(v.refuse, /overwrite host "this-host"/);
        assert.match(v.refuse, new RegExp(`data of host "${src.hostname}"`));
        assert.match(v.refuse, why);
        assert.match(v.hint!, /--force --confirm-host this-host/);
      }
    }
    // Unknown source (a bare tree id): treated as foreign.
    assert.match(restoreSafety(undefined, HERE, '/').refuse!, /data of an unknown host/);
  });

  it('lets a foreign snapshot go to other directories, with a notice', () => {
    for (const t of ['/tmp/restore', '/srv/restore', '/mnt/x', '/usrlocal', '/homework', '/etcetera', '/data/home/bob']) {
      const v = restoreSafety(OTHER, HERE, t);
      assert.equal(v.refuse, undefined, t);
      assert.equal(v.systemDir, undefined, t);
      assert.match(v.warnings.join(), /other-host.*this-host/);
    }
    // A home directory outside /home is protected when the caller names it.
    assert.ok(restoreSafety(OTHER, HERE, '/data/home/bob/x', { homeDirs: ['/data/home/bob'] }).refuse);
    assert.equal(systemDirOf('/lib32/x'), '/lib32');
    assert.equal(systemDirOf('/srv'), undefined);
  });

  it('needs both --force and --confirm-host with this host name; a wrong name always stops', () => {
    assert.match(restoreSafety(OTHER, HERE, '/', { force: true }).refuse!, /with --force alone/);
    assert.match(restoreSafety(OTHER, HERE, '/', { force: true }).hint!, /--confirm-host this-host/);
    assert.ok(restoreSafety(OTHER, HERE, '/', { confirmHost: 'this-host' }).refuse, '--confirm-host without --force');
    const wrong = restoreSafety(OTHER, HERE, '/', { force: true, confirmHost: 'wrong-name' });
    assert.match(wrong.refuse!, /--confirm-host "wrong-name" does not name this host, which is host "this-host"/);
    // The name is checked even where it is not needed: it says which host the operator thinks this is.
    assert.ok(restoreSafety(HERE, HERE, '/tmp/x', { confirmHost: 'other-host' }).refuse);
    const ok = restoreSafety(OTHER, HERE, '/', { force: true, confirmHost: 'This-Host' });
    assert.equal(ok.refuse, undefined);
    assert.match(ok.warnings.join(), /overwriting host "this-host".*data of host "other-host".*forced/);
  });
});

describe('restore', () => {
  it('refuses a foreign in-place restore through the CLI before writing anything', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
    const repoDir = join(dir, 'repo');
    const tr = await makeTestRepo({ backend: new LocalBackend(repoDir) });
    t.after(() => tr.close());
    const other = await backup(tr.repo, tr.pool, [src], { host: OTHER });
    // The snapshot would put files back at `src`: gone now, so any write would show.
    await rm(src, { recursive: true });
    const env = { COFFER_PASSWORD: TEST_PASSWORD, COFFER_REPOSITORY: repoDir, COFFER_CACHE_DIR: join(dir, 'cache') };
    const me = hostname();
    for (const extra of [[], ['--dry-run'], ['--force'], ['--force', '--confirm-host', 'wrong-name'], ['--confirm-host', me]]) {
      const r = await runCli(['repo', 'restore', 'latest', '--target', '/', ...extra], { env });
      assert.equal(r.code, 1, `${extra.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /from host "other-host"/);
      assert.match(r.stderr, new RegExp(`coffer: Cannot restore into /[: ].*host "${me}"`));
      if (extra.includes('wrong-name')) assert.match(r.stderr, /--confirm-host "wrong-name" does not name this host/);
      else assert.match(r.stderr, /data of host "other-host"/);
      await assert.rejects(lstat(src), { code: 'ENOENT' }, `${extra.join(' ')} wrote into the target`);
    }
    // The same snapshot into a scratch directory is fine, with a note on whose data it is.
    let r = await runCli(['--json', 'repo', 'restore', other.snapshotId!, '--target', join(dir, 'scratch')], { env });
    assert.equal(r.code, 0, r.stderr);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(events[0].type, 'hosts');
    assert.equal(events[0].source.hostname, 'other-host');
    assert.match(events.find((e) => e.type === 'notice').message, /other-host/);
    assert.equal(await readFile(inSnap(join(dir, 'scratch'), src, 'passwd'), 'utf8'), 'root:x:0:0::/root:/bin/sh\n');
    // Confirmed by this host's name, the in-place restore runs (limited to the source path).
    r = await runCli(['repo', 'restore', 'latest', '--target', '/', '--include', src, '--force', '--confirm-host', me], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(join(src, 'passwd'), 'utf8'), 'root:x:0:0::/root:/bin/sh\n');
  });

  it('the CLI lists a dry run as JSON events without writing, and exits 3 when a restore had warnings', async (t) => {
    const dir = await tempDir(t);
    const repoDir = join(dir, 'repo');
    const tr = await makeTestRepo({ backend: new LocalBackend(repoDir) });
    t.after(() => tr.close());
    const c = crafter(tr);
    const one = await c.data(Buffer.from('one'));
    const two = await c.data(Buffer.from('two'));
    // Two files claiming one inode with different contents: restored apart, with a warning.
    const tree = await c.tree([fileNode('a', one, 3, { inode: '9', deviceId: '1', links: 2 }), fileNode('b', two, 3, { inode: '9', deviceId: '1', links: 2 })]);
    await c.flush();
    const snap: Snapshot = { version: 1, time: new Date().toISOString(), tree, paths: ['/x'], host: localHostIdentity(), username: 'test', tags: [], program: 'test' };
    await saveSnapshot(tr.repo, snap);
    const env = { COFFER_PASSWORD: TEST_PASSWORD, COFFER_REPOSITORY: repoDir, COFFER_CACHE_DIR: join(dir, 'cache') };
    const out = join(dir, 'out');
    let r = await runCli(['--json', 'repo', 'restore', 'latest', '--target', out, '--dry-run'], { env });
    // The dry run meets the same problem in the snapshot, so it ends with warnings too.
    assert.equal(r.code, 3, r.stderr);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(events.filter((e) => e.type === 'entry').map((e) => [e.action, e.path, e.nodeType, e.dryRun]), [['create', '/a', 'file', true], ['create', '/b', 'file', true]]);
    const summary = events.find((e) => e.type === 'summary');
    assert.equal(summary.created.files, 2);
    assert.equal(summary.warnings, 1);
    await assert.rejects(lstat(out), { code: 'ENOENT' }, 'a dry run writes nothing');
    r = await runCli(['repo', 'restore', 'latest', '--target', out], { env });
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /warning: \/b: .*different content/);
    assert.match(r.stdout, /created: +2 files/);
    assert.equal(await readFile(join(out, 'b'), 'utf8'), 'two');
  });

  it('refuses a foreign snapshot in place through the API too, and restores it elsewhere', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'f'), 'x');
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src], { host: OTHER });
    await rm(src, { recursive: true });
    await assert.rejects(restore(tr.repo, snapshot, '/'), (e) => isCofferError(e, 'REFUSED') && /other-host/.test(e.message));
    await assert.rejects(restore(tr.repo, snapshot, '/', { force: true, confirmHost: 'wrong-name' }), (e) => isCofferError(e, 'REFUSED'));
    await assert.rejects(lstat(src), { code: 'ENOENT' });
    // The safety check looks at the target's real path: a symlink to / is still /.
    await symlink('/', join(dir, 'root-link'));
    await assert.rejects(restore(tr.repo, snapshot, join(dir, 'root-link')), (e) => isCofferError(e, 'REFUSED'));
    await assert.rejects(lstat(src), { code: 'ENOENT' });
    const res = await restore(tr.repo, snapshot, join(dir, 'out'));
    assert.match(res.notices.join(), /other-host/);
    assert.equal(res.warnings.length, 0);
    // The same snapshot as seen from its own host is no problem.
    const mine: Snapshot = { ...snapshot, host: localHostIdentity() };
    assert.equal((await restore(tr.repo, mine, join(dir, 'out2'))).notices.length, 0);
  });

  it('a hostile snapshot writes nothing outside the target', async (t) => {
    const dir = await tempDir(t);
    const outside = join(dir, 'outside');
    const target = join(dir, 'target');
    await mkdir(outside);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const c = crafter(tr);
    const payload = Buffer.from('owned\n');
    const id = await c.data(payload);
    const f = (name: string, extra: Record<string, unknown> = {}) => fileNode(name, id, payload.length, extra);

    // Traversal names, in the root and deeper: the tree is rejected, the rest of the snapshot is restored.
    for (const name of ['..', '.', '/etc/evil', 'a/../../x', '../outside/x']) {
      const bad = await c.tree([f(name)]);
      const root = await c.tree([dirNode('d', bad), f('ok.txt')]);
      await c.flush();
      await assert.rejects(restore(tr.repo, root, target), (e) => isCofferError(e, 'CORRUPT') && (e.details?.damaged as Array<{ path: string }>)[0]!.path === '/d', name);
      assert.equal(await readFile(join(target, 'ok.txt'), 'utf8'), 'owned\n');
      await assert.rejects(restore(tr.repo, bad, target), (e) => isCofferError(e, 'CORRUPT'), name);
    }

    // A symlink to the outside is restored as a link and never followed...
    const withLink = await c.tree([linkNode('a', outside), linkNode('rel', '../outside'), f('z')]);
    // ... and a second tree that puts `x` under a directory `a` (a different parent node) meets a
    // symlink where its directory should be: refused, skipped, or (always) the link is replaced.
    const underA = await c.tree([dirNode('a', await c.tree([f('x')]))]);
    const underRel = await c.tree([dirNode('rel', await c.tree([f('x')]))]);
    await c.flush();
    await restore(tr.repo, withLink, target);
    assert.equal(await readlink(join(target, 'a')), outside);
    for (const tree of [underA, underRel]) {
      await assert.rejects(restore(tr.repo, tree, target), (e) => isCofferError(e, 'REFUSED') && /symlink/.test(e.message));
      await assert.rejects(restore(tr.repo, tree, target, { dryRun: true }), (e) => isCofferError(e, 'REFUSED'));
      const never = await restore(tr.repo, tree, target, { overwrite: 'never' });
      assert.equal(never.skipped.dirs, 1);
      assert.equal(never.created.files, 0);
    }
    const replaced = await restore(tr.repo, underA, target, { overwrite: 'always' });
    assert.equal(replaced.overwritten.dirs, 1);
    assert.ok((await lstat(join(target, 'a'))).isDirectory());
    assert.equal(await readFile(join(target, 'a', 'x'), 'utf8'), 'owned\n');

    // The same name twice through raw bytes (a second parent for `x` under the link's name) is rejected.
    const alias = await c.tree([linkNode('rel2', outside), dirNode('zz', await c.tree([f('x')]), { rawName: Buffer.from('rel2').toString('base64') })]);
    await c.flush();
    await assert.rejects(restore(tr.repo, alias, join(target, 'alias')), (e) => isCofferError(e, 'CORRUPT'));

    // Hard-link tricks: a file "linked" to a symlink pointing outside, and one inode with two contents.
    const other = await c.data(Buffer.from('other content'));
    const links = await c.tree([
      linkNode('l', join(outside, 'secret'), { inode: '77', deviceId: '1', links: 2 }),
      f('m', { inode: '77', deviceId: '1', links: 2 }),
      f('n1', { inode: '78', deviceId: '1', links: 2 }),
      fileNode('n2', other, 13, { inode: '78', deviceId: '1', links: 2 }),
    ]);
    await c.flush();
    const lr = await restore(tr.repo, links, join(target, 'links'));
    assert.ok((await lstat(join(target, 'links', 'm'))).isFile());
    assert.equal(await readFile(join(target, 'links', 'm'), 'utf8'), 'owned\n');
    assert.equal(await readFile(join(target, 'links', 'n2'), 'utf8'), 'other content');
    assert.notEqual((await stat(join(target, 'links', 'n1'))).ino, (await stat(join(target, 'links', 'n2'))).ino);
    assert.match(lr.warnings.map((w) => w.problem).join(), /different content/);

    // A directory in the target that is a symlink to the outside (made by someone else) is never followed.
    await mkdir(join(target, 'pre'));
    await symlink(outside, join(target, 'pre', 'sub'));
    const viaSub = await c.tree([dirNode('pre', await c.tree([dirNode('sub', await c.tree([f('x'), linkNode('y', '/etc/passwd')]))]))]);
    await c.flush();
    await assert.rejects(restore(tr.repo, viaSub, target), (e) => isCofferError(e, 'REFUSED'));
    assert.equal((await restore(tr.repo, viaSub, target, { overwrite: 'never' })).skipped.dirs, 1);

    assert.deepEqual(await readdir(outside), [], 'nothing may be written outside the target');
    assert.deepEqual((await readdir(dir)).sort(), ['outside', 'target'], 'the parent of the target has no new entries');
    await noTempFiles(target);
  });

  it('replacing a file in the target never writes into a pre-existing hard link to the outside', async (t) => {
    const dir = await tempDir(t);
    const target = join(dir, 'target');
    await mkdir(target);
    await writeFile(join(dir, 'victim'), 'precious\n');
    await link(join(dir, 'victim'), join(target, 'f'));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const c = crafter(tr);
    const tree = await c.tree([fileNode('f', await c.data(Buffer.from('owned\n')), 6)]);
    await c.flush();
    const res = await restore(tr.repo, tree, target, { overwrite: 'always' });
    assert.equal(res.overwritten.files, 1);
    assert.equal(await readFile(join(target, 'f'), 'utf8'), 'owned\n');
    assert.equal(await readFile(join(dir, 'victim'), 'utf8'), 'precious\n');
  });

  it('overwrite policies: never, if-changed (size and mtime) and always; dry runs write nothing', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'a.txt'), 'alpha');
    await writeFile(join(src, 'b.txt'), 'bravo');
    await writeFile(join(src, 'sub', 'c.txt'), 'charlie');
    await symlink('a.txt', join(src, 'ln'));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const out = join(dir, 'out');
    const first = await restore(tr.repo, snapshot, out);
    assert.equal(first.created.files, 3);
    assert.equal(first.created.symlinks, 1);
    const at = (...p: string[]) => inSnap(out, src, ...p);
    // a: other size; b: other content, same size and mtime (if-changed does not read content);
    // ln: another target; extra: not in the snapshot.
    await writeFile(at('a.txt'), 'ALPHA, changed');
    const bMtime = (await lstat(join(src, 'b.txt'), { bigint: true })).mtimeNs.toString();
    await writeFile(at('b.txt'), 'BRAVO');
    setTimesNs(at('b.txt'), { mtimeNs: bMtime });
    await rm(at('ln'));
    await symlink('b.txt', at('ln'));
    await writeFile(at('extra'), 'mine');

    const snapshotOf = async () => {
      const m = new Map<string, string>();
      for (const n of (await readdir(out, { recursive: true })).sort()) {
        const st = await lstat(join(out, n), { bigint: true });
        m.set(n, `${st.mode}:${st.mtimeNs}:${st.isFile() ? await readFile(join(out, n), 'utf8') : st.isSymbolicLink() ? await readlink(join(out, n)) : ''}`);
      }
      return m;
    };
    const before = await snapshotOf();
    const plan = async (overwrite: 'never' | 'if-changed' | 'always') => {
      const entries: RestoreEntry[] = [];
      const res = await restore(tr.repo, snapshot, out, { overwrite, dryRun: true, onEntry: (e) => entries.push(e) });
      assert.equal(res.dryRun, true);
      const byName = new Map(entries.map((e) => [e.path.split('/').at(-1), e.action]));
      return { res, actions: ['a.txt', 'b.txt', 'c.txt', 'ln'].map((n) => byName.get(n)) };
    };
    assert.deepEqual((await plan('never')).actions, ['skip', 'unchanged', 'unchanged', 'skip']);
    assert.deepEqual((await plan('if-changed')).actions, ['overwrite', 'unchanged', 'unchanged', 'overwrite']);
    const always = await plan('always');
    assert.deepEqual(always.actions, ['overwrite', 'overwrite', 'overwrite', 'overwrite']);
    assert.equal(always.res.overwritten.files, 3);
    assert.deepEqual(await snapshotOf(), before, 'a dry run writes nothing');
    // A dry run into a missing directory does not create it.
    const fresh = await restore(tr.repo, snapshot, join(dir, 'nowhere'), { dryRun: true });
    assert.equal(fresh.created.files, 3);
    await assert.rejects(lstat(join(dir, 'nowhere')), { code: 'ENOENT' });

    const never = await restore(tr.repo, snapshot, out, { overwrite: 'never' });
    assert.equal(never.skipped.files + never.skipped.symlinks, 2);
    assert.deepEqual(await snapshotOf(), before, 'never changes nothing that exists');
    const changed = await restore(tr.repo, snapshot, out);
    assert.equal(changed.overwritten.files, 1);
    assert.equal(changed.unchanged.files, 2);
    assert.equal(await readFile(at('a.txt'), 'utf8'), 'alpha');
    assert.equal(await readFile(at('b.txt'), 'utf8'), 'BRAVO');
    assert.equal(await readlink(at('ln')), 'a.txt');
    await restore(tr.repo, snapshot, out, { overwrite: 'always' });
    assert.equal(await readFile(at('b.txt'), 'utf8'), 'bravo');
    assert.equal(await readFile(at('extra'), 'utf8'), 'mine', 'restore never deletes what the snapshot lacks');
    await noTempFiles(out);
  });

  it('if-changed restores the mode, owner and xattrs of entries it leaves in place, reported apart from unchanged ones', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    for (const n of ['mode', 'owner', 'xattr', 'same', 'linked']) await writeFile(join(src, n), `content of ${n}\n`);
    writeXattrs(join(src, 'xattr'), [{ name: 'user.tag', value: b64('snapshot') }]);
    await symlink('same', join(src, 'ln'));
    createSpecial(join(src, 'pipe'), { type: 'fifo', mode: 0o640 });
    const isRoot = process.getuid?.() === 0;
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const out = join(dir, 'out');
    await restore(tr.repo, snapshot, out);
    const at = (...p: string[]) => inSnap(out, src, ...p);
    // Changes that keep size and mtime: if-changed leaves the content in place.
    await chmod(at('mode'), 0o600);
    await chmod(at('pipe'), 0o600);
    if (isRoot) {
      await chown(at('owner'), 1234, 4321);
      await lchown(at('ln'), 1234, 4321);
    }
    writeXattrs(at('xattr'), [{ name: 'user.tag', value: b64('changed') }]);
    // A hard link made in the target since (here outside it): that inode is not changed in place.
    await link(at('linked'), join(dir, 'elsewhere'));
    await chmod(at('linked'), 0o600);
    const linkedIno = (await stat(at('linked'))).ino;
    const sameCtime = (await lstat(at('same'), { bigint: true })).ctimeNs;

    const run = async (dryRun: boolean) => {
      const entries = new Map<string, RestoreEntry>();
      const res = await restore(tr.repo, snapshot, out, { dryRun, onEntry: (e) => entries.set(e.path.split('/').at(-1)!, e) });
      return { res, entries };
    };
    const dry = await run(true);
    assert.deepEqual(['mode', 'owner', 'xattr', 'pipe', 'ln', 'same', 'linked'].map((n) => dry.entries.get(n)?.action),
      ['metadata', isRoot ? 'metadata' : 'unchanged', 'metadata', 'metadata', isRoot ? 'metadata' : 'unchanged', 'unchanged', 'overwrite']);
    assert.equal(dry.entries.get('mode')!.reason, 'metadata differs: mode');
    assert.equal((await stat(at('mode'))).mode & 0o7777, 0o600, 'a dry run changes nothing');

    const { res, entries } = await run(false);
    assert.deepEqual(res.warnings, []);
    assert.equal(res.compare, 'size-mtime');
    assert.equal(res.metadataRestored.files, isRoot ? 3 : 2);
    assert.equal(res.metadataRestored.special, 1);
    assert.equal(res.metadataRestored.symlinks, isRoot ? 1 : 0);
    assert.equal(entries.get('xattr')!.reason, 'metadata restored: xattrs');
    if (isRoot) assert.equal(entries.get('owner')!.reason, 'metadata restored: owner');
    assert.equal(res.unchanged.files, isRoot ? 1 : 2);
    assert.equal(res.overwritten.files, 1);
    assert.match(entries.get('linked')!.reason!, /^mode differs and it has other hard links/);
    for (const n of ['mode', 'owner', 'xattr', 'same', 'linked', 'pipe']) {
      const want = await lstat(join(src, n));
      const got = await lstat(at(n));
      assert.equal(got.mode, want.mode, `${n}: mode`);
      assert.deepEqual([got.uid, got.gid], [want.uid, want.gid], `${n}: owner`);
    }
    if (isRoot) assert.deepEqual([(await lstat(at('ln'))).uid, (await lstat(at('ln'))).gid], [0, 0]);
    assert.deepEqual(readXattrs(at('xattr')), [{ name: 'user.tag', value: b64('snapshot') }]);
    // The other name of `linked` keeps its own metadata: the restored file is a new inode.
    assert.equal((await stat(join(dir, 'elsewhere'))).mode & 0o7777, 0o600);
    assert.notEqual((await stat(at('linked'))).ino, linkedIno);
    // What already matched was not touched (its ctime would show it).
    assert.equal((await lstat(at('same'), { bigint: true })).ctimeNs, sameCtime);
    const again = await restore(tr.repo, snapshot, out);
    assert.deepEqual(again.metadataRestored, { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, special: 0, bytes: 0 });
    assert.equal(again.unchanged.files, 5);
    await noTempFiles(out);
  });

  it('if-changed judges by size and mtime; compare: content finds a flipped byte that kept them, for any chunking', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'small.txt'), 'a small text file\n');
    // Larger than the 8 MiB compare block: a blob straddles two reads.
    const bigSize = 9_000_000;
    await writeFile(join(src, 'big.bin'), randomBytes(41, bigSize));
    await writeFile(join(src, 'touched.txt'), 'same content, newer mtime\n');
    // Sparse: data, a 3 MiB hole, data.
    const sparseSize = 4 * 1024 * 1024;
    await writeFile(join(src, 'sparse.img'), randomBytes(42, 100_000));
    const fh = await open(join(src, 'sparse.img'), 'r+');
    await fh.write(randomBytes(43, 100_000), 0, 100_000, sparseSize - 100_000);
    await fh.close();
    await mkdir(join(dir, 'images'));
    const image = join(dir, 'images', 'disk.img');
    await writeFile(image, randomBytes(44, 3 * 1024 * 1024 + 5));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const { snapshot: imageSnap } = await backup(tr.repo, tr.pool, [image], { images: true });
    const out = join(dir, 'out');
    await restore(tr.repo, snapshot, out);
    await restore(tr.repo, imageSnap, out);
    const at = (...p: string[]) => inSnap(out, src, ...p);
    const restoredImage = inSnap(out, image);
    assert.ok((await stat(at('sparse.img'))).blocks * 512 < sparseSize / 2, 'restored with its hole');

    await flipByteKeepingTimes(at('small.txt'), 3);
    await flipByteKeepingTimes(at('big.bin'), 8_500_000);
    await flipByteKeepingTimes(restoredImage, 2 * 1024 * 1024 + 7);
    const touch = () => setTimesNs(at('touched.txt'), { mtimeNs: '1800000000000000000' });
    touch();

    // By size and mtime (the default) the flipped files are not found: documented, not hidden.
    const entries = new Map<string, RestoreEntry>();
    const byTimes = await restore(tr.repo, snapshot, out, { onEntry: (e) => entries.set(e.path.split('/').at(-1)!, e) });
    assert.equal(byTimes.compare, 'size-mtime');
    assert.deepEqual(['small.txt', 'big.bin', 'sparse.img', 'touched.txt'].map((n) => entries.get(n)?.action), ['unchanged', 'unchanged', 'unchanged', 'overwrite']);
    assert.equal(entries.get('touched.txt')!.reason, 'size or mtime differ');
    assert.notDeepEqual(await readFile(at('small.txt')), await readFile(join(src, 'small.txt')));

    // By content, they are; a file that only has another mtime gets its mtime back, in place.
    touch();
    const touchedIno = (await stat(at('touched.txt'))).ino;
    entries.clear();
    const dry = await restore(tr.repo, snapshot, out, { compare: 'content', dryRun: true, onEntry: (e) => entries.set(e.path.split('/').at(-1)!, e) });
    assert.equal(dry.overwritten.files, 2);
    assert.deepEqual(['small.txt', 'big.bin', 'sparse.img', 'touched.txt'].map((n) => entries.get(n)?.action), ['overwrite', 'overwrite', 'unchanged', 'metadata']);
    assert.equal(entries.get('big.bin')!.reason, 'content differs');
    assert.equal(entries.get('touched.txt')!.reason, 'metadata differs: mtime');
    const byContent = await restore(tr.repo, snapshot, out, { compare: 'content' });
    assert.equal(byContent.compare, 'content');
    assert.equal(byContent.overwritten.files, 2);
    assert.equal(byContent.metadataRestored.files, 1);
    assert.equal(byContent.unchanged.files, 1);
    assert.deepEqual(byContent.warnings, []);
    for (const n of ['small.txt', 'big.bin', 'sparse.img', 'touched.txt']) assert.ok((await readFile(at(n))).equals(await readFile(join(src, n))), `${n} is byte-identical`);
    assert.equal((await stat(at('touched.txt'))).ino, touchedIno);
    assert.equal((await lstat(at('touched.txt'), { bigint: true })).mtimeNs, (await lstat(join(src, 'touched.txt'), { bigint: true })).mtimeNs);

    // Fixed-size image chunks: the same comparison, with the chunk lengths from the index.
    const img = await restore(tr.repo, imageSnap, out, { compare: 'content' });
    assert.equal(img.overwritten.files, 1);
    assert.ok((await readFile(restoredImage)).equals(await readFile(image)));
    assert.equal((await restore(tr.repo, imageSnap, out, { compare: 'content' })).unchanged.files, 1);
    // A byte flipped in the data after the hole of the sparse file; and a file cut short.
    await flipByteKeepingTimes(at('sparse.img'), sparseSize - 10);
    await truncate(at('small.txt'), 5);
    const last = await restore(tr.repo, snapshot, out, { compare: 'content', onEntry: (e) => entries.set(e.path.split('/').at(-1)!, e) });
    assert.equal(last.overwritten.files, 2);
    assert.equal(entries.get('small.txt')!.reason, 'size differs');
    assert.ok((await readFile(at('sparse.img'))).equals(await readFile(join(src, 'sparse.img'))));
    await noTempFiles(out);
  });

  it('the CLI says what "unchanged" was judged by, fixes metadata, and --compare content finds changed content', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a.txt'), 'alpha\n');
    await writeFile(join(src, 'b.txt'), 'bravo\n');
    const repoDir = join(dir, 'repo');
    const tr = await makeTestRepo({ backend: new LocalBackend(repoDir) });
    t.after(() => tr.close());
    await backup(tr.repo, tr.pool, [src]);
    const env = { COFFER_PASSWORD: TEST_PASSWORD, COFFER_REPOSITORY: repoDir, COFFER_CACHE_DIR: join(dir, 'cache') };
    const out = join(dir, 'out');
    let r = await runCli(['repo', 'restore', 'latest', '--target', out], { env });
    assert.equal(r.code, 0, r.stderr);
    await chmod(inSnap(out, src, 'a.txt'), 0o600);
    await flipByteKeepingTimes(inSnap(out, src, 'b.txt'), 0);
    r = await runCli(['repo', 'restore', 'latest', '--target', out, '-v'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /metadata +\S*a\.txt {2}\(metadata restored: mode\)/);
    assert.match(r.stdout, /metadata fixed: 1 files/);
    assert.match(r.stdout, /unchanged: +1 files.*\(judged by size and mtime; --compare content reads them\)/);
    assert.equal((await stat(inSnap(out, src, 'a.txt'))).mode & 0o777, 0o644);
    assert.notEqual(await readFile(inSnap(out, src, 'b.txt'), 'utf8'), 'bravo\n', 'not found by size and mtime');
    r = await runCli(['--json', 'repo', 'restore', 'latest', '--target', out, '--compare', 'content'], { env });
    assert.equal(r.code, 0, r.stderr);
    const summary = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((e) => e.type === 'summary');
    assert.equal(summary.compare, 'content');
    assert.equal(summary.overwritten.files, 1);
    assert.equal(summary.unchanged.files, 1);
    assert.equal(summary.metadataRestored.files, 0);
    assert.equal(await readFile(inSnap(out, src, 'b.txt'), 'utf8'), 'bravo\n');
    for (const bad of [['--compare', 'hash'], ['--compare', 'content', '--overwrite', 'always']]) {
      r = await runCli(['repo', 'restore', 'latest', '--target', out, ...bad], { env });
      assert.equal(r.code, 2, `${bad.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /Cannot restore with --compare/);
    }
  });

  it('include and exclude select paths and globs; created ancestors get their metadata', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    for (const d of ['docs', 'db/old', 'logs']) await mkdir(join(src, d), { recursive: true });
    for (const f of ['docs/a.md', 'docs/b.txt', 'db/dump.sql', 'db/old/older.sql', 'logs/x.log', 'top.sql']) await writeFile(join(src, f), f);
    await chmod(join(src, 'db'), 0o750);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const files = async (root: string) => (await readdir(root, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(root.length + 1)).sort();
    const cases: Array<[string[], string[], string[]]> = [
      [['*.sql'], [], ['db/dump.sql', 'db/old/older.sql', 'top.sql']],
      [['*.sql'], ['old'], ['db/dump.sql', 'top.sql']],
      [[join(src, 'docs')], ['*.txt'], ['docs/a.md']],
      [['**/old/*.sql', '*.log'], [], ['db/old/older.sql', 'logs/x.log']],
      [[`${src}/{docs,logs}/?.*`], [], ['docs/a.md', 'docs/b.txt', 'logs/x.log']],
      [[], ['db', 'docs'], ['logs/x.log', 'top.sql']],
    ];
    for (const [i, [include, exclude, want]] of cases.entries()) {
      const out = join(dir, `out${i}`);
      await restore(tr.repo, snapshot, out, { include, exclude });
      const root = inSnap(out, src);
      assert.deepEqual(await files(root), want, `include ${include} exclude ${exclude}`);
    }
    // db was created only as the parent of dump.sql, yet has its mode from the snapshot.
    assert.equal((await stat(inSnap(join(dir, 'out0'), src, 'db'))).mode & 0o777, 0o750);
    assert.deepEqual(await readdir(inSnap(join(dir, 'out0'), src)), ['db', 'top.sql'], 'no empty directories for unselected paths');

    const f = compilePathFilter([join(src, 'db')], []);
    assert.equal(f.decide(dir, true, false), 'descend');
    assert.equal(f.decide(join(src, 'docs'), true, false), 'skip');
    assert.equal(f.decide(join(src, 'db'), true, false), 'all');
    assert.ok(matchesPattern(compilePattern('f[0-9].log'), '/x/f7.log'));
    assert.ok(!matchesPattern(compilePattern('f[!0-9].log'), '/x/f7.log'));
    assert.ok(!matchesPattern(compilePattern('/a/*'), '/a/b/c'));
    assert.ok(matchesPattern(compilePattern('/a/**'), '/a/b/c'));
    assert.ok(matchesPattern(compilePattern('/'), '/a') && compilePathFilter(['/']).decide('/a/b', false, false) === 'all');
    assert.ok(matchesPattern(compilePattern('home/alice'), '/home/alice') && !matchesPattern(compilePattern('home/alice'), '/x/home/alice'), 'a "/" in the middle anchors');
    assert.throws(() => compilePattern('../etc'), (e) => isCofferError(e, 'USAGE'));
  });

  it('hard links come back as links; a second restore leaves them alone', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'f1'), randomBytes(3, 100_000));
    await link(join(src, 'f1'), join(src, 'f2'));
    await link(join(src, 'f1'), join(src, 'sub', 'f3'));
    await writeFile(join(src, 'g'), randomBytes(3, 100_000));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const out = join(dir, 'out');
    const res = await restore(tr.repo, snapshot, out, { fileConcurrency: 4 });
    assert.equal(res.created.files, 2);
    assert.equal(res.created.hardlinks, 2);
    const ino = async (p: string) => (await stat(inSnap(out, src, p))).ino;
    assert.equal(await ino('f2'), await ino('f1'));
    assert.equal(await ino('sub/f3'), await ino('f1'));
    assert.notEqual(await ino('g'), await ino('f1'));
    assert.equal((await stat(inSnap(out, src, 'f1'))).nlink, 3);
    assert.ok((await readFile(inSnap(out, src, 'sub/f3'))).equals(randomBytes(3, 100_000)));
    const again = await restore(tr.repo, snapshot, out);
    assert.equal(again.unchanged.hardlinks, 2);
    assert.equal(again.created.files + again.overwritten.files + again.overwritten.hardlinks, 0);
  });

  it('a restore in many small windows (shared blobs, hard links across windows) gives the same tree', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await makeSourceTree(src, 7, 0.2);
    await mkdir(join(src, 'copies'));
    for (let i = 0; i < 6; i++) await writeFile(join(src, 'copies', `same-${i}`), randomBytes(70, 90_000));
    await link(join(src, 'copies', 'same-0'), join(src, 'zz-link-to-same-0'));
    await link(join(src, 'sub', 'text-65536.txt'), join(src, 'copies', 'a-link'));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    for (const windowFiles of [1, 3]) {
      const out = join(dir, `out-${windowFiles}`);
      await restore(tr.repo, snapshot, out, { windowFiles, fileConcurrency: 2 });
      assert.deepEqual(await listTree(inSnap(out, src)), await listTree(src), `windows of ${windowFiles}`);
      assert.equal((await stat(inSnap(out, src, 'zz-link-to-same-0'))).ino, (await stat(inSnap(out, src, 'copies/same-0'))).ino);
      assert.equal((await stat(inSnap(out, src, 'copies/a-link'))).ino, (await stat(inSnap(out, src, 'sub/text-65536.txt'))).ino);
    }
  });

  it('sparse files and zero runs are restored as holes (or written with sparse: false)', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    const size = 6 * 1024 * 1024 + 4;
    const fh = await open(join(src, 'disk.img'), 'w');
    await fh.write(Buffer.from('head'), 0, 4, 0);
    await fh.write(randomBytes(5, 10_000), 0, 10_000, 3 * 1024 * 1024);
    await fh.write(Buffer.from('tail'), 0, 4, size - 4);
    await fh.close();
    // A file written in full (not sparse on disk) with a long run of zeros in it.
    await writeFile(join(src, 'zeros.bin'), Buffer.concat([randomBytes(6, 50_000), Buffer.alloc(2 * 1024 * 1024), randomBytes(7, 50_000)]));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const out = join(dir, 'out');
    await restore(tr.repo, snapshot, out);
    for (const name of ['disk.img', 'zeros.bin']) {
      const st = await stat(inSnap(out, src, name));
      assert.ok((await readFile(inSnap(out, src, name))).equals(await readFile(join(src, name))), name);
      assert.ok(st.blocks * 512 < st.size - 1024 * 1024, `${name}: ${st.blocks} blocks for ${st.size} bytes`);
    }
    const dense = join(dir, 'dense');
    await restore(tr.repo, snapshot, dense, { sparse: false });
    const st = await stat(inSnap(dense, src, 'disk.img'));
    assert.ok(st.blocks * 512 >= st.size, 'sparse: false writes every byte');
  });

  it('restores modes, owners, exact times, directory times, xattrs, FIFOs and names that are not UTF-8', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    await writeFile(join(src, 'd', 'f'), 'content');
    await chmod(join(src, 'd', 'f'), 0o640);
    const isRoot = process.getuid?.() === 0;
    if (isRoot) await chown(join(src, 'd', 'f'), 1234, 4321);
    writeXattrs(join(src, 'd', 'f'), [{ name: 'user.coffer', value: Buffer.from('kept').toString('base64') }]);
    const raw = Buffer.concat([Buffer.from(join(src, 'd') + '/'), Buffer.from([0x6e, 0xff, 0xfe])]);
    await writeFile(raw, 'raw name');
    createSpecial(join(src, 'd', 'pipe'), { type: 'fifo', mode: 0o600 });
    setTimesNs(join(src, 'd', 'f'), { mtimeNs: '1500000000123456789' });
    await chmod(join(src, 'd'), 0o710);
    setTimesNs(join(src, 'd'), { mtimeNs: '1400000000000000001' });
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const out = join(dir, 'out');
    const res = await restore(tr.repo, snapshot, out);
    assert.deepEqual(res.warnings, []);
    const f = await lstat(inSnap(out, src, 'd', 'f'), { bigint: true });
    assert.equal(f.mode & 0o7777n, 0o640n);
    assert.equal(f.mtimeNs, 1500000000123456789n);
    if (isRoot) assert.deepEqual([f.uid, f.gid], [1234n, 4321n]);
    assert.deepEqual(readXattrs(inSnap(out, src, 'd', 'f')), [{ name: 'user.coffer', value: Buffer.from('kept').toString('base64') }]);
    // The directory's times are set after its children were written into it.
    const d = await lstat(inSnap(out, src, 'd'), { bigint: true });
    assert.equal(d.mode & 0o7777n, 0o710n);
    assert.equal(d.mtimeNs, 1400000000000000001n);
    assert.ok((await lstat(inSnap(out, src, 'd', 'pipe'))).isFIFO());
    const names = await readdir(Buffer.from(inSnap(out, src, 'd')), { encoding: 'buffer' });
    const rawName = names.find((n) => n.equals(Buffer.from([0x6e, 0xff, 0xfe])));
    assert.ok(rawName, 'the name keeps its bytes');
    assert.equal(await readFile(Buffer.concat([Buffer.from(inSnap(out, src, 'd') + '/'), rawName]), 'utf8'), 'raw name');
  });

  it('registers a session while it restores (so prune waits), and still restores from a read-only repository', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const c = crafter(tr);
    const tree = await c.tree([fileNode('f', await c.data(Buffer.from('data')), 4)]);
    await c.flush();
    const puts: string[] = [];
    let readOnly = false;
    const backend = new Proxy(tr.backend, {
      get(target, prop) {
        if (prop === 'put') {
          return async (name: string, data: Buffer, o?: unknown) => {
            puts.push(name);
            if (readOnly) throw new CofferError('STORAGE_DENIED', `Cannot write ${name}: the repository is read-only`);
            return target.put(name, data, o as never);
          };
        }
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const repo = await Repository.open(backend, TEST_PASSWORD, { noCache: true });
    t.after(() => repo.close());
    await restore(repo, tree, join(dir, 'a'));
    assert.ok(puts.some((n) => n.startsWith('sessions/')), 'a session was registered');
    assert.deepEqual(await listAll(tr.backend, 'sessions/'), [], 'and removed at the end');
    puts.length = 0;
    await restore(repo, tree, join(dir, 'dry'), { dryRun: true });
    assert.deepEqual(puts, [], 'a dry run writes nothing to the repository either');
    readOnly = true;
    const res = await restore(repo, tree, join(dir, 'b'));
    assert.match(res.notices.join(), /cannot register this restore/);
    assert.equal(await readFile(join(dir, 'b', 'f'), 'utf8'), 'data');
  });

  it('a file whose data is missing is not restored; the others are, and the restore fails with CORRUPT', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const c = crafter(tr);
    const good = await c.data(Buffer.from('good'));
    const tree = await c.tree([fileNode('bad', 'ab'.repeat(32), 4), fileNode('good', good, 4), fileNode('wrong-size', good, 5)]);
    await c.flush();
    const out = join(dir, 'out');
    // A dry run finds the same problems from the index alone.
    await assert.rejects(restore(tr.repo, tree, out, { dryRun: true }), (e) => isCofferError(e, 'CORRUPT') && (e.details?.damaged as unknown[]).length === 2);
    await assert.rejects(restore(tr.repo, tree, out), (e) => isCofferError(e, 'CORRUPT') && (e.details?.damaged as unknown[]).length === 2);
    assert.deepEqual(await readdir(out), ['good']);
  });

  it('a snapshot whose root tree is missing or damaged fails with CORRUPT naming "/", like any lost entry', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const c = crafter(tr);
    const root = await c.tree([fileNode('f', await c.data(Buffer.from('data')), 4)]);
    await c.flush();
    const rootLost = (e: unknown) => isCofferError(e, 'CORRUPT') && (e.details?.damaged as Array<{ path: string }>).map((d) => d.path).join() === '/';
    // Not in the index (a repair of the index dropped it): this was NOT_FOUND, which callers did not expect.
    await assert.rejects(restore(tr.repo, 'cd'.repeat(32), join(dir, 'a')), rootLost);
    const hit = tr.repo.index.lookup(Buffer.from(root, 'hex'), 'tree')!;
    const name = `data/${toHex(hit.packId).slice(0, 2)}/${toHex(hit.packId)}`;
    const pack = await tr.backend.get(name);
    pack[hit.entry.offset + 3]! ^= 1;
    await tr.backend.put(name, pack);
    await assert.rejects(restore(tr.repo, root, join(dir, 'b')), rootLost);
    assert.deepEqual(await readdir(join(dir, 'b')), []);
  });

  it('a directory whose tree lies beyond the end of a truncated pack is named lost; the rest is restored', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const c = crafter(tr);
    const sub = await c.tree([fileNode('inner', await c.data(Buffer.from('inner')), 5)]);
    await c.flush(); // the next blobs go to another pack
    const root = await c.tree([dirNode('d', sub), fileNode('ok', await c.data(Buffer.from('ok')), 2)]);
    await c.flush();
    const hit = tr.repo.index.lookup(Buffer.from(sub, 'hex'), 'tree')!;
    const name = `data/${toHex(hit.packId).slice(0, 2)}/${toHex(hit.packId)}`;
    await tr.backend.put(name, (await tr.backend.get(name)).subarray(0, hit.entry.offset + 1));
    const out = join(dir, 'out');
    // This was INVALID_RANGE for the whole restore.
    await assert.rejects(restore(tr.repo, root, out), (e) => isCofferError(e, 'CORRUPT') && (e.details?.damaged as Array<{ path: string }>).map((d) => d.path).join() === '/d');
    assert.equal(await readFile(join(out, 'ok'), 'utf8'), 'ok');
  });

  it('a pack whose header claims a newer version loses the files and directories in it; the rest is restored', async (t) => {
    const dir = await tempDir(t);
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const c = crafter(tr);
    const lostData = await c.data(Buffer.from('lost'));
    const sub = await c.tree([fileNode('inner', await c.data(Buffer.from('inner')), 5)]);
    await c.flush(); // the next blobs go to another pack
    const root = await c.tree([dirNode('d', sub), fileNode('lost', lostData, 4), fileNode('ok', await c.data(Buffer.from('ok')), 2)]);
    await c.flush();
    const hit = tr.repo.index.lookup(Buffer.from(sub, 'hex'), 'tree')!;
    const name = `data/${toHex(hit.packId).slice(0, 2)}/${toHex(hit.packId)}`;
    const bytes = await tr.backend.get(name);
    bytes[8] = 86; // the pack header's version byte
    await tr.backend.put(name, bytes);
    const out = join(dir, 'out');
    for (const pool of [undefined, tr.pool]) {
      // This was UNSUPPORTED for the whole restore (a tree), or INTERNAL (file data).
      await assert.rejects(restore(tr.repo, root, out, { pool }), (e) => isCofferError(e, 'CORRUPT') && (e.details?.damaged as Array<{ path: string }>).map((d) => d.path).sort().join() === '/d,/lost');
      assert.deepEqual((await readdir(out)).sort(), ['d', 'ok']);
      assert.deepEqual(await readdir(join(out, 'd')), [], 'the lost directory is there, empty');
    }
  });

  it('a storage failure while file data is read fails the restore with that failure, not INTERNAL', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 4; i++) await writeFile(join(src, `f${i}`), randomBytes(300 + i, 50_000));
    /** Fails the ranged reads of file data (trees and pack headers are smaller): the trees are read, then the data fails. */
    class DataReadsFail extends MemoryBackend {
      on = false;
      override async get(name: string, options?: GetOptions): Promise<Buffer> {
        if (this.on && name.startsWith('data/') && (options?.length ?? Infinity) > 2000) throw new CofferError('STORAGE_UNAVAILABLE', `Cannot get ${name}: the server went away`);
        return super.get(name, options);
      }
    }
    const backend = new DataReadsFail();
    const tr = await makeTestRepo({ backend });
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    backend.on = true;
    await assert.rejects(restore(tr.repo, snapshot, join(dir, 'out')), (e) => isCofferError(e, 'STORAGE_UNAVAILABLE') && /the server went away/.test(e.message));
  });

  it('damaged data found by a window flushed behind the walk fails that file only', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(200 + i, 3000));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    // Flip a byte inside f3's one blob, in its pack.
    const hit = tr.repo.index.lookup(chunkId(tr.repo.keys.chunkIdKey, randomBytes(203, 3000)), 'data')!;
    const name = `data/${toHex(hit.packId).slice(0, 2)}/${toHex(hit.packId)}`;
    const pack = await tr.backend.get(name);
    pack[hit.entry.offset + 5]! ^= 1;
    await tr.backend.put(name, pack);
    const out = join(dir, 'out');
    await assert.rejects(restore(tr.repo, snapshot, out, { windowFiles: 1, pool: tr.pool }), (e) => isCofferError(e, 'CORRUPT') && (e.details?.damaged as Array<{ path: string }>).length === 1 && /f3$/.test((e.details?.damaged as Array<{ path: string }>)[0]!.path));
    assert.deepEqual((await readdir(inSnap(out, src))).sort(), ['f0', 'f1', 'f2', 'f4', 'f5']);
  });

  it('a restore stopped halfway leaves no partial file under its final name, and an old version whole', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'big.bin'), randomBytes(8, 2_000_000));
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const { snapshot } = await backup(tr.repo, tr.pool, [src]);
    const out = join(dir, 'out');
    const final = inSnap(out, src, 'big.bin');
    // Stops after the first blob written; `during` is what the final name held at that moment
    // (what a crash or power loss right then would leave).
    const stopped = async () => {
      const ac = new AbortController();
      let during: string | undefined;
      let bytes = 0;
      await assert.rejects(
        restore(tr.repo, snapshot, out, { signal: ac.signal, blobConcurrency: 1, overwrite: 'always', onProgress: (p) => {
          if (p.bytes === 0 || ac.signal.aborted) return;
          bytes = p.bytes;
          during = existsSync(final) ? readFileSync(final, 'utf8') : undefined;
          ac.abort();
        } }),
        (e) => isCofferError(e, 'CANCELLED'),
      );
      assert.ok(bytes > 0 && bytes < 2_000_000, 'stopped in the middle of the file');
      await noTempFiles(out);
      return during;
    };
    assert.equal(await stopped(), undefined, 'a new file is not under its name while it is written');
    await assert.rejects(lstat(final), { code: 'ENOENT' });
    // Over an existing file, the old version stays whole until the new one is complete.
    await writeFile(final, 'previous version');
    assert.equal(await stopped(), 'previous version');
    assert.equal(await readFile(final, 'utf8'), 'previous version');
    // Run again: the file is complete.
    await restore(tr.repo, snapshot, out);
    assert.ok((await readFile(inSnap(out, src, 'big.bin'))).equals(randomBytes(8, 2_000_000)));
  });
});
