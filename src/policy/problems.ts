// Problems found in documents, and the one error that reports them. A problem names the file,
// line and column, the path inside the document and what is wrong, so that a person can go
// straight to it: `site.yaml:37:46: spec.schedules[1].calendar: "0 2 * * 8" is not a valid cron
// expression (...)`. Every problem is collected before anything is reported: nothing is applied
// unless the whole set of documents is valid, so the user should see all that is wrong at once.

import { CofferError } from '../core/errors.ts';

export type PathSegment = string | number;

export interface Problem {
  /** The file, as the user named it; absent for documents that came without one (the API). */
  file?: string;
  /** 1-based line and column in the file. */
  line?: number;
  column?: number;
  /** The document, e.g. "Policy/web-server", when it is known. */
  document?: string;
  /** Where in the document: "spec.schedules[1].calendar"; "" for the document itself. */
  path: string;
  message: string;
  /** What to write instead, when there is something useful to say. */
  hint?: string;
}

/** `spec.schedules[1].calendar`, `metadata.labels["example.com/team"]`. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

/** One line: `site.yaml:37:46: spec.schedules[1].calendar: ... Hint.` */
export function formatProblem(p: Problem): string {
  const where = p.file !== undefined
    ? `${p.file}${p.line === undefined ? '' : `:${p.line}:${p.column ?? 1}`}: `
    : p.document !== undefined ? `${p.document}: ` : '';
  const path = p.path === '' ? '' : `${p.path}: `;
  const hint = p.hint === undefined ? '' : `${/[.?!]$/.test(p.message) ? ' ' : '. '}${/[.?!]$/.test(p.hint) ? p.hint : `${p.hint}.`}`;
  return `${where}${path}${p.message}${hint}`;
}

/** Problems in file order (then in the order found), so the list reads top to bottom. */
export function sortProblems(problems: readonly Problem[]): Problem[] {
  return problems
    .map((p, i) => ({ p, i }))
    .sort((a, b) => (a.p.file ?? '').localeCompare(b.p.file ?? '') || (a.p.line ?? 0) - (b.p.line ?? 0) || (a.p.column ?? 0) - (b.p.column ?? 0) || a.i - b.i)
    .map(({ p }) => p);
}

export interface InvalidDocumentsOptions {
  /** The verb of the message: "Cannot apply site.yaml" (default), "Cannot diff site.yaml", ... */
  action?: string;
}

/**
 * The INVALID_CONFIG error for a set of problems: "Cannot apply site.yaml: <the problem>", or with
 * several, "Cannot apply site.yaml: 3 problems" followed by one line each. details.problems lists
 * them all for --json and the API.
 */
export function invalidDocuments(label: string, problems: readonly Problem[], options: InvalidDocumentsOptions = {}): CofferError {
  const action = options.action ?? 'apply';
  const sorted = sortProblems(problems);
  const head = `Cannot ${action} ${label}`;
  const message = sorted.length === 1
    ? `${head}: ${formatProblem(sorted[0]!)}`
    : `${head}: ${sorted.length} problems\n${sorted.map((p) => `  ${formatProblem(p)}`).join('\n')}`;
  return new CofferError('INVALID_CONFIG', message, {
    hint: action === 'apply' ? 'Nothing was applied. Fix every problem listed and apply again.' : 'Fix every problem listed and run again.',
    details: { problems: sorted },
  });
}
