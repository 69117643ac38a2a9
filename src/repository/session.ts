// Sessions: every process that writes to or prunes a repository announces itself with a
// heartbeat object under sessions/. Sessions never block one another (there is no global lock):
// prune reads them to know when it is safe to delete what it marked (see prune.ts).

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { CofferError, isCofferError } from '../core/errors.ts';
import type { CallOptions } from '../storage/backend.ts';
import { openObject, sealObject } from '../engine/envelope.ts';
import { SESSIONS_PREFIX } from './layout.ts';
import type { Repository } from './repository.ts';

export type SessionKind = 'backup' | 'prune' | 'check' | 'restore' | 'rebuild-index' | 'copy';

export interface SessionInfo {
  id: string;
  kind: SessionKind;
  hostname: string;
  pid: number;
  /** Epoch ms. */
  started: number;
  /** Epoch ms of the last heartbeat. */
  heartbeat: number;
}

export interface SessionTiming {
  /** How often the heartbeat object is rewritten. */
  heartbeatMs: number;
  /** A session whose heartbeat is older than this is taken as dead. */
  staleMs: number;
}

export const DEFAULT_TIMING: SessionTiming = { heartbeatMs: 60_000, staleMs: 15 * 60_000 };

export function timingFromEnv(): SessionTiming {
  const hb = Number(process.env.COFFER_SESSION_HEARTBEAT_MS);
  const st = Number(process.env.COFFER_SESSION_STALE_MS);
  return {
    heartbeatMs: Number.isFinite(hb) && hb > 0 ? hb : DEFAULT_TIMING.heartbeatMs,
    staleMs: Number.isFinite(st) && st > 0 ? st : DEFAULT_TIMING.staleMs,
  };
}

export class Session {
  readonly info: SessionInfo;
  private readonly repo: Repository;
  private readonly timing: SessionTiming;
  private timer: NodeJS.Timeout | undefined;
  private lastOk: number;
  private ended = false;

  private constructor(repo: Repository, info: SessionInfo, timing: SessionTiming) {
    this.repo = repo;
    this.info = info;
    this.timing = timing;
    this.lastOk = info.started;
  }

  static async start(repo: Repository, kind: SessionKind, options: CallOptions & { timing?: SessionTiming; now?: () => number } = {}): Promise<Session> {
    const timing = options.timing ?? timingFromEnv();
    const now = (options.now ?? Date.now)();
    const info: SessionInfo = { id: randomBytes(16).toString('hex'), kind, hostname: hostname(), pid: process.pid, started: now, heartbeat: now };
    const s = new Session(repo, info, timing);
    await s.write(options);
    s.timer = setInterval(() => void s.beat(), timing.heartbeatMs);
    s.timer.unref();
    return s;
  }

  private async write(options?: CallOptions): Promise<void> {
    const sealed = sealObject(this.repo.keys, 'session', Buffer.from(JSON.stringify(this.info)));
    await this.repo.backend.put(SESSIONS_PREFIX + this.info.id, sealed, options);
  }

  private async beat(): Promise<void> {
    if (this.ended) return;
    const t = Date.now();
    this.info.heartbeat = t;
    try {
      await this.write();
      this.lastOk = t;
    } catch {
      // A missed heartbeat is tolerated; assertAlive() refuses to commit once too many were missed.
    }
  }

  /**
   * Throws if this session may have been taken as dead by a concurrent prune (its heartbeat has
   * not been refreshed for half the stale time): committing then could reference data that prune
   * is about to delete.
   */
  assertAlive(now = Date.now()): void {
    if (now - this.lastOk > this.timing.staleMs / 2) {
      throw new CofferError('CONFLICT', 'Cannot commit: this session could not refresh its heartbeat in the repository for too long', {
        hint: 'Storage was unreachable or the process was paused; run the backup again (what was uploaded is reused).',
      });
    }
  }

  async end(options?: CallOptions): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.timer);
    await this.repo.backend.delete(SESSIONS_PREFIX + this.info.id, options);
  }
}

export interface ListedSession extends SessionInfo {
  stale: boolean;
  /** True when the session object could not be read; such a session is treated as live. */
  unreadable?: boolean;
}

/** Lists every session; unreadable session objects are reported as live (the safe choice). */
export async function listSessions(repo: Repository, options: CallOptions & { timing?: SessionTiming; now?: number } = {}): Promise<ListedSession[]> {
  const timing = options.timing ?? timingFromEnv();
  const now = options.now ?? Date.now();
  const out: ListedSession[] = [];
  for await (const o of repo.backend.list(SESSIONS_PREFIX, options)) {
    const id = o.name.slice(SESSIONS_PREFIX.length);
    if (!/^[0-9a-f]{32}$/.test(id)) continue;
    try {
      const info = JSON.parse(openObject(repo.keys, 'session', await repo.backend.get(o.name, options)).toString('utf8')) as SessionInfo;
      if (typeof info.started !== 'number' || typeof info.heartbeat !== 'number' || info.id !== id) throw new Error('bad session');
      out.push({ ...info, stale: now - info.heartbeat > timing.staleMs });
    } catch (e) {
      if (isCofferError(e, 'NOT_FOUND')) continue; // ended meanwhile
      if (isCofferError(e, 'STORAGE_UNAVAILABLE') || isCofferError(e, 'CANCELLED')) throw e;
      out.push({ id, kind: 'backup', hostname: '?', pid: 0, started: 0, heartbeat: 0, stale: false, unreadable: true });
    }
  }
  return out;
}
