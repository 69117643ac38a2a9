// The certificate authority's records (migration 0005): one-time enrollment tokens, of which
// only the SHA-256 of the secret is stored, and the certificates issued to agents and nodes with
// their revocation. The CA itself (keys, signing) is src/server/ca.ts; this module only stores.
// Identities are (role, name): an agent and a node may share a name.

import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { guard, inTransaction, type Scope } from './scope.ts';
import type { CertificatesTable, EnrollmentsTable } from './schema.ts';
import type { Selectable } from 'kysely';

export interface Enrollment {
  id: string;
  name: string;
  role: string;
  expires: number;
  created: number;
  createdBy: string;
  /** When it was used (undefined while it can still be). */
  used: number | undefined;
  /** The serial of the certificate it was used for. */
  serial: string | undefined;
}

export interface IssuedCertificate {
  serial: string;
  name: string;
  role: string;
  notBefore: number;
  notAfter: number;
  issued: number;
  /** When its holder last connected or was last heard from, and from where. */
  lastSeen: number | undefined;
  address: string | undefined;
  revoked: number | undefined;
  revokedBy: string | undefined;
}

/** An identity with what its certificates say: for `GET /api/v1/nodes` and revocation. */
export interface PkiIdentity {
  name: string;
  role: string;
  /** The latest expiry among its certificates that are not revoked (undefined: none). */
  notAfter: number | undefined;
  lastSeen: number | undefined;
  address: string | undefined;
  /** True when every certificate it has is revoked. */
  revoked: boolean;
}

export type ClaimResult =
  | { ok: true; enrollment: Enrollment }
  | { ok: false; reason: 'unknown' | 'used' | 'expired'; enrollment?: Enrollment };

export interface Pki {
  /** Records an enrollment token (its secret's hash). */
  addEnrollment(input: { hash: string; name: string; role: string; expires: number; createdBy: string }): Promise<Enrollment>;
  /** The enrollment token with this hash, used or not. */
  findEnrollment(hash: string): Promise<Enrollment | undefined>;
  /**
   * Uses the token with this hash once, at `time`: ok with the enrollment, or why not. Two
   * claims of one token at once: one wins, the other gets 'used'.
   */
  claimEnrollment(hash: string, time: number): Promise<ClaimResult>;
  /** Records which certificate an enrollment was used for. */
  enrolled(id: string, serial: string): Promise<void>;
  addCertificate(cert: { serial: string; name: string; role: string; notBefore: number; notAfter: number; issued: number }): Promise<IssuedCertificate>;
  findCertificate(serial: string): Promise<IssuedCertificate | undefined>;
  /** Records that the holder of a certificate connected (or was heard from), from `address`. */
  seen(serial: string, time: number, address?: string): Promise<void>;
  /**
   * Revokes every certificate of the identity and voids its unused enrollment tokens; returns how
   * many certificates were revoked now (0: none, or all were already).
   */
  revokeIdentity(role: string, name: string, by: string, time: number): Promise<{ certificates: number; enrollments: number }>;
  /** True when the identity has certificates or enrollment tokens on record. */
  known(role: string, name: string): Promise<boolean>;
  /** The identities of a role that hold certificates, by name. */
  identities(role: string): Promise<PkiIdentity[]>;
}

