// Engine benchmark (not a test): chunking, hashing, encoding (zstd + AES-GCM + verify) and the
// worker pool on a sample of the shared data set, then an end-to-end `coffer repo backup` of the
// whole data set into a fresh local repository (cold page cache when allowed), with wall time,
// MB/s and peak RSS, next to the machine limits measured by shared/bench/limits.mjs.
//
//   node bench/engine.ts [--data DIR] [--sample-mb 512] [--no-e2e] [--json out.json] [--md out.md]
//
// The data set comes from ../shared/bench/gen-dataset.sh (default /tmp/bench-work/data/files-default/src).

import { readdirSync, readFileSync, statSync, existsSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync, execSync } from 'node:child_process';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { Chunker, gearTable, warmUpChunker } from '../src/engine/chunker.ts';
import { chunkId } from '../src/engine/hash.ts';
import { deriveRepoKeys, newMasterKey } from '../src/engine/keys.ts';
import { encodeBlob } from '../src/engine/blob.ts';
import { WorkerPool } from '../src/engine/pool.ts';
import { DEFAULT_CHUNKER } from '../src/repository/repository.ts';

const { values: args } = parseArgs({
  options: {
    data: { type: 'string', default: '/tmp/bench-work/data/files-default/src' },
    'sample-mb': { type: 'string', default: '512' },
    'no-e2e': { type: 'boolean', default: false },
    json: { type: 'string' },
    md: { type: 'string' },
    limits: { type: 'string', default: join(import.meta.dirname, '..', '..', 'shared', 'bench', 'results', 'limits.json') },
  },
});

const MB = 1e6;
const root = join(import.meta.dirname, '..');
if (!existsSync(args.data!)) {
  console.error(`No data set at ${args.data}. Generate it: (cd ../shared/bench && NODE=$PWD/../../main/node_modules/.bin/node ./gen-dataset.sh gen)`);
  process.exit(2);
}

function walk(dir: string, out: string[]): void {
  for (const n of readdirSync(dir).sort()) {
    const p = join(dir, n);
    const st = statSync(p, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) walk(p, out);
    else if (st.isFile()) out.push(p);
  }
}

// A sample spread over the whole data set: every k-th file until sample-mb is reached.
const files: string[] = [];
walk(args.data!, files);
const sampleBytes = Number(args['sample-mb']) * 1024 * 1024;
const sample: Buffer[] = [];
let sampled = 0;
const stride = 3;
for (let i = 0; i < files.length && sampled < sampleBytes; i += stride) {
  const b = readFileSync(files[i]!);
  sample.push(b);
  sampled += b.length;
}
for (let i = 1; i < files.length && sampled < sampleBytes; i += stride) {
  const b = readFileSync(files[i]!);
  sample.push(b);
  sampled += b.length;
}

interface Row { group: string; what: string; mbps: number; note?: string }
const rows: Row[] = [];
const time = (fn: () => void): number => {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
};

const keys = deriveRepoKeys(newMasterKey());
const chunker = new Chunker(DEFAULT_CHUNKER, gearTable(keys.gearSeed));
warmUpChunker(chunker);

// Chunking, one core.
const chunks: Buffer[] = [];
const tChunk = time(() => {
  for (const b of sample) {
    let s = 0;
    while (s < b.length) {
      const e = chunker.cut(b, s, b.length, true);
      chunks.push(b.subarray(s, e));
      s = e;
    }
  }
});
rows.push({ group: 'chunking', what: `FastCDC ${DEFAULT_CHUNKER.minSize >> 10}K/${DEFAULT_CHUNKER.avgSize >> 10}K/${DEFAULT_CHUNKER.maxSize >> 10}K, 1 core`, mbps: sampled / MB / tChunk, note: `${chunks.length} chunks, avg ${Math.round(sampled / chunks.length / 1024)} KiB` });

// Hashing, one core.
const tHash = time(() => {
  for (const c of chunks) chunkId(keys.chunkIdKey, c);
});
rows.push({ group: 'hashing', what: 'keyed BLAKE3-256 chunk ids, 1 core', mbps: sampled / MB / tHash });

// Encode: compress (zstd 3) + encrypt + verify, one core, on up to 256 MiB of chunks.
const packKey = Buffer.alloc(32, 7);
let encIn = 0;
let encOut = 0;
const encChunks = [] as Buffer[];
for (const c of chunks) {
  if (encIn > 256 * 1024 * 1024) break;
  encChunks.push(c);
  encIn += c.length;
}
const tEnc = time(() => {
  let n = 0;
  for (const c of encChunks) encOut += encodeBlob(keys, packKey, n++, 'data', chunkId(keys.chunkIdKey, c), c, 3).stored.length;
});
rows.push({ group: 'encoding', what: 'hash + zstd 3 + AES-256-GCM + decode-and-verify, 1 core', mbps: encIn / MB / tEnc, note: `stored ${(encOut / encIn * 100).toFixed(1)}% of input` });

