import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CofferError, isCofferError } from '../../core/errors.ts';
import { decodeIndexFile, encodeIndexFile, MAX_U32, type IndexEntry, type IndexFileContent, type IndexPack } from './index-file.ts';
import { rng } from '../../testing/random.ts';


function bytes(r: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

function randomContent(seed: number, packs: number, perPack: number, supersedes = 2): IndexFileContent {
  const r = rng(seed);
  const out: IndexFileContent = { supersedes: Array.from({ length: supersedes }, () => bytes(r, 32)), packs: [] };
  for (let p = 0; p < packs; p++) {
    const entries: IndexEntry[] = [];
    let offset = 0;
    for (let e = 0; e < perPack; e++) {
      const length = 1 + Math.floor(r() * 100_000);
      entries.push({ type: r() < 0.2 ? 'tree' : 'data', id: bytes(r, 32), offset, length, rawLength: Math.floor(r() * 4 * length), compressed: r() < 0.5, nonceIndex: e });
      offset += length;
    }
    out.packs.push({ packId: bytes(r, 32), packSize: offset + Math.floor(r() * 100), entries });
  }
  return out;
}

function assertCorrupt(data: Uint8Array, what: string): void {
  assert.throws(() => decodeIndexFile(data), (e: unknown) => isCofferError(e, 'CORRUPT'), what);
}

test('encodeIndexFile() and decodeIndexFile() round-trip random content', () => {
  for (const seed of [1, 2, 3]) {
    const c = randomContent(seed, 1 + seed * 3, 50 + seed * 20);
    assert.deepEqual(decodeIndexFile(encodeIndexFile(c)), c);
  }
});

test('an empty index file, empty packs and extreme numbers round-trip', () => {
  const r = rng(9);
  const empty: IndexFileContent = { supersedes: [], packs: [] };
  assert.deepEqual(decodeIndexFile(encodeIndexFile(empty)), empty);
  const edge: IndexFileContent = {
    supersedes: [],
    packs: [
      { packId: bytes(r, 32), packSize: 0, entries: [] },
      {
        packId: bytes(r, 32),
        packSize: MAX_U32,
        entries: [
          { type: 'data', id: bytes(r, 32), offset: 0, length: MAX_U32, rawLength: MAX_U32, compressed: false, nonceIndex: MAX_U32 },
          { type: 'tree', id: bytes(r, 32), offset: MAX_U32, length: 0, rawLength: 0, compressed: true, nonceIndex: 0 },
        ],
      },
    ],
  };
  assert.deepEqual(decodeIndexFile(encodeIndexFile(edge)), edge);
});

test('the same blob id may appear once as data and once as a tree in one pack', () => {
  const id = Buffer.alloc(32, 7);
  const c: IndexFileContent = {
    supersedes: [],
    packs: [{ packId: Buffer.alloc(32, 1), packSize: 20, entries: [
      { type: 'data', id, offset: 0, length: 10, rawLength: 10, compressed: false, nonceIndex: 0 },
      { type: 'tree', id, offset: 10, length: 10, rawLength: 10, compressed: false, nonceIndex: 1 },
    ] }],
  };
  assert.deepEqual(decodeIndexFile(encodeIndexFile(c)), c);
});

test('the format is frozen: a known content encodes to known bytes', () => {
  const c: IndexFileContent = {
    supersedes: [Buffer.alloc(32, 0xaa)],
    packs: [{ packId: Buffer.alloc(32, 0xbb), packSize: 300, entries: [
      { type: 'tree', id: Buffer.alloc(32, 0xcc), offset: 1, length: 200, rawLength: 128, compressed: true, nonceIndex: 5 },
    ] }],
  };
  const expected = '4346495801' + '01' + 'aa'.repeat(32) + '01' + 'bb'.repeat(32) + 'ac02' + '01' + '03' + 'cc'.repeat(32) + '01' + 'c801' + '8001' + '05';
  assert.equal(encodeIndexFile(c).toString('hex'), expected);
  assert.deepEqual(decodeIndexFile(Buffer.from(expected, 'hex')), c);
});

test('decodeIndexFile() keeps no reference to the caller\'s buffer', () => {
  const data = encodeIndexFile(randomContent(4, 1, 3));
  const c = decodeIndexFile(data);
  const before = c.packs[0]!.entries[0]!.id.toString('hex');
  data.fill(0);
  assert.equal(c.packs[0]!.entries[0]!.id.toString('hex'), before);
});

test('every truncation of an index file is CORRUPT', () => {
  const data = encodeIndexFile(randomContent(5, 3, 4));
  for (let n = 0; n < data.length; n++) assertCorrupt(data.subarray(0, n), `truncated to ${n}`);
});

test('every single-byte change is rejected or decodes to content that encodes back to exactly those bytes', () => {
  // The format has one encoding per content (minimal varints, no padding, no trailing bytes), so
  // anything the decoder accepts must re-encode identically.
  const data = encodeIndexFile(randomContent(6, 2, 3));
  let accepted = 0;
  for (let i = 0; i < data.length; i++) {
    for (const change of [(b: number) => b ^ 0xff, (b: number) => (b + 1) & 0xff, (b: number) => b ^ 0x80, () => 0]) {
      const m = Buffer.from(data);
      m[i] = change(m[i]!);
      if (m.equals(data)) continue;
      let c: IndexFileContent;
      try {
        c = decodeIndexFile(m);
      } catch (e) {
        assert.ok(isCofferError(e, 'CORRUPT') || isCofferError(e, 'UNSUPPORTED'), `byte ${i}: ${String(e)}`);
        continue;
      }
      accepted++;
      assert.ok(encodeIndexFile(c).equals(m), `byte ${i}: accepted bytes must re-encode identically`);
    }
  }
  // Ids and most number bytes are free: many changes are valid content.
  assert.ok(accepted > data.length);
});

test('random garbage never crashes the decoder', () => {
  const r = rng(7);
  const header = Buffer.from('CFIX\x01', 'latin1');
  for (let i = 0; i < 3000; i++) {
    const body = bytes(r, Math.floor(r() * 200));
    const data = i % 2 ? Buffer.concat([header, body]) : body;
    try {
      decodeIndexFile(data);
    } catch (e) {
      assert.ok(e instanceof CofferError && (e.code === 'CORRUPT' || e.code === 'UNSUPPORTED'), String(e));
    }
  }
});

test('absurd counts are rejected before anything is allocated for them', () => {
  const max = 'ffffffff0f'; // 2^32 - 1
  for (const hex of [
    '4346495801' + max, // supersedes count
    '434649580100' + max, // pack count
    '43464958010001' + '00'.repeat(32) + '00' + max, // entry count
  ]) {
    const t = performance.now();
    assertCorrupt(Buffer.from(hex, 'hex'), hex);
    assert.ok(performance.now() - t < 100, 'rejection must be immediate');
  }
});

test('structurally invalid index files are CORRUPT, unknown versions UNSUPPORTED', () => {
  const id = (b: number) => Buffer.alloc(32, b).toString('hex');
  const head = '4346495801';
  const entry = (flags: string, idByte: number, rest: string) => flags + id(idByte) + rest;
  const pack = (idByte: number, size: string, entries: string[]) => id(idByte) + size + entries.length.toString(16).padStart(2, '0') + entries.join('');
  const file = (supersedes: number[], packs: string[]) => head + supersedes.length.toString(16).padStart(2, '0') + supersedes.map(id).join('') + packs.length.toString(16).padStart(2, '0') + packs.join('');
  const ok = file([1], [pack(2, '64', [entry('00', 3, '00' + '0a' + '0a' + '00')])]);
  assert.doesNotThrow(() => decodeIndexFile(Buffer.from(ok, 'hex')));
  const cases: Array<[string, string]> = [
    ['bad magic', 'XFIX01' + ok.slice(10)],
    ['trailing garbage', ok + '00'],
    ['blob past the end of its pack', file([], [pack(2, '0a', [entry('00', 3, '05' + '06' + '0a' + '00')])])],
    ['duplicate pack', file([], [pack(2, '64', []), pack(2, '64', [])])],
    ['duplicate blob in a pack', file([], [pack(2, '64', [entry('00', 3, '00010100'), entry('00', 3, '01010100')])])],
    ['duplicate superseded id', file([1, 1], [])],
    ['unknown blob flags', file([], [pack(2, '64', [entry('04', 3, '00010100')])])],
    ['non-minimal number', file([], [pack(2, 'e400', [])])],
    ['number above 2^32-1', file([], [pack(2, 'ffffffff1f', [])])],
    ['number longer than 5 bytes', file([], [pack(2, '808080808001', [])])],
  ];
  for (const [what, hex] of cases) assertCorrupt(Buffer.from(hex, 'hex'), what);
  assert.throws(() => decodeIndexFile(Buffer.from('4346495802' + ok.slice(10), 'hex')), (e: unknown) => isCofferError(e, 'UNSUPPORTED'));
});

test('encodeIndexFile() refuses content the decoder would reject', () => {
  const good = (): IndexPack => ({ packId: Buffer.alloc(32, 1), packSize: 100, entries: [{ type: 'data', id: Buffer.alloc(32, 2), offset: 0, length: 10, rawLength: 10, compressed: false, nonceIndex: 0 }] });
  const bad: Array<[string, IndexFileContent]> = [
    ['short pack id', { supersedes: [], packs: [{ ...good(), packId: Buffer.alloc(31) }] }],
    ['short blob id', { supersedes: [], packs: [{ ...good(), entries: [{ ...good().entries[0]!, id: Buffer.alloc(5) }] }] }],
    ['blob past the end', { supersedes: [], packs: [{ ...good(), packSize: 5 }] }],
    ['fractional offset', { supersedes: [], packs: [{ ...good(), entries: [{ ...good().entries[0]!, offset: 0.5 }] }] }],
    ['negative length', { supersedes: [], packs: [{ ...good(), entries: [{ ...good().entries[0]!, length: -1 }] }] }],
    ['size above 2^32-1', { supersedes: [], packs: [{ ...good(), packSize: 2 ** 32 }] }],
    ['duplicate pack', { supersedes: [], packs: [good(), good()] }],
    ['duplicate blob', { supersedes: [], packs: [{ ...good(), entries: [good().entries[0]!, { ...good().entries[0]!, offset: 20 }] }] }],
    ['duplicate superseded id', { supersedes: [Buffer.alloc(32), Buffer.alloc(32)], packs: [] }],
    ['unknown type', { supersedes: [], packs: [{ ...good(), entries: [{ ...good().entries[0]!, type: 'blob' as 'data' }] }] }],
  ];
  for (const [what, c] of bad) assert.throws(() => encodeIndexFile(c), (e: unknown) => isCofferError(e, 'INTERNAL'), what);
});
