// Users of the API and console. The catalog keeps the password hash (scrypt, PHC-style string,
// made by src/server), the role and, for restore operators, the grants: the clients and
// destinations they may restore.

import { CofferError } from '../core/errors.ts';
import { fromJson, toJsonRequired } from './json.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, type Scope } from './scope.ts';
import type { UsersTable } from './schema.ts';
import type { Selectable } from 'kysely';

export interface User {
  name: string;
  passwordHash: string | undefined;
  /** admin, operator, restore or auditor (checked by src/server). */
  role: string;
  grants: Record<string, unknown>;
  created: number;
  updated: number;
  /** When it was disabled; undefined while enabled. */
  disabled: number | undefined;
}

export interface UserInput {
  name: string;
  passwordHash?: string;
  role: string;
  grants?: Record<string, unknown>;
}

export interface UserChange {
  passwordHash?: string | null;
  role?: string;
  grants?: Record<string, unknown>;
  disabled?: boolean;
}

export interface Users {
  /** ALREADY_EXISTS if the name is taken. */
  create(user: UserInput): Promise<User>;
  get(name: string): Promise<User>;
  find(name: string): Promise<User | undefined>;
  /** By name. */
  list(options?: PageOptions): Promise<Page<User>>;
  update(name: string, change: UserChange): Promise<User>;
  /** Removes the user and its tokens. */
  remove(name: string): Promise<void>;
}

export function usersModule(scope: Scope): Users {
  const find = (name: string) => guard(scope, `get user ${name}`, async () => {
    const row = await scope.db.selectFrom('users').selectAll().where('name', '=', name).executeTakeFirst();
    return row === undefined ? undefined : toUser(row);
  });
  const notFound = (action: string) => new CofferError('NOT_FOUND', `Cannot ${action}: the user does not exist`, { hint: 'List users with coffer get users.' });
  const get = async (name: string) => {
    const found = await find(name);
    if (found === undefined) throw notFound(`get user ${name}`);
    return found;
  };

  return {
    async create(user) {
      const action = `create user ${user.name}`;
      if (typeof user.name !== 'string' || user.name === '') throw new CofferError('USAGE', `Cannot ${action}: the name is empty`);
      const now = scope.now();
      const row = {
        name: user.name, password_hash: user.passwordHash ?? null, role: user.role,
        grants: toJsonRequired(user.grants ?? {}), created: now, updated: now, disabled: null,
      };
      await guard(scope, action, () => scope.db.insertInto('users').values(row).execute(),
        { unique: ['ALREADY_EXISTS', 'a user with that name exists'] });
      return toUser(row);
    },

    get,
    find,

    async list(options = {}) {
      const action = 'list users';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('users').selectAll();
        if (options.cursor !== undefined) {
          const [after] = decodeCursor(options.cursor, 'users', ['string'], action) as [string];
          q = q.where('name', '>', after);
        }
        const rows = await q.orderBy('name').limit(limit + 1).execute();
        return toPage(rows, limit, 'users', (r) => [r.name], toUser);
      });
    },

    async update(name, change) {
      const action = `change user ${name}`;
      const now = scope.now();
      const set: Record<string, unknown> = { updated: now };
      if (change.passwordHash !== undefined) set.password_hash = change.passwordHash;
      if (change.role !== undefined) set.role = change.role;
      if (change.grants !== undefined) set.grants = toJsonRequired(change.grants);
      if (change.disabled !== undefined) set.disabled = change.disabled ? now : null;
      const result = await guard(scope, action, () => scope.db.updateTable('users').set(set).where('name', '=', name).executeTakeFirst());
      if (result.numUpdatedRows === 0n) throw notFound(action);
      return get(name);
    },

    async remove(name) {
      const result = await guard(scope, `remove user ${name}`, () => scope.db.deleteFrom('users').where('name', '=', name).executeTakeFirst());
      if (result.numDeletedRows === 0n) throw notFound(`remove user ${name}`);
    },
  };
}

function toUser(row: Selectable<UsersTable>): User {
  return {
    name: row.name,
    passwordHash: row.password_hash ?? undefined,
    role: row.role,
    grants: fromJson<Record<string, unknown>>(row.grants) ?? {},
    created: row.created,
    updated: row.updated,
    disabled: row.disabled ?? undefined,
  };
}
