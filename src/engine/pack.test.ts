import assert from 'node:assert/strict';
import { createCipheriv } from 'node:crypto';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { randomBytes, textBytes } from '../testing/random.ts';
import { decodeBlob, encodeBlob } from './blob.ts';
import type { BlobType } from './format.ts';
import { chunkId, contentHash } from './hash.ts';
import { deriveRepoKeys } from './keys.ts';
import {
  decodePackTrailer, MIN_PACK_SIZE, PACK_ENTRY_SIZE, PACK_FOOTER_SIZE, PACK_HEADER_SIZE, packKeyFromHeader, PackWriter,
  parsePackFooter, readPackIndex, type PackEntry,
} from './pack.ts';

const MASTER = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const KEYS = deriveRepoKeys(MASTER);
const SALT = Buffer.alloc(32, 0x5a);
const corrupt = (e: unknown) => isCofferError(e, 'CORRUPT');

/** Reads a whole pack the way check --read-data does; returns every blob. */
function readAll(bytes: Buffer): Array<{ entry: PackEntry; raw: Buffer }> {
  const header = bytes.subarray(0, PACK_HEADER_SIZE);
  const packKey = packKeyFromHeader(KEYS, header);
  const f = parsePackFooter(bytes.subarray(Math.max(0, bytes.length - 64)), bytes.length);
  const entries = decodePackTrailer(KEYS, header, bytes.subarray(f.trailerOffset, f.trailerOffset + f.trailerLength), bytes.length);
  return entries.map((entry) => ({
    entry,
    raw: decodeBlob(KEYS, packKey, entry.nonceIndex, entry.type, entry.id, entry.compressed, entry.rawLength, bytes.subarray(entry.offset, entry.offset + entry.length)),
  }));
}

function makePack(blobs: Array<[BlobType, Uint8Array]>, salt?: Buffer) {
  const w = new PackWriter(KEYS, salt ? { salt } : {});
  for (const [type, raw] of blobs) w.add(type, chunkId(KEYS.chunkIdKey, raw), raw, 3);
  return { w, ...w.finish() };
}

/** Encrypts a hand-made trailer plaintext exactly as docs/format.md describes. */
function sealTrailer(packKey: Buffer, plain: Buffer, count: number): Buffer {
  const aad = Buffer.alloc(16);
  aad.write('CFRTRLR\0', 0, 'latin1');
  aad[8] = 1;
  aad.writeUInt32LE(count, 12);
  const c = createCipheriv('aes-256-gcm', packKey, Buffer.alloc(12, 0xff));
  c.setAAD(aad);
  return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
}

function entryBytes(e: { type?: number; flags?: number; id?: Buffer; offset: number; length: number; rawLength: number; nonce: number }): Buffer {
  const b = Buffer.alloc(PACK_ENTRY_SIZE);
  b[0] = e.type ?? 0;
  b[1] = e.flags ?? 0;
  (e.id ?? Buffer.alloc(32, 7)).copy(b, 2);
  b.writeUInt32LE(e.offset, 34);
  b.writeUInt32LE(e.length, 38);
  b.writeUInt32LE(e.rawLength, 42);
  b.writeUInt32LE(e.nonce, 46);
  return b;
}

