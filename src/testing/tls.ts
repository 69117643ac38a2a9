// Throwaway certificates for tests and benchmarks that need mutual TLS before the server's own
// certificate authority is in play: a CA made on the spot, a server certificate for the given
// addresses and a client certificate, all ECDSA P-256, valid for a day. Not the server's CA
// (src/server: enrollment, renewal, revocation); only what a TLS socket needs to connect.

import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

export interface TestCertificates {
  /** The CA's certificate (PEM): what both sides trust. */
  ca: string;
  server: { cert: string; key: string };
  client: { cert: string; key: string };
}

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 86_400_000;

async function keyPair(): Promise<webcrypto.CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
}

async function pemKey(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
}

/**
 * A CA, a server certificate whose subject alternative names are `addresses` (IPs or DNS names;
 * default 127.0.0.1 and localhost) and a client certificate named `client` (default 'sim-agent').
 */
export async function testCertificates(options: { addresses?: string[]; client?: string } = {}): Promise<TestCertificates> {
  x509.cryptoProvider.set(webcrypto as unknown as webcrypto.Crypto);
  const now = Date.now();
  const validity = { notBefore: new Date(now - 60_000), notAfter: new Date(now + DAY) };
  const caKeys = await keyPair();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=Coffer test CA',
    keys: caKeys,
    signingAlgorithm: ALG,
    ...validity,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  const issue = async (subject: string, extensions: x509.Extension[]) => {
    const keys = await keyPair();
    const cert = await x509.X509CertificateGenerator.create({
      subject,
      issuer: ca.subject,
      publicKey: keys.publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: ALG,
      ...validity,
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), ...extensions],
    });
    return { cert: cert.toString('pem'), key: await pemKey(keys.privateKey) };
  };
  const addresses = options.addresses ?? ['127.0.0.1', 'localhost'];
  const names = addresses.map((a) => ({ type: /^[\d.]+$|:/.test(a) ? 'ip' as const : 'dns' as const, value: a }));
  const server = await issue('CN=coffer-test-server', [
    new x509.SubjectAlternativeNameExtension(names),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
  ]);
  const client = await issue(`CN=${options.client ?? 'sim-agent'}`, [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])]);
  return { ca: ca.toString('pem'), server, client };
}
