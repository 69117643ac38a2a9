// Every command's --json output against the contract (docs/json.md, src/cli/json-schema.ts): run
// through the real CLI on a real repository, every line is checked by checkJsonOutput(), stderr
// must stay empty, and the last test fails if a command of buildProgram() was never run here:
// a new command needs a --json test (or a reason in EXEMPT) before it lands.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, truncate, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildProgram } from '../src/cli/main.ts';
import { COMMAND_OUTPUT, LINE_TYPES, checkJsonOutput } from '../src/cli/json-schema.ts';
import { commandOf, leafCommands, runCli } from './cli.ts';
import { makeSourceTree } from './helpers.ts';
import { COMPLIANCE_COMMANDS, PKI_COMMANDS, SERVER_COMMANDS, VERIFY_COMMANDS } from './server-commands.ts';

/** Commands that need no --json test here, with the reason. */
const EXEMPT: Record<string, string> = {
  ...Object.fromEntries(SERVER_COMMANDS.map((c) => [c, 'run with --json in test/server-cli.test.ts'])),
  ...Object.fromEntries(VERIFY_COMMANDS.map((c) => [c, 'run with --json in test/verify.test.ts'])),
  ...Object.fromEntries(COMPLIANCE_COMMANDS.map((c) => [c, 'run with --json in test/compliance.test.ts'])),
  ...Object.fromEntries(PKI_COMMANDS.map((c) => [c, 'run with --json in test/pki.test.ts'])),
};

type Line = Record<string, unknown> & { type: string };
const ran = new Set<string>();
const succeeded = new Set<string>();

/** Runs `coffer --json ARGS`, checks every line against the contract and that stderr is empty. */
async function json(args: string[], env: Record<string, string>, expectCode?: number): Promise<{ code: number | null; lines: Line[]; final: Line }> {
  const r = await runCli(['--json', ...args], { env });
  const command = commandOf(args);
  const lines = checkJsonOutput(command, r.stdout, r.code);
  assert.equal(r.stderr, '', `coffer --json ${args.join(' ')} wrote on stderr`);
  if (expectCode !== undefined) assert.equal(r.code, expectCode, `coffer --json ${args.join(' ')}: ${r.stdout.slice(-2000)}`);
  if (command) {
    ran.add(command);
    if (lines.at(-1)!.type === 'summary') succeeded.add(command);
  }
  return { code: r.code, lines, final: lines.at(-1)! };
}

const ofType = (lines: Line[], type: string) => lines.filter((l) => l.type === type);

