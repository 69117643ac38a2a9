// The --json output contract, in code: the shape of every JSON line the CLI prints, which
// commands print which lines, and checkJsonOutput(), which tests run on every command's output.
// docs/json.md is the same contract in prose; a change here needs a change there (a test checks
// that every type and command is named in it).
//
// Objects are strict: a field the schema does not know fails the tests, so that nothing reaches
// users without being documented. The exceptions are objects that mirror what the repository
// stores (a snapshot, the repository config, a host identity): they are checked for the
// documented fields and may carry more (z.object lets unknown keys through), so that a new field
// in the repository format does not need a CLI change. Consumers must ignore unknown fields.
import { z } from 'zod';
import { ERROR_CODES, EXIT_CODES } from '../core/errors.ts';
import { NODE_TYPES } from '../repository/tree.ts';

const id = z.string().regex(/^[0-9a-f]{64}$/, 'a 64-digit hex id');
const count = z.number().int().nonnegative();
const time = z.string().min(1);

const host = z.object({ hostname: z.string(), os: z.string(), osRelease: z.string().optional(), arch: z.string(), machineId: z.string().optional() });

/** The fields of a tree node that `ls` and `find` print (`nodeType` is the node's own type). */
const nodeFields = {
  path: z.string(),
  name: z.string(),
  rawName: z.string().optional(),
  nodeType: z.enum(NODE_TYPES),
  mode: count,
  permissions: z.string().length(10),
  uid: count,
  gid: count,
  user: z.string().optional(),
  group: z.string().optional(),
  size: count.optional(),
  mtime: time,
  mtimeNs: z.string().regex(/^-?\d+$/),
  linkTarget: z.string().optional(),
  links: count.optional(),
  sparse: z.literal(true).optional(),
};

/** The API's objects (docs/server.md), as the server-side commands print them. */
const apiDocument = z.looseObject({ apiVersion: z.string(), kind: z.string(), metadata: z.looseObject({ name: z.string() }) });
const apiJob = z.looseObject({
  id: z.string(),
  kind: z.string(),
  state: z.enum(['queued', 'running', 'succeeded', 'warnings', 'failed', 'cancelled', 'interrupted', 'missed']),
  client: z.string().optional(),
  policy: z.string().optional(),
  queued: count,
  started: count.optional(),
  ended: count.optional(),
  result: z.record(z.string(), z.unknown()).optional(),
  error: z.record(z.string(), z.unknown()).optional(),
});
const apiImage = z.looseObject({ id: z.string(), client: z.string(), policy: z.string(), level: z.string(), time: count, state: z.string(), streams: z.record(z.string(), z.string()) });
// Never a password hash nor a token's hash: the checks say so.
const apiUser = z.looseObject({ name: z.string(), role: z.string(), created: count }).refine((u) => !('passwordHash' in u), 'a user must not carry its password hash');
const apiAlert = z.looseObject({ id: z.string(), time: count, kind: z.string(), severity: z.enum(['error', 'warning']), state: z.enum(['open', 'acknowledged', 'resolved']), images: z.array(z.string()), message: z.string(), storageUnit: z.string().optional(), hint: z.string().optional() });
/** A storage unit with its availability (`units`). */
const apiUnit = z.looseObject({ name: z.string(), url: z.string(), priority: z.number().int(), offsite: z.boolean(), available: z.boolean(), reason: z.string().optional(), since: count.optional(), by: z.string().optional() })
  .refine((u) => u.available === (u.reason === undefined), 'an unavailable unit says why, an available one does not');
const apiToken = z.looseObject({ id: z.string(), name: z.string(), user: z.string(), kind: z.string(), created: count }).refine((t) => !('hash' in t) && !('token' in t), 'a listed token must not carry its secret or hash');

