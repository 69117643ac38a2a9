// Randomized damage (issue #8, "Damage tolerance"): for each seed, one object of a repository
// holding three snapshots is damaged (a pack, an index file, a snapshot object, a tree blob's
// bytes inside its pack, or the config; truncated, bytes flipped, deleted, or replaced with
// garbage of the same or another size). Every snapshot is restored as it is; then, from the same
// damaged state, an administrator's sequence runs: open, check --read-data, repair index, repair
// packs, repair snapshots, repair config, restore every snapshot left, check again.
//
// What must hold is decided by an oracle that knows the layout (docs/format.md) and nothing of
// the code under test: a blob is unreadable when any byte of its stored range changed or is
// gone, or its pack's header changed, or its pack is gone (index, trailer, footer and config
// damage lose no blob; a damaged snapshot object loses that object, not its data; a deleted one
// is a forgotten snapshot). A file is lost when one of its content blobs, or the tree of a
// directory above it, is unreadable. Then: every readable file comes back byte-identical from
// some restore of its snapshot (the original, its repair, or a recovery of its tree); every lost
// one is named by a repair report or a restore; nothing is ever written under its real name with
// other content; nothing throws but restore's CORRUPT; check after the repairs finds no error
// and warns of nothing but lost data.
//
// The repository is the same in every run (a fixed master key, blobs stored one batch at a time),
// so a seed always damages the same bytes. Each seed prints one line. Default: seeds 1-24, about
// 20 s on a 2-core machine. COFFER_DAMAGE_SEEDS=500 runs seeds 1-500, COFFER_DAMAGE_SEEDS=261-261
// replays one.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtemp, readdir, lstat, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isCofferError } from '../src/core/errors.ts';
import { listAll } from '../src/storage/backend.ts';
import { MemoryBackend } from '../src/storage/memory.ts';
import { Chunker, gearTable } from '../src/engine/chunker.ts';
import { sealObject } from '../src/engine/envelope.ts';
import { chunkId, contentHash, toHex } from '../src/engine/hash.ts';
import { deriveRepoKeys, wrapMasterKey } from '../src/engine/keys.ts';
import { PACK_HEADER_SIZE } from '../src/engine/pack.ts';
import { WorkerPool } from '../src/engine/pool.ts';
import { restore } from '../src/testing/jobs.ts';
import { check, type CheckResult } from '../src/repository/check.ts';
import { CONFIG_COPY_NAME, CONFIG_NAME, DATA_PREFIX, SNAPSHOTS_PREFIX, indexName, keyName, packName, snapshotName } from '../src/repository/layout.ts';
import { BlobSaver, type Encoder } from '../src/repository/packer.ts';
import { DAMAGED_SUFFIX, repairConfig, repairIndex, repairPacks, repairSnapshots, type LostFile } from '../src/repository/repair.ts';
import { Repository, REPO_VERSION, type RepoConfig } from '../src/repository/repository.ts';
import { readSnapshots, saveSnapshot, type Snapshot, type SnapshotRef } from '../src/repository/snapshot.ts';
import { encodeTree, type TreeNode } from '../src/repository/tree.ts';
import { loadTree } from '../src/repository/walk.ts';
import { TEST_CHUNKER, TEST_KDF, TEST_PASSWORD } from '../src/testing/repo.ts';
import { randomBytes, rng, textBytes } from '../src/testing/random.ts';

/** Seeds 1..N, or A..B for "A-B". */
const [FIRST_SEED, LAST_SEED] = ((v) => (v.includes('-') ? v.split('-').map(Number) : [1, Number(v)]))(process.env.COFFER_DAMAGE_SEEDS ?? '24') as [number, number];

/** One file of a snapshot: its content, its data blobs and the trees of the directories above it (root first). */
interface FileInfo {
  content: Buffer;
  blobs: string[];
  trees: string[];
}

/** One snapshot as stored: every file by its path inside the snapshot ("/src/a/small1.txt"). */
interface Version {
  id: string;
  tree: string;
  files: Map<string, FileInfo>;
}

/** Where a stored copy of a blob is. */
interface Copy {
  pack: string;
  offset: number;
  length: number;
}

