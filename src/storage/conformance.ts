// The one conformance suite every Backend must pass, kept as data so that it serves twice: as
// node:test tests for each backend (runConformanceSuite) and as `coffer storage validate`
// against a user's real bucket or directory (validateStorage). Every check touches only names
// under the prefix it is given and removes what it wrote.

import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { CofferError, isCofferError } from '../core/errors.ts';
import type { ErrorCode } from '../core/errors.ts';
import { listAll } from './backend.ts';
import type { Backend, GetOptions, ObjectInfo } from './backend.ts';

export interface CheckContext {
  /** Every name the check uses starts with this; it ends with '/'. */
  prefix: string;
  signal?: AbortSignal;
}

export interface ConformanceCheck {
  /** Reads as a sentence: "get() of a missing object fails with NOT_FOUND". */
  name: string;
  /**
   * True if a broken backend could make the check write outside ctx.prefix (it tries names that
   * must be refused). validateStorage leaves these out unless asked.
   */
  destructive?: boolean;
  run(backend: Backend, ctx: CheckContext): Promise<void>;
}

export interface CheckResult {
  name: string;
  ok: boolean;
  ms: number;
  error?: Error;
}

const MiB = 1024 * 1024;

export const CONFORMANCE_CHECKS: ConformanceCheck[] = [
  {
    name: 'list() of a prefix with no objects yields nothing',
    async run(backend, { prefix, signal }) {
      for (const p of [prefix, `${prefix}empty/`, `${prefix}no/such/directory/`, `${prefix}partial-name`]) {
        const found = await listAll(backend, p, { signal });
        if (found.length > 0) fail(`list(${q(p)}) yielded ${found.length} objects, e.g. ${q(found[0]!.name)}; expected none`);
      }
    },
  },
  {
    name: 'put() then get() and stat() round-trip empty, 1-byte, 1 MiB and random-size objects',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const sizes = [0, 1, MiB, randomSize(2, 300_000), randomSize(2, 300_000), randomSize(300_000, 3 * MiB)];
        const objects = sizes.map((size, i) => ({ name: `${prefix}size-${i}-${size}`, data: testBytes(i + 1, size) }));
        await Promise.all(objects.map((o) => backend.put(o.name, o.data, { signal })));
        for (const o of objects) {
          const info = await backend.stat(o.name, { signal });
          if (info.size !== o.data.length) fail(`stat(${q(o.name)}) gave size ${info.size}, expected ${o.data.length}`);
          sameBytes(await backend.get(o.name, { signal }), o.data, `get(${q(o.name)})`);
        }
        await expectListing(backend, prefix, objects.map((o) => ({ name: o.name, size: o.data.length })), signal);
      });
    },
  },
  {
    name: 'get() of a range (start, middle, end, zero-length, whole) returns exactly those bytes',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const size = 100_003;
        const data = testBytes(7, size);
        const name = `${prefix}ranged`;
        await backend.put(name, data, { signal });
        const ranges: GetOptions[] = [
          { offset: 0, length: 1 },
          { offset: 0, length: 1000 },
          { length: 10 },
          { offset: 5000, length: 7777 },
          { offset: size - 1, length: 1 },
          { offset: size - 1000 },
          { offset: 123, length: 0 },
          { offset: 0, length: 0 },
          { offset: size, length: 0 },
          { offset: size },
          { offset: 0, length: size },
          { offset: 0 },
          {},
        ];
        for (const r of ranges) {
          const start = r.offset ?? 0;
          const end = r.length === undefined ? size : start + r.length;
          sameBytes(await backend.get(name, { ...r, signal }), data.subarray(start, end), `get(${q(name)}, ${JSON.stringify(r)})`);
        }
        const empty = `${prefix}empty`;
        await backend.put(empty, new Uint8Array(0), { signal });
        sameBytes(await backend.get(empty, { offset: 0, length: 0, signal }), Buffer.alloc(0), `get(${q(empty)}, zero-length range)`);
      });
    },
  },
  {
    name: 'get() of a range past the end fails with INVALID_RANGE',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const name = `${prefix}thousand`;
        await backend.put(name, testBytes(3, 1000), { signal });
        const bad: GetOptions[] = [
          { offset: 1001 },
          { offset: 1000, length: 1 },
          { offset: 999, length: 2 },
          { offset: 0, length: 1001 },
          { offset: 5000, length: 0 },
          { offset: 5000, length: 10 },
          { offset: -1, length: 1 },
          { offset: 0, length: -1 },
        ];
        for (const r of bad) await expectCode(() => backend.get(name, { ...r, signal }), 'INVALID_RANGE', `get(${q(name)}, ${JSON.stringify(r)})`);
        const empty = `${prefix}empty`;
        await backend.put(empty, new Uint8Array(0), { signal });
        await expectCode(() => backend.get(empty, { offset: 0, length: 1, signal }), 'INVALID_RANGE', `get(${q(empty)}, {"offset":0,"length":1})`);
      });
    },
  },
  {
    name: 'get() and stat() of a missing object fail with NOT_FOUND',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        // "dir" exists only as the start of another name: it is no object either.
        await backend.put(`${prefix}dir/object`, testBytes(1, 10), { signal });
        for (const name of [`${prefix}missing`, `${prefix}no/such/directory/missing`, `${prefix}dir`, `${prefix}dir/object/below`]) {
          await expectCode(() => backend.get(name, { signal }), 'NOT_FOUND', `get(${q(name)})`);
          await expectCode(() => backend.get(name, { offset: 1, length: 5, signal }), 'NOT_FOUND', `get(${q(name)}, a range)`);
          await expectCode(() => backend.get(name, { offset: 0, length: 0, signal }), 'NOT_FOUND', `get(${q(name)}, a zero-length range)`);
          await expectCode(() => backend.stat(name, { signal }), 'NOT_FOUND', `stat(${q(name)})`);
        }
      });
    },
  },
  {
    name: 'delete() of a missing object succeeds, and a deleted object is gone',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        await backend.delete(`${prefix}never-written`, { signal });
        await backend.delete(`${prefix}no/such/directory/object`, { signal });
        const name = `${prefix}short-lived`;
        await backend.put(name, testBytes(2, 100), { signal });
        await backend.delete(name, { signal });
        await backend.delete(name, { signal });
        await expectCode(() => backend.get(name, { signal }), 'NOT_FOUND', `get(${q(name)}) after delete()`);
        await expectCode(() => backend.stat(name, { signal }), 'NOT_FOUND', `stat(${q(name)}) after delete()`);
        await expectListing(backend, prefix, [], signal);
      });
    },
  },
  {
    name: 'put() over an existing object replaces it atomically with the new bytes',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const name = `${prefix}replaced`;
        const first = testBytes(11, 2 * MiB);
        const second = testBytes(12, 3 * MiB);
        await backend.put(name, first, { signal });
        // Readers racing the overwrite must see one whole version or the other, never a mix.
        let writing = true;
        const writer = backend.put(name, second, { signal }).finally(() => {
          writing = false;
        });
        const reads: Promise<void>[] = [];
        const reader = async (): Promise<void> => {
          do {
            const got = await backend.get(name, { signal });
            if (!got.equals(first) && !got.equals(second)) {
              fail(`get(${q(name)}) during an overwrite returned ${got.length} bytes matching neither the old (${first.length}) nor the new (${second.length}) object`);
            }
          } while (writing);
        };
        for (let i = 0; i < 4; i++) reads.push(reader());
        await Promise.all([writer, ...reads]);
        sameBytes(await backend.get(name, { signal }), second, `get(${q(name)}) after the overwrite`);
        const info = await backend.stat(name, { signal });
        if (info.size !== second.length) fail(`stat(${q(name)}) gave ${info.size} after the overwrite, expected ${second.length}`);
        const small = testBytes(13, 10);
        await backend.put(name, small, { signal });
        sameBytes(await backend.get(name, { signal }), small, `get(${q(name)}) after overwriting with a smaller object`);
        await expectListing(backend, prefix, [{ name, size: small.length }], signal);
      });
    },
  },
  {
    name: 'stat() and list() say when an object was written, by the storage clock, and an overwrite a second later moves it forward',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const name = `${prefix}heartbeat`;
        await backend.put(name, testBytes(21, 5), { signal });
        const first = await backend.stat(name, { signal });
        if (typeof first.modified !== 'number' || !Number.isFinite(first.modified)) fail(`stat(${q(name)}) gave no modification time (modified: ${String(first.modified)})`);
        const listed = (await listAll(backend, prefix, { signal })).find((o) => o.name === name);
        if (listed?.modified !== first.modified) fail(`list(${q(prefix)}) gave modified ${String(listed?.modified)} for ${q(name)}, stat() ${first.modified}`);
        // S3 keeps LastModified to the second.
        await new Promise((r) => setTimeout(r, 1100));
        await backend.put(name, testBytes(22, 5), { signal });
        const second = await backend.stat(name, { signal });
        if (!(second.modified! > first.modified!)) fail(`stat(${q(name)}) gave modified ${String(second.modified)} after an overwrite 1.1 s later, before: ${first.modified}`);
      });
    },
  },
  {
    name: 'list() finds exactly the objects under a prefix and not its siblings',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const names = ['a/b/c', 'a/b/d/e', 'a/bc', 'a/bcd/x', 'a/b-', 'a/ab', 'ab', 'b'].map((n) => prefix + n);
        await Promise.all(names.map((n, i) => backend.put(n, testBytes(i, i * 3), { signal })));
        const expect = (p: string, wanted: string[]): Promise<void> =>
          expectListing(backend, prefix + p, wanted.map((n) => ({ name: prefix + n, size: names.indexOf(prefix + n) * 3 })), signal);
        await expect('a/b/', ['a/b/c', 'a/b/d/e']);
        await expect('a/bc', ['a/bc', 'a/bcd/x']);
        await expect('a/b', ['a/b/c', 'a/b/d/e', 'a/bc', 'a/bcd/x', 'a/b-']);
        await expect('a/b/d', ['a/b/d/e']);
        await expect('a/b/d/', ['a/b/d/e']);
        await expect('a/b/c', ['a/b/c']);
        await expect('a/', ['a/b/c', 'a/b/d/e', 'a/bc', 'a/bcd/x', 'a/b-', 'a/ab']);
        await expect('a', ['a/b/c', 'a/b/d/e', 'a/bc', 'a/bcd/x', 'a/b-', 'a/ab', 'ab']);
        await expect('a/b/c/', []);
        await expect('c', []);
        await expect('', ['a/b/c', 'a/b/d/e', 'a/bc', 'a/bcd/x', 'a/b-', 'a/ab', 'ab', 'b']);
      });
    },
  },
  {
    name: 'list() pages through 1,100 objects and yields each exactly once',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        // Spread over subdirectories too, as a repository's data/ab/... layout is, plus names
        // that sort between "a" and "a/" in S3's byte order: stores that walk directories page
        // by page easily skip these.
        const objects = [
          ...Array.from({ length: 1096 }, (_, i) => ({ name: `${prefix}many/${(i % 16).toString(16)}/${String(i).padStart(4, '0')}`, size: i % 7 })),
          ...['a+', 'a-b', 'a.c', 'a0'].map((n, i) => ({ name: `${prefix}many/${n}`, size: i })),
        ];
        await mapLimit(objects, 32, (o, i) => backend.put(o.name, testBytes(i, o.size), { signal }));
        await expectListing(backend, `${prefix}many/`, objects, signal);
        await expectListing(backend, `${prefix}many/a/`, objects.filter((o) => o.name.startsWith(`${prefix}many/a/`)), signal);
      });
    },
  },
  {
    name: 'concurrent put() of distinct and of identical names all succeed and read back intact',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const distinct = Array.from({ length: 16 }, (_, i) => ({ name: `${prefix}distinct-${i}`, data: testBytes(100 + i, 64 * 1024 + i) }));
        const same = testBytes(200, 256 * 1024);
        const sameName = `${prefix}identical`;
        const racing = Array.from({ length: 8 }, (_, i) => testBytes(300 + i, 128 * 1024));
        const racingName = `${prefix}last-writer-wins`;
        await Promise.all([
          ...distinct.map((o) => backend.put(o.name, o.data, { signal })),
          ...Array.from({ length: 16 }, () => backend.put(sameName, same, { signal })),
          ...racing.map((data) => backend.put(racingName, data, { signal })),
        ]);
        for (const o of distinct) sameBytes(await backend.get(o.name, { signal }), o.data, `get(${q(o.name)})`);
        sameBytes(await backend.get(sameName, { signal }), same, `get(${q(sameName)}) after 16 identical concurrent writes`);
        const winner = await backend.get(racingName, { signal });
        if (!racing.some((d) => winner.equals(d))) fail(`get(${q(racingName)}) after 8 concurrent writes returned bytes matching none of them`);
        await expectListing(backend, prefix, [
          ...distinct.map((o) => ({ name: o.name, size: o.data.length })),
          { name: sameName, size: same.length },
          { name: racingName, size: winner.length },
        ], signal);
      });
    },
  },
  {
    name: 'an aborted signal fails calls with CANCELLED',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const aborted = AbortSignal.abort();
        const name = `${prefix}cancelled`;
        await expectCode(() => backend.put(name, testBytes(1, 100), { signal: aborted }), 'CANCELLED', 'put() with an aborted signal');
        await expectCode(() => backend.get(name, { signal }), 'NOT_FOUND', `get(${q(name)}) after a cancelled put()`);
        const kept = `${prefix}kept`;
        const keptData = testBytes(2, 100);
        await backend.put(kept, keptData, { signal });
        await expectCode(() => backend.get(kept, { signal: aborted }), 'CANCELLED', 'get() with an aborted signal');
        await expectCode(() => backend.get(kept, { offset: 1, length: 0, signal: aborted }), 'CANCELLED', 'get() of a zero-length range with an aborted signal');
        await expectCode(() => backend.stat(kept, { signal: aborted }), 'CANCELLED', 'stat() with an aborted signal');
        await expectCode(() => backend.delete(kept, { signal: aborted }), 'CANCELLED', 'delete() with an aborted signal');
        await expectCode(() => listAll(backend, prefix, { signal: aborted }), 'CANCELLED', 'list() with an aborted signal');
        sameBytes(await backend.get(kept, { signal }), keptData, `get(${q(kept)}) after a cancelled delete()`);

        // Aborted while a listing is under way: the next item must not come.
        await mapLimit(Array.from({ length: 20 }, (_, i) => i), 20, (i) => backend.put(`${prefix}list/${i}`, testBytes(i, 1), { signal }));
        const controller = new AbortController();
        const listSignal = signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]);
        const iterator = backend.list(`${prefix}list/`, { signal: listSignal })[Symbol.asyncIterator]();
        const first = await iterator.next();
        if (first.done) fail('list() of 20 objects yielded nothing');
        controller.abort();
        await expectCode(async () => {
          for (let i = 0; i < 20; i++) if ((await iterator.next()).done) return;
        }, 'CANCELLED', 'list() aborted after its first item');
        await iterator.return?.();

        // Aborted while a put() is under way: it fails with CANCELLED or completes, and either
        // way no partial object is left.
        const big = `${prefix}big`;
        const bigData = testBytes(3, 4 * MiB);
        const putController = new AbortController();
        const putSignal = signal === undefined ? putController.signal : AbortSignal.any([signal, putController.signal]);
        const put = backend.put(big, bigData, { signal: putSignal });
        putController.abort();
        try {
          await put;
        } catch (e) {
          if (!isCofferError(e, 'CANCELLED')) fail(`put() aborted mid-way failed with ${explain(e)}; expected CANCELLED`);
        }
        try {
          sameBytes(await backend.get(big, { signal }), bigData, `get(${q(big)}) after an aborted put()`);
        } catch (e) {
          if (!isCofferError(e, 'NOT_FOUND')) throw e;
        }
      });
    },
  },
  {
    name: 'names with odd characters round-trip through put(), get(), list() and delete()',
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const segments = [
          'with space', ' leading space', 'plus+sign', 'percent%20sign', '100%', 'hash#tag', 'question?mark', 'equals=and&ampersand',
          'ünïcödé', 'ä', 'emoji-🎉🔒', 'quote\'s', 'double"quote', 'tilde~', 'paren(s)', 'semi;colon', 'comma,', 'star*', 'dollar$',
          'at@', 'colon:', 'brackets[]', 'braces{}', 'caret^', 'pipe|', 'angle<>', 'backtick`', '.dotfile', 'dots..inside', '-dash',
          'x'.repeat(200), 'ö'.repeat(100),
        ];
        const names = [...segments.map((s) => `${prefix}${s}`), `${prefix}dir with space/sub+dir/ä#?%/leaf=1&2`];
        await mapLimit(names, 8, (n) => backend.put(n, Buffer.from(n), { signal }));
        for (const n of names) {
          sameBytes(await backend.get(n, { signal }), Buffer.from(n), `get(${q(n)})`);
          const info = await backend.stat(n, { signal });
          if (info.size !== Buffer.byteLength(n)) fail(`stat(${q(n)}) gave size ${info.size}, expected ${Buffer.byteLength(n)}`);
        }
        await expectListing(backend, prefix, names.map((n) => ({ name: n, size: Buffer.byteLength(n) })), signal);
        await expectListing(backend, `${prefix}ä`, [{ name: `${prefix}ä`, size: Buffer.byteLength(`${prefix}ä`) }], signal);
        await expectListing(backend, `${prefix}dir with space/`, [{ name: names.at(-1)!, size: Buffer.byteLength(names.at(-1)!) }], signal);
        await mapLimit(names, 8, (n) => backend.delete(n, { signal }));
        await expectListing(backend, prefix, [], signal);
      });
    },
  },
  {
    name: 'invalid names (leading "/", "..", empty segment) are refused with STORAGE_ERROR',
    destructive: true,
    async run(backend, { prefix, signal }) {
      await withCleanup(backend, prefix, async () => {
        const bad = [
          '', `/${prefix}leading-slash`, `${prefix}trailing-slash/`, `${prefix}empty//segment`, `${prefix}..`, `${prefix}../escape`,
          `${prefix}a/../b`, `${prefix}./dot`, `${prefix}nul\0byte`, `${prefix}back\\slash`, `${prefix}${'x'.repeat(1025)}`, '..', '.',
        ];
        for (const name of bad) {
          await expectCode(() => backend.put(name, testBytes(1, 1), { signal }), 'STORAGE_ERROR', `put(${q(name)})`);
          await expectCode(() => backend.get(name, { signal }), 'STORAGE_ERROR', `get(${q(name)})`);
          await expectCode(() => backend.stat(name, { signal }), 'STORAGE_ERROR', `stat(${q(name)})`);
          await expectCode(() => backend.delete(name, { signal }), 'STORAGE_ERROR', `delete(${q(name)})`);
        }
        for (const p of [`/${prefix}`, `${prefix}../`, `${prefix}a//`, '..']) {
          await expectCode(() => listAll(backend, p, { signal }), 'STORAGE_ERROR', `list(${q(p)})`);
        }
      });
    },
  },
];

