// The agent protocol, version 1 (docs/server.md "Agent protocol"): newline-delimited JSON
// messages between the server and an agent, over the embedded agent's stdin/stdout today and
// over TLS for remote agents (issue #12). Both sides use this module: the message and job-spec
// schemas, and a line codec that refuses what does not parse instead of guessing.
//
//   agent → server   hello { protocol, agent }            server → agent   welcome { protocol } | refuse { reason }
//   server → agent   job.start { job, kind, spec }         agent → server   job.event { job, event }
//   server → agent   job.cancel { job }                    agent → server   job.done { job, state, result?, error? }
//   server → agent   ping { n }                            agent → server   pong { n }
//
// Remote agents and nodes over mutual TLS (issue #12; src/server/agent-port.ts) add, all optional
// for the embedded agent: welcome's pingMs (the agent drops a connection silent for three of
// them); refuse's code (REVOKED, PROTOCOL, IDENTITY: why, for the agent to decide whether to
// retry); and these messages:
//   agent → server   enroll { token, csr, role, name? }    server → agent   enrolled { certificate, ca, name, role } | refuse
//                    (the only message of a connection without a client certificate)
//   agent → server   renew { csr }                          server → agent   renewed { certificate } | renewed { reason }

import { z } from 'zod';
import { CofferError } from '../core/errors.ts';
import { jobEventProblem, type JobEvent } from '../jobs/events.ts';

export const PROTOCOL_VERSION = 1;

/**
 * How busy an agent or storage node is, with every pong: what the server balances jobs by (as
 * NetBackup balances media servers). cpu: the 1-minute load average per core; memory and ioWait:
 * fractions 0..1 (ioWait over the last ping interval); jobs running; bytes received and not yet stored.
 */
export const nodeLoad = z.strictObject({
  cpu: z.number().min(0).max(1e6),
  memory: z.number().min(0).max(1),
  ioWait: z.number().min(0).max(1),
  jobs: z.number().int().min(0).max(1e6),
  bytesInFlight: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
});
export type NodeLoad = z.infer<typeof nodeLoad>;

/** The longest line either side accepts: a job's result or an event is far smaller. */
export const MAX_LINE = 16 << 20;

const name = z.string().min(1).max(255);
const path = z.string().min(1).max(4096);

/** Where a job's repository is and how to open it; secrets travel only inside the protocol. */
export const storageAccess = z.strictObject({
  url: z.string().min(1).max(4096),
  password: z.string().min(1).max(4096),
  /** S3 credentials (AWS_ACCESS_KEY_ID, ...), when the unit is on S3. */
  env: z.record(z.string().max(255), z.string().max(4096)).optional(),
  /** The unit's bandwidth limit in bytes per second, shared by the agent's jobs on this URL. */
  bandwidth: z.number().int().min(1024).optional(),
  /**
   * An immutable unit (S3 with Object Lock): the repository's objects are written locked in
   * compliance mode until `until` (ms since the epoch) and for at least `minimumMs` from their
   * write, deleted version by version, and never deleted while locked. Neither given: written
   * unlocked (a probe).
   */
  lock: z.strictObject({ until: z.number().int().positive().optional(), minimumMs: z.number().int().min(1000).optional() }).optional(),
});
export type StorageAccess = z.infer<typeof storageAccess>;

const command = z.strictObject({
  /** Run by /bin/sh -c on the client. */
  run: z.string().min(1).max(65536),
  timeoutMs: z.number().int().positive().max(7 * 86_400_000).optional(),
});
export type CommandSpec = z.infer<typeof command>;

/** One selection of a policy, as a backup stream: paths, or a command's output as one file. */
export const selectionSpec = z.union([
  z.strictObject({
    paths: z.array(path).min(1).max(10_000),
    exclude: z.array(z.string().min(1).max(4096)).max(10_000).optional(),
    oneFileSystem: z.boolean().optional(),
    excludeCaches: z.boolean().optional(),
    /** The paths are disk images or block devices. */
    images: z.boolean().optional(),
    imageChunking: z.enum(['fixed', 'cdc']).optional(),
    /** How files are cut (BackupOptions.fileChunking). */
    fileChunking: z.enum(['auto', 'cdc']).optional(),
  }),
  z.strictObject({
    command: z.string().min(1).max(65536),
    filename: z.string().min(1).max(255).regex(/^[^/]+$/, 'a plain file name').refine((s) => s !== '.' && s !== '..', 'a plain file name'),
  }),
]);
export type SelectionSpec = z.infer<typeof selectionSpec>;

