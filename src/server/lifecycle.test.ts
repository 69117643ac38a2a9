// The lifecycle pass's decisions for one image (decide(), pure): what is due, what waits and
// until when, windows in a time zone across DST, stages released only when nothing else needs
// their source and never when held; and the immediate copies the backup job queues itself.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Copy } from '../catalog/copies.ts';
import { parseDocuments, type LifecycleDocument } from '../policy/index.ts';
import { EXAMPLE_GOLD } from '../policy/examples.ts';
import { decide, isImmediate, jobTargets, LIFECYCLE_PERIOD_MS, planCopies, windowAt, type CopyJobs } from './lifecycle.ts';

const H = 3_600_000;
const D = 24 * H;
const T0 = Date.UTC(2026, 2, 2, 1, 0); // 01:00 UTC, Monday 2 March 2026
const gold = (parseDocuments(EXAMPLE_GOLD)[0]!.document as LifecycleDocument).spec;
const planned = planCopies(gold);
const image = { id: 'img', time: T0, state: 'ok' as const };
const noJobs = (): CopyJobs => ({ open: new Map(), reading: new Set(), failed: new Map() });
let n = 0;
const copy = (unit: string, more: Partial<Copy> = {}): Copy => ({ id: `c${++n}`, imageId: 'img', storageUnit: unit, snapshots: {}, state: 'ok', expires: undefined, hold: undefined, created: T0, updated: T0, ...more });

describe('planCopies() and isImmediate()', () => {
  it('reads the gold lifecycle into numbers', () => {
    assert.deepEqual(planned.map((p) => [p.index, p.operation, p.unit, p.source, p.sourceIndex, p.afterMs, p.retentionMs, p.window?.durationMs]), [
      [1, 'duplicate', 'offsite', 'primary', 0, 0, 365 * D, 12 * H],
      [2, 'stage', 'archive', 'offsite', 1, 30 * D, 7 * 365 * D, undefined],
    ]);
    assert.deepEqual(gold.copies.map(isImmediate), [false, false, false], 'a windowed duplicate waits for the pass');
    assert.equal(isImmediate({ operation: 'duplicate', storageUnit: 'x', retention: '1y' }), true);
    assert.equal(isImmediate({ operation: 'duplicate', storageUnit: 'x', retention: '1y', after: '0s' }), true);
    assert.equal(isImmediate({ operation: 'duplicate', storageUnit: 'x', retention: '1y', after: '1h' }), false);
  });

  it('jobTargets() reads both duplicate spec forms', () => {
    assert.deepEqual(jobTargets({ image: 'i', from: 'a', to: 'b' }), ['b']);
    assert.deepEqual(jobTargets({ image: 'i', from: 'a', targets: [{ to: 'b' }, { to: 'c' }] }), ['b', 'c']);
  });
});

describe('windowAt()', () => {
  it('the window open now, else the next; DST-correct in the zone', () => {
    const w = { start: '06:00', durationMs: 12 * H };
    assert.deepEqual(windowAt(w, T0, 'UTC'), { start: T0 + 5 * H, end: T0 + 17 * H });
    assert.deepEqual(windowAt(w, T0 + 6 * H, 'UTC'), { start: T0 + 5 * H, end: T0 + 17 * H }, 'open');
    assert.deepEqual(windowAt(w, T0 + 17 * H, 'UTC'), { start: T0 + D + 5 * H, end: T0 + D + 17 * H }, 'closed: tomorrow\'s');
    // Berlin, the night clocks go forward (29 March 2026): 06:00 CEST is 04:00 UTC.
    const spring = windowAt(w, Date.UTC(2026, 2, 29, 1), 'Europe/Berlin');
    assert.equal(spring.start, Date.UTC(2026, 2, 29, 4));
    assert.equal(windowAt(w, Date.UTC(2026, 2, 28, 1), 'Europe/Berlin').start, Date.UTC(2026, 2, 28, 5));
  });
});

