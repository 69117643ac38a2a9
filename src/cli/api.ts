// The CLI as a client of the server's API: where the server is and the token (COFFER_SERVER and
// COFFER_TOKEN for scripts, else the login saved by `coffer login` in the user's config directory,
// mode 0600), requests with the API's errors turned back into CofferErrors (so "not logged in"
// and "not allowed" exit with their own codes, 4 and 5), and server-sent events for --follow.

import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, fsyncSync, openSync, closeSync } from 'node:fs';
import { homedir } from 'node:os';
import { getCACertificates, setDefaultCACertificates } from 'node:tls';
import { dirname, join } from 'node:path';
import { CofferError, ERROR_CODES, type ErrorCode } from '../core/errors.ts';

export interface SavedLogin {
  server: string;
  token: string;
  user?: string;
  expires?: number;
  /** The CA certificate (PEM) that issued an HTTPS server's certificate: the server's own CA. */
  ca?: string;
}

const trusted = new Set<string>();

/**
 * Trusts `pem` (a Coffer server's CA) for this process's HTTPS requests, besides the system's
 * CAs. Scripts that use COFFER_SERVER and COFFER_TOKEN set NODE_EXTRA_CA_CERTS to the CA file instead.
 */
export function trustCa(pem: string): void {
  if (trusted.has(pem)) return;
  trusted.add(pem);
  setDefaultCACertificates([...getCACertificates('default'), ...getCACertificates('extra'), ...trusted]);
}

export function loginFile(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'coffer', 'login.json');
}

/** The server URL as given: http(s)://host:port, without a trailing slash. */
export function normalizeServerUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CofferError('USAGE', `Cannot use the server address ${JSON.stringify(url)}: it is not a URL`, { hint: 'Give it as http://host:7480 (what `coffer server` printed).' });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new CofferError('USAGE', `Cannot use the server address ${url}: only http:// and https:// are served`);
  if (u.username || u.password) throw new CofferError('USAGE', `Cannot use the server address ${u.host}: it carries credentials`, { hint: 'Log in with `coffer login --user NAME` instead.' });
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
}

