import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { DEFAULT_KDF, deriveRepoKeys, newMasterKey, unwrapMasterKey, wrapMasterKey, type KeyFile } from './keys.ts';

const MASTER = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const CHEAP = { N: 1024, r: 8, p: 1 };
const PASS = 'correct horse battery staple';

/** A key file written once by wrapMasterKey() for MASTER and PASS: pins the key file format. */
const GOLDEN_KEY_FILE = {
  version: 1, kdf: 'scrypt', N: 1024, r: 8, p: 1,
  salt: 'PalNvBW3+46Vfpv1eJn/Mot596xbVTjJfBP9LF/Qz+M=',
  data: 'dKOPgbg+6o5351R6sCcpmbP8KUB0MtYsiIlQxqe7W2U+vgjWkHBPXj2/g2UuvSf1PXM4l0zLj7UJIDbr',
  created: '2025-01-01T00:00:00.000Z', hostname: 'golden', username: 'test',
};

/** RFC 5869 HKDF-SHA256 for one 32-byte block, written out independently of node's hkdf. */
function hkdfReference(ikm: Buffer, salt: Buffer, info: string): Buffer {
  const prk = createHmac('sha256', salt.length ? salt : Buffer.alloc(32)).update(ikm).digest();
  return createHmac('sha256', prk).update(Buffer.concat([Buffer.from(info), Buffer.from([1])])).digest();
}

const rejectsWith = (code: string) => (e: unknown) => isCofferError(e) && e.code === code;

