import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { closeSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CofferError, isCofferError } from '../../core/errors.ts';
import { ChunkIndex, type ChunkIndexOptions } from './chunk-index.ts';
import { decodeIndexFile, encodeIndexFile, type BlobType, type IndexEntry, type IndexFileContent, type IndexPack } from './index-file.ts';
import { rng } from '../../testing/random.ts';

// ---- helpers ------------------------------------------------------------------------------


function bytes(r: () => number, n = 32): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

async function tempDir(t: { after(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'coffer-index-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A pack of `n` blobs; `reuse` ids come from earlier packs (the same blob stored twice). */
function makePack(r: () => number, n: number, reuse: Buffer[] = []): IndexPack {
  const entries: IndexEntry[] = [];
  let offset = 0;
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const id = reuse.length && r() < 0.3 ? reuse[Math.floor(r() * reuse.length)]! : bytes(r);
    const type: BlobType = r() < 0.15 ? 'tree' : 'data';
    if (seen.has(type + id.toString('hex'))) continue;
    seen.add(type + id.toString('hex'));
    const length = 1 + Math.floor(r() * 5000);
    entries.push({ type, id, offset, length, rawLength: length * 2, compressed: r() < 0.5, nonceIndex: i });
    offset += length;
  }
  return { packId: bytes(r), packSize: offset + 16, entries };
}

/**
 * A repository's index files as a backend would hold them (encoded bytes), and the reference
 * answer computed with plain Maps.
 */
class FakeRepo {
  readonly files = new Map<string, Buffer>();
  loads: string[] = [];

  write(content: IndexFileContent, r: () => number): string {
    const id = bytes(r).toString('hex');
    this.files.set(id, encodeIndexFile(content));
    return id;
  }

  list(): Buffer[] {
    return [...this.files.keys()].sort().map((h) => Buffer.from(h, 'hex'));
  }

  readonly load = async (id: Buffer): Promise<IndexFileContent> => {
    const h = id.toString('hex');
    this.loads.push(h);
    const data = this.files.get(h);
    if (!data) throw new CofferError('NOT_FOUND', `index file ${h} does not exist`);
    return decodeIndexFile(data);
  };

  /** Files in force: listed and not superseded by a listed file. */
  active(): IndexFileContent[] {
    const all = [...this.files.values()].map((d) => decodeIndexFile(d));
    const superseded = new Set(all.flatMap((c) => c.supersedes.map((s) => s.toString('hex'))));
    return [...this.files.entries()].filter(([h]) => !superseded.has(h)).map(([, d]) => decodeIndexFile(d));
  }
}

interface Loc {
  packId: string;
  packSize: number;
  entry: IndexEntry;
}

/** Expected locations by id hex; packs by id hex. */
function reference(repo: FakeRepo, session: IndexPack[] = []): { locs: Map<string, Loc[]>; packs: Map<string, number>; count: number } {
  const locs = new Map<string, Loc[]>();
  const packs = new Map<string, number>();
  let count = 0;
  const addPack = (p: IndexPack) => {
    const ph = p.packId.toString('hex');
    if (!packs.has(ph)) packs.set(ph, p.packSize);
    for (const e of p.entries) {
      const h = e.id.toString('hex');
      let l = locs.get(h);
      if (!l) locs.set(h, (l = []));
      if (l.some((x) => x.packId === ph && x.entry.type === e.type)) continue;
      l.push({ packId: ph, packSize: p.packSize, entry: e });
      count++;
    }
  };
  for (const c of repo.active()) for (const p of c.packs) addPack(p);
  for (const p of session) addPack(p);
  for (const l of locs.values()) l.sort((a, b) => (a.entry.type === b.entry.type ? (a.packId < b.packId ? -1 : 1) : a.entry.type === 'data' ? -1 : 1));
  return { locs, packs, count };
}

function sameEntry(actual: IndexEntry, expected: IndexEntry, what: string): void {
  assert.deepEqual({ ...actual, id: actual.id.toString('hex') }, { ...expected, id: Buffer.from(expected.id).toString('hex') }, what);
}

/** Checks every way of reading the index against the reference. */
function assertMatches(index: ChunkIndex, repo: FakeRepo, session: IndexPack[] = [], r: () => number = rng(99)): void {
  const ref = reference(repo, session);
  assert.equal(index.count, ref.count, 'count');
  // entries(): every location once, in (id, type, pack id) order.
  const expected = [...ref.locs.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).flatMap(([, l]) => l);
  let i = 0;
  for (const { packId, entry } of index.entries()) {
    const x = expected[i++];
    assert.ok(x, 'entries() yields more than expected');
    assert.equal(packId.toString('hex'), x.packId, `entries()[${i - 1}] pack`);
    sameEntry(entry, x.entry, `entries()[${i - 1}]`);
  }
  assert.equal(i, expected.length, 'entries() length');
  // Lookups.
  for (const [h, l] of ref.locs) {
    const id = Buffer.from(h, 'hex');
    const all = index.lookupAll(id);
    assert.deepEqual(all.map((x) => [x.packId.toString('hex'), x.packSize, x.entry.type]), l.map((x) => [x.packId, x.packSize, x.entry.type]), `lookupAll ${h}`);
    for (const type of ['data', 'tree'] as const) {
      const want = l.filter((x) => x.entry.type === type);
      const hit = index.lookup(id, type);
      assert.equal(index.has(id, type), want.length > 0, `has ${type} ${h}`);
      if (!want.length) {
        assert.equal(hit, undefined);
        continue;
      }
      assert.ok(hit, `lookup ${type} ${h}`);
      assert.equal(hit.packId.toString('hex'), want[0]!.packId);
      assert.equal(hit.packSize, want[0]!.packSize);
      sameEntry(hit.entry, want[0]!.entry, `lookup ${h}`);
      // `prefer` picks the first acceptable location.
      const last = want[want.length - 1]!.packId;
      assert.equal(index.lookup(id, type, { prefer: (p) => p.toString('hex') === last })!.packId.toString('hex'), last);
    }
  }
  for (let k = 0; k < 50; k++) {
    const id = bytes(r);
    assert.equal(index.has(id), false);
    assert.equal(index.lookup(id), undefined);
  }
  // packs(): once each.
  const packs = [...index.packs()].map((p) => [p.packId.toString('hex'), p.packSize] as const).sort();
  assert.deepEqual(packs, [...ref.packs.entries()].sort());
}

const SMALL: Omit<ChunkIndexOptions, 'cacheDir'> = { pageRecords: 4, pageCacheBytes: 2048, overlayLimit: 40, sortRunEntries: 16 };

function tmpLeftovers(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.endsWith('.tmp'));
}

// ---- tests --------------------------------------------------------------------------------

test('sync() builds the index from index files and finds every blob', async (t) => {
  const dir = await tempDir(t);
  const r = rng(1);
  const repo = new FakeRepo();
  for (let f = 0; f < 6; f++) repo.write({ supersedes: [], packs: [makePack(r, 30), makePack(r, 25), { packId: bytes(r), packSize: 0, entries: [] }] }, r);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  let progress = 0;
  await index.sync(repo.list(), repo.load, { onProgress: (done, total) => {
    progress = done;
    assert.ok(done <= total);
  } });
  assert.equal(progress, 6);
  assertMatches(index, repo);
  assert.equal(index.stats().merges, 1, 'more entries than overlayLimit: written to a cache file');
  assert.deepEqual(tmpLeftovers(dir), []);
  await index.close();
});

test('a reopened index answers from its cache file without reading index files again', async (t) => {
  const dir = await tempDir(t);
  const r = rng(2);
  const repo = new FakeRepo();
  for (let f = 0; f < 4; f++) repo.write({ supersedes: [], packs: [makePack(r, 40)] }, r);
  let index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  await index.sync(repo.list(), repo.load);
  await index.close();
  repo.loads = [];
  index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  assert.equal(index.stats().baseRecords, index.count);
  await index.sync(repo.list(), repo.load);
  assert.deepEqual(repo.loads, []);
  assertMatches(index, repo);
  // A new index file from another writer: only that one is read.
  const id = repo.write({ supersedes: [], packs: [makePack(r, 5)] }, r);
  await index.sync(repo.list(), repo.load);
  assert.deepEqual(repo.loads, [id]);
  assertMatches(index, repo);
  await index.close();
});

test('a few new index files go to the overlay and a delta file, kept across reopen', async (t) => {
  const dir = await tempDir(t);
  const r = rng(3);
  const repo = new FakeRepo();
  repo.write({ supersedes: [], packs: [makePack(r, 60)] }, r);
  let index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 50 });
  await index.sync(repo.list(), repo.load);
  assert.equal(index.stats().merges, 1);
  // (More entries than sortRunEntries: they are read back from sorted runs into the overlay.)
  repo.write({ supersedes: [], packs: [makePack(r, 10), { packId: bytes(r), packSize: 7, entries: [] }] }, r);
  repo.write({ supersedes: [], packs: [makePack(r, 10)] }, r);
  await index.sync(repo.list(), repo.load);
  assert.equal(index.stats().merges, 1, 'no new cache file for a few entries');
  assert.equal(index.stats().deltaWrites, 1);
  assert.ok(index.stats().overlayRecords > 0);
  assertMatches(index, repo);
  await index.close();
  repo.loads = [];
  index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 50 });
  await index.sync(repo.list(), repo.load);
  assert.deepEqual(repo.loads, [], 'the delta file holds what the cache file does not');
  assertMatches(index, repo);
  await index.close();
});

