// Many files: one directory of a million empty files (a mail spool, a cache, an object store on
// disk), or millions in a deep tree, backed up by coffer and restic in the same run: wall time,
// CPU and peak RSS of the first backup and of an incremental, page cache dropped before each.
//
//   npx node bench/many-files.ts --shape flat --files 1000000 [--md bench/results/many-files/flat-1m.md]
//   npx node bench/many-files.ts --shape deep --files 10000000 --fanout 10 [--peers coffer,restic | none: only make the tree]
//
// The tree is made once under /tmp/bench-work/many/ (reused by later runs with the same shape);
// `flat`: every file in one directory; `deep`: --fanout directories per level, four levels,
// the files spread evenly over the leaves. Needs /usr/bin/time and, for that peer, restic.
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    shape: { type: 'string', default: 'flat' },
    files: { type: 'string', default: '1000000' },
    fanout: { type: 'string', default: '10' },
    peers: { type: 'string', default: 'restic,coffer' },
    md: { type: 'string' },
    work: { type: 'string', default: '/tmp/bench-work/many' },
  },
});
const shape = opt.shape!;
const files = Number(opt.files);
const fanout = Number(opt.fanout);
if (shape !== 'flat' && shape !== 'deep') throw new Error('--shape is flat or deep');
if (!Number.isSafeInteger(files) || files < 1) throw new Error('--files must be a positive integer');
if (!Number.isSafeInteger(fanout) || fanout < 2) throw new Error('--fanout must be an integer of at least 2');
const DEPTH = 4;
const root = join(opt.work!, `${shape}-${files}${shape === 'deep' ? `-f${fanout}` : ''}`);
const src = join(root, 'src');
const here = new URL('..', import.meta.url).pathname;

/** Makes the tree unless a finished one is there. */
function makeTree(): void {
  if (existsSync(join(root, 'done'))) return;
  rmSync(root, { recursive: true, force: true });
  mkdirSync(src, { recursive: true });
  const t0 = Date.now();
  const leaves: string[] = [];
  if (shape === 'flat') leaves.push(src);
  else {
    const walk = (dir: string, level: number) => {
      if (level === DEPTH) {
        leaves.push(dir);
        return;
      }
      for (let i = 0; i < fanout; i++) {
        const d = join(dir, `d${i}`);
        mkdirSync(d);
        walk(d, level + 1);
      }
    };
    walk(src, 0);
  }
  const per = Math.floor(files / leaves.length);
  let extra = files - per * leaves.length;
  for (const leaf of leaves) {
    const n = per + (extra-- > 0 ? 1 : 0);
    for (let i = 0; i < n; i++) closeSync(openSync(join(leaf, `mail.${i}.entry`), 'w'));
  }
  writeFileSync(join(root, 'done'), `${files} files in ${leaves.length} directories, made in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
}

interface Step { peer: string; step: string; wall: number; user: number; sys: number; rssMB: number; exit: number }

/** Runs `argv` under /usr/bin/time -v, cold cache, in `cwd`. */
function timed(peer: string, step: string, argv: string[], cwd: string, env: NodeJS.ProcessEnv): Step {
  execFileSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
  const timeFile = join(opt.work!, 'time.txt');
  const r = spawnSync('/usr/bin/time', ['-v', '-o', timeFile, ...argv], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 1 << 26 });
  const t = readFileSync(timeFile, 'utf8');
  const num = (re: RegExp) => Number(re.exec(t)?.[1] ?? NaN);
  const wallText = /Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)/.exec(t)?.[1] ?? '0';
  const wall = wallText.split(':').reduce((a, p) => a * 60 + Number(p), 0);
  if (r.status !== 0) process.stderr.write(`${peer} ${step} exited ${r.status}: ${r.stderr.toString().slice(-2000)}\n`);
  return { peer, step, wall, user: num(/User time \(seconds\): (\S+)/), sys: num(/System time \(seconds\): (\S+)/), rssMB: num(/Maximum resident set size \(kbytes\): (\d+)/) / 1024, exit: r.status ?? -1 };
}

function runPeer(peer: string): Step[] {
  const repo = join(root, `repo-${peer}`);
  const cache = join(root, `cache-${peer}`);
  rmSync(repo, { recursive: true, force: true });
  rmSync(cache, { recursive: true, force: true });
  const steps: Step[] = [];
  if (peer === 'restic') {
    const env = { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: cache };
    execFileSync('restic', ['init', '-q', '-r', repo], { env: { ...process.env, ...env } });
    for (const step of ['backup1', 'backup2']) steps.push(timed(peer, step, ['restic', '-r', repo, 'backup', '-q', '.'], src, env));
  } else if (peer === 'coffer') {
    const env = { COFFER_PASSWORD: 'bench', COFFER_CACHE_DIR: cache };
    const coffer = [join(here, 'node_modules/.bin/node'), join(here, 'bin/coffer.mjs')];
    execFileSync(coffer[0]!, [coffer[1]!, 'repo', 'init', '--repo', repo], { env: { ...process.env, ...env }, stdio: 'ignore' });
    for (const step of ['backup1', 'backup2']) steps.push(timed(peer, step, [...coffer, 'repo', 'backup', '--repo', repo, '--host', 'bench', '.'], src, env));
  } else throw new Error(`unknown peer ${peer}: restic or coffer`);
  rmSync(repo, { recursive: true, force: true });
  rmSync(cache, { recursive: true, force: true });
  return steps;
}

makeTree();
const made = readFileSync(join(root, 'done'), 'utf8').trim();
const rows: Step[] = [];
for (const peer of opt.peers!.split(',')) if (peer.trim() !== 'none') rows.push(...runPeer(peer.trim()));
const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const lines = [
  `# Many files: ${shape}, ${files.toLocaleString('en')} empty files (${date})`,
  '',
  `Machine: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}); page cache dropped before each step. Tree: ${made}.`,
  `Command: \`npx node bench/many-files.ts --shape ${shape} --files ${files}${shape === 'deep' ? ` --fanout ${fanout}` : ''}\``,
  '',
  '| peer | step | wall s | user s | sys s | peak RSS MB | exit |',
  '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map((r) => `| ${r.peer} | ${r.step} | ${r.wall.toFixed(1)} | ${r.user.toFixed(1)} | ${r.sys.toFixed(1)} | ${r.rssMB.toFixed(0)} | ${r.exit} |`),
  '',
];
process.stdout.write(lines.join('\n'));
if (opt.md) {
  mkdirSync(join(opt.md, '..'), { recursive: true });
  writeFileSync(opt.md, lines.join('\n'));
}