/** The repository as built, and what the oracle knows of it. */
interface World {
  backend: MemoryBackend;
  /** The handle that built it, and the worker pool every step uses. */
  repo: Repository;
  pool: WorkerPool;
  /** Every stored object: each case starts again from these. */
  saved: Map<string, Buffer>;
  versions: Version[];
  /** Where each blob (by type + hex id) is stored. */
  copies: Map<string, Copy[]>;
  /** Tree blob ids, sorted. */
  trees: string[];
  /** The objects of each kind, in an order that is the same in every run (their names are not). */
  objects: Record<Exclude<Kind, 'tree'>, string[]>;
  /** A digest of where every blob is: the same in every run, or seeds damage other bytes. */
  fingerprint: string;
  scratch: string;
}

// ---- the repository: three versions of a source tree ---------------------------------------

/** Files of the source, by path relative to it; each step changes, adds and removes some. */
function versionsOfSource(): Array<Map<string, Buffer>> {
  const v1 = new Map<string, Buffer>([
    ['top.txt', textBytes(1, 300)],
    ['empty', Buffer.alloc(0)],
    ['a/small1.txt', textBytes(2, 1_500)],
    ['a/medium1.bin', randomBytes(3, 40_000)],
    ['a/b/medium2.bin', randomBytes(4, 70_000)],
    ['a/b/small2', randomBytes(5, 500)],
    ['c/medium3.txt', textBytes(6, 50_000)],
    ['c/small3', randomBytes(7, 2_000)],
    ['c/d/e/deep.bin', randomBytes(8, 30_000)],
    ['shared/big.bin', randomBytes(9, 150_000)],
    ['docs/readme.md', textBytes(15, 3_000)],
    ['docs/notes/n1.txt', textBytes(16, 800)],
    ['docs/notes/n2.txt', textBytes(17, 1_200)],
    ['media/photo1.raw', randomBytes(18, 120_000)],
    ['media/photo2.raw', randomBytes(19, 90_000)],
    ['media/copy-of-deep.bin', randomBytes(8, 30_000)], // the same blobs as c/d/e/deep.bin
  ]);
  const v2 = new Map(v1);
  const m1 = Buffer.from(v1.get('a/medium1.bin')!);
  randomBytes(10, 5_000).copy(m1, 17_000);
  v2.set('a/medium1.bin', m1); // changed in the middle: its first and last chunks are shared
  v2.delete('c/small3');
  v2.set('a/new.bin', randomBytes(11, 20_000));
  v2.set('docs/notes/n2.txt', textBytes(20, 1_300));
  const v3 = new Map(v2);
  v3.set('top.txt', textBytes(12, 420));
  v3.delete('a/b/small2');
  v3.set('c/d/more.txt', textBytes(13, 9_000));
  v3.set('shared/big.bin', Buffer.concat([v1.get('shared/big.bin')!.subarray(0, 120_000), randomBytes(14, 25_000)]));
  return [v1, v2, v3];
}

const HOST = { hostname: 'random-damage', os: 'linux', arch: 'x64' };
const timeNs = (step: number) => String(BigInt(1_700_000_000 + step * 86_400) * 1_000_000_000n);

/**
 * A repository with a fixed master key (init draws a random one), so that chunk boundaries and
 * ids are the same in every run.
 */
async function initFixedRepo(backend: MemoryBackend): Promise<{ repo: Repository; pool: WorkerPool }> {
  const master = randomBytes(8, 32);
  const keys = deriveRepoKeys(master);
  const keyFile = Buffer.from(JSON.stringify(await wrapMasterKey(master, TEST_PASSWORD, TEST_KDF, { hostname: 'test', username: 'test' })));
  await backend.put(keyName(toHex(contentHash(keyFile))), keyFile);
  // Packs of 64 KiB: the data spreads over many packs, so one damaged pack loses a few files.
  const config: RepoConfig = { version: REPO_VERSION, id: toHex(contentHash(master)), created: '2026-01-01T00:00:00.000Z', chunker: TEST_CHUNKER, imageChunkSize: 1 << 20, compressionLevel: 3, packSize: 64 * 1024 };
  const sealed = sealObject(keys, 'config', Buffer.from(JSON.stringify(config)));
  await backend.put(CONFIG_NAME, sealed);
  await backend.put(CONFIG_COPY_NAME, sealed);
  const repo = await Repository.open(backend, TEST_PASSWORD, { noCache: true });
  const pool = await WorkerPool.create({ keys: repo.keys, chunker: config.chunker, level: config.compressionLevel, workers: 2 });
  return { repo, pool };
}

