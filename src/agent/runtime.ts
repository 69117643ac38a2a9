// The agent's job executors: what an agent does with a job.start (docs/server.md "Agent
// protocol"). Each job opens its repository from the spec the server sent (URL, password, S3
// credentials), runs the data path with this host's identity, and reports through the one job
// event model. Several jobs run at once and share one worker pool through per-repository
// contexts; the pool exists only while jobs run, so an idle agent stays small.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TokenBucket } from '../core/bandwidth.ts';
import { CofferError, isCofferError, throwIfAborted, toCofferError } from '../core/errors.ts';
import { WorkerPool, type RepoPool } from '../engine/pool.ts';
import { backup, backupReport, backupTo } from '../jobs/backup.ts';
import { findInSnapshots, listSnapshot } from '../jobs/browse.ts';
import { backupEvents, ProgressReporter, restoreEvents, type EmitJobEvent } from '../jobs/events.ts';
import { cloneToTargets } from '../jobs/clone.ts';
import { verifyRepository } from '../jobs/verify.ts';
import { repairPacks } from '../repository/repair.ts';
import { describeHost, restore, restoreFrom, type RestoreOptions, type RestoreResult } from '../jobs/restore.ts';
import { AlternateSources, type AlternateCopy } from '../jobs/restore-fallback.ts';
import { compareRestored } from '../jobs/compare.ts';
import { extendLocks, isLockedObject } from '../repository/object-lock.ts';
import { prune } from '../repository/prune.ts';
import { Repository } from '../repository/repository.ts';
import type { SessionTiming } from '../repository/session.ts';
import { DATA_PREFIX, SNAPSHOTS_PREFIX } from '../repository/layout.ts';
import { loadSnapshot, readSnapshots, type HostIdentity } from '../repository/snapshot.ts';
import { lockedError, lockedUntilOf, type Backend } from '../storage/backend.ts';
import { RetryBackend } from '../storage/retry.ts';
import { ThrottledBackend } from '../storage/throttle.ts';
import { openBackend, parseBackendUrl } from '../storage/url.ts';
import {
  isJobKind,
  parseJobSpec,
  type AgentJobKind,
  type BackupSpec,
  type CloneSpec,
  type CommandSpec,
  type CompareSpec,
  type DoneState,
  type FindSpec,
  type ForgetSpec,
  type InitSpec,
  type JobError,
  type ListSpec,
  type LockExtendSpec,
  type NodeBackupSpec,
  type NodeRestoreSpec,
  type RemoteAccess,
  type ProbeSpec,
  type RepairSpec,
  type RestoreSpec,
  type SnapshotsSpec,
  type StorageAccess,
  type VerifySpec,
  type UsageSpec,
} from './protocol.ts';
import { scratchJob } from './scratch.ts';
import type { Duplex } from 'node:stream';
import { NodeClient } from '../node/client.ts';
import { RemoteBackupStore, openSession } from '../node/remote-store.ts';
import { RemoteRestoreSource, openRestoreSession } from '../node/remote-restore.ts';
import type { NodeService } from '../node/service.ts';

export interface AgentRuntimeOptions {
  /** Where the agent keeps its caches (index caches per repository under cache/). */
  stateDir: string;
  /** The identity of the host this agent protects (recorded in snapshots, checked by restores). */
  host: HostIdentity;
  /** Worker threads while jobs run (default: one per core). */
  workers?: number;
  /** Close the worker pool after this long without jobs (default 30 s). */
  idleMs?: number;
  /** Session heartbeat and stale times for the jobs' repository sessions. */
  sessionTiming?: SessionTiming;
  /**
   * Opens a data connection to a storage node (mutual TLS with this agent's certificate); an
   * agent without one cannot run a backup that goes through a node.
   */
  connectNode?: (remote: RemoteAccess, signal: AbortSignal) => Promise<Duplex>;
  /** This process is a storage node too: it serves agents' sessions (node-backup and node-restore jobs). */
  node?: NodeService;
}

export interface JobOutcome {
  state: DoneState;
  result?: Record<string, unknown>;
  error?: JobError;
}

/** Pre and post commands: default time limit, and how much of their output goes to the log. */
const DEFAULT_COMMAND_TIMEOUT = 3_600_000;
const COMMAND_OUTPUT_LIMIT = 64 * 1024;
/** How long a repository opened for browsing stays open without use. */
const SHARED_IDLE_MS = 60_000;

export class AgentRuntime {
  private readonly options: AgentRuntimeOptions;
  private pool: Promise<WorkerPool> | undefined;
  private users = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly shared = new Map<string, { opened: Promise<{ repo: Repository; backend: Backend }>; users: number; timer: NodeJS.Timeout | undefined }>();
  /** Bandwidth limits by storage URL, shared by all jobs (src/core/bandwidth.ts). */
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(options: AgentRuntimeOptions) {
    this.options = options;
  }

