import assert from 'node:assert/strict';
import { createCipheriv } from 'node:crypto';
import { describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { randomBytes, rng, textBytes } from '../testing/random.ts';
import { chacha20Block, Chunker, chunkerParamsProblem, cutMask, fixedCut, gearTable, warmUpChunker, type ChunkerParams } from './chunker.ts';
import { deriveRepoKeys } from './keys.ts';
import { chunkAndHashSync } from './tasks.ts';

const MASTER = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const GEAR = gearTable(deriveRepoKeys(MASTER).gearSeed);
const SMALL: ChunkerParams = { minSize: 4096, avgSize: 16384, maxSize: 65536 };

/** The chunking rule exactly as docs/format.md states it, one byte at a time. */
function referenceCut(p: ChunkerParams, gear: Uint32Array, buf: Uint8Array, start: number, end: number, eof: boolean): number {
  const avail = end - start;
  if (avail <= 0) return -1;
  if (avail < p.minSize) return eof ? end : -1;
  const k = Math.log2(p.avgSize);
  const mask = (bits: number) => Number(((1n << BigInt(bits)) - 1n) << BigInt(31 - bits));
  const maskS = mask(k + 2);
  const maskL = mask(k - 2);
  let fp = 0;
  for (let len = p.minSize; len <= Math.min(p.maxSize, avail); len++) {
    fp = (((fp * 2) % 2 ** 32) + gear[buf[start + len - 1]!]!) % 2 ** 32;
    if ((fp & (len <= p.avgSize ? maskS : maskL)) === 0) return start + len;
    if (len === p.maxSize) return start + len;
  }
  return eof ? end : -1;
}

function allCuts(cut: (buf: Uint8Array, s: number, e: number, eof: boolean) => number, buf: Uint8Array): number[] {
  const cuts: number[] = [];
  let s = 0;
  for (;;) {
    const e = cut(buf, s, buf.length, true);
    if (e < 0) break;
    cuts.push(e);
    s = e;
  }
  return cuts;
}

/** Deterministic bytes for golden vectors, independent of any helper: xorshift32, top byte. */
function goldenBytes(n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = 0x12345678;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = (x >>> 24) & 0xff;
  }
  return b;
}

/** Feeds `data` through chunkAndHashSync in pieces of the given sizes, as a reader would. */
function streamCuts(chunker: Chunker, data: Uint8Array, pieceSize: () => number): number[] {
  const key = Buffer.alloc(32);
  const cuts: number[] = [];
  let base = 0; // stream offset of buf[0]
  let buf: Uint8Array = new Uint8Array(0);
  let pos = 0;
  for (;;) {
    const take = Math.min(pieceSize(), data.length - pos);
    const next = new Uint8Array(buf.length + take);
    next.set(buf);
    next.set(data.subarray(pos, pos + take), buf.length);
    pos += take;
    const eof = pos === data.length;
    const r = chunkAndHashSync(chunker, key, next, eof, 'cdc');
    for (const e of r.ends) cuts.push(base + e);
    const consumed = next.length - r.rest;
    base += consumed;
    buf = next.subarray(consumed);
    if (eof) {
      assert.equal(r.rest, 0);
      return cuts;
    }
  }
}

describe('gear table', () => {
  it('chacha20Block() matches the RFC 8439 section 2.3.2 test vector', () => {
    const key = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
    const nonce = Buffer.from('000000090000004a00000000', 'hex');
    const block = Buffer.from(chacha20Block(key, 1, nonce).buffer);
    assert.equal(
      block.toString('hex'),
      '10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e' +
        'd2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e',
    );
  });

  it('gearTable() is the ChaCha20 keystream of the seed, as OpenSSL computes it', () => {
    const seed = randomBytes(7, 32);
    const table = gearTable(seed);
    const iv = Buffer.alloc(16); // counter 0 (LE u32) + 12-byte zero nonce
    const stream = createCipheriv('chacha20', seed, iv).update(Buffer.alloc(1024));
    for (let i = 0; i < 256; i++) assert.equal(table[i], stream.readUInt32LE(4 * i), `entry ${i}`);
  });

  it('GOLDEN: the first gear entries for master key 00..1f are pinned', () => {
    assert.deepEqual(Array.from(GEAR.subarray(0, 8)), [
      0xb8d93e3e, 0x78ddfea4, 0xc41c7e71, 0x5e4149cb, 0xc43ff04d, 0x5c3027a3, 0x7399ceea, 0xdbfcfd94,
    ]);
  });

  it('different seeds give different tables', () => {
    assert.notDeepEqual(Array.from(gearTable(Buffer.alloc(32, 1))), Array.from(gearTable(Buffer.alloc(32, 2))));
  });

  it('gearTable() rejects a seed that is not 32 bytes', () => {
    assert.throws(() => gearTable(Buffer.alloc(31)), (e) => isCofferError(e, 'USAGE'));
  });
});

