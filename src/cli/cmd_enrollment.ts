// `coffer clients add|revoke` and `coffer nodes add|revoke|list` (admin): enrollment tokens for
// remote agents and storage nodes, and revocation (docs/server.md "Remote agents and storage
// nodes"). A token is printed once, with the CA fingerprint and the exact command to run on the
// host; revoking an identity ends its live connection at once and refuses it from then on.

import type { Command } from 'commander';
import type { NodeView } from '../server/pki-routes.ts';
import { CofferError } from '../core/errors.ts';
import { output } from './context.ts';
import { apiFor, localTime, serverOption, table } from './remote.ts';

interface Enrollment {
  id: string;
  name: string;
  role: 'agent' | 'node';
  token: string;
  expires: number;
  caFingerprint: string;
  agentAddress?: string;
}


/** The agent port as a host elsewhere reaches it: a wildcard listen address becomes the API's host. */
function agentAddressFor(apiServer: string, agentAddress: string | undefined): string {
  const apiHost = new URL(apiServer).hostname;
  if (!agentAddress) return `${apiHost}:7481`;
  const m = /^(?:\[(.*)\]|([^:]*)):(\d+)$/.exec(agentAddress);
  if (!m) return agentAddress;
  const host = m[1] ?? m[2]!;
  const shown = host === '0.0.0.0' || host === '::' ? apiHost : host;
  return `${shown.includes(':') && !shown.startsWith('[') ? `[${shown}]` : shown}:${m[3]}`;
}

function registerFor(program: Command, role: 'agent' | 'node'): Command {
  const noun = role === 'agent' ? 'client' : 'node';
  const group = program.command(role === 'agent' ? 'clients' : 'nodes').description(role === 'agent' ? 'clients\' agents: enrollment and revocation (admin)' : 'storage nodes: enrollment, revocation and listing');
  serverOption(group.command('add <name>').description(`make a one-time token that enrolls ${role === 'agent' ? 'the agent of client' : 'storage node'} NAME (printed once)`)
    .option('--enroll-token', 'make an enrollment token (the only way to add one for now)')
    .option('--expires <duration>', 'how long the token may be used: 30m, 24h, 7d (default 24h)'))
    .action(async (name: string, o: { enrollToken?: boolean; expires?: string }, cmd: Command) => {
      if (!o.enrollToken) throw new CofferError('USAGE', `Cannot add ${noun} ${name}: say how (--enroll-token)`, { hint: `coffer ${group.name()} add ${name} --enroll-token` });
      const api = apiFor(cmd);
      const r = await api.request<Enrollment>('POST', `/api/v1/${group.name()}/${encodeURIComponent(name)}/enrollment`, { body: o.expires ? { expires: o.expires } : {} });
      const server = agentAddressFor(api.server, r.agentAddress);
      const command = `coffer ${role} enroll --server ${server} --token ${r.token} --ca-fingerprint ${r.caFingerprint} --state-dir /var/lib/coffer-${role}`;
      const out = output(cmd);
      out.summary({ id: r.id, name: r.name, role: r.role, token: r.token, expires: r.expires, caFingerprint: r.caFingerprint, server, command }, () => [
        `Enrollment token for ${noun} ${r.name} (one use, until ${localTime(r.expires)}), shown once:`,
        `  ${r.token}`,
        `CA fingerprint (SHA-256): ${r.caFingerprint}`,
        `On the ${role === 'agent' ? 'client' : 'node'}, run:`,
        `  ${command}`,
        `  coffer ${role} run --state-dir /var/lib/coffer-${role}`,
      ]);
    });
  serverOption(group.command('revoke <name>').description(`revoke ${noun} NAME: its certificates and unused tokens; its connection ends at once`))
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const r = await apiFor(cmd).request<{ name: string; role: string; certificates: number; enrollments: number; disconnected: boolean }>('POST', `/api/v1/${group.name()}/${encodeURIComponent(name)}/revoke`);
      output(cmd).summary({ name: r.name, role: r.role, certificates: r.certificates, enrollments: r.enrollments, disconnected: r.disconnected }, () =>
        `${noun} ${r.name} revoked: ${r.certificates} certificate(s), ${r.enrollments} unused token(s)${r.disconnected ? '; its connection was closed' : ''}. It can come back only by enrolling with a new token.`);
    });
  return group;
}

export function register(program: Command): void {
  registerFor(program, 'agent');
  const nodes = registerFor(program, 'node');
  serverOption(nodes.command('list').description('storage nodes: enrolled, connected, last seen'))
    .action(async (_o: unknown, cmd: Command) => {
      const r = await apiFor(cmd).request<{ items: NodeView[] }>('GET', '/api/v1/nodes');
      output(cmd).summary({ nodes: r.items }, () => table(['NAME', 'CONNECTED', 'DATA-PORT', 'JOBS', 'CPU', 'IOWAIT', 'ADDRESS', 'VERSION', 'LAST-SEEN', 'CERT-UNTIL'],
        r.items.map((n) => [
          n.embedded ? `${n.name} (embedded)` : n.name, n.revoked ? 'revoked' : n.connected ? 'yes' : 'no', n.dataAddress ?? '-',
          n.load ? String(n.load.jobs) : '-', n.load ? n.load.cpu.toFixed(2) : '-', n.load ? `${Math.round(n.load.ioWait * 100)}%` : '-',
          n.address ?? '-', n.version ?? '-', n.embedded ? '-' : localTime(n.lastSeen), n.embedded ? '-' : localTime(n.notAfter),
        ])));
    });
}
