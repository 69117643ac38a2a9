// The agent port (`coffer server --agent-listen HOST:PORT`, default 127.0.0.1:7481): where remote
// agents and storage nodes connect out to the server over mutual TLS (docs/server.md "Remote
// agents and storage nodes"). The server presents a certificate its own CA issued (ca.ts) and
// asks every peer for one:
//   - a peer with a valid client certificate whose serial is on record and not revoked runs the
//     agent protocol (AgentLink over the TLS socket, as the embedded agent does over its pipes).
//     Its hello must give the name its certificate was issued for. An agent is then registered
//     under its client name in services.agents (and its client row upserted from its hello); a
//     node in services.nodes. It may renew its certificate over the connection (`renew`).
//   - a peer without one may send a single `enroll { token, csr, role }` and gets `enrolled` with
//     its certificate and the CA's, or `refuse` with the reason; the connection then ends.
// Revocation (revoke()) closes the identity's live connection at once with a refusal that tells
// it to stop; a later connection with a revoked certificate is refused at its first message.

import { createHash } from 'node:crypto';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { toCofferError } from '../core/errors.ts';
import { LineReader, encodeMessage, parseToServer, refusalFor, type RefusalCode, type ToAgent } from '../agent/protocol.ts';
import { certificateInfo, identityFromAltNames, type Identity, type PkiRole } from '../agent/pki.ts';
import { listenOn } from '../agent/data-port.ts';
import { AgentLink, type AgentHello } from './agent-link.ts';
import type { CertificateAuthority, ServerTls } from './ca.ts';
import type { Services } from './services.ts';

export interface AgentPortOptions {
  services: Services;
  ca: CertificateAuthority;
  host: string;
  port: number;
  /** The server certificate the port presents (kept current with setCertificate). */
  tls: ServerTls;
  log: Logger;
  /** Ping interval of remote links (default 15 s). */
  pingMs?: number;
  /** How long a connection may take to say hello or enroll (default 30 s). */
  helloTimeoutMs?: number;
}

/** A remote agent or node connected now. */
export interface RemoteConnection {
  name: string;
  role: PkiRole;
  address: string;
  version: string;
  serial: string;
  since: number;
  lastSeen: number;
  link: AgentLink;
}

