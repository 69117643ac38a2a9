// Parallel clones through the real server (issue #10, "Measure"): images of the shared data set
// in 3 source storage units, cloned by duplicate jobs to 3 target units, once with the queue
// limited to one job at a time (server maxJobs 1) and once with the server's defaults; then one
// image changed a little and cloned again to a target that holds the rest of it.
//
//   npx node bench/clone-parallel.ts [--data /tmp/bench-work/data/files-default/src] [--vms 2]
//                                    [--new-mb 8] [--md FILE] [--keep]
//
// Source unit i holds --vms VMs of the data set (vm01.. in order), each backed up as its own image
// (one policy per VM); every image of source i is cloned to target i (the serial run) and to
// another target i (the parallel run): the same work twice, to empty targets. The server creates
// all the units, so they share one deduplication domain (src/server/domain.ts).
//
// Reported: the wall time of each run (first job started to last job ended, from the catalog) and
// its throughput (the images' logical size, and the bytes stored in the targets, per second); the
// bytes the jobs sent against the bytes the targets truly lacked, computed here apart from the
// clone: per target, the blobs (trees and data) of the snapshots cloned to it minus those its index
// listed before, summed by their stored size in the source; and the job time of the first clone of
// one image against the clone of its next image (--new-mb MiB of new data) to the same target.
// The load average is printed before and after each run: other work on the machine shows there.

import { mkdirSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { fromHex } from '../src/engine/hash.ts';
import { Repository } from '../src/repository/repository.ts';
import { loadSnapshot } from '../src/repository/snapshot.ts';
import { walkTree } from '../src/repository/walk.ts';
import { Keystore } from '../src/server/keystore.ts';
import { startServer, type RunningServer } from '../src/server/server.ts';
import { unitPasswordRef } from '../src/server/services.ts';
import { LocalBackend } from '../src/storage/local.ts';
import { randomBytes } from '../src/testing/random.ts';

const { values: args } = parseArgs({
  options: {
    data: { type: 'string', default: '/tmp/bench-work/data/files-default/src' },
    vms: { type: 'string', default: '2' },
    'new-mb': { type: 'string', default: '8' },
    work: { type: 'string' },
    md: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const SOURCES = 3;
const perSource = Number(args.vms);
const work = resolve(args.work ?? `/tmp/bench-work/clone-parallel-${process.pid}`);
const dataDir = join(work, 'server');
const unitDir = (u: string) => join(work, 'units', u);
const vm = (i: number) => `vm${String(i + 1).padStart(2, '0')}`;
const mb = (n: number) => (n / 1e6).toFixed(1);
const load = () => loadavg().map((x) => x.toFixed(1)).join(' ');
const lines: string[] = [];
const say = (s: string) => {
  console.log(s);
  lines.push(s);
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

interface Api {
  server: RunningServer;
  call(method: string, path: string, body?: unknown, query?: Record<string, string>): Promise<Json>;
  wait(id: string): Promise<Json>;
  stop(): Promise<void>;
}

async function start(maxJobs?: number): Promise<Api> {
  const server = await startServer({ dataDir, port: 0, adminPassword: 'bench admin password', log: pino({ level: 'silent' }), ...(maxJobs ? { maxJobs } : {}) });
  let token = '';
  const call = async (method: string, path: string, body?: unknown, query: Record<string, string> = {}) => {
    const u = new URL(server.url + path);
    for (const [k, v] of Object.entries(query)) u.searchParams.set(k, v);
    const res = await fetch(u, { method, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    const out = text ? JSON.parse(text) : undefined;
    if (res.status >= 400) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return out;
  };
  token = (await call('POST', '/api/v1/login', { user: 'admin', password: 'bench admin password' })).token;
  return {
    server,
    call,
    wait: async (id) => {
      for (;;) {
        const j = await call('GET', `/api/v1/jobs/${id}`, undefined, { waitMs: '60000' });
        if (!['queued', 'running'].includes(j.state)) return j;
      }
    },
    stop: () => server.stop(),
  };
}

/** The storage units' repositories, opened with the passwords the server keeps (read-only use). */
async function openUnit(name: string): Promise<Repository> {
  const ks = await Keystore.open({ dataDir });
  const password = ks.get(unitPasswordRef(name).slice('keystore:'.length));
  const repo = await Repository.open(new LocalBackend(unitDir(name)), password, { cacheDir: join(work, 'cache', name) });
  await repo.loadIndex();
  return repo;
}

/** Blob keys (type + hex) of a snapshot, trees included, with their stored size in `repo`. */
async function blobsOf(repo: Repository, snapshotId: string, into: Map<string, number>): Promise<void> {
  const note = (type: 'data' | 'tree', hex: string) => {
    if (!into.has(type + hex)) into.set(type + hex, repo.locate(type, fromHex(hex))!.entry.length);
  };
  const snap = await loadSnapshot(repo, snapshotId);
  note('tree', snap.tree);
  await walkTree(repo, snap.tree, { node: (_p, n) => {
    if (n.subtree) note('tree', n.subtree);
    for (const c of n.content ?? []) note('data', c);
  } });
}

/** Stored bytes each target truly lacks for the images planned to go to it. */
async function lacking(plan: Array<{ source: string; target: string; snapshots: string[] }>): Promise<Map<string, number>> {
  const wanted = new Map<string, Map<string, number>>();
  const sources = new Map<string, Repository>();
  for (const p of plan) {
    let src = sources.get(p.source);
    if (!src) sources.set(p.source, (src = await openUnit(p.source)));
    let w = wanted.get(p.target);
    if (!w) wanted.set(p.target, (w = new Map()));
    for (const s of p.snapshots) await blobsOf(src, s, w);
  }
  const out = new Map<string, number>();
  for (const [target, blobs] of wanted) {
    const t = await openUnit(target);
    let bytes = 0;
    for (const [key, size] of blobs) if (!t.hasBlob(key.startsWith('tree') ? 'tree' : 'data', fromHex(key.slice(4)))) bytes += size;
    out.set(target, bytes);
    await t.close();
  }
  for (const r of sources.values()) await r.close();
  return out;
}

async function main(): Promise<void> {
  mkdirSync(work, { recursive: true });
  const extra = join(work, 'extra');
  mkdirSync(extra, { recursive: true });
  writeFileSync(join(extra, 'note.txt'), 'the first image of vm01 has this; the next gets new data beside it\n');
  say(`# Parallel clones (bench/clone-parallel.ts)\n\n${SOURCES} sources x ${perSource} VM image(s) from ${args.data}; load average before: ${load()}\n`);

  // 1. The units, one policy per VM, and the backups.
  let api = await start();
  const client = api.server.clientName;
  const units = [...Array.from({ length: SOURCES }, (_, i) => `src${i + 1}`), ...Array.from({ length: SOURCES }, (_, i) => `ser${i + 1}`), ...Array.from({ length: SOURCES }, (_, i) => `par${i + 1}`)];
  const docs: Json[] = units.map((u) => ({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: u }, spec: { url: unitDir(u) } }));
  const policies: Array<{ name: string; source: string; vm: string }> = [];
  for (let s = 0; s < SOURCES; s++) {
    docs.push({ apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: `to-src${s + 1}` }, spec: { copies: [{ operation: 'backup', storageUnit: `src${s + 1}`, retention: '30d' }] } });
    for (let v = 0; v < perSource; v++) {
      const name = vm(s * perSource + v);
      policies.push({ name: `p-${name}`, source: `src${s + 1}`, vm: name });
      const paths = [join(args.data!, name), ...(s === 0 && v === 0 ? [extra] : [])];
      docs.push({ apiVersion: 'coffer/v1', kind: 'Policy', metadata: { name: `p-${name}` }, spec: { clients: [client], selections: [{ paths }], schedules: [{ name: 'never', level: 'full', calendar: '0 1 29 2 *' }], lifecycle: `to-src${s + 1}` } });
    }
  }
  await api.call('POST', '/api/v1/apply', { documents: docs });
  const t0 = performance.now();
  const backups = await Promise.all(policies.map(async (p) => api.wait((await api.call('POST', '/api/v1/backups', { policy: p.name })).jobs[0].id)));
  for (const b of backups) if (b.state !== 'succeeded') throw new Error(`backup ${b.id}: ${JSON.stringify(b.error)}`);
  const logical = backups.reduce((n, b) => n + b.result.scannedBytes, 0);
  say(`Backups: ${policies.length} images, ${mb(logical)} MB, in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  const images = new Map<string, Json>();
  for (const p of policies) images.set(p.name, (await api.call('GET', '/api/v1/images', undefined, { policy: p.name })).items[0]);
  await api.stop();

  // 2. Serial, then parallel: the same clones to empty targets.
  const rows: string[][] = [];
  const runs: Record<string, { seconds: number; sent: number; lacked: number }> = {};
  for (const [label, prefix, maxJobs] of [['one job at a time (server maxJobs 1)', 'ser', 1], ['automatic (server defaults)', 'par', undefined]] as const) {
    const plan = policies.map((p) => ({ policy: p.name, source: p.source, target: `${prefix}${p.source.slice(3)}`, snapshots: Object.values(images.get(p.name).streams) as string[] }));
    const lack = await lacking(plan);
    const before = load();
    api = await start(maxJobs);
    const queued: string[] = [];
    for (const p of plan) {
      const r = await api.call('POST', '/api/v1/clones', { where: { policy: p.policy }, to: p.target, retention: '30d' });
      queued.push(...r.jobs.map((j: Json) => j.id));
    }
    const done = await Promise.all(queued.map((id) => api.wait(id)));
    for (const j of done) if (j.state !== 'succeeded') throw new Error(`clone ${j.id}: ${JSON.stringify(j.error)}`);
    await api.stop();
    const seconds = (Math.max(...done.map((j) => j.ended)) - Math.min(...done.map((j) => j.started))) / 1000;
    const sent = done.reduce((n, j) => n + j.result.storedBytes, 0);
    const lacked = [...lack.values()].reduce((n, x) => n + x, 0);
    // The most jobs running at one moment: a sweep over the starts and ends.
    const events = done.flatMap((j) => [[j.started, 1], [j.ended, -1]] as Array<[number, number]>).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let peak = 0;
    for (let n = 0, i = 0; i < events.length; i++) peak = Math.max(peak, (n += events[i]![1]));
    runs[prefix] = { seconds, sent, lacked };
    rows.push([label, `${done.length}`, `${peak}`, seconds.toFixed(1), `${mb(logical / seconds)}`, `${mb(sent / seconds)}`, mb(sent), mb(lacked), `${((sent / lacked - 1) * 100).toFixed(2)} %`, `${before} / ${load()}`]);
    say(`${label}: ${done.length} jobs in ${seconds.toFixed(1)} s (at most ${peak} at once), sent ${mb(sent)} MB, truly lacking ${mb(lacked)} MB; per job: ${done.map((j) => ((j.ended - j.started) / 1000).toFixed(1)).join(' ')} s`);
  }
  say('');
  say('| run | jobs | at once | wall s | logical MB/s | stored MB/s | sent MB | lacking MB | sent vs lacking | load avg before / after |');
  say('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) say(`| ${r.join(' | ')} |`);
  say(`\nParallel against serial: ${(runs.ser!.seconds / runs.par!.seconds).toFixed(2)}x the throughput.\n`);

  // 3. The next image of vm01 (--new-mb MiB of new data) to ser1, which holds the first.
  writeFileSync(join(extra, 'new.bin'), randomBytes(4242, Number(args['new-mb']) << 20));
  api = await start();
  const first = policies[0]!;
  const b2 = await api.wait((await api.call('POST', '/api/v1/backups', { policy: first.name, level: 'incremental' })).jobs[0].id);
  if (b2.state !== 'succeeded') throw new Error(`backup: ${JSON.stringify(b2.error)}`);
  const firstClone = (await api.call('GET', '/api/v1/jobs', undefined, { kind: 'duplicate', limit: '1000' })).items.find((j: Json) => j.spec.image === images.get(first.name).id && (j.spec.targets?.[0]?.to ?? j.spec.to) === 'ser1');
  const image2 = b2.result.image as string;
  const snaps2 = Object.values((await api.call('GET', `/api/v1/images/${image2}`)).streams) as string[];
  await api.stop();
  const lack2 = (await lacking([{ source: first.source, target: 'ser1', snapshots: snaps2 }])).get('ser1')!;
  api = await start();
  const r = await api.call('POST', '/api/v1/clones', { where: { policy: first.name, since: b2.started - 1 }, to: 'ser1', retention: '30d' });
  const again = await api.wait(r.jobs[0].id);
  await api.stop();
  if (again.state !== 'succeeded') throw new Error(`clone: ${JSON.stringify(again.error)}`);
  const t1 = (firstClone.ended - firstClone.started) / 1000;
  const t2 = (again.ended - again.started) / 1000;
  say('| clone of vm01 to ser1 | job s | sent MB | lacking MB |');
  say('|---|---|---|---|');
  say(`| first image (target empty) | ${t1.toFixed(2)} | ${mb(firstClone.result.storedBytes)} | - |`);
  say(`| next image (+${args['new-mb']} MiB new; the target holds the rest) | ${t2.toFixed(2)} | ${mb(again.result.storedBytes)} | ${mb(lack2)} |`);
  say(`\nRe-clone ${(t1 / t2).toFixed(1)}x faster than the first clone. Load average after: ${load()}`);
  if (args.md) writeFileSync(args.md, lines.join('\n') + '\n');
}

try {
  await main();
} finally {
  if (!args.keep) await rm(work, { recursive: true, force: true });
}
