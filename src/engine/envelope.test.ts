import assert from 'node:assert/strict';
import { createCipheriv } from 'node:crypto';
import { describe, it } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import { isCofferError } from '../core/errors.ts';
import { randomBytes, textBytes } from '../testing/random.ts';
import { MAX_OBJECT_SIZE, OBJECT_HEADER_SIZE, openObject, sealObject, type ObjectKind } from './envelope.ts';
import { deriveRepoKeys, hkdf32 } from './keys.ts';

const MASTER = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const KEYS = deriveRepoKeys(MASTER);
const SALT = Buffer.alloc(32, 0x5a);
const KINDS: ObjectKind[] = ['config', 'index', 'snapshot', 'session', 'gc'];
const corrupt = (e: unknown) => isCofferError(e, 'CORRUPT');

/** Seals a hand-made envelope exactly as docs/format.md describes (for hostile cases). */
function handSeal(kind: ObjectKind, kindCode: number, flags: number, rawLength: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(OBJECT_HEADER_SIZE);
  header.write('CFROBJ\n\0', 0, 'latin1');
  header[8] = 1;
  header[9] = kindCode;
  header[10] = flags;
  header.writeUInt32LE(rawLength, 12);
  SALT.copy(header, 16);
  const c = createCipheriv('aes-256-gcm', hkdf32(KEYS.encryption, SALT, `coffer v1 object ${kind}`), Buffer.alloc(12));
  c.setAAD(header);
  return Buffer.concat([header, c.update(payload), c.final(), c.getAuthTag()]);
}

describe('envelopes', () => {
  it('GOLDEN: sealed objects with a fixed salt are pinned (raw and compressed)', () => {
    const raw = sealObject(KEYS, 'config', Buffer.from('{"v":1}'), 3, { salt: SALT });
    assert.equal(raw.toString('hex'),
      '4346524f424a0a0001010000070000005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a339e200fee36d1f72a09461ea30c3ae704c3be0714d1db');
    const json = '{"paths":["/home","/home","/home","/home","/home"]}';
    const pinned = '4346524f424a0a0001030100330000005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5ad972afa4a64cc3406834a195e7bf804881d6cae54a7e940269ba47f2284d03dc15bbe0248b46c6c3b14aa79277ac28b3b02790';
    // The pinned bytes must open (the format); sealing must reproduce them (zstd output too: if
    // only that assertion fails after a Node upgrade, check zstd before re-pinning).
    assert.equal(openObject(KEYS, 'snapshot', Buffer.from(pinned, 'hex')).toString(), json);
    assert.equal(sealObject(KEYS, 'snapshot', Buffer.from(json), 3, { salt: SALT }).toString('hex'), pinned);
    assert.equal(hkdf32(KEYS.encryption, SALT, 'coffer v1 object config').length, 32);
  });

  it('round-trips every kind, empty, random and compressible plaintexts', () => {
    for (const kind of KINDS) {
      for (const plain of [Buffer.alloc(0), randomBytes(1, 1000), textBytes(2, 200_000)]) {
        const sealed = sealObject(KEYS, kind, plain);
        assert.deepEqual(openObject(KEYS, kind, sealed), plain);
      }
    }
    const text = textBytes(3, 100_000);
    assert.ok(sealObject(KEYS, 'index', text).length < text.length / 2, 'compressed by default');
    assert.ok(sealObject(KEYS, 'index', text, 19).length < text.length / 2);
  });

  it('every object gets a fresh salt', () => {
    const a = sealObject(KEYS, 'index', Buffer.from('same'));
    const b = sealObject(KEYS, 'index', Buffer.from('same'));
    assert.notDeepEqual(a, b);
  });

  it('opening as the wrong kind, or with another repository’s keys, gives CORRUPT', () => {
    const sealed = sealObject(KEYS, 'snapshot', Buffer.from('{}'));
    for (const kind of KINDS.filter((k) => k !== 'snapshot')) assert.throws(() => openObject(KEYS, kind, sealed), corrupt, kind);
    assert.throws(() => openObject(deriveRepoKeys(Buffer.alloc(32, 1)), 'snapshot', sealed), corrupt);
  });

  it('detects a flip of any single byte, compressed or not', () => {
    for (const plain of [Buffer.from('{"small":true}'), textBytes(4, 400)]) {
      const sealed = sealObject(KEYS, 'index', plain);
      for (let i = 0; i < sealed.length; i++) {
        for (const flip of [0x01, 0x80, 0xff]) {
          const bad = Buffer.from(sealed);
          bad[i]! ^= flip;
          assert.throws(() => openObject(KEYS, 'index', bad), (e) => corrupt(e) || (i === 8 && isCofferError(e, 'UNSUPPORTED')), `byte ${i} ^ ${flip}`);
        }
      }
    }
  });

  it('detects truncation at every length and extension', () => {
    const sealed = sealObject(KEYS, 'config', textBytes(5, 300));
    for (let n = 0; n < sealed.length; n++) assert.throws(() => openObject(KEYS, 'config', sealed.subarray(0, n)), corrupt, `${n} bytes`);
    assert.throws(() => openObject(KEYS, 'config', Buffer.concat([sealed, Buffer.alloc(1)])), corrupt);
  });

  it('rejects garbage and hostile headers without large allocations', () => {
    for (let seed = 0; seed < 50; seed++) assert.throws(() => openObject(KEYS, 'gc', randomBytes(seed, seed * 7)), corrupt);
    const sealed = sealObject(KEYS, 'gc', Buffer.from('x'.repeat(1000)));
    const huge = Buffer.from(sealed);
    huge.writeUInt32LE(0xffffffff, 12);
    assert.throws(() => openObject(KEYS, 'gc', huge), corrupt);
    const newer = Buffer.from(sealed);
    newer[8] = 2;
    assert.throws(() => openObject(KEYS, 'gc', newer), (e) => isCofferError(e, 'UNSUPPORTED'));
    const kind = Buffer.from(sealed);
    kind[9] = 99;
    assert.throws(() => openObject(KEYS, 'gc', kind), corrupt);
  });

  it('caps decompression: an authentic zstd bomb fails with CORRUPT instead of expanding', () => {
    const bomb = zstdCompressSync(Buffer.alloc(64 << 20));
    const before = process.memoryUsage().arrayBuffers;
    // Claims 1 MiB; the frame would expand to 64 MiB.
    assert.throws(() => openObject(KEYS, 'index', handSeal('index', 2, 1, 1 << 20, bomb)), corrupt);
    assert.ok(process.memoryUsage().arrayBuffers - before < 16 << 20);
    // Claims more than the cap: refused before decrypting.
    assert.throws(() => openObject(KEYS, 'index', handSeal('index', 2, 1, MAX_OBJECT_SIZE + 1, bomb)), corrupt);
    // Unknown flags, even authentic, are refused.
    assert.throws(() => openObject(KEYS, 'index', handSeal('index', 2, 2, 3, Buffer.from('abc'))), corrupt);
    assert.deepEqual(openObject(KEYS, 'index', handSeal('index', 2, 0, 3, Buffer.from('abc'))), Buffer.from('abc'));
  });

  it('sealObject() refuses unknown kinds and bad salts with INTERNAL', () => {
    assert.throws(() => sealObject(KEYS, 'bogus' as ObjectKind, Buffer.from('x')), (e) => isCofferError(e, 'INTERNAL'));
    assert.throws(() => sealObject(KEYS, 'gc', Buffer.from('x'), 3, { salt: Buffer.alloc(5) }), (e) => isCofferError(e, 'INTERNAL'));
  });
});
