import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { after, before, describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { randomBytes, textBytes } from '../testing/random.ts';
import { decodeBlob, encodeBlob } from './blob.ts';
import { Chunker, gearTable, type ChunkerParams } from './chunker.ts';
import { chunkId } from './hash.ts';
import { deriveRepoKeys } from './keys.ts';
import { PackWriter } from './pack.ts';
import { nativeCodec } from './addon.ts';
import { WorkerPool } from './pool.ts';
import { chunkAndHashSync, readFilesSync } from './tasks.ts';

const KEYS = deriveRepoKeys(Buffer.from(Array.from({ length: 32 }, (_, i) => i)));
const PARAMS: ChunkerParams = { minSize: 4096, avgSize: 16384, maxSize: 65536 };
const CHUNKER = new Chunker(PARAMS, gearTable(KEYS.gearSeed));

function expected(data: Uint8Array, eof: boolean, mode: 'cdc' | { fixed: number }) {
  const r = chunkAndHashSync(CHUNKER, KEYS.chunkIdKey, data, eof, mode);
  return { ends: r.ends, ids: r.ends.map((_, i) => r.ids.subarray(i * 32, i * 32 + 32)), rest: r.rest, data };
}

describe('WorkerPool', () => {
  let pool: WorkerPool;
  before(async () => {
    pool = await WorkerPool.create({ keys: KEYS, chunker: PARAMS, level: 3, workers: 2 });
  });
  after(() => pool.close());

  it('chunkAndHash() equals the in-process result, with and without eof, cdc and fixed', async () => {
    assert.equal(pool.size, 2);
    const inputs = [randomBytes(1, 1 << 20), textBytes(2, 700_000), new Uint8Array(0), randomBytes(3, 100)];
    for (const data of inputs) {
      for (const eof of [true, false]) {
        for (const mode of ['cdc', { fixed: 10_000 }] as const) {
          const got = await pool.chunkAndHash(data, eof, mode);
          assert.deepEqual(got, expected(data, eof, mode), `${data.length} ${eof} ${JSON.stringify(mode)}`);
          if (eof) assert.equal(got.rest, 0);
        }
      }
    }
  });

  it('chunkAndHash() leaves the input intact and usable, also for views into a larger buffer', async () => {
    const big = randomBytes(4, 300_000);
    const copy = Buffer.from(big);
    const view = big.subarray(1000, 250_000);
    const got = await pool.chunkAndHash(view, false, 'cdc');
    assert.deepEqual(big, copy);
    assert.equal(big.buffer.byteLength >= 300_000, true, 'not detached');
    assert.deepEqual(got, expected(view, false, 'cdc'));
    // Ids are right for the slices the caller cuts from its own buffer.
    got.ends.forEach((e, i) => assert.deepEqual(got.ids[i], chunkId(KEYS.chunkIdKey, view.subarray(i ? got.ends[i - 1]! : 0, e))));
  });

  it('with transfer, moves the input to the worker and back instead of copying it', async () => {
    const data = Buffer.from(new ArrayBuffer(300_000));
    randomBytes(6, 300_000).copy(data);
    const copy = Buffer.from(data);
    const want = expected(copy, true, 'cdc');
    const got = await pool.chunkAndHash(data.subarray(0, 300_000), true, 'cdc', undefined, { transfer: true });
    assert.equal(data.buffer.detached, true, 'the caller\'s buffer moved');
    assert.equal(got.data.buffer.byteLength, 300_000, 'and came back whole');
    assert.deepEqual(Buffer.from(got.data), copy);
    assert.deepEqual(got.ends, want.ends);
    assert.deepEqual(got.ids, want.ids);
  });

  it('readFiles() reads and hashes small files like readFilesSync(), flags changed files and reports unreadable ones', async (t) => {
    const { mkdtemp, writeFile, rm, symlink, lstat } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const dir = await mkdtemp(`${tmpdir()}/coffer-readfiles-`);
    t.after(() => rm(dir, { recursive: true, force: true }));
    const names = ['a', 'b', 'empty', 'grew', 'link', 'missing'];
    await writeFile(`${dir}/a`, textBytes(30, 5000));
    await writeFile(`${dir}/b`, randomBytes(31, 20_000));
    await writeFile(`${dir}/empty`, '');
    await writeFile(`${dir}/grew`, 'short');
    await symlink('a', `${dir}/link`);
    const expect = async (n: string) => {
      const st = await lstat(`${dir}/${n}`, { bigint: true }).catch(() => undefined);
      return { path: Buffer.from(`${dir}/${n}`), size: st?.size ?? 0n, ino: st?.ino ?? 0n, mtimeNs: st?.mtimeNs ?? 0n, ctimeNs: st?.ctimeNs ?? 0n };
    };
    const files = await Promise.all(names.map(expect));
    await writeFile(`${dir}/grew`, 'longer than before');
    const got = await pool.readFiles(files, 65536);
    const sync = readFilesSync(KEYS.chunkIdKey, files, 65536);
    assert.equal(got.length, names.length);
    got.forEach((r, i) => {
      const s = sync[i]!;
      assert.equal(r.ok, s.ok, names[i]);
      if (r.ok && s.ok) {
        assert.deepEqual(Buffer.from(r.data), Buffer.from(s.data));
        assert.deepEqual(r.id, s.id);
        assert.equal(r.changed, s.changed);
        assert.deepEqual(r.id, chunkId(KEYS.chunkIdKey, r.data));
      }
    });
    const by = Object.fromEntries(names.map((n, i) => [n, got[i]!]));
    assert.ok(by.a!.ok && !by.a!.changed && by.a!.data.length === 5000);
    assert.ok(by.empty!.ok && by.empty!.data.length === 0);
    assert.ok(by.grew!.ok && by.grew!.changed && by.grew!.data.toString() === 'longer than before', 'changed since the lstat: kept as read, flagged');
    assert.ok(!by.link!.ok && by.link!.errno === 'ELOOP', 'a symlink is not followed');
    assert.ok(!by.missing!.ok && by.missing!.errno === 'ENOENT');
  });

  it('shares SharedArrayBuffer-backed input instead of copying it, with the same results', async () => {
    const data = Buffer.from(new SharedArrayBuffer(400_000));
    randomBytes(5, 400_000).copy(data);
    assert.deepEqual(await pool.chunkAndHash(data, true, 'cdc'), expected(data, true, 'cdc'));
    const w = new PackWriter(KEYS);
    const raw = data.subarray(0, 70_000);
    const id = chunkId(KEYS.chunkIdKey, raw);
    const n = w.reserveNonce();
    const [enc] = await pool.encode([{ type: 'data', id, raw, packKey: w.packKey, nonceIndex: n }]);
    assert.deepEqual(enc, encodeBlob(KEYS, w.packKey, n, 'data', id, raw, 3));
    const stored = Buffer.from(new SharedArrayBuffer(enc!.stored.length));
    enc!.stored.copy(stored);
    assert.deepEqual(await pool.decode([{ type: 'data', id, packKey: w.packKey, nonceIndex: n, compressed: enc!.compressed, rawLength: raw.length, stored }]), [Buffer.from(raw)]);
  });

  it('streaming a file through chunkAndHash() in pieces gives the whole-buffer boundaries', async () => {
    const file = textBytes(6, 1 << 20);
    const whole = expected(file, true, 'cdc');
    const ends: number[] = [];
    let base = 0;
    let carry: Buffer = Buffer.alloc(0);
    for (let pos = 0; pos < file.length;) {
      const piece = file.subarray(pos, Math.min(file.length, pos + 100_000));
      pos += piece.length;
      const buf = Buffer.concat([carry, piece]);
      const r = await pool.chunkAndHash(buf, pos === file.length, 'cdc');
      for (const e of r.ends) ends.push(base + e);
      base += buf.length - r.rest;
      carry = buf.subarray(buf.length - r.rest);
    }
    assert.deepEqual(ends, whole.ends);
  });

  it('encode() equals encodeBlob() and decode() returns the raw bytes, in order, over many parallel calls', async () => {
    const w = new PackWriter(KEYS);
    const raws = Array.from({ length: 24 }, (_, i) => (i % 3 === 0 ? randomBytes(10 + i, 150_000 + i) : textBytes(10 + i, 200_000 + i)));
    const items = raws.map((raw, i) => ({ type: (i % 5 === 0 ? 'tree' : 'data') as 'data' | 'tree', id: chunkId(KEYS.chunkIdKey, raw), raw, packKey: w.packKey, nonceIndex: w.reserveNonce() }));
    const batches = [items.slice(0, 10), items.slice(10, 11), items.slice(11)];
    const encoded = (await Promise.all(batches.map((b) => pool.encode(b)))).flat();
    encoded.forEach((enc, i) => {
      const it = items[i]!;
      assert.deepEqual(enc, encodeBlob(KEYS, it.packKey, it.nonceIndex, it.type, it.id, it.raw, 3), `item ${i}`);
      w.append(it.type, it.id, enc, it.nonceIndex);
    });
    const decoded = await pool.decode(items.map((it, i) => ({ ...it, compressed: encoded[i]!.compressed, rawLength: it.raw.length, stored: encoded[i]!.stored })));
    assert.deepEqual(decoded, raws.map((r) => Buffer.from(r)));
    // And the in-process decoder agrees.
    items.forEach((it, i) => assert.deepEqual(decodeBlob(KEYS, it.packKey, it.nonceIndex, it.type, it.id, encoded[i]!.compressed, it.raw.length, encoded[i]!.stored), Buffer.from(raws[i]!)));
    const chunked = await Promise.all(raws.map((r) => pool.chunkAndHash(r, true, 'cdc')));
    chunked.forEach((c, i) => assert.deepEqual(c, expected(raws[i]!, true, 'cdc')));
  });

  it('reports worker errors as the same CofferError codes: CORRUPT on decode, INTERNAL on a bad id', async () => {
    const raw = textBytes(20, 5000);
    const id = chunkId(KEYS.chunkIdKey, raw);
    const [enc] = await pool.encode([{ type: 'data', id, raw, packKey: KEYS.encryption, nonceIndex: 0 }]);
    const bad = Buffer.from(enc!.stored);
    bad[3]! ^= 1;
    await assert.rejects(pool.decode([{ type: 'data', id, packKey: KEYS.encryption, nonceIndex: 0, compressed: enc!.compressed, rawLength: raw.length, stored: bad }]), (e) => isCofferError(e, 'CORRUPT'));
    await assert.rejects(pool.encode([{ type: 'data', id: Buffer.alloc(32), raw, packKey: KEYS.encryption, nonceIndex: 0 }]), (e) => isCofferError(e, 'INTERNAL'));
    await assert.rejects(pool.chunkAndHash(raw, true, { fixed: 0 }), (e) => isCofferError(e, 'USAGE'));
  });

  it('encode() and decode() of nothing return nothing', async () => {
    assert.deepEqual(await pool.encode([]), []);
    assert.deepEqual(await pool.decode([]), []);
  });

  it('hash() equals chunkId()', async () => {
    const datas = [Buffer.from('a'), randomBytes(21, 1000), new Uint8Array(0)];
    assert.deepEqual(await pool.hash(datas), datas.map((d) => chunkId(KEYS.chunkIdKey, d)));
  });

  it('serves several repositories at once through contexts: each gets its own chunker, chunk ids and encryption, also in a replaced worker', async () => {
    const shared = await WorkerPool.create({ workers: 2 });
    try {
      const otherKeys = deriveRepoKeys(Buffer.alloc(32, 7));
      const otherParams: ChunkerParams = { minSize: 1024, avgSize: 4096, maxSize: 16384 };
      const a = shared.context({ keys: KEYS, chunker: PARAMS, level: 3 });
      const b = shared.context({ keys: otherKeys, chunker: otherParams, level: 1 });
      const data = randomBytes(11, 300_000);
      const otherChunker = new Chunker(otherParams, gearTable(otherKeys.gearSeed));
      const wantB = chunkAndHashSync(otherChunker, otherKeys.chunkIdKey, data, true, 'cdc');
      // Interleaved on the same threads.
      const [ga, gb] = await Promise.all([a.chunkAndHash(data, true, 'cdc'), b.chunkAndHash(data, true, 'cdc')]);
      assert.deepEqual(ga, expected(data, true, 'cdc'));
      assert.deepEqual(gb.ends, wantB.ends);
      assert.notDeepEqual(ga.ends, gb.ends);
      // Encode under one repository, decode under it; the other's keys do not open it.
      const pw = new PackWriter(otherKeys);
      const id = chunkId(otherKeys.chunkIdKey, data);
      const [enc] = await b.encode([{ type: 'data', id, raw: data, packKey: pw.packKey, nonceIndex: pw.reserveNonce() }]);
      const [dec] = await b.decode([{ type: 'data', id, packKey: pw.packKey, nonceIndex: 0, compressed: enc!.compressed, rawLength: data.length, stored: enc!.stored }]);
      assert.ok(dec!.equals(data));
      await assert.rejects(a.decode([{ type: 'data', id, packKey: pw.packKey, nonceIndex: 0, compressed: enc!.compressed, rawLength: data.length, stored: enc!.stored }]), (e) => isCofferError(e, 'CORRUPT'));
      // A worker that replaces a crashed one knows both repositories.
      await assert.rejects(shared.crashOneWorkerForTest(), (e) => isCofferError(e, 'INTERNAL'));
      for (let i = 0; i < 4; i++) assert.deepEqual((await b.chunkAndHash(data, true, 'cdc')).ends, wantB.ends);
      b.close();
      await assert.rejects(shared.chunkAndHash(data, true, 'cdc'), (e) => isCofferError(e, 'INTERNAL') && /created without a repository/.test(e.message));
      assert.deepEqual(await a.chunkAndHash(data, true, 'cdc'), expected(data, true, 'cdc'));
    } finally {
      await shared.close();
    }
  });

  it('a crashed worker fails its task with INTERNAL, is replaced, and other tasks still complete', async () => {
    const data = randomBytes(30, 2 << 20);
    const slots = () => (pool as unknown as { slots: Array<{ dead: boolean; worker: { threadId: number } }> }).slots;
    const threadsBefore = slots().map((s) => s.worker.threadId);
    const running = [pool.chunkAndHash(data, true, 'cdc'), pool.chunkAndHash(data, true, 'cdc')];
    await assert.rejects(pool.crashOneWorkerForTest(), (e) => isCofferError(e, 'INTERNAL') && /died/.test(e.message));
    assert.equal(slots().filter((s) => !s.dead).length, 2, 'the dead worker was replaced');
    assert.equal(slots().filter((s) => threadsBefore.includes(s.worker.threadId)).length, 1, 'by a new thread');
    const want = expected(data, true, 'cdc');
    for (const r of await Promise.all(running)) assert.deepEqual(r, want);
    // Both workers are usable afterwards: run enough tasks to need both.
    const after = await Promise.all(Array.from({ length: 6 }, () => pool.chunkAndHash(data, true, 'cdc')));
    for (const r of after) assert.deepEqual(r, want);
  });

  it('an aborted signal cancels a queued or running task with CANCELLED', async () => {
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(pool.chunkAndHash(Buffer.from('x'), true, 'cdc', ac.signal), (e) => isCofferError(e, 'CANCELLED'));
    const ac2 = new AbortController();
    const data = randomBytes(31, 4 << 20);
    const tasks = Array.from({ length: 4 }, () => pool.chunkAndHash(data, true, 'cdc', ac2.signal));
    ac2.abort();
    for (const t of tasks) await assert.rejects(t, (e) => isCofferError(e, 'CANCELLED'));
    // The pool is still fine.
    assert.deepEqual(await pool.chunkAndHash(data.subarray(0, 100_000), true, 'cdc'), expected(data.subarray(0, 100_000), true, 'cdc'));
  });
});

describe('WorkerPool lifecycle', () => {
  it('close() terminates the workers, cancels pending work and refuses new work', async () => {
    const pool = await WorkerPool.create({ keys: KEYS, chunker: PARAMS, level: 3, workers: 1 });
    const threads = (pool as unknown as { slots: Array<{ worker: { threadId: number } }> }).slots.map((s) => s.worker);
    assert.ok(threads.every((w) => w.threadId > 0));
    const pending = assert.rejects(pool.chunkAndHash(randomBytes(40, 8 << 20), true, 'cdc'), (e) => isCofferError(e, 'CANCELLED'));
    await pool.close();
    await pending;
    assert.ok(threads.every((w) => w.threadId === -1), 'every worker thread has exited');
    await assert.rejects(pool.chunkAndHash(Buffer.from('x'), true, 'cdc'), (e) => isCofferError(e, 'INTERNAL'));
    await pool.close(); // idempotent
  });

  it('create() validates its options; without a number it starts one worker per core, one per two with the addon\'s encoder', async () => {
    const usage = (e: unknown) => isCofferError(e, 'USAGE');
    await assert.rejects(WorkerPool.create({ keys: KEYS, chunker: PARAMS, level: 3, workers: 0 }), usage);
    await assert.rejects(WorkerPool.create({ keys: KEYS, chunker: PARAMS, level: 3, workers: 1.5 }), usage);
    await assert.rejects(WorkerPool.create({ keys: KEYS, chunker: { ...PARAMS, avgSize: 10_000 }, level: 3, workers: 1 }), usage);
    await assert.rejects(WorkerPool.create({ keys: KEYS, chunker: PARAMS, level: 99, workers: 1 }), usage);
    const pool = await WorkerPool.create({ keys: KEYS, chunker: PARAMS, level: 3 });
    assert.equal(pool.size, Math.min(256, nativeCodec() ? Math.ceil(availableParallelism() / 2) : availableParallelism()));
    await pool.close();
  });

  it('a pool nobody closes does not keep the process alive', () => {
    const script = `
      import { WorkerPool } from ${JSON.stringify(new URL('./pool.ts', import.meta.url).href)};
      const keys = { encryption: Buffer.alloc(32, 1), chunkIdKey: Buffer.alloc(32, 2), gearSeed: Buffer.alloc(32, 3) };
      const pool = await WorkerPool.create({ keys, chunker: { minSize: 64, avgSize: 256, maxSize: 1024 }, level: 3, workers: 2 });
      const r = await pool.chunkAndHash(Buffer.alloc(5000, 7), true, 'cdc');
      console.log('done', r.ends.length);
    `;
    const res = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(res.signal, null, 'the process exited by itself');
    assert.equal(res.status, 0, res.stderr);
    assert.match(res.stdout, /^done \d+/);
  });
});
