import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { LocalBackend } from './local.ts';
import { MemoryBackend } from './memory.ts';
import { S3Backend } from './s3.ts';
import { describeBackendUrl, openBackend, parseBackendUrl } from './url.ts';

const noEnv = { env: {} };

describe('parseBackendUrl()', () => {
  it('reads an absolute path, a relative path and a bare name as a local directory', () => {
    assert.deepEqual(parseBackendUrl('/srv/backup'), { kind: 'local', path: '/srv/backup' });
    assert.deepEqual(parseBackendUrl('./repo'), { kind: 'local', path: join(process.cwd(), 'repo') });
    assert.deepEqual(parseBackendUrl('../up/repo'), { kind: 'local', path: join(process.cwd(), '..', 'up', 'repo') });
    assert.deepEqual(parseBackendUrl('repo'), { kind: 'local', path: join(process.cwd(), 'repo') });
    assert.deepEqual(parseBackendUrl('./odd:name'), { kind: 'local', path: join(process.cwd(), 'odd:name') });
  });

  it('reads file:///path as a local directory, decoding %-escapes', () => {
    assert.deepEqual(parseBackendUrl('file:///srv/backup'), { kind: 'local', path: '/srv/backup' });
    assert.deepEqual(parseBackendUrl('file:///srv/my%20backup'), { kind: 'local', path: '/srv/my backup' });
    assert.deepEqual(parseBackendUrl('file://localhost/srv/b'), { kind: 'local', path: '/srv/b' });
  });

  it('reads s3://bucket/prefix with endpoint, region and path-style', () => {
    assert.deepEqual(parseBackendUrl('s3://my-bucket/backups/host1'), { kind: 's3', bucket: 'my-bucket', prefix: 'backups/host1', forcePathStyle: false });
    assert.deepEqual(parseBackendUrl('s3://my-bucket'), { kind: 's3', bucket: 'my-bucket', prefix: '', forcePathStyle: false });
    assert.deepEqual(parseBackendUrl('s3://my-bucket/'), { kind: 's3', bucket: 'my-bucket', prefix: '', forcePathStyle: false });
    assert.deepEqual(parseBackendUrl('s3://b1b/p/q/?endpoint=http://127.0.0.1:9000&region=eu-west-1'), {
      kind: 's3', bucket: 'b1b', prefix: 'p/q', endpoint: 'http://127.0.0.1:9000', region: 'eu-west-1', forcePathStyle: true,
    });
    assert.equal((parseBackendUrl('s3://bkt?endpoint=https://minio.example.test&path-style=false') as { forcePathStyle: boolean }).forcePathStyle, false);
    assert.equal((parseBackendUrl('s3://bkt?path-style=true') as { forcePathStyle: boolean }).forcePathStyle, true);
    assert.equal((parseBackendUrl('s3://bkt/with%20space') as { prefix: string }).prefix, 'with space');
  });

  it('reads memory: as an in-memory store', () => {
    assert.deepEqual(parseBackendUrl('memory:'), { kind: 'memory' });
  });

  it('refuses an unknown scheme with UNSUPPORTED and lists the forms it knows', () => {
    for (const url of ['sftp://host/srv', 'gs://bucket', 'rest:http://host/', 'user@host:/srv']) {
      assert.throws(() => parseBackendUrl(url), (e) => isCofferError(e, 'UNSUPPORTED') && /s3:\/\/bucket\/prefix/.test(e.hint ?? '') && /file:\/\/\//.test(e.hint ?? ''), url);
    }
  });

  it('refuses credentials in an s3:// URL with USAGE, without repeating them', () => {
    for (const url of [
      's3://bkt/p?access-key-id=AKIA123&secret-access-key=hunter2',
      's3://bkt/p?secret-access-key=hunter2',
      's3://bkt/p?session-token=hunter2',
      's3://AKIA123:hunter2@bkt/p',
      's3://bkt/p?endpoint=http://AKIA123:hunter2@127.0.0.1:9000',
    ]) {
      assert.throws(() => parseBackendUrl(url), (e) => isCofferError(e, 'USAGE') && !e.message.includes('hunter2') && /AWS_SECRET_ACCESS_KEY/.test(e.hint ?? ''), url);
    }
  });

  it('refuses malformed locations with USAGE', () => {
    for (const url of [
      '', '   ', 's3://', 's3:///prefix', 's3://b/p?unknown=1', 's3://bkt/p?path-style=yes', 's3://bkt/p?endpoint=ftp://host',
      's3://bkt/p?endpoint=not a url', 's3://bkt/a/../b', 's3://bkt/a//b', 's3://bkt/p#frag', 's3://bkt/%zz', 's3://x', 's3://bad!name',
      'file:///', 'file://otherhost/srv', 'file:///srv?x=1', 'memory:something',
    ]) {
      assert.throws(() => parseBackendUrl(url), (e) => isCofferError(e, 'USAGE') && /^Cannot use the repository location/.test(e.message) && !!e.hint, JSON.stringify(url));
    }
  });
});

describe('openBackend()', () => {
  it('opens a LocalBackend for a path or a file: URL', async () => {
    const local = await openBackend('/srv/backup', noEnv);
    assert.ok(local instanceof LocalBackend);
    assert.equal(local.location, '/srv/backup');
    assert.equal((await openBackend('file:///srv/b%23', noEnv)).location, '/srv/b#');
  });

  it('opens a fresh MemoryBackend for memory:', async () => {
    const a = await openBackend('memory:');
    const b = await openBackend('memory:');
    assert.ok(a instanceof MemoryBackend);
    await a.put('x', Buffer.from('1'));
    await assert.rejects(b.get('x'), (e) => isCofferError(e, 'NOT_FOUND'));
  });

  it('opens an S3Backend whose location holds no endpoint or secret', async () => {
    const s3 = await openBackend('s3://bkt/pre/fix?endpoint=http://127.0.0.1:9000&region=eu-west-1', {
      env: { AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', AWS_SECRET_ACCESS_KEY: 'hunter2' },
    });
    assert.ok(s3 instanceof S3Backend);
    assert.equal(s3.location, 's3://bkt/pre/fix');
    const credentials = await (s3 as S3Backend).client.config.credentials();
    assert.equal(credentials.accessKeyId, 'AKIAEXAMPLE');
    assert.equal(await (s3 as S3Backend).client.config.region(), 'eu-west-1');
    assert.equal((s3 as S3Backend).client.config.forcePathStyle, true);
    await s3.close();
  });

  it('refuses an S3 URL when only one of the two credential variables is set', async () => {
    await assert.rejects(openBackend('s3://bkt/p', { env: { AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE' } }), (e) => isCofferError(e, 'USAGE') && /only one of/.test(e.message));
  });
});

describe('describeBackendUrl()', () => {
  it('names the location for messages, without secrets', () => {
    assert.equal(describeBackendUrl('/srv/b'), '/srv/b');
    assert.equal(describeBackendUrl('memory:'), 'memory:');
    assert.equal(describeBackendUrl('s3://bkt/p?endpoint=http://127.0.0.1:9000'), 's3://bkt/p at http://127.0.0.1:9000');
  });
});
