// Who may call the server's API: passwords (scrypt, PHC-style strings), roles and restore
// grants, session and API tokens, failed-login rate limiting, the audit trail of logins and
// tokens, and the first administrator. The REST API calls login() and authenticate() and asks
// roleCovers() / mayRestore() per route; it never sees a password hash or a token's hash.
//
// Role order (for API tokens, whose role may not exceed their creator's):
//   admin > operator > restore, operator > auditor; restore and auditor are incomparable.
// So an operator may create operator, restore and auditor tokens, a restore user restore tokens,
// an auditor auditor tokens. (An operator therefore reads what an auditor reads, the audit log
// included: granting an operator less than an auditor would make the order a lie.)
//
// Secrets: token secrets are `cof_` + base64url(32 random bytes), a prefix secret scanners can
// look for; the catalog holds only their SHA-256, so a stolen catalog logs nobody in. Neither a
// password nor a token secret is ever written to the audit log or put in an error message.

import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { closeSync, constants, fsyncSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Catalog, CatalogQueries } from '../catalog/catalog.ts';
import type { Token, TokenKind } from '../catalog/tokens.ts';
import type { User } from '../catalog/users.ts';
import { CofferError, isCofferError } from '../core/errors.ts';
import { checkDuration, formatDuration } from '../policy/durations.ts';

/** The catalog modules auth uses. */
export type AuthCatalog = Pick<CatalogQueries, 'users' | 'tokens' | 'audit'>;

// ---------------------------------------------------------------------------------------------
// Passwords

export interface ScryptParams {
  /** log2 of scrypt's N. */
  ln: number;
  r: number;
  p: number;
}

/** ln=15 (N=32768), r=8, p=1: about 0.1 s and 32 MiB per hash, as repository key files. */
export const DEFAULT_SCRYPT: ScryptParams = { ln: 15, r: 8, p: 1 };
export const MIN_PASSWORD_LENGTH = 12;
/** Longer passwords are refused: nobody types more, and it bounds the work of a request. */
export const MAX_PASSWORD_LENGTH = 1024;

const SALT_BYTES = 16;
const HASH_BYTES = 32;
// Bounds on parameters read from a stored string, so a bad row cannot cost gigabytes or minutes.
const MAX_LN = 22;
const MAX_R = 32;
const MAX_P = 16;
const PHC = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,88})\$([A-Za-z0-9+/]{16,88})$/;

interface ParsedHash {
  params: ScryptParams;
  salt: Buffer;
  hash: Buffer;
}

function paramsProblem(params: ScryptParams): string | undefined {
  const { ln, r, p } = params;
  if (!Number.isInteger(ln) || ln < 1 || ln > MAX_LN) return `ln must be an integer from 1 to ${MAX_LN}`;
  if (!Number.isInteger(r) || r < 1 || r > MAX_R) return `r must be an integer from 1 to ${MAX_R}`;
  if (!Number.isInteger(p) || p < 1 || p > MAX_P) return `p must be an integer from 1 to ${MAX_P}`;
  if (128 * 2 ** ln * r > 1 << 30) return 'N·r needs more than 1 GiB of memory';
  return undefined;
}

function parseHash(stored: string | undefined): ParsedHash | undefined {
  if (typeof stored !== 'string') return undefined;
  const m = PHC.exec(stored);
  if (m === null) return undefined;
  const params = { ln: Number(m[1]), r: Number(m[2]), p: Number(m[3]) };
  if (paramsProblem(params) !== undefined) return undefined;
  const salt = Buffer.from(m[4]!, 'base64');
  const hash = Buffer.from(m[5]!, 'base64');
  if (salt.length < 8 || hash.length < 16) return undefined;
  return { params, salt, hash };
}

// As repository passphrases: the UTF-8 of the NFC form, so the same password typed on systems
// that compose accents differently is the same password.
function scryptAsync(password: string, salt: Buffer, params: ScryptParams, length: number): Promise<Buffer> {
  const N = 2 ** params.ln;
  const maxmem = 128 * N * params.r + 128 * params.r * params.p + (16 << 20);
  return new Promise((resolve, reject) => {
    scrypt(Buffer.from(password.normalize('NFC'), 'utf8'), salt, length, { N, r: params.r, p: params.p, maxmem }, (err, key) => {
      if (err) reject(new CofferError('INTERNAL', `Cannot hash the password: ${err.message}`, { cause: err }));
      else resolve(key);
    });
  });
}

const b64 = (b: Buffer) => b.toString('base64').replace(/=+$/, '');