// The worker pool: chunk + hash with every core.
const pool = await WorkerPool.create({ keys, chunker: DEFAULT_CHUNKER, level: 3 });
const t0 = process.hrtime.bigint();
await Promise.all(sample.map((b) => pool.chunkAndHash(b, true, 'cdc')));
const tPool = Number(process.hrtime.bigint() - t0) / 1e9;
rows.push({ group: 'pool', what: `chunk + hash, ${pool.size} workers (aggregate)`, mbps: sampled / MB / tPool });
const t1 = process.hrtime.bigint();
let n2 = 0;
for (let i = 0; i < encChunks.length; i += 64) {
  await pool.encode(encChunks.slice(i, i + 64).map((c) => ({ type: 'data' as const, id: chunkId(keys.chunkIdKey, c), raw: c, packKey, nonceIndex: n2++ })));
}
const tPoolEnc = Number(process.hrtime.bigint() - t1) / 1e9;
rows.push({ group: 'pool', what: `encode (zstd 3 + AES-GCM + verify), ${pool.size} workers (aggregate)`, mbps: encIn / MB / tPoolEnc });
await pool.close();

// End to end: `coffer repo backup` of the whole data set into a fresh local repository.
interface E2E { bytes: number; files: number; wallS: number; mbps: number; peakRssMB: number; repoMB: number; cold: boolean; newMB: number }
let e2e: E2E | undefined;
if (!args['no-e2e']) {
  const work = '/tmp/bench-work/coffer-engine';
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const env = { ...process.env, COFFER_PASSWORD: 'bench', COFFER_CACHE_DIR: join(work, 'cache') };
  const node = process.execPath;
  const main = join(root, 'src', 'cli', 'main.ts');
  spawnSync(node, [main, 'repo', 'init', '--repo', join(work, 'repo')], { env, stdio: 'inherit' });
  let cold = false;
  try {
    execSync('sync && echo 3 > /proc/sys/vm/drop_caches', { stdio: 'ignore' });
    cold = true;
  } catch {
    /* not allowed here: warm cache */
  }
  const hasTime = existsSync('/usr/bin/time');
  const cmd = hasTime ? '/usr/bin/time' : node;
  const cmdArgs = [...(hasTime ? ['-f', 'MAXRSS %M', node] : []), main, '--json', 'repo', 'backup', '--repo', join(work, 'repo'), args.data!];
  const t = process.hrtime.bigint();
  const r = spawnSync(cmd, cmdArgs, { env, encoding: 'utf8', maxBuffer: 1 << 30 });
  const wall = Number(process.hrtime.bigint() - t) / 1e9;
  if (r.status !== 0) {
    console.error(r.stderr);
    process.exit(1);
  }
  const summary = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((e) => e.type === 'summary');
  const rss = Number(/MAXRSS (\d+)/.exec(r.stderr)?.[1] ?? 0) / 1024;
  const repoBytes = Number(execSync(`du -sb ${join(work, 'repo')}`).toString().split('\t')[0]);
  e2e = { bytes: summary.bytesScanned, files: summary.filesNew, wallS: wall, mbps: summary.bytesScanned / MB / wall, peakRssMB: rss, repoMB: repoBytes / MB, cold, newMB: summary.bytesNew / MB };
}

let limits: Array<{ group: string; what: string; mbps: number }> = [];
try {
  const l = JSON.parse(readFileSync(args.limits!, 'utf8'));
  limits = (l.rows ?? l.results ?? []).map((x: Record<string, unknown>) => ({ group: String(x.group), what: String(x.what ?? x.name), mbps: Number(x.mb_s ?? x.mbps) }));
} catch {
  /* limits file optional */
}
const pick = (re: RegExp) => limits.find((l) => re.test(l.what))?.mbps;

const md: string[] = [];
md.push(`Machine: ${cpus()[0]?.model}, ${cpus().length} cores, Node ${process.version}. Sample: ${(sampled / MB).toFixed(0)} MB in ${sample.length} files of ${args.data}. MB = 10^6 bytes.`);
md.push('');
md.push('| group | what | Coffer MB/s | machine limit MB/s (limits.mjs) | note |');
md.push('| --- | --- | ---: | ---: | --- |');
const limitFor: Record<string, number | undefined> = {
  chunking: pick(/FastCDC gear, JS, 2 bytes\/step, min 512 KiB/),
  hashing: undefined,
  encoding: pick(/AES-256-GCM encrypt/),
};
for (const r of rows) md.push(`| ${r.group} | ${r.what} | ${r.mbps.toFixed(0)} | ${limitFor[r.group]?.toFixed(0) ?? (r.group === 'hashing' ? '~4700 (DESIGN.md)' : '')} | ${r.note ?? ''} |`);
if (e2e) {
  md.push('');
  md.push('| end to end | bytes | files | wall s | MB/s | new after dedup MB | repository MB | peak RSS MB | page cache |');
  md.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  md.push(`| \`coffer repo backup\` (first, full) | ${(e2e.bytes / MB).toFixed(0)} MB | ${e2e.files} | ${e2e.wallS.toFixed(1)} | ${e2e.mbps.toFixed(1)} | ${e2e.newMB.toFixed(0)} | ${e2e.repoMB.toFixed(0)} | ${e2e.peakRssMB.toFixed(0)} | ${e2e.cold ? 'cold' : 'warm'} |`);
}
const text = md.join('\n');
console.log(text);
if (args.md) writeFileSync(args.md, text + '\n');
if (args.json) writeFileSync(args.json, JSON.stringify({ rows, e2e, sampleBytes: sampled }, null, 2));
