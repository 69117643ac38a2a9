// Server settings that live in the catalog rather than in a file, so that every server sharing
// one PostgreSQL sees the same (the global job limit, the retry backoff, the console's
// defaults): a key and a JSON value.

import { fromJson, toJsonRequired } from './json.ts';
import { guard, type Scope } from './scope.ts';

export interface Setting {
  key: string;
  value: unknown;
  updated: number;
}

export interface Settings {
  /** The value, or undefined if it was never set. */
  get<T = unknown>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown): Promise<void>;
  /** By key. */
  list(): Promise<Setting[]>;
  /** True if there was one. */
  remove(key: string): Promise<boolean>;
}

export function settingsModule(scope: Scope): Settings {
  return {
    get: <T>(key: string) => guard(scope, `read setting ${key}`, async () => {
      const row = await scope.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirst();
      return row === undefined ? undefined : fromJson<T>(row.value);
    }),

    async set(key, value) {
      const row = { value: toJsonRequired(value), updated: scope.now() };
      await guard(scope, `change setting ${key}`, () =>
        scope.db.insertInto('settings').values({ key, ...row }).onConflict((oc) => oc.column('key').doUpdateSet(row)).execute());
    },

    list: () => guard(scope, 'list settings', async () => {
      const rows = await scope.db.selectFrom('settings').selectAll().orderBy('key').execute();
      return rows.map((r) => ({ key: r.key, value: fromJson(r.value), updated: r.updated }));
    }),

    async remove(key) {
      const result = await guard(scope, `remove setting ${key}`, () => scope.db.deleteFrom('settings').where('key', '=', key).executeTakeFirst());
      return result.numDeletedRows > 0n;
    },
  };
}
