// Checks between documents that need no server: that what a document names exists (a policy's
// lifecycles, a lifecycle's storage units), that a schedule's window can hold its runs, and what a
// governance review would ask (the RPO the schedules can meet, the offsite copy a policy requires).
// Pure: the documents applied earlier come in as a lookup, so the CLI can run it on files alone
// (with an empty lookup, or the server's documents) and the server on what it stores.

import { Cron } from 'croner';
import { CRON_OPTIONS, longestGap } from './calendar.ts';
import type { SourcedDocument } from './documents.ts';
import { didYouMeanSuffix } from './did-you-mean.ts';
import { DURATION_UNITS, checkDuration, checkTimeOfDay, formatDuration } from './durations.ts';
import { formatPath, type PathSegment, type Problem } from './problems.ts';
import { documentId, type CofferDocument, type Kind, type LifecycleDocument, type Schedule, type StorageUnitDocument } from './schemas.ts';

/**
 * What the server already has, by kind and name: the document, `true` when it exists but its
 * content is not at hand, undefined when there is no such document. Documents in the set being
 * checked take precedence over it.
 */
export type KnownLookup = (kind: Kind, name: string) => CofferDocument | true | undefined;

/** A lookup over a list of documents (e.g. everything the server stores). */
export function knownFrom(docs: Iterable<CofferDocument>): KnownLookup {
  const byId = new Map<string, CofferDocument>();
  for (const d of docs) byId.set(documentId(d), d);
  return (kind, name) => byId.get(`${kind}/${name}`);
}

export interface ReferenceOptions {
  /** The time zone of schedules that name none (the server's); default UTC. */
  defaultTimezone?: string;
  /** The names of all documents of a kind the server has, for "did you mean" (optional). */
  knownNames?: (kind: Kind) => Iterable<string>;
}

export interface ReferenceResult {
  /** Problems that must stop an apply. */
  errors: Problem[];
  /** Things a reviewer should see that do not stop it (an RPO the schedules cannot meet, ...). */
  warnings: Problem[];
}

/** A fixed start keeps the results the same whenever the check runs. */
const FROM = new Date(Date.UTC(2026, 0, 1));
const HORIZON_MS = 366 * DURATION_UNITS.d;
const MAX_RUNS = 5000;

/**
 * Checks references between `docs` and against `known` (default: nothing known). Errors: a
 * policy's or schedule's lifecycle or a copy's storage unit that exists nowhere, a schedule whose
 * window is longer than the time between its runs or holds none of them, a policy that requires an
 * offsite copy none of its lifecycles makes. Warnings: schedules that leave gaps longer than the
 * policy's RPO; a storage unit whose content is unknown where offsite matters.
 */
