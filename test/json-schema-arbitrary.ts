// A small JSON Schema → fast-check converter for fuzzing the API from its OpenAPI document:
// `validValue(schema)` draws values the schema accepts (objects with required and optional
// properties, strings with length bounds, patterns and enums, integers and numbers with bounds,
// booleans, arrays, anyOf/oneOf, `{}` as any JSON), and `garbageFor(schema)` draws values of
// the wrong type, huge or odd strings, out-of-range numbers and deeply nested junk. Only what
// zod's JSON Schema output uses is covered; anything else is drawn as any JSON value.
import fc from 'fast-check';

export interface JsonSchema {
  type?: string | string[];
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number | boolean;
  exclusiveMaximum?: number | boolean;
  [k: string]: unknown;
}

/**
 * Known good values by property or parameter name: drawn half of the time, so handlers get past
 * "not found". A name in `exact` is drawn from its hints only: its schema says less than the
 * server checks (a zod transform, e.g. a document kind).
 */
export type Hints = Record<string, readonly unknown[]> & { exact?: readonly string[] };

const SMALL = 24;

const anyJson = fc.jsonValue({ maxDepth: 2 });

function text(min: number, max: number): fc.Arbitrary<string> {
  const maxLength = Math.max(min, Math.min(max, min + SMALL));
  return fc.oneof(
    fc.string({ minLength: min, maxLength, unit: 'grapheme-ascii' }),
    fc.string({ minLength: min, maxLength, unit: 'grapheme' }),
  );
}

/** Values the schema accepts (as far as JSON Schema says: zod refinements are not in it). */
export function validValue(schema: JsonSchema, hints: Hints = {}, name?: string): fc.Arbitrary<unknown> {
  const plain = validPlain(schema, hints);
  const known = name !== undefined && name !== 'exact' ? hints[name] : undefined;
  if (known?.length && hints.exact?.includes(name!)) return fc.constantFrom(...known);
  return known?.length ? fc.oneof(fc.constantFrom(...known), plain) : plain;
}

function validPlain(s: JsonSchema, hints: Hints): fc.Arbitrary<unknown> {
  if (s.const !== undefined) return fc.constant(s.const);
  if (s.enum) return fc.constantFrom(...s.enum);
  const union = s.anyOf ?? s.oneOf;
  if (union?.length) return fc.oneof(...union.map((u) => validValue(u, hints)));
  const type = Array.isArray(s.type) ? s.type[0] : s.type;
  switch (type) {
    case 'string': {
      const min = s.minLength ?? 0;
      const max = s.maxLength ?? 1000;
      if (s.pattern) return fc.stringMatching(new RegExp(s.pattern)).filter((v) => v.length >= min && v.length <= max);
      return text(min, max);
    }
    case 'integer': {
      const min = typeof s.exclusiveMinimum === 'number' ? s.exclusiveMinimum + 1 : s.minimum ?? -1e9;
      const max = typeof s.exclusiveMaximum === 'number' ? s.exclusiveMaximum - 1 : s.maximum ?? 1e9;
      return fc.oneof(fc.constantFrom(min, max), fc.integer({ min: Math.max(min, Number.MIN_SAFE_INTEGER), max: Math.min(max, Number.MAX_SAFE_INTEGER) }));
    }
    case 'number': {
      // A bound that excludes its value (z.number().gt(0)) is one the values must not reach.
      // (OpenAPI 3.0 writes it as a flag beside minimum, JSON Schema as the bound itself.)
      const exMin = typeof s.exclusiveMinimum === 'number' ? s.exclusiveMinimum : s.exclusiveMinimum === true ? s.minimum : undefined;
      const exMax = typeof s.exclusiveMaximum === 'number' ? s.exclusiveMaximum : s.exclusiveMaximum === true ? s.maximum : undefined;
      return fc.double({
        min: exMin ?? s.minimum ?? -1e9, minExcluded: exMin !== undefined,
        max: exMax ?? s.maximum ?? 1e9, maxExcluded: exMax !== undefined,
        noNaN: true, noDefaultInfinity: true,
      });
    }
    case 'boolean':
      return fc.boolean();
    case 'null':
      return fc.constant(null);
    case 'array':
      return fc.array(validValue(s.items ?? {}, hints), { minLength: s.minItems ?? 0, maxLength: Math.max(s.minItems ?? 0, Math.min(s.maxItems ?? 4, 4)) });
    case 'object': {
      const props = s.properties ?? {};
      const keys = Object.keys(props);
      if (!keys.length) {
        if (s.additionalProperties === false) return fc.constant({});
        return fc.dictionary(fc.string({ maxLength: 12 }), typeof s.additionalProperties === 'object' ? validValue(s.additionalProperties, hints) : anyJson, { maxKeys: 4 });
      }
      const model = Object.fromEntries(keys.map((k) => [k, validValue(props[k]!, hints, k)]));
      return fc.record(model, { requiredKeys: (s.required ?? []).filter((k) => k in props) });
    }
    default:
      return anyJson;
  }
}

