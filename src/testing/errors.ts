// Asserting the CofferError a call fails with, for tests.
import assert from 'node:assert/strict';
import { isCofferError, type CofferError, type ErrorCode } from '../core/errors.ts';

/** Awaits `action` (a promise or a function) and returns its CofferError, which must have `code` (and match `pattern`). */
export async function expectCode(action: Promise<unknown> | (() => unknown), code: ErrorCode, pattern?: RegExp): Promise<CofferError> {
  try {
    await (typeof action === 'function' ? action() : action);
  } catch (e) {
    assert.ok(isCofferError(e), `expected a CofferError ${code}, got ${(e as Error)?.stack ?? e}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    if (pattern !== undefined) assert.match(e.message, pattern);
    return e;
  }
  assert.fail(`expected a CofferError ${code}, but it succeeded`);
}
