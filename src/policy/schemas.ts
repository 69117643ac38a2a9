// The schemas of Coffer's documents (apiVersion coffer/v1): StorageUnit, Lifecycle, Policy and
// Client, in zod, so that the CLI, the API (and its OpenAPI) and the console accept exactly the
// same thing. Objects are strict: a misspelt field is an error, never a silently ignored setting.
// Defaults are not filled in (DEFAULTS says what they are): a document is stored as it was
// applied, so that `coffer get -o yaml` gives back what the user wrote. Every field is described
// by its comment here; docs/server.md, "Documents", gives the decisions behind them.

import { z } from 'zod';
import { checkRate } from '../core/bandwidth.ts';
import { isCofferError } from '../core/errors.ts';
import { parseBackendUrl } from '../storage/url.ts';
import { checkCalendar, checkTimezone } from './calendar.ts';
import { didYouMeanSuffix } from './did-you-mean.ts';
import { DURATION_UNITS, MAX_WINDOW_MS, checkDuration, checkTimeOfDay, describeValue, formatDuration, type DurationOptions } from './durations.ts';
import { checkPercent, checkSize } from './sizes.ts';
import { DEFAULT_SCRATCH_PATH, scratchPathProblem } from './scratch-path.ts';

export const API_VERSION = 'coffer/v1';
export { KINDS, kindFromName, type Kind } from './kinds.ts';
import type { Kind } from './kinds.ts';

/** What an omitted field means. Documents keep fields omitted; whoever acts on them reads these. */
export const DEFAULTS = {
  storageUnit: { offsite: false, immutable: false, priority: 0, minimumLock: '30d' },
  /** `after` of a duplicate or stage: as soon as its source copy exists; `from`: the backup copy. */
  copy: { after: '0s' },
  policy: { maxStreams: 1, offsiteRequired: false },
  selection: { oneFileSystem: false, excludeCaches: false, chunking: { paths: 'auto', images: 'cdc' } },
  hook: { timeout: '30m' },
  /** No timezone: the server's. */
  schedule: { missed: 'catch-up' },
  /** No client-wide limit: each policy's maxStreams applies. */
  client: {},
  /** No client: each image is restored onto its own client. */
  restoreTests: { path: DEFAULT_SCRATCH_PATH, sample: 'all', missed: 'catch-up' },
} as const;

// ---------------------------------------------------------------------------------------------
// Messages. Zod's own messages ("Invalid input") say too little, so problems/validate.ts asks
// these tables, keyed by schema instance, how to describe a value of the wrong type, and how to
// compare two values of one field (so that `24h` and `1d` are the same RPO).

/** How to describe a wrong value for a schema (wrong type included), by schema instance. */
export const TYPE_MESSAGES = new WeakMap<object, (input: unknown) => string>();
/** A canonical form of a field's value for comparisons, by schema instance. */
export const CANONICAL = new WeakMap<object, (value: string) => string>();

/** Separates a problem from its hint inside a zod issue message (split again by validate.ts). */
export const HINT_SEPARATOR = '\u0000';

/** A zod issue message: what is wrong, and optionally what to write instead. */
export function issueMessage(problem: string, hint?: string): string {
  return hint === undefined ? problem : `${problem}${HINT_SEPARATOR}${hint}`;
}

type Check<T> = (value: T) => { ok: true } | { ok: false; problem: string; hint?: string };

/** A string schema with a domain check and a message for values that are not strings at all. */
function text<S extends z.ZodString>(base: S, check: Check<string>, wrongType: (input: unknown) => string): S {
  const schema = base.superRefine((value, ctx) => {
    const r = check(value);
    if (!r.ok) ctx.addIssue({ code: 'custom', message: issueMessage(r.problem, r.hint) });
  }) as S;
  TYPE_MESSAGES.set(schema, wrongType);
  return schema;
}

/** A duration (durations.ts) such as `30d`, kept as written. */
export function durationSchema(options: DurationOptions = {}): z.ZodString {
  const schema = text(z.string(), (v) => checkDuration(v, options), (input) => {
    const r = checkDuration(input, options);
    return r.ok ? 'expected a duration such as 30d' : issueMessage(r.problem, r.hint);
  });
  CANONICAL.set(schema, (v) => {
    const r = checkDuration(v, options);
    return r.ok ? formatDuration(r.ms) : v;
  });
  return schema;
}

/** A size (sizes.ts) such as `2TB`, kept as written. */
export function sizeSchema(): z.ZodString {
  const schema = text(z.string(), (v) => checkSize(v), (input) => {
    const r = checkSize(input);
    return r.ok ? 'expected a size such as 2TB' : issueMessage(r.problem, r.hint);
  });
  CANONICAL.set(schema, (v) => {
    const r = checkSize(v);
    return r.ok ? `${r.bytes}B` : v;
  });
  return schema;
}