export function validateReferences(
  docs: readonly (SourcedDocument | CofferDocument)[],
  known: KnownLookup = () => undefined,
  options: ReferenceOptions = {},
): ReferenceResult {
  const sourced: SourcedDocument[] = docs.map((d) => ('document' in d ? d : { document: d }));
  const inSet = new Map<string, CofferDocument>();
  for (const s of sourced) inSet.set(documentId(s.document), s.document);
  const lookup = (kind: Kind, name: string): CofferDocument | true | undefined => inSet.get(`${kind}/${name}`) ?? known(kind, name);
  const namesOf = (kind: Kind): string[] => [
    ...new Set([...sourced.filter((s) => s.document.kind === kind).map((s) => s.document.metadata.name), ...(options.knownNames?.(kind) ?? [])]),
  ];
  const errors: Problem[] = [];
  const warnings: Problem[] = [];
  const zone = options.defaultTimezone ?? 'UTC';

  for (const s of sourced) {
    const doc = s.document;
    const problem = (path: PathSegment[], message: string, hint?: string, at: 'value' | 'key' = 'value'): Problem => {
      const pos = s.locate?.(path, at);
      return {
        ...(s.file === undefined ? {} : { file: s.file }),
        ...(pos === undefined ? {} : { line: pos.line, column: pos.column }),
        document: documentId(doc),
        path: formatPath(path),
        message,
        ...(hint === undefined ? {} : { hint }),
      };
    };
    const missing = (kind: Kind, name: string, path: PathSegment[], what: string) => {
      if (lookup(kind, name) !== undefined) return;
      const names = namesOf(kind);
      errors.push(problem(path, `${what} ${JSON.stringify(name)} does not exist${didYouMeanSuffix(name, names)}`,
        `Apply a ${kind} named ${name} with this document (or before it)${names.length > 0 ? `; known: ${names.slice(0, 10).join(', ')}` : ''}`));
    };

    if (doc.kind === 'Lifecycle') {
      doc.spec.copies.forEach((copy, i) => missing('StorageUnit', copy.storageUnit, ['spec', 'copies', i, 'storageUnit'], 'storage unit'));
      // A high-water mark is a fraction of the source unit's capacity: a path has its file
      // system's size, an S3 bucket has none unless the unit says.
      doc.spec.copies.forEach((copy, i) => {
        if (copy.highWater === undefined) return;
        const from = copy.from ?? doc.spec.copies[0]!.storageUnit;
        const unit = lookup('StorageUnit', from);
        if (unit === undefined || unit === true) return; // missing: reported above; unknown content: cannot tell
        const spec = (unit as StorageUnitDocument).spec;
        if (/^s3:/i.test(spec.url) && spec.capacity === undefined) {
          errors.push(problem(['spec', 'copies', i, 'highWater'], `cannot apply: the source storage unit ${from} is on S3 and names no capacity, so it has no used fraction to compare with ${copy.highWater}`,
            `Give StorageUnit ${from} a capacity (e.g. capacity: 2TB, what you mean to let it hold), or leave highWater out and stage by age (after:)`));
        }
      });
    }
    if (doc.kind !== 'Policy') continue;

    const spec = doc.spec;
    if (spec.lifecycle !== undefined) missing('Lifecycle', spec.lifecycle, ['spec', 'lifecycle'], 'lifecycle');
    spec.schedules.forEach((sched, i) => {
      if (sched.lifecycle !== undefined) missing('Lifecycle', sched.lifecycle, ['spec', 'schedules', i, 'lifecycle'], 'lifecycle');
      for (const p of checkScheduleWindow(sched, zone)) errors.push(problem(['spec', 'schedules', i, ...p.path], p.message, p.hint));
    });

    // RPO: the longest time without a backup the schedules allow.
    if (spec.rpo !== undefined) {
      const rpo = checkDuration(spec.rpo);
      if (rpo.ok) {
        const gap = longestGap(spec.schedules.map((sc) => timing(sc, zone)), { from: FROM, horizonMs: HORIZON_MS });
        if (gap > rpo.ms) {
          warnings.push(problem(['spec', 'rpo'], `the schedules leave up to ${formatDuration(Math.ceil(gap / 1000) * 1000)} between backups, more than the RPO of ${spec.rpo}`,
            'Back up more often (another schedule, or a shorter every:), or agree on a longer RPO'));
        }
      }
    }

    // Offsite: some copy of every backup must be on a unit marked offsite.
    if (spec.offsiteRequired === true) {
      const lifecycleNames = new Set(spec.schedules.map((sc) => sc.lifecycle ?? spec.lifecycle).filter((n): n is string => n !== undefined));
      for (const name of lifecycleNames) {
        const lc = lookup('Lifecycle', name);
        if (lc === undefined || lc === true) continue; // missing: reported above; unknown content: cannot tell
        const units = (lc as LifecycleDocument).spec.copies.map((c) => ({ name: c.storageUnit, doc: lookup('StorageUnit', c.storageUnit) }));
        if (units.some((u) => u.doc !== undefined && u.doc !== true && (u.doc as StorageUnitDocument).spec.offsite === true)) continue;
        const unknown = units.filter((u) => u.doc === true).map((u) => u.name);
        const path = ['spec', 'offsiteRequired'];
        if (unknown.length > 0) {
          warnings.push(problem(path, `cannot tell whether lifecycle ${name} keeps a copy offsite: storage unit${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} not at hand`));
        } else if (units.every((u) => u.doc !== undefined)) {
          errors.push(problem(path, `lifecycle ${name} keeps no copy on an offsite storage unit (${units.map((u) => u.name).join(', ')})`,
            'Add a duplicate copy to a StorageUnit with offsite: true, or mark the unit offsite if it is at another site'));
        }
      }
    }
  }
  return { errors, warnings };
}

