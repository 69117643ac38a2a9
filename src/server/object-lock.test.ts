// The lock dates of immutable storage units (server/object-lock.ts), on a fixed clock.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LOCK_HORIZON_MS, LOCK_STEP_MS, copyLockedUntil, minimumLockOf, rollingLock, writeLockUntil } from './object-lock.ts';

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 11, 6, 12);
const immutable = { spec: { url: 's3://vault/a', immutable: true, minimumLock: '30d' } };
const plain = { spec: { url: 's3://vault/a' } };

describe('immutable storage units: lock dates', () => {
  it('only immutable units have a minimum lock; its default is 30d', () => {
    assert.equal(minimumLockOf(plain), undefined);
    assert.equal(minimumLockOf({ spec: { url: 's3://v', immutable: false, minimumLock: '1d' } }), undefined);
    assert.equal(minimumLockOf({ spec: { url: 's3://v', immutable: true } }), 30 * DAY);
    assert.equal(minimumLockOf({ spec: { url: 's3://v', immutable: true, minimumLock: '12h' } }), DAY / 2);
  });

  it('what is written is locked until its copy expires, never for less than the minimum, and on a rolling lock when the copy never expires', () => {
    assert.equal(writeLockUntil(plain, NOW, NOW + 400 * DAY), undefined);
    assert.equal(writeLockUntil(immutable, NOW, NOW + 7 * 365 * DAY), NOW + 7 * 365 * DAY);
    assert.equal(writeLockUntil(immutable, NOW, NOW + 14 * DAY), NOW + 30 * DAY, 'a 14-day copy is locked the minimum 30 days');
    assert.equal(writeLockUntil(immutable, NOW), NOW + 30 * DAY, 'no copy (a prune): the minimum');
    const rolling = writeLockUntil(immutable, NOW, null)!;
    assert.equal(rolling, rollingLock(NOW));
    assert.ok(rolling >= NOW + LOCK_HORIZON_MS && rolling < NOW + LOCK_HORIZON_MS + LOCK_STEP_MS);
    assert.equal(rolling % LOCK_STEP_MS, 0);
    assert.equal(rollingLock(NOW + 1000), rolling, 'a rolling lock moves in steps, not at every run');
  });

  it('a copy is locked until its expiry or its creation plus the minimum, whichever is later; forever when it never expires', () => {
    assert.equal(copyLockedUntil(plain, { expires: NOW, created: NOW }), undefined);
    assert.equal(copyLockedUntil(immutable, { expires: NOW + 14 * DAY, created: NOW }), NOW + 30 * DAY);
    assert.equal(copyLockedUntil(immutable, { expires: NOW + 90 * DAY, created: NOW }), NOW + 90 * DAY);
    assert.equal(copyLockedUntil(immutable, { expires: undefined, created: NOW }), Infinity);
  });
});