test('add() makes blobs visible at once, and their index file does not count them twice', async (t) => {
  const dir = await tempDir(t);
  const r = rng(4);
  const repo = new FakeRepo();
  repo.write({ supersedes: [], packs: [makePack(r, 30)] }, r);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 1000 });
  await index.sync(repo.list(), repo.load);
  const p1 = makePack(r, 20);
  const p2 = makePack(r, 20);
  index.add(p1.packId, p1.packSize, p1.entries);
  index.add(p2.packId, p2.packSize, p2.entries);
  index.add(p2.packId, p2.packSize, p2.entries); // adding twice changes nothing
  assertMatches(index, repo, [p1, p2]);
  // The writer saves the index file for p1; the next sync confirms those entries.
  repo.write({ supersedes: [], packs: [p1] }, r);
  await index.sync(repo.list(), repo.load);
  assertMatches(index, repo, [p2]);
  await index.close();
});

test('the overlay is merged into a new cache file when it passes overlayLimit', async (t) => {
  const dir = await tempDir(t);
  const r = rng(5);
  const repo = new FakeRepo();
  repo.write({ supersedes: [], packs: [makePack(r, 30)] }, r);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 25 });
  await index.sync(repo.list(), repo.load);
  const session: IndexPack[] = [];
  for (let k = 0; k < 8; k++) {
    const p = makePack(r, 12, session.flatMap((s) => s.entries.map((e) => e.id)));
    index.add(p.packId, p.packSize, p.entries);
    session.push(p);
    assertMatches(index, repo, session);
    assert.ok(index.stats().overlayRecords < 25 + 12);
  }
  assert.ok(index.stats().merges >= 3, `merges: ${index.stats().merges}`);
  // Confirm half of them with an index file: session records in the cache file are replaced.
  repo.write({ supersedes: [], packs: session.slice(0, 4) }, r);
  await index.sync(repo.list(), repo.load);
  assertMatches(index, repo, session.slice(4));
  await index.close();
});