describe('chunker parameters', () => {
  it('cutMask() sets `bits` ones ending at bit 30', () => {
    assert.equal(cutMask(1) >>> 0, 0x40000000);
    assert.equal(cutMask(16) >>> 0, 0x7fff8000);
    assert.equal(cutMask(22) >>> 0, 0x7ffffe00);
    assert.equal(cutMask(31) >>> 0, 0x7fffffff);
  });

  it('accepts sensible parameters and rejects others with USAGE', () => {
    assert.equal(chunkerParamsProblem(SMALL), undefined);
    assert.equal(chunkerParamsProblem({ minSize: 256 << 10, avgSize: 1 << 20, maxSize: 4 << 20 }), undefined);
    const bad: unknown[] = [
      { minSize: 4096, avgSize: 10000, maxSize: 65536 }, // avg not a power of two
      { minSize: 32, avgSize: 256, maxSize: 1024 }, // min too small
      { minSize: 20000, avgSize: 16384, maxSize: 65536 }, // min > avg
      { minSize: 4096, avgSize: 16384, maxSize: 16384 }, // max = avg
      { minSize: 4096, avgSize: 16384, maxSize: 2 ** 31 }, // max too large
      { minSize: '4096', avgSize: 16384, maxSize: 65536 },
      { minSize: 4096.5, avgSize: 16384, maxSize: 65536 },
      null,
    ];
    for (const p of bad) {
      assert.notEqual(chunkerParamsProblem(p as ChunkerParams), undefined, JSON.stringify(p));
      assert.throws(() => new Chunker(p as ChunkerParams, GEAR), (e) => isCofferError(e, 'USAGE'), JSON.stringify(p));
    }
    assert.throws(() => new Chunker(SMALL, new Uint32Array(255)), (e) => isCofferError(e, 'USAGE'));
  });
});