/** Every line a command prints before its final line, by `type`. */
export const EVENT_LINES = {
  progress: z.strictObject({
    type: z.literal('progress'),
    message: z.string().optional(),
    files: count.optional(),
    dirs: count.optional(),
    bytesScanned: count.optional(),
    bytesRead: count.optional(),
    bytesNew: count.optional(),
    bytesTotal: count.optional(),
    currentPath: z.string().optional(),
  }),
  // A warning is about a path (backup, restore) or a whole snapshot that could not be read.
  warning: z.strictObject({ type: z.literal('warning'), path: z.string().optional(), snapshot: id.optional(), problem: z.string() }),
  notice: z.strictObject({ type: z.literal('notice'), snapshot: id.optional(), message: z.string() }),
  hosts: z.strictObject({ type: z.literal('hosts'), snapshot: id, time, source: host, target: host, targetPath: z.string() }),
  entry: z.strictObject({
    type: z.literal('entry'),
    action: z.enum(['create', 'overwrite', 'metadata', 'unchanged', 'skip']),
    path: z.string(),
    nodeType: z.enum([...NODE_TYPES, 'hardlink']),
    size: count.optional(),
    reason: z.string().optional(),
    dryRun: z.boolean(),
  }),
  node: z.strictObject({ type: z.literal('node'), ...nodeFields }),
  match: z.strictObject({ type: z.literal('match'), snapshot: id, time, hostname: z.string(), ...nodeFields }),
  change: z.strictObject({
    type: z.literal('change'),
    change: z.enum(['added', 'removed', 'modified', 'metadata']),
    path: z.string(),
    nodeType: z.enum(NODE_TYPES),
    what: z.array(z.string()).optional(),
  }),
  snapshot: z.object({
    type: z.literal('snapshot'),
    id,
    version: z.number().int(),
    time,
    tree: id,
    paths: z.array(z.string()),
    host,
    username: z.string(),
    tags: z.array(z.string()),
    parent: id.optional(),
    program: z.string(),
    summary: z.object({
      filesNew: count,
      filesChanged: count,
      filesUnchanged: count,
      dirs: count,
      bytesScanned: count,
      bytesRead: count.optional(),
      bytesNew: count,
      bytesStored: count,
      blobsNew: count,
      warnings: count,
      durationMs: count,
    }).optional(),
    warnings: z.array(z.object({ path: z.string(), problem: z.string() })).optional(),
  }),
  key: z.strictObject({ type: z.literal('key'), id, current: z.boolean(), created: time, username: z.string(), hostname: z.string() }),
  // time, hostname and paths when the snapshot was read (not when it is removed by id: it may be damaged).
  forget: z.strictObject({ type: z.literal('forget'), snapshot: id, time: time.optional(), hostname: z.string().optional(), paths: z.array(z.string()).optional(), dryRun: z.boolean() }),
  problem: z.strictObject({
    type: z.literal('problem'),
    severity: z.enum(['error', 'warning']),
    kind: z.string(),
    message: z.string(),
    pack: z.string().optional(),
    blob: z.string().optional(),
    snapshot: z.string().optional(),
    path: z.string().optional(),
  }),
  affected: z.strictObject({ type: z.literal('affected'), snapshot: id, path: z.string(), blob: id }),
  check: z.strictObject({ type: z.literal('check'), name: z.string(), ok: z.boolean(), ms: z.number().nonnegative(), error: z.string().optional() }),
  // The server-side commands (API clients) print the API's objects inside their lines, checked
  // for the documented fields: the server may add fields (docs/server.md).
  apply: z.strictObject({
    type: z.literal('apply'),
    id: z.string(),
    kind: z.string(),
    name: z.string(),
    action: z.enum(['created', 'changed', 'unchanged', 'deleted']),
    fields: z.array(z.string()).optional(),
    diff: z.string().optional(),
    dryRun: z.boolean(),
  }),
  document: z.strictObject({ type: z.literal('document'), document: apiDocument }),
  schedule: z.strictObject({ type: z.literal('schedule'), schedule: z.looseObject({ policy: z.string(), client: z.string(), name: z.string(), level: z.string(), runs: z.array(z.looseObject({ slot: z.number(), start: z.number(), end: z.number() })) }) }),
  client: z.strictObject({ type: z.literal('client'), client: z.looseObject({ name: z.string(), connected: z.boolean() }), document: apiDocument.optional() }),
  job: z.strictObject({ type: z.literal('job'), job: apiJob }),
  log: z.strictObject({ type: z.literal('log'), job: z.string(), seq: count, time: count, level: z.string(), message: z.string(), data: z.record(z.string(), z.unknown()).optional() }),
  jobProgress: z.strictObject({ type: z.literal('jobProgress'), job: z.string(), progress: z.record(z.string(), z.unknown()) }),
  image: z.strictObject({ type: z.literal('image'), image: apiImage }),
  revision: z.strictObject({ type: z.literal('revision'), revision: z.looseObject({ kind: z.string(), name: z.string(), revision: count, applied: count, appliedBy: z.string().optional(), document: z.looseObject({ kind: z.string() }).optional() }) }),
  found: z.strictObject({ type: z.literal('found'), image: z.string(), snapshot: id, time, path: z.string(), nodeType: z.string(), size: count }),
  browseEntry: z.strictObject({ type: z.literal('browseEntry'), entry: z.looseObject({ path: z.string(), name: z.string(), type: z.string(), size: count.optional(), mtimeNs: z.string().optional() }) }),
  user: z.strictObject({ type: z.literal('user'), user: apiUser }),
  token: z.strictObject({ type: z.literal('token'), token: apiToken }),
  alert: z.strictObject({ type: z.literal('alert'), alert: apiAlert }),
  audit: z.strictObject({ type: z.literal('audit'), entry: z.looseObject({ id: count, time: count, actor: z.string(), action: z.string(), outcome: z.enum(['ok', 'denied', 'failed']), target: z.string().optional() }) }),
  unit: z.strictObject({ type: z.literal('unit'), unit: apiUnit }),
  // `report compliance`: one line per (policy, client), then one per image on legal hold.
  compliance: z.strictObject({
    type: z.literal('compliance'),
    policy: z.string(),
    client: z.string(),
    status: z.enum(['ok', 'out']),
    problems: z.array(z.string()),
    lastBackup: z.strictObject({ image: z.string(), time: count, ageMs: z.number().int() }).nullable(),
    rpoMs: count.nullable(),
    restoreTest: z.strictObject({
      job: z.string(), state: z.string(), time: count.nullable(), image: z.string().nullable(), restoreMs: count.nullable(),
      sample: z.union([z.literal('all'), count]).nullable(), passed: z.boolean(), withinRto: z.boolean().nullable(),
    }).nullable(),
    rtoMs: count.nullable(),
    copies: z.array(z.strictObject({ storageUnit: z.string(), operation: z.string(), windowed: z.boolean(), images: count, oldestImage: z.string(), oldestTime: count })),
    offsite: z.strictObject({ images: count, oldestImage: z.string().nullable(), oldestTime: count.nullable() }).nullable(),
  }).refine((r) => (r.status === 'out') === (r.problems.length > 0), 'status is out exactly when there are problems'),
  held: z.strictObject({ type: z.literal('held'), image: z.string(), client: z.string(), policy: z.string(), time: count, reason: z.string(), copies: count }),
} as const;

