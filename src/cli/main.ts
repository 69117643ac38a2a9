// The `coffer` command line. Each command lives in its own cmd_*.ts file; this file wires them
// up, and turns every error into a message with a hint and the right exit code (0 ok, 1 error,
// 2 usage, 3 completed with warnings, 130 interrupted). Stack traces only with --debug.
import { Command, CommanderError } from 'commander';
import { CofferError, toCofferError } from '../core/errors.ts';
import { Output, attachOutput } from './context.ts';
import { register as repoInit } from './cmd_repo_init.ts';
import { register as repoKey } from './cmd_repo_key.ts';
import { register as repoBackup } from './cmd_repo_backup.ts';
import { register as repoRestore } from './cmd_repo_restore.ts';
import { register as repoLs } from './cmd_repo_ls.ts';
import { register as repoFind } from './cmd_repo_find.ts';
import { register as repoDiff } from './cmd_repo_diff.ts';
import { register as repoDump } from './cmd_repo_dump.ts';
import { register as repoSnapshots } from './cmd_repo_snapshots.ts';
import { register as repoCheck } from './cmd_repo_check.ts';
import { register as repoPrune } from './cmd_repo_prune.ts';
import { register as repoRepair } from './cmd_repo_repair.ts';
import { register as storageValidate } from './cmd_storage_validate.ts';
import { register as quickstart } from './cmd_quickstart.ts';
import { register as agent } from './cmd_agent.ts';
import { register as server } from './cmd_server.ts';
import { register as login } from './cmd_login.ts';
import { register as apply } from './cmd_apply.ts';
import { register as get } from './cmd_get.ts';
import { register as backup } from './cmd_backup.ts';
import { register as jobs } from './cmd_jobs.ts';
import { register as images } from './cmd_images.ts';
import { register as users } from './cmd_users.ts';
import { register as catalog } from './cmd_catalog.ts';
import { register as verify } from './cmd_verify.ts';
import { register as units } from './cmd_units.ts';
import { register as restoreTest } from './cmd_restore_test.ts';
import { register as report } from './cmd_report.ts';
import { register as lockExtend } from './cmd_lock_extend.ts';
import { register as enrollment } from './cmd_enrollment.ts';
import { register as storageNode } from './cmd_remote.ts';
import { VERSION } from '../core/version.ts';

export { VERSION };

export function buildProgram(): Command {
  const program = new Command('coffer')
    .description('Coffer: deduplicating, encrypted backup and recovery')
    .version(VERSION)
    .option('--json', 'machine-readable output (JSON lines)')
    .option('--debug', 'show stack traces on errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  const repo = program
    .command('repo')
    .description('work directly on a repository (no server needed)')
    .option('-r, --repo <url>', 'repository: /path, file:///path or s3://bucket/prefix?endpoint=... (or COFFER_REPOSITORY)')
    .option('--password-file <file>', 'read the password from a file (or COFFER_PASSWORD / COFFER_PASSWORD_COMMAND)')
    .option('--cache-dir <dir>', 'local cache directory (default ~/.cache/coffer)')
    .option('--no-cache', 'use a throwaway cache')
    .option('--workers <n>', 'worker threads for chunking and hashing (and encoding without the addon; default: one per two cores with the addon, else one per core)');
  repoInit(repo);
  repoKey(repo);
  repoBackup(repo);
  repoRestore(repo);
  repoLs(repo);
  repoFind(repo);
  repoDiff(repo);
  repoDump(repo);
  repoSnapshots(repo);
  repoCheck(repo);
  repoPrune(repo);
  repoRepair(repo);
  storageValidate(program);
  server(program);
  // The server's commands: clients of its API.
  login(program);
  apply(program);
  get(program);
  backup(program);
  jobs(program);
  images(program);
  users(program);
  catalog(program);
  verify(program);
  units(program);
  restoreTest(program);
  report(program);
  lockExtend(program);
  enrollment(program);
  storageNode(program);
  quickstart(program);
  agent(program);
  // Every command, however deep, shares the error handling and exits through main().
  const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
  for (const c of all(program)) c.exitOverride().showHelpAfterError('(run with --help for usage)');
  return program;
}

/** --json anywhere before a `--` (commander accepts the global option after the subcommand too). */
function wantsJson(argv: string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).includes('--json');
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const out = new Output(wantsJson(argv));
  attachOutput(program, out);
  // With --json, what commander would print (help, version, usage errors) becomes the final line.
  let commanderText = '';
  if (out.json) {
    const capture = (s: string) => void (commanderText += s);
    const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
    for (const c of all(program)) c.configureOutput({ writeOut: capture, writeErr: capture });
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    // 0, or what the command's result set (diff found changes, a waited-for job failed).
    const code = out.exitCode;
    out.end(code);
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.version') out.endWith({ type: 'version', version: VERSION });
      else if (e.code === 'commander.helpDisplayed' || e.code === 'commander.help') out.endWith({ type: 'help', text: commanderText });
      else {
        // commander has already printed the problem, unless --json captured it.
        const problem = e.message.replace(/^error: /, '');
        if (out.json) out.end(2, new CofferError('USAGE', `Cannot parse the command line: ${problem}`, { hint: 'Run the command with --help for its usage.' }));
        return 2;
      }
      return 0;
    }
    const err = toCofferError(e);
    out.end(err.exitCode, err);
    if (argv.includes('--debug')) process.stderr.write(`${(err.cause instanceof Error ? err.cause : err).stack}\n`);
    return err.exitCode;
  }
}

/**
 * A reader that goes away (`coffer repo snapshots | head -1`) must not crash a command with an
 * unhandled EPIPE, and must not stop a backup or restore half way: output is dropped from then
 * on and the command finishes its work. Other errors writing stdout or stderr are reported once.
 */
let outputFailed = false;

export function guardOutput(stream: NodeJS.WriteStream, name: string): void {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE' || outputFailed) return;
    outputFailed = true;
    if (stream !== process.stderr) process.stderr.write(`coffer: cannot write to ${name}: ${e.message}\n`);
  });
}

if (import.meta.main) {
  guardOutput(process.stdout, 'standard output');
  guardOutput(process.stderr, 'standard error');
  const result = await main(process.argv.slice(2));
  const code = result === 0 && outputFailed ? 1 : result;
  process.exitCode = code;
  // Worker pools and sockets are closed by the commands; do not wait on stray handles.
  setImmediate(() => process.exit(code)).unref();
}