describe('Chunker.cut()', () => {
  it('GOLDEN: cut offsets of a fixed buffer with the golden gear table are pinned', () => {
    const c = new Chunker(SMALL, GEAR);
    const buf = goldenBytes(256 * 1024);
    assert.deepEqual(allCuts(c.cut.bind(c), buf), [
      19980, 37863, 69112, 85766, 102724, 123582, 143361, 165343, 182906, 199746, 220349, 241596, 259427, 262144,
    ]);
  });

  it('agrees with the byte-at-a-time reference on random data, for odd and even parameters', () => {
    const sets: ChunkerParams[] = [
      SMALL,
      { minSize: 64, avgSize: 256, maxSize: 1024 },
      { minSize: 1001, avgSize: 4096, maxSize: 20001 },
      { minSize: 4095, avgSize: 8192, maxSize: 65537 },
    ];
    const data = randomBytes(11, 2 << 20);
    for (const p of sets) {
      const c = new Chunker(p, GEAR);
      const ref = (b: Uint8Array, s: number, e: number, eof: boolean) => referenceCut(p, GEAR, b, s, e, eof);
      assert.deepEqual(allCuts(c.cut.bind(c), data), allCuts(ref, data), JSON.stringify(p));
    }
  });

  it('covers every input exactly, with chunk sizes in bounds, for edge sizes and low-entropy data', () => {
    const p = SMALL;
    const c = new Chunker(p, GEAR);
    const sizes = [0, 1, p.minSize - 1, p.minSize, p.minSize + 1, p.avgSize, p.maxSize - 1, p.maxSize, p.maxSize + 1, 3 * p.maxSize + 7];
    const kinds: Record<string, (n: number) => Uint8Array> = {
      random: (n) => randomBytes(n + 1, n),
      zeros: (n) => new Uint8Array(n),
      text: (n) => textBytes(n + 2, n),
      pattern: (n) => Uint8Array.from({ length: n }, (_, i) => (i * 7) % 13),
    };
    for (const [kind, make] of Object.entries(kinds)) {
      for (const n of sizes) {
        const data = make(n);
        const cuts = allCuts(c.cut.bind(c), data);
        const ref = allCuts((b, s, e, eof) => referenceCut(p, GEAR, b, s, e, eof), data);
        assert.deepEqual(cuts, ref, `${kind} ${n}`);
        if (n === 0) {
          assert.deepEqual(cuts, [], 'an empty stream has no chunks');
          continue;
        }
        assert.equal(cuts.at(-1), n, `${kind} ${n}: the chunks cover the input`);
        let prev = 0;
        cuts.forEach((e, i) => {
          const len = e - prev;
          assert.ok(len > 0 && len <= p.maxSize, `${kind} ${n}: chunk ${i} has length ${len}`);
          if (i < cuts.length - 1) assert.ok(len >= p.minSize, `${kind} ${n}: chunk ${i} is short (${len})`);
          prev = e;
        });
      }
    }
  });

  it('decides a boundary as soon as the data reaches it, and asks for more before', () => {
    const c = new Chunker(SMALL, GEAR);
    const data = randomBytes(3, 1 << 20);
    let s = 0;
    for (const e of allCuts(c.cut.bind(c), data)) {
      if (e === data.length) break;
      assert.equal(c.cut(data, s, e, false), e, 'with the data ending at the boundary');
      assert.equal(c.cut(data, s, e - 1, false), -1, 'with one byte less');
      assert.equal(c.cut(data, s, e - 1, true), e - 1, 'at eof the rest is the last chunk');
      s = e;
    }
    assert.equal(c.cut(data, 5, 5, true), -1, 'nothing left at eof: no chunk');
    assert.equal(c.cut(data, 0, SMALL.minSize - 1, false), -1);
    assert.throws(() => c.cut(data, 0, data.length + 1, true), (e) => isCofferError(e, 'USAGE'));
    assert.throws(() => c.cut(data, -1, 10, true), (e) => isCofferError(e, 'USAGE'));
  });

  it('gives the same boundaries whatever buffer splits the caller uses', () => {
    const c = new Chunker(SMALL, GEAR);
    for (const [seed, data] of [[21, randomBytes(21, 1 << 20)], [22, textBytes(22, 1 << 20)]] as const) {
      const whole = allCuts(c.cut.bind(c), data);
      const r = rng(seed);
      const splits: Array<[string, () => number]> = [
        ['1 byte... then big', (() => { let first = true; return () => (first ? ((first = false), 1) : 300_000); })()],
        ['random up to 3*max', () => 1 + Math.floor(r() * 3 * SMALL.maxSize)],
        ['random small', () => 1 + Math.floor(r() * 5000)],
        ['exactly max', () => SMALL.maxSize],
        ['max - 1', () => SMALL.maxSize - 1],
        ['whole', () => data.length],
      ];
      for (const [name, size] of splits) assert.deepEqual(streamCuts(c, data, size), whole, `${seed}: ${name}`);
    }
  });

  it('realigns after an insertion or deletion: later boundaries only shift', () => {
    const c = new Chunker(SMALL, GEAR);
    const data = randomBytes(31, 2 << 20);
    const at = 5000;
    const inserted = Buffer.concat([data.subarray(0, at), Buffer.from([0xab]), data.subarray(at)]);
    const deleted = Buffer.concat([data.subarray(0, at), data.subarray(at + 1)]);
    const orig = allCuts(c.cut.bind(c), data);
    const far = at + 4 * SMALL.maxSize;
    const later = (cuts: number[], shift: number) => cuts.filter((e) => e > far).map((e) => e - shift);
    assert.deepEqual(later(allCuts(c.cut.bind(c), inserted), 1), later(orig, 0).filter((e) => e > far - 1));
    assert.deepEqual(later(allCuts(c.cut.bind(c), deleted), -1), later(orig, 0).filter((e) => e > far + 1));
    // And most of the early boundaries survive too: only the chunk holding the change differs.
    const common = allCuts(c.cut.bind(c), inserted).filter((e) => orig.includes(e - 1)).length;
    assert.ok(common >= orig.length - 3, `${common} of ${orig.length} boundaries kept`);
  });

  it('averages close to avgSize on 64 MiB of random data', () => {
    const data = randomBytes(41, 64 << 20);
    for (const p of [{ minSize: 16 << 10, avgSize: 64 << 10, maxSize: 256 << 10 }, { minSize: 256 << 10, avgSize: 1 << 20, maxSize: 4 << 20 }]) {
      const c = new Chunker(p, GEAR);
      const cuts = allCuts(c.cut.bind(c), data);
      const mean = data.length / cuts.length;
      assert.ok(Math.abs(mean - p.avgSize) <= 0.3 * p.avgSize, `mean ${mean.toFixed(0)} for avg ${p.avgSize}`);
      const forced = cuts.filter((e, i) => e - (i ? cuts[i - 1]! : 0) === p.maxSize).length;
      assert.ok(forced / cuts.length < 0.05, `${forced} of ${cuts.length} chunks cut at maxSize`);
    }
  });

  it('warmUpChunker() does not change any result', () => {
    const c = new Chunker(SMALL, GEAR);
    const data = randomBytes(51, 512 << 10);
    const before = allCuts(c.cut.bind(c), data);
    warmUpChunker(c);
    assert.deepEqual(allCuts(c.cut.bind(c), data), before);
  });
});

describe('fixedCut()', () => {
  it('cuts fixed sizes, a short last chunk at eof, and asks for more before', () => {
    assert.equal(fixedCut(0, 10, 4, false), 4);
    assert.equal(fixedCut(8, 10, 4, false), -1);
    assert.equal(fixedCut(8, 10, 4, true), 10);
    assert.equal(fixedCut(10, 10, 4, true), -1);
    assert.equal(fixedCut(4, 8, 4, false), 8);
    assert.throws(() => fixedCut(0, 10, 0, true), (e) => isCofferError(e, 'USAGE'));
  });
});
