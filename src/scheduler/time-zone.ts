// Wall-clock arithmetic in an IANA time zone, for the scheduler's calendars and windows. Pure:
// offsets come from Intl (ECMAScript, not node:*), times are epoch milliseconds, and nothing here
// reads the clock or the process's time zone (TZ): the server's zone is passed in by its caller.
//
// "Wall time" below is a local date and time written as if it were UTC epoch milliseconds
// (Date.UTC(y, m, d, h, min, s)), so that calendar code (croner in UTC) can walk it without
// knowing about zones. Mapping a wall time back to an instant follows the scheduler's DST rules:
// a wall time that occurs twice (clocks go back) means its first occurrence, and one that does not
// occur (clocks go forward) means the first instant after the gap (02:30 in Berlin's spring gap is
// 03:00 CEST). That mapping never decreases as the wall time grows, which the calendar relies on.
import { CofferError } from '../core/errors.ts';

const SECOND = 1000;
const HOUR = 3_600_000;
// Offsets are cached per bucket of this many milliseconds. A bucket whose two ends have the same
// offset is taken to have no transition inside it: no zone has changed its offset twice within
// six hours and back. Intl costs ~7 µs a call here, a cached lookup well under 0.1 µs.
const BUCKET = 6 * HOUR;
const MAX_CACHED_BUCKETS = 100_000;

/** A bucket holds one offset, or a transition: `before` until `at` (exclusive), then `after`. */
type Bucket = number | { at: number; before: number; after: number };

const zones = new Map<string, TimeZone>();

export class TimeZone {
  /** The canonical IANA name (as Intl resolves it: "europe/berlin" becomes "Europe/Berlin"). */
  readonly name: string;
  private readonly format: Intl.DateTimeFormat;
  private readonly buckets = new Map<number, Bucket>();

  private constructor(name: string, format: Intl.DateTimeFormat) {
    this.name = name;
    this.format = format;
  }

  /** The zone named `name`; one shared instance per name. Throws INVALID_CONFIG for an unknown zone. */
  static of(name: string): TimeZone {
    const known = zones.get(name);
    if (known) return known;
    let format: Intl.DateTimeFormat;
    try {
      format = new Intl.DateTimeFormat('en-US', {
        timeZone: name, hourCycle: 'h23', era: 'short',
        year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
      });
    } catch (e) {
      throw new CofferError('INVALID_CONFIG', `Cannot use the time zone '${name}': it is not a known IANA time zone`, {
        cause: e,
        hint: 'Write an IANA name such as Europe/Berlin, America/New_York or UTC, or leave timezone out to use the server\'s.',
        details: { timezone: name },
      });
    }
    const canonical = format.resolvedOptions().timeZone;
    const zone = zones.get(canonical) ?? new TimeZone(canonical, format);
    zones.set(canonical, zone);
    zones.set(name, zone);
    return zone;
  }

  /** The zone's offset from UTC at instant t, in milliseconds (Berlin in summer: 7,200,000). */
  offsetAt(t: number): number {
    const key = Math.floor(t / BUCKET);
    let bucket = this.buckets.get(key);
    if (bucket === undefined) {
      if (this.buckets.size >= MAX_CACHED_BUCKETS) this.buckets.clear();
      bucket = this.measureBucket(key);
      this.buckets.set(key, bucket);
    }
    if (typeof bucket === 'number') return bucket;
    return t < bucket.at ? bucket.before : bucket.after;
  }

  /** The wall time at instant t (see the module comment). */
  wall(t: number): number {
    return t + this.offsetAt(t);
  }

  /**
   * The instant a wall time stands for: the instant itself when it occurs once, its first
   * occurrence when it occurs twice, and the first instant after the gap when it does not occur.
   */
  resolve(wall: number): number {
    const guess = this.offsetAt(wall);
    const before = this.offsetAt(wall - guess - 12 * HOUR);
    const after = this.offsetAt(wall - guess + 12 * HOUR);
    if (before === after) return wall - before;
    // The two instants the wall time could stand for, by the offset before and after the change.
    const byBefore = wall - before;
    const byAfter = wall - after;
    const beforeValid = this.offsetAt(byBefore) === before;
    const afterValid = this.offsetAt(byAfter) === after;
    if (beforeValid && afterValid) return Math.min(byBefore, byAfter);
    if (beforeValid) return byBefore;
    if (afterValid) return byAfter;
    // In the gap: the clock jumped from before `wall` to after it at the transition, which lies
    // between the two candidates. The first instant with the new offset is the answer.
    let lo = Math.min(byBefore, byAfter);
    let hi = Math.max(byBefore, byAfter);
    while (hi - lo > SECOND) {
      const mid = lo + Math.floor((hi - lo) / 2 / SECOND) * SECOND;
      if (mid <= lo) break;
      if (this.offsetAt(mid) === after) hi = mid;
      else lo = mid;
    }
    return hi;
  }

  private measureBucket(key: number): Bucket {
    const start = key * BUCKET;
    const end = start + BUCKET;
    const before = this.measure(start);
    const after = this.measure(end);
    if (before === after) return before;
    // The transition is on a whole second: find the first second with the new offset.
    let lo = start;
    let hi = end;
    while (hi - lo > SECOND) {
      const mid = lo + Math.floor((hi - lo) / 2 / SECOND) * SECOND;
      if (this.measure(mid) === before) lo = mid;
      else hi = mid;
    }
    return { at: hi, before, after: this.measure(hi) };
  }

  /** The offset at t from Intl, uncached. */
  private measure(t: number): number {
    const seconds = Math.floor(t / SECOND) * SECOND;
    let year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, bc = false;
    for (const part of this.format.formatToParts(seconds)) {
      switch (part.type) {
        case 'year': year = Number(part.value); break;
        case 'month': month = Number(part.value); break;
        case 'day': day = Number(part.value); break;
        case 'hour': hour = Number(part.value); break;
        case 'minute': minute = Number(part.value); break;
        case 'second': second = Number(part.value); break;
        case 'era': bc = part.value === 'BC'; break;
      }
    }
    const wall = new Date(0);
    wall.setUTCFullYear(bc ? 1 - year : year, month - 1, day);
    wall.setUTCHours(hour, minute, second, 0);
    return wall.getTime() - seconds;
  }
}
