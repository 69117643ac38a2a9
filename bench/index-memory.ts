// Benchmark (not a test): memory, disk and speed of the chunk index as the repository grows.
// For each N it generates N random chunk ids in synthetic index files (5,000 entries per pack,
// 20 packs per file), encodes and decodes every file, syncs a ChunkIndex from scratch, then
// measures lookups, memory and the cache file. Each N runs in its own process, so that peak RSS
// (process.resourceUsage().maxRSS) belongs to that N alone.
//
//   node bench/index-memory.ts [--chunks 1000000,2000000,5000000] [--json out.json]
//     [--filter-bits 0] [--page-cache-mib 16] [--lookups 1000000] [--v8-flags=--max-semi-space-size=2]

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ChunkIndex } from '../src/repository/index/chunk-index.ts';
import { decodeIndexFile, encodeIndexFile, type IndexEntry, type IndexFileContent, type IndexPack } from '../src/repository/index/index-file.ts';

const ENTRIES_PER_PACK = 5000;
const PACKS_PER_FILE = 20;
const BLOB_SIZE = 1000;

const { values } = parseArgs({
  options: {
    chunks: { type: 'string', default: '1000000,2000000,5000000' },
    json: { type: 'string' },
    'filter-bits': { type: 'string', default: '0' },
    'page-cache-mib': { type: 'string', default: '16' },
    lookups: { type: 'string', default: '1000000' },
    'v8-flags': { type: 'string', default: '' },
    one: { type: 'string' },
  },
});

interface Result {
  chunks: number;
  indexFiles: number;
  filterBits: number;
  encodeMBs: number;
  decodeMBs: number;
  indexFileBytesPerChunk: number;
  buildSeconds: number;
  lookupHitsPerSec: number;
  lookupMissesPerSec: number;
  hasMissesPerSec: number;
  pageCacheHitRate: number;
  reopenSeconds: number;
  addSeconds: number;
  memoryBytes: number;
  memoryBytesPerChunk: number;
  /** memoryBytes() without the page cache, whose size is the fixed budget. */
  beyondPageCachePerChunk: number;
  heapUsedMiB: number;
  baselineRssMiB: number;
  peakRssMiB: number;
  cacheFileBytes: number;
  diskBytesPerChunk: number;
  errors: number;
}