/**
 * Stores each version as a backup would (chunks, data and tree blobs through BlobSaver, an index
 * file, then the snapshot), but from memory and one batch at a time, so that every run lays the
 * blobs out in the same packs at the same offsets and a seed damages the same bytes each time.
 * (backup() reads files concurrently and stores inode numbers and times: its layout differs
 * from run to run.)
 */
async function storeVersions(repo: Repository, pool: WorkerPool, sources: Array<Map<string, Buffer>>): Promise<Array<{ id: string; tree: string }>> {
  const chunker = new Chunker(repo.config.chunker, gearTable(repo.keys.gearSeed));
  let last: Promise<unknown> = Promise.resolve();
  const serial: Encoder = {
    encode(items, signal) {
      const p = last.then(() => pool.encode(items, signal));
      last = p.catch(() => {});
      return p;
    },
  };
  const out: Array<{ id: string; tree: string }> = [];
  /** The step in which each file got its content: its mtime, so that unchanged directories keep their tree. */
  const since = new Map<string, number>();
  for (const [k, files] of sources.entries()) {
    for (const [rel, content] of files) if (!sources[k - 1]?.get(rel)?.equals(content)) since.set(rel, k);
    const saver = new BlobSaver(repo, serial);
    const storeDir = async (dir: string, entries: Array<[string, Buffer]>): Promise<string> => {
      const nodes: TreeNode[] = [];
      const subdirs = new Map<string, Array<[string, Buffer]>>();
      for (const [rel, content] of entries) {
        const i = rel.indexOf('/');
        if (i >= 0) {
          const l = subdirs.get(rel.slice(0, i)) ?? [];
          l.push([rel.slice(i + 1), content]);
          subdirs.set(rel.slice(0, i), l);
          continue;
        }
        const ids: string[] = [];
        for (let at = 0; at < content.length;) {
          const end = chunker.cut(content, at, content.length, true);
          const raw = content.subarray(at, end);
          const id = chunkId(repo.keys.chunkIdKey, raw);
          await saver.saveMany([{ type: 'data', id, raw }]);
          ids.push(toHex(id));
          at = end;
        }
        nodes.push({ name: rel, type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: timeNs(since.get(dir + rel)!), size: content.length, content: ids });
      }
      for (const [name, sub] of subdirs) nodes.push({ name, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: timeNs(0), subtree: await storeDir(`${dir}${name}/`, sub) });
      const raw = encodeTree({ nodes });
      const id = chunkId(repo.keys.chunkIdKey, raw);
      await saver.saveMany([{ type: 'tree', id, raw }]);
      return toHex(id);
    };
    const src = await storeDir('', [...files]);
    const root = encodeTree({ nodes: [{ name: 'src', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: timeNs(0), subtree: src }] });
    const rootId = chunkId(repo.keys.chunkIdKey, root);
    await saver.saveMany([{ type: 'tree', id: rootId, raw: root }]);
    await saver.flush();
    const snapshot: Snapshot = { version: 1, time: new Date(1_700_000_000_000 + k * 86_400_000).toISOString(), tree: toHex(rootId), paths: ['/src'], host: HOST, username: 'test', tags: [], program: 'random-damage test', ...(k ? { parent: out[k - 1]!.id } : {}) };
    out.push({ id: await saveSnapshot(repo, snapshot), tree: snapshot.tree });
  }
  return out;
}

/** Walks a snapshot's trees in the intact repository: every file with its blobs and the trees above it. */
async function mapTrees(repo: Repository, root: string): Promise<Map<string, { blobs: string[]; trees: string[]; size: number }>> {
  const out = new Map<string, { blobs: string[]; trees: string[]; size: number }>();
  const visit = async (id: string, path: string, above: string[]) => {
    const trees = [...above, id];
    for (const n of (await loadTree(repo, id)).nodes) {
      const p = `${path}/${n.name}`;
      if (n.type === 'dir') await visit(n.subtree!, p, trees);
      else if (n.type === 'file') out.set(p, { blobs: n.content ?? [], trees, size: n.size ?? 0 });
    }
  };
  await visit(root, '', []);
  return out;
}

