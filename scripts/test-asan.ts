// `npm run test:asan`: the tests that call the native addon, run against its AddressSanitizer
// build (scripts/build-native-asan.ts, built first). Node.js itself is not instrumented, so the
// ASan runtime is preloaded (LD_PRELOAD of gcc's libasan.so) and the loader is pointed at the
// ASan build with COFFER_NATIVE_PATH; leak detection is off (Node.js keeps memory until exit by
// design). An ASan report aborts the test process, which fails the run. CI (.ci/run) runs this
// once when a C compiler is there. Extra arguments are passed to `node --test`.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, globSync } from 'node:fs';
import { join } from 'node:path';
import { ASAN_MODULE_PATH } from './build-native-asan.ts';

const ROOT = join(import.meta.dirname, '..');

const FILES = ['src/engine/*.test.ts', 'src/sources/*.test.ts', 'test/{scan,sparse,no-addon}.test.ts'];

/** gcc's ASan runtime, or undefined (with the reason printed) when there is none. */
function libasan(): string | undefined {
  let path: string;
  try {
    path = execFileSync(process.env.CC || 'gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).trim();
  } catch (e) {
    console.error(`test:asan: no C compiler to ask for libasan.so (${(e as Error).message})`);
    return undefined;
  }
  if (!path.startsWith('/') || !existsSync(path)) {
    console.error(`test:asan: gcc has no libasan.so (got ${JSON.stringify(path)}); on Debian it comes with gcc (package libasan8)`);
    return undefined;
  }
  return path;
}

const lib = libasan();
if (!lib) process.exit(1);
const build = spawnSync(process.execPath, [join(ROOT, 'scripts', 'build-native-asan.ts')], { cwd: ROOT, stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);

const files = FILES.flatMap((pattern) => globSync(pattern, { cwd: ROOT })).sort();
console.log(`test:asan: ${files.length} files against ${ASAN_MODULE_PATH} with LD_PRELOAD=${lib}`);
const run = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=300000', ...process.argv.slice(2), ...files], {
  cwd: ROOT,
  stdio: 'inherit',
  env: {
    ...process.env,
    COFFER_NATIVE: '',
    COFFER_NATIVE_PATH: ASAN_MODULE_PATH,
    LD_PRELOAD: lib,
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=0:exitcode=86',
  },
});
process.exit(run.status ?? 1);