/**
 * Registers every check as a node:test test. A fresh backend is made once for the suite and each
 * check gets its own prefix.
 */
export function runConformanceSuite(label: string, makeBackend: () => Promise<{ backend: Backend; cleanup(): Promise<void> }>): void {
  describe(`${label} conformance`, () => {
    let env: { backend: Backend; cleanup(): Promise<void> } | undefined;
    const base = `conformance-${randomBytes(4).toString('hex')}/`;
    before(async () => {
      env = await makeBackend();
    });
    after(async () => {
      await env?.cleanup();
    });
    CONFORMANCE_CHECKS.forEach((check, i) => {
      it(check.name, async () => {
        if (env === undefined) throw new Error('the backend was not set up');
        await check.run(env.backend, { prefix: `${base}${i}/` });
      });
    });
  });
}

/**
 * Runs the non-destructive checks against `backend` in a scratch prefix
 * `coffer-validate-<random hex>/` and removes everything written there, also when a check fails
 * or the run is cancelled. Backs `coffer storage validate`.
 */
export async function validateStorage(
  backend: Backend,
  options: { signal?: AbortSignal; onResult?: (result: CheckResult) => void; includeDestructive?: boolean } = {},
): Promise<CheckResult[]> {
  const { signal, onResult } = options;
  const scratch = `coffer-validate-${randomBytes(8).toString('hex')}/`;
  const results: CheckResult[] = [];
  let failure: unknown;
  try {
    for (const [i, check] of CONFORMANCE_CHECKS.entries()) {
      if (check.destructive && !options.includeDestructive) continue;
      if (signal?.aborted) break;
      const started = performance.now();
      let result: CheckResult;
      try {
        await check.run(backend, { prefix: `${scratch}${i}/`, signal });
        result = { name: check.name, ok: true, ms: Math.round(performance.now() - started) };
      } catch (e) {
        if (signal?.aborted) break;
        result = { name: check.name, ok: false, ms: Math.round(performance.now() - started), error: e instanceof Error ? e : new Error(String(e)) };
      }
      results.push(result);
      onResult?.(result);
    }
  } catch (e) {
    failure = e;
  } finally {
    // Without the caller's signal: an interrupted run must still clean up after itself.
    try {
      await removeAll(backend, scratch);
    } catch (e) {
      failure ??= new CofferError('STORAGE_ERROR', `Cannot remove the scratch prefix ${scratch} from ${backend.location}: ${explain(e)}`, {
        cause: e,
        hint: `Delete the objects under ${scratch} by hand.`,
      });
    }
  }
  if (failure !== undefined) throw failure;
  if (signal?.aborted) throw new CofferError('CANCELLED', 'Cancelled: the storage validation was interrupted', { cause: signal.reason });
  return results;
}

