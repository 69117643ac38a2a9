// What the server's parts share: the catalog, the clock, the connected agents, and the way from
// a storage unit's name to what an agent needs to open its repository (URL, password from the
// keystore or the unit's passwordFrom, S3 credentials). Secrets are resolved here, just before a
// job needs them, and travel only inside the agent protocol.

import { randomUUID } from 'node:crypto';
import { parseRate } from '../core/bandwidth.ts';
import { CofferError, ERROR_CODES, type ErrorCode } from '../core/errors.ts';
import type { Catalog, CatalogQueries } from '../catalog/catalog.ts';
import type { LifecycleDocument, PolicyDocument } from '../policy/index.ts';
import type { StorageUnit } from '../catalog/storage-units.ts';
import type { StorageAccess } from '../agent/protocol.ts';
import type { JobEvent } from '../jobs/events.ts';
import type { AgentLink, JobDone } from './agent-link.ts';
import { minimumLockOf, writeLockUntil } from './object-lock.ts';
import type { NodeRegistry } from './nodes.ts';

/** Resolves a secret reference (`keystore:NAME`, `file:/path`, `env:NAME`); see keystore.ts. */
export type SecretResolver = (ref: string) => Promise<string>;

export interface Services {
  catalog: Catalog;
  now(): number;
  agents: AgentRegistry;
  /** The storage nodes connected now (the embedded one among them). */
  nodes: NodeRegistry;
  /**
   * The node that does the storage side of a job: the least loaded connected node serving every
   * unit named (nodes.ts), the embedded node when none is named.
   */
  node(units?: string | StorageUnit | ReadonlyArray<string | StorageUnit>): Promise<AgentLink>;
  /**
   * What an agent needs to open the unit's repository; `password` instead of the unit's own (a
   * probe, a new repository); `lockFor` the expiry of the copy being written (null: never), which
   * an immutable unit locks what is written until (server/object-lock.ts).
   */
  storageAccess(unit: string | StorageUnit, options?: StorageAccessOptions): Promise<StorageAccess>;
}

/**
 * The lifecycle a policy's backups follow: the schedule's own, else the policy's. Undefined when
 * none is named or the named one does not exist (the caller says what that means for it).
 */
export async function lifecycleOf(catalog: CatalogQueries, policy: PolicyDocument['spec'], schedule: string | undefined): Promise<LifecycleDocument['spec'] | undefined> {
  const name = policy.schedules.find((x) => x.name === schedule)?.lifecycle ?? policy.lifecycle;
  return name === undefined ? undefined : (await catalog.lifecycles.find(name))?.spec as LifecycleDocument['spec'] | undefined;
}

/** The keystore name of a storage unit's repository password when the unit names no passwordFrom. */
export const unitPasswordRef = (unit: string) => `keystore:storage-unit/${unit}/password`;

export interface StorageAccessOptions {
  password?: string;
  /** The expiry of the copy being written (null: never); left out: no copy (the unit's minimum lock). */
  lockFor?: number | null;
  /** The server's clock (immutable units: locks are counted from it). */
  now?: number;
}

export async function storageAccessFor(unit: StorageUnit, resolve: SecretResolver, options: StorageAccessOptions = {}): Promise<StorageAccess> {
  const spec = unit.spec as { passwordFrom?: string; credentialsFrom?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }; bandwidth?: string };
  const password = options.password ?? await resolve(spec.passwordFrom ?? unit.passwordRef ?? unitPasswordRef(unit.name));
  const access: StorageAccess = { url: unit.url, password, ...(spec.bandwidth !== undefined ? { bandwidth: parseRate(spec.bandwidth) } : {}) };
  const until = writeLockUntil(unit, options.now ?? Date.now(), options.lockFor);
  if (until !== undefined) access.lock = { until, minimumMs: minimumLockOf(unit)! };
  if (spec.credentialsFrom) {
    access.env = {
      AWS_ACCESS_KEY_ID: await resolve(spec.credentialsFrom.accessKeyId),
      AWS_SECRET_ACCESS_KEY: await resolve(spec.credentialsFrom.secretAccessKey),
      ...(spec.credentialsFrom.sessionToken ? { AWS_SESSION_TOKEN: await resolve(spec.credentialsFrom.sessionToken) } : {}),
    };
  }
  return access;
}

