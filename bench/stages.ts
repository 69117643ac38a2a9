// The floor of a full backup, stage by stage: core-seconds for reading (kernel), chunking
// (FastCDC), hashing (keyed BLAKE3), compression (zstd) and encryption (AES-256-GCM) of the data
// set, each stage measured alone on one thread, with Coffer's own code and parameters. Their sum
// is what a backup of the data set costs at least, however it is parallelised; compare it with
// the user + sys CPU of restic and borg in bench/compare.sh's run of the same day.
//
//   npx node bench/stages.ts [--data /tmp/bench-work/data/files-default/src] [--md out.md]
//
// Files are read with pread into one reused buffer (page cache dropped first, so "read" is the
// cold read); chunks are compressed and encrypted only once per id, as a backup stores them.
import { execFileSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { closeSync, lstatSync, openSync, readdirSync, readSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { nativeZstd } from '../src/engine/addon.ts';
import { Chunker, gearTable } from '../src/engine/chunker.ts';
import { compress } from '../src/engine/compress.ts';
import { chunkId } from '../src/engine/hash.ts';
import { DEFAULT_CHUNKER } from '../src/repository/repository.ts';

const { values: opt } = parseArgs({ options: { data: { type: 'string', default: '/tmp/bench-work/data/files-default/src' }, md: { type: 'string' }, level: { type: 'string', default: '3' } } });
const level = Number(opt.level);

function files(dir: string, out: string[]): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) files(p, out);
    else if (e.isFile()) out.push(p);
  }
  return out;
}

const cpu = () => {
  const u = process.cpuUsage();
  return { user: u.user / 1e6, sys: u.system / 1e6 };
};
const spent = { read: { user: 0, sys: 0 }, chunk: 0, hash: 0, compress: 0, encrypt: 0 };
const time = <T>(stage: 'chunk' | 'hash' | 'compress' | 'encrypt', f: () => T): T => {
  const a = cpu();
  const r = f();
  const b = cpu();
  spent[stage] += b.user - a.user + b.sys - a.sys;
  return r;
};

const list = files(opt.data!, []);
execFileSync('sync');
try {
  writeFileSync('/proc/sys/vm/drop_caches', '3');
} catch {
  process.stderr.write('stages: cannot drop the page cache (not root?): "read" is then a warm read\n');
}
const key = randomBytes(32);
const aesKey = randomBytes(32);
const nonce = Buffer.alloc(12);
const chunker = new Chunker(DEFAULT_CHUNKER, gearTable(randomBytes(32)));
const buf = Buffer.allocUnsafeSlow(64 << 20);
const seen = new Set<string>();
let bytes = 0;
let unique = 0;
let stored = 0;
let chunks = 0;
for (const path of list) {
  const size = lstatSync(path).size;
  if (size > buf.length) continue;
  const a = cpu();
  const fd = openSync(path, 'r');
  let n = 0;
  while (n < size) {
    const got = readSync(fd, buf, n, size - n, n);
    if (got === 0) break;
    n += got;
  }
  closeSync(fd);
  const b = cpu();
  spent.read.user += b.user - a.user;
  spent.read.sys += b.sys - a.sys;
  bytes += n;
  const data = buf.subarray(0, n);
  const ends: number[] = [];
  time('chunk', () => {
    let start = 0;
    while (start < n) {
      const cut = chunker.cut(data, start, n, true);
      ends.push(cut);
      start = cut;
    }
  });
  let start = 0;
  for (const end of ends) {
    const raw = data.subarray(start, end);
    start = end;
    chunks++;
    const id = time('hash', () => chunkId(key, raw)).toString('latin1');
    if (seen.has(id)) continue;
    seen.add(id);
    unique += raw.length;
    const packed = time('compress', () => compress(raw, level)) ?? raw;
    time('encrypt', () => {
      const c = createCipheriv('aes-256-gcm', aesKey, nonce);
      c.update(packed);
      c.final();
      c.getAuthTag();
    });
    stored += packed.length;
  }
}
const total = spent.read.user + spent.read.sys + spent.chunk + spent.hash + spent.compress + spent.encrypt;
const MB = 1e6;
const row = (stage: string, s: number, over: number, note = '') => `| ${stage} | ${s.toFixed(2)} | ${(over / MB / s).toFixed(0)} | ${note} |`;
const lines = [
  `# Backup floor per stage (${new Date().toISOString().replace(/\.\d+Z$/, 'Z')})`,
  '',
  `Data: ${opt.data}: ${(bytes / MB).toFixed(0)} MB in ${list.length} files, ${chunks} chunks (FastCDC ${DEFAULT_CHUNKER.minSize / 1024}/${DEFAULT_CHUNKER.avgSize / 1024}/${DEFAULT_CHUNKER.maxSize / 1024} KiB), ${(unique / MB).toFixed(0)} MB unique, stored ${(stored / MB).toFixed(0)} MB after zstd ${level}${nativeZstd() ? ' (the addon\'s)' : ' (node:zlib)'}. Machine: ${cpus().length} cores, ${cpus()[0]?.model ?? '?'}. One thread per stage; page cache dropped before reading.`,
  `Command: \`npx node bench/stages.ts --data ${opt.data}\``,
  '',
  '| stage | core-seconds | MB/s of its input | note |',
  '| --- | ---: | ---: | --- |',
  row('read (kernel + syscalls)', spent.read.user + spent.read.sys, bytes, `${spent.read.sys.toFixed(2)} s of it in the kernel`),
  row('chunk (FastCDC, TypeScript)', spent.chunk, bytes),
  row('hash (keyed BLAKE3, @napi-rs/blake-hash)', spent.hash, bytes),
  row(`compress (zstd ${level}, unique chunks)`, spent.compress, unique),
  row('encrypt (AES-256-GCM, node:crypto)', spent.encrypt, stored),
  `| **sum** | **${total.toFixed(2)}** | ${(bytes / MB / total).toFixed(0)} | the floor of a full backup on one core |`,
  '',
];
process.stdout.write(lines.join('\n'));
if (opt.md) writeFileSync(opt.md, lines.join('\n'));