test('blobs added by a process that then died are not trusted by the next one', async (t) => {
  const dir = await tempDir(t);
  const r = rng(6);
  const repo = new FakeRepo();
  repo.write({ supersedes: [], packs: [makePack(r, 30)] }, r);
  let index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 20 });
  await index.sync(repo.list(), repo.load);
  const lost = makePack(r, 50);
  index.add(lost.packId, lost.packSize, lost.entries); // merged into the cache file as session records
  assert.ok(index.stats().baseRecords > 30);
  assertMatches(index, repo, [lost]);
  await index.close(); // no index file was ever written for `lost`

  index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 20 });
  assertMatches(index, repo);
  await index.sync(repo.list(), repo.load);
  assertMatches(index, repo);
  // The next rewrite drops them for good.
  const p = makePack(r, 25);
  index.add(p.packId, p.packSize, p.entries);
  assert.equal(index.stats().baseRecords, 30 + 25);
  assertMatches(index, repo, [p]);
  await index.close();
});

test('an index file that vanished (prune) is dropped: the cache file is rebuilt', async (t) => {
  const dir = await tempDir(t);
  const r = rng(7);
  const repo = new FakeRepo();
  const ids = [0, 1, 2, 3].map(() => repo.write({ supersedes: [], packs: [makePack(r, 20)] }, r));
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  await index.sync(repo.list(), repo.load);
  const session = makePack(r, 5);
  index.add(session.packId, session.packSize, session.entries);
  repo.files.delete(ids[1]!);
  repo.loads = [];
  await index.sync(repo.list(), repo.load);
  assert.equal(index.stats().rebuilds, 1);
  assert.deepEqual(repo.loads.sort(), [ids[0], ids[2], ids[3]].sort());
  assertMatches(index, repo, [session], r);
  await index.close();
});

