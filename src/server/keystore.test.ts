// The keystore on a real temporary data directory: round trips, reopening, keys given three ways,
// wrong keys, tampering, file modes, and the secret references of documents.

import { describe, it } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../testing/tmp.ts';
import { Keystore, generatePassword, resolveSecret } from './keystore.ts';
import { expectCode } from '../testing/errors.ts';


const mode = (path: string) => statSync(path).mode & 0o777;

async function storeWithSecrets(t: TestContext) {
  const dir = await tempDir(t);
  const ks = await Keystore.open({ dataDir: dir });
  await ks.put('storage/primary/password', 'hunter2 but longer');
  await ks.put('s3/offsite/secret', 'wJalrXUtnFEMI/K7MDENG');
  return { dir, ks };
}

describe('Keystore', () => {
  it('stores, reads, replaces and deletes secrets, and they survive reopening', async (t) => {
    const { dir, ks } = await storeWithSecrets(t);
    assert.equal(ks.get('storage/primary/password'), 'hunter2 but longer');
    assert.equal(ks.has('s3/offsite/secret'), true);
    assert.deepEqual(ks.list(), ['s3/offsite/secret', 'storage/primary/password']);
    await ks.put('storage/primary/password', 'rotated ✓');
    const again = await Keystore.open({ dataDir: dir });
    assert.equal(again.get('storage/primary/password'), 'rotated ✓');
    assert.equal(again.get('s3/offsite/secret'), 'wJalrXUtnFEMI/K7MDENG');
    assert.equal(await again.delete('s3/offsite/secret'), true);
    assert.equal(await again.delete('s3/offsite/secret'), false);
    const third = await Keystore.open({ dataDir: dir });
    assert.equal(third.has('s3/offsite/secret'), false);
    await expectCode(() => third.get('s3/offsite/secret'), 'NOT_FOUND', /keystore:s3\/offsite\/secret/);
  });

  it('keeps secrets encrypted on disk, with mode 0600 for the keystore and the server key', async (t) => {
    const { dir } = await storeWithSecrets(t);
    const text = readFileSync(join(dir, 'keystore.json'), 'utf8');
    assert.ok(!text.includes('hunter2'), 'the secret is in the file in plain text');
    assert.ok(!text.includes(Buffer.from('hunter2 but longer').toString('base64').slice(0, 12)));
    assert.equal(mode(join(dir, 'keystore.json')), 0o600);
    assert.equal(mode(join(dir, 'server.key')), 0o600);
    assert.equal(Buffer.from(readFileSync(join(dir, 'server.key'), 'utf8').trim(), 'base64').length, 32);
    assert.deepEqual(readdirSync(dir).sort(), ['keystore.json', 'server.key'], 'no temporary files are left');
  });

  it('serialises concurrent writes: none is lost', async (t) => {
    const dir = await tempDir(t);
    const ks = await Keystore.open({ dataDir: dir });
    await Promise.all(Array.from({ length: 20 }, (_, i) => ks.put(`k${i}`, `secret ${i}`)));
    const again = await Keystore.open({ dataDir: dir });
    assert.equal(again.list().length, 20);
    for (let i = 0; i < 20; i++) assert.equal(again.get(`k${i}`), `secret ${i}`);
  });

  it('opens with a key given directly (COFFER_SERVER_KEY) or in a file (COFFER_SERVER_KEY_FILE), raw or base64', async (t) => {
    const dir = await tempDir(t);
    const key = randomBytes(32);
    const ks = await Keystore.open({ dataDir: dir, key });
    await ks.put('a', 'secret a');
    assert.throws(() => statSync(join(dir, 'server.key')), /ENOENT/, 'no server.key is made when a key is given');
    const keyDir = await tempDir(t);
    writeFileSync(join(keyDir, 'raw'), key, { mode: 0o600 });
    writeFileSync(join(keyDir, 'b64'), `${key.toString('base64')}\n`, { mode: 0o600 });
    assert.equal((await Keystore.open({ dataDir: dir, keyFile: join(keyDir, 'raw') })).get('a'), 'secret a');
    assert.equal((await Keystore.open({ dataDir: dir, keyFile: join(keyDir, 'b64') })).get('a'), 'secret a');
    await expectCode(Keystore.open({ dataDir: dir, key: randomBytes(16) }), 'USAGE', /16 bytes, not 32/);
    await expectCode(Keystore.open({ dataDir: dir, key, keyFile: join(keyDir, 'raw') }), 'USAGE', /both/);
  });

  it('a wrong server key gives WRONG_PASSWORD with a hint, not garbage', async (t) => {
    const { dir } = await storeWithSecrets(t);
    const e = await expectCode(Keystore.open({ dataDir: dir, key: randomBytes(32) }), 'WRONG_PASSWORD', /cannot be decrypted with this server key/);
    assert.match(e.hint ?? '', /COFFER_SERVER_KEY/);
  });

  it('a missing server.key is not silently replaced while a keystore exists', async (t) => {
    const { dir } = await storeWithSecrets(t);
    unlinkSync(join(dir, 'server.key'));
    await expectCode(Keystore.open({ dataDir: dir }), 'NOT_FOUND', /server key .*server\.key is missing/);
    assert.throws(() => statSync(join(dir, 'server.key')), /ENOENT/);
  });

  it('detects a tampered file: a changed ciphertext, a removed entry, swapped entries, broken JSON', async (t) => {
    const { dir, ks } = await storeWithSecrets(t);
    const path = join(dir, 'keystore.json');
    const original = JSON.parse(readFileSync(path, 'utf8'));
    const write = (f: unknown) => writeFileSync(path, JSON.stringify(f));
    const entries = original.entries;

    const flipped = structuredClone(original);
    const data = Buffer.from(flipped.entries['s3/offsite/secret'].data, 'base64');
    data[0]! ^= 1;
    flipped.entries['s3/offsite/secret'].data = data.toString('base64');
    write(flipped);
    await expectCode(Keystore.open({ dataDir: dir }), 'CORRUPT', /do not match their checksum/);

    write({ ...original, entries: { 's3/offsite/secret': entries['s3/offsite/secret'] } });
    await expectCode(Keystore.open({ dataDir: dir }), 'CORRUPT');

    write({ ...original, entries: { 's3/offsite/secret': entries['storage/primary/password'], 'storage/primary/password': entries['s3/offsite/secret'] } });
    await expectCode(Keystore.open({ dataDir: dir }), 'CORRUPT');

    writeFileSync(path, '{"version": 1, "keyId"');
    await expectCode(Keystore.open({ dataDir: dir }), 'CORRUPT', /not JSON/);

    // The checksum aside, an entry moved to another name does not decrypt under it (the name is
    // the additional data): shown on the open keystore's own state.
    write(original);
    const reopened = await Keystore.open({ dataDir: dir });
    assert.equal(reopened.get('s3/offsite/secret'), 'wJalrXUtnFEMI/K7MDENG');
    (reopened as unknown as { entries: Record<string, unknown> }).entries['s3/offsite/secret'] = entries['storage/primary/password'];
    await expectCode(() => reopened.get('s3/offsite/secret'), 'CORRUPT', /integrity check/);
    void ks;
  });

  it('refuses bad names and empty secrets', async (t) => {
    const dir = await tempDir(t);
    const ks = await Keystore.open({ dataDir: dir });
    await expectCode(ks.put('../escape', 'x'), 'USAGE', /keystore name/);
    await expectCode(ks.put('ok', ''), 'USAGE', /empty/);
    assert.throws(() => ks.has(''), /keystore name/);
  });

  it('warns about a server key file others can read', async (t) => {
    const dir = await tempDir(t);
    const keyFile = join(dir, 'k');
    writeFileSync(keyFile, randomBytes(32).toString('base64'), { mode: 0o644 });
    const warnings: string[] = [];
    await Keystore.open({ dataDir: dir, keyFile, onWarning: (w) => warnings.push(w) });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /chmod 600/);
  });

  it('generatePassword() gives 43 base64url characters of 32 random bytes', () => {
    const a = generatePassword();
    assert.match(a, /^[A-Za-z0-9_-]{43}$/);
    assert.notEqual(a, generatePassword());
  });
});

