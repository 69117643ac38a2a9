// `coffer login` and `coffer logout`: a session token for the server, kept in the user's config
// directory (mode 0600) for the commands that follow. Scripts set COFFER_SERVER and COFFER_TOKEN
// (an API token from `coffer tokens create`) instead.

import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { ApiClient, currentLogin, forgetLogin, loginFile, normalizeServerUrl, saveLogin } from './api.ts';
import { output } from './context.ts';
import { localTime, readSecret } from './remote.ts';

export function register(program: Command): void {
  program
    .command('login')
    .description('log in to a Coffer server and keep the session for the commands that follow')
    .requiredOption('--server <url>', 'the server, as `coffer server` printed it (http://HOST:7480)')
    .requiredOption('--user <name>', 'the user name')
    .option('--password-stdin', 'read the password from standard input (else it is asked on the terminal)')
    .option('--ca-fingerprint <sha256>', 'an https:// server: trust the CA it presents if its SHA-256 fingerprint is this one (as `coffer server` printed it)')
    .option('--cacert <file>', 'an https:// server: trust this CA certificate (PEM; the server\'s DATA_DIR/ca.pem)')
    .action(async (o: { server: string; user: string; passwordStdin?: boolean; caFingerprint?: string; cacert?: string }, cmd: Command) => {
      const out = output(cmd);
      const server = normalizeServerUrl(o.server);
      const ca = await serverCa(server, o);
      const password = await readSecret({ stdin: o.passwordStdin, label: `password of ${o.user} on ${server}` });
      const r = await new ApiClient(server, undefined, ca).request<{ token: string; expires: number; user: string; role: string }>('POST', '/api/v1/login', { body: { user: o.user, password } });
      const file = saveLogin({ server, token: r.token, user: r.user, expires: r.expires, ...(ca ? { ca } : {}) });
      out.summary({ server, user: r.user, role: r.role, expires: r.expires, loginFile: file }, () => `Logged in to ${server} as ${r.user} (${r.role}) until ${localTime(r.expires)}`);
    });
  program
    .command('logout')
    .description('end the saved session (the server revokes its token) and forget it')
    .action(async (_o: unknown, cmd: Command) => {
      const out = output(cmd);
      let login;
      try {
        // The saved login only: COFFER_TOKEN is the script's to manage.
        login = currentLogin({ ...process.env, COFFER_TOKEN: '' });
      } catch {
        out.summary({ loggedOut: false }, () => 'Not logged in');
        return;
      }
      let revoked = true;
      try {
        await new ApiClient(login.server, login.token).request('POST', '/api/v1/logout');
      } catch (e) {
        // An expired or revoked session, or a server that is gone: the login is forgotten all the same.
        revoked = false;
        out.info(`note: the server did not end the session (${(e as Error).message}); the saved login is removed anyway`);
      }
      forgetLogin();
      out.summary({ loggedOut: true, server: login.server, revoked, loginFile: loginFile() }, () => `Logged out of ${login.server}`);
    });
}

/** The CA to trust for an https:// server: --cacert's, or the one it presents when its fingerprint is --ca-fingerprint's. */
async function serverCa(server: string, o: { caFingerprint?: string; cacert?: string }): Promise<string | undefined> {
  if (o.caFingerprint === undefined && o.cacert === undefined) return undefined;
  const url = new URL(server);
  if (url.protocol !== 'https:') throw new CofferError('USAGE', `Cannot use --ca-fingerprint or --cacert with ${server}: it is not https://`);
  if (o.caFingerprint !== undefined && o.cacert !== undefined) throw new CofferError('USAGE', 'Cannot use --ca-fingerprint and --cacert together: give one');
  const { fingerprint, normalizeFingerprint } = await import('../agent/pki.ts');
  if (o.cacert !== undefined) {
    let pem: string;
    try {
      pem = readFileSync(o.cacert, 'utf8');
      fingerprint(pem);
    } catch (e) {
      throw new CofferError('USAGE', `Cannot use --cacert ${o.cacert}: ${(e as Error).message}`, { hint: 'Give the server\'s DATA_DIR/ca.pem (a PEM certificate).' });
    }
    return pem;
  }
  const expected = normalizeFingerprint(o.caFingerprint!);
  const { presentedCa } = await import('../agent/remote.ts');
  const seen = await presentedCa(url.hostname.replace(/^\[|\]$/g, ''), Number(url.port || 443));
  if (seen.fingerprint !== expected) {
    throw new CofferError('REFUSED', `Refusing to log in to ${server}: its CA's fingerprint is ${seen.fingerprint}, not ${expected} as given`, { hint: 'Check the address and the fingerprint `coffer server` printed; someone may be in between.' });
  }
  return seen.pem;
}