/** A one-time token of a session the server opened on a storage node (256 bits, base64url). */
const sessionToken = z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'a session token');

/**
 * Where a remote agent sends a backup: a storage node's data address and the session the server
 * opened there. The agent holds no repository key; the node encrypts, packs and commits.
 */
export const remoteAccess = z.strictObject({
  /** host:port of the node's data service ([v6]:port for IPv6). */
  address: z.string().min(3).max(300),
  session: sessionToken,
  /** The node's name: its certificate must say it. */
  node: name,
});
export type RemoteAccess = z.infer<typeof remoteAccess>;

export const backupSpec = z.strictObject({
  /** The repository to write (an agent that holds its keys: the embedded one), or... */
  storage: storageAccess.optional(),
  /** ...the storage node session to send to (source-side deduplication). */
  remote: remoteAccess.optional(),
  selection: selectionSpec,
  /** A snapshot id to compare with, or 'none' for a full read. */
  parent: z.union([z.literal('none'), z.string().regex(/^[0-9a-f]{64}$/)]),
  tags: z.array(z.string().min(1).max(255)).max(100).optional(),
  /** The client's name as the server knows it (recorded as the snapshot's host name). */
  client: name,
  pre: command.optional(),
  post: command.optional(),
});
export type BackupSpec = z.infer<typeof backupSpec>;

/** A storage node's side of a remote agent's backup: the session it serves (node/service.ts). */
export const nodeBackupSpec = z.strictObject({
  storage: storageAccess,
  session: sessionToken,
  client: name,
  parent: z.union([z.literal('none'), z.string().regex(/^[0-9a-f]{64}$/)]),
  tags: z.array(z.string().min(1).max(255)).max(100),
});
export type NodeBackupSpec = z.infer<typeof nodeBackupSpec>;

export const restoreSpec = z.strictObject({
  /** The repository to read (an agent that holds its keys: the embedded one), or... */
  storage: storageAccess.optional(),
  /** ...the storage node session that serves the snapshot (an agent without repository keys). */
  remote: remoteAccess.optional(),
  snapshot: z.string().regex(/^[0-9a-f]{64}$/),
  targetPath: path,
  include: z.array(z.string().min(1).max(4096)).max(10_000).optional(),
  exclude: z.array(z.string().min(1).max(4096)).max(10_000).optional(),
  overwrite: z.enum(['never', 'if-changed', 'always']).optional(),
  dryRun: z.boolean().optional(),
  force: z.boolean().optional(),
  confirmHost: z.string().max(255).optional(),
  /** The storage unit `storage` is, for the report of where the data came from. */
  unit: name.optional(),
  /**
   * The same snapshot in other copies (other storage units), best first: a chunk that cannot be
   * read from `storage` is read from them (src/jobs/restore-fallback.ts).
   */
  alternates: z.array(z.strictObject({ storage: storageAccess, snapshot: z.string().regex(/^[0-9a-f]{64}$/), unit: name })).max(32).optional(),
}).refine((s) => (s.storage === undefined) !== (s.remote === undefined), { message: 'give exactly one of storage and remote', path: ['remote'] })
  .refine((s) => !(s.remote && s.alternates?.length), { message: 'alternates are read with a repository\'s keys: a restore through a storage node has none', path: ['alternates'] });
export type RestoreSpec = z.infer<typeof restoreSpec>;

/** A storage node's side of a remote agent's restore: the session that serves one snapshot (node/restore-session.ts). */
export const nodeRestoreSpec = z.strictObject({
  storage: storageAccess,
  session: sessionToken,
  /** The client whose agent connects (the restore's target host). */
  client: name,
  snapshot: z.string().regex(/^[0-9a-f]{64}$/),
});
export type NodeRestoreSpec = z.infer<typeof nodeRestoreSpec>;

export const snapshotsSpec = z.strictObject({ storage: storageAccess });
export type SnapshotsSpec = z.infer<typeof snapshotsSpec>;