/** What is wrong with a new password, or undefined. */
export function passwordProblem(password: unknown): string | undefined {
  if (typeof password !== 'string') return 'no password was given';
  const length = [...password.normalize('NFC')].length;
  if (length < MIN_PASSWORD_LENGTH) return `it has ${length} characters, fewer than ${MIN_PASSWORD_LENGTH}`;
  if (length > MAX_PASSWORD_LENGTH) return `it has more than ${MAX_PASSWORD_LENGTH} characters`;
  return undefined;
}

/**
 * Hashes a new password: `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (unpadded base64). USAGE when it
 * is shorter than 12 characters (or longer than 1024).
 */
export async function hashPassword(password: string, options: { params?: ScryptParams } = {}): Promise<string> {
  const problem = passwordProblem(password);
  if (problem !== undefined) {
    throw new CofferError('USAGE', `Cannot set the password: ${problem}`, {
      hint: `Choose a password of at least ${MIN_PASSWORD_LENGTH} characters; a passphrase of a few words is easy to type and hard to guess.`,
    });
  }
  const params = options.params ?? DEFAULT_SCRYPT;
  const paramProblem = paramsProblem(params);
  if (paramProblem !== undefined) throw new CofferError('USAGE', `Cannot hash the password with these scrypt parameters: ${paramProblem}`);
  const salt = randomBytes(SALT_BYTES);
  const hash = await scryptAsync(password, salt, params, HASH_BYTES);
  return `$scrypt$ln=${params.ln},r=${params.r},p=${params.p}$${b64(salt)}$${b64(hash)}`;
}

/**
 * Whether `password` matches `stored`, compared in constant time with the parameters written in
 * `stored`. False (never an error) for a missing or malformed hash; the work done is then the
 * same as for a wrong password, so that nobody learns which it was from the time taken.
 */
export async function verifyPassword(password: string, stored: string | undefined): Promise<boolean> {
  const parsed = parseHash(stored);
  const target = parsed ?? parseHash(DUMMY_HASH)!;
  const candidate = typeof password === 'string' && password.length <= 4 * MAX_PASSWORD_LENGTH ? password : '';
  const derived = await scryptAsync(candidate, target.salt, target.params, target.hash.length);
  const same = timingSafeEqual(derived, target.hash);
  return parsed !== undefined && same;
}

/** True when `stored` was made with weaker (or other) parameters than `params`, or is malformed. */
export function needsRehash(stored: string | undefined, params: ScryptParams = DEFAULT_SCRYPT): boolean {
  const parsed = parseHash(stored);
  if (parsed === undefined) return true;
  const p = parsed.params;
  return p.ln !== params.ln || p.r !== params.r || p.p !== params.p || parsed.salt.length < SALT_BYTES || parsed.hash.length !== HASH_BYTES;
}

// Verified against for unknown users (and users without a password): random, so it matches
// nothing, with the default parameters, so it takes as long as a real user's check.
const DUMMY_HASH = `$scrypt$ln=${DEFAULT_SCRYPT.ln},r=${DEFAULT_SCRYPT.r},p=${DEFAULT_SCRYPT.p}$${b64(randomBytes(SALT_BYTES))}$${b64(randomBytes(HASH_BYTES))}`;

// ---------------------------------------------------------------------------------------------
// Roles and grants

export const ROLES = ['admin', 'operator', 'restore', 'auditor'] as const;
export type Role = (typeof ROLES)[number];

export function isRole(value: unknown): value is Role {
  return typeof value === 'string' && (ROLES as readonly string[]).includes(value);
}

/** The role named `value`; USAGE naming the roles otherwise. */
export function parseRole(value: unknown): Role {
  if (isRole(value)) return value;
  throw new CofferError('USAGE', `Cannot use the role ${JSON.stringify(value)}: there is no such role`, {
    hint: `Roles are ${ROLES.join(', ')}.`,
  });
}

const BELOW: Record<Role, readonly Role[]> = {
  admin: ['admin', 'operator', 'restore', 'auditor'],
  operator: ['operator', 'restore', 'auditor'],
  restore: ['restore'],
  auditor: ['auditor'],
};

/** True when `holder` has every power of `role` (admin > operator > restore | auditor). */
export function roleCovers(holder: Role, role: Role): boolean {
  return BELOW[holder].includes(role);
}

/** Where a restore operator may restore to: a client, and directories on it (absolute paths). */
export interface Destination {
  client: string;
  paths: string[];
}

/**
 * What a restore operator may browse and restore: the clients whose backups they may see, and
 * the places they may restore to. `'*'` means all. Grants are read from the user at every
 * request, so changing them takes effect at once.
 */
