// The server's TLS side at start-up (docs/server.md "Remote agents and storage nodes"): opens
// the certificate authority (ca.ts), issues the server's own TLS certificate for the names it is
// reached by, renews it when a third of its lifetime is left (the agent port and the HTTPS API
// take the new one for new connections), and opens the agent port when one was asked for. The
// API is HTTPS exactly when it listens beyond loopback (apiNeedsTls), or when told to.

import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { createCsr, generateKeyPair } from '../agent/pki.ts';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { AgentPort } from './agent-port.ts';
import { CertificateAuthority, certLifetimeFromEnv, type ServerTls } from './ca.ts';
import type { Services } from './services.ts';

export interface PkiStartOptions {
  services: Services;
  dataDir: string;
  env: NodeJS.ProcessEnv;
  log: Logger;
  /** Where the API listens. */
  apiHost: string;
  /** Force HTTPS on (or off) for the API; default apiNeedsTls(apiHost). */
  apiTls?: boolean;
  agentListen?: { host: string; port: number };
  sans?: string[];
  pingMs?: number;
}

export interface ServerPki {
  ca: CertificateAuthority;
  port: AgentPort | undefined;
  /** The API's key and certificate chain when it serves HTTPS. */
  apiTls: { key: string; cert: string } | undefined;
  /** Called with each renewed server certificate. */
  onCertificate(fn: (tls: ServerTls) => void): void;
  stop(): Promise<void>;
}

/** True unless `host` is a loopback address (127.0.0.0/8, ::1, localhost): the API beyond loopback needs TLS. */
export function apiNeedsTls(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return false;
  if (isIP(h) === 4) return !h.startsWith('127.');
  if (h.startsWith('::ffff:127.')) return false;
  return true;
}

/** The names the server's certificate carries: its listen addresses, its host name, loopback and the extra ones given. */
export function serverNames(hosts: readonly string[], extra: readonly string[] = []): string[] {
  const names = [...hosts, hostname().toLowerCase(), 'localhost', '127.0.0.1', '::1', ...extra];
  return [...new Set(names.map((n) => n.replace(/^\[|\]$/g, '')).filter((n) => n !== '' && n !== '0.0.0.0' && n !== '::'))];
}

export async function startPki(o: PkiStartOptions): Promise<ServerPki> {
  const ca = await CertificateAuthority.open(o.dataDir, { lifetimeMs: certLifetimeFromEnv(o.env) });
  o.log.info({ caFingerprint: ca.fingerprint }, 'certificate authority ready');
  const names = serverNames([o.apiHost, ...(o.agentListen ? [o.agentListen.host] : [])], o.sans);
  let tls = await ca.issueServer(names);
  const listeners: Array<(tls: ServerTls) => void> = [];
  let port: AgentPort | undefined;
  if (o.agentListen) {
    port = await AgentPort.start({ services: o.services, ca, host: o.agentListen.host, port: o.agentListen.port, tls, log: o.log, pingMs: o.pingMs });
    listeners.push((t) => port!.setCertificate(t));
    o.log.info({ address: port.address, caFingerprint: ca.fingerprint }, 'agent port listening');
  }
  // Renew the server's certificate when a third of its lifetime is left.
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const schedule = () => {
    const at = tls.notAfter - ca.lifetimeMs / 3;
    timer = setTimeout(() => {
      void ca.issueServer(names).then((t) => {
        if (stopped) return;
        tls = t;
        for (const fn of listeners) fn(t);
        o.log.info({ notAfter: t.notAfter }, 'server certificate renewed');
        schedule();
      }, (e: Error) => {
        o.log.error({ err: e.message }, 'cannot renew the server certificate; trying again in a minute');
        timer = setTimeout(schedule, 60_000);
        timer.unref();
      });
    }, Math.min(Math.max(at - Date.now(), 1_000), 2 ** 31 - 1));
    timer.unref();
  };
  schedule();
  const useTls = o.apiTls ?? apiNeedsTls(o.apiHost);
  return {
    ca,
    port,
    apiTls: useTls ? { key: tls.key, cert: tls.chain } : undefined,
    onCertificate: (fn) => void listeners.push(fn),
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await port?.close();
    },
  };
}

/**
 * The embedded node's key and certificate (role node, the server's host's client name), in a
 * directory of the server's data directory that the embedded agent reads: key.pem (0600),
 * cert.pem, ca.pem. Issued at every start and again when a third of its life is left; the agent
 * notices new files and presents them from then on (src/cli/cmd_agent.ts).
 */
export class EmbeddedNodeTls {
  readonly dir: string;
  private readonly ca: CertificateAuthority;
  private readonly name: string;
  private issued: { notBefore: number; notAfter: number } | undefined;

  constructor(dir: string, ca: CertificateAuthority, name: string) {
    this.dir = dir;
    this.ca = ca;
    this.name = name;
  }

  async issue(): Promise<void> {
    const { privateKeyPem, keys } = await generateKeyPair();
    const cert = await this.ca.issueClient(await createCsr(this.name, 'node', keys), 'node', this.name);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    // Key first, then the certificate: the agent reloads when cert.pem changes, and a key that is
    // newer than its certificate is never presented (both are renamed into place).
    for (const [file, text, mode] of [['key.pem', privateKeyPem, 0o600], ['ca.pem', this.ca.pem, 0o644], ['cert.pem', cert.pem, 0o644]] as const) {
      const tmp = join(this.dir, `.${file}.tmp`);
      writeFileSync(tmp, text, { mode });
      renameSync(tmp, join(this.dir, file));
    }
    this.issued = { notBefore: Date.now(), notAfter: cert.notAfter };
  }

  async renewIfDue(now = Date.now()): Promise<void> {
    const i = this.issued;
    if (!i || now >= i.notAfter - (i.notAfter - i.notBefore) / 3) await this.issue();
  }
}