test('a pack this process added, confirmed by an index file and then dropped by a prune, is gone after the rebuild', async (t) => {
  const dir = await tempDir(t);
  const r = rng(8);
  const repo = new FakeRepo();
  repo.write({ supersedes: [], packs: [makePack(r, 10)] }, r);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  await index.sync(repo.list(), repo.load);
  // Two packs written by this process, both confirmed by its index file...
  const gone = makePack(r, 5);
  const kept = makePack(r, 5);
  for (const p of [gone, kept]) index.add(p.packId, p.packSize, p.entries);
  const mine = repo.write({ supersedes: [], packs: [gone, kept] }, r);
  await index.sync(repo.list(), repo.load);
  // ...then a prune writes an index without `gone` that supersedes every file.
  const all = repo.list();
  const old = [...repo.files.keys()];
  repo.write({ supersedes: all, packs: [...repo.files.values()].flatMap((b) => decodeIndexFile(b).packs).filter((p) => !p.packId.equals(gone.packId)) }, r);
  for (const f of old) repo.files.delete(f);
  assert.ok(!repo.files.has(mine));
  await index.sync(repo.list(), repo.load);
  assert.ok(![...index.packs()].some((p) => p.packId.equals(gone.packId)), 'the dropped pack is not listed as one of this session');
  assertMatches(index, repo, [], r);
  await index.close();
});

test('superseded index files are ignored while still listed, and not read once that is known', async (t) => {
  const dir = await tempDir(t);
  const r = rng(8);
  const repo = new FakeRepo();
  const a = { supersedes: [], packs: [makePack(r, 20), makePack(r, 20)] };
  const b = { supersedes: [], packs: [makePack(r, 20)] };
  const ida = repo.write(a, r);
  const idb = repo.write(b, r);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  await index.sync(repo.list(), repo.load);
  // Prune: a consolidated file without one pack, superseding both; it crashes before deleting them.
  const idc = repo.write({ supersedes: [ida, idb].map((h) => Buffer.from(h, 'hex')), packs: [a.packs[0]!, b.packs[0]!] }, r);
  repo.loads = [];
  await index.sync(repo.list(), repo.load);
  assert.deepEqual(repo.loads, [idc], 'the superseded files are not read again');
  assertMatches(index, repo);
  // A fresh index that reads the consolidated file first never reads the superseded ones.
  const dir2 = await tempDir(t);
  const fresh = await ChunkIndex.open({ cacheDir: dir2, ...SMALL });
  repo.loads = [];
  await fresh.sync([Buffer.from(idc, 'hex'), Buffer.from(ida, 'hex'), Buffer.from(idb, 'hex')], repo.load);
  assert.deepEqual(repo.loads, [idc]);
  assertMatches(fresh, repo);
  // In the other order, they are read and then dropped.
  const dir3 = await tempDir(t);
  const other = await ChunkIndex.open({ cacheDir: dir3, ...SMALL, overlayLimit: 1000 });
  await other.sync([Buffer.from(ida, 'hex'), Buffer.from(idc, 'hex'), Buffer.from(idb, 'hex')], repo.load);
  assertMatches(other, repo);
  await Promise.all([index.close(), fresh.close(), other.close()]);
});

