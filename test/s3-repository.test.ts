// The repository on S3: a real S3-compatible server process (s3rver) on loopback, reached
// through the same URL a user gives (`s3://bucket/prefix?endpoint=...`).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openBackend } from '../src/storage/url.ts';
import { startS3Server, type S3Server } from '../src/testing/s3server.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { runCli } from './cli.ts';
import { listTree, makeSourceTree } from './helpers.ts';

describe('repository on S3', () => {
  let s3: S3Server;
  before(async () => {
    s3 = await startS3Server();
  });
  after(() => s3.stop());

  it('init, backup, restore and check --read-data through an s3:// URL', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await makeSourceTree(src, 11, 0.5);
    const url = `s3://${s3.bucket}/team/repo?endpoint=${encodeURIComponent(s3.endpoint)}`;
    const env = { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache'), AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, COFFER_REPOSITORY: url };
    let r = await runCli(['repo', 'init', '--pack-size', '1'], { env });
    assert.equal(r.code, 0, r.stderr);
    r = await runCli(['repo', 'backup', src], { env });
    assert.equal(r.code, 0, r.stderr);
    r = await runCli(['repo', 'restore', 'latest', '--target', join(dir, 'out')], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await listTree(join(dir, 'out', ...src.split('/').filter(Boolean))), await listTree(src));
    r = await runCli(['repo', 'check', '--read-data'], { env });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /no errors were found/);
  });

  it('storage validate passes on the S3 server and on a local directory, and leaves nothing behind', async (t) => {
    const dir = await tempDir(t);
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey };
    for (const url of [`s3://${s3.bucket}/validate?endpoint=${encodeURIComponent(s3.endpoint)}`, join(dir, 'local')]) {
      const r = await runCli(['--json', 'storage', 'validate', url], { env });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
      assert.ok(lines.filter((l) => l.type === 'check').length >= 10);
      assert.equal(lines.at(-1).failed, 0);
    }
  });

  it('init into a prefix that already holds objects is refused unless --force', async (t) => {
    const dir = await tempDir(t);
    const url = `s3://${s3.bucket}/occupied?endpoint=${encodeURIComponent(s3.endpoint)}`;
    const env = { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache'), AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey };
    const backend = await openBackend(url, { env });
    t.after(() => backend.close());
    await backend.put('exports/2026.csv', Buffer.from('a,b'));
    let r = await runCli(['repo', 'init', '--repo', url], { env });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /Cannot initialise a repository at s3:\/\/.*\/occupied: it already holds other files, e\.g\. "exports\/2026\.csv"/);
    assert.match(r.stderr, /--force/);
    r = await runCli(['repo', 'init', '--repo', url, '--force'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await backend.get('exports/2026.csv')).toString(), 'a,b');
  });

  it('a wrong S3 key is a clear error with exit code 1', async (t) => {
    const dir = await tempDir(t);
    const url = `s3://${s3.bucket}/denied?endpoint=${encodeURIComponent(s3.endpoint)}`;
    const r = await runCli(['repo', 'init', '--repo', url], { env: { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'c'), AWS_ACCESS_KEY_ID: 'WRONG', AWS_SECRET_ACCESS_KEY: 'WRONG' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /coffer: Cannot/);
    assert.doesNotMatch(r.stderr, /\.ts:\d+/);
  });
});
