// Checks that imports point downward only: core → storage → engine → repository → sources →
// jobs/catalog/policy → scheduler → server/agent → cli/web. `testing` may use any layer below cli. Also: `core`
// is pure (no node:* imports). Run by `npm test`; exits 1 and lists every offending import.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

const RANK: Record<string, number> = {
  core: 0, storage: 1, engine: 2, repository: 3, sources: 4,
  jobs: 5, catalog: 5, policy: 5, scheduler: 6, testing: 7, server: 8, agent: 8, node: 8, cli: 9, web: 9,
};
const root = join(import.meta.dirname, '..', 'src');
const problems: string[] = [];

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.ts') ? [p] : [];
  });
}

for (const file of walk(root)) {
  const layer = relative(root, file).split(sep)[0]!;
  const rank = RANK[layer];
  if (rank === undefined) { problems.push(`${relative(root, file)}: unknown layer folder '${layer}'`); continue; }
  const isTest = file.endsWith('.test.ts');
  const src = readFileSync(file, 'utf8');
  for (const m of src.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]|^\s*import\s+['"]([^'"]+)['"]/gm)) {
    const spec = m[1] ?? m[2]!;
    if (layer === 'core' && !isTest && spec.startsWith('node:')) problems.push(`${relative(root, file)}: core must stay pure but imports ${spec}`);
    if (!spec.startsWith('.')) continue;
    const target = relative(root, join(file, '..', spec)).split(sep)[0]!;
    const trank = RANK[target];
    if (trank === undefined) continue;
    // Tests may use the testing helpers from any layer.
    if (isTest && target === 'testing') continue;
    if (trank > rank) problems.push(`${relative(root, file)}: ${layer} must not import ${target} (${spec})`);
  }
}
if (problems.length) {
  console.error(`Layer check failed (imports must point downward):\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log('layers ok');
