// `npm run test:no-addon`: the data-path tests once more with the native addon disabled
// (COFFER_NATIVE=0, checked by the one loader in src/engine/addon.ts), as on a machine where
// `npm ci` found no C compiler. CI (.ci/run) runs it after `npm test`. The data path is the
// engine, repository, sources and agent layers of src/ and the test/ files about backup, restore,
// scanning, sparse files, the repository and the repo CLI; the rest (catalog, server, policy,
// storage backends) does not touch the addon.
//
// Tests that exist to check what only the addon does are left out by name below, each with the
// reason; nothing is skipped. The portable path itself is checked in both runs by
// test/no-addon.test.ts (and test/scan.test.ts, src/engine/compress.test.ts assert the fallback
// when the addon is disabled). Extra arguments are passed to `node --test`.
import { spawnSync } from 'node:child_process';
import { globSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..');

const FILES = [
  'src/{core,engine,repository,sources,agent,node}/**/*.test.ts',
  'test/{backup,restore,restore-temps,restore-fallback,scan,sparse,repository,cli,compare,no-addon}.test.ts',
];

/** Whole files about the addon itself. */
const LEFT_OUT_FILES = new Set([
  // The addon's own contract (zstd frames, argument ranges), called directly.
  'src/engine/addon-binding.test.ts',
  // xattrs, ACLs, nanosecond times of symlinks, device nodes and SEEK_DATA through the addon;
  // its "missing addon" cases load a missing path explicitly and run in npm test.
  'src/sources/metadata.test.ts',
]);

/** Tests (by name) whose setup or subject needs the addon. */
const LEFT_OUT_TESTS = [
  // Set an extended attribute with the addon to see it backed up or restored.
  'a directory backed up with paths below it stores them all',
  'if-changed restores the mode, owner and xattrs of entries it leaves in place',
  'restores modes, owners, exact times, directory times, xattrs, FIFOs',
  // Asserts a restored mtime to the nanosecond (node:fs sets times to about a microsecond).
  'if-changed judges by size and mtime; compare: content finds a flipped byte',
  // Compare restored trees with their mtimes to the microsecond, which node:fs's float seconds
  // miss by one now and then (src/node/node-restore.test.ts).
  'a remote restore reproduces the files byte for byte, with modes and times',
  'the host pre-flight refuses another host\'s data over this host\'s own files',
  // Check that holes found by SEEK_DATA are not read (three chunkings).
  'only the data is read, and the chunks are those of a full read',
];

const files = FILES.flatMap((pattern) => globSync(pattern, { cwd: ROOT })).filter((f) => !LEFT_OUT_FILES.has(f)).sort();
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const args = [
  '--test',
  '--test-concurrency=2',
  '--test-timeout=300000',
  ...LEFT_OUT_TESTS.map((name) => `--test-skip-pattern=${escape(name)}`),
  ...process.argv.slice(2),
  ...files,
];
console.log(`test:no-addon: ${files.length} files with COFFER_NATIVE=0, ${LEFT_OUT_FILES.size} files and ${LEFT_OUT_TESTS.length} test names left out (see ${join('scripts', 'test-no-addon.ts')})`);
const run = spawnSync(process.execPath, args, { cwd: ROOT, stdio: 'inherit', env: { ...process.env, COFFER_NATIVE: '0' } });
process.exit(run.status ?? 1);
