// The native addon's own contract, called directly: zstd accepts exactly one whole frame of
// exactly the expected length, and every argument is type- and range-checked before it becomes
// a C value (a TypeError or RangeError with a clear message, never a wrapped or truncated
// number). Needs the addon: `npm run test:no-addon` leaves this file out by name (see
// scripts/test-no-addon.ts); CI also runs it against the AddressSanitizer build.
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { describe, it } from 'node:test';
import { createZstdCompress } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { textBytes } from '../testing/random.ts';
import { addon, NATIVE_MODULE_PATH } from './addon.ts';

interface Binding {
  zstdCompress(data: unknown, level: unknown): Buffer | null;
  zstdDecompress(data: unknown, rawLength: unknown): Buffer;
  [name: string]: (...args: unknown[]) => unknown;
}

function binding(): Binding {
  const a = addon();
  assert.ok(a.ok, `the addon is needed here: ${a.ok ? '' : a.reason} (${NATIVE_MODULE_PATH})`);
  return a.exports as unknown as Binding;
}

/** Asserts that `fn` throws an Error with this code whose message matches `message`. */
function throwsCode(fn: () => unknown, code: string, message: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.equal((e as { code?: unknown }).code, code, String(e));
    assert.match((e as Error).message, message);
    return true;
  });
}

const RAW = textBytes(11, 200_000);

