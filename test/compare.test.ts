// compareRestored() (src/jobs/compare.ts), the check of a restore test, on a real repository and
// real files: a faithful restore compares clean (a sparse file, an empty file, a symlink, a name
// that is not UTF-8 included); then each way a restored tree can differ from its snapshot is
// named with its path: a flipped byte, a file cut short or grown, one missing, a symlink pointing
// elsewhere, a directory replaced by a file. A sample compares only the paths given.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, open, rm, symlink, truncate, unlink, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { compareRestored } from '../src/jobs/compare.ts';
import { backup, restore } from '../src/testing/jobs.ts';
import { makeTestRepo } from '../src/testing/repo.ts';
import { randomBytes } from '../src/testing/random.ts';
import { tempDir } from '../src/testing/tmp.ts';

test('compareRestored() passes a faithful restore and names every entry that differs from the snapshot', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'sub', 'deep'), { recursive: true });
  await writeFile(join(src, 'big.bin'), randomBytes(5, 700_000));
  await writeFile(join(src, 'empty'), '');
  await writeFile(join(src, 'sub', 'small.txt'), 'small\n');
  await writeFile(join(src, 'sub', 'deep', 'tail.bin'), randomBytes(6, 90_000));
  await symlink('sub/small.txt', join(src, 'link'));
  await writeFile(Buffer.from(`${src}/caf\xe9.txt`, 'latin1'), 'not utf-8\n');
  const sparse = await open(join(src, 'sparse.img'), 'w');
  await sparse.write(Buffer.from('end'), 0, 3, 4 << 20);
  await sparse.close();
  const tr = await makeTestRepo();
  t.after(() => tr.close());
  const { snapshot } = await backup(tr.repo, tr.pool, [src]);
  const out = join(dir, 'out');
  await restore(tr.repo, snapshot, out);
  const at = (...p: string[]) => join(out, src, ...p);

  const clean = await compareRestored(tr.repo, snapshot.tree, out);
  assert.deepEqual(clean.mismatches, []);
  assert.equal(clean.files, 6);
  assert.equal(clean.bytes, 700_000 + 6 + 90_000 + 10 + (4 << 20) + 3);

  // Each kind of difference, named with its path in the snapshot.
  const flip = await open(at('big.bin'), 'r+');
  await flip.write(Buffer.from([0xff]), 0, 1, 500_000);
  await flip.close();
  await truncate(at('sub', 'deep', 'tail.bin'), 89_999);
  await appendFile(at('sub', 'small.txt'), 'x');
  await unlink(at('empty'));
  await unlink(at('link'));
  await symlink('elsewhere', at('link'));
  const r = await compareRestored(tr.repo, snapshot.tree, out);
  const by = Object.fromEntries(r.mismatches.map((m) => [m.path.slice(src.length), m.problem]));
  assert.match(by['/big.bin']!, /^differs from the snapshot in bytes \d+-\d+ \(chunk [0-9a-f]{12}\)$/);
  assert.equal(by['/sub/deep/tail.bin'], 'has 89999 bytes; the snapshot has 90000');
  assert.equal(by['/sub/small.txt'], 'has 7 bytes; the snapshot has 6');
  assert.equal(by['/empty'], 'was not restored (it does not exist)');
  assert.equal(by['/link'], 'points to "elsewhere"; the snapshot says "sub/small.txt"');
  assert.equal(r.mismatchCount, 5);
  assert.equal(r.files, 2, 'the sparse file and the one not named in UTF-8 compared clean');

  // A sample: only the paths given, found through the snapshot's trees.
  const sample = await compareRestored(tr.repo, snapshot.tree, out, { paths: [`${src}/sparse.img`, `${src}/big.bin`] });
  assert.deepEqual([sample.files, sample.mismatchCount, sample.mismatches[0]?.path], [1, 1, `${src}/big.bin`]);

  // A directory that is a file now: named once, and what was below it is missing.
  await rm(at('sub'), { recursive: true });
  await writeFile(at('sub'), 'not a directory');
  const gone = await compareRestored(tr.repo, snapshot.tree, out, { maxMismatches: 2 });
  assert.equal(gone.mismatches[0]!.path, `${src}/big.bin`);
  assert.equal(gone.mismatches.length, 2, 'at most maxMismatches are kept');
  assert.ok(gone.mismatchCount >= 5, 'all are counted');
});
