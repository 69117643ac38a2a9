// Policies as code on the server: reading what it has as documents (for get, diff and export),
// and applying documents: checked whole (schemas, references, then what only the server can
// check: known clients, reachable agents, readable paths, writable storage), then written in
// dependency order in one catalog transaction, or not at all. A storage unit on an empty location
// gets a repository with a generated password kept in the keystore.

import { CofferError, toCofferError } from '../core/errors.ts';
import type { CatalogQueries } from '../catalog/catalog.ts';
import type { StorageUnit } from '../catalog/storage-units.ts';
import {
  diffDocuments,
  documentId,
  invalidDocuments,
  KINDS,
  knownFrom,
  normalize,
  parseDuration,
  validateReferences,
  type CofferDocument,
  type DocumentChange,
  type Kind,
  type PolicyDocument,
  type Problem,
  type StorageUnitDocument,
} from '../policy/index.ts';
import { runOnAgent, unitPasswordRef, type Services } from './services.ts';
import type { Role } from './http.ts';

export interface SecretStore {
  /** Keeps a secret under a keystore name (`storage-unit/NAME/password`). */
  put(name: string, secret: string): Promise<void>;
  /** A new random password for a repository. */
  generatePassword(): string;
  /** Whether the keystore holds a secret of this name. */
  has(name: string): boolean;
  /** The master key (base64) of the repositories the server creates: one deduplication domain (domain.ts). */
  domainMaster(): Promise<string>;
}

/** The order documents are written in: what others refer to first. */
const APPLY_ORDER: Record<Kind, number> = { StorageUnit: 0, Lifecycle: 1, Client: 2, Policy: 3 };

function module(q: CatalogQueries, kind: Kind) {
  switch (kind) {
    case 'StorageUnit': return q.storageUnits;
    case 'Lifecycle': return q.lifecycles;
    case 'Policy': return q.policies;
    case 'Client': return q.clients;
  }
}

/** The document the server holds for (kind, name), as it was applied; undefined if none. */
export async function getDocument(q: CatalogQueries, kind: Kind, name: string): Promise<CofferDocument | undefined> {
  const m = module(q, kind);
  const row = await m.find(name) as { revision?: number } | undefined;
  if (!row || row.revision === undefined) return undefined;
  return appliedDocument(m, name);
}

/** The last applied revision of a row that has one. */
async function appliedDocument(m: ReturnType<typeof module>, name: string): Promise<CofferDocument | undefined> {
  const rev = await m.history(name, { limit: 1 });
  const doc = rev.items[0]?.document;
  if (!doc) return undefined;
  if (doc.kind === 'Client' && Object.keys(doc.spec ?? {}).length === 0) {
    const { spec: _spec, ...rest } = doc;
    return normalize(rest);
  }
  return normalize(doc);
}

/** Every document of a kind, by name. */
export async function listDocuments(q: CatalogQueries, kind: Kind): Promise<CofferDocument[]> {
  const out: CofferDocument[] = [];
  const m = module(q, kind);
  for (let cursor: string | undefined; ;) {
    const page = await m.list({ limit: 1000, cursor });
    // The page has each row's revision: a client registered by its agent without a Client
    // document has none, and costs no query (10,000 clients made every apply 10,000 queries).
    for (const row of page.items) {
      if ((row as { revision?: number }).revision === undefined) continue;
      const doc = await appliedDocument(m, row.name);
      if (doc) out.push(doc);
    }
    if (!page.next) break;
    cursor = page.next;
  }
  return out;
}

export interface ApplyOutcome {
  changes: Array<Omit<DocumentChange, 'before' | 'after'>>;
  warnings: Problem[];
  dryRun: boolean;
}

export interface ApplyRequest {
  documents: unknown[];
  dryRun?: boolean;
  by: string;
  role: Role;
}

/** Fields an operator may change in a policy: its schedules only (docs/server.md "Roles"). */
function operatorMayApply(change: DocumentChange): string | undefined {
  if (change.action === 'unchanged') return undefined;
  if (change.kind !== 'Policy' || change.action !== 'changed') return `${change.id}: the operator role may change the schedules of existing policies only`;
  const other = change.fields.find((f) => !f.path.startsWith('spec.schedules'));
  return other ? `${change.id}: the operator role may change schedules only, not ${other.path}` : undefined;
}

/**
 * Checks and (unless dryRun) applies documents. Throws INVALID_CONFIG listing every problem, or
 * FORBIDDEN, and applies nothing then.
 */
