// Sizes and fractions as people write them in documents: a storage unit's `capacity` ("2TB",
// "500GiB", "1.5TB") and a stage's `highWater` ("80%"). Decimal units are powers of 1000 (as disk
// vendors and S3 bills count), binary ones (KiB, MiB, ...) powers of 1024. Like durations.ts,
// checks never throw and say what is wrong and how to write it instead; documents keep what was
// written, and comparisons go through the number.

import { describeValue } from './durations.ts';

/** Bytes per unit; upper case as written, matched without regard to case for the suggestions. */
export const SIZE_UNITS: Record<string, number> = {
  B: 1,
  KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, PB: 1e15,
  KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40, PiB: 2 ** 50,
};

const SIZE_EXAMPLES = 'Write a number and a unit: 500GB, 2TB, 1.5TB (powers of 1000) or 512GiB, 4TiB (powers of 1024).';
const FORM = /^(\d+(?:\.\d+)?)([A-Za-z]+)$/;

export type SizeResult = { ok: true; bytes: number } | { ok: false; problem: string; hint?: string };

/** Reads a size such as `2TB` into bytes, or says what is wrong with it. */
export function checkSize(text: unknown): SizeResult {
  if (typeof text === 'number') return { ok: false, problem: `the number ${text} has no unit`, hint: `Write e.g. ${text}GB or ${text}TB.` };
  if (typeof text !== 'string') return { ok: false, problem: `expected a size such as 2TB, got ${describeValue(text)}` };
  const shown = JSON.stringify(text);
  if (text.trim() === '') return { ok: false, problem: 'the size is empty', hint: SIZE_EXAMPLES };
  if (/\s/.test(text)) return { ok: false, problem: `${shown} has spaces in it`, hint: `Write it without spaces, e.g. ${text.replace(/\s+/g, '')}.` };
  if (text.startsWith('-')) return { ok: false, problem: `${shown} is negative`, hint: SIZE_EXAMPLES };
  if (/^\d+(?:\.\d+)?$/.test(text)) return { ok: false, problem: `${shown} has no unit`, hint: `Write e.g. ${text}GB or ${text}TB.` };
  const m = FORM.exec(text.replace(',', '.'));
  if (m === null) return { ok: false, problem: `${shown} is not a size`, hint: SIZE_EXAMPLES };
  if (text.includes(',')) return { ok: false, problem: `${shown} uses a decimal comma`, hint: `Write ${text.replace(',', '.')}.` };
  const unit = m[2]!;
  const known = Object.keys(SIZE_UNITS).find((u) => u.toLowerCase() === unit.toLowerCase());
  if (known === undefined) return { ok: false, problem: `${shown}: "${unit}" is not a unit of size`, hint: `Units are B, KB, MB, GB, TB, PB and KiB, MiB, GiB, TiB, PiB. ${SIZE_EXAMPLES}` };
  if (known !== unit) return { ok: false, problem: `${shown}: write the unit as ${known}`, hint: `Write ${m[1]}${known}.` };
  const bytes = Math.round(Number(m[1]) * SIZE_UNITS[known]!);
  if (bytes === 0) return { ok: false, problem: `${shown} is zero`, hint: 'Give the size of the storage, e.g. 2TB.' };
  if (!Number.isSafeInteger(bytes)) return { ok: false, problem: `${shown} is larger than Coffer counts`, hint: 'Check the number and the unit.' };
  return { ok: true, bytes };
}

export type FractionResult = { ok: true; fraction: number } | { ok: false; problem: string; hint?: string };

const PERCENT_EXAMPLES = 'Write a percentage of the unit\'s capacity, e.g. "80%" or "92.5%".';

/** Reads a high-water mark such as `80%` into a fraction (0.8), or says what is wrong with it. */
export function checkPercent(text: unknown): FractionResult {
  if (typeof text === 'number') {
    const as = text > 0 && text < 1 ? `${Math.round(text * 1000) / 10}%` : `${text}%`;
    return { ok: false, problem: `expected a percentage such as "80%", got the number ${text}`, hint: `Write it as text with a percent sign: "${as}".` };
  }
  if (typeof text !== 'string') return { ok: false, problem: `expected a percentage such as "80%", got ${describeValue(text)}` };
  const shown = JSON.stringify(text);
  const m = /^(\d+(?:\.\d+)?)\s*%$/.exec(text.trim());
  if (m === null) {
    if (/^-/.test(text.trim())) return { ok: false, problem: `${shown} is negative`, hint: PERCENT_EXAMPLES };
    if (/^\d+(?:\.\d+)?$/.test(text.trim())) return { ok: false, problem: `${shown} has no percent sign`, hint: `Write "${text.trim()}%".` };
    return { ok: false, problem: `${shown} is not a percentage`, hint: PERCENT_EXAMPLES };
  }
  if (text !== `${m[1]}%`) return { ok: false, problem: `${shown} has spaces in it`, hint: `Write "${m[1]}%".` };
  const percent = Number(m[1]);
  if (percent <= 0 || percent >= 100) {
    return { ok: false, problem: `${shown} is not between 0% and 100%`, hint: percent >= 100 ? 'A unit is never above 100% of its capacity: the mark would never be reached. Give e.g. "90%".' : 'At 0% every copy would be staged at once. Give e.g. "80%".' };
  }
  return { ok: true, fraction: percent / 100 };
}
