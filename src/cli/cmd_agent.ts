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
    .option('--data-listen <host:port>', 'serve remote agents as the embedded storage node on this data port (mutual TLS)')
    .option('--data-address <host:port>', 'the address remote agents reach the data port at (default: --data-listen\'s)')
    .option('--node-tls-dir <dir>', 'the embedded node\'s key.pem, cert.pem and ca.pem (written by the server; reloaded when they change)')
    .action(async (o: { stateDir: string; name?: string; workers?: string; dataListen?: string; dataAddress?: string; nodeTlsDir?: string }, cmd: Command) => {
      const [{ AgentRuntime }, { serveAgent }, { LoadMeter }] = await Promise.all([import('../agent/runtime.ts'), import('../agent/serve.ts'), import('../agent/load.ts')]);
      if (output(cmd).json) {
        throw new CofferError('USAGE', 'Cannot serve the agent protocol with --json: standard output carries the agent protocol, where --json allows only JSON lines', { hint: 'Leave out --json; `coffer server` starts this command itself.' });
      }
      const workers = o.workers === undefined ? undefined : Number(o.workers);
      if (workers !== undefined && (!Number.isInteger(workers) || workers < 1 || workers > 256)) throw new CofferError('USAGE', `Cannot use --workers ${o.workers}: give a whole number from 1 to 256`);
      if (process.stdin.isTTY) throw new CofferError('USAGE', 'Cannot serve the agent protocol on a terminal', { hint: '`coffer agent stdio` is started by `coffer server`; run `coffer server` instead.' });
      if ((o.dataListen === undefined) !== (o.nodeTlsDir === undefined)) throw new CofferError('USAGE', 'Give --data-listen and --node-tls-dir together, or neither');
      const host = localHostIdentity();
      const log = (m: string) => process.stderr.write(`coffer agent: ${m}\n`);
      const node = o.dataListen !== undefined ? await startEmbeddedNode(o.dataListen, o.dataAddress, o.nodeTlsDir!, log) : undefined;
      const runtime = new AgentRuntime({ stateDir: o.stateDir, host, workers, sessionTiming: sessionTimingFromEnv(), ...(node ? { node: node.service } : {}) });
      const meter = new LoadMeter();
      // SIGTERM or SIGINT (the server stopping, Ctrl-C in its terminal): the connection ends
      // when the server closes it; jobs stop when told to. Nothing to do here but not die first.
      process.on('SIGINT', () => {});
      process.on('SIGTERM', () => process.stdin.destroy());
      const r = await serveAgent({
        input: process.stdin,
        output: process.stdout,
        runtime,
        agent: { name: o.name ?? hostname(), version: VERSION, host: { ...host, ...(node ? { dataAddress: node.port.address } : {}) } },
        log,
        load: () => meter.measure(runtime.running, node?.service.bytesInFlight ?? 0),
      });
      await node?.close();
      await runtime.close();
      if (r.reason !== 'closed') throw new CofferError('PROTOCOL', `The agent stopped: ${r.message ?? r.reason}`);
    });
  registerRemote(agent, 'agent');
}

/**
 * The embedded storage node's data service and port (src/agent/data-port.ts), with the
 * certificate the server wrote into `tlsDir`; a renewed certificate is taken up within a minute.
 */
async function startEmbeddedNode(listen: string, advertise: string | undefined, tlsDir: string, log: (m: string) => void) {
  const [{ readFileSync, statSync }, { join }, { startDataPort }, { parseServerAddress }, { NodeService }] = await Promise.all([
    import('node:fs'), import('node:path'), import('../agent/data-port.ts'), import('../agent/remote.ts'), import('../node/service.ts'),
  ]);
  const read = () => ({ key: readFileSync(join(tlsDir, 'key.pem'), 'utf8'), cert: readFileSync(join(tlsDir, 'cert.pem'), 'utf8'), ca: readFileSync(join(tlsDir, 'ca.pem'), 'utf8') });
  const service = new NodeService({ log });
  const port = await startDataPort({ ...parseServerAddress(listen, { listen: true }), ...(advertise ? { advertise } : {}), identity: read(), accept: (socket, agent) => service.accept(socket, agent), log });
  let seen = statSync(join(tlsDir, 'cert.pem')).mtimeMs;
  const watch = setInterval(() => {
    try {
      const m = statSync(join(tlsDir, 'cert.pem')).mtimeMs;
      if (m === seen) return;
      seen = m;
      port.setIdentity(read());
      log('the embedded node\'s certificate was renewed');
    } catch (e) {
      log(`cannot read the embedded node's renewed certificate: ${(e as Error).message}`);
    }
  }, 60_000);
  watch.unref();
  return { service, port, close: async () => { clearInterval(watch); await port.close(); } };
}
