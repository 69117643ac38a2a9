import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { execFileSync } from 'node:child_process';
import { constants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { isCofferError } from '../core/errors.ts';
import { randomBytes, textBytes } from '../testing/random.ts';
import { addon, nativeDisabled, nativeZstd } from './addon.ts';
import { compress, decompress } from './compress.ts';

const corrupt = (e: unknown) => isCofferError(e, 'CORRUPT');

describe('compress', () => {
  it('round-trips compressible data at several levels', () => {
    for (const n of [1, 100, 4096, 1 << 20]) {
      const raw = textBytes(n, n);
      for (const level of [-7, 0, 1, 3, 19]) {
        const c = compress(raw, level);
        if (c !== null) assert.deepEqual(decompress(c, raw.length), raw);
        // Tiny inputs, or 100 bytes at the fastest levels, may not shrink.
        if (n >= 4096) assert.ok(c !== null && c.length < raw.length, `${n} bytes at level ${level} shrinks`);
      }
    }
  });

  it('returns null for data that does not shrink (random, empty)', () => {
    assert.equal(compress(randomBytes(1, 1 << 16), 3), null);
    assert.equal(compress(new Uint8Array(0), 3), null);
    assert.equal(compress(Buffer.from('x'), 3), null);
  });

  it('refuses levels outside zstd range with USAGE', () => {
    for (const level of [-8, 23, 1.5, NaN]) {
      assert.throws(() => compress(Buffer.from('abc'), level), (e) => isCofferError(e, 'USAGE'), String(level));
    }
  });

  it('decompress() returns exactly rawLength bytes, owning its memory', () => {
    const raw = textBytes(5, 300_000);
    const out = decompress(compress(raw, 3)!, raw.length);
    assert.equal(out.length, raw.length);
    assert.equal(out.buffer.byteLength, raw.length, 'the output buffer is sized to rawLength');
  });

  it('decompress() gives CORRUPT for garbage, truncation and a wrong expected length', () => {
    const raw = textBytes(6, 100_000);
    const c = compress(raw, 3)!;
    assert.throws(() => decompress(randomBytes(7, 1000), 1000), corrupt);
    assert.throws(() => decompress(new Uint8Array(0), 0), corrupt);
    assert.throws(() => decompress(c.subarray(0, c.length - 1), raw.length), corrupt);
    assert.throws(() => decompress(c.subarray(0, 10), raw.length), corrupt);
    assert.throws(() => decompress(c, raw.length - 1), corrupt);
    assert.throws(() => decompress(c, raw.length + 1), corrupt);
    assert.throws(() => decompress(c, 0), corrupt);
    assert.throws(() => decompress(c, -1), corrupt);
    assert.throws(() => decompress(c, 1.5), corrupt);
  });

  it('decompress() stops a zstd bomb at rawLength instead of expanding it', () => {
    const bomb = zstdCompressSync(Buffer.alloc(64 << 20));
    assert.ok(bomb.length < 16 << 10);
    const before = process.memoryUsage().arrayBuffers;
    const t = Date.now();
    assert.throws(() => decompress(bomb, 1000), corrupt);
    assert.ok(Date.now() - t < 2000);
    assert.ok(process.memoryUsage().arrayBuffers - before < 16 << 20);
  });

  it('uses the addon (built by npm ci), whose frames are the ones node:zlib writes and reads', () => {
    const z = nativeZstd();
    if (nativeDisabled()) {
      // npm run test:no-addon: the loader says why there is no addon, and compress() uses node:zlib.
      const a = addon();
      assert.equal(z, null);
      assert.equal(a.ok ? '' : a.reason, 'the native addon is disabled (COFFER_NATIVE=0)');
      return;
    }
    assert.ok(z, 'the native addon with zstd is there');
    for (const [seed, n] of [[8, 1], [9, 4096], [10, 300_000], [11, 1 << 20]] as const) {
      const raw = textBytes(seed, n);
      for (const level of [1, 3, 9]) {
        const params = { [constants.ZSTD_c_compressionLevel]: level, [constants.ZSTD_c_checksumFlag]: 0 };
        const viaZlib = zstdCompressSync(raw, { params });
        const viaAddon = z.zstdCompress(raw, level);
        if (viaAddon === null) {
          assert.ok(viaZlib.length >= raw.length, `${n} bytes: null only when it does not shrink`);
          continue;
        }
        assert.deepEqual(viaAddon, viaZlib, `${n} bytes at level ${level}: the same frame`);
        assert.deepEqual(zstdDecompressSync(viaAddon), raw);
        assert.deepEqual(z.zstdDecompress(viaZlib, raw.length), raw);
      }
    }
    // Random data never comes back "compressed", however the output buffer was sized before.
    assert.equal(z.zstdCompress(randomBytes(12, 1 << 20), 3), null);
    assert.ok(z.zstdCompress(textBytes(13, 1 << 20), 3)!.length < 1 << 20);
  });

  it('falls back to node:zlib without the addon (COFFER_NATIVE_ZSTD=0), reading the same frames', () => {
    const raw = textBytes(14, 200_000);
    const frame = compress(raw, 3)!;
    const script = `
      import { compress, decompress } from ${JSON.stringify(new URL('./compress.ts', import.meta.url).href)};
      import { nativeZstd } from ${JSON.stringify(new URL('./addon.ts', import.meta.url).href)};
      const frame = Buffer.from(process.argv[1], 'base64');
      const raw = decompress(frame, Number(process.argv[2]));
      const again = compress(raw, 3);
      process.stdout.write(JSON.stringify({ native: nativeZstd() !== null, same: again.equals(frame), length: raw.length }));`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script, frame.toString('base64'), String(raw.length)], {
      env: { ...process.env, COFFER_NATIVE_ZSTD: '0' },
      encoding: 'utf8',
    });
    assert.deepEqual(JSON.parse(out), { native: false, same: true, length: raw.length });
  });
});