describe('addon zstd: exactly one frame of exactly rawLength bytes', () => {
  it('round-trips a frame, and gives null (by zstd\'s error code) for data that does not shrink', () => {
    const z = binding();
    const frame = z.zstdCompress(RAW, 3)!;
    assert.ok(frame.length < RAW.length);
    assert.deepEqual(z.zstdDecompress(frame, RAW.length), Buffer.from(RAW));
    assert.equal(z.zstdCompress(randomBytes(100_000), 3), null);
    assert.equal(z.zstdCompress(new Uint8Array(0), 3), null);
  });

  it('refuses a truncated frame, two frames back to back and trailing garbage with ZSTD_ERROR', () => {
    const z = binding();
    const frame = z.zstdCompress(RAW, 3)!;
    for (const cut of [frame.length - 1, frame.length >> 1, 5]) {
      throwsCode(() => z.zstdDecompress(frame.subarray(0, cut), RAW.length), 'ZSTD_ERROR', /^zstd decompress: not one whole frame \(.+\) in \d+ bytes$/);
    }
    const half = z.zstdCompress(RAW.subarray(0, RAW.length / 2), 3)!;
    throwsCode(() => z.zstdDecompress(Buffer.concat([half, half]), RAW.length), 'ZSTD_ERROR', new RegExp(`^zstd decompress: ${half.length} bytes follow the frame of ${half.length} bytes`));
    throwsCode(() => z.zstdDecompress(Buffer.concat([frame, Buffer.from([0, 1, 2])]), RAW.length), 'ZSTD_ERROR', /^zstd decompress: 3 bytes follow the frame/);
    throwsCode(() => z.zstdDecompress(Buffer.concat([Buffer.from([0]), frame]), RAW.length), 'ZSTD_ERROR', /not a zstd frame/);
    throwsCode(() => z.zstdDecompress(new Uint8Array(0), 0), 'ZSTD_ERROR', /not a zstd frame \(0 bytes/);
    // A frame whose content is damaged past the header.
    const damaged = Buffer.from(frame);
    damaged[damaged.length >> 1] ^= 0xff;
    assert.throws(() => z.zstdDecompress(damaged, RAW.length), (e: unknown) => ['ZSTD_ERROR', 'ZSTD_LENGTH'].includes((e as { code: string }).code));
  });

  it('refuses a rawLength that is too small or too large with ZSTD_LENGTH, also for a frame without a recorded size', async () => {
    const z = binding();
    const frame = z.zstdCompress(RAW, 3)!;
    throwsCode(() => z.zstdDecompress(frame, RAW.length - 1), 'ZSTD_LENGTH', new RegExp(`the frame holds ${RAW.length} bytes, expected ${RAW.length - 1}`));
    throwsCode(() => z.zstdDecompress(frame, RAW.length + 1), 'ZSTD_LENGTH', new RegExp(`expected ${RAW.length + 1}$`));
    // node:zlib's stream writes frames without the content size in their header; its first
    // frame holds everything written before end() (the stream adds an empty second one).
    const streamed = await buffer(Readable.from([Buffer.from(RAW)]).pipe(createZstdCompress()));
    const first = streamed.subarray(0, findFrameEnd(z, streamed));
    assert.deepEqual(z.zstdDecompress(first, RAW.length), Buffer.from(RAW));
    throwsCode(() => z.zstdDecompress(first, RAW.length - 1), 'ZSTD_LENGTH', new RegExp(`holds more than the ${RAW.length - 1} bytes expected`));
    throwsCode(() => z.zstdDecompress(first, RAW.length + 1), 'ZSTD_LENGTH', new RegExp(`got ${RAW.length} bytes, expected ${RAW.length + 1}`));
  });

  it('type-checks and range-checks its arguments', () => {
    const z = binding();
    const frame = z.zstdCompress(RAW, 3)!;
    for (const data of ['text', [1, 2, 3], new Int8Array(8), new Uint16Array(8), null, undefined]) {
      throwsCode(() => z.zstdCompress(data, 3), 'ERR_INVALID_ARG_TYPE', /^data must be a Uint8Array$/);
      throwsCode(() => z.zstdDecompress(data, 3), 'ERR_INVALID_ARG_TYPE', /^data must be a Uint8Array$/);
    }
    for (const level of [23, 1000, -200_000, 2 ** 31, -(2 ** 31) - 1]) throwsCode(() => z.zstdCompress(RAW, level), 'ERR_OUT_OF_RANGE', /^level must be in -\d+\.\.22, got -?\d+$/);
    for (const level of [3.5, Number.NaN, Infinity, '3', 2n ** 64n]) throwsCode(() => z.zstdCompress(RAW, level), 'ERR_INVALID_ARG_TYPE', /^level must be an integer/);
    for (const n of [-1, 2 ** 32, 2n ** 40n]) throwsCode(() => z.zstdDecompress(frame, n), 'ERR_OUT_OF_RANGE', /^rawLength must be in 0\.\.4294967295, got -?\d+$/);
    throwsCode(() => z.zstdDecompress(frame, 1.5), 'ERR_INVALID_ARG_TYPE', /^rawLength must be an integer/);
    throwsCode(() => (z.zstdDecompress as (...a: unknown[]) => unknown)(frame), 'ERR_INVALID_ARG_TYPE', /too few arguments/);
    // A subarray at an offset and a Buffer from the shared pool are read at their own bytes.
    const padded = Buffer.concat([Buffer.alloc(7, 9), frame, Buffer.alloc(5, 9)]);
    assert.deepEqual(z.zstdDecompress(padded.subarray(7, 7 + frame.length), RAW.length), Buffer.from(RAW));
  });
});

/** The length of the first frame in `data`: the shortest prefix that decodes as one frame. */
function findFrameEnd(z: Binding, data: Buffer): number {
  for (let end = 4; end <= data.length; end++) {
    try {
      z.zstdDecompress(data.subarray(0, end), 0);
      return end;
    } catch (e) {
      if (!/holds more than|got \d+ bytes|the frame holds/.test((e as Error).message)) continue;
      return end;
    }
  }
  throw new Error('no whole frame');
}

describe('addon file-system functions: arguments out of range are refused before any system call', () => {
  it('refuses numbers outside the C type they become, and wrong types, with clear errors', (t) => {
    const n = binding();
    const dir = mkdtempSync(join(tmpdir(), 'coffer-addon-args-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'f');
    writeFileSync(file, 'x');
    const range = (fn: () => unknown, name: string) => throwsCode(fn, 'ERR_OUT_OF_RANGE', new RegExp(`^${name} must be in -?\\d+\\.\\.\\d+, got -?\\d+$`));
    const type = (fn: () => unknown, message: RegExp) => throwsCode(fn, 'ERR_INVALID_ARG_TYPE', message);

    range(() => n.utimensat!(file, 0, 1_000_000_000, 0, 0, true), 'atimeNsec');
    range(() => n.utimensat!(file, 0, 0, 0, -1, true), 'mtimeNsec');
    type(() => n.utimensat!(file, 0, 0, 2n ** 63n, 0, true), /^mtimeSec must be an integer/);
    type(() => n.utimensat!(file, 0, 0, 0, 0, 'yes'), /^nofollow must be a boolean$/);
    type(() => n.utimensat!(file, 0.5, 0, 0, 0, true), /^atimeSec must be an integer/);
    type(() => n.utimensat!(`${file}\0x`, 0, 0, 0, 0, true), /^path must be a string or Buffer without NUL$/);
    type(() => n.utimensat!(42, 0, 0, 0, 0, true), /^path must be a string or Buffer without NUL$/);

    range(() => n.mknod!(join(dir, 'd'), 2 ** 32 + 0o20644, 0), 'mode');
    range(() => n.mknod!(join(dir, 'd'), 0o20644, -1), 'dev');
    range(() => n.mkfifo!(join(dir, 'p'), 0o10644), 'mode');
    range(() => n.mkfifo!(join(dir, 'p'), -1), 'mode');
    range(() => n.lsetxattr!(file, 'user.a', Buffer.from('v'), 4), 'flags');
    type(() => n.lsetxattr!(file, 'user.a', 'v', 0), /^value must be a Buffer$/);
    type(() => n.lgetxattr!(file, Buffer.from('user.\0a')), /^name must be a string or Buffer without NUL$/);
    range(() => n.makedev!(2 ** 32, 0), 'major');
    range(() => n.makedev!(0, -1), 'minor');
    throwsCode(() => n.makedev!(2 ** 32 - 1, 0), 'ERR_OUT_OF_RANGE', /beyond 2\^53/);
    assert.deepEqual(n.splitdev!(n.makedev!(259, 65_536) as number), [259, 65_536]);
    range(() => n.splitdev!(-1), 'dev');
    type(() => n.scanDir!(dir, 'not a function'), /^callback must be a function$/);

    const fd = openSync(file, 'r');
    try {
      range(() => n.seekData!(2 ** 31, 0), 'fd');
      range(() => n.seekData!(-1, 0), 'fd');
      range(() => n.seekHole!(fd, -1), 'offset');
      range(() => n.willNeed!(2 ** 31), 'fd');
      type(() => n.willNeed!('3'), /^fd must be an integer/);
      assert.equal(n.seekData!(fd, 0), 0, 'an fd and offset in range still work');
    } finally {
      closeSync(fd);
    }
    // Nothing was created by the refused calls.
    assert.throws(() => n.lgetxattr!(join(dir, 'd'), 'user.a'), { code: 'ENOENT' });
    assert.throws(() => n.lgetxattr!(join(dir, 'p'), 'user.a'), { code: 'ENOENT' });
  });
});
