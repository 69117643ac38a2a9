// `npm run build:native:asan`: a second copy of the native addon built with AddressSanitizer
// (-fsanitize=address -fno-omit-frame-pointer) into native/asan/build/Release/, apart from the
// normal build. scripts/test-asan.ts runs the addon's tests against it; CI does so once per run
// when a C compiler is there. The copy gets its own binding.gyp (the same source, other flags)
// because node-gyp always builds into build/ next to the binding.gyp it is given.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..');
/** Where the ASan build goes; the loader takes it through COFFER_NATIVE_PATH. */
export const ASAN_DIR = join(ROOT, 'native', 'asan');
export const ASAN_MODULE_PATH = join(ASAN_DIR, 'build', 'Release', 'coffer_native.node');

const FLAGS = ['-fsanitize=address', '-fno-omit-frame-pointer'];

function binding(): string {
  const target = {
    target_name: 'coffer_native',
    sources: ['../../src/native/coffer_native.c', '../../src/native/codec.c'],
    // -O1 -g: ASan's usual settings, so that reports name lines.
    cflags: ['-std=gnu11', '-Wall', '-Wextra', '-Wno-unused-parameter', '-O1', '-g', ...FLAGS],
    ldflags: FLAGS,
  };
  return `# Written by scripts/build-native-asan.ts: the addon with AddressSanitizer.\n${JSON.stringify({ targets: [target] }, null, 2)}\n`;
}

if (import.meta.main) {
  if (process.platform !== 'linux') {
    console.error('build:native:asan: the addon is built on Linux only');
    process.exit(2);
  }
  mkdirSync(ASAN_DIR, { recursive: true });
  writeFileSync(join(ASAN_DIR, 'binding.gyp'), binding());
  // node-gyp is on PATH in npm scripts (npm's own copy), as for build:native.
  const r = spawnSync('node-gyp', ['rebuild', `--directory=${ASAN_DIR}`], { stdio: 'inherit' });
  if (r.error) console.error(`build:native:asan: cannot run node-gyp (${r.error.message}); run it as \`npm run build:native:asan\``);
  process.exit(r.status ?? 1);
}
