// The real `coffer server` CLI as a child process, for tests that stop it the hard way (SIGKILL)
// or the clean way (SIGTERM) and start it again on the same data directory. Its API is called
// over HTTP as any client would; the embedded agent's pid is read from the server's log.
import { spawn, type ChildProcess } from 'node:child_process';
import { MAIN } from './cli.ts';
export { freePort } from '../src/testing/ports.ts';

export const ADMIN_PASSWORD = 'restart test admin password';

export interface ServerProcess {
  child: ChildProcess;
  url: string;
  /** The embedded agent's pid, from the server's log. */
  agentPid: number;
  /** What the server wrote to stderr (its JSON log) so far. */
  log(): string;
  api<T = any>(method: string, path: string, options?: { body?: unknown; query?: Record<string, string> }): Promise<{ status: number; body: T }>;
  /** Waits until the job has ended and returns it. */
  waitJob(id: string, timeoutMs?: number): Promise<any>;
  /** Resolves when the server process has exited (its agent may still be running). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}


export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000, everyMs = 50): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Starts `coffer server --data-dir DIR --listen 127.0.0.1:PORT` and logs in as admin. */
export async function startServerProcess(t: { after(fn: () => unknown): void }, options: { dataDir: string; port: number; env?: Record<string, string>; args?: string[] }): Promise<ServerProcess> {
  const child = spawn(process.execPath, [MAIN, 'server', '--data-dir', options.dataDir, '--listen', `127.0.0.1:${options.port}`, '--agent-listen', '127.0.0.1:0', '--workers', '1', ...(options.args ?? [])], {
    env: { ...process.env, COFFER_ADMIN_PASSWORD: ADMIN_PASSWORD, COFFER_LOG_LEVEL: 'info', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let gone = false;
  void exited.then(() => (gone = true));
  // Never leave a server behind, whatever the test did.
  t.after(async () => {
    if (!gone) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  await Promise.race([
    waitUntil('the server to start', () => /is running at/.test(stdout), 60_000),
    exited.then((e) => {
      throw new Error(`the server exited (${e.signal ?? e.code}) before it started:\n${stderr.slice(-3000)}`);
    }),
  ]);
  const url = `http://127.0.0.1:${options.port}`;
  const agentLine = stderr.split('\n').find((l) => l.includes('embedded agent connected'));
  const agentPid = agentLine ? Number(JSON.parse(agentLine).agentPid) : NaN;
  if (!Number.isInteger(agentPid)) throw new Error(`no agent pid in the server's log:\n${stderr.slice(-3000)}`);
  let token = '';
  const api: ServerProcess['api'] = async (method, path, o = {}) => {
    const u = new URL(url + path);
    for (const [k, v] of Object.entries(o.query ?? {})) u.searchParams.set(k, v);
    const headers: Record<string, string> = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (o.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(u, { method, headers, body: o.body === undefined ? undefined : JSON.stringify(o.body) });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as never };
  };
  const login = await api('POST', '/api/v1/login', { body: { user: 'admin', password: ADMIN_PASSWORD } });
  if (login.status !== 200) throw new Error(`login failed: ${login.status} ${JSON.stringify(login.body)}`);
  token = login.body.token;
  return {
    child,
    url,
    agentPid,
    log: () => stderr,
    api,
    async waitJob(id, timeoutMs = 60_000) {
      const r = await api('GET', `/api/v1/jobs/${id}`, { query: { waitMs: String(timeoutMs) } });
      if (r.status !== 200) throw new Error(`job ${id}: ${r.status} ${JSON.stringify(r.body)}`);
      if (['queued', 'running'].includes(r.body.state)) throw new Error(`job ${id} did not end within ${timeoutMs} ms: ${JSON.stringify(r.body)}`);
      return r.body;
    },
    exited,
    async kill(signal) {
      child.kill(signal);
      return exited;
    },
  };
}