export type EventType = keyof typeof EVENT_LINES;
/** A line a command prints while it runs or lists (Output.event, item and render take these). */
export type EventLine = { [K in EventType]: z.infer<(typeof EVENT_LINES)[K]> }[EventType];

const exitCode = z.number().int().nonnegative();
/** The final lines: exactly one of them ends every run, and it carries the process exit code. */
export const FINAL_LINES = {
  /**
   * Success (exitCode 0) or completed with warnings (3); the fields depend on the command. A few
   * commands end with a summary and another exit code that is their answer, not an error
   * (`diff`: 1 when there are changes; commands that wait for a job: how it ended).
   */
  summary: z.looseObject({ type: z.literal('summary'), exitCode }),
  error: z.strictObject({
    type: z.literal('error'),
    code: z.enum(ERROR_CODES),
    message: z.string().min(1),
    hint: z.string().optional(),
    details: z.record(z.string(), z.unknown()).optional(),
    exitCode,
  }),
  help: z.strictObject({ type: z.literal('help'), text: z.string().min(1), exitCode: z.literal(0) }),
  version: z.strictObject({ type: z.literal('version'), version: z.string().min(1), exitCode: z.literal(0) }),
} as const;

export type FinalType = keyof typeof FINAL_LINES;
export const LINE_TYPES = [...Object.keys(EVENT_LINES), ...Object.keys(FINAL_LINES)] as Array<EventType | FinalType>;

const restoreCounts = z.strictObject({ files: count, dirs: count, symlinks: count, hardlinks: count, special: count, bytes: count });
const summary = <S extends z.ZodRawShape>(shape: S) => z.strictObject({ type: z.literal('summary'), exitCode: z.union([z.literal(0), z.literal(3)]), ...shape });
/** The summary of a command that waited for jobs: exit 0 succeeded, 3 warnings, 1 failed (or interrupted, missed), 130 cancelled. */
const jobsSummary = z.strictObject({ type: z.literal('summary'), exitCode: z.union([z.literal(0), z.literal(1), z.literal(3), z.literal(130)]), jobs: z.array(apiJob) });
const JOB_LINES: EventType[] = [];

