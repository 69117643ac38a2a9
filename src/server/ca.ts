// The server's certificate authority (issue #12; docs/server.md "Remote agents and storage
// nodes"). At the first start it makes its key and a self-signed CA certificate in the data
// directory (ca.key, mode 0600; ca.pem); after that it signs:
//   - the server's own TLS certificates (the agent port, and the API when it listens beyond
//     loopback), made afresh at every start and before they run out: clients trust the CA, not a
//     particular server certificate;
//   - client certificates for agents and storage nodes, from a CSR the host made (its private key
//     never leaves it), with the identity the server decided (the enrollment token's, or the
//     connection's at renewal) and never the one the CSR asks for. A node's certificate serves
//     its data port too (serverAuth as well as clientAuth). Serial numbers are random;
//     every issued certificate is recorded in the catalog (catalog.pki), which is where
//     revocation is looked up.
// Validity is measured on the real clock (TLS peers check it on theirs), not the scheduler's.

import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { CofferError } from '../core/errors.ts';
import type { CatalogQueries } from '../catalog/catalog.ts';
import {
  KEY_ALGORITHM,
  SIGNING_ALGORITHM,
  certificateInfo,
  fingerprint,
  generateKeyPair,
  identityUri,
  importPrivateKey,
  x509,
  type CryptoKey,
  type PkiRole,
} from '../agent/pki.ts';

/** Default lifetime of issued certificates: 90 days (COFFER_CERT_LIFETIME_MS to change, for tests). */
export const DEFAULT_CERT_LIFETIME_MS = 90 * 86_400_000;
const CA_LIFETIME_MS = 20 * 365 * 86_400_000;
/** Issued certificates start a minute in the past: a peer whose clock is a little behind still takes them. */
const BACKDATE_MS = 60_000;

export interface IssuedPem {
  pem: string;
  serial: string;
  notAfter: number;
}

export interface ServerTls {
  key: string;
  cert: string;
  /** The chain the server presents: its certificate, then the CA's (so clients can check the fingerprint). */
  chain: string;
  notAfter: number;
}

export class CertificateAuthority {
  /** The CA certificate, PEM. */
  readonly pem: string;
  /** Its SHA-256 fingerprint (64 hex digits): what an agent is told to trust. */
  readonly fingerprint: string;
  /** How long issued certificates are valid. */
  readonly lifetimeMs: number;
  private readonly key: CryptoKey;
  private readonly cert: x509.X509Certificate;

  private constructor(pem: string, key: CryptoKey, lifetimeMs: number) {
    this.pem = pem;
    this.key = key;
    this.cert = new x509.X509Certificate(pem);
    this.fingerprint = fingerprint(pem);
    this.lifetimeMs = lifetimeMs;
  }

