// Applied documents (Policy, StorageUnit, Lifecycle, Client) and their history. Every apply
// that changes a document records the whole document as a new revision in `policy_revisions`;
// a removal records a revision without a document. The history is never rewritten, so an
// auditor can see what any policy said at any time, and who applied it.
//
// Applying a document equal to the current revision (same JSON, key order aside) records
// nothing and answers `changed: false`: `coffer apply -f site.yaml` run again by a
// configuration-management tool every hour must not bury the real changes. The audit log still
// records each apply.

import type { Kysely } from 'kysely';
import { CofferError } from '../core/errors.ts';
import { canonicalJson, fromJson, toJson } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, type Scope } from './scope.ts';
import type { Database } from './schema.ts';

/** A document as applied (`coffer apply -f`): validated by src/policy before it gets here. */
export interface CatalogDocument {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; [key: string]: unknown };
  spec: Record<string, unknown>;
}

export interface ApplyOptions {
  /** Who applies it (user name), recorded with the revision. */
  by?: string;
}

export interface ApplyResult {
  name: string;
  revision: number;
  /** False when the document equals the current revision: nothing was recorded. */
  changed: boolean;
}

export interface Revision {
  kind: string;
  name: string;
  revision: number;
  /** The applied document; undefined for the revision that removed it. */
  document: CatalogDocument | undefined;
  applied: number;
  appliedBy: string | undefined;
}

/** Throws INVALID_CONFIG unless `doc` is a document of `kind` with a name. */
export function checkDocument(doc: CatalogDocument, kind: string): void {
  const name = doc?.metadata?.name;
  if (doc?.kind !== kind || typeof name !== 'string' || name === '' || typeof doc.spec !== 'object' || doc.spec === null) {
    throw new CofferError('INVALID_CONFIG', `Cannot apply ${kind} ${typeof name === 'string' ? name : '(no name)'}: it is not a ${kind} document with metadata.name and spec`, {
      hint: `Give it kind: ${kind}, metadata.name and a spec.`,
    });
  }
}

/**
 * Records `doc` as the next revision of its kind and name unless it equals the latest one.
 * Runs inside the caller's transaction, which also writes the document's own row.
 */
export async function recordRevision(db: Kysely<Database>, scope: Scope, doc: CatalogDocument, by: string | undefined): Promise<ApplyResult> {
  const name = doc.metadata.name;
  const latest = await db.selectFrom('policy_revisions').select(['revision', 'document'])
    .where('kind', '=', doc.kind).where('name', '=', name)
    .orderBy('revision', 'desc').limit(1).executeTakeFirst();
  if (latest !== undefined && latest.document !== null && canonicalJson(fromJson(latest.document)) === canonicalJson(doc)) {
    return { name, revision: latest.revision, changed: false };
  }
  const revision = (latest?.revision ?? 0) + 1;
  await guard(scope, `apply ${doc.kind} ${name}`, () =>
    db.insertInto('policy_revisions')
      .values({ kind: doc.kind, name, revision, document: toJson(doc), applied: scope.now(), applied_by: by ?? null })
      .execute(), { unique: ['CONFLICT', 'another apply of it ran at the same time'] });
  return { name, revision, changed: true };
}

/** Records the removal of a document as a revision without one. */
export async function recordRemoval(db: Kysely<Database>, scope: Scope, kind: string, name: string, by: string | undefined): Promise<number> {
  const latest = await db.selectFrom('policy_revisions').select('revision')
    .where('kind', '=', kind).where('name', '=', name)
    .orderBy('revision', 'desc').limit(1).executeTakeFirst();
  const revision = (latest?.revision ?? 0) + 1;
  await db.insertInto('policy_revisions')
    .values({ kind, name, revision, document: null, applied: scope.now(), applied_by: by ?? null })
    .execute();
  return revision;
}

/** The revisions of one document, newest first. */
export async function listRevisions(scope: Scope, kind: string, name: string, options: PageOptions = {}): Promise<Page<Revision>> {
  const action = `list the history of ${kind} ${name}`;
  const limit = pageLimit(options.limit, action);
  return guard(scope, action, async () => {
    let q = scope.db.selectFrom('policy_revisions').selectAll()
      .where('kind', '=', kind).where('name', '=', name);
    if (options.cursor !== undefined) {
      const [revision] = decodeCursor(options.cursor, 'revisions', ['number'], action) as [number];
      q = q.where('revision', '<', revision);
    }
    const rows = await q.orderBy('revision', 'desc').limit(limit + 1).execute();
    return toPage(rows, limit, 'revisions', (r) => [r.revision], toRevision);
  });
}

/** One revision of a document; NOT_FOUND if it was never recorded. */
export async function getRevision(scope: Scope, kind: string, name: string, revision: number): Promise<Revision> {
  const action = `get revision ${revision} of ${kind} ${name}`;
  const row = await guard(scope, action, () =>
    scope.db.selectFrom('policy_revisions').selectAll()
      .where('kind', '=', kind).where('name', '=', name).where('revision', '=', revision)
      .executeTakeFirst());
  if (row === undefined) throw new CofferError('NOT_FOUND', `Cannot ${action}: there is no such revision`, { hint: `See its history for the revisions there are.` });
  return toRevision(row);
}

function toRevision(row: { kind: string; name: string; revision: number; document: unknown; applied: number; applied_by: string | null }): Revision {
  return {
    kind: row.kind,
    name: row.name,
    revision: row.revision,
    document: fromJson<CatalogDocument>(row.document),
    applied: row.applied,
    appliedBy: row.applied_by ?? undefined,
  };
}
