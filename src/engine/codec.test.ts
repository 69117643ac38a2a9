// The addon's blob encoder (src/native/codec.c) against the TypeScript one (blob.ts): the same
// stored bytes for the same blob, key and nonce, and every bad argument refused.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { textBytes } from '../testing/random.ts';
import { nativeCodec, type NativeCodec } from './addon.ts';
import { decodeBlob, encodeBlob } from './blob.ts';
import { BLOB_TYPE_CODE, type BlobType } from './format.ts';
import { chunkId } from './hash.ts';
import { deriveRepoKeys, newMasterKey } from './keys.ts';
import { WorkerPool } from './pool.ts';

const keys = deriveRepoKeys(newMasterKey());

function encodeAll(codec: NativeCodec, raws: Uint8Array[], types: BlobType[], packKeys: Buffer[], nonces: number[], level: number): Promise<Array<{ stored: Buffer; compressed: boolean }>> {
  const ids = new Uint8Array(raws.length * 32);
  raws.forEach((r, i) => ids.set(chunkId(keys.chunkIdKey, r), i * 32));
  const uniqueKeys = [...new Set(packKeys)];
  const keyBytes = new Uint8Array(uniqueKeys.length * 32);
  uniqueKeys.forEach((k, i) => keyBytes.set(k, i * 32));
  const meta = new Float64Array(raws.length * 3);
  raws.forEach((_, i) => {
    meta[i * 3] = BLOB_TYPE_CODE[types[i]!];
    meta[i * 3 + 1] = uniqueKeys.indexOf(packKeys[i]!);
    meta[i * 3 + 2] = nonces[i]!;
  });
  const out = Buffer.alloc(raws.reduce((n, r) => n + r.length + 16, 0));
  const res = new Float64Array(raws.length * 3);
  return new Promise((resolve, reject) => {
    codec.encodeBlobs(raws, meta, ids, keyBytes, level, out, res, (err) => {
      if (err) reject(err);
      else resolve(raws.map((_, i) => ({ stored: Buffer.from(out.subarray(res[i * 3]!, res[i * 3]! + res[i * 3 + 1]!)), compressed: res[i * 3 + 2] === 1 })));
    });
  });
}

/** The encoder, or null in a run that disables the addon (and only then). */
function codecOrDisabled(): NativeCodec | null {
  const codec = nativeCodec();
  if (!codec) assert.ok(process.env.COFFER_NATIVE === '0' || process.env.COFFER_NATIVE_CODEC === '0', 'the addon has no encoder: build it (npm run build:native)');
  return codec;
}

describe('native blob encoder', () => {

  it('writes exactly the bytes encodeBlob() writes: compressible, incompressible, empty and one-byte blobs, several keys', async () => {
    const codec = codecOrDisabled();
    if (!codec) return;
    const raws = [textBytes(1, 300_000), randomBytes(200_000), new Uint8Array(0), Buffer.from('x'), textBytes(2, 5), new Uint8Array(1 << 20), textBytes(3, 2_000_000)];
    const types: BlobType[] = ['data', 'data', 'data', 'tree', 'tree', 'data', 'data'];
    const k1 = randomBytes(32);
    const k2 = randomBytes(32);
    const packKeys = [k1, k2, k1, k2, k1, k1, k2];
    const nonces = [0, 1, 2, 3, 4, 0xfffffffe, 7];
    for (const level of [1, 3, 9]) {
      const got = await encodeAll(codec, raws, types, packKeys, nonces, level);
      raws.forEach((raw, i) => {
        const id = chunkId(keys.chunkIdKey, raw);
        const want = encodeBlob(keys, packKeys[i]!, nonces[i]!, types[i]!, id, raw, level);
        assert.equal(got[i]!.compressed, want.compressed, `blob ${i} compressed`);
        assert.ok(got[i]!.stored.equals(want.stored), `blob ${i} at level ${level}: the same stored bytes`);
        assert.ok(decodeBlob(keys, packKeys[i]!, nonces[i]!, types[i]!, id, got[i]!.compressed, raw.length, got[i]!.stored).equals(raw));
      });
    }
  });

  it('refuses bad arguments with a TypeError, before any work', () => {
    const codec = codecOrDisabled();
    if (!codec) return;
    const raw = textBytes(4, 1000);
    const ids = new Uint8Array(32);
    const key = new Uint8Array(32);
    const ok = () => ({ meta: new Float64Array([0, 0, 0]), out: new Uint8Array(1016), res: new Float64Array(3) });
    const cb = () => assert.fail('no callback for refused arguments');
    const call = (over: Partial<{ raws: unknown; meta: unknown; ids: unknown; keys: unknown; level: unknown; out: unknown; res: unknown; cb: unknown }>) => {
      const a = ok();
      const args = { raws: [raw], meta: a.meta, ids, keys: key, level: 3, out: a.out, res: a.res, cb, ...over };
      (codec.encodeBlobs as (...x: unknown[]) => void)(args.raws, args.meta, args.ids, args.keys, args.level, args.out, args.res, args.cb);
    };
    assert.throws(() => call({ raws: raw }), /raws must be an array/);
    assert.throws(() => call({ raws: ['text'] }), /raws must be an array of Uint8Array/);
    assert.throws(() => call({ meta: new Float64Array(2) }), /meta must be/);
    assert.throws(() => call({ meta: new Float64Array([2, 0, 0]) }), /type code/);
    assert.throws(() => call({ meta: new Float64Array([0, 1, 0]) }), /key index/);
    assert.throws(() => call({ meta: new Float64Array([0, 0, -1]) }), /nonce index/);
    assert.throws(() => call({ meta: new Float64Array([0, 0, 0.5]) }), /nonce index/);
    assert.throws(() => call({ meta: new Float64Array([0, 0, 2 ** 40]) }), /nonce index/);
    assert.throws(() => call({ ids: new Uint8Array(31) }), /ids must be/);
    assert.throws(() => call({ keys: new Uint8Array(33) }), /keys must be/);
    assert.throws(() => call({ level: 23 }), /level/);
    assert.throws(() => call({ level: 'x' }), /level/);
    assert.throws(() => call({ out: new Uint8Array(1015) }), /out is smaller/);
    assert.throws(() => call({ out: new Float64Array(200) }), /out must be a Uint8Array/);
    assert.throws(() => call({ res: new Float64Array(2) }), /results must be/);
    assert.throws(() => call({ cb: 5 }), /callback must be a function/);
  });

  it('is what the pool encodes with (or the workers, without it): its blobs decode back in the workers', async () => {
    const pool = await WorkerPool.create({ workers: 2 });
    try {
      const repo = pool.context({ keys, chunker: { minSize: 1024, avgSize: 4096, maxSize: 16384 }, level: 3 });
      const packKey = randomBytes(32);
      const raws = Array.from({ length: 50 }, (_, i) => (i % 3 === 0 ? randomBytes(70_000 + i) : textBytes(i, 50_000 + i * 100)));
      const items = raws.map((raw, i) => ({ type: 'data' as const, id: chunkId(keys.chunkIdKey, raw), raw, packKey, nonceIndex: i }));
      const enc = await repo.encode(items);
      const back = await repo.decode(items.map((it, i) => ({ type: it.type, id: it.id, packKey, nonceIndex: i, compressed: enc[i]!.compressed, rawLength: it.raw.length, stored: enc[i]!.stored })));
      back.forEach((b, i) => assert.ok(b.equals(raws[i]!), `blob ${i}`));
    } finally {
      await pool.close();
    }
  });
});
