// Pagination for every list of the catalog: a `limit` and an opaque `cursor`, answered with
// `{ items, next? }` (the API's shape, docs/server.md). Keyset pagination: the cursor holds the
// sort key of the last row returned and names its list, so a cursor of one list is refused by
// another instead of silently returning the wrong rows. Pages stay fast however deep they go.

import { CofferError } from '../core/errors.ts';

export interface Page<T> {
  items: T[];
  /** Pass as `cursor` for the next page; absent on the last page. */
  next?: string;
}

export interface PageOptions {
  /** At most this many items (1..1000, default 100). */
  limit?: number;
  /** The `next` of the previous page. */
  cursor?: string;
}

export const MAX_LIMIT = 1000;
const DEFAULT_LIMIT = 100;

export function pageLimit(limit: number | undefined, action: string): number {
  if (limit === undefined) return DEFAULT_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
    throw new CofferError('USAGE', `Cannot ${action}: the limit ${limit} is not between 1 and ${MAX_LIMIT}`, {
      hint: 'Ask for fewer items and follow the `next` cursor.',
    });
  }
  return limit;
}

export function encodeCursor(list: string, key: readonly unknown[]): string {
  return Buffer.from(JSON.stringify([list, ...key])).toString('base64url');
}

/** The sort key a cursor holds; `types` says what each part must be. */
export function decodeCursor(cursor: string, list: string, types: readonly ('string' | 'number')[], action: string): unknown[] {
  let parts: unknown;
  try {
    parts = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    parts = undefined;
  }
  const ok = Array.isArray(parts) && parts.length === types.length + 1 && parts[0] === list &&
    types.every((t, i) => typeof parts[i + 1] === t);
  if (!ok) {
    throw new CofferError('USAGE', `Cannot ${action}: the cursor is not one this list gave`, {
      hint: 'Pass the `next` value of the previous page unchanged, with the same filters.',
    });
  }
  return (parts as unknown[]).slice(1);
}

/** The page of `rows` (fetched with limit + 1 to know whether more follow). */
export function toPage<R, T>(rows: R[], limit: number, list: string, keyOf: (row: R) => unknown[], map: (row: R) => T): Page<T> {
  const more = rows.length > limit;
  const kept = more ? rows.slice(0, limit) : rows;
  const page: Page<T> = { items: kept.map(map) };
  if (more) page.next = encodeCursor(list, keyOf(kept[kept.length - 1]!));
  return page;
}
