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

export type SessionKind = 'backup' | 'prune' | 'check' | 'restore' | 'rebuild-index' | 'repair' | 'copy';

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

/**
 * A running process's registration in the repository. Whether a session is stale is decided by
 * the storage's clock alone (ObjectInfo.modified of the heartbeat object, against the time the
 * storage gives the deciding prune's own heartbeat), never by comparing two hosts' clocks. The
 * session itself watches the storage times of its own heartbeats: while no two in a row are
 * more than half the stale time apart, no prune can have taken it for dead (assertAlive()). A
 * paused process (SIGSTOP, a suspended VM or laptop, a storage outage) finds the gap when it
 * resumes, whatever any clock says, and must not commit anything that relies on what it wrote
 * or reused before the pause.
 */
export class Session {
  readonly info: SessionInfo;
  private readonly repo: Repository;
  private readonly timing: SessionTiming;
  private timer: NodeJS.Timeout | undefined;
  private ended = false;
  /** Heartbeats are written one at a time, so their storage times come in order. */
  private chain: Promise<unknown> = Promise.resolve();
  /** Storage time of the last heartbeat written, and the longest gap between two in a row. */
  private lastStored: number | undefined;
  private longestGap = 0;

  private constructor(repo: Repository, info: SessionInfo, timing: SessionTiming) {
    this.repo = repo;
    this.info = info;
    this.timing = timing;
  }

  static async start(repo: Repository, kind: SessionKind, options: CallOptions & { timing?: SessionTiming; now?: () => number } = {}): Promise<Session> {
    const timing = options.timing ?? repo.sessionTiming;
    const now = (options.now ?? Date.now)();
    const info: SessionInfo = { id: randomBytes(16).toString('hex'), kind, hostname: hostname(), pid: process.pid, started: now, heartbeat: now };
    const s = new Session(repo, info, timing);
    await s.write(options);
    s.timer = setInterval(() => void s.beat().catch(() => {}), timing.heartbeatMs);
    s.timer.unref();
    return s;
  }

  /** Rewrites the heartbeat object; returns the storage's time for it. */
  private async write(options?: CallOptions): Promise<number> {
    const name = SESSIONS_PREFIX + this.info.id;
    this.info.heartbeat = Date.now();
    const sealed = sealObject(this.repo.keys, 'session', Buffer.from(JSON.stringify(this.info)));
    await this.repo.backend.put(name, sealed, options);
    // A backend that keeps no modification times leaves only the local clock.
    const stored = (await this.repo.backend.stat(name, options)).modified ?? Date.now();
    if (this.lastStored !== undefined) this.longestGap = Math.max(this.longestGap, stored - this.lastStored);
    this.lastStored = Math.max(stored, this.lastStored ?? stored);
    return stored;
  }

  /** One heartbeat after the ones already under way. */
  private beat(options?: CallOptions): Promise<number> {
    const next = this.chain.then(() => {
      if (this.ended) throw new CofferError('INTERNAL', 'Cannot refresh a session that has ended');
      return this.write(options);
    });
    this.chain = next.catch(() => {}); // a missed heartbeat is tolerated: the gap shows it
    return next;
  }

  /**
   * The storage's current time, read off a fresh heartbeat of this session: what a prune measures
   * other sessions' heartbeats against.
   */
  storageNow(options?: CallOptions): Promise<number> {
    return this.beat(options);
  }

  /**
   * Throws CONFLICT unless this session has been alive without a break, by the storage's clock,
   * up to a heartbeat written now: two heartbeats in a row more than half the stale time apart
   * mean a prune may have taken this session for dead and deleted what it wrote or reused.
   * Writers call it before and after each commit point (index files, the snapshot).
   */
  async assertAlive(options?: CallOptions): Promise<void> {
    await this.beat(options);
    if (this.longestGap > this.timing.staleMs / 2) {
      throw new CofferError('CONFLICT', `Cannot commit: this ${this.info.kind} was paused or cut off from the repository for ${duration(this.longestGap)}, longer than half the ${duration(this.timing.staleMs)} after which a prune takes it for dead; a prune may have deleted data it relies on`, {
        hint: 'Nothing was committed. Run it again: what is still stored is reused.',
        details: { reason: 'session-gap', gapMs: this.longestGap, staleMs: this.timing.staleMs },
      });
    }
  }

  async end(options?: CallOptions): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.timer);
    await this.chain;
    await this.repo.backend.delete(SESSIONS_PREFIX + this.info.id, options);
  }
}

function duration(ms: number): string {
  return ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`;
}

/** True for the error assertAlive() throws (the session may have been taken for dead). */
export function isSessionGap(e: unknown): boolean {
  return isCofferError(e, 'CONFLICT') && e.details?.reason === 'session-gap';
}

export interface ListedSession extends SessionInfo {
  /** Its heartbeat object is older than the stale time, by the storage's clock. */
  stale: boolean;
  /** True when the session object could not be read; such a session is treated as live. */
  unreadable?: boolean;
}

/**
 * Lists every session; unreadable session objects are reported as live (the safe choice). A
 * session is stale when its heartbeat object is older than the stale time at `now`, which must
 * be a storage time (Session.storageNow()): the object's own storage time is what counts, not
 * the time its writer's clock put inside it.
 */
export async function listSessions(repo: Repository, options: CallOptions & { timing?: SessionTiming; now: number }): Promise<ListedSession[]> {
  const timing = options.timing ?? repo.sessionTiming;
  const now = options.now;
  const out: ListedSession[] = [];
  for await (const o of repo.backend.list(SESSIONS_PREFIX, options)) {
    const id = o.name.slice(SESSIONS_PREFIX.length);
    if (!/^[0-9a-f]{32}$/.test(id)) continue;
    try {
      const info = JSON.parse(openObject(repo.keys, 'session', await repo.backend.get(o.name, options)).toString('utf8')) as SessionInfo;
      if (typeof info.started !== 'number' || typeof info.heartbeat !== 'number' || info.id !== id) throw new Error('bad session');
      out.push({ ...info, stale: now - (o.modified ?? info.heartbeat) > timing.staleMs });
    } catch (e) {
      if (isCofferError(e, 'NOT_FOUND')) continue; // ended meanwhile
      if (isCofferError(e, 'STORAGE_UNAVAILABLE') || isCofferError(e, 'CANCELLED')) throw e;
      out.push({ id, kind: 'backup', hostname: '?', pid: 0, started: 0, heartbeat: 0, stale: false, unreadable: true });
    }
  }
  return out;
}

/** Sessions that rewrite the index and delete or move objects: only one may run at a time. */
const MAINTENANCE: ReadonlySet<SessionKind> = new Set(['prune', 'repair', 'rebuild-index']);

/**
 * Throws CONFLICT if another prune or repair is running. Each registers first and then looks: of
 * two that start together at least one sees the other and gives way (both may, and then both are
 * run again later), and no clock is compared.
 */
export async function assertSoleMaintenance(repo: Repository, self: Session, action: string, options: CallOptions & { timing?: SessionTiming } = {}): Promise<void> {
  const others = (await listSessions(repo, { ...options, now: await self.storageNow(options) })).filter((s) => MAINTENANCE.has(s.kind) && !s.stale && !s.unreadable && s.id !== self.info.id);
  if (others.length) {
    const o = others[0]!;
    throw new CofferError('CONFLICT', `Cannot ${action}: a ${o.kind} is running on this repository (on ${o.hostname}, pid ${o.pid})`, { hint: 'Wait for it to finish and try again.' });
  }
}
