// Repairs (issue #8): `repo repair index|packs|snapshots|config` keep everything that can still be
// read, quarantine damaged objects instead of deleting them, change nothing in a dry run, and
// name every file that was lost.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { isCofferError } from '../src/core/errors.ts';
import { listAll, type Backend } from '../src/storage/backend.ts';
import { backup } from '../src/testing/jobs.ts';
import { restore } from '../src/testing/jobs.ts';
import { check } from '../src/repository/check.ts';
import { fromHex, toHex } from '../src/engine/hash.ts';
import { CONFIG_COPY_NAME, CONFIG_NAME, DATA_PREFIX, INDEX_PREFIX, QUARANTINE_PREFIX, SNAPSHOTS_PREFIX, packName } from '../src/repository/layout.ts';
import { loadDamage } from '../src/repository/damage.ts';
import { repairConfig, repairIndex, repairPacks, repairSnapshots } from '../src/repository/repair.ts';
import { Repository } from '../src/repository/repository.ts';
import { readSnapshots } from '../src/repository/snapshot.ts';
import type { TreeNode } from '../src/repository/tree.ts';
import { walkTree } from '../src/repository/walk.ts';
import { makeTestRepo, TEST_PASSWORD, type TestRepo } from '../src/testing/repo.ts';
import { tempDir } from '../src/testing/tmp.ts';
import { randomBytes } from '../src/testing/random.ts';
import { listTree } from './helpers.ts';

/** Twelve files of 20-60 kB and one of 400 kB, in packs of 64 KiB. */
async function setup(t: { after(fn: () => unknown): void }): Promise<{ dir: string; src: string; tr: TestRepo }> {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  for (let i = 0; i < 12; i++) await writeFile(join(src, `f${i}`), randomBytes(300 + i, 20_000 + i * 3_500));
  await writeFile(join(src, 'big'), randomBytes(399, 400_000));
  const tr = await makeTestRepo({ packSize: 64 * 1024 });
  t.after(() => tr.close());
  await backup(tr.repo, tr.pool, [src]);
  return { dir, src, tr };
}

async function names(backend: Backend, prefix = ''): Promise<string[]> {
  return (await listAll(backend, prefix)).map((o) => o.name).filter((n) => !n.startsWith('sessions/')).sort();
}

async function largestPack(backend: Backend): Promise<{ name: string; size: number }> {
  return (await listAll(backend, DATA_PREFIX)).sort((a, b) => b.size - a.size)[0]!;
}

/** Restores the newest snapshot into `out` and compares it with `src`: every file is intact or named lost. */
async function restoreAndCompare(repo: Repository, src: string, out: string, lost: Set<string>): Promise<{ restored: number; failed: string[] }> {
  const { snapshots } = await readSnapshots(repo);
  const snap = snapshots.at(-1)!;
  await repo.loadIndex();
  let failed: string[] = [];
  try {
    await restore(repo, snap.snapshot, out);
  } catch (e) {
    if (!isCofferError(e, 'CORRUPT')) throw e;
    failed = ((e.details?.damaged ?? []) as Array<{ path: string }>).map((d) => d.path.split('/').at(-1)!);
  }
  const want = await listTree(src);
  const got = await listTree(join(out, ...src.split('/').filter(Boolean)));
  for (const [name, e] of want) {
    if (got.has(name)) assert.deepEqual(got.get(name), e, `${name} restored wrong`);
    else assert.ok(lost.has(name) || failed.includes(name), `${name} neither restored nor named as lost`);
  }
  return { restored: got.size, failed };
}

/** The chunks of the file `name` of the newest snapshot: id, pack, offset in the pack and in the file, length. */
async function chunksOf(tr: TestRepo, name: string): Promise<Array<{ id: string; pack: string; packOffset: number; stored: number; at: number; length: number }>> {
  const snap = (await readSnapshots(tr.repo)).snapshots.at(-1)!;
  let node: TreeNode | undefined;
  await walkTree(tr.repo, snap.snapshot.tree, { node: (p, n) => void (p.endsWith(`/${name}`) && (node = n)) });
  let at = 0;
  return node!.content!.map((id) => {
    const hit = tr.repo.index.lookup(fromHex(id), 'data')!;
    const c = { id, pack: toHex(hit.packId), packOffset: hit.entry.offset, stored: hit.entry.length, at, length: hit.entry.rawLength };
    at += c.length;
    return c;
  });
}

