// The API of enrollment and revocation (docs/server.md "Remote agents and storage nodes"): an
// administrator makes one-time enrollment tokens for a client's agent or a storage node, and
// revokes an identity (its certificates, its unused tokens, its live connection); everyone who
// reads the catalog may list the storage nodes. Part of the route table (routes.ts).

import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { CofferError } from '../core/errors.ts';
import { parseDuration } from '../policy/durations.ts';
import { unknownIdentity } from '../catalog/pki.ts';
import { IDENTITY_NAME, type PkiRole } from '../agent/pki.ts';
import { hashEnrollmentToken, revokedReason, type AgentPort } from './agent-port.ts';
import type { CertificateAuthority } from './ca.ts';
import { route, type RouteDef } from './http.ts';
import type { Services } from './services.ts';
import { EMBEDDED_NODE } from './nodes.ts';

const READERS = ['operator', 'auditor'] as const;
const identityName = z.string().regex(IDENTITY_NAME, 'lower-case letters, digits, ".", "_" and "-", at most 63');
const DEFAULT_TOKEN_LIFETIME = '24h';
const MAX_TOKEN_LIFETIME_MS = 30 * 86_400_000;

export interface PkiDeps {
  ca: CertificateAuthority;
  /** The agent port, when the server has one. */
  port: AgentPort | undefined;
  /** The client of the server's own embedded agent: no remote agent may take its name. */
  embeddedClient: string;
}

/** A node as `GET /api/v1/nodes` lists it. */
export interface NodeView {
  name: string;
  connected: boolean;
  /** Where it connects from (now, or the last time). */
  address?: string;
  version?: string;
  lastSeen?: number;
  /** When its newest certificate that is not revoked runs out. */
  notAfter?: number;
  revoked: boolean;
  /** The server's own embedded node (no enrollment). */
  embedded?: boolean;
  /** Where agents send backups (its data port), when it has one and is connected. */
  dataAddress?: string;
  /** What it said of its load with its last heartbeat, and the jobs this server gave it that run. */
  load?: { cpu: number; memory: number; ioWait: number; jobs: number; bytesInFlight: number };
  assigned?: number;
}

