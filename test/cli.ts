// Runs the real `coffer` CLI in a child process (the same Node that runs the tests).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { Command } from 'commander';
import { buildProgram } from '../src/cli/main.ts';

export const MAIN = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], options: { env?: Record<string, string>; cwd?: string; input?: string; killAfterMs?: number; signalAfterMs?: number; signal?: NodeJS.Signals; signalWhen?: (stdout: string) => boolean } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...options.env }, cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let signalled = false;
    child.stdout.on('data', (d) => {
      stdout += d;
      if (!signalled && options.signalWhen?.(stdout)) {
        signalled = true;
        child.kill(options.signal ?? 'SIGINT');
      }
    });
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    if (options.input !== undefined) child.stdin.end(options.input);
    else child.stdin.end();
    const timer = options.killAfterMs !== undefined ? setTimeout(() => child.kill('SIGKILL'), options.killAfterMs) : undefined;
    const timer2 = options.signalAfterMs !== undefined ? setTimeout(() => child.kill(options.signal ?? 'SIGINT'), options.signalAfterMs) : undefined;
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(timer2);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The commands that do something (leaves of the command tree), as paths below `coffer`. */
export function leafCommands(c: Command, prefix: string[] = []): string[] {
  return c.commands.flatMap((s) => (s.commands.length ? leafCommands(s, [...prefix, s.name()]) : [[...prefix, s.name()].join(' ')]));
}

/** The command that `args` runs (its leading words), or undefined if they name no leaf command. */
export function commandOf(args: string[]): string | undefined {
  let c: Command = buildProgram();
  const words: string[] = [];
  for (const a of args) {
    const sub = c.commands.find((s) => s.name() === a);
    if (!sub) break;
    words.push(a);
    c = sub;
  }
  return c.commands.length === 0 && words.length ? words.join(' ') : undefined;
}

