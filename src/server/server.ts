// `coffer server`: everything under one data directory unless told otherwise.
//
//   DATA_DIR/catalog.db               the embedded catalog (SQLite, WAL), unless --catalog postgres://...
//   DATA_DIR/server.key               the key that encrypts the keystore (0600), unless given by the environment
//   DATA_DIR/keystore.json            repository passwords and other secrets, encrypted
//   DATA_DIR/initial-admin-password   the first admin's password (0600), written once
//   DATA_DIR/storage/default          the storage unit `default`
//   DATA_DIR/agent                    the embedded agent's caches
//   DATA_DIR/ca.key, ca.pem           the server's certificate authority (ca.ts): remote agents, nodes, HTTPS
//
// Start: open the catalog, record jobs the last run left running as interrupted (they are queued
// again), start the embedded agent (the client named after this host), make sure the default
// storage unit exists, queue a reconcile, then run the scheduler, the queue and the API. Stop
// (SIGTERM, Ctrl-C): the API stops taking requests, running jobs are told to stop and recorded
// as interrupted (queued again at the next start), the agent exits, the catalog closes.

import { mkdirSync, statSync } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { CofferError, toCofferError } from '../core/errors.ts';
import { openCatalog, type Catalog } from '../catalog/catalog.ts';
import { SchedulerLoop, systemClock, type SchedulerClock } from '../scheduler/loop.ts';
import type { PolicyDocument } from '../policy/index.ts';
import { startEmbeddedAgent, type EmbeddedAgent } from './agent-link.ts';
import { Dispatcher } from './dispatcher.ts';
import { applyDocuments } from './documents.ts';
import { backupExecutor, expireExecutor, reconcileExecutor, restoreExecutor } from './executors.ts';
import { duplicateExecutor } from './duplicate.ts';
import { buildHttp, type Principal } from './http.ts';
import { restoreTestExecutor } from './restore-test.ts';
import { buildRoutes } from './routes.ts';
import { LifecycleRunner } from './lifecycle.ts';
import type { BusMessage } from './dispatcher.ts';
import { AgentRegistry, storageAccessFor, type Services } from './services.ts';
import { NodeRegistry } from './nodes.ts';
import { domainMasterKey } from './domain.ts';
import { hasImmutableUnit, lockExtendExecutor } from './object-lock.ts';
import { Keystore, resolveSecret } from './keystore.ts';
import { authenticate, createApiToken, ensureInitialAdmin, hashPassword, login, logout, mayBrowse, mayRestore, revokeToken } from './auth.ts';
import type { AuthApi } from './routes.ts';
import { CatalogScheduleStore, syncPolicySchedules, upcoming } from './schedule-store.ts';
import { repairExecutor, verifyExecutor, VerifyTimer } from './verify.ts';
import { EmbeddedNodeTls, startPki, type ServerPki } from './pki-server.ts';
import type { AgentPort } from './agent-port.ts';
import type { CertificateAuthority } from './ca.ts';

export interface ServerOptions {
  dataDir: string;
  /** Where the API listens (default 127.0.0.1:7480). */
  host?: string;
  port?: number;
  /** Catalog URL (default: DATA_DIR/catalog.db). */
  catalog?: string;
  /** The first admin's password (COFFER_ADMIN_PASSWORD); default a random one written to DATA_DIR. */
  adminPassword?: string;
  /** The keystore's key (COFFER_SERVER_KEY / COFFER_SERVER_KEY_FILE); default DATA_DIR/server.key. */
  serverKey?: Buffer;
  serverKeyFile?: string;
  /** The name of this host's client (default: the host name, lower case). */
  clientName?: string;
  /** The server's time zone for schedules without one (default: the system's). */
  timezone?: string;
  log: Logger;
  /** Worker threads of the embedded agent while jobs run (default: one per core). */
  workers?: number;
  /** Running jobs in all (default 16). */
  maxJobs?: number;
  /** The server's clock (tests). */
  clock?: SchedulerClock;
  /** Prune a storage unit at most this often (default 24 h). */
  pruneIntervalMs?: number;
  /** Environment for the agent and secret references (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Where remote agents and nodes connect (mutual TLS: agent-port.ts); none when not given. */
  agentListen?: { host: string; port: number };
  /** More names (DNS or IP) for the server's TLS certificate, besides the listen addresses and the host name. */
  agentSans?: string[];
  /** Serve the API over HTTPS (default: exactly when it listens beyond loopback; see apiNeedsTls). */
  apiTls?: boolean;
  /** Ping interval of remote agents' links (default 15 s). */
  agentPingMs?: number;
  /** The embedded node's data port for remote agents (default: the agent port's host, any free port). */
  dataListen?: { host: string; port: number };
  /** The address remote agents reach the embedded node's data port at (default: dataListen's). */
  dataAddress?: string;
}

