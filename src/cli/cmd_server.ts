// `coffer server`: the backup server. Everything lives under one data directory unless told
// otherwise (src/server/server.ts lists what). Logs are JSON lines (pino) on standard error,
// human-readable when it is a terminal; the start-up banner (URL, the first admin's password,
// what to run next) goes to standard output.

import { existsSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import { CofferError } from '../core/errors.ts';
import { VERSION } from '../core/version.ts';
import { output, parseIntOption } from './context.ts';

export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.COFFER_DATA_DIR) return env.COFFER_DATA_DIR;
  if (process.getuid?.() === 0) return '/var/lib/coffer';
  return join(env.XDG_DATA_HOME || join(homedir(), '.local', 'share'), 'coffer');
}

export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(value) ?? /^()()(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new CofferError('USAGE', `Cannot listen on ${JSON.stringify(value)}: give HOST:PORT (e.g. 127.0.0.1:7480, [::1]:7480 or 0.0.0.0:7480)`);
  }
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

function readKey(env: NodeJS.ProcessEnv): Buffer | undefined {
  if (!env.COFFER_SERVER_KEY) return undefined;
  const key = Buffer.from(env.COFFER_SERVER_KEY, 'base64');
  if (key.length !== 32) throw new CofferError('USAGE', 'Cannot use COFFER_SERVER_KEY: it must be 32 bytes in base64 (44 characters)', { hint: 'Make one with `openssl rand -base64 32`.' });
  return key;
}

function exampleFor(client: string, dataDir: string): string {
  return `# A first policy for this server's own host (made by \`coffer server\` on its first start).
# Edit it, then: coffer apply -f ${join(dataDir, 'example-policy.yaml')}
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: two-weeks }
spec:
  copies:
    - { operation: backup, storageUnit: default, retention: 14d }
---
apiVersion: coffer/v1
kind: Policy
metadata:
  name: example
  labels: { owner: admin }
spec:
  clients: [${client}]
  selections:
    - paths: [/etc]
  schedules:
    - { name: nightly, level: incremental, calendar: "0 1 * * *", window: { start: "01:00", duration: 6h } }
    - { name: weekly, level: full, calendar: "0 2 * * 0" }
  lifecycle: two-weeks
  rpo: 24h
  owner: admin
  purpose: the server's own configuration
`;
}