export function pkiModule(scope: Scope): Pki {
  const findEnrollment = async (hash: string) => {
    const row = await scope.db.selectFrom('enrollments').selectAll().where('hash', '=', hash).executeTakeFirst();
    return row === undefined ? undefined : toEnrollment(row);
  };
  return {
    async addEnrollment(input) {
      const row = { id: ulid(scope.now()), hash: input.hash, name: input.name, role: input.role, expires: input.expires, created: scope.now(), created_by: input.createdBy, used: null, serial: null };
      await guard(scope, `create an enrollment token for ${input.role} ${input.name}`, () => scope.db.insertInto('enrollments').values(row).execute(), {
        unique: ['CONFLICT', 'a token with the same secret exists'],
      });
      return toEnrollment(row);
    },

    findEnrollment: (hash) => guard(scope, 'look up an enrollment token', () => findEnrollment(hash)),

    claimEnrollment: (hash, time) => guard(scope, 'use an enrollment token', () => inTransaction(scope, async (db) => {
      const result = await db.updateTable('enrollments').set({ used: time })
        .where('hash', '=', hash).where('used', 'is', null).where('expires', '>', time).executeTakeFirst();
      const row = await db.selectFrom('enrollments').selectAll().where('hash', '=', hash).executeTakeFirst();
      if (row === undefined) return { ok: false, reason: 'unknown' } as const;
      const enrollment = toEnrollment(row);
      if (result.numUpdatedRows === 1n) return { ok: true, enrollment } as const;
      return { ok: false, reason: row.used !== null ? 'used' : 'expired', enrollment } as const;
    })),

    async enrolled(id, serial) {
      await guard(scope, `record the certificate of enrollment ${id}`, () => scope.db.updateTable('enrollments').set({ serial }).where('id', '=', id).execute());
    },

    async addCertificate(cert) {
      const row = { serial: cert.serial, name: cert.name, role: cert.role, not_before: cert.notBefore, not_after: cert.notAfter, issued: cert.issued, last_seen: null, address: null, revoked: null, revoked_by: null };
      await guard(scope, `record the certificate of ${cert.role} ${cert.name}`, () => scope.db.insertInto('certificates').values(row).execute(), {
        unique: ['CONFLICT', 'a certificate with the same serial exists'],
      });
      return toCertificate(row);
    },

    findCertificate: (serial) => guard(scope, `look up certificate ${serial}`, async () => {
      const row = await scope.db.selectFrom('certificates').selectAll().where('serial', '=', serial).executeTakeFirst();
      return row === undefined ? undefined : toCertificate(row);
    }),

    async seen(serial, time, address) {
      await guard(scope, `record a contact of certificate ${serial}`, () =>
        scope.db.updateTable('certificates').set({ last_seen: time, ...(address !== undefined ? { address } : {}) }).where('serial', '=', serial).execute());
    },

    revokeIdentity: (role, name, by, time) => guard(scope, `revoke ${role} ${name}`, () => inTransaction(scope, async (db) => {
      const certs = await db.updateTable('certificates').set({ revoked: time, revoked_by: by })
        .where('role', '=', role).where('name', '=', name).where('revoked', 'is', null).executeTakeFirst();
      const tokens = await db.updateTable('enrollments').set({ used: time })
        .where('role', '=', role).where('name', '=', name).where('used', 'is', null).executeTakeFirst();
      return { certificates: Number(certs.numUpdatedRows), enrollments: Number(tokens.numUpdatedRows) };
    })),

    known: (role, name) => guard(scope, `look up ${role} ${name}`, async () => {
      const c = await scope.db.selectFrom('certificates').select('serial').where('role', '=', role).where('name', '=', name).executeTakeFirst();
      if (c) return true;
      const e = await scope.db.selectFrom('enrollments').select('id').where('role', '=', role).where('name', '=', name).executeTakeFirst();
      return e !== undefined;
    }),

    identities: (role) => guard(scope, `list ${role} identities`, async () => {
      const rows = await scope.db.selectFrom('certificates').selectAll().where('role', '=', role).orderBy('name').orderBy('issued').execute();
      const byName = new Map<string, PkiIdentity>();
      for (const r of rows) {
        const c = toCertificate(r);
        const id = byName.get(c.name) ?? { name: c.name, role, notAfter: undefined, lastSeen: undefined, address: undefined, revoked: true };
        if (c.revoked === undefined) {
          id.revoked = false;
          id.notAfter = Math.max(id.notAfter ?? 0, c.notAfter);
        }
        if (c.lastSeen !== undefined && c.lastSeen >= (id.lastSeen ?? 0)) {
          id.lastSeen = c.lastSeen;
          id.address = c.address;
        }
        byName.set(c.name, id);
      }
      return [...byName.values()];
    }),
  };
}

/** NOT_FOUND for revoking an identity the CA never heard of. */
export function unknownIdentity(role: string, name: string): CofferError {
  return new CofferError('NOT_FOUND', `Cannot revoke ${role} ${name}: no certificate or enrollment token was ever issued for it`, {
    hint: role === 'agent' ? 'List clients with `coffer get clients`.' : 'List nodes with `coffer nodes list`.',
  });
}

function toEnrollment(row: Selectable<EnrollmentsTable>): Enrollment {
  return {
    id: row.id, name: row.name, role: row.role, expires: Number(row.expires), created: Number(row.created), createdBy: row.created_by,
    used: row.used === null ? undefined : Number(row.used), serial: row.serial ?? undefined,
  };
}

function toCertificate(row: Selectable<CertificatesTable>): IssuedCertificate {
  return {
    serial: row.serial, name: row.name, role: row.role, notBefore: Number(row.not_before), notAfter: Number(row.not_after), issued: Number(row.issued),
    lastSeen: row.last_seen === null ? undefined : Number(row.last_seen), address: row.address ?? undefined,
    revoked: row.revoked === null ? undefined : Number(row.revoked), revokedBy: row.revoked_by ?? undefined,
  };
}