describe('keys', () => {
  it('GOLDEN: subkeys of master key 00..1f are pinned', () => {
    const k = deriveRepoKeys(MASTER);
    assert.equal(k.encryption.toString('hex'), 'ab4dd61ac806fdad1161f1b26c4f972be239204f247c2ac5130f4c93cee0984b');
    assert.equal(k.chunkIdKey.toString('hex'), 'c4fd8c7d49c36a5b1141576bb3b64160ef4e956b4e38f3507f817fbc883b91c6');
    assert.equal(k.gearSeed.toString('hex'), 'cc1cfe228b66e783c989447820838f3513e236409f975c394aaa455a21a3ca11');
  });

  it('derives subkeys as HKDF-SHA256(master, empty salt, label), as docs/format.md says', () => {
    const k = deriveRepoKeys(MASTER);
    assert.deepEqual(k.encryption, hkdfReference(MASTER, Buffer.alloc(0), 'coffer v1 encryption'));
    assert.deepEqual(k.chunkIdKey, hkdfReference(MASTER, Buffer.alloc(0), 'coffer v1 chunk id'));
    assert.deepEqual(k.gearSeed, hkdfReference(MASTER, Buffer.alloc(0), 'coffer v1 gear'));
  });

  it('newMasterKey() gives 32 fresh random bytes; deriveRepoKeys() refuses other lengths', () => {
    const a = newMasterKey();
    assert.equal(a.length, 32);
    assert.notDeepEqual(a, newMasterKey());
    assert.throws(() => deriveRepoKeys(Buffer.alloc(31)), rejectsWith('INTERNAL'));
  });

  it('DEFAULT_KDF is scrypt N=2^15, r=8, p=1', () => {
    assert.deepEqual(DEFAULT_KDF, { N: 32768, r: 8, p: 1 });
  });

  it('wrapMasterKey() and unwrapMasterKey() round-trip through JSON', async () => {
    const master = newMasterKey();
    const kf = await wrapMasterKey(master, 'pässwörd ✓', CHEAP, { hostname: 'h', username: 'u', now: new Date(0) });
    assert.equal(kf.version, 1);
    assert.equal(kf.kdf, 'scrypt');
    assert.deepEqual([kf.N, kf.r, kf.p], [1024, 8, 1]);
    assert.equal(Buffer.from(kf.salt, 'base64').length, 32);
    assert.equal(Buffer.from(kf.data, 'base64').length, 60);
    assert.equal(kf.created, '1970-01-01T00:00:00.000Z');
    assert.equal(kf.hostname, 'h');
    assert.deepEqual(await unwrapMasterKey(JSON.parse(JSON.stringify(kf)), 'pässwörd ✓'), master);
    // The same passphrase with decomposed accents (NFD) opens it too.
    assert.deepEqual(await unwrapMasterKey(kf, 'pässwörd ✓'.normalize('NFD')), master);
    const again = await wrapMasterKey(master, 'pässwörd ✓', CHEAP);
    assert.notEqual(again.salt, kf.salt, 'each key file has its own salt');
  });

  it('GOLDEN: a pinned key file still opens to the golden master key', async () => {
    assert.deepEqual(await unwrapMasterKey(GOLDEN_KEY_FILE, PASS), MASTER);
  });

  it('a wrong passphrase gives WRONG_PASSWORD', async () => {
    await assert.rejects(unwrapMasterKey(GOLDEN_KEY_FILE, 'correct horse battery stapler'), rejectsWith('WRONG_PASSWORD'));
    await assert.rejects(unwrapMasterKey(GOLDEN_KEY_FILE, ''), rejectsWith('WRONG_PASSWORD'));
  });

  it('any damage to salt, data or KDF parameters fails cleanly', async () => {
    const data = Buffer.from(GOLDEN_KEY_FILE.data, 'base64');
    for (let i = 0; i < data.length; i += 5) {
      const d = Buffer.from(data);
      d[i]! ^= 0x01;
      await assert.rejects(unwrapMasterKey({ ...GOLDEN_KEY_FILE, data: d.toString('base64') }, PASS), rejectsWith('WRONG_PASSWORD'), `data byte ${i}`);
    }
    const salt = Buffer.from(GOLDEN_KEY_FILE.salt, 'base64');
    salt[0]! ^= 0x80;
    await assert.rejects(unwrapMasterKey({ ...GOLDEN_KEY_FILE, salt: salt.toString('base64') }, PASS), rejectsWith('WRONG_PASSWORD'));
    // Other valid parameters derive another key: the AAD binds them too.
    await assert.rejects(unwrapMasterKey({ ...GOLDEN_KEY_FILE, N: 2048 }, PASS), rejectsWith('WRONG_PASSWORD'));
    await assert.rejects(unwrapMasterKey({ ...GOLDEN_KEY_FILE, r: 4 }, PASS), rejectsWith('WRONG_PASSWORD'));
  });

  it('hostile key files give CORRUPT (or UNSUPPORTED) quickly, never a crash, hang or huge allocation', async () => {
    const g = GOLDEN_KEY_FILE;
    const bad: Array<[string, unknown]> = [
      ['null', null],
      ['a string', 'key'],
      ['an array', [g]],
      ['no version', { ...g, version: undefined }],
      ['version as string', { ...g, version: '1' }],
      ['version 0', { ...g, version: 0 }],
      ['other kdf', { ...g, kdf: 'argon2id' }],
      ['N not a power of two', { ...g, N: 1000 }],
      ['N = 2^30', { ...g, N: 2 ** 30 }],
      ['N = 2^22 with r = 8 (4 GiB)', { ...g, N: 2 ** 22 }],
      ['N = 1', { ...g, N: 1 }],
      ['N as string', { ...g, N: '1024' }],
      ['N = Infinity', { ...g, N: Infinity }],
      ['N = NaN', { ...g, N: NaN }],
      ['r = 0', { ...g, r: 0 }],
      ['r = 1e9', { ...g, r: 1e9 }],
      ['p = 1e6', { ...g, p: 1e6 }],
      ['p fractional', { ...g, p: 1.5 }],
      ['work too large', { ...g, N: 2 ** 20, r: 8, p: 16 }],
      ['salt not base64', { ...g, salt: 'not base64!' }],
      ['salt missing', { ...g, salt: undefined }],
      ['salt too short', { ...g, salt: Buffer.alloc(8).toString('base64') }],
      ['salt huge', { ...g, salt: 'A'.repeat(50_000_000) }],
      ['data too short', { ...g, data: Buffer.alloc(59).toString('base64') }],
      ['data too long', { ...g, data: Buffer.alloc(61).toString('base64') }],
      ['data a number', { ...g, data: 12 }],
      ['data huge', { ...g, data: 'A'.repeat(50_000_000) }],
    ];
    const started = Date.now();
    for (const [name, kf] of bad) {
      await assert.rejects(unwrapMasterKey(kf, PASS), rejectsWith('CORRUPT'), name);
    }
    await assert.rejects(unwrapMasterKey({ ...g, version: 2 }, PASS), rejectsWith('UNSUPPORTED'));
    assert.ok(Date.now() - started < 5000, 'rejected without running an expensive KDF');
  });

  it('wrapMasterKey() refuses bad parameters, an empty passphrase and a wrong-size master key', async () => {
    await assert.rejects(wrapMasterKey(MASTER, PASS, { N: 1000, r: 8, p: 1 }), rejectsWith('USAGE'));
    await assert.rejects(wrapMasterKey(MASTER, '', CHEAP), rejectsWith('USAGE'));
    await assert.rejects(wrapMasterKey(Buffer.alloc(16), PASS, CHEAP), rejectsWith('INTERNAL'));
    const kf: KeyFile = await wrapMasterKey(MASTER, PASS, CHEAP);
    assert.equal(typeof kf.hostname, 'string');
  });
});