test('every location of a blob stored in several packs is kept; lookup() picks by preference, else lowest pack id', async (t) => {
  const dir = await tempDir(t);
  const r = rng(9);
  const repo = new FakeRepo();
  const shared = [bytes(r), bytes(r), bytes(r)];
  const entry = (id: Buffer, offset: number): IndexEntry => ({ type: 'data', id, offset, length: 10, rawLength: 10, compressed: false, nonceIndex: offset });
  const packIds = [bytes(r), bytes(r), bytes(r)].sort(Buffer.compare);
  // Two concurrent writers stored the same blobs; a third pack holds one of them too.
  repo.write({ supersedes: [], packs: [{ packId: packIds[2]!, packSize: 100, entries: shared.map((id, i) => entry(id, i * 10)) }] }, r);
  repo.write({ supersedes: [], packs: [{ packId: packIds[0]!, packSize: 100, entries: shared.map((id, i) => entry(id, 50 - i * 10)) }] }, r);
  repo.write({ supersedes: [], packs: [{ packId: packIds[1]!, packSize: 100, entries: [entry(shared[0]!, 70)] }] }, r);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  await index.sync(repo.list(), repo.load);
  assert.equal(index.count, 7);
  assert.deepEqual(index.lookupAll(shared[0]!).map((h) => h.packId), packIds);
  assert.deepEqual(index.lookup(shared[0]!)!.packId, packIds[0]);
  const notFirst = (p: Buffer) => !p.equals(packIds[0]!);
  assert.deepEqual(index.lookup(shared[0]!, 'data', { prefer: notFirst })!.packId, packIds[1]);
  assert.deepEqual(index.lookup(shared[1]!, 'data', { prefer: notFirst })!.packId, packIds[2]);
  assert.deepEqual(index.lookup(shared[1]!, 'data', { prefer: () => false })!.packId, packIds[0], 'nothing preferred: the first');
  assert.equal(index.lookup(shared[0]!, 'tree'), undefined);
  assertMatches(index, repo);
  await index.close();
});

test('building with a tiny sortRunEntries (many runs, merged in several passes) gives the same index', async (t) => {
  const r = rng(10);
  const repo = new FakeRepo();
  const reuse: Buffer[] = [];
  for (let f = 0; f < 12; f++) {
    const p = makePack(r, 80, reuse);
    reuse.push(...p.entries.slice(0, 5).map((e) => e.id));
    repo.write({ supersedes: [], packs: [p, makePack(r, 40, reuse)] }, r);
  }
  const results: string[] = [];
  for (const sortRunEntries of [2, 3, 7, 64, 100_000]) {
    const dir = await tempDir(t);
    const index = await ChunkIndex.open({ cacheDir: dir, pageRecords: 16, sortRunEntries, overlayLimit: 10 });
    await index.sync(repo.list(), repo.load);
    assertMatches(index, repo);
    assert.deepEqual(tmpLeftovers(dir), []);
    results.push(readFileSync(join(dir, 'chunks.cfx')).subarray(128).toString('hex'));
    await index.close();
  }
  // The cache file's content (all but the header, which holds a random generation) is identical.
  assert.ok(results.every((x) => x === results[0]));
});