export function saveLogin(login: SavedLogin, env: NodeJS.ProcessEnv = process.env): string {
  const file = loginFile(env);
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  // Created 0600 from the first byte: the token is a credential.
  writeFileSync(tmp, JSON.stringify(login, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, file);
  return file;
}

export function forgetLogin(env: NodeJS.ProcessEnv = process.env): void {
  rmSync(loginFile(env), { force: true });
}

/** The server and token to use: the environment first, then the saved login. UNAUTHENTICATED when there is none. */
export function currentLogin(env: NodeJS.ProcessEnv = process.env, server?: string): SavedLogin {
  if (env.COFFER_TOKEN) {
    const s = server ?? env.COFFER_SERVER;
    if (!s) throw new CofferError('USAGE', 'COFFER_TOKEN is set but no server: set COFFER_SERVER too, or give --server');
    return { server: normalizeServerUrl(s), token: env.COFFER_TOKEN };
  }
  let saved: SavedLogin | undefined;
  try {
    saved = JSON.parse(readFileSync(loginFile(env), 'utf8')) as SavedLogin;
  } catch {
    /* none */
  }
  if (!saved || typeof saved.token !== 'string' || typeof saved.server !== 'string') {
    throw new CofferError('UNAUTHENTICATED', 'Not logged in to a Coffer server', { hint: 'Run `coffer login --server http://HOST:7480 --user NAME` (or set COFFER_SERVER and COFFER_TOKEN).' });
  }
  if (server && normalizeServerUrl(server) !== saved.server) {
    throw new CofferError('UNAUTHENTICATED', `Not logged in to ${normalizeServerUrl(server)} (the saved login is for ${saved.server})`, { hint: `Run \`coffer login --server ${normalizeServerUrl(server)} --user NAME\`.` });
  }
  return saved;
}

function errorFrom(status: number, body: unknown, what: string): CofferError {
  const e = (body as { error?: { code?: string; message?: string; hint?: string; details?: Record<string, unknown> } } | undefined)?.error;
  const code: ErrorCode = e?.code && (ERROR_CODES as readonly string[]).includes(e.code) ? (e.code as ErrorCode)
    : status === 401 ? 'UNAUTHENTICATED' : status === 403 ? 'FORBIDDEN' : status === 404 ? 'NOT_FOUND' : status === 429 ? 'RATE_LIMITED' : status >= 500 ? 'INTERNAL' : 'USAGE';
  let hint = e?.hint;
  if (code === 'UNAUTHENTICATED' && !hint) hint = 'Run `coffer login --server URL --user NAME` again.';
  return new CofferError(code, e?.message ?? `The server answered ${status} to ${what}`, { ...(hint ? { hint } : {}), ...(e?.details ? { details: e.details } : {}) });
}

export class ApiClient {
  readonly server: string;
  private readonly token: string | undefined;

  constructor(server: string, token?: string, ca?: string) {
    this.server = normalizeServerUrl(server);
    this.token = token;
    if (ca) trustCa(ca);
  }

  static fromLogin(env: NodeJS.ProcessEnv = process.env, server?: string): ApiClient {
    const l = currentLogin(env, server);
    return new ApiClient(l.server, l.token, l.ca);
  }

  private url(path: string, query?: Record<string, unknown>): string {
    const u = new URL(this.server + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v === undefined || v === null || v === false) continue;
      if (Array.isArray(v)) for (const x of v) u.searchParams.append(k, String(x));
      else u.searchParams.set(k, String(v));
    }
    return u.toString();
  }

  private async fetch(method: string, path: string, options: { query?: Record<string, unknown>; body?: unknown; signal?: AbortSignal; accept?: string }): Promise<Response> {
    const headers: Record<string, string> = { accept: options.accept ?? 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await fetch(this.url(path, options.query), { method, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body), signal: options.signal });
    } catch (e) {
      if ((e as Error).name === 'AbortError') throw new CofferError('CANCELLED', 'Cancelled: the request was interrupted');
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(cause?.code ?? '')) {
        throw new CofferError('STORAGE_UNAVAILABLE', `Cannot trust the Coffer server at ${this.server}: ${cause?.code ?? cause?.message}`, { hint: 'Log in with `coffer login --server URL --ca-fingerprint SHA256` (the fingerprint `coffer server` printed) or `--cacert DATA_DIR/ca.pem`; scripts set NODE_EXTRA_CA_CERTS to the CA file.' });
      }
      throw new CofferError('STORAGE_UNAVAILABLE', `Cannot reach the Coffer server at ${this.server}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, { hint: 'Is `coffer server` running there? Check the address (COFFER_SERVER or `coffer login --server`).' });
    }
  }

  async request<T = Record<string, unknown>>(method: string, path: string, options: { query?: Record<string, unknown>; body?: unknown; signal?: AbortSignal } = {}): Promise<T> {
    const res = await this.fetch(method, path, options);
    const text = await res.text();
    let body: unknown;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = undefined;
    }
    if (!res.ok) throw errorFrom(res.status, body, `${method} ${path}`);
    return body as T;
  }

  /** All pages of a list route, as one array (at most `max` items). */
  async listAll<T>(path: string, query: Record<string, unknown> = {}, max = 100_000): Promise<T[]> {
    const out: T[] = [];
    for (let cursor: string | undefined; ;) {
      const page = await this.request<{ items: T[]; next?: string }>('GET', path, { query: { ...query, limit: 1000, cursor } });
      out.push(...page.items);
      if (!page.next || out.length >= max) break;
      cursor = page.next;
    }
    return out.slice(0, max);
  }

  /** Server-sent events of a route, as they come; returns when the server ends the stream. */
  async events(path: string, onEvent: (event: string, data: unknown, id?: string) => void, options: { query?: Record<string, unknown>; signal?: AbortSignal } = {}): Promise<void> {
    const res = await this.fetch('GET', path, { ...options, accept: 'text/event-stream' });
    if (!res.ok) {
      const text = await res.text();
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
      throw errorFrom(res.status, body, `GET ${path}`);
    }
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        let id: string | undefined;
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event = value;
          else if (field === 'data') data.push(value);
          else if (field === 'id') id = value;
        }
        if (data.length === 0) continue;
        let parsed: unknown;
        try {
          parsed = JSON.parse(data.join('\n'));
        } catch {
          parsed = data.join('\n');
        }
        onEvent(event, parsed, id);
      }
    }
  }
}
