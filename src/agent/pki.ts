// What the server's certificate authority (src/server/ca.ts) and the hosts it certifies (remote
// agents and storage nodes, src/agent/remote.ts) share: ECDSA P-256 key pairs made with
// node:crypto's WebCrypto, certificate signing requests (PKCS#10, through @peculiar/x509: node:crypto
// makes keys but no requests or certificates), fingerprints, and how a certificate says whom it is
// for. A client's certificate names its identity twice: the subject (CN=NAME, OU=ROLE) for people
// reading it, and a URI subject alternative name `coffer:ROLE/NAME`, which is what the server
// reads. Private keys are made where they are used and never leave that host.

import 'reflect-metadata';
import { X509Certificate as NodeCertificate, createHash, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { CofferError } from '../core/errors.ts';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

/** WebCrypto's key types, as node:crypto names them (this project has no DOM library types). */
export type CryptoKey = webcrypto.CryptoKey;
export type CryptoKeyPair = webcrypto.CryptoKeyPair;

/** The roles a certificate can be issued for. */
export const PKI_ROLES = ['agent', 'node'] as const;
export type PkiRole = (typeof PKI_ROLES)[number];

/** The key algorithm of every key: ECDSA on P-256, signatures with SHA-256. */
export const KEY_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const;
export const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;

/** Names of clients and nodes: what a host name, lower-cased, looks like. */
export const IDENTITY_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** USAGE unless `name` is a valid client or node name. */
export function checkIdentityName(name: string, what = 'name'): string {
  if (!IDENTITY_NAME.test(name)) {
    throw new CofferError('USAGE', `Cannot use ${JSON.stringify(name)} as a ${what}: use 1 to 63 lower-case letters, digits, ".", "_" and "-", starting with a letter or digit`);
  }
  return name;
}

export interface PemKeyPair {
  /** PKCS#8, PEM: what node:tls takes as `key`. */
  privateKeyPem: string;
  keys: CryptoKeyPair;
}

/** A new key pair (extractable: its private half is written to the host's state directory, 0600). */
export async function generateKeyPair(): Promise<PemKeyPair> {
  const keys = (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  return { privateKeyPem: toPem(der, 'PRIVATE KEY'), keys };
}

/** The private key of a PKCS#8 PEM, for signing (the CA's key). */
export async function importPrivateKey(pem: string): Promise<CryptoKey> {
  return webcrypto.subtle.importKey('pkcs8', fromPem(pem, 'PRIVATE KEY'), KEY_ALGORITHM, false, ['sign']);
}

/** A certificate signing request (PEM) for `name` in `role`, signed by the key pair's private half. */
export async function createCsr(name: string, role: PkiRole, keys: CryptoKeyPair): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${name}, OU=${role}`,
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
  });
  return csr.toString('pem');
}

/** The URI subject alternative name that carries a certificate's identity. */
export function identityUri(role: PkiRole, name: string): string {
  return `coffer:${role}/${name}`;
}

export interface Identity {
  role: PkiRole;
  name: string;
}

/**
 * The identity a certificate was issued for, from its subject alternative names as node:tls
 * reports them ("DNS:x, URI:coffer:agent/web1"); undefined when it carries none.
 */
export function identityFromAltNames(subjectaltname: string | undefined): Identity | undefined {
  for (const part of (subjectaltname ?? '').split(/,\s*/)) {
    const m = /^URI:coffer:(agent|node)\/(.+)$/.exec(part);
    if (m && IDENTITY_NAME.test(m[2]!)) return { role: m[1] as PkiRole, name: m[2]! };
  }
  return undefined;
}

/** The SHA-256 fingerprint of a certificate (PEM or DER): 64 lower-case hex digits. */
export function fingerprint(cert: string | Buffer): string {
  const der = typeof cert === 'string' ? fromPem(cert, 'CERTIFICATE') : cert;
  return createHash('sha256').update(der).digest('hex');
}

/**
 * A fingerprint as someone typed it: hex with or without colons, any case, with or without a
 * "sha256:" prefix; USAGE when it is not 32 bytes of hex.
 */
export function normalizeFingerprint(value: string): string {
  const hex = value.trim().replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new CofferError('USAGE', `Cannot use the CA fingerprint ${JSON.stringify(value)}: give the 64 hex digits of its SHA-256 (as \`coffer server\` and \`coffer clients add\` print it)`);
  }
  return hex;
}

/** What a certificate says, read with node:crypto. */
export interface CertificateInfo {
  /** Hex, upper case, as node:crypto gives it. */
  serial: string;
  notBefore: number;
  notAfter: number;
  identity: Identity | undefined;
  fingerprint: string;
}

export function certificateInfo(pem: string): CertificateInfo {
  let cert: NodeCertificate;
  try {
    cert = new NodeCertificate(pem);
  } catch (e) {
    throw new CofferError('PROTOCOL', `Cannot read the certificate: ${(e as Error).message}`);
  }
  return {
    serial: cert.serialNumber.toUpperCase(),
    notBefore: Date.parse(cert.validFrom),
    notAfter: Date.parse(cert.validTo),
    identity: identityFromAltNames(cert.subjectAltName),
    fingerprint: fingerprint(cert.raw),
  };
}

/** True when `leafPem` was signed by the CA certificate `caPem`. */
export function issuedBy(leafPem: string, caPem: string): boolean {
  try {
    const ca = new NodeCertificate(caPem);
    const leaf = new NodeCertificate(leafPem);
    return leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
  } catch {
    return false;
  }
}

export function toPem(der: Buffer, label: string): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

export function fromPem(pem: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(pem);
  if (!m) throw new CofferError('PROTOCOL', `Cannot read the ${label.toLowerCase()}: it is not PEM`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

export { x509 };
