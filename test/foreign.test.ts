// A restic or Borg repository given to Coffer is named as such, not called damaged. The fixtures
// mimic the layouts that restic 0.14 and Borg 1.2 write (looked at with the real tools); the tests
// do not need either tool installed.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { isCofferError } from '../src/core/errors.ts';
import { Repository } from '../src/repository/repository.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { makeTestRepo, TEST_KDF, TEST_PASSWORD } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { runCli } from './cli.ts';

async function put(root: string, name: string, data: string | Buffer): Promise<void> {
  await mkdir(dirname(join(root, name)), { recursive: true });
  await writeFile(join(root, name), data);
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** restic's key file: scrypt parameters, a 64-byte salt and the encrypted master key JSON. */
function resticKeyFile(): string {
  return JSON.stringify({
    created: '2026-12-06T00:34:55.32227372Z', username: 'root', hostname: 'vm', kdf: 'scrypt', N: 32768, r: 8, p: 7,
    salt: randomBytes(64).toString('base64'), data: randomBytes(160).toString('base64'),
  });
}

/** A restic repository as `restic init` and one `restic backup` leave it (contents random). */
async function makeResticRepo(root: string, keys = 1): Promise<void> {
  await put(root, 'config', randomBytes(155)); // IV, encrypted JSON and MAC: binary
  for (let i = 0; i < keys; i++) {
    const kf = resticKeyFile();
    await put(root, `keys/${sha256(kf)}`, kf);
  }
  const pack = randomBytes(900);
  const id = sha256(pack);
  await put(root, `data/${id.slice(0, 2)}/${id}`, pack);
  await put(root, `index/${sha256('index')}`, randomBytes(300));
  await put(root, `snapshots/${sha256('snapshot')}`, randomBytes(250));
  await mkdir(join(root, 'locks'));
}

/** A Borg 1.x repository as `borg init -e repokey` and one `borg create` leave it. */
async function makeBorgRepo(root: string, readme = true): Promise<void> {
  if (readme) await put(root, 'README', 'This is a Borg Backup repository.\nSee https://borgbackup.readthedocs.io/\n');
  await put(root, 'config', [
    '[repository]', 'version = 1', 'segments_per_dir = 1000', 'max_segment_size = 524288000', 'append_only = 0', 'storage_quota = 0',
    'additional_free_space = 0', `id = ${sha256('borg')}`, `key = ${randomBytes(200).toString('base64')}`, '',
  ].join('\n'));
  for (let i = 0; i < 6; i++) await put(root, `data/0/${i}`, Buffer.concat([Buffer.from('BORG_SEG'), randomBytes(100)]));
  for (const name of ['hints.5', 'index.5', 'integrity.5']) await put(root, name, randomBytes(64));
  await put(root, 'nonce', '0000000000000000');
}

const says = (tool: string, action: string) => (e: unknown) =>
  isCofferError(e, 'UNSUPPORTED') && new RegExp(`^Cannot ${action} at .*: this is a ${tool} repository, not a Coffer one$`).test(e.message) && e.hint!.includes(`use ${tool}`);

describe('repositories of other tools', () => {
  it('open() names a restic repository as one, with one key file or several', async (t) => {
    const dir = await tempDir(t);
    for (const keys of [1, 3]) {
      const root = join(dir, `restic-${keys}`);
      await makeResticRepo(root, keys);
      await assert.rejects(Repository.open(new LocalBackend(root), 'pw', { noCache: true }), says('restic', 'open the repository'));
    }
  });

  it('open() names a Borg repository as one, by its README or by its config', async (t) => {
    const dir = await tempDir(t);
    for (const readme of [true, false]) {
      const root = join(dir, `borg-${readme}`);
      await makeBorgRepo(root, readme);
      await assert.rejects(Repository.open(new LocalBackend(root), 'pw', { noCache: true }), says('Borg', 'open the repository'));
    }
  });

  it('init() into a restic or Borg repository says what is there, even with force', async (t) => {
    const dir = await tempDir(t);
    await makeResticRepo(join(dir, 'restic'));
    await makeBorgRepo(join(dir, 'borg'));
    for (const [tool, root] of [['restic', join(dir, 'restic')], ['Borg', join(dir, 'borg')]] as const) {
      await assert.rejects(Repository.init(new LocalBackend(root), 'pw', { kdf: TEST_KDF, force: true, cacheDir: join(dir, 'cache') }), says(tool, 'initialise a repository'));
    }
  });

  it('a Coffer repository with a damaged key file is still called damaged, not foreign', async (t) => {
    const tr = await makeTestRepo();
    t.after(() => tr.close());
    const [key] = await tr.repo.listKeys();
    // Without our `version` field it looks like restic's, but the config is a Coffer object.
    const kf = JSON.parse((await tr.backend.get(`keys/${key!.id}`)).toString());
    delete kf.version;
    await tr.backend.put(`keys/${key!.id}`, Buffer.from(JSON.stringify(kf)));
    await assert.rejects(Repository.open(tr.backend, TEST_PASSWORD, { noCache: true }), (e) => isCofferError(e, 'CORRUPT') && /key file/.test(e.message));
  });

  it('the CLI says what it found, with exit code 1 and a hint', async (t) => {
    const dir = await tempDir(t);
    await makeResticRepo(join(dir, 'restic'));
    await makeBorgRepo(join(dir, 'borg'));
    for (const [tool, root, hint] of [['restic', join(dir, 'restic'), /restic -r .* snapshots/], ['Borg', join(dir, 'borg'), /borg list /]] as const) {
      const r = await runCli(['repo', 'snapshots', '--repo', root], { env: { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache') } });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`Cannot open the repository at ${root}: this is a ${tool} repository, not a Coffer one`));
      assert.match(r.stderr, hint);
      assert.doesNotMatch(r.stderr, /damaged|restore it from a copy|\.ts:\d+/);
    }
  });
});