describe('packs', () => {
  it('GOLDEN: a pack with a fixed salt is pinned byte for byte', () => {
    const { bytes, id, w } = makePack([['data', Buffer.from('coffer raw blob')], ['tree', Buffer.alloc(0)]], SALT);
    assert.equal(w.packKey.toString('hex'), 'a0d152445703cf6cc6a4851f9d22e1b703aa76bea94b78f2ac9817425fff0620');
    assert.equal(bytes.toString('hex'),
      '4346525041434b0a010000005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a44f7eb6f7d435754742238bd5df0a5e8488807fa076367f3f821bc166721edbfcb546b4538d7c3687f5002a99a469ee65270c86df5514c0ca728af2eed48c013b28de073fc85014a53668180509177791a086015d5625f003f2bbb6bd8907bd4722ea5d745f6316d52c87ae7f5ac8d848378609c6aa3cb0dbbb0937088b07ab7a76a004a70d218485623e3a7fb86922d498ab28b9412390f86958f5183c8379e956b4f7b8505ea7800000043465250454e440a');
    assert.equal(id.toString('hex'), 'dfde55f2150fae30e521355bc74892b1b8bd80e65500f01f5aba85575cffd7bd');
  });

  it('round-trips blobs of every kind; the pack id is the BLAKE3 of the file', () => {
    const blobs: Array<[BlobType, Uint8Array]> = [
      ['data', textBytes(1, 10_000)], ['data', randomBytes(2, 5000)], ['tree', Buffer.from('{"nodes":[]}')], ['data', new Uint8Array(0)], ['tree', textBytes(3, 70_000)],
    ];
    const { bytes, id, entries, w } = makePack(blobs);
    assert.deepEqual(id, contentHash(bytes));
    assert.equal(w.count, blobs.length);
    assert.equal(entries.length, blobs.length);
    const read = readAll(bytes);
    read.forEach(({ entry, raw }, i) => {
      assert.deepEqual(entry, entries[i]);
      assert.equal(entry.type, blobs[i]![0]);
      assert.deepEqual(raw, Buffer.from(blobs[i]![1]));
    });
    assert.equal(entries[0]!.offset, PACK_HEADER_SIZE);
    assert.equal(entries[0]!.compressed, true);
    assert.equal(entries[1]!.compressed, false);
  });

  it('PackWriter hands out unique nonces and accepts blobs encoded out of order (as workers finish)', () => {
    const w = new PackWriter(KEYS);
    const raws = [textBytes(4, 3000), textBytes(5, 4000), textBytes(6, 5000)];
    const nonces = raws.map(() => w.reserveNonce());
    assert.deepEqual(nonces, [0, 1, 2]);
    const encoded = raws.map((raw, i) => encodeBlob(KEYS, w.packKey, nonces[i]!, 'data', chunkId(KEYS.chunkIdKey, raw), raw, 3));
    let size = w.size;
    for (const i of [2, 0, 1]) {
      const e = w.append('data', chunkId(KEYS.chunkIdKey, raws[i]!), encoded[i]!, nonces[i]!);
      assert.equal(e.offset, size);
      size += e.length;
      assert.equal(w.size, size);
    }
    const { bytes } = w.finish();
    assert.deepEqual(readAll(bytes).map((r) => r.raw), [raws[2], raws[0], raws[1]].map((r) => Buffer.from(r)));
  });

  it('PackWriter refuses unreserved or reused nonces and use after finish, with INTERNAL', () => {
    const internal = (e: unknown) => isCofferError(e, 'INTERNAL');
    const w = new PackWriter(KEYS);
    const raw = Buffer.from('x');
    const id = chunkId(KEYS.chunkIdKey, raw);
    const n = w.reserveNonce();
    const enc = encodeBlob(KEYS, w.packKey, n, 'data', id, raw, 3);
    assert.throws(() => w.append('data', id, enc, n + 1), internal);
    assert.throws(() => w.append('data', id, { ...enc, rawLength: enc.rawLength + 1 }, n), internal, 'inconsistent lengths');
    w.append('data', id, enc, n);
    assert.throws(() => w.append('data', id, enc, n), internal);
    w.finish();
    assert.throws(() => w.finish(), internal);
    assert.throws(() => w.reserveNonce(), internal);
    assert.throws(() => w.add('data', id, raw, 3), internal);
  });

  it('two packs never share a salt, so never a key', () => {
    const a = new PackWriter(KEYS);
    const b = new PackWriter(KEYS);
    assert.notDeepEqual(a.packKey, b.packKey);
  });

  it('an empty pack is valid', () => {
    const { bytes } = makePack([]);
    assert.equal(bytes.length, MIN_PACK_SIZE);
    assert.deepEqual(readAll(bytes), []);
  });

  it('readPackIndex() lists the entries with two ranged reads, or three for a large trailer', async () => {
    for (const [n, expectedReads] of [[3, 2], [1400, 3]] as const) {
      const blobs = Array.from({ length: n }, (_, i): [BlobType, Uint8Array] => ['data', Buffer.from(`blob ${i}`)]);
      const { bytes, entries } = makePack(blobs);
      const reads: Array<[number, number]> = [];
      const got = await readPackIndex(KEYS, bytes.length, async (offset, length) => {
        reads.push([offset, length]);
        return bytes.subarray(offset, offset + length);
      });
      assert.deepEqual(got, entries);
      assert.equal(reads.length, expectedReads, `${n} entries`);
    }
  });

  it('readPackIndex() rejects short reads and packs too small to be packs', async () => {
    const { bytes } = makePack([['data', Buffer.from('abc')]]);
    await assert.rejects(readPackIndex(KEYS, bytes.length, async (o, l) => bytes.subarray(o, o + l - 1)), corrupt);
    await assert.rejects(readPackIndex(KEYS, 10, async (o, l) => bytes.subarray(o, o + l)), corrupt);
    await assert.rejects(readPackIndex(KEYS, bytes.length + 1, async (o, l) => Buffer.concat([bytes, Buffer.alloc(1)]).subarray(o, o + l)), corrupt);
  });

  it('detects a flip of any single byte anywhere in a pack', () => {
    const { bytes } = makePack([['data', textBytes(7, 200)], ['tree', Buffer.from('tree!')], ['data', randomBytes(8, 40)]]);
    assert.equal(readAll(bytes).length, 3);
    for (let i = 0; i < bytes.length; i++) {
      for (const flip of [0x01, 0xff]) {
        const bad = Buffer.from(bytes);
        bad[i]! ^= flip;
        assert.throws(
          () => readAll(bad),
          (e) => isCofferError(e, 'CORRUPT') || (i === 8 && isCofferError(e, 'UNSUPPORTED')),
          `byte ${i} ^ ${flip}`,
        );
      }
    }
  });

  it('detects truncation at every length', () => {
    const { bytes } = makePack([['data', textBytes(9, 100)], ['tree', Buffer.from('t')]]);
    for (let n = 0; n < bytes.length; n++) assert.throws(() => readAll(bytes.subarray(0, n)), corrupt, `${n} bytes`);
  });

  it('parsePackFooter() rejects hostile footers: huge or tiny trailer lengths, bad magic, bad sizes', () => {
    const { bytes } = makePack([['data', Buffer.from('abc')]]);
    const withLength = (len: number) => {
      const b = Buffer.from(bytes);
      b.writeUInt32LE(len, b.length - PACK_FOOTER_SIZE);
      return b;
    };
    for (const len of [0xffffffff, 0, 19, bytes.length, 21 + PACK_ENTRY_SIZE]) {
      const b = withLength(len);
      assert.throws(() => parsePackFooter(b, b.length), corrupt, `length ${len}`);
    }
    assert.throws(() => parsePackFooter(bytes.subarray(-11), bytes.length), corrupt);
    assert.throws(() => parsePackFooter(bytes, 5), corrupt);
    assert.throws(() => parsePackFooter(bytes, 2 ** 40), corrupt);
    assert.throws(() => parsePackFooter(Buffer.alloc(64), 64 + 100), corrupt);
  });

  it('decodePackTrailer() rejects authentic but inconsistent trailers (a writer bug) with CORRUPT', () => {
    const header = makePack([], SALT).bytes.subarray(0, PACK_HEADER_SIZE);
    const packKey = packKeyFromHeader(KEYS, header);
    const area = 1000; // bytes of blob area after the header
    const trailerFor = (entries: Buffer[], count = entries.length) => {
      const plain = Buffer.concat([Buffer.alloc(4), ...entries]);
      plain.writeUInt32LE(count, 0);
      return sealTrailer(packKey, plain, entries.length);
    };
    const packSizeFor = (trailer: Buffer) => PACK_HEADER_SIZE + area + trailer.length + PACK_FOOTER_SIZE;
    const ok = (o: number, len = 116, nonce = 0) => entryBytes({ offset: o, length: len, rawLength: len - 16, nonce });
    const good = trailerFor([ok(PACK_HEADER_SIZE), ok(PACK_HEADER_SIZE + 116, 116, 1)]);
    assert.equal(decodePackTrailer(KEYS, header, good, packSizeFor(good)).length, 2, 'the hand-made trailer is valid');
    const cases: Array<[string, Buffer]> = [
      ['overlap', trailerFor([ok(PACK_HEADER_SIZE), ok(PACK_HEADER_SIZE + 100, 116, 1)])],
      ['out of order', trailerFor([ok(PACK_HEADER_SIZE + 116), ok(PACK_HEADER_SIZE, 116, 1)])],
      ['inside the header', trailerFor([ok(PACK_HEADER_SIZE - 1)])],
      ['into the trailer', trailerFor([ok(PACK_HEADER_SIZE + area - 100)])],
      ['offset + length wraps', trailerFor([entryBytes({ offset: 0xffffff00, length: 0x200, rawLength: 0x1f0, nonce: 0 })])],
      ['shorter than a tag', trailerFor([entryBytes({ offset: PACK_HEADER_SIZE, length: 15, rawLength: 0, nonce: 0 })])],
      ['raw length mismatch', trailerFor([entryBytes({ offset: PACK_HEADER_SIZE, length: 116, rawLength: 99, nonce: 0 })])],
      ['compressed but not smaller', trailerFor([entryBytes({ flags: 1, offset: PACK_HEADER_SIZE, length: 116, rawLength: 100, nonce: 0 })])],
      ['unknown type', trailerFor([entryBytes({ type: 2, offset: PACK_HEADER_SIZE, length: 116, rawLength: 100, nonce: 0 })])],
      ['unknown flags', trailerFor([entryBytes({ flags: 2, offset: PACK_HEADER_SIZE, length: 116, rawLength: 100, nonce: 0 })])],
      ['nonce reuse', trailerFor([ok(PACK_HEADER_SIZE), ok(PACK_HEADER_SIZE + 116)])],
      ['nonce 0xffffffff', trailerFor([ok(PACK_HEADER_SIZE, 116, 0xffffffff)])],
      ['count too large', trailerFor([ok(PACK_HEADER_SIZE)], 1_000_000)],
      ['count too small', trailerFor([ok(PACK_HEADER_SIZE)], 0)],
    ];
    for (const [name, trailer] of cases) assert.throws(() => decodePackTrailer(KEYS, header, trailer, packSizeFor(trailer)), corrupt, name);
    // Sizes that cannot hold the trailer.
    assert.throws(() => decodePackTrailer(KEYS, header, good, PACK_HEADER_SIZE + good.length), corrupt);
    assert.throws(() => decodePackTrailer(KEYS, header, good.subarray(0, 30), packSizeFor(good)), corrupt);
    assert.throws(() => decodePackTrailer(KEYS, header, randomBytes(5, 4 + 16 + 50 * 3), 100_000), corrupt);
  });

  it('packKeyFromHeader() rejects bad magic and reserved bytes (CORRUPT) and newer versions (UNSUPPORTED)', () => {
    const { bytes } = makePack([]);
    const header = Buffer.from(bytes.subarray(0, PACK_HEADER_SIZE));
    const v2 = Buffer.from(header);
    v2[8] = 2;
    assert.throws(() => packKeyFromHeader(KEYS, v2), (e) => isCofferError(e, 'UNSUPPORTED'));
    const v0 = Buffer.from(header);
    v0[8] = 0;
    assert.throws(() => packKeyFromHeader(KEYS, v0), corrupt);
    const reserved = Buffer.from(header);
    reserved[10] = 1;
    assert.throws(() => packKeyFromHeader(KEYS, reserved), corrupt);
    assert.throws(() => packKeyFromHeader(KEYS, header.subarray(0, 43)), corrupt);
    assert.throws(() => packKeyFromHeader(KEYS, Buffer.alloc(44)), corrupt);
  });
});