async function buildWorld(): Promise<World> {
  const scratch = await mkdtemp(join(tmpdir(), 'coffer-random-damage-'));
  const backend = new MemoryBackend();
  const { repo: builder, pool } = await initFixedRepo(backend);
  const sources = versionsOfSource();
  const stored = await storeVersions(builder, pool, sources);
  const repo = await Repository.open(backend, TEST_PASSWORD, { noCache: true });
  try {
    await repo.loadIndex();
    const versions: Version[] = [];
    for (const [k, s] of stored.entries()) {
      const v: Version = { ...s, files: new Map() };
      const mapped = await mapTrees(repo, v.tree);
      const want = sources[k]!;
      assert.deepEqual([...mapped.keys()].sort(), [...want.keys()].map((r) => `/src/${r}`).sort(), `version ${k} holds what was stored`);
      for (const [rel, content] of want) {
        const m = mapped.get(`/src/${rel}`)!;
        assert.equal(m.size, content.length);
        v.files.set(`/src/${rel}`, { content, blobs: m.blobs, trees: m.trees });
      }
      versions.push(v);
    }
    const copies = new Map<string, Copy[]>();
    const trees = new Set<string>();
    /** Per pack, its blobs: the smallest names the pack whatever its (random) id. */
    const blobsOf = new Map<string, string[]>();
    for (const { packId, entry } of repo.index.entries()) {
      const key = entry.type + toHex(entry.id);
      const pack = toHex(packId);
      const l = copies.get(key) ?? [];
      l.push({ pack, offset: entry.offset, length: entry.length });
      copies.set(key, l);
      blobsOf.set(pack, [...(blobsOf.get(pack) ?? []), key]);
      if (entry.type === 'tree') trees.add(toHex(entry.id));
    }
    const rank = (blobs: string[]) => [...blobs].sort()[0]!;
    const packs = [...blobsOf].sort((a, b) => rank(a[1]).localeCompare(rank(b[1]))).map(([hex]) => packName(hex));
    assert.ok(packs.length >= 6, `the data spreads over many packs (${packs.length})`);
    const indexFiles: Array<[string, string]> = [];
    for (const id of await repo.listIndexFiles()) indexFiles.push([indexName(id), rank((await repo.loadIndexFile(id)).packs.flatMap((p) => blobsOf.get(toHex(p.packId))!))]);
    const saved = new Map<string, Buffer>();
    for (const o of await listAll(backend, '')) if (!o.name.startsWith('sessions/')) saved.set(o.name, await backend.get(o.name));
    // What a run built, in one line: the same in every run (ids of packs and objects aside).
    const layout = packs.map((p) => packLayout(repo, p)).join('\n');
    return {
      backend, repo: builder, pool, saved, versions, copies, trees: [...trees].sort(), scratch,
      objects: {
        pack: packs,
        index: indexFiles.sort((a, b) => a[1].localeCompare(b[1])).map(([n]) => n),
        snapshot: versions.map((v) => snapshotName(v.id)),
        config: [CONFIG_NAME],
      },
      fingerprint: toHex(contentHash(Buffer.from(layout))).slice(0, 12),
    };
  } finally {
    await repo.close();
  }
}

/** A pack's blobs as "type+id@offset+length", in offset order. */
function packLayout(repo: Repository, name: string): string {
  const hex = name.split('/').at(-1)!;
  const l: Array<{ offset: number; s: string }> = [];
  for (const { packId, entry } of repo.index.entries()) if (toHex(packId) === hex) l.push({ offset: entry.offset, s: `${entry.type}${toHex(entry.id).slice(0, 8)}@${entry.offset}+${entry.length}` });
  return l.sort((a, b) => a.offset - b.offset).map((x) => x.s).join(' ');
}

/** Puts the repository back as it was built: every case starts from the same state. */
async function resetState(w: World): Promise<void> {
  for (const o of await listAll(w.backend, '')) if (!w.saved.has(o.name)) await w.backend.delete(o.name);
  for (const [n, b] of w.saved) await w.backend.put(n, b);
}

// ---- damage ---------------------------------------------------------------------------------

const KINDS = ['pack', 'index', 'snapshot', 'tree', 'config'] as const;
const DAMAGES = ['truncate', 'flip', 'delete', 'garbage'] as const;
type Kind = (typeof KINDS)[number];
type DamageKind = (typeof DAMAGES)[number];

