#!/usr/bin/env node
// Launcher for the `coffer` command. Coffer is TypeScript run directly by Node 24 (type
// stripping); an older `node` on PATH hands over to the project's pinned Node 24 (the `node`
// dev dependency).
//
// On Linux the launcher also sets glibc's malloc to a fixed mmap threshold and two arenas, and
// caps V8's young generation: with glibc's defaults, multi-megabyte buffers freed by several
// threads stay in per-thread arenas, and a backup of the benchmark data set peaked at 870 MB of
// RSS instead of 530 MB (bench/README numbers; same speed). These settings must be in place
// before the process starts, hence one re-exec.
//
// It turns on Node's module compile cache (NODE_COMPILE_CACHE, default <tmpdir>/node-compile-cache;
// NODE_DISABLE_COMPILE_CACHE=1 turns it off) for this process and, through the environment, for
// the worker threads: without it every thread strips the TypeScript of its modules again, which
// cost about 20 MB of RSS per thread and 0.1 s per start.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const main = join(root, 'src', 'cli', 'main.ts');
const major = Number(process.versions.node.split('.')[0]);
const TUNED = 'COFFER_LAUNCHED';
const tunables = 'glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576';

if (!process.env.NODE_COMPILE_CACHE) process.env.NODE_COMPILE_CACHE = join(tmpdir(), 'node-compile-cache');

if (major >= 24 && (process.platform !== 'linux' || process.env[TUNED])) {
  // Uses the variable set above (a no-op when it was set at start-up); the workers inherit it.
  nodeModule.enableCompileCache?.();
  await import(pathToFileURL(main).href);
} else {
  let node = process.execPath;
  if (major < 24) {
    node = join(root, 'node_modules', 'node', 'bin', 'node');
    if (!existsSync(node)) {
      process.stderr.write(`coffer: needs Node.js 24 or newer (this is ${process.version}); run \`npm ci\` in ${root} to install the pinned runtime.\n`);
      process.exit(1);
    }
  }
  const env = { ...process.env, [TUNED]: '1' };
  if (process.platform === 'linux') env.GLIBC_TUNABLES = process.env.GLIBC_TUNABLES ? `${process.env.GLIBC_TUNABLES}:${tunables}` : tunables;
  const child = spawn(node, ['--max-semi-space-size=4', main, ...process.argv.slice(2)], { stdio: 'inherit', env });
  // Ctrl-C reaches both processes (same process group): the child stops cleanly, we wait for it.
  process.on('SIGINT', () => {});
  process.on('SIGTERM', () => child.kill('SIGTERM'));
  child.on('exit', (code, signal) => process.exit(code ?? (signal === 'SIGKILL' ? 137 : 130)));
}
