import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { checkDuration, formatDuration, formatWindow, parseDuration, parseWindow } from './durations.ts';

describe('durations', () => {
  it('reads days, hours, minutes, years (365 days), weeks, combinations and infinite', () => {
    assert.equal(parseDuration('30d'), 30 * 86_400_000);
    assert.equal(parseDuration('6h'), 6 * 3_600_000);
    assert.equal(parseDuration('90m'), 90 * 60_000);
    assert.equal(parseDuration('1y'), 365 * 86_400_000);
    assert.equal(parseDuration('2w'), 14 * 86_400_000);
    assert.equal(parseDuration('1h30m'), 90 * 60_000);
    assert.equal(parseDuration('infinite', { infinite: true }), Infinity);
  });

  it('says what is wrong and what to write', () => {
    const problem = (text: unknown, options = {}) => {
      const r = checkDuration(text, options);
      assert.ok(!r.ok);
      return `${r.problem}${r.hint === undefined ? '' : ` | ${r.hint}`}`;
    };
    assert.match(problem('7 years'), /^"7 years" is not a duration \| Write 7y/);
    assert.match(problem('-1d'), /^"-1d" is negative/);
    assert.match(problem('0'), /^a duration of 0 is not allowed here/);
    assert.match(problem(0), /^a duration of 0 is not allowed here/);
    assert.match(problem('0', { zero: true }), /Write 0s/);
    assert.match(problem(24), /^the number 24 has no unit \| Write e\.g\. 24h or 24d/);
    assert.match(problem('1.5h'), /not a whole number of units \| Combine units instead/);
    assert.match(problem('3mo'), /months vary in length/);
    assert.match(problem('30D'), /units are lower case \| Write 30d/);
    assert.match(problem('30m1h'), /from the largest to the smallest/);
    assert.match(problem('infinite'), /"infinite" is not allowed here \| Only a retention can be infinite/);
    assert.match(problem('forever', { infinite: true }), /Write infinite/);
    assert.throws(() => parseDuration('5x'), (e: Error & { code?: string }) => e.code === 'INVALID_CONFIG' && /Cannot read the duration "5x": "5x": "x" is not a unit/.test(e.message));
  });

  it('formatDuration() gives a spelling parseDuration() reads back to the same length', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 10 * 365 * 86_400 }), (s) => {
      assert.equal(parseDuration(formatDuration(s * 1000)), s * 1000);
    }));
    assert.equal(formatDuration(5_400_000), '1h30m');
    assert.equal(formatDuration(14 * 86_400_000), '14d');
  });

  it('reads windows and prints them', () => {
    const w = parseWindow({ start: '22:00', duration: '6h' });
    assert.deepEqual(w, { startMinutes: 1320, durationMs: 6 * 3_600_000 });
    assert.equal(formatWindow(w), '22:00-04:00 (next day)');
    assert.equal(formatWindow(parseWindow({ start: '01:00', duration: '24h' })), 'always');
    assert.throws(() => parseWindow({ start: '1:00', duration: '6h' }), /needs two digits for the hour/);
    assert.throws(() => parseWindow({ start: '01:00', duration: '25h' }), /is more than 1d/);
  });
});