export interface Grants {
  clients: string[] | '*';
  destinations: Destination[] | '*';
}

export const ALL_GRANTS: Grants = Object.freeze({ clients: '*', destinations: '*' }) as Grants;
export const NO_GRANTS: Grants = Object.freeze({ clients: Object.freeze([]) as unknown as string[], destinations: Object.freeze([]) as unknown as Destination[] });

/**
 * Reads grants as stored on a user or sent to the API; `{}` is no grants. USAGE naming the field
 * otherwise. Paths must be absolute and free of `.` and `..` segments.
 */
export function parseGrants(value: unknown): Grants {
  const bad = (what: string) => new CofferError('USAGE', `Cannot use the grants: ${what}`, {
    hint: 'Write grants as { clients: ["web1", ...] or "*", destinations: [{ client: "web1", paths: ["/restore"] }, ...] or "*" }.',
  });
  if (value === undefined || value === null) return NO_GRANTS;
  if (typeof value !== 'object' || Array.isArray(value)) throw bad('they are not an object');
  const v = value as Record<string, unknown>;
  for (const key of Object.keys(v)) if (key !== 'clients' && key !== 'destinations') throw bad(`unknown field ${JSON.stringify(key)}`);
  let clients: string[] | '*' = [];
  if (v.clients === '*') clients = '*';
  else if (v.clients !== undefined) {
    if (!Array.isArray(v.clients) || !v.clients.every((c) => typeof c === 'string' && c !== '')) throw bad('clients is not "*" or a list of client names');
    clients = [...new Set(v.clients as string[])];
  }
  let destinations: Destination[] | '*' = [];
  if (v.destinations === '*') destinations = '*';
  else if (v.destinations !== undefined) {
    if (!Array.isArray(v.destinations)) throw bad('destinations is not "*" or a list');
    destinations = v.destinations.map((d, i) => {
      if (d === null || typeof d !== 'object' || Array.isArray(d)) throw bad(`destinations[${i}] is not an object`);
      const { client, paths, ...rest } = d as Record<string, unknown>;
      if (Object.keys(rest).length > 0) throw bad(`destinations[${i}] has an unknown field ${JSON.stringify(Object.keys(rest)[0])}`);
      if (typeof client !== 'string' || client === '') throw bad(`destinations[${i}].client is not a client name`);
      if (!Array.isArray(paths) || paths.length === 0) throw bad(`destinations[${i}].paths is not a non-empty list of paths`);
      return {
        client,
        paths: paths.map((p, j) => {
          const problem = typeof p === 'string' ? pathProblem(p) : 'is not a string';
          if (problem !== undefined) throw bad(`destinations[${i}].paths[${j}] ${problem}`);
          return p as string;
        }),
      };
    });
  }
  return { clients, destinations };
}

const WINDOWS_ABSOLUTE = /^[A-Za-z]:[\\/]/;

function pathProblem(path: string): string | undefined {
  if (!path.startsWith('/') && !WINDOWS_ABSOLUTE.test(path)) return 'is not an absolute path';
  if (path.includes('\0')) return 'contains a NUL character';
  const segments = path.split(/[\\/]/);
  if (segments.some((s) => s === '.' || s === '..')) return 'contains . or .. segments';
  return undefined;
}

/** Path segments for comparison: Windows drive paths compare without case, with either slash. */
function segmentsOf(path: string): string[] {
  const windows = WINDOWS_ABSOLUTE.test(path);
  const parts = (windows ? path.toLowerCase().split(/[\\/]/) : path.split('/')).filter((s) => s !== '');
  return parts;
}

function isWithin(path: string, root: string): boolean {
  if (WINDOWS_ABSOLUTE.test(path) !== WINDOWS_ABSOLUTE.test(root)) return false;
  const p = segmentsOf(path);
  const r = segmentsOf(root);
  return r.length <= p.length && r.every((s, i) => p[i] === s);
}

/** The caller of an API request, as authenticate() found it. */
export interface Principal {
  user: string;
  /** The effective role: the token's if it was narrowed, else the user's. */
  role: Role;
  /** What a restore principal may touch: ALL_GRANTS for admin and operator, NO_GRANTS for auditor. */
  grants: Grants;
  tokenId: string;
  tokenKind: TokenKind;
  /** When the token expires (ms since the epoch); undefined: never. */
  expires: number | undefined;
}

export type Decision = { allowed: true; reason: string } | { allowed: false; reason: string };