// --- helpers ---------------------------------------------------------------------------------

function fail(message: string): never {
  throw new CofferError('CHECK_FAILED', message);
}

function q(name: string): string {
  const shown = name.length > 80 ? `${name.slice(0, 60)}…(${name.length} chars)` : name;
  return JSON.stringify(shown);
}

function explain(e: unknown): string {
  if (isCofferError(e)) return `${e.code}: ${e.message}`;
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

async function expectCode(fn: () => Promise<unknown>, code: ErrorCode, what: string): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (isCofferError(e, code)) return;
    fail(`${what} failed with ${explain(e)}; expected ${code}`);
  }
  fail(`${what} succeeded; expected it to fail with ${code}`);
}

function sameBytes(actual: Buffer, expected: Uint8Array, what: string): void {
  if (!Buffer.isBuffer(actual)) fail(`${what} returned ${typeof actual}, not a Buffer`);
  if (actual.equals(expected)) return;
  if (actual.length !== expected.length) fail(`${what} returned ${actual.length} bytes, expected ${expected.length}`);
  let at = 0;
  while (actual[at] === expected[at]) at++;
  fail(`${what} returned different bytes, first difference at offset ${at}`);
}

async function expectListing(backend: Backend, prefix: string, expected: ObjectInfo[], signal: AbortSignal | undefined): Promise<void> {
  const found = await listAll(backend, prefix, { signal });
  const seen = new Map<string, number>();
  for (const info of found) {
    if (seen.has(info.name)) fail(`list(${q(prefix)}) yielded ${q(info.name)} more than once`);
    seen.set(info.name, info.size);
  }
  for (const want of expected) {
    const size = seen.get(want.name);
    if (size === undefined) fail(`list(${q(prefix)}) did not yield ${q(want.name)} (yielded ${found.length} of ${expected.length} objects)`);
    if (size !== want.size) fail(`list(${q(prefix)}) gave size ${size} for ${q(want.name)}, expected ${want.size}`);
    seen.delete(want.name);
  }
  if (seen.size > 0) fail(`list(${q(prefix)}) yielded ${q([...seen.keys()][0]!)}, which is not under the prefix or was never written`);
}

