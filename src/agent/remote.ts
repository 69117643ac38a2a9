// A remote agent or storage node: the host's side of enrollment and of the mutual-TLS connection
// to the server's agent port (docs/server.md "Remote agents and storage nodes"; the server's side
// is src/server/agent-port.ts).
//
// enroll(): makes a key pair here (the private key never leaves the host), connects to the agent
// port without a client certificate, checks that the server's certificate was issued by the CA
// whose fingerprint it was given (or, given none, reports the one it trusted), sends the token
// and a CSR, and writes what it gets into the state directory:
//   STATE_DIR/key.pem      the private key (0600)
//   STATE_DIR/cert.pem     its certificate, issued by the server's CA
//   STATE_DIR/ca.pem       the CA's certificate: the only one the agent trusts for the server
//   STATE_DIR/server.json  where the server is, the identity, the CA's fingerprint
// runRemote(): connects out (the host listens on nothing), serves the agent protocol with the
// agent runtime over the TLS socket (serveAgent), drops a connection that has heard nothing for
// three ping intervals, reconnects with exponential backoff and jitter (1 s, doubling, at most
// 60 s), renews its certificate over the connection when a third of its lifetime is left, and
// stops for good on a refusal (revoked, another protocol version, a name that is not its own),
// with the server's reason.

import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { CofferError } from '../core/errors.ts';
import { VERSION } from '../core/version.ts';
import { LineReader, PROTOCOL_VERSION, encodeMessage, parseToAgent, type NodeLoad, type RefusalCode, type ToServer } from './protocol.ts';
import { certificateInfo, checkIdentityName, createCsr, fingerprint, generateKeyPair, issuedBy, normalizeFingerprint, toPem, type PkiRole } from './pki.ts';
import type { AgentRuntime } from './runtime.ts';
import { serveAgent } from './serve.ts';

/** What server.json holds. */
export interface RemoteState {
  server: string;
  name: string;
  role: PkiRole;
  caFingerprint: string;
  enrolled: number;
}

export interface EnrollOptions {
  /** The agent port, HOST:PORT. */
  server: string;
  token: string;
  /** The CA's SHA-256 fingerprint as the administrator was shown it; absent: trust on first use. */
  caFingerprint?: string;
  stateDir: string;
  role: PkiRole;
  /** The name to enroll as; must be the token's when given. */
  name?: string;
  /** How long to wait for the server (default 30 s). */
  timeoutMs?: number;
}

export interface EnrollResult {
  name: string;
  role: PkiRole;
  server: string;
  caFingerprint: string;
  /** 'given': it matched --ca-fingerprint; 'first-use': none was given, and this one was trusted. */
  trust: 'given' | 'first-use';
  notAfter: number;
  stateDir: string;
}

/**
 * HOST:PORT (or [v6]:PORT) of a server's agent port or a node's data port; USAGE otherwise.
 * `listen`: an address to listen on, where port 0 (any) is allowed.
 */
export function parseServerAddress(value: string, options: { listen?: boolean } = {}): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s/]+)):(\d{1,5})$/.exec(value.replace(/^tls:\/\//, ''));
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= (options.listen ? 0 : 1) && port <= 65535)) {
    throw new CofferError('USAGE', `Cannot use the address ${JSON.stringify(value)}: give HOST:PORT (e.g. backup.example.com:7481)`);
  }
  return { host: m[1] ?? m[2]!, port };
}

const files = (dir: string) => ({ key: join(dir, 'key.pem'), cert: join(dir, 'cert.pem'), ca: join(dir, 'ca.pem'), state: join(dir, 'server.json') });