export interface RunningServer {
  url: string;
  app: FastifyInstance;
  catalog: Catalog;
  dispatcher: Dispatcher;
  services: Services;
  /** The lifecycle pass (lifecycle.ts): runNow() runs one at once. */
  lifecycle: LifecycleRunner;
  /** The initial admin password when this start created it (print it once). */
  initialAdminPassword?: string;
  initialAdminPasswordFile?: string;
  clientName: string;
  /** The server's certificate authority (its fingerprint is what agents and HTTPS clients trust). */
  ca: CertificateAuthority;
  /** The agent port, when --agent-listen was given. */
  agentPort?: AgentPort;
  stop(): Promise<void>;
}

/**
 * mkdir -p, one level at a time: Node's recursive mkdirSync never returns for some paths (under
 * /proc it spins), and a data directory given by mistake must fail with a message, not hang.
 */
function makeDirs(path: string): void {
  try {
    mkdirSync(path, { mode: 0o700 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      if (!statSync(path).isDirectory()) throw new CofferError('USAGE', `Cannot use ${path} as a directory: it is a file`);
      return;
    }
    if (code !== 'ENOENT' || dirname(path) === path) throw e;
    makeDirs(dirname(path));
    mkdirSync(path, { mode: 0o700 });
  }
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const log = options.log;
  const env = options.env ?? process.env;
  const clock = options.clock ?? systemClock;
  const now = () => clock.now();
  const dataDir = options.dataDir;
  try {
    makeDirs(dataDir);
  } catch (e) {
    throw new CofferError('STORAGE_ERROR', `Cannot create the data directory ${dataDir}: ${(e as Error).message}`, { hint: 'Give another --data-dir, or create it with write access for this user.' });
  }
  const timezone = options.timezone ?? Intl.DateTimeFormat().resolvedOptions().timeZone;
  const clientName = (options.clientName ?? hostname()).toLowerCase();
  const serverName = `server@${hostname()}`;

  // COFFER_JOB_RETRY_BASE_MS: the first retry's backoff (default 1 min, doubling); tests shorten it.
  const retryBaseMs = Number(env.COFFER_JOB_RETRY_BASE_MS);
  // COFFER_PRUNE_INTERVAL_MS: how often a storage unit is pruned at most (default 24 h; 0: at every expiry).
  const pruneEnv = env.COFFER_PRUNE_INTERVAL_MS;
  const pruneIntervalFromEnv = pruneEnv !== undefined && pruneEnv !== '' && Number(pruneEnv) >= 0 ? Number(pruneEnv) : undefined;
  const catalog = await openCatalog(options.catalog ?? join(dataDir, 'catalog.db'), { now, ...(retryBaseMs > 0 ? { retry: { baseMs: retryBaseMs } } : {}) });
  const cleanups: Array<() => Promise<void>> = [() => catalog.close()];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  };
  try {
    log.info({ catalog: catalog.where, version: catalog.version, migratedFrom: catalog.migratedFrom }, 'catalog open');
    const keystore = await Keystore.open({ dataDir, key: options.serverKey, keyFile: options.serverKeyFile });
    const resolve = (ref: string) => resolveSecret(ref, { keystore, env });
    const admin = await ensureInitialAdmin(catalog, { dataDir, password: options.adminPassword, now });

    const interrupted = await catalog.jobs.interruptRunning();
    for (const j of interrupted.requeued) log.warn({ job: j.id, kind: j.kind, attempt: j.attempt }, 'job interrupted by the last stop: queued again');
    for (const j of interrupted.interrupted) log.warn({ job: j.id, kind: j.kind }, 'job interrupted by the last stop: out of attempts');
    // A backup killed with its server (SIGKILL, power loss) left its image pending: no running
    // job will settle it now, so it failed. What it committed before dying is in storage without
    // a copy record: reconcile records those snapshots as an expired copy of this image, and the
    // expiry forgets them (executors.ts).
    for (let cursor: string | undefined; ;) {
      const page = await catalog.images.list({ state: 'pending', limit: 1000, cursor });
      for (const image of page.items) {
        const job = image.jobId ? await catalog.jobs.find(image.jobId) : undefined;
        if (job?.state === 'running') continue;
        await catalog.images.complete(image.id, { state: 'failed', summary: { ...image.summary, interrupted: true, failures: ['the server stopped during the backup'] } });
        log.warn({ image: image.id, job: image.jobId }, 'image of a backup interrupted by the last stop: failed');
      }
      if (!page.next) break;
      cursor = page.next;
    }

    const agents = new AgentRegistry();
    const nodes = new NodeRegistry();
    let embedded: EmbeddedAgent | undefined;
    let stopping = false;
    const services: Services = {
      catalog,
      now,
      agents,
      nodes,
      node: (units) => {
        const chosen = (async () => {
          const list = units === undefined ? [] : Array.isArray(units) ? units : [units];
          if (!list.length) return nodes.get(clientName)?.link ?? agents.get(clientName);
          const resolved = await Promise.all(list.map((u) => (typeof u === 'string' ? catalog.storageUnits.get(u) : u)));
          return nodes.choose(resolved).link;
        })();
        // Callers pass the choice to runOnAgent while they still await the job's other arguments:
        // a rejection is theirs to see there, not an unhandled one meanwhile.
        chosen.catch(() => {});
        return chosen;
      },
      storageAccess: async (unit, o) => storageAccessFor(typeof unit === 'string' ? await catalog.storageUnits.get(unit) : unit, resolve, { now: now(), ...o }),
    };

    // The certificate authority, the server's TLS certificate and the agent port (pki-server.ts).
    const host = options.host ?? '127.0.0.1';
    const pki: ServerPki = await startPki({ services, dataDir, env, log, apiHost: host, apiTls: options.apiTls, agentListen: options.agentListen, sans: options.agentSans, pingMs: options.agentPingMs });
    cleanups.push(() => pki.stop());
    // The embedded node's data port, where remote agents send backups when a unit is served by
    // the server itself: on the agent port's host, with a node certificate of the server's CA.
    const dataListen = options.dataListen ?? (options.agentListen ? { host: options.agentListen.host, port: 0 } : undefined);
    const nodeTls = dataListen ? new EmbeddedNodeTls(join(dataDir, 'agent', 'node-tls'), pki.ca, clientName) : undefined;
    if (nodeTls) {
      await nodeTls.issue();
      // Re-issued when a third of its life is left; the agent takes the new files up by itself.
      const renew = setInterval(() => void nodeTls.renewIfDue().catch((e) => log.error({ err: toCofferError(e).message }, 'cannot renew the embedded node\'s certificate')), 3_600_000);
      renew.unref();
      cleanups.push(async () => clearInterval(renew));
    }

    // The embedded agent: this host's client, and the node for storage work. Restarted if it dies.
    const startAgent = async (): Promise<void> => {
      const agent = startEmbeddedAgent({
        stateDir: join(dataDir, 'agent'), name: clientName, workers: options.workers, env: { ...env },
        ...(dataListen && nodeTls ? { data: { listen: dataListen, ...(options.dataAddress ? { advertise: options.dataAddress } : {}), tlsDir: nodeTls.dir } } : {}),
      });
      embedded = agent;
      const hello = await agent.link.ready;
      await catalog.clients.upsert({ name: clientName, platform: String(hello.host.os ?? ''), agentId: `embedded@${hello.host.hostname ?? clientName}`, hostIdentity: hello.host });
      await catalog.clients.seen(clientName);
      agents.set(clientName, agent.link);
      const dataAddress = typeof hello.host.dataAddress === 'string' ? hello.host.dataAddress : undefined;
      nodes.set(clientName, agent.link, { embedded: true, dataAddress });
      log.info({ client: clientName, agentPid: agent.child.pid, dataAddress }, 'embedded agent connected');
      void agent.link.closed.then(({ reason }) => {
        if (stopping) return;
        log.error({ reason }, 'embedded agent stopped; restarting it in 2 s');
        setTimeout(() => void startAgent().catch((e) => log.error({ err: toCofferError(e).message }, 'cannot restart the embedded agent')), 2000).unref();
      });
    };
    await startAgent();
    cleanups.push(async () => {
      stopping = true;
      await embedded?.stop();
    });

    const secrets = {
      put: (name: string, secret: string) => keystore.put(name, secret),
      generatePassword: () => keystore.generatePassword(),
      has: (name: string) => keystore.has(name),
      domainMaster: () => domainMasterKey(keystore),
    };
    const verifyTimer = new VerifyTimer(services, clock, { log, onQueued: () => dispatcher.wake() });
    const scheduleStore = new CatalogScheduleStore(catalog);
    const scheduler = new SchedulerLoop(scheduleStore, clock, {
      timezone,
      onTick: () => verifyTimer.poke(),
      onError: (e, id) => log.error({ schedule: id, err: e.message }, 'scheduler'),
    });
    /** Schedules follow the policies: those just applied, or (no argument) all of them. */
    const onApplied = async (docs?: unknown[]) => {
      if (docs) {
        for (const d of docs as PolicyDocument[]) if (d.kind === 'Policy') await syncPolicySchedules(catalog, d, { now: now() });
      } else {
        for (let cursor: string | undefined; ;) {
          const page = await catalog.policies.list({ limit: 1000, cursor });
          for (const p of page.items) await syncPolicySchedules(catalog, { metadata: { name: p.name, labels: p.labels }, spec: p.spec as PolicyDocument['spec'] }, { now: now() });
          if (!page.next) break;
          cursor = page.next;
        }
      }
      verifyTimer.wake();
      scheduler.wake();
    };

    // The default storage unit, on first start.
    if (!(await catalog.storageUnits.find('default'))) {
      const url = join(dataDir, 'storage', 'default');
      makeDirs(url);
      const out = await applyDocuments(services, secrets, {
        documents: [{ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'default' }, spec: { url, maxJobs: 2 } }],
        by: 'server', role: 'admin',
      }, { timezone });
      for (const w of out.warnings) log.info({ unit: 'default' }, w.message);
    }

    const lifecycle = new LifecycleRunner(services, {
      timezone,
      wakeQueue: () => dispatcher.wake(),
      afterEnd: (id, fn) => {
        const follow = (m: BusMessage) => {
          if (m.type !== 'end') return;
          dispatcher.bus.off(id, follow);
          fn();
        };
        dispatcher.bus.on(id, follow);
      },
      log: (level, message, data) => log[level]({ ...data }, message),
    });
    const dispatcher: Dispatcher = new Dispatcher({
      catalog,
      name: serverName,
      globalLimit: options.maxJobs ?? 16,
      executors: {
        backup: lifecycle.watchBackup(backupExecutor(services)),
        restore: restoreExecutor(services),
        duplicate: lifecycle.duplicate(duplicateExecutor(services)),
        stage: lifecycle.stage(duplicateExecutor(services)),
        expire: expireExecutor(services, { pruneIntervalMs: options.pruneIntervalMs ?? pruneIntervalFromEnv ?? 86_400_000 }),
        reconcile: reconcileExecutor(services),
        verify: verifyExecutor(services, { log }),
        repair: repairExecutor(services, { log }),
        'restore-test': restoreTestExecutor(services),
        'lock-extend': lockExtendExecutor(services),
      },
      onError: (e, job) => log.error({ job: job?.id, err: e.message }, 'queue'),
    });
    dispatcher.bus.on('newListener', () => {});
    await onApplied();

    const auth: AuthApi = {
      login: async (user, password, source) => {
        const r = await login(catalog, { user, password, source }, { now });
        return { token: r.token, expires: r.expires, user: r.user, role: r.role };
      },
      logout: (p) => logout(catalog, p, { now }),
      hashPassword: (pw) => hashPassword(pw),
      createToken: (p, o, source) => createApiToken(catalog, p, { name: o.name, role: o.role, ...(o.expiresIn ? { expiresIn: o.expiresIn } : {}) }, { source, now }),
      revokeToken: async (p, id, source) => void (await revokeToken(catalog, p, id, { source, now })),
      mayRestore: (p, t) => {
        const d = mayRestore(p, t);
        return d.allowed ? undefined : d.reason;
      },
      mayBrowse: (p, client) => {
        const d = mayBrowse(p, client);
        return d.allowed ? undefined : d.reason;
      },
    };
    const app = await buildHttp({
      catalog,
      ...(pki.apiTls ? { https: pki.apiTls } : {}),
      authenticate: (header: string | undefined): Promise<Principal> => authenticate(catalog, header, { now }),
      routes: buildRoutes({
        s: services,
        dispatcher,
        secrets,
        auth,
        timezone,
        onApplied,
        schedules: (filter) => upcoming(catalog, { ...filter, now: now(), timezone }),
        pki: { ca: pki.ca, port: pki.port, embeddedClient: clientName },
      }),
    });
    if (pki.apiTls) pki.onCertificate((tls) => (app.server as unknown as HttpsServer).setSecureContext({ key: tls.key, cert: tls.chain }));

    // Reconcile at every start: the catalog against what storage holds.
    await catalog.jobs.enqueue({ kind: 'reconcile', priority: 30, maxAttempts: 1, spec: { apply: false }, requestedBy: 'server' });
    dispatcher.start();
    const schedulerStop = new AbortController();
    const schedulerRun = scheduler.run({ signal: schedulerStop.signal }).catch((e) => log.error({ err: toCofferError(e).message }, 'scheduler stopped'));
    // Expiry once an hour (and at start): retention runs on the server's clock.
    const expiryTimer = setInterval(() => void catalog.jobs.enqueue({ kind: 'expire', priority: 5, maxAttempts: 5, spec: {}, requestedBy: 'server' }).then(() => dispatcher.wake(), () => {}), 3_600_000);
    expiryTimer.unref();
    await catalog.jobs.enqueue({ kind: 'expire', priority: 5, maxAttempts: 5, spec: {}, requestedBy: 'server' });
    // Object Lock extension every 6 hours (and at start): immutable units' locks follow their copies.
    const extendLocks = async () => {
      if (await hasImmutableUnit(catalog)) await catalog.jobs.enqueue({ kind: 'lock-extend', priority: 5, maxAttempts: 3, spec: {}, requestedBy: 'server' });
    };
    const lockTimer = setInterval(() => void extendLocks().then(() => dispatcher.wake(), () => {}), 6 * 3_600_000);
    lockTimer.unref();
    await extendLocks();
    dispatcher.wake();
    // The lifecycle pass: now, every 15 minutes, and after copy jobs end (lifecycle.ts).
    lifecycle.start();

    await app.listen({ host, port: options.port ?? 7480 });
    const address = app.server.address();
    const port = typeof address === 'object' && address ? address.port : options.port ?? 7480;
    const url = `${pki.apiTls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
    log.info({ url, ...(pki.apiTls ? { caFingerprint: pki.ca.fingerprint } : {}) }, 'API listening');

    let stopped: Promise<void> | undefined;
    return {
      url,
      app,
      catalog,
      dispatcher,
      services,
      lifecycle,
      clientName,
      ca: pki.ca,
      ...(pki.port ? { agentPort: pki.port } : {}),
      ...(admin.created && admin.password ? { initialAdminPassword: admin.password, initialAdminPasswordFile: admin.passwordFile } : {}),
      stop: () => (stopped ??= (async () => {
        log.info('stopping: running jobs are told to stop and will run again after the next start');
        clearInterval(expiryTimer);
        clearInterval(lockTimer);
        schedulerStop.abort();
        lifecycle.stop();
        try {
          await app.close();
          await dispatcher.stop();
          await schedulerRun;
          await verifyTimer.idle();
          await lifecycle.runNow().catch(() => {}); // a pass that was running ends before the catalog closes
          const r = await catalog.jobs.interruptRunning({ claimedBy: serverName });
          if (r.requeued.length + r.interrupted.length) log.info({ interrupted: r.requeued.length + r.interrupted.length }, 'jobs recorded as interrupted');
        } finally {
          // Whatever failed above (the catalog unreachable), the agent exits and the catalog closes:
          // the jobs left running are recorded as interrupted at the next start.
          await cleanup();
        }
        log.info('stopped');
      })()),
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