export function register(program: Command): void {
  program
    .command('server')
    .description('run the backup server: API, scheduler, job queue, catalog and an agent for this host')
    .option('--data-dir <dir>', 'where the server keeps everything: catalog, keystore, the storage unit "default" (default $COFFER_DATA_DIR, /var/lib/coffer as root, else ~/.local/share/coffer)')
    .option('--listen <host:port>', 'where the API listens', '127.0.0.1:7480')
    .option('--catalog <url>', 'the catalog: a file path (SQLite, default DATA_DIR/catalog.db) or postgres://user@host/db')
    .option('--workers <n>', 'worker threads of this host\'s agent while jobs run (default: one per two cores with the addon\'s encoder, else one per core)')
    .option('--max-jobs <n>', 'jobs running at once in all', '16')
    .option('--agent-listen <host:port>', 'where remote agents and storage nodes connect (mutual TLS; "none": nowhere)', '127.0.0.1:7481')
    .option('--agent-san <name>', 'another DNS name or IP address for the server\'s TLS certificate, as agents reach it (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--api-tls', 'serve the API over HTTPS even on loopback (beyond loopback it always is)')
    .addHelpText('after', `
With no options, everything is kept under one data directory: an embedded catalog (SQLite),
a local-disk storage unit named "default", and an agent that backs up and restores this host
(registered as a client named after the host name). The API listens on loopback only.

On first start the user "admin" is created with a random password, printed once and written to
DATA_DIR/initial-admin-password (mode 0600); set COFFER_ADMIN_PASSWORD to choose it instead.
Secrets (repository passwords) are kept in DATA_DIR/keystore.json, encrypted with
DATA_DIR/server.key, or with COFFER_SERVER_KEY (base64) / COFFER_SERVER_KEY_FILE in containers.
Remote agents and storage nodes connect to --agent-listen over mutual TLS with certificates from
the server's own CA (DATA_DIR/ca.key, ca.pem; its fingerprint is logged at start): enroll them
with \`coffer clients add NAME --enroll-token\` or \`coffer nodes add NAME --enroll-token\`. The API
serves HTTPS with a certificate from the same CA whenever --listen is not a loopback address.
Stop with Ctrl-C or SIGTERM: running jobs stop, are recorded as interrupted and run again after
the next start.`)
    .action(async (o: { dataDir?: string; listen: string; catalog?: string; workers?: string; maxJobs: string; agentListen: string; agentSan?: string[]; apiTls?: boolean }, cmd: Command) => {
      if (output(cmd).json) {
        throw new CofferError('USAGE', 'Cannot run the server with --json: its output is its log, which is JSON lines whenever standard error is not a terminal', { hint: 'Leave out --json.' });
      }
      const env = process.env;
      const { host, port } = parseListen(o.listen);
      const agentListen = o.agentListen === 'none' ? undefined : parseListen(o.agentListen);
      const workers = o.workers === undefined ? undefined : Number(o.workers);
      if (workers !== undefined && (!Number.isInteger(workers) || workers < 1 || workers > 256)) throw new CofferError('USAGE', `Cannot use --workers ${o.workers}: give a whole number from 1 to 256`);
      const maxJobs = Number(o.maxJobs);
      if (!Number.isInteger(maxJobs) || maxJobs < 1 || maxJobs > 10_000) throw new CofferError('USAGE', `Cannot use --max-jobs ${o.maxJobs}: give a whole number from 1 to 10000`);
      const dataDir = o.dataDir ?? defaultDataDir(env);
      // Loaded here, not at start-up: every other command would pay for the server's modules.
      const [{ startServer }, { pino }, { default: pretty }] = await Promise.all([import('../server/server.ts'), import('pino'), import('pino-pretty')]);
      const log: Logger = process.stderr.isTTY
        ? pino({ level: env.COFFER_LOG_LEVEL ?? 'info' }, pretty({ colorize: true, destination: 2, ignore: 'pid,hostname' }))
        : pino({ level: env.COFFER_LOG_LEVEL ?? 'info' }, pino.destination(2));
      if (env.COFFER_ADMIN_PASSWORD === '') throw new CofferError('USAGE', 'COFFER_ADMIN_PASSWORD is set but empty');
      const server = await startServer({
        dataDir,
        host,
        port,
        catalog: o.catalog,
        adminPassword: env.COFFER_ADMIN_PASSWORD,
        serverKey: readKey(env),
        serverKeyFile: env.COFFER_SERVER_KEY_FILE,
        log,
        workers,
        maxJobs,
        ...(agentListen ? { agentListen } : {}),
        ...(o.agentSan ? { agentSans: o.agentSan } : {}),
        ...(o.apiTls ? { apiTls: true } : {}),
        ...(env.COFFER_AGENT_PING_MS ? { agentPingMs: parseIntOption('COFFER_AGENT_PING_MS', env.COFFER_AGENT_PING_MS, 100, 3_600_000) } : {}),
      });
      const example = join(dataDir, 'example-policy.yaml');
      if (!existsSync(example)) writeFileSync(example, exampleFor(server.clientName, dataDir), { mode: 0o600 });
      const pwFile = join(dataDir, 'initial-admin-password');
      const lines = [
        `Coffer server ${VERSION} is running at ${server.url}`,
        `  data directory: ${dataDir} (catalog ${server.catalog.where}; storage unit "default"; this host is client "${server.clientName}")`,
        `  CA fingerprint (SHA-256): ${server.ca.fingerprint}${server.agentPort ? `; agents and nodes connect to ${server.agentPort.address}` : ''}`,
      ];
      if (server.initialAdminPassword) {
        lines.push(`  user "admin", password ${server.initialAdminPassword}  (shown once; also in ${pwFile}, mode 0600)`);
      } else if (existsSync(pwFile)) {
        lines.push(`  the first admin password is in ${pwFile}`);
      }
      const hasFile = existsSync(pwFile);
      lines.push(
        '',
        'Next:',
        `  coffer login --server ${server.url} --user admin${server.url.startsWith('https:') ? ` --ca-fingerprint ${server.ca.fingerprint}` : ''}${hasFile ? ` --password-stdin < ${pwFile}` : ''}`,
        `  coffer apply -f ${example}`,
        '  coffer backup now --policy example --wait',
        '',
      );
      process.stdout.write(lines.join('\n') + '\n');
      await new Promise<void>((resolve) => {
        let stopping = false;
        const stop = (signal: string) => {
          if (stopping) {
            log.warn('second signal: exiting at once');
            process.exit(130);
          }
          stopping = true;
          log.info({ signal }, 'stopping');
          void server.stop().then(resolve, (e) => {
            log.error({ err: (e as Error).message }, 'stop failed');
            resolve();
          });
        };
        process.on('SIGINT', () => stop('SIGINT'));
        process.on('SIGTERM', () => stop('SIGTERM'));
      });
    });
}