  /** Opens the CA in `dataDir`, creating it on the first start. */
  static async open(dataDir: string, options: { lifetimeMs?: number } = {}): Promise<CertificateAuthority> {
    const keyFile = join(dataDir, 'ca.key');
    const pemFile = join(dataDir, 'ca.pem');
    const lifetimeMs = options.lifetimeMs ?? DEFAULT_CERT_LIFETIME_MS;
    if (existsSync(keyFile) !== existsSync(pemFile)) {
      throw new CofferError('INVALID_CONFIG', `Cannot open the certificate authority in ${dataDir}: one of ca.key and ca.pem is missing`, {
        hint: 'Restore the missing file from a backup of the data directory. Removing both makes a new CA, and every agent and node must then enroll again.',
      });
    }
    if (!existsSync(keyFile)) {
      const { privateKeyPem, keys } = await generateKeyPair();
      const now = Date.now();
      const cert = await x509.X509CertificateGenerator.createSelfSigned({
        serialNumber: randomSerial(),
        name: `CN=Coffer CA ${hostname()}, O=Coffer`,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + CA_LIFETIME_MS),
        keys,
        signingAlgorithm: SIGNING_ALGORITHM,
        extensions: [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        ],
      });
      // The key first, then the certificate, each written whole: a crash between leaves a key
      // without a certificate, which the check above reports instead of making a second CA.
      writeAtomically(keyFile, privateKeyPem, 0o600);
      writeAtomically(pemFile, cert.toString('pem') + '\n', 0o644);
    }
    const key = await importPrivateKey(readFileSync(keyFile, 'utf8'));
    return new CertificateAuthority(readFileSync(pemFile, 'utf8'), key, lifetimeMs);
  }

  /**
   * Signs a client certificate for `role`/`name` with the public key of `csrPem`, after checking
   * the request's signature (the requester holds the private key). PROTOCOL for a bad request.
   */
  async issueClient(csrPem: string, role: PkiRole, name: string): Promise<IssuedPem> {
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch (e) {
      throw new CofferError('PROTOCOL', `Cannot sign the certificate request: it is not a PKCS#10 request (${(e as Error).message})`);
    }
    const alg = csr.publicKey.algorithm as { name: string; namedCurve?: string };
    if (alg.name !== 'ECDSA' || alg.namedCurve !== KEY_ALGORITHM.namedCurve) {
      throw new CofferError('PROTOCOL', `Cannot sign the certificate request: its key is ${alg.name}${alg.namedCurve ? ` ${alg.namedCurve}` : ''}, and this CA signs ECDSA P-256 keys only`, { hint: 'Enroll with `coffer agent enroll`, which makes such a key.' });
    }
    if (!(await csr.verify())) throw new CofferError('PROTOCOL', 'Cannot sign the certificate request: its signature does not match its key');
    const publicKey = await csr.publicKey.export(KEY_ALGORITHM, ['verify']);
    return this.sign(publicKey, {
      subject: `CN=${name}, OU=${role}, O=Coffer`,
      names: [{ type: 'url', value: identityUri(role, name) }],
      // A node is a TLS server too: agents connect to its data port with their certificates.
      usage: role === 'node' ? [x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth] : [x509.ExtendedKeyUsage.clientAuth],
    });
  }

  /**
   * A new TLS certificate for this server with the names given (DNS names and IP addresses),
   * and its key; made at every start and before the current one runs out.
   */
  async issueServer(names: readonly string[]): Promise<ServerTls> {
    const { privateKeyPem, keys } = await generateKeyPair();
    const unique = [...new Set(names.filter((n) => n !== '' && n !== '0.0.0.0' && n !== '::'))];
    const issued = await this.sign(keys.publicKey, {
      subject: `CN=${unique[0] ?? hostname()}, O=Coffer`,
      names: unique.map((n) => ({ type: isIP(n) ? 'ip' : 'dns', value: n }) as x509.JsonGeneralName),
      usage: [x509.ExtendedKeyUsage.serverAuth],
    });
    return { key: privateKeyPem, cert: issued.pem, chain: issued.pem + this.pem, notAfter: issued.notAfter };
  }

  /**
   * Issues a client certificate and records it in the catalog: what enrollment and renewal do.
   */
  async issueAndRecord(catalog: CatalogQueries, csrPem: string, role: PkiRole, name: string): Promise<IssuedPem> {
    const issued = await this.issueClient(csrPem, role, name);
    const info = certificateInfo(issued.pem);
    await catalog.pki.addCertificate({ serial: issued.serial, name, role, notBefore: info.notBefore, notAfter: info.notAfter, issued: Date.now() });
    return issued;
  }

  private async sign(publicKey: CryptoKey, o: { subject: string; names: x509.JsonGeneralName[]; usage: x509.ExtendedKeyUsage[] }): Promise<IssuedPem> {
    const now = Date.now();
    const notAfter = now + this.lifetimeMs;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: o.subject,
      issuer: this.cert.subject,
      notBefore: new Date(now - Math.min(BACKDATE_MS, this.lifetimeMs / 10)),
      notAfter: new Date(notAfter),
      publicKey,
      signingKey: this.key,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension(o.usage),
        new x509.SubjectAlternativeNameExtension(o.names),
        await x509.AuthorityKeyIdentifierExtension.create(this.cert),
      ],
    });
    const pem = cert.toString('pem') + '\n';
    // X.509 keeps whole seconds: the expiry is what the certificate says, not what was asked.
    return { pem, serial: certificateInfo(pem).serial, notAfter: certificateInfo(pem).notAfter };
  }
}

/** A positive 128-bit serial number, hex (RFC 5280 allows up to 20 octets; the top bit clear keeps it positive). */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x10;
  return b.toString('hex');
}

function writeAtomically(file: string, text: string, mode: number): void {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  writeFileSync(tmp, text, { mode, flag: 'wx' });
  renameSync(tmp, file);
}

/** The certificate lifetime COFFER_CERT_LIFETIME_MS asks for; USAGE when it is not a sensible number. */
export function certLifetimeFromEnv(env: NodeJS.ProcessEnv): number | undefined {
  const v = env.COFFER_CERT_LIFETIME_MS;
  if (v === undefined || v === '') return undefined;
  const ms = Number(v);
  if (!Number.isInteger(ms) || ms < 3_000 || ms > 10 * 365 * 86_400_000) {
    throw new CofferError('USAGE', `Cannot use COFFER_CERT_LIFETIME_MS=${v}: give whole milliseconds from 3000 to 10 years`);
  }
  return ms;
}
