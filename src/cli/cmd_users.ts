// `coffer users`, `coffer tokens` and `coffer audit`: who may use the server and what they did.
// Passwords come on standard input (--password-stdin) or are asked on the terminal, never as
// arguments; a token's secret is printed once, when it is made.

import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { collect, output, parseIntOption } from './context.ts';
import { apiFor, localTime, readSecret, serverOption, sinceOption, table, apiLine } from './remote.ts';

const ROLES = ['admin', 'operator', 'restore', 'auditor'];

interface User {
  name: string;
  role: string;
  grants: { clients?: string[] | '*'; destinations?: Array<{ client: string; paths: string[] }> | '*' };
  created: number;
  disabled?: number;
}

interface Token {
  id: string;
  name: string;
  user: string;
  role?: string;
  kind: string;
  expires?: number;
  created: number;
  lastUsed?: number;
  revoked?: number;
}

interface AuditEntry {
  id: number;
  time: number;
  actor: string;
  source?: string;
  action: string;
  target?: string;
  outcome: string;
  details?: Record<string, unknown>;
}

function checkRole(role: string | undefined): void {
  if (role !== undefined && !ROLES.includes(role)) throw new CofferError('USAGE', `Cannot use --role ${role}: give ${ROLES.join(', ')}`);
}

/** --grant-client and --grant-destination CLIENT:/PATH as the API's grants; undefined when neither is given. */
function grantsFrom(o: { grantClient?: string[]; grantDestination?: string[] }): Record<string, unknown> | undefined {
  if (!o.grantClient && !o.grantDestination) return undefined;
  const clients = o.grantClient?.includes('*') ? '*' : (o.grantClient ?? []);
  let destinations: unknown = [];
  if (o.grantDestination?.includes('*')) destinations = '*';
  else if (o.grantDestination) {
    const byClient = new Map<string, string[]>();
    for (const d of o.grantDestination) {
      const m = /^([^:]+):(\/.*)$/.exec(d);
      if (!m) throw new CofferError('USAGE', `Cannot use --grant-destination ${d}: give CLIENT:/absolute/path`);
      byClient.set(m[1]!, [...(byClient.get(m[1]!) ?? []), m[2]!]);
    }
    destinations = [...byClient].map(([client, paths]) => ({ client, paths }));
  }
  return { clients, destinations };
}

function describeGrants(u: User): string {
  if (u.role !== 'restore') return '-';
  const c = u.grants.clients;
  const d = u.grants.destinations;
  const clients = c === '*' ? '*' : (c ?? []).join(',') || 'none';
  const dests = d === '*' ? '*' : (d ?? []).map((x) => `${x.client}:${x.paths.join('+')}`).join(',') || 'none';
  return `clients=${clients} to=${dests}`;
}

const grantOptions = (cmd: Command) => cmd
  .option('--grant-client <name>', 'restore role: may browse and restore this client\'s images ("*": all; repeatable)', collect)
  .option('--grant-destination <client:path>', 'restore role: may restore onto this client under this directory ("*": anywhere; repeatable)', collect);