interface Damage {
  kind: Kind;
  damage: DamageKind;
  object: string;
  /** Which object, in terms that are the same in every run. */
  label: string;
  /** The object's bytes after the damage; undefined when it was deleted. */
  after: Buffer | undefined;
  what: string;
}

/**
 * Damages bytes[lo, hi): truncates inside it, flips 1-4 of its bytes, cuts it out, or replaces
 * it with garbage of the same or another size. Over the whole object, "delete" removes it, and a
 * quarter of the cuts and flips go to its first or last 96 bytes (header, trailer and footer),
 * where a uniform pick would rarely land and where the format has the most to say.
 */
function damageRange(r: () => number, seed: number, bytes: Buffer, damage: DamageKind, lo: number, hi: number): { after: Buffer; what: string } {
  const int = (n: number) => Math.floor(r() * n);
  const whole = lo === 0 && hi === bytes.length;
  const EDGE = 96;
  const pos = (): number => {
    const x = r();
    if (whole && x < 0.25) return Math.min(hi - 1, int(EDGE));
    if (whole && x < 0.5) return Math.max(lo, hi - 1 - int(EDGE));
    return lo + int(hi - lo);
  };
  switch (damage) {
    case 'truncate': {
      const cut = whole && r() < 0.25 ? Math.max(0, hi - 1 - int(EDGE)) : lo + int(hi - lo);
      return { after: bytes.subarray(0, cut), what: `cut at ${cut} of ${bytes.length}` };
    }
    case 'flip': {
      const out = Buffer.from(bytes);
      const at = new Set<number>();
      const n = 1 + int(4);
      while (at.size < Math.min(n, hi - lo)) at.add(pos());
      for (const p of at) out[p]! ^= 1 + int(255);
      return { after: out, what: `${at.size} byte(s) flipped at ${[...at].sort((a, b) => a - b).join(',')}` };
    }
    case 'delete':
      return { after: Buffer.concat([bytes.subarray(0, lo), bytes.subarray(hi)]), what: `bytes ${lo}-${hi} cut out` };
    case 'garbage': {
      let size = hi - lo;
      if (r() < 0.5) while (size === hi - lo) size = int(2 * (hi - lo) + 2);
      const out = Buffer.concat([bytes.subarray(0, lo), randomBytes(seed * 7919 + 1, size), bytes.subarray(hi)]);
      return { after: out, what: `bytes ${lo}-${hi} replaced by ${size} bytes of garbage` };
    }
  }
}

function pickDamage(w: World, seed: number): Damage {
  const r = rng(seed);
  const int = (n: number) => Math.floor(r() * n);
  // Packs and tree blobs (where data is lost) more often than the objects whose damage loses none.
  const x = r();
  const kind: Kind = x < 0.3 ? 'pack' : x < 0.55 ? 'tree' : x < 0.7 ? 'index' : x < 0.85 ? 'snapshot' : 'config';
  const damage = DAMAGES[int(DAMAGES.length)]!;
  let object: string;
  let lo = 0;
  let hi: number;
  let label: string;
  if (kind === 'tree') {
    // A tree blob's stored bytes inside its pack.
    const tree = w.trees[int(w.trees.length)]!;
    const c = w.copies.get('tree' + tree)![0]!;
    object = packName(c.pack);
    lo = c.offset;
    hi = c.offset + c.length;
    label = `tree ${tree.slice(0, 8)} in pack #${w.objects.pack.indexOf(object)}`;
  } else {
    const choices = w.objects[kind];
    const i = int(choices.length);
    object = choices[i]!;
    hi = w.saved.get(object)!.length;
    label = kind === 'config' ? 'config' : kind === 'snapshot' ? `snapshot of version ${i}` : `${kind} #${i} of ${choices.length}`;
  }
  const bytes = w.saved.get(object)!;
  if (damage === 'delete' && kind !== 'tree') return { kind, damage, object, label, after: undefined, what: 'deleted' };
  return { kind, damage, object, label, ...damageRange(r, seed, bytes, damage, lo, hi) };
}

// ---- the oracle -----------------------------------------------------------------------------

interface Oracle {
  /** Blobs (type + hex) of which no stored copy is intact. */
  lostBlobs: Set<string>;
  /** Per version: the paths of its files that are lost. */
  lostFiles: Array<Set<string>>;
  /** The version whose snapshot object was deleted: indistinguishable from a forgotten snapshot. */
  forgotten?: number;
}