  /** Jobs running now. */
  get running(): number {
    return this.users;
  }

  /**
   * Runs one job to its end and says how it ended; never throws (a failure is an outcome).
   * `signal` cancels it: the job stops at its next check, and what it uploaded stays usable.
   */
  async run(kind: string, rawSpec: unknown, emit: EmitJobEvent, signal: AbortSignal): Promise<JobOutcome> {
    try {
      if (this.closed) throw new CofferError('CANCELLED', 'Cannot start the job: the agent is stopping');
      if (!isJobKind(kind)) parseJobSpec(kind as AgentJobKind, rawSpec); // throws UNSUPPORTED
      const result = await this.dispatch(kind as AgentJobKind, rawSpec, emit, signal);
      const warnings = typeof result.warnings === 'number' ? result.warnings : 0;
      emit({ type: 'result', result });
      return { state: warnings > 0 ? 'warnings' : 'succeeded', result };
    } catch (e) {
      const err = toCofferError(e);
      if (err.code === 'CANCELLED' || signal.aborted) return { state: 'cancelled', error: { code: 'CANCELLED', message: signal.aborted ? 'Cancelled: the job was told to stop' : err.message } };
      return { state: 'failed', error: { code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}) } };
    }
  }

  private dispatch(kind: AgentJobKind, raw: unknown, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    switch (kind) {
      case 'backup': return this.backup(parseJobSpec('backup', raw), emit, signal);
      case 'restore': return this.restore(parseJobSpec('restore', raw), emit, signal);
      case 'snapshots': return this.snapshots(parseJobSpec('snapshots', raw), signal);
      case 'forget': return this.forget(parseJobSpec('forget', raw), emit, signal);
      case 'init': return this.init(parseJobSpec('init', raw), signal);
      case 'probe': return this.probe(parseJobSpec('probe', raw), signal);
      case 'list': return this.list(parseJobSpec('list', raw), signal);
      case 'find': return this.find(parseJobSpec('find', raw), signal);
      case 'clone': return this.clone(parseJobSpec('clone', raw), emit, signal);
      case 'verify': return this.verify(parseJobSpec('verify', raw), emit, signal);
      case 'repair': return this.repair(parseJobSpec('repair', raw), emit, signal);
      case 'usage': return this.usage(parseJobSpec('usage', raw), signal);
      case 'compare': return this.compare(parseJobSpec('compare', raw), emit, signal);
      case 'scratch': return scratchJob(parseJobSpec('scratch', raw));
      case 'lock-extend': return this.lockExtend(parseJobSpec('lock-extend', raw), emit, signal);
      case 'node-backup': return this.nodeBackup(parseJobSpec('node-backup', raw), emit, signal);
      case 'node-restore': return this.nodeRestore(parseJobSpec('node-restore', raw), emit, signal);
    }
  }

  /** Stops taking jobs and closes the worker pool once running jobs have ended. */
  async close(): Promise<void> {
    this.closed = true;
    for (const [key, h] of this.shared) {
      clearTimeout(h.timer);
      this.shared.delete(key);
      void h.opened.then(({ repo, backend }) => repo.close().finally(() => backend.close()), () => {});
    }
    if (this.users === 0) await this.closePool();
  }

  // ---- the jobs --------------------------------------------------------------------------------

  /**
   * A backup through a storage node: read, chunk and hash here, send only what the node lacks.
   * The worker pool gets the deduplication keys the node gave; no key that encrypts exists here
   * (the pool's encryption key is random and never used: nothing is encoded in this process).
   */
  private async remoteBackup(remote: RemoteAccess, paths: string[], options: Parameters<typeof backupTo>[3], emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (!this.options.connectNode) throw new CofferError('REFUSED', 'Cannot send the backup to a storage node: this agent has no certificate to connect with', { hint: 'Enroll the agent (`coffer agent enroll`) and run it with `coffer agent run`.' });
    const socket = await this.options.connectNode(remote, signal);
    const client = new NodeClient(socket);
    // Told to stop (the server's connection ended, a cancel): requests waiting on a stalled data
    // connection end now, not when TCP gives up.
    const onAbort = () => client.close(new CofferError('CANCELLED', 'Cancelled: the backup was told to stop'));
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      const hello = await openSession(client, remote.session, 'backup', { signal });
      const store = new RemoteBackupStore(client, hello, { signal });
      const pool = await this.acquirePool();
      const view = pool.context({ keys: { encryption: randomBytes(32), chunkIdKey: store.chunkIdKey, gearSeed: Buffer.from(hello.gearSeed, 'base64') }, chunker: hello.chunker, level: hello.compressionLevel });
      try {
        const res = await backupTo(store, view, paths, options);
        emit({ type: 'log', level: 'info', message: `sent ${store.bytesSent} bytes to storage node ${remote.node} for ${res.summary.bytesScanned} bytes scanned (${res.stats.blobsNew} new chunk(s), ${res.stats.blobsKnown} already stored)` });
        return { ...backupReport(res), bytesStored: store.stats.bytesStored, bytesSent: store.bytesSent, node: remote.node };
      } finally {
        view.close();
        this.releasePool();
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      client.close();
    }
  }

  /** A storage node's side of an agent's backup: the session, on the repository this node holds the keys of. */
  private async nodeBackup(spec: NodeBackupSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    const node = this.options.node;
    if (!node) throw new CofferError('UNSUPPORTED', 'Cannot serve a backup session: this agent is not a storage node', { hint: 'Run `coffer node run` on the storage node, or let the server\'s embedded node serve the unit.' });
    const r = await this.withRepo(spec.storage, signal, true, (repo, pool) => node.serveBackup(spec, repo, pool, emit, signal));
    return { ...r };
  }

  private async backup(spec: BackupSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    let failure: unknown;
    let result: Record<string, unknown> | undefined;
    try {
      if ((spec.storage === undefined) === (spec.remote === undefined)) throw new CofferError('USAGE', 'Cannot run the backup job: give either storage (a repository) or remote (a storage node session), not both or neither');
      if (spec.pre) await runCommand('pre', spec.pre, emit, signal);
      const sel = spec.selection;
      const paths = 'paths' in sel ? sel.paths : [];
      const options = {
        signal,
        host: { ...this.options.host, hostname: spec.client },
        parent: spec.parent,
        tags: spec.tags,
        ...('paths' in sel
          ? { patterns: sel.exclude, oneFileSystem: sel.oneFileSystem, excludeCaches: sel.excludeCaches, images: sel.images, imageChunking: sel.imageChunking, fileChunking: sel.fileChunking }
          : { stream: { name: sel.filename, command: sel.command } }),
        ...backupEvents(emit),
      };
      if (spec.remote) result = await this.remoteBackup(spec.remote, paths, options, emit, signal);
      else {
        result = await this.withRepo(spec.storage!, signal, true, async (repo, pool) => {
          const res = await backup(repo, pool, paths, options);
          // The server computes the job's totals and dedup ratio from these fields.
          return { ...backupReport(res), bytesSent: 0 };
        });
      }
    } catch (e) {
      failure = e;
    }
    // Post runs whatever happened to pre and the backup (it usually undoes what pre did).
    if (spec.post) {
      try {
        await runCommand('post', spec.post, emit, new AbortController().signal);
      } catch (e) {
        if (!failure) failure = e;
        else emit({ type: 'log', level: 'error', message: toCofferError(e).message });
      }
    }
    if (failure) throw failure;
    return result!;
  }

  /** A storage node's side of an agent's restore: the session that serves one snapshot. */
  private async nodeRestore(spec: NodeRestoreSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    const node = this.options.node;
    if (!node) throw new CofferError('UNSUPPORTED', 'Cannot serve a restore session: this agent is not a storage node', { hint: 'Run `coffer node run` on the storage node, or let the server\'s embedded node serve the unit.' });
    const r = await this.withRepo(spec.storage, signal, true, (repo, pool) => node.serveRestore(spec, repo, pool, emit, signal));
    return { ...r };
  }

  /** The restore options both kinds of restore share: the spec's, this host's identity, the events. */
  private restoreOptions(spec: RestoreSpec, emit: EmitJobEvent, signal: AbortSignal, bytesTotal: number | undefined): RestoreOptions {
    return {
      signal,
      targetHost: this.options.host,
      include: spec.include,
      exclude: spec.exclude,
      overwrite: spec.overwrite,
      dryRun: spec.dryRun,
      force: spec.force,
      confirmHost: spec.confirmHost,
      ...restoreEvents(emit, { bytesTotal }),
    };
  }

  /** The job's result from restore()'s. */
  private restoreReport(res: RestoreResult, sourceHost: unknown): Record<string, unknown> {
    return {
      target: res.target,
      sourceHost,
      targetHost: this.options.host,
      dryRun: res.dryRun,
      created: res.created,
      overwritten: res.overwritten,
      metadataRestored: res.metadataRestored,
      unchanged: res.unchanged,
      skipped: res.skipped,
      damaged: res.damaged.length,
      warnings: res.warnings.length + res.damaged.length,
      sources: res.sources,
    };
  }

  /**
   * A restore through a storage node: the node reads the repository and sends the snapshot's
   * trees and chunks; this agent holds the chunk-id key only, verifies every byte against the
   * snapshot's ids, and writes with restore()'s safety. The source counts as `spec.unit`.
   */
  private async remoteRestore(spec: RestoreSpec, remote: RemoteAccess, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (!this.options.connectNode) throw new CofferError('REFUSED', 'Cannot restore from a storage node: this agent has no certificate to connect with', { hint: 'Enroll the agent (`coffer agent enroll`) and run it with `coffer agent run`.' });
    const socket = await this.options.connectNode(remote, signal);
    const client = new NodeClient(socket);
    try {
      const hello = await openRestoreSession(client, remote.session, { signal });
      const source = new RemoteRestoreSource(client, hello, remote.node);
      const snap = await source.snapshot(spec.snapshot, { signal });
      emit({ type: 'log', level: 'info', message: `restoring snapshot ${spec.snapshot.slice(0, 12)} of ${snap.time}${spec.dryRun ? ' (dry run)' : ''} from host ${describeHost(snap.host)} onto host ${describeHost(this.options.host)} at ${spec.targetPath}, through storage node ${remote.node}` });
      const res = await restoreFrom(source, snap, spec.targetPath, { ...this.restoreOptions(spec, emit, signal, snap.summary?.bytesScanned), sourceName: spec.unit ?? remote.node });
      for (const n of res.notices) emit({ type: 'log', level: 'warn', message: n });
      emit({ type: 'log', level: 'info', message: `received ${source.bytesReceived} bytes from storage node ${remote.node}` });
      return { ...this.restoreReport(res, snap.host), bytesReceived: source.bytesReceived, node: remote.node };
    } finally {
      client.close();
    }
  }

  private async restore(spec: RestoreSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (spec.remote) return this.remoteRestore(spec, spec.remote, emit, signal);
    return this.withRepo(spec.storage!, signal, true, async (repo, pool) => {
      const snap = await loadSnapshot(repo, spec.snapshot, { signal });
      // The pre-flight a person reads first: which host's data goes onto which host, where.
      emit({ type: 'log', level: 'info', message: `restoring snapshot ${spec.snapshot.slice(0, 12)} of ${snap.time}${spec.dryRun ? ' (dry run)' : ''} from host ${describeHost(snap.host)} onto host ${describeHost(this.options.host)} at ${spec.targetPath}` });
      const primary = spec.unit ?? 'primary';
      const fallback = spec.alternates?.length ? new AlternateSources(repo.keys.chunkIdKey, spec.alternates.map((a) => this.alternate(a))) : undefined;
      let res: RestoreResult;
      try {
        res = await restore(repo, snap, spec.targetPath, {
          ...this.restoreOptions(spec, emit, signal, snap.summary?.bytesScanned),
          pool,
          sourceName: primary,
          ...(fallback ? { fallback } : {}),
        });
      } finally {
        await fallback?.close();
      }
      for (const n of res.notices) emit({ type: 'log', level: 'warn', message: n });
      const sources = res.sources;
      for (const [name, s] of Object.entries(sources)) {
        if (name === primary || s.chunks === 0) continue;
        const files = s.fileCount ? `, for ${s.fileCount} file(s): ${s.files!.join(', ')}${s.fileCount > s.files!.length ? ', ...' : ''}` : ' (directory trees)';
        emit({ type: 'log', level: 'warn', message: `${s.chunks} chunk(s), ${s.bytes} bytes, could not be read from ${primary} and were restored from ${name}${files}` });
      }
      return this.restoreReport(res, snap.host);
    });
  }

  /** Another copy of the snapshot being restored, opened when a chunk first needs it. */
  private alternate(a: NonNullable<RestoreSpec['alternates']>[number]): AlternateCopy {
    return {
      name: a.unit,
      open: async (signal) => {
        const backend = await this.backend(a.storage);
        let repo: Repository | undefined;
        try {
          repo = await Repository.open(backend, a.storage.password, { signal, cacheDir: this.cacheDir(), sessionTiming: this.options.sessionTiming });
          await repo.loadIndex({ signal });
          const snapshot = await loadSnapshot(repo, a.snapshot, { signal });
          const pool = await this.acquirePool();
          const view = pool.context({ keys: repo.keys, chunker: repo.config.chunker, level: repo.config.compressionLevel });
          const opened = repo;
          return {
            repo: opened, snapshot, decoder: view,
            close: async () => {
              view.close();
              this.releasePool();
              await opened.close().finally(() => backend.close());
            },
          };
        } catch (e) {
          await repo?.close().catch(() => {});
          await backend.close();
          throw e;
        }
      },
    };
  }

  private async snapshots(spec: SnapshotsSpec, signal: AbortSignal): Promise<Record<string, unknown>> {
    return this.withRepo(spec.storage, signal, false, async (repo) => {
      const { snapshots, unreadable } = await readSnapshots(repo, { signal });
      return {
        repository: repo.config.id,
        snapshots: snapshots.map(({ id, snapshot: s }) => ({ id, time: s.time, host: s.host, paths: s.paths, tags: s.tags, parent: s.parent ?? null, summary: s.summary ?? null })),
        unreadable: unreadable.map((u) => ({ id: u.id, error: u.error.message })),
      };
    });
  }

  private async forget(spec: ForgetSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    return this.withRepo(spec.storage, signal, spec.prune, async (repo, pool) => {
      let forgotten = 0;
      // On an immutable unit a snapshot still locked stays: it is reported, and forgotten by a
      // later expiry once its lock has passed.
      const locked: Array<{ snapshot: string; until: number | null }> = [];
      for (const id of spec.snapshots) {
        throwIfAborted(signal);
        // Deleting what is already gone succeeds (backend contract): an interrupted expiry runs again.
        try {
          // Asked first: a locked snapshot is not even tried (the storage would refuse).
          const until = await repo.backend.locks?.lockedUntil(SNAPSHOTS_PREFIX + id, { signal }).catch((e: unknown) => {
            if (isCofferError(e, 'NOT_FOUND')) return undefined;
            throw e;
          });
          if (until !== undefined && until > Date.now()) throw lockedError(SNAPSHOTS_PREFIX + id, until);
          await repo.backend.delete(SNAPSHOTS_PREFIX + id, { signal });
        } catch (e) {
          const until = lockedUntilOf(e);
          if (until === undefined) throw e;
          locked.push({ snapshot: id, until });
          continue;
        }
        forgotten++;
      }
      emit({ type: 'log', level: 'info', message: `forgot ${forgotten} snapshot(s)${locked.length ? `; ${locked.length} locked one(s) left` : ''}` });
      if (!spec.prune) return { forgotten, locked };
      // Repacking encodes blobs again: the worker pool does it, with this repository's keys.
      const res = await prune(repo, { signal, encoder: pool, onProgress: (m) => emit({ type: 'log', level: 'info', message: m }) });
      return { forgotten, locked, prune: res as unknown as Record<string, unknown> };
    });
  }

  /** Moves the locks of what live snapshots need to their copies' expiry (repository/object-lock.ts). */
  private async lockExtend(spec: LockExtendSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (!spec.storage.lock) throw new CofferError('USAGE', `Cannot extend locks in ${spec.storage.url}: the storage unit is not immutable`, { hint: 'Set immutable: true on the storage unit (S3 with Object Lock).' });
    return this.withRepo(spec.storage, signal, false, async (repo) => {
      const r = await extendLocks(repo, spec.targets, {
        signal,
        ledgerPath: join(this.cacheDir(), repo.config.id, 'object-locks.json'),
        onProgress: (m) => emit({ type: 'log', level: 'info', message: m }),
      });
      for (const u of r.unreadable) emit({ type: 'log', level: 'warn', message: `snapshot ${u.snapshot.slice(0, 12)} is unreadable; its locks were not extended: ${u.error}` });
      if (r.missing.length) emit({ type: 'log', level: 'warn', message: `${r.missing.length} object(s) that snapshots need are missing (first: ${r.missing[0]}); run \`coffer repo check\`` });
      return { ...r, missing: r.missing.length, warnings: r.unreadable.length + r.missing.length };
    });
  }

  private async init(spec: InitSpec, signal: AbortSignal): Promise<Record<string, unknown>> {
    const backend = await this.backend(spec.storage);
    try {
      await backend.locks?.check({ signal });
      const repo = await Repository.init(backend, spec.storage.password, { signal, cacheDir: this.cacheDir(), ...(spec.master ? { master: Buffer.from(spec.master, 'base64') } : {}) });
      const id = repo.config.id;
      await repo.close();
      return { repository: id };
    } finally {
      await backend.close();
    }
  }

  private async probe(spec: ProbeSpec, signal: AbortSignal): Promise<Record<string, unknown>> {
    const problems: Array<{ path?: string; storage?: string; problem: string; code?: string; hint?: string }> = [];
    for (const p of spec.paths ?? []) {
      throwIfAborted(signal);
      try {
        const st = await stat(p);
        await access(p, st.isDirectory() ? constants.R_OK | constants.X_OK : constants.R_OK);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        problems.push({ path: p, problem: code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable' : (e as Error).message });
      }
    }
    if (spec.storage) {
      try {
        const backend = await this.backend(spec.storage);
        try {
          await backend.locks?.check({ signal });
          const name = `probe-${randomBytes(8).toString('hex')}`;
          await backend.put(name, Buffer.from('coffer probe\n'), { signal });
          await backend.delete(name, { signal });
        } finally {
          await backend.close();
        }
      } catch (e) {
        const err = toCofferError(e);
        problems.push({ storage: spec.storage.url, problem: err.message, code: err.code, ...(err.hint ? { hint: err.hint } : {}) });
      }
    }
    return { problems };
  }

  /** The bytes the repository takes in storage: every object listed (no key needed, nothing read). */
  private async usage(spec: UsageSpec, signal: AbortSignal): Promise<Record<string, unknown>> {
    const backend = await this.backend(spec.storage);
    try {
      let bytes = 0;
      let objects = 0;
      for await (const info of backend.list('', { signal })) {
        bytes += info.size;
        objects++;
      }
      return { bytes, objects };
    } finally {
      await backend.close();
    }
  }

  private async list(spec: ListSpec, signal: AbortSignal): Promise<Record<string, unknown>> {
    const notes: string[] = [];
    return this.withSharedRepo(spec.storage, signal, async (repo) => {
      const snap = await loadSnapshot(repo, spec.snapshot, { signal });
      const entries: Array<Record<string, unknown>> = [];
      let more = false;
      for await (const e of listSnapshot(repo, snap.tree, spec.path || '/', { signal })) {
        if (spec.after !== undefined && e.node.name <= spec.after) continue;
        if (entries.length === spec.limit) {
          more = true;
          break;
        }
        const n = e.node;
        entries.push({ path: e.path, name: n.name, type: n.type, mode: n.mode, size: n.size ?? 0, mtimeNs: n.mtimeNs, user: n.user, group: n.group, ...(n.linkTarget !== undefined ? { linkTarget: n.linkTarget } : {}) });
      }
      return { entries, more, notes };
    }, (id, e) => notes.push(`index file ${id.slice(0, 12)} is unreadable (${e.message}) and was left out`));
  }

  /**
   * Copies snapshots into one repository or several, sending only the blobs each lacks, each read
   * from the source once for all of them (src/jobs/clone.ts, cloneToTargets()). The result has one
   * entry per target in `targets`; with the one-target spec, that entry's fields are also at the top.
   */
  private async clone(spec: CloneSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    const storages = spec.targets ?? [spec.target!];
    return this.withRepo(spec.source, signal, true, (source, sourcePool) => this.withRepos(storages, signal, async (targets) => {
      const progress = new ProgressReporter(emit);
      const latest = targets.map(() => ({ bytes: 0, bytesNew: 0 }));
      const r = await cloneToTargets(source, targets, spec.snapshots, {
        signal,
        sourcePool,
        onProgress: (i, p) => {
          latest[i] = { bytes: p.counts.bytesPresent + p.counts.bytesSentRaw, bytesNew: p.counts.bytesSentRaw };
          progress.report({ bytes: latest.reduce((n, x) => n + x.bytes, 0), bytesNew: latest.reduce((n, x) => n + x.bytesNew, 0), current: p.snapshot });
        },
      });
      const perTarget = r.map((x) => ({
        snapshots: Object.fromEntries(x.snapshots.map((c) => [c.sourceId, c.targetId])),
        sameKeys: x.sameKeys,
        bytesExamined: x.totals.bytesExamined,
        bytesPresent: x.totals.bytesPresent,
        bytesSentRaw: x.totals.bytesSentRaw,
        bytesSent: x.totals.bytesSent,
        blobsSent: x.totals.blobsSent,
        bytesRead: x.totals.bytesRead,
        packs: x.packs,
      }));
      const sourceDamage = [...new Set(r.flatMap((x) => x.sourceDamage))];
      return { ...(spec.target ? perTarget[0] : {}), targets: perTarget, sourceDamage };
    }));
  }

  /** Reads back the selected packs and checks every blob in them (src/jobs/verify.ts). */
  private async verify(spec: VerifySpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    return this.withRepo(spec.storage, signal, false, async (repo) => {
      const progress = new ProgressReporter(emit);
      const r = await verifyRepository(repo, {
        signal,
        ...(spec.slice ? { slice: spec.slice } : {}),
        ...(spec.snapshots ? { snapshots: spec.snapshots } : {}),
        onProgress: (message, done, total) => (done === undefined ? emit({ type: 'log', level: 'info', message }) : progress.report({ current: `${message} ${done}/${total}` })),
      });
      return { ...r } as unknown as Record<string, unknown>;
    });
  }

  /** Takes damaged packs out of use, keeping every blob in them that still reads (repairPacks). */
  private async repair(spec: RepairSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    return this.withRepo(spec.storage, signal, true, async (repo, pool) => {
      await repo.loadIndex({ signal });
      const r = await repairPacks(repo, pool, { signal, ...(spec.packs?.length ? { packs: spec.packs } : {}), onProgress: (message) => emit({ type: 'log', level: 'info', message }) });
      return { packs: r.packs, blobsSalvaged: r.blobsSalvaged, blobsLost: r.blobsLost, lostFiles: r.lostFiles.slice(0, 1000), lostFileCount: r.lostFileCount };
    });
  }

  /** Reads restored files back and checks them against the snapshot's chunk ids (a restore test). */
  private async compare(spec: CompareSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<Record<string, unknown>> {
    return this.withRepo(spec.storage, signal, false, async (repo) => {
      await repo.loadIndex({ signal });
      const snap = await loadSnapshot(repo, spec.snapshot, { signal });
      const progress = new ProgressReporter(emit);
      const r = await compareRestored(repo, snap.tree, spec.root, { signal, ...(spec.paths ? { paths: spec.paths } : {}), onProgress: (p) => progress.report({ files: p.files, bytes: p.bytes, current: p.current }) });
      for (const m of r.mismatches.slice(0, 100)) emit({ type: 'warning', path: m.path, problem: m.problem });
      return { files: r.files, bytes: r.bytes, others: r.others, mismatches: r.mismatches, mismatchCount: r.mismatchCount, warnings: r.mismatchCount };
    });
  }

  /** Opens every repository of `storages` (with a worker pool view each) for the length of `fn`. */
  private withRepos<T>(storages: readonly StorageAccess[], signal: AbortSignal, fn: (repos: Array<{ repo: Repository; pool: RepoPool }>) => Promise<T>): Promise<T> {
    const open = (i: number, acc: Array<{ repo: Repository; pool: RepoPool }>): Promise<T> =>
      i === storages.length ? fn(acc) : this.withRepo(storages[i]!, signal, true, (repo, pool) => open(i + 1, [...acc, { repo, pool }]));
    return open(0, []);
  }

  private async find(spec: FindSpec, signal: AbortSignal): Promise<Record<string, unknown>> {
    return this.withSharedRepo(spec.storage, signal, async (repo) => {
      const refs = [];
      const unreadable: Array<{ snapshot: string; error: string }> = [];
      for (const id of spec.snapshots) {
        try {
          refs.push({ id, snapshot: await loadSnapshot(repo, id, { signal }) });
        } catch (e) {
          const err = toCofferError(e);
          if (err.code === 'CANCELLED') throw err;
          unreadable.push({ snapshot: id, error: err.message });
        }
      }
      const matches: Array<Record<string, unknown>> = [];
      let more = false;
      for await (const m of findInSnapshots(repo, refs, spec.pattern, { signal })) {
        if (matches.length === spec.limit) {
          more = true;
          break;
        }
        matches.push({ snapshot: m.snapshot, time: m.time, path: m.path, type: m.node.type, size: m.node.size ?? 0, mtimeNs: m.node.mtimeNs });
      }
      return { matches, more, unreadable, warnings: unreadable.length };
    });
  }

  // ---- plumbing --------------------------------------------------------------------------------

  private cacheDir(): string {
    return join(this.options.stateDir, 'cache');
  }

  /** The storage behind `storage`, retried, and held to its unit's bandwidth limit if it has one. */
  private async backend(storage: StorageAccess): Promise<Backend> {
    if (storage.lock && parseBackendUrl(storage.url).kind !== 's3') {
      throw new CofferError('USAGE', `Cannot keep immutable copies at ${storage.url}: only S3 storage with Object Lock can lock objects`, { hint: 'Use an s3:// storage unit whose bucket has Object Lock enabled, or set immutable: false.' });
    }
    const lock = storage.lock;
    const objectLock = lock ? { objectLock: { ...(lock.until ? { retainUntil: lock.until } : {}), ...(lock.minimumMs ? { minimumMs: lock.minimumMs } : {}), lockName: isLockedObject } } : undefined;
    const opened = await openBackend(storage.url, { ...(storage.env ? { env: storage.env } : {}), ...(objectLock ? { s3: objectLock } : {}) });
    return new RetryBackend(storage.bandwidth ? new ThrottledBackend(opened, this.bucket(storage.url, storage.bandwidth), { counted: (name) => name.startsWith(DATA_PREFIX) }) : opened);
  }

  /** The token bucket every job of this agent shares for one storage location (a new one when its rate changed). */
  private bucket(url: string, rate: number): TokenBucket {
    let b = this.buckets.get(url);
    if (!b || b.rate !== rate) this.buckets.set(url, (b = new TokenBucket(rate)));
    return b;
  }

  /**
   * Opens the repository for the job's length; with needPool, also a view of the worker pool with
   * the repository's keys, chunker and level (dropped from the workers when the job ends).
   */
  /**
   * For reads that answer a person waiting (browse, snapshot lists): a repository handle kept
   * open between jobs for SHARED_IDLE_MS, so that a listing does not pay the key derivation and
   * the index load each time. Each use brings the index up to date (a listing of index files)
   * before it reads.
   */
  private async withSharedRepo<T>(storage: StorageAccess, signal: AbortSignal, fn: (repo: Repository) => Promise<T>, onUnreadable?: (id: string, e: CofferError) => void): Promise<T> {
    const key = createHash('sha256').update(JSON.stringify([storage.url, storage.password, storage.env ?? null])).digest('hex');
    let h = this.shared.get(key);
    if (!h) {
      const opened = (async () => {
        const backend = await this.backend(storage);
        try {
          return { backend, repo: await Repository.open(backend, storage.password, { cacheDir: this.cacheDir(), sessionTiming: this.options.sessionTiming }) };
        } catch (e) {
          await backend.close();
          throw e;
        }
      })();
      h = { opened, users: 0, timer: undefined };
      this.shared.set(key, h);
      opened.catch(() => this.shared.delete(key));
    }
    const handle = h;
    handle.users++;
    clearTimeout(handle.timer);
    try {
      const { repo } = await handle.opened;
      await repo.loadIndex({ signal, ...(onUnreadable ? { onUnreadable } : {}) });
      return await fn(repo);
    } finally {
      if (--handle.users === 0 && this.shared.get(key) === handle) {
        handle.timer = setTimeout(() => {
          if (handle.users > 0 || this.shared.get(key) !== handle) return;
          this.shared.delete(key);
          void handle.opened.then(({ repo, backend }) => repo.close().finally(() => backend.close()), () => {});
        }, SHARED_IDLE_MS);
        handle.timer.unref();
      }
    }
  }

  private async withRepo<T>(storage: StorageAccess, signal: AbortSignal, needPool: boolean, fn: (repo: Repository, pool: RepoPool) => Promise<T>): Promise<T> {
    const backend = await this.backend(storage);
    try {
      const repo = await Repository.open(backend, storage.password, { signal, cacheDir: this.cacheDir(), sessionTiming: this.options.sessionTiming });
      try {
        if (!needPool) return await fn(repo, undefined as unknown as RepoPool);
        const pool = await this.acquirePool();
        const view = pool.context({ keys: repo.keys, chunker: repo.config.chunker, level: repo.config.compressionLevel });
        try {
          return await fn(repo, view);
        } finally {
          view.close();
          this.releasePool();
        }
      } finally {
        await repo.close();
      }
    } finally {
      await backend.close();
    }
  }

  private acquirePool(): Promise<WorkerPool> {
    this.users++;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.pool ??= WorkerPool.create({ workers: this.options.workers });
    const p = this.pool;
    p.catch(() => {
      if (this.pool === p) this.pool = undefined;
    });
    return p.catch((e) => {
      this.users--;
      throw e;
    });
  }

  private releasePool(): void {
    if (--this.users > 0) return;
    if (this.closed) {
      void this.closePool();
      return;
    }
    this.idleTimer = setTimeout(() => void this.closePool(), this.options.idleMs ?? 30_000);
    this.idleTimer.unref();
  }

  private async closePool(): Promise<void> {
    clearTimeout(this.idleTimer);
    const p = this.pool;
    this.pool = undefined;
    if (p) await p.then((pool) => pool.close(), () => {});
  }
}

/**
 * Runs a pre or post command with /bin/sh -c and a time limit; its output goes to the job's log
 * (bounded). Fails with the exit code or signal and the last lines of its output.
 */
async function runCommand(which: 'pre' | 'post', cmd: CommandSpec, emit: EmitJobEvent, signal: AbortSignal): Promise<void> {
  throwIfAborted(signal);
  const timeoutMs = cmd.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT;
  emit({ type: 'log', level: 'info', message: `${which} command: ${cmd.run}` });
  await new Promise<void>((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', cmd.run], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let output = '';
    let timedOut = false;
    const keep = (b: Buffer) => {
      output = (output + b.toString('utf8')).slice(-COMMAND_OUTPUT_LIMIT);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    // The whole process group: a shell's children must not outlive the limit.
    const kill = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, timeoutMs);
    const onAbort = () => kill();
    signal.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      reject(new CofferError('USAGE', `Cannot run the ${which} command: ${e.message}`));
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      const tail = output.trimEnd().split('\n').slice(-10).join('\n');
      if (tail) emit({ type: 'log', level: code === 0 ? 'info' : 'error', message: `${which} command output:\n${tail}` });
      if (signal.aborted) return reject(new CofferError('CANCELLED', `Cancelled: the ${which} command was stopped`));
      if (timedOut) return reject(new CofferError('REFUSED', `The ${which} command did not finish within ${Math.round(timeoutMs / 1000)} s and was killed: ${cmd.run}`, { hint: 'Make it faster, or raise its timeout in the policy.' }));
      if (code !== 0) return reject(new CofferError('REFUSED', `The ${which} command failed (${sig ? `killed by ${sig}` : `exit code ${code}`}): ${cmd.run}`, { hint: which === 'pre' ? 'The backup did not run; fix the command (its output is in the job log).' : 'Its output is in the job log.' }));
      resolve();
    });
  });
}