test('a damaged cache file is discarded and rebuilt, never trusted', async (t) => {
  const r = rng(11);
  const repo = new FakeRepo();
  for (let f = 0; f < 3; f++) repo.write({ supersedes: [], packs: [makePack(r, 40)] }, r);
  const damages: Array<[string, (path: string) => void]> = [
    ['a flipped record byte', (p) => flip(p, 128 + 4 * 53 + 7)],
    ['a flipped page checksum', (p) => flip(p, 128 + 4 * 53 + 1)],
    ['a flipped header byte', (p) => flip(p, 20)],
    ['a flipped pack table byte', (p) => flip(p, statSync(p).size - 5)],
    ['a truncated file', (p) => writeFileSync(p, readFileSync(p).subarray(0, statSync(p).size - 40))],
    ['an empty file', (p) => writeFileSync(p, '')],
    ['garbage', (p) => writeFileSync(p, bytes(r, 5000))],
  ];
  for (const [what, damage] of damages) {
    const dir = await tempDir(t);
    let index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
    await index.sync(repo.list(), repo.load);
    await index.close();
    damage(join(dir, 'chunks.cfx'));
    index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
    assert.equal(index.stats().discarded, 1, what);
    assert.equal(index.count, 0, what);
    repo.loads = [];
    await index.sync(repo.list(), repo.load);
    assert.equal(repo.loads.length, 3, `${what}: every index file is read again`);
    assertMatches(index, repo);
    await index.close();
  }
});

function flip(path: string, at: number): void {
  const b = readFileSync(path);
  b[at] = b[at]! ^ 0x40;
  writeFileSync(path, b);
}

test('a damaged delta file is discarded; its index files are read again', async (t) => {
  const dir = await tempDir(t);
  const r = rng(12);
  const repo = new FakeRepo();
  repo.write({ supersedes: [], packs: [makePack(r, 60)] }, r);
  let index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 50 });
  await index.sync(repo.list(), repo.load);
  const id = repo.write({ supersedes: [], packs: [makePack(r, 10)] }, r);
  await index.sync(repo.list(), repo.load);
  await index.close();
  flip(join(dir, 'chunks-delta.cfx'), 128 + 10);
  index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 50 });
  assert.equal(index.stats().discarded, 1);
  repo.loads = [];
  await index.sync(repo.list(), repo.load);
  assert.deepEqual(repo.loads, [id]);
  assertMatches(index, repo);
  await index.close();
});

test('a page damaged after opening makes lookups refuse until sync() rebuilds the index', async (t) => {
  const dir = await tempDir(t);
  const r = rng(13);
  const repo = new FakeRepo();
  const pack = makePack(r, 200);
  repo.write({ supersedes: [], packs: [pack] }, r);
  let index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  await index.sync(repo.list(), repo.load);
  await index.close();
  index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  // Damage every record byte in place (same file, as a failing disk would).
  const path = join(dir, 'chunks.cfx');
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.alloc(53 * 4, 0xee), 0, 53 * 4, 128 + 10 * (4 * 53 + 4));
  closeSync(fd);
  let refused = 0;
  for (const e of pack.entries) {
    try {
      index.lookup(e.id, e.type);
    } catch (err) {
      assert.ok(isCofferError(err, 'CORRUPT'), String(err));
      refused++;
    }
  }
  assert.ok(refused > 0);
  assert.throws(() => index.has(pack.entries[0]!.id), (e: unknown) => isCofferError(e, 'CORRUPT'), 'refuses every lookup after that');
  await index.sync(repo.list(), repo.load);
  assertMatches(index, repo);
  await index.close();
});

test('sync() leaves the index as it was when loading fails or is cancelled', async (t) => {
  const dir = await tempDir(t);
  const r = rng(14);
  const repo = new FakeRepo();
  for (let f = 0; f < 3; f++) repo.write({ supersedes: [], packs: [makePack(r, 30)] }, r);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL, sortRunEntries: 8 });
  await index.sync(repo.list(), repo.load);
  const before = repo.list();
  // A file deleted between the listing and its download (a concurrent prune).
  repo.write({ supersedes: [], packs: [makePack(r, 30)] }, r);
  const listed = repo.list();
  const gone = repo.write({ supersedes: [], packs: [makePack(r, 30)] }, r);
  const withGone = [...listed, Buffer.from(gone, 'hex')];
  repo.files.delete(gone);
  await assert.rejects(index.sync(withGone, repo.load), (e: unknown) => isCofferError(e, 'NOT_FOUND'));
  const stale = new FakeRepo();
  for (const id of before) stale.files.set(id.toString('hex'), repo.files.get(id.toString('hex'))!);
  assertMatches(index, stale);
  // Invalid content from the loader.
  const bad = async () => ({ supersedes: [], packs: [{ packId: Buffer.alloc(32), packSize: 1, entries: [{ type: 'data' as const, id: Buffer.alloc(32), offset: 0, length: 2, rawLength: 2, compressed: false, nonceIndex: 0 }] }] });
  await assert.rejects(index.sync(listed, bad), (e: unknown) => isCofferError(e, 'CORRUPT'));
  assertMatches(index, stale);
  // Cancellation.
  const ac = new AbortController();
  await assert.rejects(index.sync(repo.list(), async (id) => {
    ac.abort();
    return repo.load(id);
  }, { signal: ac.signal }), (e: unknown) => isCofferError(e, 'CANCELLED'));
  assertMatches(index, stale);
  assert.deepEqual(tmpLeftovers(dir), []);
  await index.sync(repo.list(), repo.load);
  assertMatches(index, repo);
  await index.close();
});

