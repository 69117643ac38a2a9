// Storage units: one repository on one backend each (docs/server.md). Applied as StorageUnit
// documents; the spec fields the server needs without parsing the document are columns of
// their own: `url`, `maxJobs` (read by every job claim) and `passwordRef` (a keystore
// reference or `file:`/`env:`, never the password). `repoId` is learnt from the repository.

import { CofferError } from '../core/errors.ts';
import type { CatalogDocument } from './documents.ts';
import { guard, type Scope } from './scope.ts';
import { specDocuments, type SpecDocuments, type StoredDocument } from './spec-documents.ts';

export interface StorageUnit extends StoredDocument {
  url: string;
  /** Jobs that may run against it at once; undefined: no limit. */
  maxJobs: number | undefined;
  passwordRef: string | undefined;
  /** The repository's id, once the server has opened it. */
  repoId: string | undefined;
}

export interface StorageUnits extends SpecDocuments<StorageUnit> {
  /** Records the id of the repository behind the unit. */
  setRepoId(name: string, repoId: string): Promise<void>;
}

export function storageUnitsModule(scope: Scope): StorageUnits {
  const documents = specDocuments<StorageUnit>(scope, {
    kind: 'StorageUnit',
    noun: 'storage unit',
    table: 'storage_units',
    columns: columnsOf,
    map: (row, base) => ({
      ...base,
      url: row.url as string,
      maxJobs: (row.max_jobs as number | null) ?? undefined,
      passwordRef: (row.password_ref as string | null) ?? undefined,
      repoId: (row.repo_id as string | null) ?? undefined,
    }),
    inUse: 'it still holds copies of images (expire or move them first)',
  });
  return {
    ...documents,
    async setRepoId(name, repoId) {
      const result = await guard(scope, `record the repository id of storage unit ${name}`, () =>
        scope.db.updateTable('storage_units').set({ repo_id: repoId }).where('name', '=', name).executeTakeFirst());
      if (result.numUpdatedRows === 0n) {
        throw new CofferError('NOT_FOUND', `Cannot record the repository id of storage unit ${name}: it does not exist`, { hint: 'Apply the StorageUnit document first.' });
      }
    },
  };
}

function columnsOf(doc: CatalogDocument): Record<string, unknown> {
  const { url, maxJobs, passwordRef } = doc.spec as { url?: unknown; maxJobs?: unknown; passwordRef?: unknown };
  const bad = (field: string, what: string) => new CofferError('INVALID_CONFIG', `Cannot apply StorageUnit ${doc.metadata.name}: spec.${field} ${what}`, {
    hint: 'A StorageUnit spec needs url (string), and may have maxJobs (a positive integer) and passwordRef (string).',
  });
  if (typeof url !== 'string' || url === '') throw bad('url', 'is missing');
  if (maxJobs !== undefined && (!Number.isInteger(maxJobs) || (maxJobs as number) < 1)) throw bad('maxJobs', 'is not a positive integer');
  if (passwordRef !== undefined && typeof passwordRef !== 'string') throw bad('passwordRef', 'is not a string');
  return { url, max_jobs: (maxJobs as number | undefined) ?? null, password_ref: passwordRef ?? null };
}
