// `coffer repo key add|list|remove`: passphrases that open the repository's master key.
import type { Command } from 'commander';
import { getPassword, output, withRepo } from './context.ts';

export function register(repo: Command): void {
  const key = repo.command('key').description('manage the passphrases (key files) of a repository');
  key
    .command('list')
    .description('list the key files')
    .action(async (_o: unknown, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const keys = await r.listKeys({ signal });
        for (const k of keys) out.item({ type: 'key', id: k.id, current: k.current, created: k.created, username: k.username, hostname: k.hostname }, `${k.current ? '*' : ' '} ${k.id.slice(0, 12)}  ${k.created}  ${k.username}@${k.hostname}`);
        out.summary({ keys: keys.length });
      });
    });
  key
    .command('add')
    .description('add a passphrase (from COFFER_NEW_PASSWORD, --new-password-file or a prompt)')
    .option('--new-password-file <file>', 'file holding the new passphrase')
    .action(async (_o: unknown, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const pw = await getPassword(cmd, { confirm: true, envVar: 'COFFER_NEW_PASSWORD', fileOption: 'newPasswordFile', label: 'new passphrase' });
        const id = await r.addKey(pw, { signal });
        out.summary({ id }, () => `added key ${id.slice(0, 12)}`);
      });
    });
  key
    .command('remove <id>')
    .description('remove a key file (by id or unique prefix); not the one in use, not the last')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const removed = await r.removeKey(id, { signal });
        out.summary({ removed }, () => `removed key ${removed.slice(0, 12)}`);
      });
    });
}