describe('decide()', () => {
  it('a fresh backup: the duplicate is queued for its window; the stage waits for the duplicate', () => {
    const d = decide(image, [copy('primary')], planned, noJobs(), T0, 'UTC');
    assert.deepEqual(d.actions, [{ kind: 'queue', copy: planned[0], notBefore: T0 + 5 * H, notAfter: T0 + 17 * H }]);
    assert.deepEqual(d.waits, ['archive: its source copy in offsite is not made yet']);
    assert.equal(d.next, T0 + 5 * H + LIFECYCLE_PERIOD_MS, 'looked at again once the window opened');
    // Inside the window: it may start at once.
    const open = decide(image, [copy('primary')], planned, noJobs(), T0 + 8 * H, 'UTC');
    assert.deepEqual(open.actions[0], { kind: 'queue', copy: planned[0], notBefore: T0 + 8 * H, notAfter: T0 + 17 * H });
  });

  it('never a second job: a queued one is waited for until its window opens', () => {
    const jobs = noJobs();
    jobs.open.set('img\u0000offsite', { notBefore: T0 + 5 * H });
    const d = decide(image, [copy('primary')], planned, jobs, T0, 'UTC');
    assert.deepEqual(d.actions, []);
    assert.equal(d.next, T0 + 5 * H + LIFECYCLE_PERIOD_MS);
    // A job that failed lately waits an hour; a missed one (not listed) is queued again.
    const failed = noJobs();
    failed.failed.set('img\u0000offsite', T0 - 10 * 60_000);
    const f = decide(image, [copy('primary')], planned, failed, T0, 'UTC');
    assert.deepEqual([f.actions, f.next], [[], T0 + 50 * 60_000]);
  });

  it('the stage waits for its age, then is queued; once made it releases its source', () => {
    const copies = [copy('primary'), copy('offsite')];
    const young = decide(image, copies, planned, noJobs(), T0 + D, 'UTC');
    assert.deepEqual([young.actions, young.next, young.waits], [[], T0 + 30 * D, [`archive: due at ${new Date(T0 + 30 * D).toISOString()}`]]);
    const due = decide(image, copies, planned, noJobs(), T0 + 30 * D, 'UTC');
    assert.deepEqual(due.actions, [{ kind: 'queue', copy: planned[1] }]);
    const staged = [copy('primary'), copies[1]!, copy('archive')];
    const release = decide(image, staged, planned, noJobs(), T0 + 30 * D + H, 'UTC');
    assert.deepEqual(release.actions, [{ kind: 'release', copy: planned[1], source: copies[1] }]);
    // Released (expired, then forgotten): the duplicate counts as made, nothing is left to do.
    const done = decide(image, [copy('archive')], planned, noJobs(), T0 + 40 * D, 'UTC');
    assert.deepEqual([done.actions, done.next], [[], null]);
  });

  it('never releases a held source, nor one an unfinished job or copy still reads', () => {
    const held = [copy('primary'), copy('offsite', { hold: 'case 7' }), copy('archive')];
    const h = decide(image, held, planned, noJobs(), T0 + 31 * D, 'UTC');
    assert.deepEqual(h.actions, []);
    assert.match(h.waits[0]!, /offsite: released by the stage to archive once its hold is released \(case 7\)/);
    assert.equal(h.next, T0 + 32 * D);
    const reading = noJobs();
    reading.reading.add('img\u0000offsite');
    assert.deepEqual(decide(image, [copy('primary'), copy('offsite'), copy('archive')], planned, reading, T0 + 31 * D, 'UTC').actions, []);
    // Another copy from the same source, still to be made.
    const more = planCopies({ copies: [...gold.copies, { operation: 'duplicate', storageUnit: 'tape', retention: '1y', from: 'offsite', after: '30d' }] });
    const d = decide(image, [copy('primary'), copy('offsite'), copy('archive')], more, noJobs(), T0 + 31 * D, 'UTC');
    assert.deepEqual(d.actions.map((a) => [a.kind, a.copy.unit]), [['queue', 'tape']]);
    assert.match(d.waits.join('\n'), /offsite: released by the stage to archive once its copy in tape is made from it/);
  });

  it('gives up on copies whose source is gone or whose retention has passed; failed images have nothing to do', () => {
    // The backup copy expired before the duplicate could run: nothing to copy from, nothing to wait for.
    assert.deepEqual(decide(image, [], planned, noJobs(), T0 + 20 * D, 'UTC'), { actions: [], next: null, waits: [] });
    // A suspect source may be repaired: wait.
    const suspect = decide(image, [copy('primary', { state: 'suspect' })], planned, noJobs(), T0, 'UTC');
    assert.deepEqual([suspect.actions, suspect.waits[0]], [[], 'offsite: its source copy in primary is suspect']);
    assert.deepEqual(decide({ ...image, state: 'failed' }, [], planned, noJobs(), T0, 'UTC').next, null);
    assert.equal(decide({ ...image, state: 'pending' }, [], planned, noJobs(), T0, 'UTC').next, T0 + LIFECYCLE_PERIOD_MS);
    const old = decide(image, [copy('primary', { hold: 'x' })], planned, noJobs(), T0 + 400 * D, 'UTC');
    assert.deepEqual([old.actions, old.next], [[], null], 'a duplicate past its own retention is not made');
  });
});
