// Durations and backup windows as people write them in policy documents: `30d`, `6h`, `90m`,
// `1h30m`, `2w`, `1y` (365 days), `infinite`; windows `{ start: "01:00", duration: 6h }`.
// There are no months: they differ in length, and a retention that is sometimes 28 days and
// sometimes 31 is a surprise nobody wants when a restore request comes on day 30. Parsing keeps
// the user's spelling out of the picture: documents store what was written, and comparisons go
// through milliseconds (so `24h` and `1d` are the same retention).

import { CofferError } from '../core/errors.ts';

/** Milliseconds per unit, largest first: the order units must be written in. */
export const DURATION_UNITS = {
  y: 365 * 86_400_000,
  w: 7 * 86_400_000,
  d: 86_400_000,
  h: 3_600_000,
  m: 60_000,
  s: 1000,
} as const;

export type DurationUnit = keyof typeof DURATION_UNITS;

/** The word for a duration with no end (retention only). */
export const INFINITE = 'infinite';

/** Longer than this is a typo, not a retention: use `infinite`. */
const MAX_MS = 1000 * DURATION_UNITS.y;

const FORM = /^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/;
const EXAMPLES = 'Write a whole number and a unit: 30d, 6h, 90m, 1h30m, 2w, 1y (365 days).';

export interface DurationOptions {
  /** Whether `infinite` is allowed (retention); default false. */
  infinite?: boolean;
  /** Whether zero is allowed (`0s`, `0d`); default false. */
  zero?: boolean;
  /** The smallest value allowed, in ms (after zero is considered). */
  min?: number;
  /** The largest value allowed, in ms. */
  max?: number;
}

export type DurationResult = { ok: true; ms: number } | { ok: false; problem: string; hint?: string };

/**
 * Reads a duration without throwing: `{ ok, ms }` (Infinity for `infinite`), or what is wrong
 * with it and how to write it instead. The schemas use this to report every problem at once.
 */