export const forgetSpec = z.strictObject({
  storage: storageAccess,
  snapshots: z.array(z.string().regex(/^[0-9a-f]{64}$/)).max(1_000_000),
  prune: z.boolean(),
});
export type ForgetSpec = z.infer<typeof forgetSpec>;

export const initSpec = z.strictObject({
  storage: storageAccess,
  /** The master key (base64, 32 bytes) of the deduplication domain the new repository joins; a fresh one when absent. */
  master: z.string().regex(/^[A-Za-z0-9+/]{43}=$/, 'the base64 of 32 bytes').optional(),
});
export type InitSpec = z.infer<typeof initSpec>;

export const probeSpec = z.strictObject({
  /** Paths that must exist and be readable on the client. */
  paths: z.array(path).max(10_000).optional(),
  /** A storage unit that must take a write (an object written and deleted again). */
  storage: storageAccess.optional(),
});
export type ProbeSpec = z.infer<typeof probeSpec>;

export const listSpec = z.strictObject({
  storage: storageAccess,
  snapshot: z.string().regex(/^[0-9a-f]{64}$/),
  path: z.string().max(4096),
  limit: z.number().int().positive().max(100_000),
  /** The name after which to continue a listing (entries are in name order). */
  after: z.string().max(4096).optional(),
});
export type ListSpec = z.infer<typeof listSpec>;

export const findSpec = z.strictObject({
  storage: storageAccess,
  snapshots: z.array(z.string().regex(/^[0-9a-f]{64}$/)).min(1).max(100_000),
  pattern: z.string().min(1).max(4096),
  limit: z.number().int().positive().max(100_000),
});
export type FindSpec = z.infer<typeof findSpec>;

/**
 * Clone snapshots from `source` to one repository (`target`, the first form) or to several at
 * once (`targets`: each pack or blob read once for all that lack it): exactly one of the two.
 */
export const cloneSpec = z.strictObject({
  source: storageAccess,
  target: storageAccess.optional(),
  targets: z.array(storageAccess).min(1).max(16).optional(),
  snapshots: z.array(z.string().regex(/^[0-9a-f]{64}$/)).min(1).max(10_000),
}).refine((s) => (s.target === undefined) !== (s.targets === undefined), { message: 'give exactly one of target and targets', path: ['targets'] });
export type CloneSpec = z.infer<typeof cloneSpec>;

/** A range of pack-id prefixes (src/repository/pack-slice.ts): [start, start + length) modulo 2^32. */
const packSlice = z.strictObject({
  start: z.number().int().min(0).max(0xffff_ffff),
  length: z.number().int().min(1).max(0x1_0000_0000),
});

export const verifySpec = z.strictObject({
  storage: storageAccess,
  /** The packs to read back (default: all). */
  slice: packSlice.optional(),
  /** Only packs holding blobs of these snapshots (one image's copy). */
  snapshots: z.array(z.string().regex(/^[0-9a-f]{64}$/)).min(1).max(10_000).optional(),
});
export type VerifySpec = z.infer<typeof verifySpec>;

export const repairSpec = z.strictObject({
  storage: storageAccess,
  /** The damaged packs to take out of use (full ids); default: every pack with recorded damage. */
  packs: z.array(z.string().regex(/^[0-9a-f]{64}$/)).max(100_000).optional(),
});
export type RepairSpec = z.infer<typeof repairSpec>;
/** How many bytes a repository holds in storage (every object, all kinds): a stage's high-water mark. */
export const usageSpec = z.strictObject({ storage: storageAccess });
export type UsageSpec = z.infer<typeof usageSpec>;
/** Checks restored files against a snapshot (a restore test; src/jobs/compare.ts). */
export const compareSpec = z.strictObject({
  storage: storageAccess,
  snapshot: z.string().regex(/^[0-9a-f]{64}$/),
  /** Where the snapshot was restored to on this host. */
  root: path,
  /** Only these paths of the snapshot (a sample); default: all of it. */
  paths: z.array(z.string().min(1).max(4096)).max(100_000).optional(),
});
export type CompareSpec = z.infer<typeof compareSpec>;

