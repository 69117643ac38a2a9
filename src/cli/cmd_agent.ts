// `coffer agent ...`: the agent process. `agent stdio` is the embedded agent the server starts:
// it speaks the agent protocol on its stdin and stdout (docs/server.md), and is not meant to be
// run by hand. Remote agents (`agent enroll`, `agent run`) are in cmd_remote.ts.
import { hostname } from 'node:os';
import type { Command } from 'commander';

import { CofferError } from '../core/errors.ts';
import { VERSION } from '../core/version.ts';
import { localHostIdentity } from '../sources/host.ts';
import { output, sessionTimingFromEnv } from './context.ts';
import { registerRemote } from './cmd_remote.ts';

export function register(program: Command): void {
  const agent = program.command('agent').description('the agent that runs backups and restores on a protected host');
  agent
    .command('stdio')
    .description('serve the agent protocol on stdin/stdout (started by `coffer server` as its embedded agent)')
    .requiredOption('--state-dir <dir>', 'where the agent keeps its caches')
    .option('--name <name>', 'the client name the agent registers as (default: the host name)')
    .option('--workers <n>', 'worker threads while jobs run (default: one per two cores with the addon\'s encoder, else one per core)')
    .action(async (o: { stateDir: string; name?: string; workers?: string }, cmd: Command) => {
      const [{ AgentRuntime }, { serveAgent }] = await Promise.all([import('../agent/runtime.ts'), import('../agent/serve.ts')]);
      if (output(cmd).json) {
        throw new CofferError('USAGE', 'Cannot serve the agent protocol with --json: standard output carries the agent protocol, where --json allows only JSON lines', { hint: 'Leave out --json; `coffer server` starts this command itself.' });
      }
      const workers = o.workers === undefined ? undefined : Number(o.workers);
      if (workers !== undefined && (!Number.isInteger(workers) || workers < 1 || workers > 256)) throw new CofferError('USAGE', `Cannot use --workers ${o.workers}: give a whole number from 1 to 256`);
      if (process.stdin.isTTY) throw new CofferError('USAGE', 'Cannot serve the agent protocol on a terminal', { hint: '`coffer agent stdio` is started by `coffer server`; run `coffer server` instead.' });
      const host = localHostIdentity();
      const runtime = new AgentRuntime({ stateDir: o.stateDir, host, workers, sessionTiming: sessionTimingFromEnv() });
      // SIGTERM or SIGINT (the server stopping, Ctrl-C in its terminal): the connection ends
      // when the server closes it; jobs stop when told to. Nothing to do here but not die first.
      process.on('SIGINT', () => {});
      process.on('SIGTERM', () => process.stdin.destroy());
      const r = await serveAgent({
        input: process.stdin,
        output: process.stdout,
        runtime,
        agent: { name: o.name ?? hostname(), version: VERSION, host: { ...host } },
        log: (m) => process.stderr.write(`coffer agent: ${m}\n`),
      });
      await runtime.close();
      if (r.reason !== 'closed') throw new CofferError('PROTOCOL', `The agent stopped: ${r.message ?? r.reason}`);
    });
  registerRemote(agent, 'agent');
}
