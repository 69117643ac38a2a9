// Which packs a verification reads: a slice of the pack-id space. Pack ids are content hashes,
// so their first 32 bits spread evenly over [0, 2^32); a slice is a range of that space,
// [start, start + length) taken modulo 2^32. A run that reads the slice after the previous one
// (the server keeps where it ended, a cursor per storage unit) covers, after `slices` runs of
// length ceil(2^32 / slices), every pack that existed throughout them: packs written meanwhile
// land somewhere in the space and are read when the cursor passes there. This needs no list of
// packs on the server and stays right when packs come and go, which a list position would not.
//
// Pure arithmetic, no I/O: the server computes the ranges, the agent selects the packs.

/** The size of the space of pack-id prefixes: 2^32. */
export const SLICE_SPACE = 0x1_0000_0000;

/** A range of pack-id prefixes: [start, start + length) modulo 2^32; length SLICE_SPACE is every pack. */
export interface PackSlice {
  start: number;
  length: number;
}

/** The whole space: every pack. */
export const ALL_PACKS: PackSlice = { start: 0, length: SLICE_SPACE };

/** The first 32 bits of a pack id (hex) as a number in [0, 2^32). */
export function packPrefix(packHex: string): number {
  const n = Number.parseInt(packHex.slice(0, 8), 16);
  if (!Number.isFinite(n) || packHex.length < 8) throw new RangeError(`not a pack id: ${JSON.stringify(packHex)}`);
  return n;
}

/** Whether the pack `packHex` falls in `slice`. */
export function inSlice(slice: PackSlice, packHex: string): boolean {
  if (slice.length >= SLICE_SPACE) return true;
  const offset = (packPrefix(packHex) - slice.start + SLICE_SPACE) % SLICE_SPACE;
  return offset < slice.length;
}

/**
 * The number of runs that read every pack once when a run comes every `everyMs` and every pack
 * must be read within `periodMs`: ceil(period / every), at least 1.
 */
export function slicesPerPeriod(everyMs: number, periodMs: number): number {
  if (!(everyMs > 0) || !(periodMs > 0)) throw new RangeError('every and period must be positive');
  return Math.max(1, Math.ceil(periodMs / everyMs));
}

/** The length of one of `slices` slices: ceil(2^32 / slices), so that `slices` of them cover the space. */
export function sliceLength(slices: number): number {
  if (!Number.isInteger(slices) || slices < 1) throw new RangeError(`slices must be a positive integer, not ${slices}`);
  return Math.ceil(SLICE_SPACE / slices);
}

/** The length of a slice of `percent` % of the space (0 < percent ≤ 100), at least 1. */
export function percentLength(percent: number): number {
  if (!(percent > 0 && percent <= 100)) throw new RangeError(`percent must be in (0, 100], not ${percent}`);
  return Math.min(SLICE_SPACE, Math.max(1, Math.ceil((SLICE_SPACE * percent) / 100)));
}

/** The slice a run reads from `cursor` (where the previous one ended), and the cursor after it. */
export function nextSlice(cursor: number, length: number): { slice: PackSlice; cursor: number } {
  const start = ((Math.floor(cursor) % SLICE_SPACE) + SLICE_SPACE) % SLICE_SPACE;
  const len = Math.min(SLICE_SPACE, Math.max(1, Math.floor(length)));
  return { slice: { start, length: len }, cursor: (start + len) % SLICE_SPACE };
}

/** What share of the space a slice is, in percent (for logs and results). */
export function slicePercent(slice: PackSlice): number {
  return (Math.min(slice.length, SLICE_SPACE) / SLICE_SPACE) * 100;
}
