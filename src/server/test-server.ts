// A real `coffer server` for tests, in this process: a temporary data directory, a catalog on
// SQLite (or the URL given), the embedded agent as a child process, the API on a loopback port
// chosen by the system, and a known admin password. `api()` calls it as a client would.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getCACertificates, setDefaultCACertificates } from 'node:tls';
import { pino } from 'pino';
import { startServer, type RunningServer, type ServerOptions } from './server.ts';

export const TEST_ADMIN_PASSWORD = 'test admin password 1';

export interface TestServer {
  server: RunningServer;
  dataDir: string;
  url: string;
  /** An admin session token. */
  adminToken: string;
  api<T = Record<string, unknown>>(method: string, path: string, options?: { body?: unknown; token?: string | null; query?: Record<string, string> }): Promise<{ status: number; body: T }>;
  login(user: string, password: string): Promise<string>;
  /** Waits until a job has ended, and returns it. */
  waitJob(id: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

export async function startTestServer(t: { after(fn: () => unknown): void }, options: Partial<ServerOptions> = {}): Promise<TestServer> {
  const dataDir = options.dataDir ?? await mkdtemp(join(tmpdir(), 'coffer-server-'));
  const server = await startServer({
    dataDir,
    port: 0,
    adminPassword: TEST_ADMIN_PASSWORD,
    log: pino({ level: process.env.COFFER_TEST_LOG ?? 'silent' }),
    workers: 1,
    ...options,
  });
  // An HTTPS API (apiTls): this process's requests trust the server's CA, as a logged-in CLI does.
  if (server.url.startsWith('https:')) setDefaultCACertificates([...getCACertificates('default'), ...getCACertificates('extra'), server.ca.pem]);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await server.stop();
  };
  t.after(async () => {
    await stop();
    if (!options.dataDir) await rm(dataDir, { recursive: true, force: true });
  });
  const api: TestServer['api'] = async (method, path, o = {}) => {
    const u = new URL(server.url + path);
    for (const [k, v] of Object.entries(o.query ?? {})) u.searchParams.set(k, v);
    const headers: Record<string, string> = {};
    const token = o.token === undefined ? ts.adminToken : o.token;
    if (token) headers.authorization = `Bearer ${token}`;
    if (o.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(u, { method, headers, body: o.body === undefined ? undefined : JSON.stringify(o.body) });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as never };
  };
  const login = async (user: string, password: string) => {
    const r = await api<{ token: string }>('POST', '/api/v1/login', { body: { user, password }, token: null });
    if (r.status !== 200) throw new Error(`login as ${user} failed: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.token;
  };
  const ts: TestServer = {
    server,
    dataDir,
    url: server.url,
    adminToken: '',
    api,
    login,
    async waitJob(id, timeoutMs = 120_000) {
      const r = await api<Record<string, unknown>>('GET', `/api/v1/jobs/${id}`, { query: { waitMs: String(timeoutMs) } });
      if (r.status !== 200) throw new Error(`job ${id}: ${r.status} ${JSON.stringify(r.body)}`);
      return r.body;
    },
    stop,
  };
  ts.adminToken = await login('admin', TEST_ADMIN_PASSWORD);
  return ts;
}
