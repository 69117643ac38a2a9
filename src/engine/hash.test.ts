import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { randomBytes } from '../testing/random.ts';
import { chunkId, contentHash, fromHex, parseHexId, toHex } from './hash.ts';
import { deriveRepoKeys } from './keys.ts';

const MASTER = Buffer.from(Array.from({ length: 32 }, (_, i) => i));

describe('hash', () => {
  it('matches the official BLAKE3 test vectors (empty input, plain and keyed)', () => {
    assert.equal(toHex(contentHash(new Uint8Array(0))), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
    const key = Buffer.from('whats the Elvish word for friend');
    assert.equal(toHex(chunkId(key, new Uint8Array(0))), '92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26');
  });

  it('GOLDEN: chunkId("coffer") under the golden chunk id key, and contentHash("coffer"), are pinned', () => {
    const keys = deriveRepoKeys(MASTER);
    assert.equal(toHex(chunkId(keys.chunkIdKey, Buffer.from('coffer'))), 'f91c10c0b1ee6e93f85f3fd9343ba62af16797ee5295b53c7a26e1b63a1e88b8');
    assert.equal(toHex(contentHash(Buffer.from('coffer'))), '88535ea6473cbea4513a5bb540a0a3d83704ec1f6907235392a75dd7ca476646');
  });

  it('chunkId() gives the same id for a view, a copy and a plain Uint8Array, and depends on the key', () => {
    const big = randomBytes(1, 100_000);
    const view = big.subarray(777, 50_000);
    const k1 = Buffer.alloc(32, 1);
    const k2 = Buffer.alloc(32, 2);
    const id = chunkId(k1, view);
    assert.deepEqual(chunkId(k1, Buffer.from(view)), id);
    assert.deepEqual(chunkId(k1, new Uint8Array(view)), id);
    assert.deepEqual(chunkId(new Uint8Array(k1), view), id);
    // Alternating keys must not confuse the cached hasher.
    const id2 = chunkId(k2, view);
    assert.notDeepEqual(id2, id);
    assert.deepEqual(chunkId(k1, view), id);
    assert.deepEqual(chunkId(k2, view), id2);
    assert.notDeepEqual(chunkId(k1, view.subarray(1)), id);
    assert.equal(id.length, 32);
  });

  it('chunkId() refuses a key that is not 32 bytes', () => {
    assert.throws(() => chunkId(Buffer.alloc(16), Buffer.from('x')), (e) => isCofferError(e, 'INTERNAL'));
  });

  it('toHex() and fromHex() round-trip; fromHex() is safe to pass to map()', () => {
    const ids = [randomBytes(2, 32), randomBytes(3, 32)];
    const hex = ids.map(toHex);
    assert.match(hex[0]!, /^[0-9a-f]{64}$/);
    assert.deepEqual(hex.map(fromHex), ids);
  });

  it('fromHex() rejects anything but 64 lowercase hex characters with CORRUPT; parseHexId() with the given code', () => {
    const good = 'ab'.repeat(32);
    for (const bad of ['', 'ab'.repeat(31), 'ab'.repeat(33), 'AB'.repeat(32), 'zz'.repeat(32), ` ${good}`.slice(0, 64) + ' ', good + '\n', 42 as unknown as string, undefined as unknown as string]) {
      assert.throws(() => fromHex(bad), (e) => isCofferError(e, 'CORRUPT'), JSON.stringify(bad));
    }
    assert.throws(() => parseHexId('nope', 'USAGE'), (e) => isCofferError(e, 'USAGE'));
    assert.deepEqual(parseHexId(good, 'USAGE'), Buffer.alloc(32, 0xab));
  });
});