/** Check, repair packs, repair snapshots (the order check advises), then the repaired snapshot's NAME.damaged. */
async function repairAndRestoreDamaged(tr: TestRepo, src: string, out: string, name: string): Promise<Buffer> {
  await check(await tr.reopen(), { readData: true });
  await repairPacks(await tr.reopen(), tr.pool);
  await repairSnapshots(await tr.reopen(), tr.pool);
  const r = await tr.reopen();
  await r.loadIndex();
  const fixed = (await readSnapshots(r)).snapshots.at(-1)!;
  assert.ok(fixed.snapshot.repairedFrom);
  await restore(r, fixed.snapshot, out);
  return readFile(join(out, ...src.split('/').filter(Boolean), `${name}.damaged`));
}

describe('repair', () => {
  it('repair index keeps the blobs of a pack whose trailer is gone, each verified, and names only the files whose data is gone', async (t) => {
    const { dir, src, tr } = await setup(t);
    const victim = await largestPack(tr.backend);
    const bytes = await tr.backend.get(victim.name);
    await tr.backend.put(victim.name, bytes.subarray(0, Math.floor(bytes.length / 2)));
    const oldIndex = await names(tr.backend, INDEX_PREFIX);

    const dry = await repairIndex(await tr.reopen(), { dryRun: true });
    assert.equal(dry.damagedPacks.length, 1);
    assert.deepEqual(await names(tr.backend, INDEX_PREFIX), oldIndex, 'a dry run writes nothing');

    const r = await tr.reopen();
    const res = await repairIndex(r);
    assert.equal(res.damagedPacks.length, 1);
    const d = res.damagedPacks[0]!;
    assert.ok(d.blobsKept > 0 && d.blobsKept < d.blobsKnown, `kept ${d.blobsKept} of ${d.blobsKnown}: the front half reads, the rest does not`);
    assert.ok(res.lostFileCount >= 1 && res.lostFiles.every((f) => f.what === 'data'));
    assert.deepEqual(dry.lostFiles, res.lostFiles, 'the dry run named the same files');
    const newIndex = await names(tr.backend, INDEX_PREFIX);
    assert.ok(newIndex.length > 0 && oldIndex.every((n) => !newIndex.includes(n)), 'the old index files are gone, the new ones in place');
    const lost = new Set(res.lostFiles.map((f) => f.path.split('/').at(-1)!));
    const { restored, failed } = await restoreAndCompare(await tr.reopen(), src, join(dir, 'out'), lost);
    assert.deepEqual(failed.sort(), [...lost].sort(), 'the restore fails exactly for the files the repair named');
    assert.equal(restored, 13 - lost.size);
  });

  it('repair index takes a pack whose header claims a newer version for damaged, and names what it held as lost', async (t) => {
    const { tr } = await setup(t);
    const victim = await largestPack(tr.backend);
    const bytes = await tr.backend.get(victim.name);
    bytes[8] = 86; // the pack header's version byte
    await tr.backend.put(victim.name, bytes);
    const res = await repairIndex(await tr.reopen());
    assert.deepEqual(res.damagedPacks.map((d) => [d.pack, d.blobsKept]), [[victim.name.split('/').at(-1), 0]]);
    assert.match(res.damagedPacks[0]!.error, /version 86/);
    assert.ok(res.lostFileCount >= 1);
  });

  it('an unreadable index file is left out by backups and restores (with a notice), not the end of them; repair index then finds nothing lost', async (t) => {
    const { dir, src, tr } = await setup(t);
    const [idx] = await names(tr.backend, INDEX_PREFIX);
    await tr.backend.put(idx!, randomBytes(6, 700));
    const r = await tr.reopen();
    await assert.rejects(r.loadIndex(), (e) => isCofferError(e, 'CORRUPT'), 'strict by default (prune must see every index file)');
    const notices: string[] = [];
    const b = await backup(r, tr.pool, [src], { onNotice: (m) => notices.push(m) });
    assert.ok(notices.some((m) => /index file .* is unreadable .* left out/.test(m)));
    assert.ok(b.summary.bytesNew > 0, 'what only that file knew is stored again');
    const r2 = await tr.reopen();
    const res = await restore(r2, b.snapshot, join(dir, 'out'));
    assert.ok(res.notices.some((m) => /index file .* is unreadable/.test(m)));
    assert.deepEqual(await listTree(join(dir, 'out', ...src.split('/').filter(Boolean))), await listTree(src));
    const rep = await repairIndex(await tr.reopen());
    assert.equal(rep.lostFileCount, 0);
  });

  it('repair index moves an unreadable index file to quarantine and loses nothing', async (t) => {
    const { dir, src, tr } = await setup(t);
    const [idx] = await names(tr.backend, INDEX_PREFIX);
    await tr.backend.put(idx!, randomBytes(5, 500));
    const res = await repairIndex(await tr.reopen());
    assert.deepEqual(res.indexFilesQuarantined, [idx!.slice(INDEX_PREFIX.length)]);
    assert.equal(res.lostFileCount, 0);
    assert.ok((await names(tr.backend, QUARANTINE_PREFIX)).includes(QUARANTINE_PREFIX + idx));
    const c = await check(await tr.reopen(), { readData: true });
    assert.ok(c.ok, JSON.stringify(c.problems));
    await restoreAndCompare(await tr.reopen(), src, join(dir, 'out'), new Set());
  });

  it('repair packs salvages the readable blobs of a damaged pack, quarantines it, retires its damage records and names what is lost', async (t) => {
    const { dir, src, tr } = await setup(t);
    const victim = await largestPack(tr.backend);
    const bytes = Buffer.from(await tr.backend.get(victim.name));
    bytes[200] ^= 0x20; // one blob damaged, the rest readable
    await tr.backend.put(victim.name, bytes);
    const c1 = await check(await tr.reopen(), { readData: true });
    assert.ok(c1.damageRecorded, 'check recorded the damage');

    const before = await names(tr.backend);
    const dry = await repairPacks(await tr.reopen(), tr.pool, { dryRun: true });
    assert.deepEqual(await names(tr.backend), before, 'a dry run writes nothing');
    const res = await repairPacks(await tr.reopen(), tr.pool);
    assert.deepEqual(res.packs.map((p) => [p.pack, p.quarantined]), [[victim.name.split('/').at(-1), true]]);
    const line = res.packs[0]!;
    assert.equal(line.lost, 1);
    assert.equal(line.salvaged + line.elsewhere + line.lost, line.blobs);
    assert.equal(dry.packs[0]!.lost, 1);
    assert.equal(res.damageRecordsRetired, 1);
    assert.ok((await names(tr.backend, QUARANTINE_PREFIX)).includes(QUARANTINE_PREFIX + victim.name), 'the damaged pack is kept in quarantine/');
    assert.equal(res.lostFileCount, 1);
    const lost = new Set(res.lostFiles.map((f) => f.path.split('/').at(-1)!));
    const c2 = await check(await tr.reopen(), { readData: true });
    assert.deepEqual(c2.problems.filter((p) => p.severity === 'error').map((p) => p.kind), ['blob-missing'], 'only the lost blob is left to say');
    await restoreAndCompare(await tr.reopen(), src, join(dir, 'out'), lost);
    // Once repaired, there is nothing more to repair.
    assert.deepEqual((await repairPacks(await tr.reopen(), tr.pool)).packs, []);
  });

  it('a pack damaged only in its footer is recorded by check, and repair packs takes it out of use losing nothing', async (t) => {
    const { dir, src, tr } = await setup(t);
    const victim = await largestPack(tr.backend);
    const bytes = await tr.backend.get(victim.name);
    bytes[bytes.length - 3]! ^= 0x10; // the footer's end magic: every blob still reads
    await tr.backend.put(victim.name, bytes);
    const c1 = await check(await tr.reopen(), { readData: true });
    assert.ok(c1.ok, 'no data is lost');
    // It used to go unrecorded (no blob is damaged), so repair packs found nothing to do.
    assert.ok(c1.damageRecorded, 'check recorded the damaged pack');
    const res = await repairPacks(await tr.reopen(), tr.pool);
    assert.deepEqual(res.packs.map((p) => [p.pack, p.lost, p.salvaged === p.blobs, p.quarantined]), [[victim.name.split('/').at(-1), 0, true, true]]);
    const c2 = await check(await tr.reopen(), { readData: true });
    assert.deepEqual(c2.problems, [], 'nothing is left to say');
    await restoreAndCompare(await tr.reopen(), src, join(dir, 'out'), new Set());
  });

  it('repair packs quarantines a damaged pack that repair index dropped from the index, and retires the records of packs gone', async (t) => {
    const { tr } = await setup(t);
    const [garbled, deleted] = (await listAll(tr.backend, DATA_PREFIX)).sort((a, b) => b.size - a.size);
    await tr.backend.put(garbled!.name, randomBytes(7, garbled!.size)); // nothing in it reads
    await tr.backend.delete(deleted!.name);
    await check(await tr.reopen(), { readData: true });
    await repairIndex(await tr.reopen()); // drops both packs from the index
    const res = await repairPacks(await tr.reopen(), tr.pool);
    assert.deepEqual(res.packs.map((p) => [p.pack, p.quarantined]).sort(), [[garbled!.name.split('/').at(-1), true], [deleted!.name.split('/').at(-1), false]].sort());
    assert.ok(res.damageRecordsRetired >= 1);
    // What remains of the damage records only keeps the lengths of the lost blobs (for repair snapshots).
    const left = await loadDamage(await tr.reopen());
    assert.equal(left.byPack().size, 0, 'no damage left to act on');
    assert.ok(left.entries.every((e) => e.lost && e.blobs!.every((b) => b.rawLength !== undefined)), 'only lost blobs with their lengths');
    assert.ok((await names(tr.backend, QUARANTINE_PREFIX)).includes(QUARANTINE_PREFIX + garbled!.name));
    // What is left are the lost files: no unindexed pack, no damage record to act on.
    await repairSnapshots(await tr.reopen(), tr.pool);
    const c = await check(await tr.reopen(), { readData: true });
    assert.deepEqual(c.problems.filter((p) => p.kind !== 'blob-missing').map((p) => p.kind), []);
  });

  it('repair snapshots renames what is lost to NAME.damaged (zero-filled), keeps everything else, and runs once', async (t) => {
    const { dir, src, tr } = await setup(t);
    const victim = await largestPack(tr.backend);
    await tr.backend.delete(victim.name);
    await check(await tr.reopen());
    const original = (await readSnapshots(tr.repo)).snapshots[0]!;

    const dry = await repairSnapshots(await tr.reopen(), tr.pool, { dryRun: true });
    assert.equal(dry.repaired.length, 1);
    assert.equal((await readSnapshots(await tr.reopen())).snapshots.length, 1, 'a dry run writes nothing');

    const res = await repairSnapshots(await tr.reopen(), tr.pool);
    assert.equal(res.repaired.length, 1);
    assert.ok(res.lostFileCount >= 1);
    const lost = new Set(res.lostFiles.map((f) => f.path.split('/').at(-1)!));
    const r = await tr.reopen();
    const { snapshots } = await readSnapshots(r);
    assert.equal(snapshots.length, 2);
    const fixed = snapshots.at(-1)!;
    assert.equal(fixed.snapshot.repairedFrom, original.id, 'latest is the repaired one');
    assert.ok(fixed.snapshot.tags.includes('repaired'));
    await r.loadIndex();
    const out = join(dir, 'out');
    const result = await restore(r, fixed.snapshot, out);
    assert.ok(result.warnings.some((w) => /restored from a repaired snapshot/.test(w.problem)), 'a repaired entry is never restored silently');
    const want = await listTree(src);
    const got = await listTree(join(out, ...src.split('/').filter(Boolean)));
    for (const [name, e] of want) {
      if (!lost.has(name)) assert.deepEqual(got.get(name), e, `${name} is intact`);
      else {
        assert.ok(!got.has(name), `${name} is not restored under its own name`);
        assert.equal(got.get(name + '.damaged')?.size, e.size, `${name}.damaged keeps the size, zero-filled`);
      }
    }
    // Nothing left to repair; --forget then removes the original.
    const again = await repairSnapshots(await tr.reopen(), tr.pool);
    assert.equal(again.repaired.length, 0);
    const c = await check(await tr.reopen());
    assert.ok(c.ok, 'only the original (repaired) uses lost data: warnings');
    const forgot = await repairSnapshots(await tr.reopen(), tr.pool, { forget: true });
    assert.deepEqual(forgot.repaired.map((x) => x.forgotten), [true]);
    assert.deepEqual((await readSnapshots(await tr.reopen())).snapshots.map((s) => s.id), [fixed.id]);
  });

  it('repair snapshots quarantines an unreadable snapshot object and recovers its tree as a snapshot that restores whole', async (t) => {
    const { dir, src, tr } = await setup(t);
    const [snapName] = await names(tr.backend, SNAPSHOTS_PREFIX);
    await tr.backend.put(snapName!, randomBytes(9, 400));
    const res = await repairSnapshots(await tr.reopen(), tr.pool);
    assert.deepEqual(res.unreadable.map((u) => [u.snapshot, u.quarantined]), [[snapName!.slice(SNAPSHOTS_PREFIX.length), true]]);
    assert.equal(res.recovered.length, 1);
    const r = await tr.reopen();
    const { snapshots, unreadable } = await readSnapshots(r);
    assert.equal(unreadable.length, 0);
    assert.deepEqual(snapshots.map((s) => s.snapshot.tags), [['recovered']]);
    await r.loadIndex();
    const out = join(dir, 'out');
    await restore(r, snapshots[0]!.snapshot.tree, out);
    assert.deepEqual(await listTree(join(out, ...src.split('/').filter(Boolean))), await listTree(src));
  });

  it('repair snapshots after repair packs zero-fills a run of lost chunks that the index no longer knows, keeping the file\'s size and its readable chunks', async (t) => {
    const { dir, src, tr } = await setup(t);
    const chunks = await chunksOf(tr, 'big');
    // A pack holding two or more of big's chunks (neighbours, as a backup writes them), not all of them.
    const victim = [...new Set(chunks.map((c) => c.pack))].find((p) => {
      const n = chunks.filter((c) => c.pack === p).length;
      return n >= 2 && n < chunks.length;
    })!;
    assert.ok(victim, 'a pack holds a run of big\'s chunks');
    await tr.backend.delete(packName(victim));
    // Repair packs drops the lost blobs from the index: repair snapshots no longer knows their lengths.
    const got = await repairAndRestoreDamaged(tr, src, join(dir, 'out'), 'big');
    const want = randomBytes(399, 400_000);
    assert.equal(got.length, want.length, 'big.damaged keeps the size of big');
    for (const c of chunks) {
      const part = got.subarray(c.at, c.at + c.length);
      if (c.pack === victim) assert.ok(part.every((b) => b === 0), `lost chunk at ${c.at} is zero-filled`);
      else assert.ok(part.equals(want.subarray(c.at, c.at + c.length)), `readable chunk at ${c.at} is kept in place`);
    }
  });

  it('repair snapshots after repair packs keeps the readable chunks between two lost ones in place', async (t) => {
    const { dir, src, tr } = await setup(t);
    const chunks = await chunksOf(tr, 'big');
    // Damage chunks 1 and 3: chunk 2 between them still reads.
    for (const c of [chunks[1]!, chunks[3]!]) {
      const bytes = await tr.backend.get(packName(c.pack));
      bytes[c.packOffset + Math.floor(c.stored / 2)]! ^= 0x40;
      await tr.backend.put(packName(c.pack), bytes);
    }
    const got = await repairAndRestoreDamaged(tr, src, join(dir, 'out'), 'big');
    const want = randomBytes(399, 400_000);
    assert.equal(got.length, want.length, 'big.damaged keeps the size of big');
    const c2 = chunks[2]!;
    assert.ok(got.subarray(c2.at, c2.at + c2.length).equals(want.subarray(c2.at, c2.at + c2.length)), 'the readable chunk between the lost ones is kept in place');
  });

  it('a config whose version byte is damaged (it claims a newer format than its copy) opens through its copy, and repair config rewrites it', async (t) => {
    const { tr } = await setup(t);
    const good = await tr.backend.get(CONFIG_NAME);
    const newer = Buffer.from(good);
    newer[8] = 86; // the envelope's version byte
    await tr.backend.put(CONFIG_NAME, newer);
    const r = await Repository.open(tr.backend, TEST_PASSWORD, { noCache: true });
    assert.match(r.configNote ?? '', /config object is damaged \(.*format version 86.*its copy is of this version\); opened with its copy/);
    assert.deepEqual((await repairConfig(r)).rewritten, [CONFIG_NAME]);
    await r.close();
    assert.deepEqual(await tr.backend.get(CONFIG_NAME), good);
    // The same damage to the copy: repair config finds and rewrites it.
    await tr.backend.put(CONFIG_COPY_NAME, newer);
    const r2 = await Repository.open(tr.backend, TEST_PASSWORD, { noCache: true });
    assert.equal(r2.configNote, undefined);
    assert.deepEqual((await repairConfig(r2)).rewritten, [CONFIG_COPY_NAME]);
    await r2.close();
    // Both of a newer format: that is a newer repository, not damage.
    await tr.backend.put(CONFIG_NAME, newer);
    await tr.backend.put(CONFIG_COPY_NAME, newer);
    await assert.rejects(Repository.open(tr.backend, TEST_PASSWORD, { noCache: true }), (e) => isCofferError(e, 'UNSUPPORTED'));
  });

  it('a damaged config opens through its copy, says so, and repair config rewrites it; with both damaged the error says how to restore it', async (t) => {
    const { tr } = await setup(t);
    const good = await tr.backend.get(CONFIG_NAME);
    await tr.backend.put(CONFIG_NAME, randomBytes(3, good.length));
    const r = await Repository.open(tr.backend, TEST_PASSWORD, { noCache: true });
    assert.match(r.configNote ?? '', /config object is damaged.*opened with its copy config\.copy/);
    const dry = await repairConfig(r, { dryRun: true });
    assert.deepEqual(dry.rewritten, [CONFIG_NAME]);
    const res = await repairConfig(r);
    assert.deepEqual(res.rewritten, [CONFIG_NAME]);
    await r.close();
    assert.deepEqual(await tr.backend.get(CONFIG_NAME), good);
    assert.ok((await names(tr.backend, QUARANTINE_PREFIX)).includes(QUARANTINE_PREFIX + CONFIG_NAME));
    const r2 = await Repository.open(tr.backend, TEST_PASSWORD, { noCache: true });
    assert.equal(r2.configNote, undefined);
    await r2.close();
    await tr.backend.put(CONFIG_NAME, randomBytes(3, 10));
    await tr.backend.delete(CONFIG_COPY_NAME);
    await assert.rejects(Repository.open(tr.backend, TEST_PASSWORD, { noCache: true }), (e) => isCofferError(e, 'CORRUPT') && /and its copy too/.test(e.message) && /copy the file `config` from any copy/.test(e.hint ?? ''));
  });
});