/** A percentage (sizes.ts) such as `80%`, kept as written. */
export function percentSchema(): z.ZodString {
  const schema = text(z.string(), (v) => checkPercent(v), (input) => {
    const r = checkPercent(input);
    return r.ok ? 'expected a percentage such as "80%"' : issueMessage(r.problem, r.hint);
  });
  CANONICAL.set(schema, (v) => {
    const r = checkPercent(v);
    return r.ok ? `${r.fraction * 100}%` : v;
  });
  return schema;
}

const NAME = /^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$/;
const CLIENT_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

function nameCheck(pattern: RegExp, rule: string, suggest: (v: string) => string): Check<string> {
  return (v) => {
    if (pattern.test(v)) return { ok: true };
    const s = suggest(v);
    return { ok: false, problem: `${JSON.stringify(v)} is not a valid name`, hint: `${rule}${s !== '' && pattern.test(s) ? ` Write e.g. ${JSON.stringify(s)}.` : ''}` };
  };
}

const NAME_RULE = 'A name is lower case letters, digits, "-", "." and "_", starts and ends with a letter or digit, and has at most 63 characters.';
const toName = (v: string) => v.trim().toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '').slice(0, 63);

/** The name of a storage unit, lifecycle, policy or schedule, or a reference to one. */
export function nameSchema(): z.ZodString {
  return text(z.string(), nameCheck(NAME, NAME_RULE, toName), (input) => `expected a name, got ${describeValue(input)}`);
}

const clientName = text(
  z.string(),
  nameCheck(CLIENT_NAME, 'A client name is a host name: letters, digits, "-", "." and "_", starting and ending with a letter or digit.', (v) => v.trim().replace(/[^A-Za-z0-9._-]+/g, '-')),
  (input) => `expected a client name (its host name), got ${describeValue(input)}`,
);

