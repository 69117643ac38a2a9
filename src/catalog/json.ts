// JSON columns: text in SQLite, jsonb in PostgreSQL. Both backends hand the layer JSON text (the
// pg pool is told not to parse json/jsonb), so reading and writing is the same code for both.
// jsonb keeps neither key order nor duplicate keys: callers must not rely on key order.

/** JSON text for a column; SQL NULL for undefined and null. */
export function toJson(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  return JSON.stringify(value);
}

/** JSON text for a NOT NULL column. */
export function toJsonRequired(value: unknown): string {
  return JSON.stringify(value ?? null);
}

/** The value of a JSON column; undefined for SQL NULL. */
export function fromJson<T>(text: unknown): T | undefined {
  if (text === null || text === undefined) return undefined;
  // PostgreSQL stores jsonb with a space after ':' and ','; both parse the same.
  return JSON.parse(text as string) as T;
}

/** JSON with object keys sorted at every level: equal values give equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[key];
      if (v !== undefined) out[key] = sortKeys(v);
    }
    return out;
  }
  return value;
}