/** Whether `principal` may list and browse the backups of `client`. */
export function mayBrowse(principal: Pick<Principal, 'role' | 'grants'>, client: string): Decision {
  if (principal.role === 'admin' || principal.role === 'operator' || principal.role === 'auditor') {
    return { allowed: true, reason: `the role ${principal.role} may browse every client` };
  }
  const { clients } = principal.grants;
  if (clients === '*' || clients.includes(client)) return { allowed: true, reason: `the client ${client} is granted` };
  return { allowed: false, reason: `the client ${client} is not among the clients granted to this user` };
}

/**
 * Whether `principal` may restore backups of `fromClient` to `toPath` on `toClient`. The API
 * resolves "the original location" into the absolute paths it means and asks for each of them.
 * Auditors never restore; admins and operators restore anything; a restore operator needs
 * `fromClient` among its clients and `toPath` inside one of the paths granted on `toClient`.
 */
export function mayRestore(principal: Pick<Principal, 'role' | 'grants'>, target: { fromClient: string; toClient: string; toPath: string }): Decision {
  const { fromClient, toClient, toPath } = target;
  if (principal.role === 'auditor') return { allowed: false, reason: 'the role auditor may not restore' };
  const problem = pathProblem(toPath);
  if (problem !== undefined) return { allowed: false, reason: `the destination ${JSON.stringify(toPath)} ${problem}` };
  if (principal.role === 'admin' || principal.role === 'operator') {
    return { allowed: true, reason: `the role ${principal.role} may restore anything anywhere` };
  }
  const browse = mayBrowse(principal, fromClient);
  if (!browse.allowed) return browse;
  const { destinations } = principal.grants;
  if (destinations === '*') return { allowed: true, reason: `the client ${fromClient} is granted and every destination is permitted` };
  const onClient = destinations.filter((d) => d.client === toClient);
  if (onClient.length === 0) return { allowed: false, reason: `restoring to the client ${toClient} is not permitted for this user` };
  const root = onClient.flatMap((d) => d.paths).find((p) => isWithin(toPath, p));
  if (root === undefined) {
    return { allowed: false, reason: `${toPath} on ${toClient} is outside the permitted destinations (${onClient.flatMap((d) => d.paths).join(', ')})` };
  }
  return { allowed: true, reason: `the client ${fromClient} is granted and ${toPath} is within ${root} on ${toClient}` };
}

// ---------------------------------------------------------------------------------------------
// Tokens

export const TOKEN_PREFIX = 'cof_';
const TOKEN_FORM = /^cof_[A-Za-z0-9_-]{43}$/;
/** Sessions from login() last this long unless options say otherwise. */
export const SESSION_TTL_MS = 12 * 3_600_000;
/** API tokens expire after this unless told; none may live longer than MAX_API_TOKEN_TTL_MS. */
export const DEFAULT_API_TOKEN_TTL_MS = 90 * 86_400_000;
export const MAX_API_TOKEN_TTL_MS = 366 * 86_400_000;
/** last_used is written at most this often per token. */
const TOUCH_INTERVAL_MS = 60_000;

const LOGIN_HINT = 'Log in with coffer login --server URL --user NAME, or give a valid API token.';

