import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ulid, ulidTime } from './ulid.ts';

describe('ulid', () => {
  it('makes 26-character ids that sort by time and never go backwards within a millisecond', () => {
    const ids = [ulid(1_000), ...Array.from({ length: 1000 }, () => ulid(2_000)), ulid(3_000)];
    for (const id of ids) assert.match(id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
    assert.deepEqual([...ids].sort(), ids);
    assert.equal(new Set(ids).size, ids.length);
    assert.equal(ulidTime(ids[0]!), 1_000);
    assert.equal(ulidTime(ids.at(-1)!), 3_000);
  });

  it('keeps ids increasing when the clock steps back', () => {
    const a = ulid(10_000);
    const b = ulid(9_000);
    assert.ok(b > a);
  });
});
