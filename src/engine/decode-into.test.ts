import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import { isCofferError } from '../core/errors.ts';
import { randomBytes, textBytes } from '../testing/random.ts';
import { nativeZstd } from './addon.ts';
import { decodeBlob, encodeBlob } from './blob.ts';
import { DecodeScratch, SharedSlabs } from './buffers.ts';
import { DECRYPT_SLICE, decodeBlobInto } from './decode-into.ts';
import { chunkId } from './hash.ts';
import { deriveRepoKeys } from './keys.ts';
import { PackWriter } from './pack.ts';
import { WorkerPool, type DecodeItem } from './pool.ts';

const KEYS = deriveRepoKeys(Buffer.from(Array.from({ length: 32 }, (_, i) => 100 + i)));

/** Encoded blobs of several sizes: compressible (text) and not (random), around DECRYPT_SLICE. */
function blobs(): Array<DecodeItem & { raw: Buffer }> {
  const w = new PackWriter(KEYS);
  const raws = [textBytes(1, 1000), randomBytes(2, 1000), textBytes(3, 3 * DECRYPT_SLICE + 17), randomBytes(4, 2 * DECRYPT_SLICE), randomBytes(5, DECRYPT_SLICE), Buffer.alloc(1 << 20), textBytes(6, 1)];
  return raws.map((raw) => {
    const id = chunkId(KEYS.chunkIdKey, raw);
    const nonceIndex = w.reserveNonce();
    const enc = encodeBlob(KEYS, w.packKey, nonceIndex, 'data', id, raw, 3);
    return { type: 'data', id, packKey: w.packKey, nonceIndex, compressed: enc.compressed, rawLength: raw.length, stored: enc.stored, raw };
  });
}

describe('decodeBlobInto()', () => {
  it('writes what decodeBlob() returns into the given view, compressed or not, across decrypt slices', () => {
    const items = blobs();
    assert.ok(items.some((b) => b.compressed) && items.some((b) => !b.compressed));
    const scratch = new DecodeScratch();
    const out = new Uint8Array(new SharedArrayBuffer(8 << 20));
    let at = 5;
    for (const b of items) {
      const view = out.subarray(at, at + b.rawLength);
      decodeBlobInto(KEYS, b, view, scratch);
      assert.deepEqual(Buffer.from(view), decodeBlob(KEYS, b.packKey, b.nonceIndex, b.type, b.id, b.compressed, b.rawLength, b.stored));
      assert.deepEqual(Buffer.from(view), b.raw);
      at += b.rawLength;
    }
  });

  it('throws CORRUPT for a flipped byte, a wrong tag, id, length or compression flag, and INTERNAL for a wrong output size', () => {
    const scratch = new DecodeScratch();
    for (const b of blobs().slice(0, 4)) {
      const out = new Uint8Array(b.rawLength);
      const flipped = Buffer.from(b.stored);
      flipped[Math.floor(flipped.length / 2)]! ^= 1;
      const tag = Buffer.from(b.stored);
      tag[tag.length - 1]! ^= 1;
      const wrongId = Buffer.from(b.id);
      wrongId[0]! ^= 1;
      for (const bad of [{ ...b, stored: flipped }, { ...b, stored: tag }, { ...b, id: wrongId }, { ...b, compressed: !b.compressed }, { ...b, stored: b.stored.subarray(0, 10) }]) {
        assert.throws(() => decodeBlobInto(KEYS, bad, out, scratch), (e) => isCofferError(e, 'CORRUPT'));
      }
      assert.throws(() => decodeBlobInto(KEYS, b, new Uint8Array(b.rawLength + 1), scratch), (e) => isCofferError(e, 'INTERNAL'));
    }
  });

  it("the addon's zstdDecompressInto() fills the output exactly from one frame, and refuses anything else", () => {
    const z = nativeZstd();
    if (z === null) return assert.equal(z, null, 'without the addon decode-into.ts decompresses through compress.ts');
    assert.equal(typeof z.zstdDecompressInto, 'function');
    const raw = textBytes(7, 300_000);
    const frame = zstdCompressSync(raw);
    const out = new Uint8Array(new SharedArrayBuffer(raw.length));
    z.zstdDecompressInto!(frame, out);
    assert.deepEqual(Buffer.from(out), raw);
    assert.throws(() => z.zstdDecompressInto!(frame, new Uint8Array(raw.length + 1)), (e: Error & { code?: string }) => e.code === 'ZSTD_LENGTH');
    assert.throws(() => z.zstdDecompressInto!(frame, new Uint8Array(raw.length - 1)), (e: Error & { code?: string }) => e.code === 'ZSTD_ERROR');
    assert.throws(() => z.zstdDecompressInto!(Buffer.concat([frame, frame]), new Uint8Array(2 * raw.length)), (e: Error & { code?: string }) => e.code === 'ZSTD_ERROR');
    assert.throws(() => z.zstdDecompressInto!(Buffer.alloc(0), new Uint8Array(1)), (e: Error & { code?: string }) => e.code === 'ZSTD_ERROR');
  });
});

describe('SharedSlabs', () => {
  it('hands back the same slabs, up to `keep`, and gives larger requests a buffer of their own', () => {
    const slabs = new SharedSlabs(1024, 2);
    const a = slabs.take(100);
    const b = slabs.take(1024);
    const c = slabs.take(10);
    assert.equal(a.length, 100);
    assert.ok(a.buffer instanceof SharedArrayBuffer && a.buffer.byteLength === 1024);
    slabs.give(a);
    slabs.give(b);
    slabs.give(c);
    slabs.give(a);
    assert.equal(slabs.idle, 2);
    const big = slabs.take(5000);
    assert.equal(big.buffer.byteLength, 5000);
    slabs.give(big);
    slabs.give(new Uint8Array(1024));
    assert.equal(slabs.idle, 2);
    const again = [slabs.take(1), slabs.take(1)].map((u) => u.buffer);
    assert.ok(again.includes(b.buffer) && again.includes(a.buffer));
  });
});

describe('WorkerPool.decode() into shared memory', () => {
  let pool: WorkerPool;
  before(async () => {
    pool = await WorkerPool.create({ keys: KEYS, chunker: { minSize: 4096, avgSize: 16384, maxSize: 65536 }, level: 3, workers: 2 });
  });
  after(() => pool.close());

  it('decodes into the given buffer back to back and returns views of it; a damaged blob rejects with CORRUPT', async () => {
    const items = blobs();
    const total = items.reduce((n, b) => n + b.rawLength, 0);
    const into = new Uint8Array(new SharedArrayBuffer(total + 100), 50, total);
    const got = await pool.decode(items, undefined, { into });
    let at = 50;
    items.forEach((b, i) => {
      assert.equal(got[i]!.buffer, into.buffer);
      assert.equal(got[i]!.byteOffset, at);
      assert.deepEqual(got[i], b.raw);
      at += b.rawLength;
    });
    const bad = Buffer.from(items[2]!.stored);
    bad[3]! ^= 1;
    await assert.rejects(pool.decode([{ ...items[2]!, stored: bad }], undefined, { into }), (e) => isCofferError(e, 'CORRUPT'));
    await assert.rejects(pool.decode(items, undefined, { into: new Uint8Array(total) }), (e) => isCofferError(e, 'INTERNAL'));
    await assert.rejects(pool.decode(items, undefined, { into: into.subarray(1) }), (e) => isCofferError(e, 'INTERNAL'));
  });
});
