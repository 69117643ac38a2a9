import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseDocuments } from './documents.ts';
import { EXAMPLE_GOLD, EXAMPLE_SITE } from './examples.ts';
import { formatProblem } from './problems.ts';
import { knownFrom, validateReferences } from './references.ts';

const UNITS = `apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: offsite }
spec: { url: "s3://bkt/a", offsite: true }
---
apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: archive }
spec: { url: /archive }
`;

const parse = (text: string) => parseDocuments(text, { file: 'site.yaml' });
const lines = (problems: ReturnType<typeof validateReferences>['errors']) => problems.map(formatProblem);

describe('validateReferences()', () => {
  it('finds nothing wrong with issue #9\'s documents', () => {
    assert.deepEqual(validateReferences(parse(EXAMPLE_SITE)), { errors: [], warnings: [] });
  });

  it('reports dangling lifecycles and storage units with file:line:col and a suggestion', () => {
    const text = EXAMPLE_SITE.replace('lifecycle: standard', 'lifecycle: standrad');
    assert.deepEqual(lines(validateReferences(parse(text)).errors), [
      'site.yaml:38:14: spec.lifecycle: lifecycle "standrad" does not exist; did you mean "standard"? Apply a Lifecycle named standrad with this document (or before it); known: standard, long-term.',
    ]);
    assert.deepEqual(lines(validateReferences(parse(EXAMPLE_GOLD)).errors).map((l) => l.replace(/ Apply.*/, '')), [
      'site.yaml:6:44: spec.copies[0].storageUnit: storage unit "primary" does not exist.',
      'site.yaml:7:44: spec.copies[1].storageUnit: storage unit "offsite" does not exist.',
      'site.yaml:8:44: spec.copies[2].storageUnit: storage unit "archive" does not exist.',
    ]);
  });

  it('takes what the server has from the known lookup', () => {
    const server = parse(`${EXAMPLE_SITE}---\n${UNITS}`).map((d) => d.document);
    assert.deepEqual(validateReferences(parse(EXAMPLE_GOLD), knownFrom(server)), { errors: [], warnings: [] });
    // `true`: it exists, its content is not at hand.
    assert.deepEqual(validateReferences(parse(EXAMPLE_GOLD), () => true).errors, []);
    // Plain documents (no source) are accepted too.
    assert.equal(validateReferences([parse(EXAMPLE_GOLD)[0]!.document]).errors[0]!.path, 'spec.copies[0].storageUnit');
  });

  it('refuses a window longer than the time between runs, and one that holds no run', () => {
    const text = EXAMPLE_SITE
      .replace('calendar: "0 1 * * *", window: { start: "01:00", duration: 6h }', 'every: 4h, window: { start: "01:00", duration: 6h }')
      .replace('calendar: "0 2 * * 0",', 'calendar: "0 2 * * 0", window: { start: "03:00", duration: 2h },');
    assert.deepEqual(lines(validateReferences(parse(text)).errors), [
      'site.yaml:36:89: spec.schedules[0].window.duration: the window (6h) is longer than the time between runs (4h). A run may start until its window closes, so the next one would be due while it may still start. Make the window at most 4h.',
      'site.yaml:37:67: spec.schedules[1].window: no run of "0 2 * * 0" falls in the window 03:00 + 2h: the schedule would never run. Move the window so that it opens at or before the calendar\'s runs, or change the calendar.',
    ]);
  });

  it('reads a window in the schedule\'s time zone, across midnight', () => {
    const text = EXAMPLE_SITE.replace('calendar: "0 1 * * *", window: { start: "01:00", duration: 6h }', 'calendar: "30 0 * * *", timezone: Asia/Kolkata, window: { start: "22:00", duration: 3h }');
    assert.deepEqual(validateReferences(parse(text)).errors, []);
    const outside = text.replace('"30 0 * * *"', '"30 3 * * *"');
    assert.equal(validateReferences(parse(outside)).errors.length, 1);
  });

  it('warns when the schedules leave gaps longer than the RPO', () => {
    const text = EXAMPLE_SITE.replace('rpo: 24h', 'rpo: 12h');
    const { errors, warnings } = validateReferences(parse(text));
    assert.deepEqual(errors, []);
    assert.deepEqual(lines(warnings), ['site.yaml:39:8: spec.rpo: the schedules leave up to 1d between backups, more than the RPO of 12h. Back up more often (another schedule, or a shorter every:), or agree on a longer RPO.']);
  });

  it('refuses highWater on a stage from an S3 unit without a capacity, with a hint', () => {
    const gold = EXAMPLE_GOLD.replace('from: offsite }', 'from: offsite, highWater: "80%" }');
    const primary = EXAMPLE_SITE.split('---')[0]!;
    const text = `${gold}---\n${UNITS}---\n${primary}`;
    assert.deepEqual(lines(validateReferences(parse(text)).errors), [
      `site.yaml:8:${text.split('\n')[7]!.indexOf('"80%"') + 1}: spec.copies[2].highWater: cannot apply: the source storage unit offsite is on S3 and names no capacity, so it has no used fraction to compare with 80%. Give StorageUnit offsite a capacity (e.g. capacity: 2TB, what you mean to let it hold), or leave highWater out and stage by age (after:).`,
    ]);
    const capacity = text.replace('offsite: true }', 'offsite: true, capacity: 10TB }');
    assert.deepEqual(validateReferences(parse(capacity)).errors, []);
    // A path unit has its file system's size: no capacity needed.
    const local = text.replace('"s3://bkt/a"', '/offsite');
    assert.deepEqual(validateReferences(parse(local)).errors, []);
  });

  it('refuses offsiteRequired when no copy goes to an offsite unit', () => {
    const text = EXAMPLE_SITE.replace('maxStreams: 2', 'maxStreams: 2\n  offsiteRequired: true');
    assert.deepEqual(lines(validateReferences(parse(text)).errors), [
      'site.yaml:42:20: spec.offsiteRequired: lifecycle standard keeps no copy on an offsite storage unit (primary). Add a duplicate copy to a StorageUnit with offsite: true, or mark the unit offsite if it is at another site.',
      'site.yaml:42:20: spec.offsiteRequired: lifecycle long-term keeps no copy on an offsite storage unit (primary). Add a duplicate copy to a StorageUnit with offsite: true, or mark the unit offsite if it is at another site.',
    ]);
    const fixed = `${text.replace(/lifecycle: (standard|long-term)/g, 'lifecycle: gold')}---\n${EXAMPLE_GOLD}---\n${UNITS}`;
    assert.deepEqual(validateReferences(parse(fixed)), { errors: [], warnings: [] });
    // Units known only by name: a warning, not an error.
    const { errors, warnings } = validateReferences(parse(`${text.replace(/lifecycle: (standard|long-term)/g, 'lifecycle: gold')}---\n${EXAMPLE_GOLD}`), () => true);
    assert.deepEqual(errors, []);
    assert.match(warnings[0]!.message, /cannot tell whether lifecycle gold keeps a copy offsite/);
  });
});