/** Enrolls this host with the server: see the header. */
export async function enroll(o: EnrollOptions): Promise<EnrollResult> {
  const { host, port } = parseServerAddress(o.server);
  const expected = o.caFingerprint === undefined ? undefined : normalizeFingerprint(o.caFingerprint);
  if (o.name !== undefined) checkIdentityName(o.name, `${o.role} name`);
  const f = files(o.stateDir);
  if (existsSync(f.cert) || existsSync(f.state)) {
    throw new CofferError('ALREADY_EXISTS', `Cannot enroll into ${o.stateDir}: it already holds an enrollment (${f.state})`, { hint: 'Give another --state-dir, or remove that one first (the old certificate is then useless: revoke it on the server).' });
  }
  mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
  const { privateKeyPem, keys } = await generateKeyPair();
  const csr = await createCsr(o.name ?? (hostname().toLowerCase().replace(/[^a-z0-9._-]/g, '-') || 'host'), o.role, keys);

  const socket = await openTls({ host, port, rejectUnauthorized: false }, o.timeoutMs);
  let seen: { fingerprint: string; pem: string };
  try {
    seen = serverCa(socket);
    if (expected !== undefined && seen.fingerprint !== expected) {
      throw new CofferError('REFUSED', `Refusing to enroll with ${o.server}: its CA's fingerprint is ${seen.fingerprint}, not ${expected} as given`, {
        hint: 'Someone may be in between, or this is another server. Check the fingerprint `coffer server` logged (or `coffer clients add` printed) and the address.',
      });
    }
  } catch (e) {
    socket.destroy();
    throw e;
  }
  const answer = await exchange(socket, { t: 'enroll', protocol: PROTOCOL_VERSION, token: o.token, csr, role: o.role, ...(o.name !== undefined ? { name: o.name } : {}) }, o.timeoutMs ?? 30_000);
  if (answer.t === 'refuse') throw refusalError(answer.reason, answer.code ?? 'ENROLL');
  if (answer.t !== 'enrolled') throw new CofferError('PROTOCOL', `The server answered the enrollment with ${answer.t}`);
  if (fingerprint(answer.ca) !== seen.fingerprint || !issuedBy(answer.certificate, answer.ca)) {
    throw new CofferError('PROTOCOL', 'The server sent a certificate that its own CA did not issue: refusing it', { hint: 'Report this: the server or something in between misbehaves.' });
  }
  const info = certificateInfo(answer.certificate);
  writeAtomically(f.key, privateKeyPem, 0o600);
  writeAtomically(f.cert, answer.certificate, 0o644);
  writeAtomically(f.ca, answer.ca, 0o644);
  const state: RemoteState = { server: o.server, name: answer.name, role: answer.role, caFingerprint: seen.fingerprint, enrolled: Date.now() };
  writeAtomically(f.state, JSON.stringify(state, null, 2) + '\n', 0o644);
  return { name: answer.name, role: answer.role, server: o.server, caFingerprint: seen.fingerprint, trust: expected ? 'given' : 'first-use', notAfter: info.notAfter, stateDir: o.stateDir };
}

/** The enrollment in a state directory; USAGE when there is none or it does not fit together. */
export function readRemoteState(stateDir: string, role: PkiRole): RemoteState & { key: string; cert: string; ca: string } {
  const f = files(stateDir);
  let state: RemoteState;
  try {
    state = JSON.parse(readFileSync(f.state, 'utf8')) as RemoteState;
  } catch {
    throw new CofferError('USAGE', `Cannot run the ${role}: ${stateDir} holds no enrollment (no readable server.json)`, { hint: `Enroll first: coffer ${role} enroll --server HOST:7481 --token TOKEN --state-dir ${stateDir}` });
  }
  if (state.role !== role) throw new CofferError('USAGE', `Cannot run a ${role} from ${stateDir}: it was enrolled as a ${state.role}`, { hint: `Run \`coffer ${state.role} run --state-dir ${stateDir}\`, or enroll the ${role} into another directory.` });
  const key = readFileSync(f.key, 'utf8');
  const cert = readFileSync(f.cert, 'utf8');
  const ca = readFileSync(f.ca, 'utf8');
  if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) {
    throw new CofferError('INVALID_CONFIG', `Cannot run the ${role}: key.pem and cert.pem in ${stateDir} do not belong together`, { hint: 'Enroll again into an empty --state-dir with a new token.' });
  }
  return { ...state, key, cert, ca };
}

export interface RunRemoteOptions {
  stateDir: string;
  role: PkiRole;
  runtime: AgentRuntime;
  host: Record<string, unknown>;
  /** The name the hello gives (default: the enrolled one; another is refused by the server). */
  name?: string;
  signal: AbortSignal;
  log: (message: string) => void;
  /** Backoff of reconnections: first and largest delay (default 1 s and 60 s). */
  backoffMs?: { base: number; max: number };
  /** How busy this host is, with every pong (a storage node: what the server balances by). */
  load?: () => NodeLoad;
  /** After a renewal: the new key and certificate (a node's data port takes them). */
  onRenewed?: (identity: { key: string; cert: string; ca: string }) => void;
}

export interface RunRemoteResult {
  /** 'stopped': by the signal; 'refused': the server said to stop for good. */
  reason: 'stopped' | 'refused';
  message?: string;
  code?: RefusalCode;
}

