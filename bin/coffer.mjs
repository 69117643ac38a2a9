#!/usr/bin/env node
// Launcher for the `coffer` command. Coffer is TypeScript run directly by Node 24 (type
// stripping). An older `node` on PATH re-executes the project's pinned Node 24 (the `node`
// dev dependency) so that `./bin/coffer.mjs` works whichever node started it.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const main = join(root, 'src', 'cli', 'main.ts');
const major = Number(process.versions.node.split('.')[0]);
if (major >= 24) {
  await import(pathToFileURL(main).href);
} else {
  const pinned = join(root, 'node_modules', 'node', 'bin', 'node');
  if (!existsSync(pinned)) {
    process.stderr.write(`coffer: needs Node.js 24 or newer (this is ${process.version}); run \`npm ci\` in ${root} to install the pinned runtime.\n`);
    process.exit(1);
  }
  const r = spawnSync(pinned, [main, ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(r.status ?? (r.signal ? 128 + 15 : 1));
}
