// What `coffer diff` and `coffer apply` show: for each desired document, whether applying it
// creates it, changes it (with the changed fields and a unified diff of the canonical YAML) or
// leaves it as it is. Both sides are compared in canonical form, so key order, flow or block
// style and comments make no difference; a different spelling of the same value does (`24h` and
// `1d`), because the stored document is what was applied.

import { toYaml } from './documents.ts';
import { formatPath, type PathSegment } from './problems.ts';
import { documentId, type CofferDocument, type Kind } from './schemas.ts';

/** One field that differs; `before` or `after` is absent when the field is. */
export interface FieldChange {
  path: string;
  before?: unknown;
  after?: unknown;
}

interface ChangeBase {
  /** "Policy/web-server". */
  id: string;
  kind: Kind;
  name: string;
}

export type DocumentChange =
  | (ChangeBase & { action: 'created'; after: CofferDocument; diff: string })
  | (ChangeBase & { action: 'changed'; before: CofferDocument; after: CofferDocument; fields: FieldChange[]; diff: string })
  | (ChangeBase & { action: 'unchanged'; before: CofferDocument })
  | (ChangeBase & { action: 'deleted'; before: CofferDocument; diff: string });

export interface DiffOptions {
  /** Also report documents of `current` that `desired` lacks, as deleted (default false: apply never deletes). */
  prune?: boolean;
  /** Lines of context around each change in the unified diff (default 3). */
  context?: number;
}

/**
 * Compares what the server has (`current`) with what is to be applied (`desired`), one change
 * per desired document in its order (then deletions, with `prune`).
 */
export function diffDocuments(current: readonly CofferDocument[], desired: readonly CofferDocument[], options: DiffOptions = {}): DocumentChange[] {
  const context = options.context ?? 3;
  const have = new Map(current.map((d) => [documentId(d), d]));
  const changes: DocumentChange[] = [];
  const seen = new Set<string>();
  for (const after of desired) {
    const id = documentId(after);
    seen.add(id);
    const base = { id, kind: after.kind, name: after.metadata.name };
    const before = have.get(id);
    const afterYaml = toYaml(after);
    if (before === undefined) {
      changes.push({ ...base, action: 'created', after, diff: unifiedDiff('', afterYaml, { from: '/dev/null', to: `${id} (desired)`, context }) });
      continue;
    }
    const beforeYaml = toYaml(before);
    if (beforeYaml === afterYaml) {
      changes.push({ ...base, action: 'unchanged', before });
      continue;
    }
    changes.push({
      ...base,
      action: 'changed',
      before,
      after,
      fields: fieldChanges(JSON.parse(JSON.stringify(before)), JSON.parse(JSON.stringify(after))),
      diff: unifiedDiff(beforeYaml, afterYaml, { from: `${id} (applied)`, to: `${id} (desired)`, context }),
    });
  }
  if (options.prune) {
    for (const before of current) {
      const id = documentId(before);
      if (seen.has(id)) continue;
      changes.push({ id, kind: before.kind, name: before.metadata.name, action: 'deleted', before, diff: unifiedDiff(toYaml(before), '', { from: `${id} (applied)`, to: '/dev/null', context }) });
    }
  }
  return changes;
}

/** True when applying would change anything: `coffer diff` exits 1 then, 0 otherwise. */
export function hasChanges(changes: readonly DocumentChange[]): boolean {
  return changes.some((c) => c.action !== 'unchanged');
}

/** The text `coffer diff` prints: the unified diffs of every change; "" when nothing changes. */
export function formatChanges(changes: readonly DocumentChange[]): string {
  return changes.filter((c) => c.action !== 'unchanged').map((c) => (c as { diff: string }).diff).join('');
}

/** One line per document for `coffer apply`: "Policy/web-server changed (spec.rpo, spec.schedules[0].window.duration)". */
export function summarizeChanges(changes: readonly DocumentChange[]): string[] {
  return changes.map((c) => (c.action === 'changed' ? `${c.id} changed (${c.fields.map((f) => f.path).join(', ')})` : `${c.id} ${c.action}`));
}

// ---------------------------------------------------------------------------------------------

/** Path-level differences of two JSON values: maps by key, lists by position. */
export function fieldChanges(before: unknown, after: unknown, path: PathSegment[] = []): FieldChange[] {
  if (JSON.stringify(before) === JSON.stringify(after)) return [];
  const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (isMap(before) && isMap(after)) {
    const keys = [...Object.keys(before), ...Object.keys(after).filter((k) => !(k in before))];
    return keys.flatMap((k) => {
      if (!(k in after)) return [{ path: formatPath([...path, k]), before: before[k] }];
      if (!(k in before)) return [{ path: formatPath([...path, k]), after: after[k] }];
      return fieldChanges(before[k], after[k], [...path, k]);
    });
  }
  if (Array.isArray(before) && Array.isArray(after)) {
    const out: FieldChange[] = [];
    for (let i = 0; i < Math.max(before.length, after.length); i++) {
      if (i >= after.length) out.push({ path: formatPath([...path, i]), before: before[i] });
      else if (i >= before.length) out.push({ path: formatPath([...path, i]), after: after[i] });
      else out.push(...fieldChanges(before[i], after[i], [...path, i]));
    }
    return out;
  }
  return [{ path: formatPath(path), before, after }];
}

/**
 * A unified diff of two texts (`--- from`, `+++ to`, `@@ -a,b +c,d @@` hunks), "" when equal.
 * Documents are small, so a plain longest-common-subsequence table is fast enough.
 */
export function unifiedDiff(a: string, b: string, options: { from: string; to: string; context?: number }): string {
  if (a === b) return '';
  const context = options.context ?? 3;
  const x = a === '' ? [] : a.replace(/\n$/, '').split('\n');
  const y = b === '' ? [] : b.replace(/\n$/, '').split('\n');
  const n = x.length;
  const m = y.length;
  const lcs: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) lcs[i]![j] = x[i] === y[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
  }
  type Op = { t: ' ' | '-' | '+'; line: string; ai: number; bi: number };
  const ops: Op[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) ops.push({ t: ' ', line: x[i]!, ai: i++, bi: j++ });
    else if (i < n && (j >= m || lcs[i + 1]![j]! >= lcs[i]![j + 1]!)) ops.push({ t: '-', line: x[i]!, ai: i++, bi: j });
    else ops.push({ t: '+', line: y[j]!, ai: i, bi: j++ });
  }
  let out = `--- ${options.from}\n+++ ${options.to}\n`;
  let k = 0;
  while (k < ops.length) {
    if (ops[k]!.t === ' ') { k++; continue; }
    // A hunk: from `context` lines before this change to `context` lines after the last change
    // that is within 2 * context lines of the one before it.
    const start = Math.max(0, k - context);
    let end = k;
    let last = k;
    while (end < ops.length) {
      if (ops[end]!.t !== ' ') last = end;
      else if (end - last > 2 * context) break;
      end++;
    }
    end = Math.min(ops.length, last + context + 1);
    const hunk = ops.slice(start, end);
    const aLines = hunk.filter((o) => o.t !== '+').length;
    const bLines = hunk.filter((o) => o.t !== '-').length;
    const aStart = aLines === 0 ? hunk[0]!.ai : hunk[0]!.ai + 1;
    const bStart = bLines === 0 ? hunk[0]!.bi : hunk[0]!.bi + 1;
    out += `@@ -${aStart},${aLines} +${bStart},${bLines} @@\n`;
    for (const o of hunk) out += `${o.t}${o.line}\n`;
    k = end;
  }
  return out;
}
