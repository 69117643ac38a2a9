// Time-ordered text ids for catalog rows (jobs, images, copies, tokens): 26 characters of
// Crockford base32, 48 bits of milliseconds then 80 random bits, as ULIDs are. Sorting ids as
// text sorts them by creation time, so a list ordered by id is ordered by time, and keyset
// pagination needs no second column. Within one millisecond the random part is incremented, so
// ids made by one process never go backwards.
//
// Pure: randomness comes from the Web Crypto global, the time from the caller.

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const TIME_CHARS = 10;
const RANDOM_CHARS = 16;

let lastTime = -1;
const lastRandom = new Uint8Array(RANDOM_CHARS); // one base32 digit (0..31) per character

/** A new id for the time `now` (milliseconds since the epoch). */
export function ulid(now: number): string {
  if (!Number.isInteger(now) || now < 0 || now >= 2 ** 48) throw new RangeError(`Cannot make an id: the time ${now} is out of range`);
  if (now <= lastTime) {
    // Same (or an earlier: the clock stepped back) millisecond: keep lastTime and count up.
    incrementRandom();
  } else {
    lastTime = now;
    const bytes = new Uint8Array(RANDOM_CHARS);
    globalThis.crypto.getRandomValues(bytes);
    for (let i = 0; i < RANDOM_CHARS; i++) lastRandom[i] = bytes[i]! & 31;
    // Leave room to count up within the millisecond without overflowing.
    lastRandom[0] = lastRandom[0]! & 15;
  }
  let time = '';
  for (let i = 0, t = lastTime; i < TIME_CHARS; i++, t = Math.floor(t / 32)) time = ALPHABET[t % 32]! + time;
  let random = '';
  for (let i = 0; i < RANDOM_CHARS; i++) random += ALPHABET[lastRandom[i]!];
  return time + random;
}

/** The creation time encoded in an id made by ulid(). */
export function ulidTime(id: string): number {
  let t = 0;
  for (let i = 0; i < TIME_CHARS; i++) {
    const v = ALPHABET.indexOf(id[i]!.toUpperCase());
    if (v < 0) throw new RangeError(`Cannot read the time of id ${id}: it is not a ULID`);
    t = t * 32 + v;
  }
  return t;
}

function incrementRandom(): void {
  for (let i = RANDOM_CHARS - 1; i >= 0; i--) {
    if (lastRandom[i]! < 31) {
      lastRandom[i]!++;
      return;
    }
    lastRandom[i] = 0;
  }
  // 2^79 ids in one millisecond: move on to the next millisecond rather than wrap.
  lastTime++;
}