export function checkDuration(text: unknown, options: DurationOptions = {}): DurationResult {
  const bad = (problem: string, hint?: string): DurationResult => (hint === undefined ? { ok: false, problem } : { ok: false, problem, hint });
  if ((typeof text === 'number' && text === 0) || (typeof text === 'string' && /^0+$/.test(text))) {
    return options.zero ? bad(`${JSON.stringify(text)} has no unit`, 'Write 0s.') : bad('a duration of 0 is not allowed here', 'Give a length greater than zero, e.g. 30d or 6h.');
  }
  if (typeof text === 'number') return bad(`the number ${text} has no unit`, `Write e.g. ${text}h or ${text}d.`);
  if (typeof text !== 'string') return bad(`expected a duration such as 30d, got ${describeValue(text)}`);
  const shown = JSON.stringify(text);
  if (text === '') return bad('the duration is empty', EXAMPLES);
  if (text === INFINITE) {
    return options.infinite ? { ok: true, ms: Infinity } : bad('"infinite" is not allowed here', 'Only a retention can be infinite; give a length such as 30d.');
  }
  if (/^(forever|never|inf|infinity|unlimited|permanent|none)$/i.test(text.trim())) {
    return bad(`${shown} is not a duration`, options.infinite ? 'Write infinite for a copy that never expires.' : EXAMPLES);
  }
  const spelled = spellUnits(text);
  if (spelled !== undefined && spelled !== text && FORM.test(spelled)) return bad(`${shown} is not a duration`, `Write ${spelled}: units are single letters, y (365 days), w, d, h, m and s.`);
  if (/\s/.test(text)) return bad(`${shown} has spaces in it`, `Write it without spaces, e.g. ${text.replace(/\s+/g, '')}.`);
  if (/^-/.test(text)) return bad(`${shown} is negative`, EXAMPLES);
  if (/^\d+$/.test(text)) return bad(`${shown} has no unit`, `Write e.g. ${text}h or ${text}d.`);
  if (/\d[.,]\d/.test(text)) return bad(`${shown} is not a whole number of units`, 'Combine units instead, e.g. 1h30m for 1.5h, 36h for 1.5d.');
  if (/\d(mo|mon|month|months|M)(\d|$)/.test(text)) return bad(`${shown}: months vary in length`, 'Write days (30d, 90d) or years (1y).');
  if (/[A-Z]/.test(text) && FORM.test(text.toLowerCase())) return bad(`${shown}: units are lower case`, `Write ${text.toLowerCase()}.`);
  const m = FORM.exec(text);
  if (m === null) {
    const units = [...text.matchAll(/\d+([a-z]+)/gi)].map((u) => u[1]!);
    const unknown = units.find((u) => !(u in DURATION_UNITS));
    if (unknown !== undefined) return bad(`${shown}: "${unknown}" is not a unit`, `Units are y (365 days), w, d, h, m and s. ${EXAMPLES}`);
    if (units.length > 1) return bad(`${shown}: units must go from the largest to the smallest, each once`, 'e.g. 1d12h or 1h30m.');
    return bad(`${shown} is not a duration`, EXAMPLES);
  }
  let ms = 0;
  const values = m.slice(1);
  const units = Object.values(DURATION_UNITS);
  for (let i = 0; i < units.length; i++) {
    if (values[i] !== undefined) ms += Number(values[i]) * units[i]!;
  }
  if (!Number.isSafeInteger(ms) || ms > MAX_MS) return bad(`${shown} is longer than 1000y`, options.infinite ? 'Write infinite for a copy that never expires.' : 'Check the number.');
  if (ms === 0) {
    if (!options.zero) return bad(`${shown} is zero`, 'Give a length greater than zero.');
    return { ok: true, ms };
  }
  if (options.min !== undefined && ms < options.min) return bad(`${shown} is less than ${formatDuration(options.min)}`);
  if (options.max !== undefined && ms > options.max) return bad(`${shown} is more than ${formatDuration(options.max)}`);
  return { ok: true, ms };
}

const WORDS: [RegExp, string][] = [
  [/^(?:years?|yrs?)$/i, 'y'], [/^(?:weeks?|wks?)$/i, 'w'], [/^days?$/i, 'd'], [/^(?:hours?|hrs?)$/i, 'h'],
  [/^(?:minutes?|mins?)$/i, 'm'], [/^(?:seconds?|secs?)$/i, 's'],
];

/** "7 years" → "7y", "1 hour 30 minutes" → "1h30m"; undefined when it is not numbers and unit words. */
function spellUnits(text: string): string | undefined {
  const parts = [...text.trim().matchAll(/(\d+)\s*([A-Za-z]+)[\s,]*/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text.trim()) return undefined;
  let out = '';
  for (const p of parts) {
    const unit = WORDS.find(([re]) => re.test(p[2]!))?.[1] ?? (p[2]! in DURATION_UNITS ? p[2]! : undefined);
    if (unit === undefined) return undefined;
    out += `${p[1]}${unit}`;
  }
  return out;
}

/** Reads a duration into milliseconds (Infinity for `infinite` where allowed); throws INVALID_CONFIG. */
export function parseDuration(text: string, options: DurationOptions = {}): number {
  const result = checkDuration(text, options);
  if (result.ok) return result.ms;
  throw new CofferError('INVALID_CONFIG', `Cannot read the duration ${JSON.stringify(text)}: ${result.problem}`, result.hint === undefined ? {} : { hint: result.hint });
}

/**
 * The canonical spelling of a duration: the largest units first, weeks left out (`14d`, not
 * `2w`), e.g. 5_400_000 → `1h30m`, Infinity → `infinite`, 0 → `0s`. Whole seconds only.
 */
export function formatDuration(ms: number): string {
  if (ms === Infinity) return INFINITE;
  if (!Number.isSafeInteger(ms) || ms < 0 || ms % 1000 !== 0) throw new RangeError(`formatDuration: ${ms} is not a whole, non-negative number of seconds`);
  if (ms === 0) return '0s';
  let rest = ms;
  let out = '';
  for (const [unit, size] of Object.entries(DURATION_UNITS)) {
    if (unit === 'w') continue;
    const n = Math.floor(rest / size);
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * size;
    }
  }
  return out;
}