/** Runs `fn`, then deletes everything under `prefix`; an error from `fn` wins over one from cleaning up. */
async function withCleanup(backend: Backend, prefix: string, fn: () => Promise<void>): Promise<void> {
  let failed = false;
  try {
    await fn();
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    try {
      await removeAll(backend, prefix);
    } catch (e) {
      if (!failed) throw e;
    }
  }
}

async function removeAll(backend: Backend, prefix: string): Promise<void> {
  const names = (await listAll(backend, prefix)).map((o) => o.name);
  await mapLimit(names, 32, (n) => backend.delete(n));
}

/** Runs `fn` over `items` with at most `limit` calls in flight; stops starting new ones after a failure. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let stopped = false;
  const worker = async (): Promise<void> => {
    while (!stopped && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (e) {
        stopped = true;
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function randomSize(min: number, max: number): number {
  return min + (randomBytes(4).readUInt32LE(0) % (max - min));
}

/** Deterministic bytes (xorshift32), so that a failure shows the same data when run again. */
function testBytes(seed: number, size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  let x = (seed * 0x9e3779b1) ^ 0x85ebca6b || 1;
  let i = 0;
  for (; i + 4 <= size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  for (; i < size; i++) out[i] = (x >>> ((i & 3) * 8)) & 0xff;
  return out;
}