/** Deeply nested arrays and objects, as a string of JSON (so the sender needs no recursion). */
export function deepJson(depth: number): string {
  return '{"a":'.repeat(depth) + '[' .repeat(depth) + '0' + ']'.repeat(depth) + '}'.repeat(depth);
}

const ODD_STRINGS = [
  '', ' ', '\u0000', 'a\u0000b', '\u202eevil', '\ud800', '\udfff\ud800', '😀'.repeat(300), 'é'.normalize('NFD'), 'ℌ𝔢𝔩𝔩𝔬', '\r\n\t',
  '../../../etc/passwd', '/..', '%00', '%2F', '${jndi:ldap://x}', "'; DROP TABLE users; --", '__proto__', 'constructor', '<script>', '\\', '//',
];

/** Values that are wrong for the schema most of the time: other types, huge or odd strings, extreme numbers, nested junk. */
export function garbageFor(s: JsonSchema): fc.Arbitrary<unknown> {
  const type = Array.isArray(s.type) ? s.type[0] : s.type;
  const wrongType: unknown[] = [null, true, 0, -1, 1.5, 'text', [], {}, [null], { a: { b: [1, 'x', null] } }].filter((v) => {
    if (type === 'string') return typeof v !== 'string';
    if (type === 'integer' || type === 'number') return typeof v !== 'number';
    if (type === 'boolean') return typeof v !== 'boolean';
    if (type === 'array') return !Array.isArray(v);
    if (type === 'object') return v === null || typeof v !== 'object' || Array.isArray(v);
    return true;
  });
  return fc.oneof(
    { arbitrary: fc.constantFrom(...wrongType), weight: 3 },
    { arbitrary: fc.constantFrom(...ODD_STRINGS), weight: 3 },
    { arbitrary: fc.integer({ min: 1, max: 300_000 }).map((n) => 'x'.repeat(n)), weight: 1 },
    { arbitrary: fc.string({ unit: 'binary', maxLength: 64 }), weight: 2 },
    { arbitrary: fc.constantFrom(-1, -0, -1e308, 1e308, Number.MAX_SAFE_INTEGER + 2, -Number.MAX_SAFE_INTEGER - 2, 2 ** 31, 0.1, 1e-300), weight: 2 },
    { arbitrary: fc.anything({ maxDepth: 4, withNullPrototype: false }).map((v) => JSON.parse(JSON.stringify(v) ?? 'null') as unknown), weight: 2 },
    { arbitrary: fc.array(s.type === 'array' ? garbageFor(s.items ?? {}) : fc.string(), { minLength: 1, maxLength: 3 }), weight: 1 },
  );
}

/** A string query or path value for a parameter: valid, or one of many wrong ones. */
export function garbageParam(): fc.Arbitrary<string> {
  return fc.oneof(
    fc.constantFrom('-1', '0', '1e309', 'NaN', 'Infinity', '0x10', ' 1', '1.5', '9007199254740993', '-9007199254740993', 'true', 'null', '[]', '{}', ...ODD_STRINGS),
    fc.integer({ min: 1, max: 20_000 }).map((n) => 'y'.repeat(n)),
    fc.string({ unit: 'binary', maxLength: 40 }),
  );
}