export async function applyDocuments(s: Services, secrets: SecretStore, req: ApplyRequest, options: { timezone: string; onApplied?: (docs: CofferDocument[]) => Promise<void> }): Promise<ApplyOutcome> {
  // 1. Each document on its own.
  const problems: Problem[] = [];
  const docs: CofferDocument[] = [];
  req.documents.forEach((raw, i) => {
    try {
      docs.push(normalize(raw));
    } catch (e) {
      const details = (toCofferError(e).details?.problems ?? []) as Problem[];
      problems.push(...(details.length ? details : [{ path: `documents[${i}]`, message: toCofferError(e).message }]));
    }
  });
  if (problems.length) throw invalidDocuments(`${req.documents.length} document(s)`, problems);
  const seen = new Set<string>();
  for (const d of docs) {
    if (seen.has(documentId(d))) problems.push({ document: documentId(d), path: '', message: `${documentId(d)} is given twice` });
    seen.add(documentId(d));
  }
  // 2. References, against what the server has.
  const current = new Map<string, CofferDocument>();
  for (const kind of KINDS) for (const d of await listDocuments(s.catalog, kind)) current.set(documentId(d), d);
  const refs = validateReferences(docs, knownFrom(current.values()), { defaultTimezone: options.timezone, knownNames: (k) => [...current.values()].filter((d) => d.kind === k).map((d) => d.metadata.name) });
  problems.push(...refs.errors);
  const warnings: Problem[] = [...refs.warnings];
  const changes = diffDocuments([...current.values()], docs);
  if (req.role !== 'admin') {
    const denied = changes.map(operatorMayApply).filter((x): x is string => x !== undefined);
    if (req.role !== 'operator' || denied.length) throw new CofferError('FORBIDDEN', `Not allowed: ${req.role !== 'operator' ? `the ${req.role} role may not apply documents` : denied.join('; ')}`, { hint: 'Ask an administrator to apply this.' });
  }
  if (problems.length) throw invalidDocuments(`${docs.length} document(s)`, problems);

  // 3. What only the server can check, for what changes.
  const changed = new Set(changes.filter((c) => c.action !== 'unchanged').map((c) => c.id));
  const initialise: StorageUnitDocument[] = [];
  for (const doc of docs) {
    const id = documentId(doc);
    if (!changed.has(id)) continue;
    if (doc.kind === 'Policy') await checkPolicy(s, doc, problems, warnings);
    if (doc.kind === 'StorageUnit') {
      const before = current.get(id) as StorageUnitDocument | undefined;
      // A unit made immutable is checked again: its bucket must have Object Lock.
      if (before && before.spec.url === doc.spec.url && before.spec.passwordFrom === doc.spec.passwordFrom && (before.spec.immutable ?? false) === (doc.spec.immutable ?? false)) continue;
      if (await checkStorageUnit(s, secrets, doc, problems)) initialise.push(doc);
    }
  }
  if (problems.length) throw invalidDocuments(`${docs.length} document(s)`, problems);
  const outcome: ApplyOutcome = { changes: changes.map(({ before: _b, after: _a, ...c }: DocumentChange & { before?: unknown; after?: unknown }) => c), warnings, dryRun: !!req.dryRun };
  if (req.dryRun || changed.size === 0) return outcome;

  // 4. Repositories for new units on empty locations, then the catalog in one transaction.
  for (const unit of initialise) {
    const password = secrets.generatePassword();
    const name = unitPasswordRef(unit.metadata.name).slice('keystore:'.length);
    await secrets.put(name, password);
    let r: Record<string, unknown>;
    try {
      r = await runOnAgent(s.node(), 'init', { storage: await s.storageAccess(unitOf(unit), { password }), master: await secrets.domainMaster() });
    } catch (e) {
      const err = toCofferError(e);
      if (err.code !== 'ALREADY_EXISTS' && err.code !== 'REFUSED') throw err;
      throw invalidDocuments(documentId(unit), [{ document: documentId(unit), path: 'spec.url', message: `${unit.spec.url} is not empty: ${err.message.replace(/^Cannot initialise a repository at [^:]*: /, '')}`, hint: 'Give an empty directory or S3 prefix (one that does not exist yet is fine), or name the password of the repository there with passwordFrom.' }]);
    }
    warnings.push({ document: documentId(unit), path: 'spec.url', message: `a new repository (${String(r.repository).slice(0, 12)}) was created at ${unit.spec.url}; its password is in the server's keystore` });
  }
  const ordered = docs.filter((d) => changed.has(documentId(d))).sort((a, b) => APPLY_ORDER[a.kind] - APPLY_ORDER[b.kind]);
  await s.catalog.transaction(async (tx) => {
    for (const doc of ordered) {
      if (doc.kind === 'Client' && !(await tx.clients.find(doc.metadata.name))) {
        throw new CofferError('NOT_FOUND', `Cannot apply Client/${doc.metadata.name}: no such client is registered`, { hint: 'Clients are registered by their agents; apply a Client document only to set labels and limits of a known client.' });
      }
      // The catalog keeps a spec for every kind; a Client may come without one (see getDocument).
      await module(tx, doc.kind).apply({ ...doc, spec: doc.spec ?? {} }, { by: req.by });
    }
  });
  await options.onApplied?.(ordered);
  return outcome;
}