/** A time of day, "HH:MM" (24-hour), as minutes after midnight. */
export type TimeOfDayResult = { ok: true; minutes: number } | { ok: false; problem: string; hint?: string };

export function checkTimeOfDay(text: unknown): TimeOfDayResult {
  if (typeof text === 'number') {
    // YAML 1.1 readers turn an unquoted 01:00 into 60; a bare number is either that or a typo.
    return { ok: false, problem: `expected a time of day "HH:MM", got the number ${text}`, hint: 'Quote it: start: "01:00".' };
  }
  if (typeof text !== 'string') return { ok: false, problem: `expected a time of day "HH:MM", got ${describeValue(text)}` };
  const m = /^(\d{1,2}):(\d{2})$/.exec(text);
  if (m === null) return { ok: false, problem: `${JSON.stringify(text)} is not a time of day`, hint: 'Write 24-hour "HH:MM", e.g. "01:00" or "22:30".' };
  const h = Number(m[1]);
  const min = Number(m[2]);
  if (h > 23 || min > 59) return { ok: false, problem: `${JSON.stringify(text)} is not a time of day`, hint: 'Hours go from 00 to 23 and minutes from 00 to 59.' };
  if (m[1]!.length !== 2) return { ok: false, problem: `${JSON.stringify(text)} needs two digits for the hour`, hint: `Write "${String(h).padStart(2, '0')}:${m[2]}".` };
  return { ok: true, minutes: h * 60 + min };
}

export function formatTimeOfDay(minutes: number): string {
  const m = ((minutes % 1440) + 1440) % 1440;
  return `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
}

/** A backup window as written: opens every day at `start` for `duration` (at most 24h). */
export interface WindowSpec {
  start: string;
  duration: string;
}

/** A window read into numbers. */
export interface Window {
  /** Minutes after midnight, in the schedule's time zone. */
  startMinutes: number;
  durationMs: number;
}

/** A window opens every day, so one longer than a day would overlap the next: 24h means always open. */
export const MAX_WINDOW_MS = DURATION_UNITS.d;

/** Reads a window; throws INVALID_CONFIG naming what is wrong. */
export function parseWindow(window: WindowSpec): Window {
  const start = checkTimeOfDay(window.start);
  if (!start.ok) throw new CofferError('INVALID_CONFIG', `Cannot read the window start: ${start.problem}`, start.hint === undefined ? {} : { hint: start.hint });
  const durationMs = parseDuration(window.duration, { min: DURATION_UNITS.m, max: MAX_WINDOW_MS });
  return { startMinutes: start.minutes, durationMs };
}

/** "01:00-07:00", "22:00-04:00 (next day)", or "always" for a 24h window. */
export function formatWindow(window: Window): string {
  if (window.durationMs >= MAX_WINDOW_MS) return 'always';
  const endMinutes = window.startMinutes + Math.ceil(window.durationMs / 60_000);
  const next = endMinutes >= 1440 && endMinutes % 1440 !== 0 ? ' (next day)' : '';
  return `${formatTimeOfDay(window.startMinutes)}-${formatTimeOfDay(endMinutes)}${next}`;
}

/** "the number 24", "a list", "a map", "true", "nothing": for messages about wrong types. */
export function describeValue(value: unknown): string {
  if (value === undefined || value === null) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a map';
  if (typeof value === 'string') return `the text ${JSON.stringify(value)}`;
  if (typeof value === 'number') return `the number ${value}`;
  if (typeof value === 'boolean') return `${value}`;
  return typeof value;
}
