// The mutual-TLS transport of storage nodes' data connections (the data service itself is
// src/node/service.ts): a node's data port, where agents connect with their certificates, and an
// agent's connection to it. Both sides use the certificates and the CA of their enrollment
// (src/agent/remote.ts): the node accepts only agent certificates of its CA and hands the data
// service the agent's name (a session serves only its own client); the agent accepts only the
// node the server named (its certificate's `coffer:node/NAME`), not whatever answers at the address.

import type { Duplex } from 'node:stream';
import { connect, createServer, type PeerCertificate, type Server, type TLSSocket } from 'node:tls';
import { CofferError } from '../core/errors.ts';
import type { RemoteAccess } from './protocol.ts';
import { identityFromAltNames } from './pki.ts';
import { parseServerAddress } from './remote.ts';

/** What both sides need of their enrollment: key, certificate and the CA (PEM). */
export interface TlsIdentity {
  key: string;
  cert: string;
  ca: string;
}

export interface DataPort {
  /** host:port agents are told to connect to. */
  address: string;
  /** Presents a renewed certificate to connections from now on. */
  setIdentity(identity: TlsIdentity): void;
  close(): Promise<void>;
}

/**
 * Listens for agents' data connections on host:port and gives each authenticated one to
 * `accept` with the agent's name. `advertise`: the address agents are told (default the one
 * listened on; a wildcard address needs one).
 */
export async function startDataPort(o: { host: string; port: number; advertise?: string; identity: TlsIdentity; accept: (socket: Duplex, agent: string) => void; log: (m: string) => void }): Promise<DataPort> {
  const server: Server = createServer({ key: o.identity.key, cert: o.identity.cert, ca: o.identity.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' });
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.on('error', () => {});
    const id = identityFromAltNames(socket.getPeerCertificate().subjectaltname);
    if (!id || id.role !== 'agent') {
      o.log(`data connection from ${socket.remoteAddress} refused: its certificate is not an agent's`);
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    o.accept(socket, id.name);
  });
  server.on('tlsClientError', (e, socket) => o.log(`data connection from ${socket.remoteAddress} refused: ${e.message}`));
  const port = await listenOn(server, o.host, o.port, { what: 'data connections', inUse: 'the address is in use', hint: 'Give another --data-listen HOST:PORT.' });
  const wildcard = o.host === '0.0.0.0' || o.host === '::';
  if (wildcard && !o.advertise) {
    server.close();
    throw new CofferError('USAGE', `Cannot tell agents where ${o.host}:${port} is: it listens on every address`, { hint: 'Give --data-address HOST:PORT, the address agents reach this node at.' });
  }
  const address = o.advertise ?? `${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}`;
  return {
    address,
    setIdentity: (id) => server.setSecureContext({ key: id.key, cert: id.cert, ca: id.ca }),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * Listens on host:port and resolves with the port bound (a given 0 picks one); a failure is
 * USAGE naming the address, `what` listens there, and `hint` (what to give instead).
 */
export async function listenOn(server: Server, host: string, port: number, o: { what: string; inUse: string; hint: string }): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((e: NodeJS.ErrnoException) => {
    throw new CofferError('USAGE', `Cannot listen for ${o.what} on ${host}:${port}: ${e.code === 'EADDRINUSE' ? o.inUse : e.message}`, { hint: o.hint });
  });
  return (server.address() as { port: number }).port;
}

/** An agent's data connection to the node the server named, authenticated both ways. */
export function connectToNode(remote: RemoteAccess, identity: TlsIdentity, signal: AbortSignal): Promise<Duplex> {
  const { host, port } = parseServerAddress(remote.address);
  return new Promise((resolve, reject) => {
    const socket = connect({
      host, port, key: identity.key, cert: identity.cert, ca: identity.ca, minVersion: 'TLSv1.3',
      // The node's certificate names it by its Coffer identity, not by a DNS name or address.
      checkServerIdentity: (_host: string, cert: PeerCertificate) => {
        const id = identityFromAltNames(cert.subjectaltname);
        if (id?.role === 'node' && id.name === remote.node) return undefined;
        return new Error(`the storage node at ${remote.address} is ${id ? `${id.role} ${id.name}` : 'no Coffer node'}, not node ${remote.node}`);
      },
    });
    const onAbort = () => fail(new CofferError('CANCELLED', 'the job was cancelled'));
    signal.addEventListener('abort', onAbort, { once: true });
    function fail(e: Error) {
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(e instanceof CofferError ? e : new CofferError('STORAGE_UNAVAILABLE', `Cannot connect to storage node ${remote.node} at ${remote.address}: ${e.message}`));
    }
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      signal.removeEventListener('abort', onAbort);
      socket.off('error', fail);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}