const LABEL_KEY = /^(?:[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
const labelKey = text(
  z.string(),
  (v) => (LABEL_KEY.test(v) ? { ok: true } : { ok: false, problem: `${JSON.stringify(v)} is not a valid label key`, hint: 'A label key is letters, digits, "-", "." and "_" (at most 63), optionally after a prefix such as example.com/.' }),
  (input) => `expected a label key, got ${describeValue(input)}`,
);
const labels = z.record(labelKey, text(
  z.string().max(253),
  (v) => (/[\n\r\0]/.test(v) ? { ok: false, problem: 'a label value is one line' } : { ok: true }),
  (input) => issueMessage(`label values are text, got ${describeValue(input)}`, typeof input === 'number' || typeof input === 'boolean' ? `Quote it: "${String(input)}".` : undefined),
));
const annotations = z.record(labelKey, z.string());

function metadata(name: z.ZodString) {
  return z.strictObject({
    /** Unique within its kind. */
    name,
    /** Short key/value tags for selecting and grouping (`coffer get policies -l owner=web-team`). */
    labels: labels.optional(),
    /** Free-form notes for people and tools; Coffer keeps them and does nothing with them. */
    annotations: annotations.optional(),
  });
}

/** A whole number between min and max. */
function count(min: number, max: number): z.ZodNumber {
  const schema = z.number().int().min(min).max(max);
  TYPE_MESSAGES.set(schema, (input) => (typeof input === 'string' && /^\d+$/.test(input)
    ? issueMessage(`expected a number, got the text ${JSON.stringify(input)}`, `Write it without quotes: ${input}.`)
    : `expected a whole number from ${min} to ${max}, got ${describeValue(input)}`));
  return schema;
}

/** A whole number between min and max, negative ones allowed. */
function integer(min: number, max: number): z.ZodNumber {
  const schema = z.number().int().min(min).max(max);
  TYPE_MESSAGES.set(schema, (input) => `expected a whole number from ${min} to ${max}, got ${describeValue(input)}`);
  return schema;
}

/** A line or a script of text for people (owner, purpose, ...): not empty, at most `max` characters. */
function prose(max: number): z.ZodString {
  return text(z.string().max(max), (v) => (v.trim() === '' ? { ok: false, problem: 'is empty' } : { ok: true }), (input) => `expected text, got ${describeValue(input)}`);
}

// ---------------------------------------------------------------------------------------------
// StorageUnit

const storageUrl = text(z.string(), (v) => {
  const forms = 'Write an absolute path (/var/lib/coffer/primary), file:///path or s3://bucket/prefix?endpoint=https://host:port.';
  if (v.trim() === '') return { ok: false, problem: 'is empty', hint: forms };
  if (/^memory:/i.test(v)) return { ok: false, problem: 'memory: storage forgets everything when the process ends', hint: forms };
  const head = v.split('/')[0]!;
  if (!v.startsWith('/') && !head.includes(':')) {
    return { ok: false, problem: `${JSON.stringify(v)} is a relative path`, hint: `The server and its agents each have their own working directory. ${forms}` };
  }
  try {
    parseBackendUrl(v);
  } catch (e) {
    if (!isCofferError(e)) throw e;
    return { ok: false, problem: e.message.replace(/^Cannot use the repository location "(?:[^"\\]|\\.)*": /, `${JSON.stringify(v)}: `), hint: e.hint ?? forms };
  }
  return { ok: true };
}, (input) => `expected a storage URL such as /var/lib/coffer/primary or s3://bucket/prefix, got ${describeValue(input)}`);

/** A reference to a secret held outside the document: file:/absolute/path or env:NAME. */
function secretRef(what: string, instead: string) {
  return text(z.string(), (v) => {
    if (/^file:\/[^\0\n]+$/.test(v) || /^env:[A-Za-z_][A-Za-z0-9_]*$/.test(v)) return { ok: true };
    // The value is not shown: whoever wrote it may have written the secret itself.
    return {
      ok: false,
      problem: `is not a reference to ${what} (file:/path or env:NAME)`,
      hint: `Write file:/absolute/path (a file on the server holding it) or env:NAME (an environment variable of the server)${instead}. Never write the secret itself in a document.`,
    };
  }, (input) => `expected file:/path or env:NAME, got ${typeof input === 'string' ? 'text' : describeValue(input)}`);
}

const passwordFrom = secretRef('the repository password', '; leave passwordFrom out to keep the password in the server\'s keystore');

/** Where an S3 storage unit's credentials are read (default: the AWS SDK's usual sources on the server). */
export const credentialsSchema = z.strictObject({
  accessKeyId: secretRef('an access key id', ''),
  secretAccessKey: secretRef('a secret access key', ''),
  /** For temporary credentials only. */
  sessionToken: secretRef('a session token', '').optional(),
});

/**
 * Scheduled verification of a unit: every `every`, read back a share of its packs such that all
 * of them are read within `period` (default: `every`, all at each run); `{ every: 1d, period: 30d }`
 * reads 1/30 of the packs each day.
 */
export const verifySchedule = z.strictObject({
  every: durationSchema({ min: DURATION_UNITS.m }),
  period: durationSchema({ min: DURATION_UNITS.m }).optional(),
}).superRefine((v, ctx) => {
  const every = checkDuration(v.every);
  const period = v.period === undefined ? undefined : checkDuration(v.period);
  if (!every.ok || !period?.ok) return;
  if (period.ms < every.ms) {
    ctx.addIssue({ code: 'custom', path: ['period'], message: issueMessage(`is shorter than every (${v.every}): a run reads at most all of the packs`, `Give a period of ${v.every} or more, or leave period out to read everything at each run.`) });
  } else if (period.ms / every.ms > MAX_VERIFY_SLICES) {
    ctx.addIssue({ code: 'custom', path: ['period'], message: issueMessage(`divides into ${Math.ceil(period.ms / every.ms)} runs of ${v.every}; at most ${MAX_VERIFY_SLICES} are allowed`, `Verify less often than every ${v.every}, or over a shorter period.`) });
  }
});

/** The most runs one verify period may be split into. */
export const MAX_VERIFY_SLICES = 10_000;
/** A rate such as "50MB/s" (src/core/bandwidth.ts), kept as written. */
const bandwidthSchema = text(z.string(), (v) => {
  const r = checkRate(v);
  return r.ok ? { ok: true } : { ok: false, problem: r.problem, hint: r.hint };
}, (input) => `expected a rate such as "50MB/s", got ${describeValue(input)}`);

export const storageUnitSpec = z.strictObject({
  /** Where the repository is: an absolute path, file:///path or s3://bucket/prefix?endpoint=... */
  url: storageUrl,
  /** How many jobs may write to or read from this unit at once (default: no limit of its own; the server's job limit applies). */
  maxJobs: count(1, 1000).optional(),
  /** Where the server reads the repository password: file:/path or env:NAME (default: its keystore). */
  passwordFrom: passwordFrom.optional(),
  /** True when this unit is at another site than the clients: its copies count as offsite (default false). */
  offsite: z.boolean().optional(),
  /**
   * Copies here cannot be deleted before they expire, by anyone (default false): S3 only, in a
   * bucket with Object Lock enabled; every object is written with a compliance-mode lock.
   */
  immutable: z.boolean().optional(),
  /** Immutable units: the shortest lock of anything written, whatever the copies' retention (default 30d). */
  minimumLock: durationSchema({ min: 1000, max: 100 * DURATION_UNITS.y }).optional(),
  /** Queue priority of the jobs that use this unit: higher starts first when jobs wait (default 0). */
  priority: integer(-100, 100).optional(),
  /** S3 only: where the server reads the access key (default: the AWS SDK's usual sources). */
  credentialsFrom: credentialsSchema.optional(),
  /** Scheduled verification: read back a rotating share of the packs (default: none scheduled). */
  verify: verifySchedule.optional(),
  /** How much the unit may hold, e.g. 2TB, for stages' highWater (default: a path's file system size; S3: none). */
  capacity: sizeSchema().optional(),
  /** Bytes per second written to and read from this unit by each agent, all its jobs together, e.g. "50MB/s" (default: no limit). */
  bandwidth: bandwidthSchema.optional(),
  /**
   * The storage nodes (media servers) that serve this unit, by name; \`server\` is the server's
   * own embedded node (default: [server]). Several nodes can serve one S3 unit; the server
   * gives each job to the least loaded one that is connected.
   */
  nodes: z.array(z.string().min(1).max(255).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'a node name')).min(1).max(64).optional(),
}).superRefine((spec, ctx) => {
  if (spec.credentialsFrom !== undefined && !/^s3:/i.test(spec.url)) {
    ctx.addIssue({ code: 'custom', path: ['credentialsFrom'], message: issueMessage('applies to s3:// storage units only', 'Leave it out for a path or file:// URL.') });
  }
  if (spec.immutable === true && !/^s3:/i.test(spec.url)) {
    ctx.addIssue({ code: 'custom', path: ['immutable'], message: issueMessage('needs S3 storage with Object Lock: a directory cannot stop its owner deleting files', 'Use an s3:// URL whose bucket has Object Lock enabled, or leave immutable out.') });
  }
  if (spec.minimumLock !== undefined && spec.immutable !== true) {
    ctx.addIssue({ code: 'custom', path: ['minimumLock'], message: issueMessage('applies to immutable storage units only', 'Set immutable: true, or leave minimumLock out.') });
  }
});

// ---------------------------------------------------------------------------------------------
// Lifecycle

const timeOfDay = text(z.string(), (v) => checkTimeOfDay(v), (input) => {
  const r = checkTimeOfDay(input);
  return r.ok ? 'expected "HH:MM"' : issueMessage(r.problem, r.hint);
});

/** Opens every day at `start` (HH:MM, 24-hour, in the schedule's time zone) for `duration` (at most 24h). */
export const windowSchema = z.strictObject({
  start: timeOfDay,
  duration: durationSchema({ min: DURATION_UNITS.m, max: MAX_WINDOW_MS }),
});

export const OPERATIONS = ['backup', 'duplicate', 'stage'] as const;

const copySchema = z.strictObject({
  /** backup: the copy a schedule writes; duplicate: a clone of an earlier copy; stage: a clone that releases its source once made. */
  operation: z.enum(OPERATIONS),
  /** The storage unit this copy lives on. */
  storageUnit: nameSchema(),
  /** How long this copy is kept, from the time of the backup; `infinite` for ever. */
  retention: durationSchema({ infinite: true }),
  /** When duplicate or stage jobs may start (default: any time). */
  window: windowSchema.optional(),
  /** How old the backup must be before this copy is made (default 0s: as soon as its source exists). */
  after: durationSchema({ zero: true }).optional(),
  /** The storage unit of the earlier copy this one is made from (default: the backup copy). */
  from: nameSchema().optional(),
  /** Stage only: stage early, oldest images first, while the source unit is fuller than this, e.g. "80%" of its capacity. */
  highWater: percentSchema().optional(),
});

export const lifecycleSpec = z.strictObject({
  /** The copies of every backup, in order: the backup copy first, then duplicates and stages. */
  copies: z.array(copySchema).min(1).max(16),
}).superRefine((spec, ctx) => {
  const add = (path: (string | number)[], problem: string, hint?: string) => ctx.addIssue({ code: 'custom', path: ['copies', ...path], message: issueMessage(problem, hint) });
  const copies = spec.copies;
  const index = new Map<string, number>();
  copies.forEach((copy, i) => {
    if (i === 0 && copy.operation !== 'backup') {
      add([0, 'operation'], `the first copy is the backup copy (the one a schedule writes), not a ${copy.operation}`, 'Start copies with { operation: backup, storageUnit: ..., retention: ... }.');
    }
    if (i > 0 && copy.operation === 'backup') add([i, 'operation'], 'only the first copy is a backup', 'Use duplicate for another copy of it, or stage to move it.');
    if (copy.highWater !== undefined && copy.operation !== 'stage') {
      add([i, 'highWater'], `applies to stage copies, not to a ${copy.operation} copy`, 'A high-water mark releases the source copy early; only a stage releases its source.');
    }
    if (copy.operation === 'backup') {
      for (const field of ['window', 'after', 'from'] as const) {
        if (copy[field] !== undefined) add([i, field], `applies to duplicate and stage copies, not to the backup copy`, field === 'window' ? 'A backup runs in its schedule\'s window.' : undefined);
      }
    }
    const earlier = index.get(copy.storageUnit);
    if (earlier !== undefined) {
      add([i, 'storageUnit'], `copies[${earlier}] is already on ${copy.storageUnit}`, 'Two copies in one repository are one copy: it stores each chunk once. Use another storage unit.');
    } else {
      index.set(copy.storageUnit, i);
    }
  });
  // A copy is made from an earlier one, which must still exist when it runs: not expired, and not
  // released by a stage that ran before.
  const ms = (d: string | undefined, fallback: number) => {
    if (d === undefined) return fallback;
    const r = checkDuration(d, { infinite: true, zero: true });
    return r.ok ? r.ms : fallback;
  };
  const sources = copies.map((copy, i): number | undefined => {
    if (i === 0) return undefined;
    if (copy.from === undefined) return 0;
    const at = index.get(copy.from);
    if (at !== undefined && at < i) return at;
    const earlier = [...new Set(copies.slice(0, i).map((c) => c.storageUnit))];
    add([i, 'from'], `${JSON.stringify(copy.from)} is not the storage unit of an earlier copy${didYouMeanSuffix(copy.from, earlier)}`, `Earlier copies are on ${earlier.join(', ')}.`);
    return undefined;
  });
  const stagedAt = new Map<number, { by: number; at: number }>();
  copies.forEach((copy, i) => {
    const source = sources[i];
    if (copy.operation !== 'stage' || source === undefined) return;
    const previous = stagedAt.get(source);
    if (previous !== undefined) {
      add([i, 'from'], `copies[${previous.by}] already stages copies[${source}] (${copies[source]!.storageUnit}) away; a copy is released once`, 'Make this copy a duplicate of the staged one instead (from: its storage unit).');
    } else {
      stagedAt.set(source, { by: i, at: ms(copy.after, 0) });
    }
  });
  copies.forEach((copy, i) => {
    const source = sources[i];
    if (source === undefined) return;
    const after = ms(copy.after, 0);
    const when = copy.after ?? '0s';
    const src = copies[source]!;
    const where = copy.after === undefined ? [i, 'operation'] : [i, 'after'];
    if (source > 0 && after < ms(src.after, 0)) {
      add(where, `runs ${when} after the backup, before its source copies[${source}] (${src.storageUnit}) is made at ${src.after ?? '0s'}`, `Give it after: ${src.after ?? '0s'} or more.`);
    }
    if (after >= ms(src.retention, Infinity)) {
      add(where, `runs ${when} after the backup, but its source copies[${source}] (${src.storageUnit}) is kept only ${src.retention}`, 'Keep the source longer than `after`, or make this copy sooner.');
    }
    const staged = stagedAt.get(source);
    if (staged !== undefined && staged.by !== i && after > staged.at) {
      add(where, `runs ${when} after the backup, but copies[${staged.by}] stages its source copies[${source}] (${src.storageUnit}) away at ${copies[staged.by]!.after ?? '0s'}`, 'Make it from the staged copy instead, or sooner.');
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Policy

const checkAbsolutePath: Check<string> = (v) => {
  if (!v.startsWith('/')) return { ok: false, problem: `${JSON.stringify(v)} is not an absolute path`, hint: 'Paths on the client start with /.' };
  if (v.includes('\0')) return { ok: false, problem: 'a path cannot contain a NUL byte' };
  if (v !== '/' && (v.endsWith('/') || v.includes('//') || /\/\.\.?(\/|$)/.test(v))) {
    const clean = `/${v.split('/').filter((s) => s !== '' && s !== '.').join('/')}`;
    return { ok: false, problem: `${JSON.stringify(v)} is not a plain path`, hint: v.includes('/..') ? 'Write the path without ".." segments.' : `Write ${JSON.stringify(clean)}.` };
  }
  return { ok: true };
};

const absolutePath = text(z.string(), checkAbsolutePath, (input) => `expected an absolute path, got ${describeValue(input)}`);

const pattern = text(z.string(), (v) => {
  if (v === '') return { ok: false, problem: 'an empty pattern matches nothing' };
  if (/[\n\r\0]/.test(v)) return { ok: false, problem: 'a pattern is one line' };
  return { ok: true };
}, (input) => `expected a pattern such as "*.tmp", got ${describeValue(input)}`);

const command = text(z.string().max(4096), (v) => {
  if (v.trim() === '') return { ok: false, problem: 'the command is empty' };
  if (v.includes('\0')) return { ok: false, problem: 'a command cannot contain a NUL byte' };
  return { ok: true };
}, (input) => `expected a command line (run with /bin/sh -c), got ${describeValue(input)}`);

const streamName = text(z.string().max(255), (v) => {
  const segments = v.split('/');
  if (v === '' || v.startsWith('/') || v.includes('\0') || segments.some((s) => s === '' || s === '.' || s === '..')) {
    return { ok: false, problem: `${JSON.stringify(v)} is not a file name for the stream`, hint: 'Write a relative name such as shop.sql (no leading /, no empty, "." or ".." parts).' };
  }
  return { ok: true };
}, (input) => `expected a file name such as shop.sql, got ${describeValue(input)}`);

/** A command run on the client before or after a selection is backed up. */
const hookSchema = z.union([
  command,
  z.strictObject({
    command,
    /** How long it may run before it is killed and counted as failed (default 30m). */
    timeout: durationSchema({ min: 1000, max: DURATION_UNITS.d }).optional(),
  }),
]);
TYPE_MESSAGES.set(hookSchema, (input) => `expected a command line or { command, timeout }, got ${describeValue(input)}`);

const hooks = {
  /** Runs before the selection is read; if it fails, the selection is not backed up (default timeout 30m). */
  pre: hookSchema.optional(),
  /** Runs after the selection was read, whether that succeeded or not (default timeout 30m). */
  post: hookSchema.optional(),
};

export const pathsSelectionSchema = z.strictObject({
  /** Directories and files to back up. */
  paths: z.array(absolutePath).min(1),
  /** gitignore-style patterns left out. */
  exclude: z.array(pattern).optional(),
  /** gitignore-style patterns taken back in after the excludes (like `!pattern`). */
  include: z.array(pattern).optional(),
  /** Stay on the file system of each path (default false). */
  oneFileSystem: z.boolean().optional(),
  /** Leave out directories holding a CACHEDIR.TAG (default false). */
  excludeCaches: z.boolean().optional(),
  /** auto (default: page-structured files such as databases in small fixed blocks, the rest content-defined) or cdc (every file content-defined). */
  chunking: z.enum(['auto', 'cdc']).optional(),
  ...hooks,
});

export const commandSelectionSchema = z.strictObject({
  /** A command whose standard output is backed up as one file, e.g. a database dump; it must exit 0. */
  command,
  /** The name of that file in the backup. */
  filename: streamName,
  ...hooks,
});

export const imagesSelectionSchema = z.strictObject({
  /** Disk images or block devices, each backed up whole. */
  images: z.array(absolutePath).min(1),
  /** cdc (content-defined: deduplicates across images; the default) or fixed (1 MiB blocks). */
  chunking: z.enum(['fixed', 'cdc']).optional(),
  ...hooks,
});

export const selectionSchema = z.union([pathsSelectionSchema, commandSelectionSchema, imagesSelectionSchema]);
TYPE_MESSAGES.set(selectionSchema, (input) => issueMessage(`expected a selection, got ${describeValue(input)}`, 'A selection is { paths: [...] }, { command: ..., filename: ... } or { images: [...] }.'));

const calendar = text(z.string(), (v) => checkCalendar(v), (input) => issueMessage(`expected a cron expression, got ${describeValue(input)}`, 'Quote it: calendar: "0 1 * * *".'));
CANONICAL.set(calendar, (v) => v.trim().split(/\s+/).join(' '));

const timezone = text(z.string(), (v) => checkTimezone(v), (input) => `expected a time zone name such as Europe/Berlin, got ${describeValue(input)}`);

export const LEVELS = ['full', 'incremental'] as const;
export const MISSED = ['catch-up', 'skip'] as const;

export const scheduleSchema = z.strictObject({
  /** Unique within the policy. */
  name: nameSchema(),
  /** full reads every file again; incremental reads only files that changed since the last backup. */
  level: z.enum(LEVELS),
  /** When it runs: a cron expression (CRON_OPTIONS), in `timezone`. Exactly one of calendar and every. */
  calendar: calendar.optional(),
  /** How often it runs, counted from the last run. Exactly one of calendar and every. */
  every: durationSchema({ min: DURATION_UNITS.m }).optional(),
  /** When its jobs may start (default: any time). */
  window: windowSchema.optional(),
  /** The IANA time zone of the calendar and window (default: the server's). */
  timezone: timezone.optional(),
  /** The lifecycle of its backups (default: the policy's). */
  lifecycle: nameSchema().optional(),
  /** After downtime: catch-up runs once for all the runs missed, skip waits for the next (default catch-up). */
  missed: z.enum(MISSED).optional(),
}).superRefine((s, ctx) => {
  if (s.calendar === undefined && s.every === undefined) {
    ctx.addIssue({ code: 'custom', path: [], message: issueMessage('says neither when nor how often it runs', 'Give calendar: "0 1 * * *" or every: 12h.') });
  }
  if (s.calendar !== undefined && s.every !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['every'], message: issueMessage('a schedule has calendar or every, not both', 'Make two schedules if you need both.') });
  }
});

const compliance = text(z.string(), (v) => (/^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$/.test(v)
  ? { ok: true }
  : { ok: false, problem: `${JSON.stringify(v)} is not a compliance tag`, hint: `A tag is letters, digits, ".", "-" and "_", e.g. ${JSON.stringify(v.trim().replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '') || 'pci-dss')}.` }),
(input) => `expected a tag such as sox or pci-dss, got ${describeValue(input)}`);

const person = prose(200);

const scratchPath = text(z.string(), (v) => {
  const r = checkAbsolutePath(v);
  if (!r.ok) return r;
  const bad = scratchPathProblem(v);
  return bad ? { ok: false, ...bad } : { ok: true };
}, (input) => `expected an absolute path such as ${DEFAULT_SCRATCH_PATH}, got ${describeValue(input)}`);

const sample = z.union([count(1, 1_000_000), z.literal('all')]);
TYPE_MESSAGES.set(sample, (input) => issueMessage(`expected a number of files or "all", got ${describeValue(input)}`, 'Write e.g. sample: 100, or sample: all for the whole image.'));

/**
 * Scheduled restore tests (seed 004: "Will there be a regularly scheduled restore test?"): the
 * latest good image of each client is restored to a fresh scratch directory, compared with the
 * snapshot's content hashes, timed against the RTO, and the directory removed.
 */
export const restoreTestsSchema = z.strictObject({
  /** How often each client's latest image is tested, counted from the last test. Exactly one of every and calendar. */
  every: durationSchema({ min: DURATION_UNITS.h }).optional(),
  /** When tests run: a cron expression, in `timezone`. Exactly one of every and calendar. */
  calendar: calendar.optional(),
  /** The IANA time zone of the calendar (default: the server's). */
  timezone: timezone.optional(),
  /** The client restored onto: a scratch host (default: each image's own client). */
  client: clientName.optional(),
  /** The scratch place on that client: each test restores into a fresh directory below it and removes it (default /var/tmp/coffer-restore-test). */
  path: scratchPath.optional(),
  /** How many files, picked at random, are restored and compared; "all" restores the whole image (default all). */
  sample: sample.optional(),
  /** After downtime: catch-up runs one test for all the runs missed, skip waits for the next (default catch-up). */
  missed: z.enum(MISSED).optional(),
}).superRefine((r, ctx) => {
  if (r.calendar === undefined && r.every === undefined) {
    ctx.addIssue({ code: 'custom', path: [], message: issueMessage('says neither when nor how often restore tests run', 'Give every: 7d or calendar: "0 3 * * 0".') });
  }
  if (r.calendar !== undefined && r.every !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['every'], message: issueMessage('restore tests have calendar or every, not both') });
  }
  if (r.timezone !== undefined && r.calendar === undefined) {
    ctx.addIssue({ code: 'custom', path: ['timezone'], message: issueMessage('applies to a calendar only', 'Leave it out with every, or give a calendar.') });
  }
});

export const policySpec = z.strictObject({
  /** The clients (host names) it backs up. */
  clients: z.array(clientName).min(1),
  /** What it backs up on each client: paths, command output or disk images. */
  selections: z.array(selectionSchema).min(1),
  /** When it backs up. */
  schedules: z.array(scheduleSchema).min(1),
  /** The lifecycle of its backups, unless a schedule names its own. */
  lifecycle: nameSchema().optional(),
  /** Recovery point objective: the most data, in time, the business accepts to lose. */
  rpo: durationSchema().optional(),
  /** Recovery time objective: how soon the service must be back after a loss. */
  rto: durationSchema().optional(),
  /** How many selections of one client are backed up at once (default 1). */
  maxStreams: count(1, 64).optional(),
  /** Who owns the data: the team or person to ask. */
  owner: person.optional(),
  /** Why the data is backed up (what is lost without it). */
  purpose: prose(2000).optional(),
  /** How the service is recovered from these backups: a runbook, or where to find one. */
  recovery: prose(4000).optional(),
  /** Compliance regimes the data falls under, e.g. [sox, pci-dss]. */
  compliance: z.array(compliance).optional(),
  /** Whether every backup must also have a copy on an offsite storage unit (default false). */
  offsiteRequired: z.boolean().optional(),
  /** Who may ask for a restore of this data (people, teams or roles). */
  restoreRequesters: z.array(person).optional(),
  /** Who may approve expiring these backups before their retention ends. */
  expiryApprovers: z.array(person).optional(),
  /** Scheduled restore tests of the latest image of each client, timed against the rto (default: none). */
  restoreTests: restoreTestsSchema.optional(),
}).superRefine((spec, ctx) => {
  const add = (path: (string | number)[], problem: string, hint?: string) => ctx.addIssue({ code: 'custom', path, message: issueMessage(problem, hint) });
  const unique = (field: string, values: readonly string[] | undefined, what: (v: string) => string) => {
    const seen = new Map<string, number>();
    values?.forEach((v, i) => {
      const at = seen.get(v);
      if (at === undefined) seen.set(v, i);
      else add([field, i], `${what(v)} is already at ${field}[${at}]`);
    });
  };
  unique('clients', spec.clients, (v) => `client ${v}`);
  unique('compliance', spec.compliance, (v) => `tag ${v}`);
  unique('restoreRequesters', spec.restoreRequesters, (v) => JSON.stringify(v));
  unique('expiryApprovers', spec.expiryApprovers, (v) => JSON.stringify(v));
  const schedules = new Map<string, number>();
  spec.schedules.forEach((s, i) => {
    const at = schedules.get(s.name);
    if (at === undefined) schedules.set(s.name, i);
    else add(['schedules', i, 'name'], `schedule ${s.name} is already at schedules[${at}]`, 'Schedule names are unique within a policy.');
  });
  const files = new Map<string, number>();
  spec.selections.forEach((sel, i) => {
    if (!('filename' in sel)) return;
    const at = files.get(sel.filename);
    if (at === undefined) files.set(sel.filename, i);
    else add(['selections', i, 'filename'], `selections[${at}] already writes ${sel.filename}`, 'Give each command its own file name.');
  });
  if (spec.lifecycle === undefined) {
    const without = spec.schedules.filter((s) => s.lifecycle === undefined).map((s) => s.name);
    if (without.length > 0) add([], `no lifecycle for schedule${without.length > 1 ? 's' : ''} ${without.join(', ')}`, 'Give the policy a lifecycle (spec.lifecycle), or each schedule its own.');
  }
});

// ---------------------------------------------------------------------------------------------
// Client

export const clientSpec = z.strictObject({
  /** How many backup streams may run on this client at once, over all policies (default: no such limit). */
  maxStreams: count(1, 256).optional(),
});

// ---------------------------------------------------------------------------------------------
// Documents

export const storageUnitDocument = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('StorageUnit'),
  metadata: metadata(nameSchema()),
  spec: storageUnitSpec,
});