async function checkPolicy(s: Services, doc: PolicyDocument, problems: Problem[], warnings: Problem[]): Promise<void> {
  const id = documentId(doc);
  for (const [i, client] of doc.spec.clients.entries()) {
    if (!(await s.catalog.clients.find(client))) {
      problems.push({ document: id, path: `spec.clients[${i}]`, message: `no client ${client} is registered`, hint: 'Clients are registered when their agent first connects; check the name with `coffer get clients`.' });
      continue;
    }
    if (!s.agents.has(client)) {
      warnings.push({ document: id, path: `spec.clients[${i}]`, message: `the agent of ${client} is not connected now: its paths were not checked, and its backups wait for it` });
      continue;
    }
    const paths = doc.spec.selections.flatMap((sel) => ('paths' in sel ? sel.paths : 'images' in sel ? sel.images : []));
    if (paths.length === 0) continue;
    try {
      const r = await runOnAgent(s.agents.get(client), 'probe', { paths });
      for (const p of r.problems as Array<{ path: string; problem: string }>) warnings.push({ document: id, path: 'spec.selections', message: `${client}:${p.path} ${p.problem}` });
    } catch (e) {
      warnings.push({ document: id, path: `spec.clients[${i}]`, message: `could not check the paths on ${client}: ${toCofferError(e).message}` });
    }
  }
  // A window should hold the last run of this policy: compare with the longest recent backup.
  const recent = await s.catalog.jobs.list({ policy: doc.metadata.name, state: ['succeeded', 'warnings'], kind: 'backup', limit: 20 });
  const longest = Math.max(0, ...recent.items.map((j) => (j.ended ?? 0) - (j.started ?? j.ended ?? 0)));
  doc.spec.schedules.forEach((sch, i) => {
    if (!sch.window || longest === 0) return;
    const windowMs = parseDuration(sch.window.duration);
    if (longest > windowMs) warnings.push({ document: id, path: `spec.schedules[${i}].window.duration`, message: `the window (${sch.window.duration}) is shorter than the last backup of this policy took (${Math.ceil(longest / 60_000)} min): the next run may not fit` });
  });
}

/** The unit as the catalog would hold it, for resolving its access before it is applied. */
function unitOf(doc: StorageUnitDocument): StorageUnit {
  return { name: doc.metadata.name, url: doc.spec.url, spec: doc.spec, labels: {}, revision: 0, updated: 0, updatedBy: undefined, maxJobs: undefined, passwordRef: undefined, repoId: undefined };
}

/**
 * Checks a new or moved storage unit: its location takes a write (a probe object, with the
 * unit's own S3 credentials), and either holds a repository its password opens (passwordFrom, or
 * the keystore's from an earlier apply) or is empty. True when it is empty: a repository is made.
 */
async function checkStorageUnit(s: Services, secrets: SecretStore, doc: StorageUnitDocument, problems: Problem[]): Promise<boolean> {
  const id = documentId(doc);
  const unit = unitOf(doc);
  let probe: Record<string, unknown>;
  try {
    probe = await runOnAgent(s.node(), 'probe', { storage: await s.storageAccess(unit, { password: 'probe' }) });
  } catch (e) {
    problems.push({ document: id, path: 'spec', message: `cannot check ${doc.spec.url}: ${toCofferError(e).message}` });
    return false;
  }
  const failed = (probe.problems as Array<{ problem: string; code?: string; hint?: string }>)[0];
  if (failed?.code === 'REFUSED' && doc.spec.immutable) {
    problems.push({ document: id, path: 'spec.immutable', message: failed.problem, ...(failed.hint ? { hint: failed.hint } : {}) });
    return false;
  }
  if (failed) {
    problems.push({ document: id, path: 'spec.url', message: `${doc.spec.url} is not writable: ${failed.problem}`, hint: 'Create the directory or bucket and give the server write access (for S3: credentialsFrom).' });
    return false;
  }
  const known = doc.spec.passwordFrom !== undefined || secrets.has(unitPasswordRef(doc.metadata.name).slice('keystore:'.length));
  try {
    // With a password to hand, it must open what is there; without, anything there is refused.
    await runOnAgent(s.node(), 'snapshots', { storage: await s.storageAccess(unit, known ? {} : { password: 'no password: probing for an empty location' }) });
    if (known) return false;
    problems.push({ document: id, path: 'spec.url', message: `${doc.spec.url} holds a repository this server has no password for`, hint: 'Name its password with passwordFrom: file:/path or env:NAME, or give an empty location.' });
    return false;
  } catch (e) {
    const err = toCofferError(e);
    if (err.code === 'NOT_FOUND' && !doc.spec.passwordFrom) return true; // nothing there: make one
    if (err.code === 'WRONG_PASSWORD') {
      problems.push(known
        ? { document: id, path: doc.spec.passwordFrom ? 'spec.passwordFrom' : 'spec.url', message: `the password ${doc.spec.passwordFrom ? `from ${doc.spec.passwordFrom}` : 'in the keystore'} does not open the repository at ${doc.spec.url}`, hint: 'Name the right password with passwordFrom: file:/path or env:NAME.' }
        : { document: id, path: 'spec.url', message: `${doc.spec.url} holds a repository this server has no password for`, hint: 'Name its password with passwordFrom: file:/path or env:NAME, or give an empty location.' });
      return false;
    }
    problems.push({ document: id, path: doc.spec.passwordFrom ? 'spec.passwordFrom' : 'spec.url', message: `cannot open the repository at ${doc.spec.url}: ${err.message}` });
    return false;
  }
}