/** A stateless id generator: id(g) is 32 pseudo-random bytes, distinct for distinct g. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function makeId(g: number, out: Buffer = Buffer.allocUnsafe(32)): Buffer {
  const lo = g % 2 ** 32;
  const s = fmix32(Math.floor(g / 2 ** 32) + 0x6a09e667);
  // A bijection of the low 32 bits for a given high part; the later words mix in the high part
  // too, so ids of different high parts that share a first word still differ.
  let h = fmix32((lo ^ s) >>> 0);
  out.writeUInt32BE(h, 0);
  for (let w = 1; w < 8; w++) {
    h = fmix32(((h + Math.imul(w, 0x9e3779b9)) ^ s) >>> 0);
    out.writeUInt32BE(h, w * 4);
  }
  return out;
}

/** xorshift32: the random choice of ids to look up. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

const FILE_BASE = 2 ** 40;
const PACK_BASE = 2 ** 41;
const MISS_BASE = 2 ** 42;

async function runOne(n: number, filterBits: number, pageCacheBytes: number, lookups: number): Promise<Result> {
  const baselineRss = process.memoryUsage().rss;
  const dir = mkdtempSync(join(tmpdir(), 'coffer-bench-index-'));
  try {
    const perFile = ENTRIES_PER_PACK * PACKS_PER_FILE;
    const nFiles = Math.ceil(n / perFile);
    const fileNo = new Map<string, number>();
    const list: Buffer[] = [];
    for (let f = 0; f < nFiles; f++) {
      const id = makeId(FILE_BASE + f);
      fileNo.set(id.toString('hex'), f);
      list.push(id);
    }
    let encodeMs = 0;
    let decodeMs = 0;
    let fileBytes = 0;
    const load = async (id: Buffer): Promise<IndexFileContent> => {
      const f = fileNo.get(id.toString('hex'))!;
      const packs: IndexPack[] = [];
      for (let j = 0; j < PACKS_PER_FILE; j++) {
        const p = f * PACKS_PER_FILE + j;
        const entries: IndexEntry[] = [];
        for (let k = 0; k < ENTRIES_PER_PACK; k++) {
          const g = p * ENTRIES_PER_PACK + k;
          if (g >= n) break;
          entries.push({ type: 'data', id: makeId(g), offset: k * BLOB_SIZE, length: BLOB_SIZE, rawLength: 2 * BLOB_SIZE, compressed: true, nonceIndex: k });
        }
        if (entries.length) packs.push({ packId: makeId(PACK_BASE + p), packSize: ENTRIES_PER_PACK * BLOB_SIZE, entries });
      }
      let t = performance.now();
      const bytes = encodeIndexFile({ supersedes: [], packs });
      encodeMs += performance.now() - t;
      fileBytes += bytes.length;
      t = performance.now();
      const decoded = decodeIndexFile(bytes);
      decodeMs += performance.now() - t;
      return decoded;
    };

    const opts = { cacheDir: dir, filterBitsPerEntry: filterBits, pageCacheBytes };
    let index = await ChunkIndex.open(opts);
    let t = performance.now();
    await index.sync(list, load);
    const buildSeconds = (performance.now() - t) / 1000;
    if (index.count !== n) throw new Error(`count ${index.count} != ${n}`);

    let errors = 0;
    const r = rng(12345);
    const q = Buffer.allocUnsafe(32);
    // Warm-up, so that V8 has compiled the lookup path before it is timed.
    for (let i = 0; i < 20000; i++) index.lookup(makeId(Math.floor(r() * n), q), 'data');
    t = performance.now();
    for (let i = 0; i < lookups; i++) {
      const g = Math.floor(r() * n);
      const hit = index.lookup(makeId(g, q), 'data');
      if (!hit || hit.entry.offset !== (g % ENTRIES_PER_PACK) * BLOB_SIZE) errors++;
    }
    const lookupHitsPerSec = lookups / ((performance.now() - t) / 1000);
    t = performance.now();
    for (let i = 0; i < lookups; i++) if (index.lookup(makeId(MISS_BASE + Math.floor(r() * 2 ** 28), q), 'data')) errors++;
    const lookupMissesPerSec = lookups / ((performance.now() - t) / 1000);
    t = performance.now();
    for (let i = 0; i < lookups; i++) if (index.has(makeId(MISS_BASE + Math.floor(r() * 2 ** 28), q), 'data')) errors++;
    const hasMissesPerSec = lookups / ((performance.now() - t) / 1000);
    const st = index.stats();
    const pageCacheHitRate = st.pageCacheHits / Math.max(1, st.pageCacheHits + st.pageCacheMisses);
    const memoryBytes = index.memoryBytes();
    (globalThis as { gc?: () => void }).gc?.();
    const heapUsed = process.memoryUsage().heapUsed;
    let cacheFileBytes = 0;
    for (const name of ['chunks.cfx', 'chunks-delta.cfx']) {
      try {
        cacheFileBytes += statSync(join(dir, name)).size;
      } catch {
        // No delta.
      }
    }

    // What a backup adds: blobs of new packs, until the overlay is merged into a new cache file.
    const sessionBlobs = 200_000;
    t = performance.now();
    for (let p = 0; p * ENTRIES_PER_PACK < sessionBlobs; p++) {
      const entries: IndexEntry[] = [];
      for (let k = 0; k < ENTRIES_PER_PACK; k++) {
        entries.push({ type: 'data', id: makeId(MISS_BASE + 2 ** 30 + p * ENTRIES_PER_PACK + k), offset: k * BLOB_SIZE, length: BLOB_SIZE, rawLength: 2 * BLOB_SIZE, compressed: true, nonceIndex: k });
      }
      index.add(makeId(PACK_BASE + 2 ** 30 + p), ENTRIES_PER_PACK * BLOB_SIZE, entries);
    }
    const addSeconds = (performance.now() - t) / 1000;
    if (index.stats().merges < 2 || index.count !== n + sessionBlobs) errors++;
    await index.close();

    // Reopen: verification pass over the cache file, and a sync that has nothing to load.
    t = performance.now();
    index = await ChunkIndex.open(opts);
    await index.sync(list, async () => {
      throw new Error('a reopened index must not load index files again');
    });
    const reopenSeconds = (performance.now() - t) / 1000;
    // The added blobs never got an index file: the next process must not trust them.
    if (index.count !== n) errors++;
    await index.close();

    return {
      chunks: n,
      indexFiles: nFiles,
      filterBits,
      encodeMBs: fileBytes / 1e6 / (encodeMs / 1000),
      decodeMBs: fileBytes / 1e6 / (decodeMs / 1000),
      indexFileBytesPerChunk: fileBytes / n,
      buildSeconds,
      lookupHitsPerSec,
      lookupMissesPerSec,
      hasMissesPerSec,
      pageCacheHitRate,
      reopenSeconds,
      addSeconds,
      memoryBytes,
      memoryBytesPerChunk: memoryBytes / n,
      beyondPageCachePerChunk: (memoryBytes - st.memory.pageCache) / n,
      heapUsedMiB: heapUsed / 2 ** 20,
      baselineRssMiB: baselineRss / 2 ** 20,
      peakRssMiB: process.resourceUsage().maxRSS / 1024,
      cacheFileBytes,
      diskBytesPerChunk: cacheFileBytes / n,
      errors,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const fmt = (v: number, d = 1) => v.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

if (values.one) {
  const res = await runOne(Number(values.one), Number(values['filter-bits']), Number(values['page-cache-mib']) * 2 ** 20, Number(values.lookups));
  process.stdout.write(JSON.stringify(res) + '\n');
} else {
  const sizes = values.chunks.split(',').map((s) => Number(s.trim()));
  if (sizes.some((s) => !Number.isSafeInteger(s) || s < 1 || s > 2 ** 29)) {
    console.error('--chunks takes a comma-separated list of counts between 1 and 2^29');
    process.exit(2);
  }
  const results: Result[] = [];
  for (const n of sizes) {
    const v8 = values['v8-flags'].split(' ').filter(Boolean);
    const child = spawnSync(process.execPath, ['--expose-gc', ...v8, import.meta.filename, '--one', String(n), '--filter-bits', values['filter-bits'], '--page-cache-mib', values['page-cache-mib'], '--lookups', values.lookups], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 1 << 20,
    });
    if (child.status !== 0) {
      console.error(`the run for ${n} chunks failed (exit ${child.status})`);
      process.exit(1);
    }
    const res = JSON.parse(child.stdout.trim().split('\n').pop()!) as Result;
    results.push(res);
    console.error(`${n} chunks: done`);
  }
  const rows = [
    ['chunks', (r: Result) => r.chunks.toLocaleString('en-US')],
    ['index files', (r: Result) => String(r.indexFiles)],
    ['build (sync from scratch), s', (r: Result) => fmt(r.buildSeconds)],
    ['reopen (verify + sync), s', (r: Result) => fmt(r.reopenSeconds, 2)],
    ['add() 200,000 blobs (one overlay merge), s', (r: Result) => fmt(r.addSeconds)],
    ['lookup hits/s', (r: Result) => Math.round(r.lookupHitsPerSec).toLocaleString('en-US')],
    ['lookup misses/s', (r: Result) => Math.round(r.lookupMissesPerSec).toLocaleString('en-US')],
    ['has() misses/s', (r: Result) => Math.round(r.hasMissesPerSec).toLocaleString('en-US')],
    ['page cache hit rate', (r: Result) => `${fmt(r.pageCacheHitRate * 100)}%`],
    ['memoryBytes(), MiB', (r: Result) => fmt(r.memoryBytes / 2 ** 20)],
    ['memoryBytes() per chunk, B', (r: Result) => fmt(r.memoryBytesPerChunk, 2)],
    ['… without the page cache, B per chunk', (r: Result) => fmt(r.beyondPageCachePerChunk, 3)],
    ['heap used (after GC), MiB', (r: Result) => fmt(r.heapUsedMiB)],
    ['RSS at start, MiB', (r: Result) => fmt(r.baselineRssMiB)],
    ['peak RSS, MiB', (r: Result) => fmt(r.peakRssMiB)],
    ['cache file, MiB', (r: Result) => fmt(r.cacheFileBytes / 2 ** 20)],
    ['disk per chunk, B', (r: Result) => fmt(r.diskBytesPerChunk, 2)],
    ['index file per chunk, B', (r: Result) => fmt(r.indexFileBytesPerChunk, 2)],
    ['encode / decode, MB/s', (r: Result) => `${Math.round(r.encodeMBs)} / ${Math.round(r.decodeMBs)}`],
    ['lookup errors', (r: Result) => String(r.errors)],
  ] as const;
  const lines = [`| | ${results.map((r) => r.chunks.toLocaleString('en-US')).join(' | ')} |`, `|---|${results.map(() => '---:').join('|')}|`];
  for (const [name, f] of rows.slice(1)) lines.push(`| ${name} | ${results.map(f).join(' | ')} |`);
  console.log(`Chunk index, filter bits per entry ${values['filter-bits']}, page cache ${values['page-cache-mib']} MiB, node ${process.version}${values['v8-flags'] ? ` ${values['v8-flags']}` : ''}\n`);
  console.log(lines.join('\n'));
  if (values.json) writeFileSync(values.json, JSON.stringify({ node: process.version, v8Flags: values['v8-flags'], date: new Date().toISOString(), results }, null, 2) + '\n');
  if (results.some((r) => r.errors)) process.exit(1);
}
