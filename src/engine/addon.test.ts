import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { textBytes } from '../testing/random.ts';
import { chunkId } from './hash.ts';
import { willNeed } from './addon.ts';
import { readFilesSync } from './tasks.ts';

describe('engine addon', () => {
  it('willNeed is advice: any fd, even a closed or invalid one, is accepted without an error', () => {
    const dir = mkdtempSync(join(tmpdir(), 'coffer-addon-'));
    try {
      const path = join(dir, 'f');
      writeFileSync(path, textBytes(1, 100_000));
      const fd = openSync(path, 'r');
      willNeed(fd);
      closeSync(fd);
      willNeed(fd);
      willNeed(-1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('readFilesSync opens a whole batch ahead and still returns every file, missing ones as failures, in order', () => {
    const dir = mkdtempSync(join(tmpdir(), 'coffer-addon-'));
    try {
      const key = new Uint8Array(32).fill(7);
      const files = Array.from({ length: 70 }, (_, i) => {
        const path = join(dir, `f${i}`);
        const data = textBytes(i + 2, i * 977);
        if (i % 10 !== 3) writeFileSync(path, data);
        return { path, data };
      });
      const expected = files.map(({ path, data }) => {
        let st = { size: BigInt(data.length), ino: 0n, mtimeNs: 0n, ctimeNs: 0n };
        try {
          const s = statSync(path, { bigint: true });
          st = { size: s.size, ino: s.ino, mtimeNs: s.mtimeNs, ctimeNs: s.ctimeNs };
        } catch {
          /* missing on purpose */
        }
        return { path: Buffer.from(path), ...st };
      });
      const out = readFilesSync(key, expected, 1 << 20);
      assert.equal(out.length, files.length);
      out.forEach((r, i) => {
        if (i % 10 === 3) {
          assert.equal(r.ok, false, `f${i} is missing`);
          return;
        }
        assert.ok(r.ok, `f${i} read`);
        assert.deepEqual(r.data, files[i]!.data);
        assert.deepEqual(r.id, chunkId(key, files[i]!.data));
        assert.equal(r.changed, false);
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