/** Creates or removes a restore test's scratch directory `name` below `base` (src/agent/scratch.ts). */
export const scratchSpec = z.strictObject({
  action: z.enum(['create', 'remove']),
  base: path,
  name: z.string().min(1).max(255),
});
export type ScratchSpec = z.infer<typeof scratchSpec>;
export const lockExtendSpec = z.strictObject({
  storage: storageAccess,
  /** Each live snapshot with the date until which what it needs must stay locked (ms since the epoch). */
  targets: z.array(z.strictObject({ snapshot: z.string().regex(/^[0-9a-f]{64}$/), until: z.number().int().positive() })).max(1_000_000),
});
export type LockExtendSpec = z.infer<typeof lockExtendSpec>;

export const JOB_SPECS = {
  backup: backupSpec,
  restore: restoreSpec,
  snapshots: snapshotsSpec,
  forget: forgetSpec,
  init: initSpec,
  probe: probeSpec,
  list: listSpec,
  find: findSpec,
  clone: cloneSpec,
  verify: verifySpec,
  repair: repairSpec,
  usage: usageSpec,
  compare: compareSpec,
  scratch: scratchSpec,
  'lock-extend': lockExtendSpec,
  'node-backup': nodeBackupSpec,
  'node-restore': nodeRestoreSpec,
} as const;
export type AgentJobKind = keyof typeof JOB_SPECS;
export type AgentJobSpec<K extends AgentJobKind> = z.infer<(typeof JOB_SPECS)[K]>;
export const AGENT_JOB_KINDS = Object.keys(JOB_SPECS) as AgentJobKind[];

/** How a job ended, as the agent saw it (the server maps these onto catalog states). */
export type DoneState = 'succeeded' | 'warnings' | 'failed' | 'cancelled';

export interface JobError {
  code: string;
  message: string;
  hint?: string;
}

const jobId = z.string().min(1).max(64);
const errorShape = z.strictObject({ code: z.string().max(64), message: z.string().max(65536), hint: z.string().max(65536).optional() });

const agentInfo = z.strictObject({ name, version: z.string().max(64), host: z.record(z.string(), z.unknown()) });

/** Why a connection was refused, for the agent to decide what to do (stop for good, or retry). */
export const REFUSAL_CODES = ['REVOKED', 'PROTOCOL', 'IDENTITY', 'ENROLL'] as const;
export type RefusalCode = (typeof REFUSAL_CODES)[number];
const pem = z.string().min(1).max(65536);

const toAgent = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('welcome'), protocol: z.number().int(), pingMs: z.number().int().positive().optional() }),
  z.strictObject({ t: z.literal('refuse'), reason: z.string().max(65536), code: z.enum(REFUSAL_CODES).optional() }),
  z.strictObject({ t: z.literal('enrolled'), certificate: pem, ca: pem, name, role: z.enum(['agent', 'node']) }),
  z.strictObject({ t: z.literal('renewed'), certificate: pem.optional(), reason: z.string().max(65536).optional() }),
  z.strictObject({ t: z.literal('job.start'), job: jobId, kind: z.string().max(64), spec: z.unknown() }),
  z.strictObject({ t: z.literal('job.cancel'), job: jobId }),
  z.strictObject({ t: z.literal('ping'), n: z.number().int() }),
]);

const toServer = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('hello'), protocol: z.number().int(), agent: agentInfo }),
  z.strictObject({ t: z.literal('enroll'), protocol: z.number().int(), token: z.string().min(1).max(1024), csr: pem, role: z.enum(['agent', 'node']), name: name.optional() }),
  z.strictObject({ t: z.literal('renew'), csr: pem }),
  z.strictObject({ t: z.literal('job.event'), job: jobId, event: z.unknown() }),
  z.strictObject({
    t: z.literal('job.done'),
    job: jobId,
    state: z.enum(['succeeded', 'warnings', 'failed', 'cancelled']),
    result: z.record(z.string(), z.unknown()).optional(),
    error: errorShape.optional(),
  }),
  z.strictObject({ t: z.literal('pong'), n: z.number().int(), load: nodeLoad.optional() }),
]);

export type ToAgent = z.infer<typeof toAgent>;
export type ToServer =
  | Exclude<z.infer<typeof toServer>, { t: 'job.event' }>
  | { t: 'job.event'; job: string; event: JobEvent };