/** The agents connected now, by client name. */
export class AgentRegistry {
  private readonly links = new Map<string, AgentLink>();
  private readonly remote = new WeakSet<AgentLink>();

  /**
   * `remote`: an agent on another host, connected over mutual TLS, that holds no repository key:
   * its backups go through a storage node. The embedded agent is this host's and holds them.
   */
  set(client: string, link: AgentLink, options: { remote?: boolean } = {}): void {
    this.links.set(client, link);
    if (options.remote) {
      this.remote.add(link);
      link.mayHoldKeys = false;
    }
    void link.closed.then(() => {
      if (this.links.get(client) === link) this.links.delete(client);
    });
  }

  /** True when the client's connected agent is a remote one (see set()). */
  isRemote(client: string): boolean {
    const link = this.links.get(client);
    return link !== undefined && this.remote.has(link);
  }

  /** The client's agent; STORAGE_UNAVAILABLE (retried later) when it is not connected. */
  get(client: string): AgentLink {
    const link = this.links.get(client);
    if (!link || !link.isOpen) {
      throw new CofferError('STORAGE_UNAVAILABLE', `Cannot reach the agent of client ${client}: it is not connected`, { hint: 'Check that the agent runs on the client and can reach the server; the job is retried.' });
    }
    return link;
  }

  has(client: string): boolean {
    return this.links.get(client)?.isOpen ?? false;
  }

  names(): string[] {
    return [...this.links.keys()];
  }
}

/**
 * Runs one agent job for a server job (or an API request: no job): its events go to `emit`, and a
 * signal that fires cancels it on the agent. An agent that goes away interrupts it: that is
 * STORAGE_UNAVAILABLE, which the queue retries.
 */
export async function runOnAgent(linkOrChoice: AgentLink | Promise<AgentLink>, kind: string, spec: unknown, options: { jobId?: string; emit?: (e: JobEvent) => void; signal?: AbortSignal } = {}): Promise<Record<string, unknown>> {
  const link = await linkOrChoice;
  // The trust boundary: a remote agent gets no repository password or storage credentials,
  // whatever the job; its data goes through a storage node (remote-streams.ts).
  if (!link.mayHoldKeys && spec && typeof spec === 'object' && ['storage', 'source', 'targets', 'alternates'].some((k) => k in spec)) {
    throw new CofferError('REFUSED', `Cannot run a ${kind} job on the remote agent of client ${link.agent?.name ?? '?'} with a repository's credentials: remote agents hold no repository key`, {
      hint: kind === 'compare' ? 'Restore tests need a scratch client served by the server\'s embedded agent for now.' : 'This job kind cannot run on a remote agent yet.',
    });
  }
  const id = `${options.jobId ?? 'request'}.${randomUUID().slice(0, 8)}`;
  const onAbort = () => link.cancel(id);
  options.signal?.addEventListener('abort', onAbort, { once: true });
  let done: JobDone;
  try {
    done = await link.start(id, kind, spec, (e) => {
      if (e.type !== 'result') options.emit?.(e);
    });
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
  if (done.state === 'succeeded' || done.state === 'warnings') return done.result ?? {};
  const err = done.error ?? { code: 'INTERNAL', message: `the agent ended the ${kind} job as ${done.state} without saying why` };
  if (done.state === 'cancelled') throw new CofferError('CANCELLED', err.message);
  if (done.state === 'interrupted') throw new CofferError('STORAGE_UNAVAILABLE', err.message, { hint: 'The job is retried when the agent is back.' });
  const code: ErrorCode = (ERROR_CODES as readonly string[]).includes(err.code) ? (err.code as ErrorCode) : 'INTERNAL';
  throw new CofferError(code, err.message, err.hint ? { hint: err.hint } : {});
}