export const lifecycleDocument = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Lifecycle'),
  metadata: metadata(nameSchema()),
  spec: lifecycleSpec,
});

export const policyDocument = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Policy'),
  metadata: metadata(nameSchema()),
  spec: policySpec,
});

/** A Client document only adds labels and limits to a client its agent registered; spec may be left out. */
export const clientDocument = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Client'),
  metadata: metadata(clientName),
  spec: clientSpec.optional(),
});

/** Any document; for the API's request bodies and OpenAPI. validate.ts gives better messages. */
export const documentSchema = z.discriminatedUnion('kind', [storageUnitDocument, lifecycleDocument, policyDocument, clientDocument]);

export const DOCUMENT_SCHEMAS = {
  StorageUnit: storageUnitDocument,
  Lifecycle: lifecycleDocument,
  Policy: policyDocument,
  Client: clientDocument,
} as const satisfies Record<Kind, z.ZodType>;

export type StorageUnitDocument = z.infer<typeof storageUnitDocument>;
export type LifecycleDocument = z.infer<typeof lifecycleDocument>;
export type PolicyDocument = z.infer<typeof policyDocument>;
export type ClientDocument = z.infer<typeof clientDocument>;
export type CofferDocument = StorageUnitDocument | LifecycleDocument | PolicyDocument | ClientDocument;
export type DocumentOfKind<K extends Kind> = Extract<CofferDocument, { kind: K }>;
export type Metadata = CofferDocument['metadata'];
export type Copy = LifecycleDocument['spec']['copies'][number];
export type Selection = PolicyDocument['spec']['selections'][number];
export type Schedule = PolicyDocument['spec']['schedules'][number];
export type Hook = NonNullable<Selection['pre']>;
export type RestoreTests = NonNullable<PolicyDocument['spec']['restoreTests']>;


/** "Policy/web-server": how messages name a document. */
export function documentId(doc: { kind: string; metadata: { name: string } }): string {
  return `${doc.kind}/${doc.metadata.name}`;
}