/** Connects to the server and serves it until stopped or refused: see the header. */
export async function runRemote(o: RunRemoteOptions): Promise<RunRemoteResult> {
  const base = o.backoffMs?.base ?? 1_000;
  const max = o.backoffMs?.max ?? 60_000;
  let failures = 0;
  while (!o.signal.aborted) {
    const state = readRemoteState(o.stateDir, o.role);
    const { host, port } = parseServerAddress(state.server);
    let welcomed = false;
    let socket: TLSSocket | undefined;
    try {
      socket = await openTls({ host, port, ca: state.ca, key: state.key, cert: state.cert, ...(isIP(host) ? {} : { servername: host }) }, 30_000, o.signal);
    } catch (e) {
      if (o.signal.aborted) break;
      o.log(`cannot connect to ${state.server}: ${(e as Error).message}`);
    }
    if (socket) {
      const session = serveSession(o, state, socket, () => {
        welcomed = true;
        failures = 0;
        o.log(`connected to ${state.server} as ${o.role} ${o.name ?? state.name}`);
      });
      const r = await session;
      if (r.reason === 'refused') {
        const message = r.message ?? 'the server refused the connection';
        o.log(`refused by the server: ${message}`);
        return { reason: 'refused', message, ...(r.code ? { code: r.code } : {}) };
      }
      if (o.signal.aborted) break;
      o.log(`disconnected from ${state.server}${r.message ? `: ${r.message}` : ''}`);
    }
    if (!welcomed) failures++;
    const delay = Math.min(max, base * 2 ** Math.max(0, failures - 1)) * (0.5 + Math.random() / 2);
    o.log(`reconnecting in ${(delay / 1000).toFixed(1)} s`);
    await sleep(delay, o.signal);
  }
  return { reason: 'stopped' };
}

/** One connection: the agent protocol, the silence watchdog and certificate renewal. */
async function serveSession(o: RunRemoteOptions, state: ReturnType<typeof readRemoteState>, socket: TLSSocket, onWelcome: () => void): Promise<{ reason: string; message?: string; code?: RefusalCode }> {
  let heard = Date.now();
  let watchdog: NodeJS.Timeout | undefined;
  let renewTimer: NodeJS.Timeout | undefined;
  let pendingKey: string | undefined;
  socket.on('data', () => (heard = Date.now()));
  const onAbort = () => socket.destroy();
  o.signal.addEventListener('abort', onAbort, { once: true });
  let send: ((m: ToServer) => void) | undefined;

  const scheduleRenewal = (certPem: string) => {
    const info = certificateInfo(certPem);
    const lifetime = info.notAfter - info.notBefore;
    const due = info.notAfter - lifetime / 3;
    clearTimeout(renewTimer);
    renewTimer = setTimeout(() => void renew(), Math.min(Math.max(0, due - Date.now()), 2 ** 31 - 1));
    renewTimer.unref();
  };
  const renew = async () => {
    const { privateKeyPem, keys } = await generateKeyPair();
    pendingKey = privateKeyPem;
    send?.({ t: 'renew', csr: await createCsr(state.name, o.role, keys) });
  };

  const r = await serveAgent({
    input: socket,
    output: socket,
    runtime: o.runtime,
    agent: { name: o.name ?? state.name, version: VERSION, host: o.host },
    log: (m) => o.log(m),
    ...(o.load ? { load: o.load } : {}),
    onWelcome: (welcome, s) => {
      send = s;
      onWelcome();
      const pingMs = welcome.pingMs ?? 15_000;
      watchdog = setInterval(() => {
        if (Date.now() - heard > 3 * pingMs && !socket.destroyed) {
          // Said once: the session ends when the jobs it ran have stopped (told to, at once).
          o.log(`heard nothing from the server for ${Math.round((Date.now() - heard) / 1000)} s: dropping the connection`);
          socket.destroy();
        }
      }, Math.max(100, Math.floor(pingMs / 2)));
      watchdog.unref();
      scheduleRenewal(readFileSync(files(o.stateDir).cert, 'utf8'));
    },
    onRenewed: (m) => {
      if (m.certificate && pendingKey && issuedBy(m.certificate, state.ca) && new X509Certificate(m.certificate).checkPrivateKey(createPrivateKey(pendingKey))) {
        const f = files(o.stateDir);
        writeAtomically(f.key, pendingKey, 0o600);
        writeAtomically(f.cert, m.certificate, 0o644);
        o.onRenewed?.({ key: pendingKey, cert: m.certificate, ca: state.ca });
        pendingKey = undefined;
        o.log(`certificate renewed until ${new Date(certificateInfo(m.certificate).notAfter).toISOString()}`);
        scheduleRenewal(m.certificate);
        return;
      }
      const why = m.reason ?? 'the server sent a certificate that does not fit the request';
      o.log(`cannot renew the certificate: ${why}; trying again in a minute`);
      clearTimeout(renewTimer);
      renewTimer = setTimeout(() => void renew(), 60_000);
      renewTimer.unref();
    },
  });
  clearInterval(watchdog);
  clearTimeout(renewTimer);
  o.signal.removeEventListener('abort', onAbort);
  socket.destroy();
  return r;
}