test('entries() and packs() refuse to go on if the index changes under them', async (t) => {
  const dir = await tempDir(t);
  const r = rng(15);
  const index = await ChunkIndex.open({ cacheDir: dir, ...SMALL });
  const p = makePack(r, 10);
  index.add(p.packId, p.packSize, p.entries);
  const it = index.entries();
  it.next();
  const q = makePack(r, 3);
  index.add(q.packId, q.packSize, q.entries);
  assert.throws(() => it.next(), (e: unknown) => isCofferError(e, 'CONFLICT'));
  await index.close();
});

test('invalid arguments are refused', async (t) => {
  const dir = await tempDir(t);
  const index = await ChunkIndex.open({ cacheDir: dir });
  assert.throws(() => index.lookup(Buffer.alloc(31)), (e: unknown) => isCofferError(e, 'INTERNAL'));
  assert.throws(() => index.add(Buffer.alloc(32), 5, [{ type: 'data', id: Buffer.alloc(32), offset: 4, length: 2, rawLength: 2, compressed: false, nonceIndex: 0 }]), (e: unknown) => isCofferError(e, 'INTERNAL'));
  assert.equal(index.count, 0);
  await assert.rejects(ChunkIndex.open({ cacheDir: dir, overlayLimit: 0 }), (e: unknown) => isCofferError(e, 'USAGE'));
  await index.close();
  assert.throws(() => index.has(Buffer.alloc(32)), (e: unknown) => isCofferError(e, 'INTERNAL'));
});

test('processes sharing a cache directory never trust each other\'s stale files', async (t) => {
  const dir = await tempDir(t);
  const r = rng(16);
  const repo = new FakeRepo();
  repo.write({ supersedes: [], packs: [makePack(r, 60)] }, r);
  const a = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 50 });
  const b = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 50 });
  await a.sync(repo.list(), repo.load); // writes the cache file
  repo.write({ supersedes: [], packs: [makePack(r, 10)] }, r);
  await a.sync(repo.list(), repo.load); // a delta for a's cache file
  await b.sync(repo.list(), repo.load); // b writes its own cache file over a's; a's delta no longer fits
  repo.write({ supersedes: [], packs: [makePack(r, 10)] }, r);
  await a.sync(repo.list(), repo.load); // a writes a delta for its (replaced) cache file
  await b.sync(repo.list(), repo.load);
  assertMatches(a, repo);
  assertMatches(b, repo);
  await Promise.all([a.close(), b.close()]);
  const c = await ChunkIndex.open({ cacheDir: dir, ...SMALL, overlayLimit: 50 });
  await c.sync(repo.list(), repo.load);
  assertMatches(c, repo);
  await c.close();
});

test('memory stays within the budgets as the index grows', async (t) => {
  const r = rng(17);
  const repo = new FakeRepo();
  const sizes: number[] = [];
  const dir = await tempDir(t);
  const index = await ChunkIndex.open({ cacheDir: dir, pageCacheBytes: 64 * 1024, overlayLimit: 1000, sortRunEntries: 4096 });
  for (let step = 0; step < 4; step++) {
    for (let f = 0; f < 5; f++) repo.write({ supersedes: [], packs: [makePack(r, 2000)] }, r);
    await index.sync(repo.list(), repo.load);
    for (let k = 0; k < 2000; k++) index.lookup(bytes(r));
    sizes.push(index.memoryBytes());
  }
  assert.equal(index.count, 40_000);
  // Page cache 64 KiB + sparse table (~0.125 B/entry) + overlay (empty after merges) + fixed buffers.
  assert.ok(sizes[3]! < 200 * 1024, `memoryBytes ${sizes}`);
  assert.ok(sizes[3]! - sizes[0]! < 16 * 1024, `growth from 10,000 to 40,000 entries: ${sizes}`);
  await index.close();
});