function oracle(w: World, d: Damage): Oracle {
  const badCopies = new Set<string>();
  if (d.object.startsWith(DATA_PREFIX)) {
    const hex = d.object.split('/').at(-1)!;
    const before = w.saved.get(d.object)!;
    const a = d.after;
    const headerGone = !a || a.length < PACK_HEADER_SIZE || !a.subarray(0, PACK_HEADER_SIZE).equals(before.subarray(0, PACK_HEADER_SIZE));
    for (const [key, copies] of w.copies) {
      for (const c of copies) {
        if (c.pack !== hex) continue;
        const end = c.offset + c.length;
        if (headerGone || a!.length < end || !a!.subarray(c.offset, end).equals(before.subarray(c.offset, end))) badCopies.add(`${key}@${c.pack}`);
      }
    }
  }
  const lostBlobs = new Set<string>();
  for (const [key, copies] of w.copies) if (copies.every((c) => badCopies.has(`${key}@${c.pack}`))) lostBlobs.add(key);
  const lostFiles = w.versions.map((v) => {
    const out = new Set<string>();
    for (const [p, f] of v.files) if (f.blobs.some((b) => lostBlobs.has('data' + b)) || f.trees.some((t) => lostBlobs.has('tree' + t))) out.add(p);
    return out;
  });
  const forgotten = d.kind === 'snapshot' && !d.after ? w.versions.findIndex((v) => d.object === SNAPSHOTS_PREFIX + v.id) : undefined;
  return { lostBlobs, lostFiles, forgotten };
}

// ---- the administrator ----------------------------------------------------------------------

/** Which version a snapshot in the repository is: the original, its repair, or a recovery of its tree. */
function versionOf(w: World, s: SnapshotRef): number {
  return w.versions.findIndex((v) => v.id === s.id || v.id === s.snapshot.repairedFrom || (s.snapshot.tags.includes('recovered') && v.tree === s.snapshot.tree));
}

/** Every regular file under `dir`, by its path inside the snapshot. */
async function restoredFiles(dir: string, base = ''): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const name of await readdir(dir)) {
    const p = join(dir, name);
    const st = await lstat(p);
    if (st.isDirectory()) for (const [k, v] of await restoredFiles(p, `${base}/${name}`)) out.set(k, v);
    else if (st.isFile()) out.set(`${base}/${name}`, await readFile(p));
    else out.set(`${base}/${name}`, Buffer.from('not a regular file'));
  }
  return out;
}

/** A file or directory said to be lost, by a repair report or a restore, in one version. */
interface Named {
  version: number;
  path: string;
}

const isNamed = (named: Named[], version: number, path: string) => named.some((n) => n.version === version && (n.path === path || n.path === '/' || path.startsWith(n.path + '/')));

interface Case {
  w: World;
  o: Oracle;
  /** An assertion message that names the seed. */
  say(m: string): string;
}

/** Opens the repository as a new process would and runs `fn`; anything but an assertion it throws fails the case, naming the step. */
async function step<T>(c: Case, name: string, fn: (repo: Repository) => Promise<T>): Promise<T> {
  let repo: Repository | undefined;
  try {
    repo = await Repository.open(c.w.backend, TEST_PASSWORD, { noCache: true });
    return await fn(repo);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    throw new assert.AssertionError({ message: c.say(`${name} threw ${isCofferError(e) ? e.code : (e as Error)?.constructor?.name}: ${(e as Error)?.stack}`) });
  } finally {
    await repo?.close();
  }
}

/**
 * Restores every readable snapshot of `repo`, each into its own directory, and checks what was
 * written: a file under its real name is byte-identical to the backed-up one (nothing is ever
 * restored wrong silently); NAME.damaged, written only by repair snapshots, is a lost file with
 * its size and each byte its own or zero. Restore may fail with CORRUPT only, naming what it
 * could not restore. Returns, per version, the files restored intact and everything named lost.
 */