export function register(program: Command): void {
  const users = program.command('users').description('users of the server (admin)');
  serverOption(users.command('list').description('list users'))
    .action(async (_o: unknown, cmd: Command) => {
      const out = output(cmd);
      const items = await apiFor(cmd).listAll<User>('/api/v1/users');
      for (const user of items) out.item(apiLine({ type: 'user', user }));
      out.summary({ users: items.length }, () => table(['NAME', 'ROLE', 'GRANTS', 'CREATED', 'DISABLED'], items.map((u) => [u.name, u.role, describeGrants(u), localTime(u.created), u.disabled ? localTime(u.disabled) : '-'])));
    });
  serverOption(grantOptions(users.command('add <name>').description('create a user')
    .requiredOption('--role <role>', 'admin, operator, restore or auditor')
    .option('--password-stdin', 'read the password from standard input (else it is asked on the terminal)')))
    .action(async (name: string, o: { role: string; passwordStdin?: boolean; grantClient?: string[]; grantDestination?: string[] }, cmd: Command) => {
      checkRole(o.role);
      const grants = grantsFrom(o);
      const password = await readSecret({ stdin: o.passwordStdin, label: `password for ${name}`, confirm: true });
      const user = await apiFor(cmd).request<User>('POST', '/api/v1/users', { body: { name, role: o.role, password, ...(grants ? { grants } : {}) } });
      output(cmd).summary({ user }, () => `user ${user.name} created (${user.role})`);
    });
  serverOption(grantOptions(users.command('set <name>').description('change a user: role, grants, password, enabled')
    .option('--role <role>', 'admin, operator, restore or auditor')
    .option('--disable', 'the user may no longer log in; their tokens stop working')
    .option('--enable', 'the user may log in again')
    .option('--password-stdin', 'set the password read from standard input')
    .option('--password', 'set a new password, asked on the terminal')))
    .action(async (name: string, o: { role?: string; disable?: boolean; enable?: boolean; passwordStdin?: boolean; password?: boolean; grantClient?: string[]; grantDestination?: string[] }, cmd: Command) => {
      checkRole(o.role);
      if (o.disable && o.enable) throw new CofferError('USAGE', 'Cannot use --disable and --enable together');
      const grants = grantsFrom(o);
      const body: Record<string, unknown> = {
        ...(o.role ? { role: o.role } : {}),
        ...(grants ? { grants } : {}),
        ...(o.disable ? { disabled: true } : o.enable ? { disabled: false } : {}),
      };
      if (o.passwordStdin || o.password) body.password = await readSecret({ stdin: o.passwordStdin, label: `new password for ${name}`, confirm: true });
      if (Object.keys(body).length === 0) throw new CofferError('USAGE', 'Cannot change the user: nothing to change', { hint: 'Give --role, --grant-client, --grant-destination, --disable, --enable or --password-stdin.' });
      const user = await apiFor(cmd).request<User>('PATCH', `/api/v1/users/${encodeURIComponent(name)}`, { body });
      output(cmd).summary({ user }, () => `user ${user.name} changed (${Object.keys(body).join(', ')})`);
    });
  serverOption(users.command('remove <name>').description('delete a user and their tokens'))
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const r = await apiFor(cmd).request<{ deleted: string }>('DELETE', `/api/v1/users/${encodeURIComponent(name)}`);
      output(cmd).summary({ deleted: r.deleted }, () => `user ${r.deleted} deleted`);
    });

  const tokens = program.command('tokens').description('API tokens, for scripts (COFFER_TOKEN)');
  serverOption(tokens.command('list').description('your tokens (an admin sees everyone\'s)')
    .option('--user <name>', 'an admin: only this user\'s'))
    .action(async (o: { user?: string }, cmd: Command) => {
      const out = output(cmd);
      const items = await apiFor(cmd).listAll<Token>('/api/v1/tokens', { user: o.user });
      for (const token of items) out.item(apiLine({ type: 'token', token }));
      out.summary({ tokens: items.length }, () => table(['ID', 'NAME', 'USER', 'ROLE', 'KIND', 'CREATED', 'EXPIRES', 'LAST-USED', 'REVOKED'], items.map((t) => [t.id, t.name, t.user, t.role ?? '-', t.kind, localTime(t.created), localTime(t.expires), localTime(t.lastUsed), t.revoked ? localTime(t.revoked) : '-'])));
    });
  serverOption(tokens.command('create').description('create an API token; its secret is printed once')
    .requiredOption('--name <name>', 'what it is for')
    .requiredOption('--role <role>', 'its role: at most yours')
    .option('--expires <duration>', 'lifetime: 30d, 12h, ... (default 90d, at most 366d)'))
    .action(async (o: { name: string; role: string; expires?: string }, cmd: Command) => {
      checkRole(o.role);
      const r = await apiFor(cmd).request<{ id: string; token: string; expires?: number }>('POST', '/api/v1/tokens', { body: { name: o.name, role: o.role, ...(o.expires ? { expires: o.expires } : {}) } });
      const out = output(cmd);
      out.info(`Token ${r.id} (${o.name}, ${o.role}) expires ${localTime(r.expires)}. Its secret, shown once:`);
      out.summary({ id: r.id, name: o.name, role: o.role, token: r.token, ...(r.expires !== undefined ? { expires: r.expires } : {}) }, () => r.token);
    });
  serverOption(tokens.command('revoke <id>').description('revoke a token (yours; an admin: any)'))
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const r = await apiFor(cmd).request<{ revoked: string }>('DELETE', `/api/v1/tokens/${encodeURIComponent(id)}`);
      output(cmd).summary({ revoked: r.revoked }, () => `token ${r.revoked} revoked`);
    });

  serverOption(program
    .command('audit')
    .description('the audit log, newest first (admin, auditor): logins, changes, restores, denied attempts')
    .option('--actor <name>', 'only what this user (or token:ID) did')
    .option('--action <action>', 'only this action: login, documents.apply, restore.start, ...')
    .option('--outcome <outcome>', 'only ok, denied or failed')
    .option('--since <duration>', 'only the last 7d, 12h, ...')
    .option('--limit <n>', 'at most this many (default 100)'))
    .action(async (o: { actor?: string; action?: string; outcome?: string; since?: string; limit?: string }, cmd: Command) => {
      const out = output(cmd);
      const max = o.limit === undefined ? 100 : parseIntOption('--limit', o.limit, 1, 100_000);
      const items = await apiFor(cmd).listAll<AuditEntry>('/api/v1/audit', { actor: o.actor, action: o.action, outcome: o.outcome, since: sinceOption(o.since) }, max);
      for (const entry of items) out.item(apiLine({ type: 'audit', entry }));
      out.summary({ entries: items.length }, () => table(['TIME', 'ACTOR', 'ACTION', 'TARGET', 'OUTCOME', 'SOURCE'], items.map((a) => [localTime(a.time), a.actor, a.action, a.target ?? '-', a.outcome, a.source ?? '-'])));
    });
}
