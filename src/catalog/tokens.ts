// API tokens and login sessions. Only the SHA-256 of a token's secret is stored (the server
// hashes what a client presents and looks it up by hash), so a stolen catalog grants nothing.
// Whether a token is still valid (not revoked, not expired, its user enabled) is for
// src/server to decide from what is returned here.

import { CofferError } from '../core/errors.ts';
import { ulid } from '../core/ulid.ts';
import { decodeCursor, pageLimit, toPage, type Page, type PageOptions } from './page.ts';
import { guard, type Scope } from './scope.ts';
import type { TokensTable } from './schema.ts';
import type { Selectable } from 'kysely';

export type TokenKind = 'session' | 'api';

export interface Token {
  id: string;
  name: string;
  user: string;
  /** Hex SHA-256 of the secret. */
  hash: string;
  /** A narrower role than the user's, if given. */
  role: string | undefined;
  kind: TokenKind;
  expires: number | undefined;
  created: number;
  lastUsed: number | undefined;
  /** When it was revoked; undefined while valid. */
  revoked: number | undefined;
}

export interface TokenInput {
  name: string;
  user: string;
  hash: string;
  role?: string;
  kind: TokenKind;
  expires?: number;
}

export interface Tokens {
  /** NOT_FOUND if the user does not exist. */
  create(token: TokenInput): Promise<Token>;
  get(id: string): Promise<Token>;
  /** The token with this secret hash, valid or not. */
  findByHash(hash: string): Promise<Token | undefined>;
  /** Newest first. */
  list(options?: PageOptions & { user?: string }): Promise<Page<Token>>;
  /** Records a use (now, or at `time`). */
  touch(id: string, time?: number): Promise<void>;
  revoke(id: string): Promise<Token>;
  /** Removes tokens that expired before `time`; returns how many. */
  removeExpired(time: number): Promise<number>;
}

export function tokensModule(scope: Scope): Tokens {
  const notFound = (action: string) => new CofferError('NOT_FOUND', `Cannot ${action}: the token does not exist`, { hint: 'List tokens with coffer get tokens.' });
  const get = async (id: string) => {
    const row = await guard(scope, `get token ${id}`, () => scope.db.selectFrom('tokens').selectAll().where('id', '=', id).executeTakeFirst());
    if (row === undefined) throw notFound(`get token ${id}`);
    return toToken(row);
  };

  return {
    async create(token) {
      const action = `create token ${token.name} for user ${token.user}`;
      const now = scope.now();
      const row = {
        id: ulid(now), name: token.name, user: token.user, hash: token.hash, role: token.role ?? null, kind: token.kind,
        expires: token.expires ?? null, created: now, last_used: null, revoked: null,
      };
      await guard(scope, action, () => scope.db.insertInto('tokens').values(row).execute(), {
        foreignKey: ['NOT_FOUND', 'the user does not exist'],
        unique: ['CONFLICT', 'a token with the same secret exists'],
      });
      return toToken(row);
    },

    get,

    findByHash: (hash) => guard(scope, 'look up a token', async () => {
      const row = await scope.db.selectFrom('tokens').selectAll().where('hash', '=', hash).executeTakeFirst();
      return row === undefined ? undefined : toToken(row);
    }),

    async list(options = {}) {
      const action = 'list tokens';
      const limit = pageLimit(options.limit, action);
      return guard(scope, action, async () => {
        let q = scope.db.selectFrom('tokens').selectAll();
        if (options.user !== undefined) q = q.where('user', '=', options.user);
        if (options.cursor !== undefined) {
          const [id] = decodeCursor(options.cursor, 'tokens', ['string'], action) as [string];
          q = q.where('id', '<', id);
        }
        const rows = await q.orderBy('id', 'desc').limit(limit + 1).execute();
        return toPage(rows, limit, 'tokens', (r) => [r.id], toToken);
      });
    },

    async touch(id, time) {
      const result = await guard(scope, `record a use of token ${id}`, () =>
        scope.db.updateTable('tokens').set({ last_used: time ?? scope.now() }).where('id', '=', id).executeTakeFirst());
      if (result.numUpdatedRows === 0n) throw notFound(`record a use of token ${id}`);
    },

    async revoke(id) {
      const result = await guard(scope, `revoke token ${id}`, () =>
        scope.db.updateTable('tokens').set({ revoked: scope.now() }).where('id', '=', id).where('revoked', 'is', null).executeTakeFirst());
      if (result.numUpdatedRows === 0n) await get(id); // NOT_FOUND, or already revoked: keep the first time
      return get(id);
    },

    async removeExpired(time) {
      const result = await guard(scope, 'remove expired tokens', () =>
        scope.db.deleteFrom('tokens').where('expires', '<', time).executeTakeFirst());
      return Number(result.numDeletedRows);
    },
  };
}

function toToken(row: Selectable<TokensTable>): Token {
  return {
    id: row.id,
    name: row.name,
    user: row.user,
    hash: row.hash,
    role: row.role ?? undefined,
    kind: row.kind as TokenKind,
    expires: row.expires ?? undefined,
    created: row.created,
    lastUsed: row.last_used ?? undefined,
    revoked: row.revoked ?? undefined,
  };
}