/** The SHA-256 (hex) under which an enrollment token's secret is stored. */
export function hashEnrollmentToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export class AgentPort {
  /** HOST:PORT where it listens (the port the system chose when given 0). */
  readonly address: string;
  readonly port: number;
  private readonly server: Server;
  private readonly o: AgentPortOptions;
  private readonly live = new Map<string, RemoteConnection>();
  private readonly sockets = new Set<TLSSocket>();

  private constructor(server: Server, o: AgentPortOptions, port: number) {
    this.server = server;
    this.o = o;
    this.port = port;
    this.address = `${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}`;
  }

  static async start(o: AgentPortOptions): Promise<AgentPort> {
    const server = createServer({ key: o.tls.key, cert: o.tls.chain, ca: o.ca.pem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const port = await listenOn(server, o.host, o.port, { what: 'agents', inUse: 'the address is in use (another coffer server?)', hint: 'Give another address with --agent-listen HOST:PORT.' });
    const agentPort = new AgentPort(server, o, port);
    server.on('secureConnection', (socket) => agentPort.accept(socket));
    // A failed handshake (not TLS, a client that distrusts us) is the peer's problem: logged, not fatal.
    server.on('tlsClientError', (e, socket) => o.log.debug({ err: e.message, address: socket.remoteAddress }, 'agent port: TLS handshake failed'));
    return agentPort;
  }

  /** Presents a new server certificate to connections from now on (the running ones keep theirs). */
  setCertificate(tls: ServerTls): void {
    this.server.setSecureContext({ key: tls.key, cert: tls.chain, ca: this.o.ca.pem });
  }

  /** The remote agents or nodes connected now. */
  connected(role: PkiRole): RemoteConnection[] {
    return [...this.live.values()].filter((c) => c.role === role);
  }

  /**
   * Disconnects the identity's live connection (if any), telling it it was revoked; returns
   * whether there was one.
   */
  revoke(role: PkiRole, name: string, reason: string): boolean {
    const c = this.live.get(key(role, name));
    if (!c) return false;
    c.link.refuse(reason, 'REVOKED');
    return true;
  }

  async close(): Promise<void> {
    for (const c of this.live.values()) c.link.close('the server is stopping');
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private accept(socket: TLSSocket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => {}); // the link or the enrollment reports what matters
    socket.setNoDelay(true);
    const address = `${socket.remoteAddress}:${socket.remotePort}`;
    const peer = socket.getPeerCertificate();
    const hasCertificate = peer !== null && typeof peer === 'object' && Object.keys(peer).length > 0;
    if (!hasCertificate) return this.enrollment(socket, address);
    const identity = identityFromAltNames(peer.subjectaltname);
    if (!socket.authorized || !identity) {
      const why = socket.authorizationError ? String(socket.authorizationError) : 'it names no Coffer agent or node';
      const expired = /EXPIRED/i.test(why);
      const reason = expired
        ? `The certificate of ${identity ? `${identity.role} ${identity.name}` : 'this host'} expired: enroll it again with a new token (coffer ${identity?.role === 'node' ? 'nodes' : 'clients'} add NAME --enroll-token)`
        : `The certificate this host presented was not issued by this server's CA (${why}): enroll it with a token from this server`;
      this.o.log.warn({ address, reason }, 'agent port: certificate refused');
      return refuseSocket(socket, reason, 'ENROLL');
    }
    void this.authenticated(socket, identity, peer.serialNumber.toUpperCase(), address).catch((e) => {
      this.o.log.error({ address, err: toCofferError(e).message }, 'agent port: cannot accept the connection');
      socket.destroy();
    });
  }

  private async authenticated(socket: TLSSocket, identity: Identity, serial: string, address: string): Promise<void> {
    const { catalog } = this.o.services;
    const { role, name } = identity;
    const cert = await catalog.pki.findCertificate(serial);
    if (!cert || cert.name !== name || cert.role !== role) {
      this.o.log.warn({ address, role, name, serial }, 'agent port: a certificate this server has no record of');
      return refuseSocket(socket, `The certificate of ${role} ${name} (serial ${serial}) is not on this server's record: enroll the host again with a new token`, 'ENROLL');
    }
    if (cert.revoked !== undefined) {
      this.o.log.warn({ address, role, name, serial }, 'agent port: revoked certificate refused');
      return refuseSocket(socket, revokedReason(role, name), 'REVOKED');
    }
    const link = new AgentLink(socket, socket, {
      pingMs: this.o.pingMs,
      helloTimeoutMs: this.o.helloTimeoutMs,
      checkHello: (hello: AgentHello) => hello.name === name ? undefined : {
        reason: `This connection's certificate was issued for ${role} ${name}, but its hello says ${hello.name}: give --name ${name}, or enroll ${hello.name} with its own token`,
        code: 'IDENTITY',
      },
      onRenew: async (csr) => {
        const issued = await this.o.ca.issueAndRecord(catalog, csr, role, name);
        this.o.log.info({ role, name, serial: issued.serial, notAfter: issued.notAfter }, 'certificate renewed');
        return issued.pem;
      },
      onHeard: () => {
        const c = this.live.get(key(role, name));
        if (!c || c.link !== link) return;
        const now = Date.now();
        // Recorded at most once a minute: pongs come every ping interval from every host.
        if (now - c.lastSeen >= 60_000) void catalog.pki.seen(serial, now, address).catch(() => {});
        c.lastSeen = now;
      },
    });
    let hello: AgentHello;
    try {
      hello = await link.ready;
    } catch (e) {
      this.o.log.warn({ address, role, name, reason: (e as Error).message }, 'agent port: connection refused or lost before its hello');
      return;
    }
    const now = Date.now();
    const previous = this.live.get(key(role, name));
    previous?.link.close('replaced by a new connection of the same host');
    const conn: RemoteConnection = { name, role, address, version: hello.version, serial, since: now, lastSeen: now, link };
    this.live.set(key(role, name), conn);
    await catalog.pki.seen(serial, now, address);
    if (role === 'agent') {
      await catalog.clients.upsert({ name, platform: String(hello.host.os ?? ''), agentId: `remote@${String(hello.host.hostname ?? name)}`, hostIdentity: hello.host });
      await catalog.clients.seen(name);
      // A remote agent holds no repository key: its backups go through a storage node.
      this.o.services.agents.set(name, link, { remote: true });
    } else {
      const dataAddress = typeof hello.host.dataAddress === 'string' ? hello.host.dataAddress : undefined;
      this.o.services.nodes.set(name, link, dataAddress ? { dataAddress } : {});
    }
    this.o.log.info({ role, name, address, version: hello.version }, `remote ${role} connected`);
    void link.closed.then(({ reason }) => {
      if (this.live.get(key(role, name))?.link === link) this.live.delete(key(role, name));
      void catalog.pki.seen(serial, Date.now()).catch(() => {});
      if (role === 'agent') void catalog.clients.seen(name).catch(() => {});
      this.o.log.info({ role, name, address, reason }, `remote ${role} disconnected`);
    });
  }

  /** A connection without a client certificate: one enroll message, one answer. */
  private enrollment(socket: TLSSocket, address: string): void {
    let done = false;
    const finish = (m: ToAgent) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reader.stop();
      socket.end(encodeMessage(m));
    };
    const refuse = (reason: string, code: RefusalCode = 'ENROLL') => {
      this.o.log.warn({ address, reason }, 'agent port: enrollment refused');
      finish({ t: 'refuse', reason, code });
    };
    const timer = setTimeout(() => refuse('No enrollment request came in time'), this.o.helloTimeoutMs ?? 30_000);
    timer.unref();
    const reader = new LineReader((line) => {
      reader.stop();
      void this.enroll(line, address).then((m) => {
        if (m.t === 'refuse') refuse(m.reason, m.code);
        else finish(m);
      }, (e) => refuse(`The server could not enroll this host: ${toCofferError(e).message}`));
    }, (e) => refuse(e.message, 'PROTOCOL'));
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.once('end', () => {
      clearTimeout(timer);
      done = true;
    });
  }

  private async enroll(line: string, address: string): Promise<ToAgent> {
    const { catalog } = this.o.services;
    const m = parseToServer(line);
    if (m.t !== 'enroll') {
      return { t: 'refuse', code: 'ENROLL', reason: 'This connection has no client certificate: it may only enroll. Run `coffer agent enroll` (or `coffer node enroll`) with a token first' };
    }
    const protocol = refusalFor(m.protocol);
    if (protocol) return { t: 'refuse', code: 'PROTOCOL', reason: protocol };
    const hash = hashEnrollmentToken(m.token);
    const found = await catalog.pki.findEnrollment(hash);
    const ask = (role: string) => `Ask an administrator for a new one: coffer ${role === 'node' ? 'nodes' : 'clients'} add NAME --enroll-token`;
    if (!found) return { t: 'refuse', code: 'ENROLL', reason: `The enrollment token is not valid on this server. ${ask(m.role)}` };
    if (found.role !== m.role) {
      return { t: 'refuse', code: 'ENROLL', reason: `This token enrolls a ${found.role === 'node' ? 'storage node' : 'client agent'}, not a ${m.role}: run \`coffer ${found.role} enroll\` with it` };
    }
    if (m.name !== undefined && m.name !== found.name) {
      return { t: 'refuse', code: 'ENROLL', reason: `This token enrolls ${found.role} ${found.name}, not ${m.name}: leave out --name, or ask for a token for ${m.name}` };
    }
    const role = found.role as PkiRole;
    // Sign first (a bad request does not use the token up), record once the token is claimed.
    const issued = await this.o.ca.issueClient(m.csr, role, found.name).catch((e) => e as Error);
    if (issued instanceof Error) return { t: 'refuse', code: 'ENROLL', reason: issued.message };
    const claim = await catalog.pki.claimEnrollment(hash, Date.now());
    if (!claim.ok) {
      const why = claim.reason === 'used' ? `was already used${claim.enrollment?.used ? ` (${new Date(claim.enrollment.used).toISOString()})` : ''}: tokens work once`
        : claim.reason === 'expired' ? `expired at ${new Date(found.expires).toISOString()}`
          : 'is not valid on this server';
      return { t: 'refuse', code: 'ENROLL', reason: `The enrollment token for ${role} ${found.name} ${why}. ${ask(role)}` };
    }
    const info = await catalog.transaction(async (tx) => {
      const cert = await tx.pki.addCertificate({ serial: issued.serial, name: found.name, role, notBefore: certificateInfo(issued.pem).notBefore, notAfter: issued.notAfter, issued: Date.now() });
      await tx.pki.enrolled(found.id, issued.serial);
      await tx.audit.append({ actor: `${role}:${found.name}`, source: address, action: `${role}.enroll`, target: `${role}/${found.name}`, outcome: 'ok', details: { serial: issued.serial, notAfter: issued.notAfter, token: found.id } });
      return cert;
    });
    this.o.log.info({ role, name: found.name, address, serial: info.serial }, `${role} enrolled`);
    return { t: 'enrolled', certificate: issued.pem, ca: this.o.ca.pem, name: found.name, role };
  }
}

function key(role: PkiRole, name: string): string {
  return `${role}/${name}`;
}

/** What a revoked agent or node is told: it stops, and what to do about it. */
export function revokedReason(role: PkiRole, name: string): string {
  return `The certificate of ${role} ${name} was revoked by an administrator: this host may no longer connect. To let it back, enroll it again with a new token (coffer ${role === 'node' ? 'nodes' : 'clients'} add ${name} --enroll-token)`;
}

function refuseSocket(socket: TLSSocket, reason: string, code: RefusalCode): void {
  socket.end(encodeMessage({ t: 'refuse', reason, code }));
  setTimeout(() => socket.destroy(), 5_000).unref();
}