describe('resolveSecret()', () => {
  it('reads keystore:, env: and file: references', async (t) => {
    const { dir, ks } = await storeWithSecrets(t);
    assert.equal(await resolveSecret('keystore:storage/primary/password', { keystore: ks }), 'hunter2 but longer');
    assert.equal(await resolveSecret('env:REPO_PW', { env: { REPO_PW: 'from env' } }), 'from env');
    const file = join(dir, 'pw');
    writeFileSync(file, 'from file\n', { mode: 0o600 });
    assert.equal(await resolveSecret(`file:${file}`), 'from file');
    writeFileSync(file, 'no newline', { mode: 0o600 });
    assert.equal(await resolveSecret(`file:${file}`), 'no newline');
    writeFileSync(file, 'two\n\n', { mode: 0o600 });
    assert.equal(await resolveSecret(`file:${file}`), 'two\n', 'only one trailing newline is dropped');
  });

  it('uses a file others can read, with a warning naming chmod 600', async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'pw');
    writeFileSync(file, 'secret\n', { mode: 0o644 });
    const warnings: string[] = [];
    assert.equal(await resolveSecret(`file:${file}`, { onWarning: (w) => warnings.push(w) }), 'secret');
    assert.match(warnings.join(), /can be read by other users \(mode 0644\); run chmod 600/);
  });

  it('names what is missing or wrong, never the secret', async (t) => {
    const { dir, ks } = await storeWithSecrets(t);
    await expectCode(resolveSecret('keystore:nope', { keystore: ks }), 'NOT_FOUND', /keystore:nope/);
    await expectCode(resolveSecret('env:MISSING', { env: {} }), 'NOT_FOUND', /no variable MISSING/);
    await expectCode(resolveSecret(`file:${join(dir, 'absent')}`), 'NOT_FOUND', /does not exist/);
    await expectCode(resolveSecret('file:relative/path'), 'INVALID_CONFIG', /not absolute/);
    writeFileSync(join(dir, 'empty'), '\n');
    await expectCode(resolveSecret(`file:${join(dir, 'empty')}`), 'INVALID_CONFIG', /empty/);
    const e = await expectCode(resolveSecret('my-plain-password'), 'INVALID_CONFIG', /not a secret reference/);
    assert.ok(!e.message.includes('my-plain-password'), 'a secret written in place of a reference is not repeated');
  });
});