async function restoreEvery(c: Case, repo: Repository, out: string): Promise<{ found: Array<Set<string>>; named: Named[]; restored: number[] }> {
  const { w, o, say } = c;
  const found = w.versions.map(() => new Set<string>());
  const named: Named[] = [];
  const restored: number[] = [];
  for (const [i, s] of (await readSnapshots(repo)).snapshots.entries()) {
    const version = versionOf(w, s);
    assert.ok(version >= 0, say(`snapshot ${s.id.slice(0, 12)} (tags ${s.snapshot.tags.join(',')}) is none of the versions stored, repaired or recovered`));
    restored.push(version);
    const v = w.versions[version]!;
    const target = join(out, String(i));
    // The snapshot's own host as this one: a recovered snapshot's host is unknown, and the safety check is not what is tested here.
    try {
      await restore(repo, s.snapshot, target, { pool: w.pool, targetHost: s.snapshot.host });
    } catch (e) {
      if (!isCofferError(e, 'CORRUPT')) throw e;
      for (const x of (e.details?.damaged ?? []) as Array<{ path: string }>) named.push({ version, path: x.path });
    }
    for (const [p, content] of await restoredFiles(target)) {
      const from = `restored from ${s.id.slice(0, 12)} (version ${version}${s.snapshot.repairedFrom ? ', repaired' : ''}${s.snapshot.tags.includes('recovered') ? ', recovered' : ''})`;
      if (s.snapshot.repairedFrom && p.endsWith(DAMAGED_SUFFIX)) {
        const orig = p.slice(0, -DAMAGED_SUFFIX.length);
        const want = v.files.get(orig);
        assert.ok(want, say(`${p} ${from} is no file of that version`));
        assert.ok(o.lostFiles[version]!.has(orig), say(`${orig} is readable, yet repair snapshots renamed it ${p}`));
        assert.equal(content.length, want.content.length, say(`${p} ${from} keeps the size of ${orig}`));
        for (let b = 0; b < content.length; b++) if (content[b] !== 0 && content[b] !== want.content[b]) assert.fail(say(`${p} ${from}: byte ${b} is neither the original's nor zero`));
        continue;
      }
      const want = v.files.get(p);
      assert.ok(want, say(`${p} ${from} is no file of that version`));
      assert.ok(content.equals(want.content), say(`${p} ${from} has ${content.length} bytes that differ from the ${want.content.length} stored: restored wrong silently`));
      found[version]!.add(p);
    }
    await rm(target, { recursive: true, force: true });
  }
  return { found, named, restored };
}