function describe(error: z.ZodError): string {
  return error.issues.slice(0, 3).map((i) => `${i.path.length ? i.path.join('.') : 'message'}: ${i.message}`).join('; ');
}

/** A line from the server, checked; PROTOCOL when it is not a message of this version. */
export function parseToAgent(line: string): ToAgent {
  const r = toAgent.safeParse(parseJson(line));
  if (!r.success) throw protocolError(`a bad message from the server (${describe(r.error)})`);
  return r.data;
}

/** A line from an agent, checked; PROTOCOL when it is not a message of this version. */
export function parseToServer(line: string): ToServer {
  const r = toServer.safeParse(parseJson(line));
  if (!r.success) throw protocolError(`a bad message from the agent (${describe(r.error)})`);
  if (r.data.t === 'job.event') {
    const problem = jobEventProblem(r.data.event);
    if (problem) throw protocolError(`a bad job event from the agent (${problem})`);
  }
  return r.data as ToServer;
}

/** A job's spec, checked against its kind's schema; USAGE naming the field otherwise. */
export function parseJobSpec<K extends AgentJobKind>(kind: K, spec: unknown): AgentJobSpec<K> {
  const schema = JOB_SPECS[kind];
  if (!schema) throw new CofferError('UNSUPPORTED', `Cannot run a job of kind ${JSON.stringify(kind)}: this agent runs ${AGENT_JOB_KINDS.join(', ')}`);
  const r = schema.safeParse(spec);
  if (!r.success) throw new CofferError('USAGE', `Cannot run the ${kind} job: its spec is invalid (${describe(r.error)})`);
  return r.data as AgentJobSpec<K>;
}

export function isJobKind(kind: string): kind is AgentJobKind {
  return Object.hasOwn(JOB_SPECS, kind);
}

function parseJson(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    throw protocolError(`a line that is not JSON (${JSON.stringify(line.slice(0, 80))})`);
  }
}

function protocolError(what: string): CofferError {
  return new CofferError('PROTOCOL', `Agent protocol error: ${what}`, { hint: 'The server and the agent must be the same Coffer release; update the older one.' });
}

/** What an agent of another protocol version is told. */
export function refusalFor(protocol: number): string | undefined {
  if (protocol === PROTOCOL_VERSION) return undefined;
  return protocol < PROTOCOL_VERSION
    ? `This server speaks agent protocol ${PROTOCOL_VERSION}; the agent speaks ${protocol}. Update the agent to the server's Coffer release.`
    : `This server speaks agent protocol ${PROTOCOL_VERSION}; the agent speaks ${protocol}, which is newer. Update the server first, then the agents.`;
}

/**
 * Splits a byte stream into lines and hands each complete one to `onLine`. A line longer than
 * MAX_LINE is a protocol error (the peer is broken or hostile), reported through onError once;
 * the reader then ignores the rest of the stream.
 */
export class LineReader {
  private parts: Buffer[] = [];
  private size = 0;
  private failed = false;
  private readonly onLine: (line: string) => void;
  private readonly onError: (e: CofferError) => void;

  constructor(onLine: (line: string) => void, onError: (e: CofferError) => void) {
    this.onLine = onLine;
    this.onError = onError;
  }

  push(chunk: Buffer): void {
    if (this.failed) return;
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      if (nl < 0) break;
      const piece = chunk.subarray(start, nl);
      const line = this.size ? Buffer.concat([...this.parts, piece]).toString('utf8') : piece.toString('utf8');
      this.parts = [];
      this.size = 0;
      start = nl + 1;
      if (line.length > 0) this.onLine(line);
      if (this.failed) return;
    }
    if (start < chunk.length) {
      this.size += chunk.length - start;
      if (this.size > MAX_LINE) {
        this.failed = true;
        this.parts = [];
        this.onError(protocolError(`a line longer than ${MAX_LINE} bytes`));
        return;
      }
      this.parts.push(Buffer.from(chunk.subarray(start)));
    }
  }

  /** Stops reading (after a protocol error the caller found in a line). */
  stop(): void {
    this.failed = true;
    this.parts = [];
  }
}

export function encodeMessage(message: ToAgent | ToServer): string {
  return JSON.stringify(message) + '\n';
}
