import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CofferError, isCofferError } from '../core/errors.ts';
import { listAll } from './backend.ts';
import { runConformanceSuite } from './conformance.ts';
import { fsError, LocalBackend } from './local.ts';

runConformanceSuite('LocalBackend', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'coffer-local-'));
  // A root that does not exist yet: the first put() must create it.
  const backend = new LocalBackend(join(dir, 'repo'));
  return { backend, cleanup: () => rm(dir, { recursive: true, force: true }) };
});

describe('LocalBackend', () => {
  let dir: string;
  let root: string;
  let backend: LocalBackend;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coffer-local-'));
    root = join(dir, 'repo');
    backend = new LocalBackend(root);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('location is the absolute root directory', () => {
    assert.equal(backend.location, root);
    assert.equal(new LocalBackend('relative/dir').location, join(process.cwd(), 'relative/dir'));
  });

  it('put() stores an object as a file below the root, segments as directories', async () => {
    await backend.put('data/ab/abcdef', Buffer.from('hello'));
    assert.deepEqual(await readdir(join(root, 'data', 'ab')), ['abcdef']);
  });

  it('put() leaves no temporary file behind', async () => {
    await backend.put('tidy/one', Buffer.from('1'));
    await backend.put('tidy/one', Buffer.from('2'));
    assert.deepEqual(await readdir(join(root, 'tidy')), ['one']);
  });

  it('put() creates files 0600 and directories 0700, whatever the umask', async () => {
    const base = await mkdtemp(join(tmpdir(), 'coffer-local-'));
    const fresh = new LocalBackend(join(base, 'private', 'repo'));
    const old = process.umask(0);
    try {
      await fresh.put('keys/abc', Buffer.from('key'));
      await fresh.put('config', Buffer.from('config'));
    } finally {
      process.umask(old);
    }
    const mode = async (p: string) => (await stat(join(base, p))).mode & 0o777;
    assert.equal(await mode('private/repo/keys/abc'), 0o600);
    assert.equal(await mode('private/repo/config'), 0o600);
    assert.equal(await mode('private/repo/keys'), 0o700);
    assert.equal(await mode('private/repo'), 0o700, 'the root it creates');
    assert.equal(await mode('private'), 0o700, 'and the parents of the root');
    await rm(base, { recursive: true, force: true });
  });

  it('list() ignores a temporary file left behind by a crashed writer', async () => {
    await backend.put('crash/kept', Buffer.from('x'));
    await writeFile(join(root, 'crash', '.tmp-0123456789abcdef01234567'), 'half an obj');
    await writeFile(join(root, '.tmp-aaaaaaaaaaaaaaaaaaaaaaaa'), 'half an obj');
    assert.deepEqual((await listAll(backend, 'crash/')).map((o) => o.name), ['crash/kept']);
    assert.ok(!(await listAll(backend, '')).some((o) => o.name.includes('.tmp-')));
  });

  it('put() refuses an object name reserved for temporary files', async () => {
    await assert.rejects(backend.put('crash/.tmp-0123456789abcdef01234567', Buffer.from('x')), (e) => isCofferError(e, 'STORAGE_ERROR'));
  });

  it('put() under a path that is a regular file fails with STORAGE_ERROR', async () => {
    await backend.put('file', Buffer.from('x'));
    await assert.rejects(backend.put('file/below', Buffer.from('y')), (e) => isCofferError(e, 'STORAGE_ERROR') && /Cannot write file\/below/.test(e.message));
    await assert.rejects(backend.get('file/below'), (e) => isCofferError(e, 'NOT_FOUND'));
  });

  it('put() over a directory fails with STORAGE_ERROR and leaves the directory alone', async () => {
    await backend.put('taken/inner', Buffer.from('x'));
    await assert.rejects(backend.put('taken', Buffer.from('y')), (e) => isCofferError(e, 'STORAGE_ERROR'));
    assert.equal((await backend.get('taken/inner')).toString(), 'x');
    assert.deepEqual(await readdir(join(root, 'taken')), ['inner']);
  });

  it('delete() of a name that is a directory succeeds and removes nothing', async () => {
    await backend.put('keepdir/inner', Buffer.from('x'));
    await backend.delete('keepdir');
    assert.equal((await backend.get('keepdir/inner')).toString(), 'x');
  });

  it('list() of a root that does not exist yields nothing', async () => {
    const missing = new LocalBackend(join(dir, 'does-not-exist'));
    assert.deepEqual(await listAll(missing, ''), []);
    assert.deepEqual(await listAll(missing, 'data/'), []);
  });

  it('list() walks 10,000 files in nested directories, each exactly once', async () => {
    const many = new LocalBackend(join(dir, 'many'));
    // Written directly: 10,000 atomic, fsynced puts would take too long for a unit test.
    const names: string[] = [];
    for (let d = 0; d < 50; d++) {
      const sub = join(dir, 'many', 'data', d.toString(16).padStart(2, '0'));
      await mkdir(sub, { recursive: true });
      const batch: Promise<void>[] = [];
      for (let i = 0; i < 200; i++) {
        const n = `f${i}`;
        names.push(`data/${d.toString(16).padStart(2, '0')}/${n}`);
        batch.push(writeFile(join(sub, n), 'x'.repeat(i % 5)));
      }
      await Promise.all(batch);
    }
    const seen = new Set<string>();
    for await (const info of many.list('data/')) {
      assert.ok(!seen.has(info.name), `${info.name} listed twice`);
      seen.add(info.name);
      assert.equal(info.size, Number(info.name.slice(info.name.lastIndexOf('f') + 1)) % 5);
    }
    assert.equal(seen.size, 10_000);
    assert.deepEqual([...seen].sort(), names.sort());
    assert.equal((await listAll(many, 'data/1')).length, 16 * 200);
    assert.equal((await listAll(many, 'data/31/f19')).length, 11);
  });

  it('a name cannot reach outside the root', async () => {
    for (const name of ['../outside', 'a/../../outside', '/etc/passwd']) {
      await assert.rejects(backend.put(name, Buffer.from('x')), (e) => isCofferError(e, 'STORAGE_ERROR'));
      await assert.rejects(backend.get(name), (e) => isCofferError(e, 'STORAGE_ERROR'));
    }
    assert.deepEqual((await readdir(dir)).sort(), ['many', 'repo']);
  });
});