export function pkiRoutes(deps: { s: Services; pki?: PkiDeps }): RouteDef[] {
  // Read when a request comes (the route table is also built without a server, for its tests).
  const pki = (): PkiDeps => {
    if (!deps.pki) throw new CofferError('UNSUPPORTED', 'This server has no certificate authority');
    return deps.pki;
  };
  const enroll = (role: PkiRole) => route({
    method: 'POST', url: role === 'agent' ? '/api/v1/clients/:name/enrollment' : '/api/v1/nodes/:name/enrollment',
    summary: `A one-time token that enrolls ${role === 'agent' ? 'the agent of a client' : 'a storage node'} (shown once; admin)`,
    tags: [role === 'agent' ? 'clients' : 'nodes'], rule: { roles: [] }, audit: `${role}.enrollment`, status: 201,
    params: z.strictObject({ name: identityName }),
    body: z.strictObject({ expires: z.string().max(32).optional() }),
    handler: async (ctx) => {
      const name = ctx.params.name;
      ctx.auditTarget(`${role}/${name}`);
      if (name === pki().embeddedClient || (role === 'node' && name === EMBEDDED_NODE)) {
        throw new CofferError('CONFLICT', `Cannot enroll a remote ${role} as ${name}: that is this server's own host, served by its embedded agent and node`, { hint: `Give the remote host its own ${role === 'agent' ? 'client' : 'node'} name.` });
      }
      const lifetime = tokenLifetime(ctx.body.expires);
      const token = `cen_${randomBytes(24).toString('base64url')}`;
      const enrollment = await deps.s.catalog.pki.addEnrollment({ hash: hashEnrollmentToken(token), name, role, expires: Date.now() + lifetime, createdBy: ctx.principal.user });
      ctx.auditDetails({ token: enrollment.id, expires: enrollment.expires });
      return { id: enrollment.id, name, role, token, expires: enrollment.expires, caFingerprint: pki().ca.fingerprint, ...(pki().port ? { agentAddress: pki().port!.address } : {}) };
    },
  });
  const revoke = (role: PkiRole) => route({
    method: 'POST', url: role === 'agent' ? '/api/v1/clients/:name/revoke' : '/api/v1/nodes/:name/revoke',
    summary: `Revoke ${role === 'agent' ? 'a client\'s agent' : 'a storage node'}: its certificates and unused tokens, and its live connection at once (admin)`,
    tags: [role === 'agent' ? 'clients' : 'nodes'], rule: { roles: [] }, audit: `${role}.revoke`,
    params: z.strictObject({ name: identityName }),
    handler: async (ctx) => {
      const name = ctx.params.name;
      ctx.auditTarget(`${role}/${name}`);
      if (!(await deps.s.catalog.pki.known(role, name))) throw unknownIdentity(role, name);
      const r = await deps.s.catalog.pki.revokeIdentity(role, name, ctx.principal.user, Date.now());
      const disconnected = pki().port?.revoke(role, name, revokedReason(role, name)) ?? false;
      ctx.auditDetails({ certificates: r.certificates, enrollments: r.enrollments, disconnected });
      return { name, role, certificates: r.certificates, enrollments: r.enrollments, disconnected };
    },
  });
  return [
    enroll('agent'),
    enroll('node'),
    revoke('agent'),
    revoke('node'),
    route({
      method: 'GET', url: '/api/v1/nodes', summary: 'Storage nodes: enrolled and connected ones', tags: ['nodes'], rule: { roles: READERS },
      handler: async () => {
        const live = new Map((pki().port?.connected('node') ?? []).map((c) => [c.name, c]));
        const items: NodeView[] = [];
        const state = (name: string) => {
          const e = deps.s.nodes.get(name);
          if (!e) return {};
          const l = e.link.load;
          return { ...(e.dataAddress ? { dataAddress: e.dataAddress } : {}), ...(l ? { load: { cpu: l.cpu, memory: l.memory, ioWait: l.ioWait, jobs: l.jobs, bytesInFlight: l.bytesInFlight } } : {}), assigned: e.assigned };
        };
        for (const e of deps.s.nodes.list().filter((n) => n.embedded)) {
          items.push({ name: e.name, connected: true, revoked: false, embedded: true, ...state(e.name) });
        }
        for (const id of await deps.s.catalog.pki.identities('node')) {
          const c = live.get(id.name);
          items.push({
            ...state(id.name),
            name: id.name,
            connected: c !== undefined,
            ...(c ? { address: c.address, version: c.version, lastSeen: c.lastSeen } : {
              ...(id.address !== undefined ? { address: id.address } : {}),
              ...(id.lastSeen !== undefined ? { lastSeen: id.lastSeen } : {}),
            }),
            ...(id.notAfter !== undefined ? { notAfter: id.notAfter } : {}),
            revoked: id.revoked,
          });
        }
        return { items };
      },
    }),
  ];
}

function tokenLifetime(value: string | undefined): number {
  let ms: number;
  try {
    ms = parseDuration(value ?? DEFAULT_TOKEN_LIFETIME);
  } catch (e) {
    throw new CofferError('USAGE', `Cannot use --expires ${JSON.stringify(value)}: ${(e as Error).message}`, { hint: 'Give a duration such as 30m, 24h or 7d.' });
  }
  if (!(ms >= 60_000 && ms <= MAX_TOKEN_LIFETIME_MS)) {
    throw new CofferError('USAGE', `Cannot use --expires ${value}: an enrollment token lives from 1 minute to 30 days`, { hint: 'Make a new token when this one runs out; the default is 24h.' });
  }
  return ms;
}
