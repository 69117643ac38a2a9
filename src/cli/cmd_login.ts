// `coffer login` and `coffer logout`: a session token for the server, kept in the user's config
// directory (mode 0600) for the commands that follow. Scripts set COFFER_SERVER and COFFER_TOKEN
// (an API token from `coffer tokens create`) instead.

import type { Command } from 'commander';
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
    .action(async (o: { server: string; user: string; passwordStdin?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const server = normalizeServerUrl(o.server);
      const password = await readSecret({ stdin: o.passwordStdin, label: `password of ${o.user} on ${server}` });
      const r = await new ApiClient(server).request<{ token: string; expires: number; user: string; role: string }>('POST', '/api/v1/login', { body: { user: o.user, password } });
      const file = saveLogin({ server, token: r.token, user: r.user, expires: r.expires });
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
