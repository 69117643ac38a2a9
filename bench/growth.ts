// Benchmark helper (not a test): where a repository's growth goes. For each pair of consecutive
// snapshots it sums the stored bytes (after compression) of the blobs that the later snapshot's
// changed or added files reference and no earlier snapshot did, grouped by a path pattern, with
// the chunk counts. It answers "which files cost what per backup" (for example a database file
// rewritten in place against the logs appended to), for choosing chunk sizes.
//
//   COFFER_PASSWORD=... node bench/growth.ts REPO_DIR [--group 'db=/db/' --group 'logs=/logs/' ...] [--json]
//
// A path is counted in the first group whose pattern (a regular expression) it matches, else in
// "other". The default groups fit the shared benchmark's data set (shared/bench/lib/dataset.mjs).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openBackend } from '../src/storage/url.ts';
import { Repository } from '../src/repository/repository.ts';
import { loadAllSnapshots } from '../src/repository/snapshot.ts';
import { diffTrees } from '../src/jobs/browse.ts';
import { loadTree } from '../src/repository/walk.ts';
import { fromHex } from '../src/engine/hash.ts';

const DEFAULT_GROUPS = ['db=/work/db/', 'logs=/work/logs/', 'new-docs=/work/files/inbox/', 'docs=/work/files/', 'exports=/work/exports/', 'sys=/sys/'];

const { values, positionals } = parseArgs({ allowPositionals: true, options: { group: { type: 'string', multiple: true }, json: { type: 'boolean' } } });
if (positionals.length !== 1) {
  console.error('usage: node bench/growth.ts REPO_DIR [--group name=regexp ...] [--json]   (password in COFFER_PASSWORD)');
  process.exit(2);
}
const groups = (values.group ?? DEFAULT_GROUPS).map((g) => {
  const at = g.indexOf('=');
  if (at < 1) throw new Error(`bad --group ${JSON.stringify(g)}: give name=regexp`);
  return { name: g.slice(0, at), re: new RegExp(g.slice(at + 1)) };
});
const groupOf = (path: string) => groups.find((g) => g.re.test(path))?.name ?? 'other';

const cache = mkdtempSync(join(tmpdir(), 'coffer-growth-'));
const backend = await openBackend(positionals[0]!);
const repo = await Repository.open(backend, process.env.COFFER_PASSWORD ?? '', { cacheDir: cache });
try {
  await repo.loadIndex();
  const snaps = await loadAllSnapshots(repo);
  const stored = (id: string) => repo.index.lookup(fromHex(id))?.entry.length ?? 0;
  // Every data blob seen so far, so that a blob is counted once, where it first appears.
  const seen = new Set<string>();
  const rows: Record<string, unknown>[] = [];
  const visit = async (tree: string) => {
    for (const n of (await loadTree(repo, tree)).nodes) {
      if (n.type === 'dir') await visit(n.subtree!);
      else for (const id of n.content ?? []) seen.add(id);
    }
  };
  for (let i = 1; i < snaps.length; i++) {
    if (i === 1) await visit(snaps[0]!.snapshot.tree);
    const per = new Map<string, { files: number; chunks: number; newChunks: number; newBytes: number }>();
    for await (const d of diffTrees(repo, snaps[i - 1]!.snapshot.tree, snaps[i]!.snapshot.tree)) {
      const n = d.after;
      if (!n || n.type !== 'file') continue;
      const g = groupOf(d.path);
      const row = per.get(g) ?? { files: 0, chunks: 0, newChunks: 0, newBytes: 0 };
      row.files++;
      for (const id of n.content ?? []) {
        row.chunks++;
        if (seen.has(id)) continue;
        seen.add(id);
        row.newChunks++;
        row.newBytes += stored(id);
      }
      per.set(g, row);
    }
    for (const [group, r] of [...per].sort((a, b) => b[1].newBytes - a[1].newBytes)) rows.push({ backup: i + 1, group, ...r });
  }
  if (values.json) console.log(JSON.stringify(rows));
  else {
    console.log('| backup | group | changed files | chunks | new chunks | new MB stored |');
    console.log('| ---: | --- | ---: | ---: | ---: | ---: |');
    for (const r of rows) console.log(`| ${r.backup} | ${r.group} | ${r.files} | ${r.chunks} | ${r.newChunks} | ${((r.newBytes as number) / 1e6).toFixed(2)} |`);
  }
} finally {
  await repo.close();
  await backend.close();
  rmSync(cache, { recursive: true, force: true });
}
