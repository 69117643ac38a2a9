import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { randomBytes, textBytes } from '../testing/random.ts';
import { blobAad, blobNonce, decodeBlob, encodeBlob, release } from './blob.ts';
import type { BlobType } from './format.ts';
import { chunkId } from './hash.ts';
import { deriveRepoKeys } from './keys.ts';

const MASTER = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const KEYS = deriveRepoKeys(MASTER);
const PACK_KEY = Buffer.alloc(32, 0x42);
const corrupt = (e: unknown) => isCofferError(e, 'CORRUPT');

function roundTrip(type: BlobType, raw: Uint8Array, nonce: number, level = 3) {
  const id = chunkId(KEYS.chunkIdKey, raw);
  const enc = encodeBlob(KEYS, PACK_KEY, nonce, type, id, raw, level);
  assert.equal(enc.rawLength, raw.length);
  const back = decodeBlob(KEYS, PACK_KEY, nonce, type, id, enc.compressed, enc.rawLength, enc.stored);
  assert.deepEqual(back, Buffer.from(raw));
  return { id, enc };
}

describe('blob encoding', () => {
  it('GOLDEN: a compressed data blob and a raw tree blob encode to pinned bytes', () => {
    const txt = Buffer.from('coffer golden blob: '.repeat(8));
    const pinnedCompressed = 'e594abbef4cfdf6398086c454195511ac3b56891691010bd859a128d26758ced92178daf5861a9b6141491d9ad011db243150d87';
    const id = chunkId(KEYS.chunkIdKey, txt);
    // The pinned bytes must decode: this is the format, independent of the zstd version.
    assert.deepEqual(decodeBlob(KEYS, PACK_KEY, 7, 'data', id, true, txt.length, Buffer.from(pinnedCompressed, 'hex')), txt);
    // And encoding must reproduce them. A zstd upgrade could legitimately change the compressed
    // bytes; if only this assertion fails, check with the zstd changelog before re-pinning.
    const enc = encodeBlob(KEYS, PACK_KEY, 7, 'data', id, txt, 3);
    assert.equal(enc.compressed, true);
    assert.equal(enc.stored.toString('hex'), pinnedCompressed);

    const raw = Buffer.from('coffer raw blob');
    const e2 = encodeBlob(KEYS, PACK_KEY, 1, 'tree', chunkId(KEYS.chunkIdKey, raw), raw, 3);
    assert.equal(e2.compressed, false);
    assert.equal(e2.stored.toString('hex'), '2be4b272ba29b3d728b0e4ed0c9b0132184a41e0584b5e5296d88c34de609e');
  });

  it('nonce and AAD follow the documented layout', () => {
    assert.equal(blobNonce(0x01020304).toString('hex'), '000000000000000001020304');
    assert.equal(blobNonce(0).toString('hex'), '00'.repeat(12));
    const aad = blobAad('tree', Buffer.alloc(32, 0xee), true, 0x01020304);
    assert.equal(aad.toString('hex'), Buffer.from('CFRBLOB\0').toString('hex') + '01' + '01' + '01' + '00' + '04030201' + 'ee'.repeat(32));
  });

  it('round-trips data and tree blobs of edge sizes, random and compressible', () => {
    let nonce = 0;
    for (const n of [0, 1, 15, 16, 17, 1000, 65536, 1 << 20]) {
      for (const [kind, raw] of [['random', randomBytes(n, n)], ['text', textBytes(n, n)], ['zeros', new Uint8Array(n)]] as const) {
        for (const type of ['data', 'tree'] as const) {
          const { enc } = roundTrip(type, raw, nonce++);
          if (kind === 'random' || n < 32) assert.equal(enc.compressed, false, `${kind} ${n}`);
          if (kind === 'zeros' && n >= 1000) assert.equal(enc.compressed, true, `${kind} ${n}`);
          assert.equal(enc.stored.length, (enc.compressed ? enc.stored.length - 16 : n) + 16);
        }
      }
    }
  });

  it('release() frees only buffers that are the whole of their own memory', () => {
    const own = Buffer.from(new ArrayBuffer(100));
    release(own);
    assert.equal(own.buffer.detached, true);
    const big = Buffer.from(new ArrayBuffer(100));
    release(big.subarray(10, 20));
    assert.equal(big.buffer.detached, false, 'a slice leaves its parent alone');
    const pooled = Buffer.from('small');
    release(pooled);
    assert.equal(pooled.toString(), 'small', "Node's shared pool is never touched");
    const shared = new Uint8Array(new SharedArrayBuffer(8));
    release(shared);
    assert.equal(shared.length, 8);
    release(undefined);
    release(null);
  });

  it('stored buffers own exactly their memory (transferable without a copy)', () => {
    const { enc } = roundTrip('data', textBytes(1, 50_000), 3);
    assert.equal(enc.stored.byteOffset, 0);
    assert.equal(enc.stored.buffer.byteLength, enc.stored.length);
  });

  it('is deterministic for a given key and nonce, and differs across nonces', () => {
    const raw = randomBytes(9, 500);
    const id = chunkId(KEYS.chunkIdKey, raw);
    const a = encodeBlob(KEYS, PACK_KEY, 5, 'data', id, raw, 3).stored;
    assert.deepEqual(encodeBlob(KEYS, PACK_KEY, 5, 'data', id, raw, 3).stored, a);
    assert.notDeepEqual(encodeBlob(KEYS, PACK_KEY, 6, 'data', id, raw, 3).stored, a);
  });

  it('encodeBlob() refuses to produce a blob that does not verify (wrong id) with INTERNAL', () => {
    const raw = textBytes(2, 1000);
    assert.throws(() => encodeBlob(KEYS, PACK_KEY, 0, 'data', Buffer.alloc(32), raw, 3), (e) => isCofferError(e, 'INTERNAL'));
    assert.throws(() => encodeBlob(KEYS, Buffer.alloc(16), 0, 'data', chunkId(KEYS.chunkIdKey, raw), raw, 3), (e) => isCofferError(e, 'INTERNAL'));
    assert.throws(() => encodeBlob(KEYS, PACK_KEY, -1, 'data', chunkId(KEYS.chunkIdKey, raw), raw, 3), (e) => isCofferError(e, 'INTERNAL'));
    assert.throws(() => encodeBlob(KEYS, PACK_KEY, 2 ** 32, 'data', chunkId(KEYS.chunkIdKey, raw), raw, 3), (e) => isCofferError(e, 'INTERNAL'));
  });

  it('detects a flip of any single byte of a stored blob (compressed and raw)', () => {
    for (const raw of [textBytes(3, 300), randomBytes(4, 100)]) {
      const { id, enc } = roundTrip('data', raw, 11);
      for (let i = 0; i < enc.stored.length; i++) {
        for (const flip of [0x01, 0x80, 0xff]) {
          const bad = Buffer.from(enc.stored);
          bad[i]! ^= flip;
          assert.throws(() => decodeBlob(KEYS, PACK_KEY, 11, 'data', id, enc.compressed, enc.rawLength, bad), corrupt, `byte ${i} ^ ${flip}`);
        }
      }
      // Truncation and extension.
      for (const len of [0, 15, 16, enc.stored.length - 1]) {
        assert.throws(() => decodeBlob(KEYS, PACK_KEY, 11, 'data', id, enc.compressed, enc.rawLength, enc.stored.subarray(0, len)), corrupt);
      }
      assert.throws(() => decodeBlob(KEYS, PACK_KEY, 11, 'data', id, enc.compressed, enc.rawLength, Buffer.concat([enc.stored, Buffer.alloc(1)])), corrupt);
    }
  });

  it('detects a blob opened with the wrong nonce, type, id, flag, length or pack key', () => {
    const raw = textBytes(5, 2000);
    const { id, enc } = roundTrip('tree', raw, 20);
    const args = { nonce: 20, type: 'tree' as BlobType, id, compressed: enc.compressed, rawLength: enc.rawLength, key: PACK_KEY };
    const attempt = (o: Partial<typeof args>) => {
      const a = { ...args, ...o };
      return () => decodeBlob(KEYS, a.key, a.nonce, a.type, a.id, a.compressed, a.rawLength, enc.stored);
    };
    assert.doesNotThrow(attempt({}));
    assert.throws(attempt({ nonce: 21 }), corrupt);
    assert.throws(attempt({ type: 'data' }), corrupt);
    const otherId = Buffer.from(id);
    otherId[31]! ^= 1;
    assert.throws(attempt({ id: otherId }), corrupt);
    assert.throws(attempt({ compressed: !enc.compressed }), corrupt);
    assert.throws(attempt({ rawLength: enc.rawLength + 1 }), corrupt);
    assert.throws(attempt({ key: Buffer.alloc(32, 0x43) }), corrupt);
    const otherKeys = deriveRepoKeys(Buffer.alloc(32, 9));
    assert.throws(() => decodeBlob(otherKeys, PACK_KEY, 20, 'tree', id, enc.compressed, enc.rawLength, enc.stored), corrupt, 'another repository');
  });
});