describe('--json output (docs/json.md)', () => {
  let dir: string;
  let src: string;
  let env: Record<string, string>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coffer-json-'));
    src = join(dir, 'src');
    await makeSourceTree(src, 3, 0.1);
    env = { COFFER_PASSWORD: 'pw', COFFER_CACHE_DIR: join(dir, 'cache'), COFFER_REPOSITORY: join(dir, 'repo'), COFFER_WORKERS: '2' };
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('repo init and key add, list and remove print a summary (and key lines)', async () => {
    const init = await json(['repo', 'init', '--pack-size', '1'], env, 0);
    assert.equal(init.lines.length, 1);
    assert.equal(init.final.location, join(dir, 'repo'));
    const added = await json(['repo', 'key', 'add'], { ...env, COFFER_NEW_PASSWORD: 'second' }, 0);
    const list = await json(['repo', 'key', 'list'], env, 0);
    const keys = ofType(list.lines, 'key');
    assert.equal(keys.length, 2);
    assert.equal(list.final.keys, 2);
    assert.deepEqual(keys.filter((k) => k.current).map((k) => k.id), keys.map((k) => k.id).filter((id) => id !== added.final.id));
    const removed = await json(['repo', 'key', 'remove', String(added.final.id)], env, 0);
    assert.equal(removed.final.removed, added.final.id);
  });

  it('backup, snapshots, ls, find, diff and forget: one line per item, then a summary', async () => {
    const first = await json(['repo', 'backup', src, '--tag', 'one'], env, 0);
    assert.ok(ofType(first.lines, 'progress').length >= 1);
    assert.equal(first.final.warnings, 0);
    await writeFile(join(src, 'added.txt'), 'new\n');
    const second = await json(['repo', 'backup', src], env, 0);
    assert.equal(second.final.parent, first.final.snapshot);
    const dry = await json(['repo', 'backup', '--dry-run', src], env, 0);
    assert.equal(dry.final.dryRun, true);
    assert.equal(dry.final.snapshot, undefined, 'a dry run saves no snapshot');

    const snaps = await json(['repo', 'snapshots'], env, 0);
    assert.deepEqual(ofType(snaps.lines, 'snapshot').map((s) => s.id), [first.final.snapshot, second.final.snapshot]);
    assert.equal(snaps.final.snapshots, 2);
    const tagged = await json(['repo', 'snapshots', '--tag', 'no-such-tag'], env, 0);
    assert.equal(tagged.lines.length, 1, 'an empty listing is just the summary');

    const ls = await json(['repo', 'ls', 'latest', src, '--recursive'], env, 0);
    const nodes = ofType(ls.lines, 'node');
    assert.equal(ls.final.entries, nodes.length);
    assert.ok(nodes.some((n) => n.path === join(src, 'added.txt') && n.nodeType === 'file' && n.size === 4));
    assert.ok(nodes.some((n) => n.nodeType === 'symlink' && n.linkTarget === 'sub/text-1.txt'));

    const find = await json(['repo', 'find', 'added.txt'], env, 0);
    assert.deepEqual(ofType(find.lines, 'match').map((m) => m.snapshot), [second.final.snapshot]);
    assert.deepEqual([find.final.matches, find.final.snapshots, find.final.searched], [1, 1, 2]);

    const diff = await json(['repo', 'diff', String(first.final.snapshot), String(second.final.snapshot)], env, 0);
    assert.ok(ofType(diff.lines, 'change').some((c) => c.change === 'added' && c.path === join(src, 'added.txt')));
    assert.equal(diff.final.added, 1);

    const forget = await json(['repo', 'forget', '--keep-last', '1', '--dry-run'], env, 0);
    assert.deepEqual(ofType(forget.lines, 'forget').map((f) => [f.snapshot, f.dryRun]), [[first.final.snapshot, true]]);
    assert.equal(forget.final.removed, 1);
  });

  it('restore prints hosts, entries with -v or --dry-run, and a summary', async () => {
    const dry = await json(['repo', 'restore', 'latest', '--target', join(dir, 'out'), '--dry-run'], env, 0);
    assert.equal(dry.lines[0]!.type, 'hosts');
    assert.ok(ofType(dry.lines, 'entry').every((e) => e.action === 'create' && e.dryRun === true));
    await assert.rejects(stat(join(dir, 'out')), { code: 'ENOENT' });
    const real = await json(['repo', 'restore', 'latest', '--target', join(dir, 'out'), '--include', join(src, 'sub')], env, 0);
    assert.equal(ofType(real.lines, 'entry').length, 0, 'without -v a restore lists only what it skipped');
    assert.ok((real.final.created as { files: number }).files > 5);
    const again = await json(['repo', 'restore', 'latest', '--target', join(dir, 'out'), '--include', join(src, 'sub'), '--overwrite', 'never'], env, 0);
    assert.ok(ofType(again.lines, 'entry').every((e) => e.action === 'skip'));
  });

  it('check and prune print progress and a summary', async () => {
    const check = await json(['repo', 'check', '--read-data'], env, 0);
    assert.ok(ofType(check.lines, 'progress').every((p) => typeof p.message === 'string'));
    assert.equal(check.final.ok, true);
    await json(['repo', 'forget', '--keep-last', '1'], env, 0);
    const prune = await json(['repo', 'prune'], env, 0);
    assert.equal(prune.final.dryRun, false);
  });

  it('storage validate prints one check line per conformance check, and fails with CHECK_FAILED', async () => {
    const ok = await json(['storage', 'validate', join(dir, 'validate')], env, 0);
    assert.ok(ofType(ok.lines, 'check').length >= 10);
    await writeFile(join(dir, 'a-file'), 'not a directory');
    const bad = await json(['storage', 'validate', join(dir, 'a-file', 'x')], env, 1);
    assert.ok(ofType(bad.lines, 'check').some((c) => c.ok === false && typeof c.error === 'string'));
    assert.equal(bad.final.code, 'CHECK_FAILED');
    assert.equal((bad.final.details as { summary: { passed: number } }).summary.passed, ofType(bad.lines, 'check').filter((c) => c.ok).length);
  });

  it('quickstart prints a summary', async () => {
    const sample = join(dir, 'sample');
    await mkdir(sample);
    await writeFile(join(sample, 'hello.txt'), 'hello\n');
    const r = await json(['quickstart', '--dir', join(dir, 'qs'), '--source', sample], env, 0);
    assert.deepEqual([r.final.created, r.final.snapshots, r.final.check, r.final.warnings], [true, 1, 'ok', 0]);
  });

  it('a backup with warnings ends with its summary and exit code 3, not with an error line', async () => {
    // Unreadable files even as root (tests run as root in CI, where permissions do not stop a
    // read): a directory whose path is longer than PATH_MAX cannot be opened by its path.
    const warned = join(dir, 'warned');
    await mkdir(warned);
    await writeFile(join(warned, 'fine.txt'), 'fine\n');
    const name = 'd'.repeat(250);
    execFileSync('bash', ['-c', `for i in $(seq 18); do mkdir ${name} && cd ${name}; done; echo deep > f`], { cwd: warned });
    try {
      const r = await json(['repo', 'backup', warned], env, 3);
      const warnings = ofType(r.lines, 'warning');
      assert.ok(warnings.length >= 1);
      assert.ok(warnings.every((w) => String(w.path).startsWith(join(warned, name)) && /ENAMETOOLONG|too long/i.test(String(w.problem))));
      assert.equal(r.final.type, 'summary');
      assert.deepEqual([r.final.exitCode, r.final.warnings], [3, warnings.length]);
      assert.match(String(r.final.snapshot), /^[0-9a-f]{64}$/, 'the snapshot was saved');
      assert.equal(ofType(r.lines, 'error').length, 0);
      // Without --json the same run says so on stderr, after the human summary on stdout.
      const human = await runCli(['repo', 'backup', warned], { env });
      assert.equal(human.code, 3);
      assert.match(human.stderr, /warning: .*ENAMETOOLONG[^]*coffer: Backup completed with \d+ warning\(s\)/i);
      assert.match(human.stdout, /snapshot [0-9a-f]{12} saved/);
    } finally {
      execFileSync('rm', ['-rf', warned]);
    }
  });

  it('failures end with exactly one error line with code, message, hint and exit code, and nothing on stderr', async () => {
    const cases: Array<[string[], Record<string, string>, string, number]> = [
      [['repo', 'snapshots'], { ...env, COFFER_PASSWORD: 'wrong' }, 'WRONG_PASSWORD', 1],
      [['repo', 'restore', 'deadbeef', '--target', join(dir, 'x')], env, 'NOT_FOUND', 1],
      [['repo', 'ls', 'deadbeef'], env, 'NOT_FOUND', 1],
      [['repo', 'diff', 'latest', 'deadbeef'], env, 'NOT_FOUND', 1],
      [['repo', 'find', 'x', '--repo', join(dir, 'nothing-here')], env, 'NOT_FOUND', 1],
      [['repo', 'forget', 'deadbeef'], env, 'NOT_FOUND', 1],
      [['repo', 'init'], env, 'ALREADY_EXISTS', 1],
      [['repo', 'backup'], env, 'USAGE', 2],
      [['repo', 'snapshots'], { ...env, COFFER_REPOSITORY: '' }, 'USAGE', 2],
      [['repo', 'snapshots', '--no-such-option'], env, 'USAGE', 2],
      [['repo', 'restore', 'latest'], env, 'USAGE', 2],
      [['repo', 'no-such-command'], env, 'USAGE', 2],
      [['repo', 'check', '--subset', '10%'], env, 'USAGE', 2],
    ];
    for (const [args, e, code, exit] of cases) {
      const r = await json(args, e, exit);
      assert.equal(r.lines.length, 1, `${args.join(' ')}: ${JSON.stringify(r.lines)}`);
      assert.deepEqual([r.final.type, r.final.code, r.final.exitCode], ['error', code, exit], args.join(' '));
      assert.match(String(r.final.message), /^Cannot /, args.join(' '));
    }
    const wrong = await json(['repo', 'snapshots'], { ...env, COFFER_PASSWORD: 'wrong' }, 1);
    assert.match(String(wrong.final.hint), /COFFER_PASSWORD/);
    const unknown = await json(['repo', 'snapshots', '--no-such-option'], env, 2);
    assert.match(String(unknown.final.message), /unknown option '--no-such-option'/);
  });

  it('a check that finds damage lists problems and affected files, then ends with CHECK_FAILED and its summary in the details', async () => {
    const e = { ...env, COFFER_REPOSITORY: join(dir, 'damaged'), COFFER_CACHE_DIR: join(dir, 'cache-damaged') };
    await json(['repo', 'init', '--pack-size', '1'], e, 0);
    await json(['repo', 'backup', src], e, 0);
    const data = join(dir, 'damaged', 'data');
    const packs: string[] = [];
    for (const sub of await readdir(data)) for (const f of await readdir(join(data, sub))) packs.push(join(data, sub, f));
    const sizes = await Promise.all(packs.map(async (p) => (await stat(p)).size));
    const biggest = packs[sizes.indexOf(Math.max(...sizes))]!;
    await truncate(biggest, Math.floor(Math.max(...sizes) / 2));
    const check = await json(['repo', 'check', '--read-data'], e, 1);
    const problems = ofType(check.lines, 'problem');
    assert.ok(problems.some((p) => p.severity === 'error' && String(p.pack ?? p.message).length > 0));
    assert.ok(ofType(check.lines, 'affected').length >= 1, 'the files that need the damaged pack are named');
    assert.equal(check.final.code, 'CHECK_FAILED');
    const summary = (check.final.details as { summary: Record<string, unknown> }).summary;
    assert.deepEqual([summary.type, summary.ok, summary.problems], ['summary', false, problems.length]);
    const restored = await json(['repo', 'restore', 'latest', '--target', join(dir, 'out-damaged')], e);
    assert.equal(restored.final.type, 'error', 'a restore that lost files fails');
    assert.notEqual(restored.code, 0);
  });

  it('the repairs list every lost file as a warning and end with their summary (exit 3 when something was lost)', async () => {
    const e = { ...env, COFFER_REPOSITORY: join(dir, 'damaged'), COFFER_CACHE_DIR: join(dir, 'cache-damaged') };
    const report = (kind: string) => ['--report', join(dir, `report-${kind}.json`)];
    const dry = await json(['repo', 'repair', 'index', '--dry-run', ...report('dry')], e, 3);
    assert.equal(dry.final.dryRun, true);
    const index = await json(['repo', 'repair', 'index', ...report('index')], e, 3);
    assert.equal((index.final.damagedPacks as unknown[]).length, 1);
    assert.equal(ofType(index.lines, 'warning').length, index.final.warnings);
    assert.equal(JSON.parse(await readFile(String(index.final.report), 'utf8')).kind, 'index', 'the report is written where asked');
    const again = await json(['repo', 'rebuild-index', ...report('again')], e, 3);
    assert.equal(again.final.kind, 'index', 'rebuild-index is repair index');
    // Exit 0, or 3 when files lost before (by the truncation) are listed again.
    const packs = await json(['repo', 'repair', 'packs', ...report('packs')], e);
    assert.equal(packs.final.type, 'summary');
    assert.equal((packs.final.packs as Array<{ quarantined: boolean }>)[0]!.quarantined, true);
    const snaps = await json(['repo', 'repair', 'snapshots', ...report('snapshots')], e, 3);
    assert.equal((snaps.final.repaired as unknown[]).length, 1);
    const config = await json(['repo', 'repair', 'config'], e, 0);
    assert.deepEqual(config.final.rewritten, []);
    const restored = await json(['repo', 'restore', 'latest', '--target', join(dir, 'out-repaired')], e, 3);
    assert.ok(ofType(restored.lines, 'warning').some((w) => /this snapshot is the repair of/.test(String(w.problem))), 'a repaired snapshot is never restored silently');
  });

  it('a damaged snapshot: listings warn about it (exit 3), latest skips it with a notice, forget removes it by id', async () => {
    const e = { ...env, COFFER_REPOSITORY: join(dir, 'bad-snapshot'), COFFER_CACHE_DIR: join(dir, 'cache-bad-snapshot') };
    await json(['repo', 'init'], e, 0);
    const good = await json(['repo', 'backup', src], e, 0);
    const newest = await json(['repo', 'backup', src, '--force'], e, 0);
    const bad = String(newest.final.snapshot);
    await writeFile(join(dir, 'bad-snapshot', 'snapshots', bad), 'not a snapshot');
    const snaps = await json(['repo', 'snapshots'], e, 3);
    assert.deepEqual(ofType(snaps.lines, 'warning').map((w) => w.snapshot), [bad]);
    assert.deepEqual(ofType(snaps.lines, 'snapshot').map((s) => s.id), [good.final.snapshot]);
    assert.deepEqual([snaps.final.type, snaps.final.warnings], ['summary', 1]);
    const find = await json(['repo', 'find', 'added.txt'], e, 3);
    assert.deepEqual([ofType(find.lines, 'warning').length, find.final.searched], [1, 1]);
    const ls = await json(['repo', 'ls', 'latest', src], e, 0);
    assert.deepEqual(ofType(ls.lines, 'notice').map((n) => n.snapshot), [bad]);
    assert.equal(ls.final.snapshot, good.final.snapshot);
    const diff = await json(['repo', 'diff', String(good.final.snapshot), 'latest'], e, 0);
    assert.equal(diff.final.added, 0);
    const backup = await json(['repo', 'backup', src], e, 0);
    assert.deepEqual([ofType(backup.lines, 'notice').length, backup.final.parent], [1, good.final.snapshot]);
    const forget = await json(['repo', 'forget', bad.slice(0, 12)], e, 0);
    assert.deepEqual(ofType(forget.lines, 'forget'), [{ type: 'forget', snapshot: bad, dryRun: false }], 'removed by id, unread');
  });

  it('agent stdio refuses --json with a usage error line (its output is the agent protocol)', async () => {
    const r = await json(['agent', 'stdio', '--state-dir', join(dir, 'agent-state')], env, 2);
    assert.equal(r.final.code, 'USAGE');
    assert.match(String(r.final.message), /agent protocol/);
  });

  it('server refuses --json with a usage error line (its output is its log)', async () => {
    const r = await json(['server', '--data-dir', join(dir, 'server-data')], env, 2);
    assert.equal(r.final.code, 'USAGE');
    assert.match(String(r.final.message), /its log/);
  });

  it('dump refuses --json with a usage error line (its output is the file itself)', async () => {
    const r = await json(['repo', 'dump', 'latest', join(src, 'link')], { ...env, COFFER_PASSWORD: 'not even checked' }, 2);
    assert.equal(r.final.code, 'USAGE');
    assert.match(String(r.final.message), /Cannot dump with --json/);
    const plain = await runCli(['repo', 'dump', 'latest', '--path', src, join(src, 'sub', 'text-1.txt')], { env });
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, await readFile(join(src, 'sub', 'text-1.txt'), 'utf8'));
  });

  it('--help and --version print one help or version line with --json, for the program and every command', async () => {
    for (const words of [[], ['repo'], ...leafCommands(buildProgram()).map((c) => c.split(' '))]) {
      const r = await runCli(['--json', ...words, '--help']);
      const lines = checkJsonOutput(commandOf(words), r.stdout, r.code);
      assert.equal(r.stderr, '');
      assert.deepEqual([lines.length, lines[0]!.type], [1, 'help'], words.join(' '));
      assert.match(String(lines[0]!.text), new RegExp(`^Usage: coffer ${words.join(' ')}`));
    }
    const v = await runCli(['--json', '--version']);
    assert.deepEqual(checkJsonOutput(undefined, v.stdout, v.code), [{ type: 'version', version: buildProgram().version(), exitCode: 0 }]);
  });

  it('the checker rejects text, lines without a valid type, misplaced or missing final lines and wrong exit codes', () => {
    const ok = '{"type":"summary","snapshots":0,"warnings":0,"exitCode":0}\n';
    assert.equal(checkJsonOutput('repo snapshots', ok, 0).length, 1);
    const bad: Array<[string, string, number, RegExp]> = [
      ['repo snapshots', `1 snapshot(s)\n${ok}`, 0, /not JSON/],
      ['repo snapshots', `[]\n${ok}`, 0, /not a JSON object/],
      ['repo snapshots', `{"id":"x"}\n${ok}`, 0, /no string "type"/],
      ['repo snapshots', `{"type":"snapshots"}\n${ok}`, 0, /unknown type "snapshots"/],
      ['repo snapshots', `{"type":"progress","message":"y"}\n${ok}`, 0, /may not print "progress"/],
      ['repo snapshots', '{"type":"snapshot","id":"x"}\n', 0, /last line must be/],
      ['repo snapshots', `${ok}${ok}`, 0, /must be the last line/],
      ['repo snapshots', ok, 3, /exited with 3/],
      ['repo snapshots', '{"type":"summary","snapshots":0,"warnings":0,"extra":1,"exitCode":0}\n', 0, /extra/],
      ['repo snapshots', '{"type":"summary","snapshots":0,"warnings":1,"exitCode":3}\n', 3, /1 warning\(s\) but 0 warning line/],
      ['repo backup', '{"type":"error","code":"WARNINGS","message":"m","exitCode":3}\n', 3, /end with a summary/],
      ['repo key add', '', 0, /printed nothing/],
      ['repo no-such', ok, 0, /No --json contract/],
    ];
    for (const [command, stdout, code, why] of bad) assert.throws(() => checkJsonOutput(command, stdout, code), why, JSON.stringify(stdout));
  });

  it('docs/json.md names every line type and every command of the contract', async () => {
    const doc = await readFile(join(import.meta.dirname, '..', 'docs', 'json.md'), 'utf8');
    for (const type of LINE_TYPES) assert.match(doc, new RegExp(`^### \`${type}\``, 'm'), `docs/json.md has no section for "${type}" lines`);
    for (const command of Object.keys(COMMAND_OUTPUT)) assert.ok(doc.includes(`\`${command}\``), `docs/json.md does not mention \`${command}\``);
  });

  it('every command of buildProgram() has a --json contract and was run with --json above', () => {
    const leaves = leafCommands(buildProgram());
    assert.ok(leaves.length >= 17, leaves.join(', '));
    assert.deepEqual([...leaves].sort(), Object.keys(COMMAND_OUTPUT).sort(), 'COMMAND_OUTPUT in src/cli/json-schema.ts lists exactly the commands');
    for (const c of leaves) {
      if (EXEMPT[c]) continue;
      assert.ok(ran.has(c), `${c} was never run with --json in this file: add it to a test`);
      if (COMMAND_OUTPUT[c]!.summary) assert.ok(succeeded.has(c), `${c} never ended with a summary in this file: test its success`);
    }
  });
});
