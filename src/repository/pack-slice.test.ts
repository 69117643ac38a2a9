import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { ALL_PACKS, SLICE_SPACE, inSlice, nextSlice, packPrefix, percentLength, sliceLength, slicePercent, slicesPerPeriod } from './pack-slice.ts';

const DAY = 86_400_000;

/** Pack ids as the repository makes them: content hashes, spread evenly. */
function packIds(n: number, seed: string): string[] {
  return Array.from({ length: n }, (_, i) => createHash('sha256').update(`${seed}/${i}`).digest('hex'));
}

/** Runs `runs` slices of `length` from `cursor`: how often each pack was read, and per run how many. */
function sweep(packs: readonly string[], cursor: number, length: number, runs: number): { reads: Map<string, number>; perRun: number[]; cursor: number } {
  const reads = new Map<string, number>(packs.map((p) => [p, 0]));
  const perRun: number[] = [];
  for (let i = 0; i < runs; i++) {
    const n = nextSlice(cursor, length);
    cursor = n.cursor;
    let count = 0;
    for (const p of packs) {
      if (inSlice(n.slice, p)) {
        reads.set(p, reads.get(p)! + 1);
        count++;
      }
    }
    perRun.push(count);
  }
  return { reads, perRun, cursor };
}

test('every: 1d, period: 30d reads every one of 60,000 packs within 30 runs, about 1/30 of them each run, from any cursor', () => {
  const packs = packIds(60_000, 'a');
  const slices = slicesPerPeriod(DAY, 30 * DAY);
  assert.equal(slices, 30);
  const length = sliceLength(slices);
  for (const start of [0, 1, 0x7fff_ffff, SLICE_SPACE - 1, 0x1234_5678]) {
    const { reads, perRun } = sweep(packs, start, length, slices);
    const unread = [...reads].filter(([, n]) => n === 0);
    assert.deepEqual(unread, [], `from cursor ${start}: packs never read within the period`);
    // Slices overlap by at most slices - 1 prefixes in all (the rounding up): a pack read twice is
    // one whose prefix falls there, which for 60,000 packs in 2^32 is next to impossible.
    assert.ok([...reads.values()].every((n) => n <= 2));
    for (const n of perRun) assert.ok(n > 60_000 / 30 * 0.85 && n < 60_000 / 30 * 1.15, `a run read ${n} packs, far from 1/30 of 60,000`);
  }
});

test('successive periods go on where the last ended: two periods read every pack twice', () => {
  const packs = packIds(5000, 'b');
  const length = sliceLength(7);
  const first = sweep(packs, 0, length, 7);
  const second = sweep(packs, first.cursor, length, 7);
  for (const p of packs) assert.equal(first.reads.get(p)! + second.reads.get(p)!, 2, `pack ${p.slice(0, 8)}`);
  // 7 slices of ceil(2^32 / 7) go round once and a little more.
  assert.equal(first.cursor, (7 * length) % SLICE_SPACE);
});

test('packs written during the period are read when the cursor passes their place', () => {
  const old = packIds(2000, 'c');
  const length = sliceLength(10);
  let cursor = 0;
  const read = new Set<string>();
  const added: string[] = [];
  for (let run = 0; run < 10; run++) {
    const fresh = packIds(50, `c-new-${run}`);
    added.push(...fresh);
    const n = nextSlice(cursor, length);
    cursor = n.cursor;
    for (const p of [...old, ...added]) if (inSlice(n.slice, p)) read.add(p);
  }
  // The old packs all; of the new ones, those that landed behind the cursor wait for the next period.
  for (const p of old) assert.ok(read.has(p));
  const second = sweep(added, cursor, length, 10);
  for (const p of added) assert.ok(read.has(p) || second.reads.get(p)! > 0);
});

test('a slice wraps around the end of the space', () => {
  const { slice, cursor } = nextSlice(SLICE_SPACE - 10, 20);
  assert.deepEqual(slice, { start: SLICE_SPACE - 10, length: 20 });
  assert.equal(cursor, 10);
  const hex = (n: number) => n.toString(16).padStart(8, '0') + '0'.repeat(56);
  assert.ok(inSlice(slice, hex(SLICE_SPACE - 10)));
  assert.ok(inSlice(slice, hex(SLICE_SPACE - 1)));
  assert.ok(inSlice(slice, hex(0)));
  assert.ok(inSlice(slice, hex(9)));
  assert.ok(!inSlice(slice, hex(10)));
  assert.ok(!inSlice(slice, hex(SLICE_SPACE - 11)));
});

test('the whole space is every pack; percent and period arithmetic', () => {
  const packs = packIds(100, 'd');
  assert.ok(packs.every((p) => inSlice(ALL_PACKS, p)));
  assert.equal(slicePercent(ALL_PACKS), 100);
  assert.equal(percentLength(100), SLICE_SPACE);
  assert.equal(percentLength(50), SLICE_SPACE / 2);
  assert.equal(percentLength(1e-9), 1); // never an empty slice
  assert.equal(slicesPerPeriod(DAY, DAY), 1);
  assert.equal(slicesPerPeriod(7 * DAY, 30 * DAY), 5); // rounded up: every pack within the period
  assert.equal(sliceLength(1), SLICE_SPACE);
  assert.equal(nextSlice(0, SLICE_SPACE).cursor, 0);
  assert.equal(packPrefix('ffffffff' + '0'.repeat(56)), SLICE_SPACE - 1);
  assert.throws(() => packPrefix('xyz'), RangeError);
  assert.throws(() => percentLength(0), RangeError);
  assert.throws(() => percentLength(101), RangeError);
  assert.throws(() => sliceLength(0), RangeError);
  assert.throws(() => slicesPerPeriod(0, DAY), RangeError);
});