describe('fsError()', () => {
  const err = (code: string) => Object.assign(new Error(`${code}: something, open '/x'`), { code });
  it('maps ENOENT to NOT_FOUND when reading and to STORAGE_ERROR when writing', () => {
    assert.equal(fsError(err('ENOENT'), 'read', 'x', 'read').code, 'NOT_FOUND');
    assert.equal(fsError(err('ENOTDIR'), 'read', 'x', 'read').code, 'NOT_FOUND');
    assert.equal(fsError(err('ENOENT'), 'write', 'x', 'write').code, 'STORAGE_ERROR');
  });
  it('maps EACCES and EPERM to STORAGE_DENIED with a hint', () => {
    for (const code of ['EACCES', 'EPERM']) {
      const e = fsError(err(code), 'write', 'x', 'write');
      assert.equal(e.code, 'STORAGE_DENIED');
      assert.match(e.hint ?? '', /may read and write/);
    }
  });
  it('maps ENOSPC and EROFS to STORAGE_ERROR and EIO, EAGAIN and EMFILE to STORAGE_UNAVAILABLE', () => {
    for (const code of ['ENOSPC', 'EROFS', 'ELOOP']) assert.equal(fsError(err(code), 'write', 'x', 'write').code, 'STORAGE_ERROR');
    for (const code of ['EIO', 'EAGAIN', 'EMFILE']) {
      const e = fsError(err(code), 'read', 'x', 'read');
      assert.equal(e.code, 'STORAGE_UNAVAILABLE');
      assert.equal(e.transient, true);
    }
  });
  it('keeps a CofferError as it is and says what failed', () => {
    const original = new CofferError('CANCELLED', 'Cancelled');
    assert.equal(fsError(original, 'read', 'x', 'read'), original);
    assert.match(fsError(err('EIO'), 'read', 'data/ab in /repo', 'read').message, /^Cannot read data\/ab in \/repo: EIO/);
  });
});