export interface CommandOutput {
  /** The event lines the command may print before its final line. */
  events: EventType[];
  /** Its summary line; null for a command that refuses --json (it only ever ends with an error). */
  summary: z.ZodType | null;
}

const repairIndexSummary = summary({
  kind: z.literal('index'),
  dryRun: z.boolean(),
  packs: count,
  blobs: count,
  damagedPacks: z.array(z.strictObject({ pack: id, error: z.string(), blobsKnown: count, blobsKept: count })),
  missingPacks: z.array(id),
  indexFilesWritten: count,
  indexFilesRemoved: count,
  indexFilesQuarantined: z.array(id),
  lostFiles: count,
  warnings: count,
  report: z.string().optional(),
});

const fingerprintHex = z.string().regex(/^[0-9a-f]{64}$/, 'a SHA-256 fingerprint: 64 hex digits');
const enrollmentSummary = (role: 'agent' | 'node') => summary({
  id: z.string(), name: z.string(), role: z.literal(role), token: z.string().startsWith('cen_'), expires: count, caFingerprint: fingerprintHex, server: z.string(),
  command: z.string().startsWith(`coffer ${role} enroll `),
});
const revokeSummary = (role: 'agent' | 'node') => summary({ name: z.string(), role: z.literal(role), certificates: count, enrollments: count, disconnected: z.boolean() });
const enrolledSummary = (role: 'agent' | 'node') => summary({ name: z.string(), role: z.literal(role), server: z.string(), caFingerprint: fingerprintHex, trust: z.enum(['given', 'first-use']), notAfter: count, stateDir: z.string() });