function timing(s: Schedule, zone: string) {
  const every = s.every === undefined ? undefined : checkDuration(s.every);
  return {
    ...(s.calendar === undefined ? {} : { calendar: s.calendar }),
    ...(every?.ok ? { everyMs: every.ms } : {}),
    timezone: s.timezone ?? zone,
  };
}

/** The minutes after midnight of `date` in `zone`. */
function minutesIn(date: Date, format: Intl.DateTimeFormat): number {
  let h = 0;
  let m = 0;
  for (const part of format.formatToParts(date)) {
    if (part.type === 'hour') h = Number(part.value) % 24;
    if (part.type === 'minute') m = Number(part.value);
  }
  return h * 60 + m;
}

/**
 * A schedule's window must close before its next run is due (otherwise a run that starts late in
 * its window still runs when the next is due), and, for a calendar, open at some of its runs.
 */
export function checkScheduleWindow(s: Schedule, defaultTimezone = 'UTC'): { path: PathSegment[]; message: string; hint?: string }[] {
  if (s.window === undefined) return [];
  const duration = checkDuration(s.window.duration);
  const start = checkTimeOfDay(s.window.start);
  if (!duration.ok || !start.ok) return []; // reported by the schema
  const out: { path: PathSegment[]; message: string; hint?: string }[] = [];
  const zone = s.timezone ?? defaultTimezone;
  let interval = Infinity;
  let runs: Date[] = [];
  if (s.every !== undefined) {
    const every = checkDuration(s.every);
    if (every.ok) interval = every.ms;
  } else if (s.calendar !== undefined) {
    try {
      const cron = new Cron(s.calendar, { ...CRON_OPTIONS, paused: true, timezone: zone });
      let prev: Date = FROM;
      for (let n = 0; n < MAX_RUNS; n++) {
        const next = cron.nextRun(prev);
        if (next === null || next.getTime() - FROM.getTime() > HORIZON_MS) break;
        if (runs.length > 0) interval = Math.min(interval, next.getTime() - prev.getTime());
        runs.push(next);
        prev = next;
      }
    } catch {
      runs = []; // an invalid calendar or zone is reported by the schema
    }
  }
  if (duration.ms > interval) {
    out.push({
      path: ['window', 'duration'],
      message: `the window (${s.window.duration}) is longer than the time between runs (${formatDuration(Math.floor(interval / 1000) * 1000)})`,
      hint: `A run may start until its window closes, so the next one would be due while it may still start. Make the window at most ${formatDuration(Math.floor(interval / 1000) * 1000)}`,
    });
  }
  if (runs.length > 0 && duration.ms < DURATION_UNITS.d) {
    const format = new Intl.DateTimeFormat('en-GB', { timeZone: zone, hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    const opensAt = start.minutes;
    const inside = runs.some((r) => {
      const after = (minutesIn(r, format) - opensAt + 1440) % 1440;
      return after * 60_000 < duration.ms;
    });
    if (!inside) {
      out.push({
        path: ['window'],
        message: `no run of ${JSON.stringify(s.calendar)} falls in the window ${s.window.start} + ${s.window.duration}${s.timezone === undefined ? '' : ` (${s.timezone})`}: the schedule would never run`,
        hint: 'Move the window so that it opens at or before the calendar\'s runs, or change the calendar',
      });
    }
  }
  return out;
}

