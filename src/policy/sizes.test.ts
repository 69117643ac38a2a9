import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkPercent, checkSize } from './sizes.ts';

describe('checkSize()', () => {
  it('reads decimal and binary units', () => {
    assert.deepEqual(checkSize('2TB'), { ok: true, bytes: 2e12 });
    assert.deepEqual(checkSize('1.5TB'), { ok: true, bytes: 1.5e12 });
    assert.deepEqual(checkSize('512GiB'), { ok: true, bytes: 512 * 2 ** 30 });
    assert.deepEqual(checkSize('100B'), { ok: true, bytes: 100 });
  });

  it('says what is wrong and how to write it', () => {
    const bad = (v: unknown) => {
      const r = checkSize(v);
      assert.ok(!r.ok, `${String(v)} was accepted`);
      return `${r.problem}${r.hint ? ` / ${r.hint}` : ''}`;
    };
    assert.match(bad(2), /the number 2 has no unit \/ Write e\.g\. 2GB/);
    assert.match(bad('2000'), /"2000" has no unit/);
    assert.match(bad('2 TB'), /has spaces in it \/ Write it without spaces, e\.g\. 2TB/);
    assert.match(bad('2tb'), /write the unit as TB \/ Write 2TB/);
    assert.match(bad('2XB'), /"XB" is not a unit of size/);
    assert.match(bad('1,5TB'), /decimal comma \/ Write 1\.5TB/);
    assert.match(bad('-1TB'), /negative/);
    assert.match(bad('0GB'), /is zero/);
    assert.match(bad('lots'), /is not a size/);
    assert.match(bad(true), /expected a size such as 2TB, got true/);
  });
});

describe('checkPercent()', () => {
  it('reads a percentage into a fraction', () => {
    assert.deepEqual(checkPercent('80%'), { ok: true, fraction: 0.8 });
    assert.deepEqual(checkPercent('92.5%'), { ok: true, fraction: 0.925 });
  });

  it('refuses numbers, missing signs and marks that can never or always be reached', () => {
    const bad = (v: unknown) => {
      const r = checkPercent(v);
      assert.ok(!r.ok, `${String(v)} was accepted`);
      return `${r.problem}${r.hint ? ` / ${r.hint}` : ''}`;
    };
    assert.match(bad(0.8), /got the number 0\.8 \/ Write it as text with a percent sign: "80%"/);
    assert.match(bad(80), /got the number 80 \/ .*"80%"/);
    assert.match(bad('80'), /has no percent sign \/ Write "80%"/);
    assert.match(bad('80 %'), /has spaces in it \/ Write "80%"/);
    assert.match(bad('100%'), /not between 0% and 100%.*never be reached/);
    assert.match(bad('0%'), /not between 0% and 100%.*staged at once/);
    assert.match(bad('-5%'), /negative/);
    assert.match(bad('high'), /is not a percentage/);
  });
});