/** Every command of the CLI (its path below `coffer`) and what it prints with --json. */
export const COMMAND_OUTPUT: Record<string, CommandOutput> = {
  'repo init': {
    events: [],
    summary: summary({
      id,
      location: z.string(),
      config: z.object({ version: z.number().int(), id, created: time, chunker: z.object({ minSize: count, avgSize: count, maxSize: count }), imageChunkSize: count, compressionLevel: count, packSize: count }),
    }),
  },
  'repo key list': { events: ['key'], summary: summary({ keys: count }) },
  'repo key add': { events: [], summary: summary({ id }) },
  'repo key remove': { events: [], summary: summary({ removed: id }) },
  'repo backup': {
    events: ['progress', 'warning', 'notice'],
    summary: summary({
      snapshot: id.optional(),
      parent: id.optional(),
      dryRun: z.boolean(),
      filesNew: count,
      filesChanged: count,
      filesUnchanged: count,
      dirs: count,
      bytesScanned: count,
      bytesRead: count,
      bytesNew: count,
      bytesStored: count,
      blobsNew: count,
      warnings: count,
      durationMs: count,
    }),
  },
  'repo restore': {
    events: ['hosts', 'notice', 'entry', 'warning'],
    summary: summary({
      snapshot: id,
      target: z.string(),
      dryRun: z.boolean(),
      created: restoreCounts,
      overwritten: restoreCounts,
      metadataRestored: restoreCounts,
      unchanged: restoreCounts,
      compare: z.enum(['size-mtime', 'content']),
      skipped: restoreCounts,
      warnings: count,
      staleTemps: z.strictObject({ removed: count, kept: count }),
    }),
  },
  'repo ls': { events: ['notice', 'node'], summary: summary({ snapshot: id, path: z.string(), entries: count }) },
  'repo find': { events: ['warning', 'match'], summary: summary({ pattern: z.string(), matches: count, snapshots: count, searched: count, warnings: count }) },
  'repo diff': { events: ['notice', 'change'], summary: summary({ from: id, to: id, added: count, removed: count, modified: count, metadata: count }) },
  // The file's bytes are the output: --json is refused (docs/json.md).
  'repo dump': { events: [], summary: null },
  'agent stdio': { events: [], summary: null },
  server: { events: [], summary: null },
  'repo snapshots': { events: ['warning', 'snapshot'], summary: summary({ snapshots: count, warnings: count }) },
  'repo forget': { events: ['notice', 'forget'], summary: summary({ removed: count, dryRun: z.boolean() }) },
  'repo check': {
    events: ['progress', 'problem', 'affected'],
    summary: summary({
      ok: z.literal(true),
      readData: z.boolean(),
      stats: z.strictObject({ snapshots: count, trees: count, indexFiles: count, packs: count, blobs: count, packsRead: count, bytesRead: count }),
      problems: count,
      damageRecorded: id.optional(),
      damageCleared: z.array(id),
      advice: z.array(z.string()),
    }),
  },
  'repo prune': {
    events: ['progress'],
    summary: summary({
      dryRun: z.boolean(),
      packsCondemned: count,
      bytesCondemned: count,
      packsRepacked: count,
      blobsRepacked: count,
      packsDeleted: count,
      bytesDeleted: count,
      indexFilesDeleted: count,
      packsKept: count,
      plansWaiting: count,
    }),
  },
  'repo repair index': { events: ['progress', 'warning'], summary: repairIndexSummary },
  'repo rebuild-index': { events: ['progress', 'warning'], summary: repairIndexSummary },
  'repo repair packs': {
    events: ['progress', 'warning'],
    summary: summary({
      kind: z.literal('packs'),
      dryRun: z.boolean(),
      packs: z.array(z.strictObject({ pack: id, problem: z.string(), blobs: count, salvaged: count, elsewhere: count, lost: count, quarantined: z.boolean() })),
      blobsSalvaged: count,
      blobsLost: count,
      indexFilesWritten: count,
      damageRecordsRetired: count,
      lostFiles: count,
      warnings: count,
      report: z.string().optional(),
    }),
  },
  'repo repair snapshots': {
    events: ['progress', 'warning'],
    summary: summary({
      kind: z.literal('snapshots'),
      dryRun: z.boolean(),
      repaired: z.array(z.strictObject({ snapshot: id, replacement: id.optional(), lostFiles: count, forgotten: z.boolean() })),
      unreadable: z.array(z.strictObject({ snapshot: id, error: z.string(), quarantined: z.boolean() })),
      recovered: z.array(z.strictObject({ snapshot: id.optional(), tree: id, entries: count })),
      lostFiles: count,
      warnings: count,
      report: z.string().optional(),
    }),
  },
  'repo repair config': {
    events: [],
    summary: summary({
      kind: z.literal('config'),
      dryRun: z.boolean(),
      copies: z.array(z.strictObject({ name: z.string(), ok: z.boolean(), problem: z.string().optional() })),
      rewritten: z.array(z.string()),
    }),
  },
  'storage validate': { events: ['check'], summary: summary({ location: z.string(), passed: count, failed: z.literal(0) }) },
  login: { events: [], summary: summary({ server: z.string(), user: z.string(), role: z.string(), expires: count, loginFile: z.string() }) },
  logout: { events: [], summary: summary({ loggedOut: z.boolean(), server: z.string().optional(), revoked: z.boolean().optional(), loginFile: z.string().optional() }) },
  apply: { events: ['apply', 'problem'], summary: summary({ created: count, changed: count, unchanged: count, problems: count, dryRun: z.boolean() }) },
  diff: {
    events: ['apply', 'problem'],
    summary: z.strictObject({ type: z.literal('summary'), exitCode: z.union([z.literal(0), z.literal(1)]), created: count, changed: count, unchanged: count, problems: count })
      .refine((s) => (s.exitCode === 1) === (s.created + s.changed > 0), 'exitCode is 1 exactly when something would be created or changed'),
  },
  get: {
    events: ['document', 'client', 'schedule', 'job', 'image'],
    summary: z.union([summary({ kind: z.string(), count }), summary({ jobs: count }), summary({ images: count })]),
  },
  delete: { events: [], summary: summary({ deleted: z.string() }) },
  'backup now': { events: JOB_LINES, summary: jobsSummary },
  'jobs list': { events: ['job'], summary: summary({ jobs: count }) },
  'jobs show': { events: [], summary: summary({ job: apiJob }) },
  'jobs logs': { events: ['log', 'jobProgress'], summary: summary({ job: z.string(), state: z.string(), lines: count }) },
  'jobs cancel': { events: [], summary: summary({ job: apiJob }) },
  'jobs wait': { events: JOB_LINES, summary: jobsSummary },
  'jobs retry': { events: JOB_LINES, summary: jobsSummary },
  images: { events: ['image'], summary: summary({ images: count }) },
  clone: { events: [], summary: summary({ to: z.array(z.string()), copies: count, dryRun: z.boolean(), images: count, skipped: count, jobs: z.array(z.string()) }) },
  hold: { events: [], summary: summary({ image: z.string(), reason: z.string(), copies: count }) },
  release: { events: [], summary: summary({ image: z.string(), copies: count }) },
  history: { events: ['revision'], summary: summary({ kind: z.string(), name: z.string(), revisions: count }) },
  find: { events: ['found', 'warning'], summary: summary({ pattern: z.string(), client: z.string(), matches: count, more: z.boolean(), imagesSearched: count, warnings: count }) },
  browse: { events: ['browseEntry'], summary: summary({ image: z.string(), stream: z.string(), streams: z.array(z.string()), path: z.string(), entries: count }) },
  restore: { events: JOB_LINES, summary: jobsSummary },
  'users list': { events: ['user'], summary: summary({ users: count }) },
  'users add': { events: [], summary: summary({ user: apiUser }) },
  'users set': { events: [], summary: summary({ user: apiUser }) },
  'users remove': { events: [], summary: summary({ deleted: z.string() }) },
  'tokens list': { events: ['token'], summary: summary({ tokens: count }) },
  'tokens create': { events: [], summary: summary({ id: z.string(), name: z.string(), role: z.string(), token: z.string().startsWith('cof_'), expires: count.optional() }) },
  'tokens revoke': { events: [], summary: summary({ revoked: z.string() }) },
  audit: { events: ['audit'], summary: summary({ entries: count }) },
  'catalog reconcile': { events: JOB_LINES, summary: jobsSummary },
  'units list': { events: ['unit'], summary: summary({ units: count, unavailable: count }) },
  'units unavailable': { events: [], summary: summary({ unit: apiUnit }) },
  'units available': { events: [], summary: summary({ unit: apiUnit, changed: z.boolean() }) },
  'restore-test': { events: JOB_LINES, summary: jobsSummary },
  // Exit 0 when everything complies, 6 (COMPLIANCE) when something does not: the answer, not an error.
  'report compliance': {
    events: ['compliance', 'held'],
    summary: z.strictObject({
      type: z.literal('summary'), exitCode: z.union([z.literal(0), z.literal(EXIT_CODES.COMPLIANCE)]),
      compliant: z.boolean(), time: count, policies: count, clients: count, outOfCompliance: count, holds: count,
    }).refine((s) => (s.exitCode === 0) === s.compliant && s.compliant === (s.outOfCompliance === 0), 'exitCode is 0 exactly when compliant, which is when nothing is out of compliance'),
  },
  expire: { events: JOB_LINES, summary: jobsSummary },
  verify: { events: JOB_LINES, summary: jobsSummary },
  'alerts list': { events: ['alert'], summary: summary({ alerts: count }) },
  'alerts ack': { events: [], summary: summary({ alert: apiAlert }) },
  'lock-extend': { events: JOB_LINES, summary: jobsSummary },
  'clients add': { events: [], summary: enrollmentSummary('agent') },
  'nodes add': { events: [], summary: enrollmentSummary('node') },
  'clients revoke': { events: [], summary: revokeSummary('agent') },
  'nodes revoke': { events: [], summary: revokeSummary('node') },
  'nodes list': {
    events: [],
    summary: summary({ nodes: z.array(z.strictObject({
      name: z.string(), connected: z.boolean(), revoked: z.boolean(), address: z.string().optional(), version: z.string().optional(), lastSeen: count.optional(), notAfter: count.optional(),
      embedded: z.boolean().optional(), dataAddress: z.string().optional(), assigned: count.optional(),
      load: z.strictObject({ cpu: z.number(), memory: z.number(), ioWait: z.number(), jobs: count, bytesInFlight: count }).optional(),
    })) }),
  },
  'agent enroll': { events: [], summary: enrolledSummary('agent') },
  'node enroll': { events: [], summary: enrolledSummary('node') },
  'agent run': { events: [], summary: null },
  'node run': { events: [], summary: null },
  quickstart: {
    events: ['warning'],
    summary: summary({ repository: z.string(), created: z.boolean(), snapshot: id, snapshots: count, check: z.enum(['ok', 'failed']), warnings: count }),
  },
};