/** A new token secret: `cof_` + base64url of 32 random bytes. */
export function newTokenSecret(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

/** Hex SHA-256 of a token secret, as the catalog stores it. */
export function tokenHash(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** A token as the API may show it: never its hash. */
export type TokenInfo = Omit<Token, 'hash'>;

export function tokenInfo(token: Token): TokenInfo {
  const { hash: _hash, ...info } = token;
  return info;
}

function unauthenticated(why: string, details?: Record<string, unknown>): CofferError {
  return new CofferError('UNAUTHENTICATED', `Cannot authenticate: ${why}`, { hint: LOGIN_HINT, ...(details === undefined ? {} : { details }) });
}

export interface AuthenticateOptions {
  now?: () => number;
}

/**
 * The caller of a request from its Authorization header (`Bearer cof_...`). UNAUTHENTICATED
 * when it is missing or malformed, or the token is unknown, expired or revoked, or its user is
 * gone or disabled, or the user's role no longer covers the token's. Records the use (last_used)
 * at most once a minute per token.
 */
export async function authenticate(catalog: AuthCatalog, authorization: string | undefined, options: AuthenticateOptions = {}): Promise<Principal> {
  const now = (options.now ?? Date.now)();
  if (authorization === undefined || authorization.trim() === '') throw unauthenticated('the request carries no token (Authorization: Bearer ...)');
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(authorization);
  if (m === null) throw unauthenticated('the Authorization header is not "Bearer <token>"');
  const secret = m[1]!;
  if (!TOKEN_FORM.test(secret)) throw unauthenticated('the token is malformed (Coffer tokens start with cof_ and have 47 characters)');
  const token = await catalog.tokens.findByHash(tokenHash(secret));
  if (token === undefined) throw unauthenticated('the token is not known (it may have been removed)');
  const kindWord = token.kind === 'session' ? 'session' : `API token ${token.name}`;
  if (token.revoked !== undefined) throw unauthenticated(`the ${kindWord} was revoked`, { tokenId: token.id });
  if (token.expires !== undefined && now >= token.expires) {
    throw unauthenticated(`the ${kindWord} expired at ${new Date(token.expires).toISOString()}`, { tokenId: token.id });
  }
  const user = await catalog.users.find(token.user);
  if (user === undefined) throw unauthenticated(`the user ${token.user} no longer exists`, { tokenId: token.id });
  if (user.disabled !== undefined) throw unauthenticated(`the user ${user.name} is disabled`, { tokenId: token.id });
  if (!isRole(user.role)) throw unauthenticated(`the user ${user.name} has the unknown role ${JSON.stringify(user.role)}`, { tokenId: token.id });
  let role: Role = user.role;
  if (token.role !== undefined) {
    if (!isRole(token.role) || !roleCovers(user.role, token.role)) {
      throw unauthenticated(`the ${kindWord} has the role ${token.role}, more than the user ${user.name} now has (${user.role})`, { tokenId: token.id });
    }
    role = token.role;
  }
  if (token.lastUsed === undefined || now - token.lastUsed >= TOUCH_INTERVAL_MS || now < token.lastUsed) {
    await catalog.tokens.touch(token.id, now);
  }
  return { user: user.name, role, grants: grantsFor(role, user), tokenId: token.id, tokenKind: token.kind, expires: token.expires };
}

// A restore token made by an admin or operator keeps the user's grants if any were set, else all:
// narrowing to restore takes the other powers away, and that user could restore anything.
function grantsFor(role: Role, user: User): Grants {
  if (role === 'admin' || role === 'operator') return ALL_GRANTS;
  if (role === 'auditor') return NO_GRANTS;
  let grants: Grants;
  try {
    grants = parseGrants(user.grants);
  } catch {
    return NO_GRANTS; // a broken grants row grants nothing
  }
  const empty = Array.isArray(grants.clients) && grants.clients.length === 0 && Array.isArray(grants.destinations) && grants.destinations.length === 0;
  if (empty && (user.role === 'admin' || user.role === 'operator')) return ALL_GRANTS;
  return grants;
}

export interface CreateApiTokenInput {
  name: string;
  /** Default: the creator's role. */
  role?: Role | string;
  /** `30d`, `12h` or milliseconds; default 90 days, at most 366 days. */
  expiresIn?: string | number;
}

export interface AuditContext {
  /** The client's address, for the audit log. */
  source?: string;
  now?: () => number;
}

export interface CreatedToken {
  /** The secret: shown to the user once, never stored. */
  token: string;
  id: string;
  name: string;
  user: string;
  role: Role;
  expires: number;
}

function ttlOf(expiresIn: string | number | undefined): number {
  if (expiresIn === undefined) return DEFAULT_API_TOKEN_TTL_MS;
  const bad = (problem: string, hint = 'Give --expires as a duration such as 30d or 12h, at most 366d.') =>
    new CofferError('USAGE', `Cannot create the token: the expiry ${problem}`, { hint });
  let ms: number;
  if (typeof expiresIn === 'number') {
    if (!Number.isSafeInteger(expiresIn) || expiresIn <= 0) throw bad(`${expiresIn} is not a positive number of milliseconds`);
    ms = expiresIn;
  } else {
    const checked = checkDuration(expiresIn);
    if (!checked.ok) throw bad(checked.problem, checked.hint);
    ms = checked.ms;
  }
  if (ms > MAX_API_TOKEN_TTL_MS) throw bad(`${formatDurationSafe(ms)} is longer than the longest allowed, 366d`, 'Tokens must expire; create a new one before this one does.');
  return ms;
}

function formatDurationSafe(ms: number): string {
  return ms % 1000 === 0 ? formatDuration(ms) : `${ms} ms`;
}

/**
 * Creates an API token for `creator`'s user (`coffer tokens create --name N --role R --expires
 * 30d`). FORBIDDEN when the role exceeds the creator's (see the order above). Audited as
 * `token.create`. The secret is in the result only.
 */
export async function createApiToken(catalog: AuthCatalog, creator: Principal, input: CreateApiTokenInput, context: AuditContext = {}): Promise<CreatedToken> {
  const now = (context.now ?? Date.now)();
  const name = typeof input.name === 'string' ? input.name.trim() : '';
  if (name === '' || name.length > 100 || /[\0-\x1f\x7f]/.test(name)) {
    throw new CofferError('USAGE', 'Cannot create the token: give it a name of 1 to 100 printable characters', { hint: 'e.g. --name ci-nightly' });
  }
  const role = input.role === undefined ? creator.role : parseRole(input.role);
  const ttl = ttlOf(input.expiresIn);
  const audit = { actor: creator.user, action: 'token.create', time: now, ...(context.source === undefined ? {} : { source: context.source }) };
  if (!roleCovers(creator.role, role)) {
    await catalog.audit.append({ ...audit, outcome: 'denied', target: `user/${creator.user}`, details: { name, role, reason: 'role exceeds the creator\'s', creatorRole: creator.role, viaToken: creator.tokenId } });
    throw new CofferError('FORBIDDEN', `Cannot create a token with the role ${role}: your role ${creator.role} does not include it`, {
      hint: `Choose one of: ${ROLES.filter((r) => roleCovers(creator.role, r)).join(', ')}.`,
    });
  }
  const secret = newTokenSecret();
  const expires = now + ttl;
  const token = await catalog.tokens.create({ name, user: creator.user, hash: tokenHash(secret), role, kind: 'api', expires });
  await catalog.audit.append({ ...audit, outcome: 'ok', target: `token/${token.id}`, details: { name, role, expires, viaToken: creator.tokenId } });
  return { token: secret, id: token.id, name, user: creator.user, role, expires };
}

/**
 * Revokes a token: its own user or an admin may; FORBIDDEN otherwise, NOT_FOUND when there is no
 * such token. Refused at once by authenticate(). Audited as `token.revoke`.
 */
export async function revokeToken(catalog: AuthCatalog, actor: Principal, tokenId: string, context: AuditContext = {}): Promise<TokenInfo> {
  const now = (context.now ?? Date.now)();
  const audit = { actor: actor.user, action: 'token.revoke', target: `token/${tokenId}`, time: now, ...(context.source === undefined ? {} : { source: context.source }) };
  let token: Token;
  try {
    token = await catalog.tokens.get(tokenId);
  } catch (e) {
    if (isCofferError(e, 'NOT_FOUND')) await catalog.audit.append({ ...audit, outcome: 'failed', details: { reason: 'no such token' } });
    throw e;
  }
  if (token.user !== actor.user && actor.role !== 'admin') {
    await catalog.audit.append({ ...audit, outcome: 'denied', details: { reason: 'the token belongs to another user', owner: token.user } });
    throw new CofferError('FORBIDDEN', `Cannot revoke token ${tokenId}: it belongs to another user`, { hint: 'Only its owner or an admin may revoke a token.' });
  }
  const revoked = await catalog.tokens.revoke(tokenId);
  await catalog.audit.append({ ...audit, outcome: 'ok', details: { name: token.name, owner: token.user, kind: token.kind } });
  return tokenInfo(revoked);
}

/** Ends the caller's session (revokes the token it used). Audited as `logout`. */
export async function logout(catalog: AuthCatalog, principal: Principal, context: AuditContext = {}): Promise<void> {
  const now = (context.now ?? Date.now)();
  await catalog.tokens.revoke(principal.tokenId);
  await catalog.audit.append({
    actor: principal.user, action: 'logout', target: `token/${principal.tokenId}`, outcome: 'ok', time: now,
    ...(context.source === undefined ? {} : { source: context.source }),
  });
}

// ---------------------------------------------------------------------------------------------
// Failed-login rate limiting

/** After this many failures in a row (see LoginLimiter), logins for that name or address are delayed. */
export const FREE_FAILURES = 5;
const WINDOW_MS = 15 * 60_000;
const FIRST_LOCK_MS = 30_000;
const MAX_LOCK_MS = 15 * 60_000;
const MAX_TRACKED = 100_000;

interface Failures {
  /** Failures in the current run (none more than WINDOW_MS after the previous one or its lock). */
  count: number;
  last: number;
  lockedUntil: number;
}

/**
 * Failed logins per user name and per source address, in memory (a restart forgets them). The
 * 5th failure in a run locks that name or address for 30 s, each further one doubles the lock, up
 * to 15 minutes. A run ends after 15 minutes without failures (counted from the end of the last
 * lock), so someone who retries as soon as each lock ends stays at the 15-minute cap. A success
 * clears the name's record, not the address's: one valid account must not let an address guess
 * other users' passwords at full speed.
 */
export class LoginLimiter {
  private readonly entries = new Map<string, Failures>();

  /** Milliseconds until `keys` may try again (the longest of their locks), 0 when free. */
  wait(keys: readonly string[], now: number): number {
    let wait = 0;
    for (const key of keys) {
      const entry = this.entries.get(key);
      if (entry !== undefined) wait = Math.max(wait, entry.lockedUntil - now);
    }
    return wait;
  }

  fail(keys: readonly string[], now: number): void {
    for (const key of keys) {
      let entry = this.entries.get(key);
      if (entry === undefined || this.expired(entry, now)) entry = { count: 0, last: now, lockedUntil: 0 };
      entry.count += 1;
      entry.last = now;
      const over = entry.count - FREE_FAILURES;
      if (over >= 0) entry.lockedUntil = now + Math.min(MAX_LOCK_MS, FIRST_LOCK_MS * 2 ** Math.min(over, 30));
      this.entries.delete(key); // re-insert: the map's order is then least recently failed first
      this.entries.set(key, entry);
    }
    if (this.entries.size > MAX_TRACKED) this.prune(now);
  }

  reset(key: string): void {
    this.entries.delete(key);
  }

  private expired(entry: Failures, now: number): boolean {
    return now >= Math.max(entry.last, entry.lockedUntil) + WINDOW_MS || now < entry.last;
  }

  private prune(now: number): void {
    for (const [key, entry] of this.entries) {
      if (this.entries.size <= MAX_TRACKED * 0.9) break;
      if (this.expired(entry, now) || this.entries.size > MAX_TRACKED) this.entries.delete(key); // under attack: forget the oldest
    }
  }
}

const limiters = new WeakMap<object, LoginLimiter>();

/** The limiter of this catalog (one server, one catalog, one limiter). */
export function loginLimiter(catalog: object): LoginLimiter {
  let limiter = limiters.get(catalog);
  if (limiter === undefined) limiters.set(catalog, (limiter = new LoginLimiter()));
  return limiter;
}

// ---------------------------------------------------------------------------------------------
// Login

export interface LoginInput {
  user: string;
  password: string;
  /** The client's address: rate limiting and the audit log. */
  source: string;
}

export interface LoginOptions {
  now?: () => number;
  /** Default 12 hours. */
  sessionTtlMs?: number;
  /** Default: the one of this catalog (loginLimiter(catalog)). */
  limiter?: LoginLimiter;
  /** Parameters a password is rehashed to at login when its hash is weaker (default DEFAULT_SCRYPT). */
  params?: ScryptParams;
}

export interface LoginResult {
  /** The session's secret, for `Authorization: Bearer ...`. */
  token: string;
  tokenId: string;
  expires: number;
  user: string;
  role: Role;
}

const WRONG_LOGIN = 'Cannot log in: the user name or the password is wrong';

/**
 * Checks a user name and password and opens a session. UNAUTHENTICATED with one message whether
 * the user is unknown, disabled or the password wrong (and the same scrypt work for each);
 * RATE_LIMITED "try again in N s" after repeated failures. Audited as `login`.
 */
export async function login(catalog: AuthCatalog, input: LoginInput, options: LoginOptions = {}): Promise<LoginResult> {
  const clock = options.now ?? Date.now;
  const limiter = options.limiter ?? loginLimiter(catalog);
  const name = typeof input.user === 'string' ? input.user : '';
  const source = typeof input.source === 'string' && input.source !== '' ? input.source : 'unknown';
  // An over-long or odd name is still audited, cut short: it may be a password typed in the wrong field.
  const actor = name.length > 128 ? `${name.slice(0, 128)}…` : name;
  const keys = [`user:${name}`, `source:${source}`];
  const audit = (outcome: 'ok' | 'denied' | 'failed', details: Record<string, unknown>) =>
    catalog.audit.append({ actor, source, action: 'login', target: `user/${actor}`, outcome, time: clock(), details });

  const wait = limiter.wait(keys, clock());
  if (wait > 0) {
    const seconds = Math.ceil(wait / 1000);
    await audit('denied', { reason: 'rate limited', retryAfterS: seconds });
    throw new CofferError('RATE_LIMITED', `Cannot log in: too many failed attempts; try again in ${seconds} s`, {
      hint: 'Check the user name and password before trying again; an admin can see the failed attempts in the audit log.',
      details: { retryAfterS: seconds },
    });
  }

  const user = name === '' ? undefined : await catalog.users.find(name);
  const ok = await verifyPassword(typeof input.password === 'string' ? input.password : '', user?.passwordHash);
  const reason = user === undefined ? 'unknown user'
    : user.disabled !== undefined ? 'user disabled'
      : !ok ? (user.passwordHash === undefined ? 'user has no password' : 'wrong password')
        : !isRole(user.role) ? `unknown role ${JSON.stringify(user.role)}`
          : undefined;
  if (reason !== undefined || user === undefined) {
    limiter.fail(keys, clock());
    await audit('failed', { reason: reason ?? 'unknown user' });
    throw new CofferError('UNAUTHENTICATED', WRONG_LOGIN, {
      hint: `Check both and try again; after ${FREE_FAILURES} failures in 15 minutes further attempts are delayed.`,
    });
  }
  limiter.reset(keys[0]!);
  const role = user.role as Role;
  if (needsRehash(user.passwordHash, options.params)) {
    // Raise old hashes to today's parameters while the password is at hand; failure is harmless.
    try {
      await catalog.users.update(user.name, { passwordHash: await hashPassword(input.password, options.params === undefined ? {} : { params: options.params }) });
    } catch { /* keep the old hash */ }
  }
  const now = clock();
  const ttl = options.sessionTtlMs ?? SESSION_TTL_MS;
  const secret = newTokenSecret();
  const expires = now + ttl;
  const token = await catalog.tokens.create({ name: `session from ${source}`.slice(0, 200), user: user.name, hash: tokenHash(secret), kind: 'session', expires });
  await audit('ok', { tokenId: token.id, expires });
  return { token: secret, tokenId: token.id, expires, user: user.name, role };
}

// ---------------------------------------------------------------------------------------------
// The first administrator

export const INITIAL_ADMIN = 'admin';
export const INITIAL_PASSWORD_FILE = 'initial-admin-password';

export type InitialAdmin =
  | { created: false }
  | { created: true; user: string; password: string; passwordFile: string }
  | { created: true; user: string; password: undefined; passwordFile: undefined };

/**
 * On a server's first start (no users at all), creates the user `admin` with the role admin and
 * `password` (from COFFER_ADMIN_PASSWORD, read by the caller), or a random one written to
 * DATA_DIR/initial-admin-password (mode 0600, created exclusively) and returned for the caller to
 * print once. Does nothing when any user exists.
 */
export async function ensureInitialAdmin(catalog: Pick<Catalog, 'users' | 'audit'>, options: { dataDir: string; password?: string; now?: () => number }): Promise<InitialAdmin> {
  const existing = await catalog.users.list({ limit: 1 });
  if (existing.items.length > 0) return { created: false };
  const given = options.password !== undefined && options.password !== '';
  const password = given ? options.password! : randomBytes(18).toString('base64url'); // 24 characters
  const passwordHash = await hashPassword(password); // USAGE for a short COFFER_ADMIN_PASSWORD
  const file = join(options.dataDir, INITIAL_PASSWORD_FILE);
  if (!given) writeSecretFile(file, `${password}\n`);
  try {
    await catalog.users.create({ name: INITIAL_ADMIN, passwordHash, role: 'admin' });
  } catch (e) {
    if (!given) try { unlinkSync(file); } catch { /* already gone */ }
    if (isCofferError(e, 'ALREADY_EXISTS')) return { created: false }; // another start won the race
    throw e;
  }
  await catalog.audit.append({
    actor: 'server', action: 'user.create', target: `user/${INITIAL_ADMIN}`, outcome: 'ok',
    ...(options.now === undefined ? {} : { time: options.now() }),
    details: { role: 'admin', initial: true, password: given ? 'from COFFER_ADMIN_PASSWORD' : `generated, in ${file}` },
  });
  return given
    ? { created: true, user: INITIAL_ADMIN, password: undefined, passwordFile: undefined }
    : { created: true, user: INITIAL_ADMIN, password, passwordFile: file };
}

/** Writes a new file readable by its owner only from the first byte; ALREADY_EXISTS if it exists. */
function writeSecretFile(path: string, content: string): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | (constants.O_NOFOLLOW ?? 0), 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      throw new CofferError('ALREADY_EXISTS', `Cannot write the initial admin password: ${path} exists although the catalog has no users`, {
        hint: 'It is left from an earlier first start. Remove it (after saving anything you need from it) and start the server again.',
      });
    }
    throw new CofferError(code === 'ENOENT' ? 'NOT_FOUND' : 'STORAGE_ERROR', `Cannot write the initial admin password to ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
