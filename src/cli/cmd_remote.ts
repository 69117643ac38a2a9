// `coffer agent enroll|run` and `coffer node enroll|run`: a remote agent on a protected host, or a
// storage node, enrolled with the server's CA and connected out to its agent port over mutual TLS
// (src/agent/remote.ts; docs/server.md "Remote agents and storage nodes"). An agent sends its
// backups to the storage node the server names, over a mutual-TLS data connection with its own
// certificate; a node serves the storage side of jobs and, on its data port (--data-listen), the
// data service agents send to (src/node/service.ts, src/agent/data-port.ts).

import { hostname } from 'node:os';
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import type { PkiRole } from '../agent/pki.ts';
import { output, parseIntOption, sessionTimingFromEnv } from './context.ts';
import { localTime } from './remote.ts';

const NOUN: Record<PkiRole, string> = { agent: 'agent', node: 'storage node' };

/** Adds `enroll` and `run` to `parent` (`coffer agent` or `coffer node`). */
export function registerRemote(parent: Command, role: PkiRole): void {
  parent
    .command('enroll')
    .description(`enroll this host as a ${NOUN[role]} with a one-time token: makes its key here and gets a certificate from the server's CA`)
    .requiredOption('--server <host:port>', 'the server\'s agent port (coffer server --agent-listen; default port 7481)')
    .requiredOption('--token <token>', `the enrollment token (coffer ${role === 'agent' ? 'clients' : 'nodes'} add NAME --enroll-token)`)
    .requiredOption('--state-dir <dir>', 'where the key, the certificates and the caches are kept')
    .option('--ca-fingerprint <sha256>', 'the SHA-256 fingerprint of the server\'s CA, as the server printed it (refuses any other); without it the CA seen is trusted and printed')
    .option('--name <name>', `the ${role === 'agent' ? 'client' : 'node'} name (must be the token's; default: the token's)`)
    .action(async (o: { server: string; token: string; stateDir: string; caFingerprint?: string; name?: string }, cmd: Command) => {
      const { enroll } = await import('../agent/remote.ts');
      const out = output(cmd);
      const r = await enroll({ server: o.server, token: o.token, stateDir: o.stateDir, role, ...(o.caFingerprint !== undefined ? { caFingerprint: o.caFingerprint } : {}), ...(o.name !== undefined ? { name: o.name } : {}) });
      if (r.trust === 'first-use') out.info(`note: no --ca-fingerprint given; trusted the server's CA ${r.caFingerprint}. Compare it with what the server printed.`);
      out.summary({ name: r.name, role: r.role, server: r.server, caFingerprint: r.caFingerprint, trust: r.trust, notAfter: r.notAfter, stateDir: r.stateDir }, () => [
        `Enrolled as ${NOUN[role]} ${r.name} with ${r.server} (CA ${r.caFingerprint}); certificate valid until ${localTime(r.notAfter)}.`,
        `Next: coffer ${role} run --state-dir ${r.stateDir}`,
      ]);
    });
  const run = parent
    .command('run')
    .description(`connect to the server and run the jobs it gives this ${NOUN[role]} (reconnects, renews its certificate; stops on SIGTERM)`)
    .requiredOption('--state-dir <dir>', `the directory \`coffer ${role} enroll\` wrote`)
    .option('--workers <n>', 'worker threads while jobs run (default: one per two cores with the addon\'s encoder, else one per core)')
    .option('--name <name>', 'the name to give the server (default: the enrolled one; the server refuses any other)');
  if (role === 'node') {
    run
      .option('--data-listen <host:port>', 'where agents send their backups (mutual TLS)', '127.0.0.1:7482')
      .option('--data-address <host:port>', 'the address agents reach the data port at (default: --data-listen\'s)');
  }
  run
    .action(async (o: { stateDir: string; workers?: string; name?: string; dataListen?: string; dataAddress?: string }, cmd: Command) => {
      if (output(cmd).json) {
        throw new CofferError('USAGE', `Cannot run the ${NOUN[role]} with --json: it runs until stopped, and its output is its log on standard error`, { hint: 'Leave out --json; see the server\'s API for its state.' });
      }
      const workers = o.workers === undefined ? undefined : parseIntOption('--workers', o.workers, 1, 256);
      const [{ AgentRuntime }, { runRemote, readRemoteState, refusalError, parseServerAddress }, { localHostIdentity }, { connectToNode, startDataPort }, { NodeService }, { LoadMeter }] = await Promise.all([
        import('../agent/runtime.ts'), import('../agent/remote.ts'), import('../sources/host.ts'), import('../agent/data-port.ts'), import('../node/service.ts'), import('../agent/load.ts'),
      ]);
      const enrolled = readRemoteState(o.stateDir, role); // a missing or broken enrollment fails now, not in the loop
      const host = localHostIdentity();
      const log = (m: string) => process.stderr.write(`${new Date().toISOString()} coffer ${role}: ${m}\n`);
      // The key and certificate as they are now (renewal replaces them in the state directory).
      const identity = () => {
        const s = readRemoteState(o.stateDir, role);
        return { key: s.key, cert: s.cert, ca: s.ca };
      };
      const service = role === 'node' ? new NodeService({ log }) : undefined;
      const dataPort = service
        ? await startDataPort({ ...parseServerAddress(o.dataListen!, { listen: true }), ...(o.dataAddress ? { advertise: o.dataAddress } : {}), identity: { key: enrolled.key, cert: enrolled.cert, ca: enrolled.ca }, accept: (socket, agent) => service.accept(socket, agent), log })
        : undefined;
      const runtime = new AgentRuntime({
        stateDir: o.stateDir, host, workers, sessionTiming: sessionTimingFromEnv(),
        ...(service ? { node: service } : { connectNode: (remote, signal) => connectToNode(remote, identity(), signal) }),
      });
      const meter = new LoadMeter();
      const stop = new AbortController();
      const onSignal = (sig: string) => {
        if (stop.signal.aborted) process.exit(130);
        process.stderr.write(`coffer ${role}: ${sig}: stopping (running jobs are told to stop)\n`);
        stop.abort();
      };
      process.on('SIGINT', () => onSignal('SIGINT'));
      process.on('SIGTERM', () => onSignal('SIGTERM'));
      log(`starting on ${hostname()} (pid ${process.pid})${dataPort ? `; data port ${dataPort.address}` : ''}`);
      const r = await runRemote({
        stateDir: o.stateDir, role, runtime, signal: stop.signal, log, backoffMs: backoffFromEnv(),
        host: { ...host, ...(dataPort ? { dataAddress: dataPort.address } : {}) },
        ...(o.name !== undefined ? { name: o.name } : {}),
        ...(service ? { load: () => meter.measure(runtime.running, service.bytesInFlight), onRenewed: (id) => dataPort?.setIdentity(id) } : {}),
      });
      await dataPort?.close();
      await runtime.close();
      if (r.reason === 'refused') {
        const e = refusalError(r.message ?? 'refused', r.code);
        throw new CofferError(e.code, `The server refused this ${NOUN[role]}, which stops for good: ${r.message}`, { hint: r.code === 'PROTOCOL' ? 'Install the server\'s Coffer release on this host.' : `Ask an administrator for a new token and enroll again into an empty --state-dir: coffer ${role} enroll --server HOST:7481 --token TOKEN --state-dir DIR` });
      }
      log('stopped');
    });
}

/** COFFER_AGENT_BACKOFF_MS=BASE[,MAX]: the reconnection backoff (default 1000,60000). */
function backoffFromEnv(): { base: number; max: number } | undefined {
  const v = process.env.COFFER_AGENT_BACKOFF_MS;
  if (!v) return undefined;
  const [base, max] = v.split(',').map(Number);
  if (!(base! >= 10) || (max !== undefined && !(max >= base!))) throw new CofferError('USAGE', `Cannot use COFFER_AGENT_BACKOFF_MS=${v}: give BASE or BASE,MAX in milliseconds (BASE at least 10)`);
  return { base: base!, max: max ?? 60_000 };
}

/** `coffer node`: a storage node (enroll, run). */
export function register(program: Command): void {
  registerRemote(program.command('node').description('a storage node: holds storage units and does the storage side of jobs for the server'), 'node');
}