function describeIssues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(line)'}: ${i.message}`).join('; ');
}

/**
 * Checks a command's whole standard output in --json mode against the contract: every line is
 * one JSON object with a known `type` that this command may print, valid for its schema; exactly
 * one final line (summary, error, help or version) ends the output and carries the process's
 * exit code; a summary counts as many warnings as there were `warning` lines. `command` is the
 * command's path ("repo backup"), or undefined for the program itself (`coffer --json --help`).
 * Returns the parsed lines; throws an Error naming every bad line.
 */
export function checkJsonOutput(command: string | undefined, stdout: string, processExitCode: number | null): Array<Record<string, unknown> & { type: string }> {
  const spec = command === undefined ? { events: [], summary: null } : COMMAND_OUTPUT[command];
  if (!spec) throw new Error(`No --json contract for command "${command}": add it to COMMAND_OUTPUT in src/cli/json-schema.ts and to docs/json.md`);
  const problems: string[] = [];
  if (stdout === '') throw new Error(`${command ?? 'coffer'}: printed nothing on stdout; every run must end with a final line`);
  if (!stdout.endsWith('\n')) problems.push('stdout does not end with a newline');
  const texts = stdout.replace(/\n$/, '').split('\n');
  const lines: Array<Record<string, unknown> & { type: string }> = [];
  texts.forEach((text, i) => {
    const where = `line ${i + 1} ${JSON.stringify(text.length > 300 ? text.slice(0, 300) + '…' : text)}`;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      problems.push(`${where}: not JSON`);
      return;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return void problems.push(`${where}: not a JSON object`);
    const type = (value as { type?: unknown }).type;
    if (typeof type !== 'string') return void problems.push(`${where}: no string "type" field`);
    const isFinal = Object.hasOwn(FINAL_LINES, type);
    const last = i === texts.length - 1;
    if (isFinal && !last) problems.push(`${where}: a final "${type}" line must be the last line`);
    if (!isFinal && last) problems.push(`${where}: the last line must be summary, error, help or version, not "${type}"`);
    let schema: z.ZodType | undefined;
    if (type === 'summary') {
      schema = spec.summary ?? undefined;
      if (!schema) problems.push(`${where}: ${command ?? 'coffer'} never prints a summary`);
    } else if (isFinal) schema = FINAL_LINES[type as FinalType];
    else if (!Object.hasOwn(EVENT_LINES, type)) problems.push(`${where}: unknown type "${type}"`);
    // A notice about the repository itself (its config was read from the copy) may come from any command.
    else if (type !== 'notice' && !(spec.events as string[]).includes(type)) problems.push(`${where}: ${command ?? 'coffer'} may not print "${type}" lines (it prints ${spec.events.join(', ') || 'no event lines'})`);
    else schema = EVENT_LINES[type as EventType];
    if (schema) {
      const r = schema.safeParse(value);
      if (!r.success) problems.push(`${where}: ${describeIssues(r.error)}`);
    }
    lines.push(value as Record<string, unknown> & { type: string });
  });
  const final = lines.at(-1);
  if (final && problems.length === 0) {
    if (final.exitCode !== processExitCode) problems.push(`the final line says exitCode ${String(final.exitCode)} but the process exited with ${processExitCode}`);
    if (final.type === 'error' && final.exitCode !== EXIT_CODES[final.code as keyof typeof EXIT_CODES]) problems.push(`an error ${String(final.code)} must exit with ${EXIT_CODES[final.code as keyof typeof EXIT_CODES]}`);
    if (final.type === 'error' && (final.exitCode === 0 || final.exitCode === 3)) problems.push('exit codes 0 and 3 end with a summary, not an error');
    if (final.type === 'summary' && typeof final.warnings === 'number') {
      const seen = lines.filter((l) => l.type === 'warning').length;
      if (final.warnings !== seen) problems.push(`the summary counts ${final.warnings} warning(s) but ${seen} warning line(s) were printed`);
      if ((final.warnings > 0) !== (final.exitCode === 3)) problems.push(`a summary with ${final.warnings} warning(s) must have exitCode ${final.warnings > 0 ? 3 : 0}`);
    }
  }
  if (problems.length) throw new Error(`${command ?? 'coffer'} --json output breaks docs/json.md:\n  ${problems.join('\n  ')}`);
  return lines;
}