/** A CofferError for a refusal: what the server said, and the exit code that fits. */
export function refusalError(reason: string, code: RefusalCode | undefined): CofferError {
  if (code === 'PROTOCOL') return new CofferError('PROTOCOL', reason);
  if (code === 'IDENTITY') return new CofferError('REFUSED', reason);
  return new CofferError('UNAUTHENTICATED', reason);
}

/**
 * The CA certificate a Coffer server presents at HOST:PORT (the agent port, or the HTTPS API),
 * checked to have issued the server's certificate; nothing is trusted yet: the caller compares
 * the fingerprint with the one it was given.
 */
export async function presentedCa(host: string, port: number, timeoutMs = 30_000): Promise<{ fingerprint: string; pem: string }> {
  const socket = await openTls({ host, port, rejectUnauthorized: false }, timeoutMs);
  try {
    return serverCa(socket);
  } finally {
    socket.destroy();
  }
}

/** The CA certificate the server presented with its own, checked to have issued it. */
function serverCa(socket: TLSSocket): { fingerprint: string; pem: string } {
  const leaf = socket.getPeerCertificate(true);
  const issuer = leaf?.issuerCertificate;
  if (!leaf?.raw || !issuer?.raw || issuer.raw.equals(leaf.raw)) {
    throw new CofferError('PROTOCOL', 'The server did not present its CA certificate: this is not a Coffer agent port', { hint: 'Give the agent port (default 7481), not the API port.' });
  }
  const pem = toPem(issuer.raw, 'CERTIFICATE');
  const leafPem = toPem(leaf.raw, 'CERTIFICATE');
  if (!issuedBy(leafPem, pem)) throw new CofferError('PROTOCOL', 'The server\'s certificate was not issued by the CA it presented: refusing it');
  return { fingerprint: fingerprint(issuer.raw), pem };
}

function openTls(options: ConnectionOptions & { host: string; port: number }, timeoutMs = 30_000, signal?: AbortSignal): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ ...options, minVersion: 'TLSv1.3' });
    const timer = setTimeout(() => fail(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
    const onAbort = () => fail(new CofferError('CANCELLED', 'stopped'));
    signal?.addEventListener('abort', onAbort, { once: true });
    function fail(e: Error) {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(e);
    }
    socket.once('error', (e) => fail(new CofferError('STORAGE_UNAVAILABLE', `Cannot connect to ${options.host}:${options.port}: ${e.message}`, { hint: 'Is `coffer server` running there with --agent-listen, and can this host reach it?' })));
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      socket.on('error', () => {});
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

/** Sends one message and waits for one answer line. */
function exchange(socket: TLSSocket, message: ToServer, timeoutMs: number): Promise<ReturnType<typeof parseToAgent>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new CofferError('STORAGE_UNAVAILABLE', `The server did not answer within ${timeoutMs / 1000} s`)), timeoutMs);
    let finished = false;
    const done = (r: Error | ReturnType<typeof parseToAgent>) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      reader.stop();
      socket.end();
      if (r instanceof Error) reject(r);
      else resolve(r);
    };
    const reader = new LineReader((line) => {
      try {
        done(parseToAgent(line));
      } catch (e) {
        done(e as Error);
      }
    }, (e) => done(e));
    socket.on('data', (c: Buffer) => reader.push(c));
    socket.once('end', () => done(new CofferError('STORAGE_UNAVAILABLE', 'The server closed the connection without an answer')));
    socket.once('close', () => done(new CofferError('STORAGE_UNAVAILABLE', 'The connection to the server was lost')));
    socket.write(encodeMessage(message));
  });
}

function writeAtomically(file: string, text: string, mode: number): void {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  writeFileSync(tmp, text, { mode, flag: 'wx' });
  renameSync(tmp, file);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
  });
}