async function runCase(w: World, seed: number, t: { diagnostic(m: string): void }): Promise<void> {
  const d = pickDamage(w, seed);
  const damage = async () => {
    await resetState(w);
    if (d.after) await w.backend.put(d.object, d.after);
    else await w.backend.delete(d.object);
  };
  const o = oracle(w, d);
  const lostCount = o.lostFiles.reduce((a, s) => a + s.size, 0);
  const line = `seed ${seed}: ${d.damage} ${d.label} (${d.what}): ${o.lostBlobs.size} blob(s) lost [${[...o.lostBlobs].map((b) => b.slice(0, 8)).join(' ')}], ${lostCount} file(s) lost${o.forgotten !== undefined ? `, snapshot of version ${o.forgotten} deleted (as if forgotten)` : ''}`;
  t.diagnostic(line);
  const c: Case = { w, o, say: (m) => `seed ${seed} (${d.damage} ${d.label}): ${m}` };
  const { say } = c;
  const out = await mkdtemp(join(w.scratch, `seed-${seed}-`));
  try {
    // Before any repair, a restore gives back each file intact or names it (the index may be
    // what is damaged: then files whose data is intact are named too). Restoring records damage
    // in the repository, so the repairs below start again from the damaged state.
    await damage();
    await step(c, 'restore before the repairs', async (repo) => {
      try {
        await repo.loadIndex();
      } catch (e) {
        // An unreadable index file stops every restore until repair index has run.
        if (d.kind !== 'index' || !isCofferError(e, 'CORRUPT')) throw e;
        t.diagnostic(`seed ${seed}: no restore before the repairs: ${e.message}`);
        return;
      }
      const early = await restoreEvery(c, repo, out);
      for (const version of early.restored) {
        for (const p of w.versions[version]!.files.keys()) {
          if (!early.found[version]!.has(p)) assert.ok(isNamed(early.named, version, p), say(`${p} of version ${version} was neither restored nor named by a restore before the repairs`));
        }
      }
    });

    await damage();
    const named: Named[] = [];
    const nameLost = (lost: LostFile[], report: string) => {
      for (const f of lost) {
        const version = w.versions.findIndex((v) => v.id === f.snapshot);
        assert.ok(version >= 0, say(`${report} names a file of snapshot ${f.snapshot.slice(0, 12)}, which is none of the originals`));
        named.push({ version, path: f.what === 'snapshot' ? '/' : f.path });
      }
    };
    const first: CheckResult = await step(c, 'check', async (repo) => {
      if (d.kind === 'config') assert.match(repo.configNote ?? '', /opened with its copy/, say('the damaged config is said to be opened through its copy'));
      return check(repo, { readData: true });
    });
    // A deleted snapshot object is a forgotten snapshot: nothing to notice.
    if (d.kind !== 'config' && o.forgotten === undefined) assert.ok(first.problems.length > 0, say('check --read-data noticed nothing'));
    nameLost((await step(c, 'repair index', (repo) => repairIndex(repo))).lostFiles, 'repair index');
    nameLost((await step(c, 'repair packs', (repo) => repairPacks(repo, w.pool))).lostFiles, 'repair packs');
    nameLost((await step(c, 'repair snapshots', (repo) => repairSnapshots(repo, w.pool))).lostFiles, 'repair snapshots');
    const rc = await step(c, 'repair config', (repo) => repairConfig(repo));
    assert.deepEqual(rc.rewritten, d.kind === 'config' ? [CONFIG_NAME] : [], say('repair config rewrites the config only when it was damaged'));

    // Every snapshot now in the repository: originals, repaired and recovered ones.
    const late = await step(c, 'restore after the repairs', async (repo) => {
      await repo.loadIndex();
      assert.deepEqual((await readSnapshots(repo)).unreadable.map((u) => u.id), [], say('an unreadable snapshot is left after repair snapshots'));
      return restoreEvery(c, repo, out);
    });
    named.push(...late.named);
    for (const [k, v] of w.versions.entries()) {
      if (k === o.forgotten) continue;
      for (const p of v.files.keys()) {
        if (o.lostFiles[k]!.has(p)) {
          assert.ok(!late.found[k]!.has(p), say(`${p} of version ${k} is lost, yet it was restored intact`));
          assert.ok(isNamed(named, k, p), say(`${p} of version ${k} is lost and named by no repair report or restore`));
        } else {
          assert.ok(late.found[k]!.has(p), say(`${p} of version ${k} is readable but no restore brought it back`));
        }
      }
    }

    // After the repairs, check finds no error (what is lost is used by the repaired originals
    // only, a warning) and warns of nothing but lost data: nothing is left to repair or tidy (no
    // damaged, unindexed or missing pack, no damage record, no unreadable index file or snapshot).
    const last = await step(c, 'check after the repairs', (repo) => check(repo, { readData: true }));
    if (last.problems.length) {
      const count = (severity: string) => Object.entries(Object.groupBy(last.problems.filter((p) => p.severity === severity), (p) => p.kind)).map(([k, l]) => `${k}×${l!.length}`).join(' ') || 'none';
      const remains = `seed ${seed}: after the repairs check finds errors: ${count('error')}; warnings: ${count('warning')}`;
      t.diagnostic(remains);
    }
    const unexplained = last.problems.filter((p) => p.severity === 'error' || !(p.blob && (o.lostBlobs.has('data' + p.blob) || o.lostBlobs.has('tree' + p.blob))));
    assert.deepEqual(unexplained.map((p) => `${p.severity} ${p.kind}: ${p.message}`), [], say('check finds more than lost data after the repairs'));
  } finally {
    await rm(out, { recursive: true, force: true });
  }
}

describe('random damage', () => {
  let w: World;
  before(async () => {
    w = await buildWorld();
    console.log(`random damage: ${w.versions.length} snapshots, ${w.objects.pack.length} packs, ${w.objects.index.length} index files, ${w.trees.length} trees; layout ${w.fingerprint}`);
  });
  after(async () => {
    await w?.pool.close();
    await w?.repo.close();
    if (w) await rm(w.scratch, { recursive: true, force: true });
  });

  for (let seed = FIRST_SEED; seed <= LAST_SEED; seed++) {
    it(`after damage seed ${seed}, check, repair and restore bring back every readable file and name every lost one`, async (t) => {
      await runCase(w, seed, t);
    });
  }
});