// ---- property test ------------------------------------------------------------------------

/**
 * Random histories of concurrent writers, session adds, prunes (with and without a crash before
 * deleting), reopens and damage, checked after every step against the plain-Map reference.
 */
const totals = { merges: 0, rebuilds: 0, deltaWrites: 0, discarded: 0, filesLoaded: 0 };
function tally(index: ChunkIndex): void {
  const st = index.stats();
  for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += st[k];
}

for (const seed of [101, 202, 303, 404, 505, 606]) {
  test(`random histories agree with a Map reference (seed ${seed})`, async (t) => {
    const r = rng(seed);
    const dir = await tempDir(t);
    const options: ChunkIndexOptions = {
      cacheDir: dir,
      pageRecords: 1 + Math.floor(r() * 8),
      pageCacheBytes: Math.floor(r() * 4000),
      overlayLimit: 5 + Math.floor(r() * 60),
      sortRunEntries: 2 + Math.floor(r() * 50),
      filterBitsPerEntry: seed % 2 ? 10 : 0,
    };
    const repo = new FakeRepo();
    let index = await ChunkIndex.open(options);
    let session: IndexPack[] = []; // added by this process, no index file yet
    const ids = (): Buffer[] => [...repo.active().flatMap((c) => c.packs.flatMap((p) => p.entries.map((e) => e.id))), ...session.flatMap((p) => p.entries.map((e) => e.id))];
    for (let step = 0; step < 60; step++) {
      const op = r();
      if (op < 0.3) {
        // A concurrent writer's index file, sometimes with blobs others stored too.
        repo.write({ supersedes: [], packs: Array.from({ length: 1 + Math.floor(r() * 3) }, () => makePack(r, Math.floor(r() * 20), ids())) }, r);
      } else if (op < 0.5) {
        const p = makePack(r, Math.floor(r() * 25), ids());
        index.add(p.packId, p.packSize, p.entries);
        session.push(p);
      } else if (op < 0.6 && session.length) {
        // This process writes the index file for its packs.
        repo.write({ supersedes: [], packs: session }, r);
        session = [];
      } else if (op < 0.7) {
        // Prune / rebuild-index: supersedes every listed file, drops some packs, maybe crashes before deleting.
        const listed = [...repo.files.keys()];
        const keep = repo.active().flatMap((c) => c.packs).filter(() => r() < 0.8);
        const unique = new Map(keep.map((p) => [p.packId.toString('hex'), p]));
        repo.write({ supersedes: listed.map((h) => Buffer.from(h, 'hex')), packs: [...unique.values()] }, r);
        if (r() < 0.7) for (const h of listed) repo.files.delete(h);
      } else if (op < 0.8) {
        tally(index);
        await index.close();
        index = await ChunkIndex.open(options);
        session = []; // never indexed: the new process must not trust them
      } else if (op < 0.83) {
        tally(index);
        await index.close();
        const path = join(dir, r() < 0.5 ? 'chunks.cfx' : 'chunks-delta.cfx');
        try {
          flip(path, Math.floor(r() * statSync(path).size));
        } catch {
          // No such file right now.
        }
        index = await ChunkIndex.open(options);
        session = [];
      }
      await index.sync(repo.list(), repo.load);
      assertMatches(index, repo, session, r);
    }
    assert.deepEqual(tmpLeftovers(dir), []);
    tally(index);
    await index.close();
  });
}

test('the random histories went through every path (merge, rebuild, delta, discarding damage)', () => {
  for (const [k, v] of Object.entries(totals)) assert.ok(v > 0, `${k}: ${v}`);
});
