// Checks one document against its kind's schema and turns zod's issues into problems a person can
// act on: the path inside the document, what is wrong in words ("expected a duration such as
// 30d, got the number 24"), a "did you mean" for misspelt fields, kinds and values, and whether
// the problem is at a field's value, at its key (unknown fields) or at the map that lacks it.

import type { z } from 'zod';
import { didYouMean, didYouMeanSuffix } from './did-you-mean.ts';
import { describeValue } from './durations.ts';
import type { PathSegment } from './problems.ts';
import { API_VERSION, DOCUMENT_SCHEMAS, HINT_SEPARATOR, KINDS, TYPE_MESSAGES, type CofferDocument, type Kind } from './schemas.ts';

/** A problem before it is given a file and position. */
export interface DocumentProblem {
  path: PathSegment[];
  /** Where to point: the value at path, its key (unknown fields), or the map it is missing from. */
  at: 'value' | 'key' | 'parent';
  message: string;
  hint?: string;
}

export type CheckedDocument = { ok: true; document: CofferDocument } | { ok: false; problems: DocumentProblem[] };

const TOP_KEYS = ['apiVersion', 'kind', 'metadata', 'spec'];
const MISSING = 'required field is missing';
const ALLOWED_PREFIX = '\u0000allowed:';

/** Checks one parsed document (plain data, as from YAML or JSON) against the schema of its kind. */
export function checkDocument(value: unknown): CheckedDocument {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { ok: false, problems: [{ path: [], at: 'value', message: `expected a document (a map with apiVersion, kind, metadata and spec), got ${describeValue(value)}` }] };
  }
  const record = value as Record<string, unknown>;
  const problems: DocumentProblem[] = [];
  const { apiVersion, kind } = record;
  if (apiVersion === undefined) {
    problems.push({ path: [], at: 'parent', message: 'apiVersion is missing', hint: `Write apiVersion: ${API_VERSION}` });
  } else if (apiVersion !== API_VERSION) {
    problems.push({ path: ['apiVersion'], at: 'value', message: `${JSON.stringify(apiVersion)} is not an apiVersion this Coffer reads`, hint: `Write apiVersion: ${API_VERSION}` });
  }
  if (kind === undefined) {
    problems.push({ path: [], at: 'parent', message: 'kind is missing', hint: `Write kind: followed by one of ${KINDS.join(', ')}` });
  } else if (typeof kind !== 'string' || !(KINDS as readonly string[]).includes(kind)) {
    problems.push({ path: ['kind'], at: 'value', message: `${typeof kind === 'string' ? JSON.stringify(kind) : describeValue(kind)} is not a kind${typeof kind === 'string' ? didYouMeanSuffix(kind, KINDS) : ''}`, hint: `Kinds are ${KINDS.join(', ')}` });
  }
  if (problems.length > 0) {
    // Without a kind, only the top level can be checked.
    for (const key of Object.keys(record)) {
      if (!TOP_KEYS.includes(key)) problems.push(unknownField([key], TOP_KEYS));
    }
    return { ok: false, problems };
  }
  const schema = DOCUMENT_SCHEMAS[kind as Kind] as z.ZodType;
  const result = schema.safeParse(value, { error: messageFor });
  if (result.success) return { ok: true, document: result.data as CofferDocument };
  return { ok: false, problems: toProblems(result.error.issues, value, []) };
}

// zod calls this for every issue its schemas did not word themselves.
function messageFor(iss: z.core.$ZodRawIssue): string {
  const inst = (iss as { inst?: object }).inst;
  const input = iss.input;
  switch (iss.code) {
    case 'invalid_type': {
      if (input === undefined) return MISSING;
      const own = inst === undefined ? undefined : TYPE_MESSAGES.get(inst);
      if (own !== undefined) return own(input);
      return `expected ${EXPECTED[iss.expected] ?? iss.expected}, got ${describeValue(input)}`;
    }
    case 'invalid_union': {
      const own = inst === undefined ? undefined : TYPE_MESSAGES.get(inst);
      return own !== undefined ? own(input) : `is not valid here: ${describeValue(input)}`;
    }
    case 'too_small': {
      const min = Number(iss.minimum);
      if (iss.origin === 'string') return min <= 1 ? 'is empty' : `is shorter than ${min} characters`;
      if (iss.origin === 'array') return min <= 1 ? 'is empty: it needs at least one entry' : `needs at least ${min} entries`;
      return `must be at least ${min}, not ${String(input)}`;
    }
    case 'too_big': {
      const max = Number(iss.maximum);
      if (iss.origin === 'string') return `is longer than ${max} characters`;
      if (iss.origin === 'array') return `has more than ${max} entries`;
      return `must be at most ${max}, not ${String(input)}`;
    }
    case 'invalid_value': {
      if (input === undefined) return MISSING;
      const values = iss.values.map(String);
      const shown = typeof input === 'string' ? JSON.stringify(input) : describeValue(input);
      return `${shown} is not one of ${values.join(', ')}${typeof input === 'string' ? didYouMeanSuffix(input, values) : ''}`;
    }
    case 'unrecognized_keys': {
      const shape = (inst as { shape?: Record<string, unknown> } | undefined)?.shape;
      return `${ALLOWED_PREFIX}${Object.keys(shape ?? {}).join(',')}`;
    }
    case 'invalid_key':
      return 'is not a valid key';
    default:
      return 'is not valid';
  }
}

const EXPECTED: Record<string, string> = {
  string: 'text',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  array: 'a list',
  object: 'a map',
  record: 'a map',
};

function split(message: string): { message: string; hint?: string } {
  const at = message.indexOf(HINT_SEPARATOR);
  return at < 0 ? { message } : { message: message.slice(0, at), hint: message.slice(at + 1) };
}

function valueAt(value: unknown, path: readonly PathSegment[]): unknown {
  let v = value;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

/** Field names that hold a secret: refused wherever they appear, with the reference to write instead. */
const SECRET_KEY = /^(?:pass(?:word|wd|phrase)?|secret|secret[-_]?(?:access[-_]?)?key|access[-_]?key(?:[-_]?id)?|aws[-_].*|api[-_]?key|token|session[-_]?token|credentials?|private[-_]?key|key)$/i;

function unknownField(path: PathSegment[], allowed: readonly string[]): DocumentProblem {
  const key = String(path[path.length - 1]);
  if (SECRET_KEY.test(key)) {
    const ref = allowed.includes('passwordFrom') ? 'passwordFrom' : allowed.includes('credentialsFrom') ? 'credentialsFrom' : undefined;
    const s3 = /key|token|credential|aws/i.test(key) && !/^pass/i.test(key);
    return {
      path,
      at: 'key',
      message: 'secrets never go in documents (they end up in version control, in backups of the catalog and in `coffer get`)',
      hint: s3 && ref !== undefined
        ? 'For S3 write credentialsFrom: { accessKeyId: env:NAME, secretAccessKey: file:/path }; for the repository password passwordFrom: file:/path or env:NAME'
        : ref === 'credentialsFrom' || ref === undefined
          ? 'Keep the secret in a file or an environment variable of the server and refer to it: passwordFrom (repository password) or credentialsFrom (S3) of a StorageUnit'
          : 'Write passwordFrom: file:/path (a file on the server holding it) or env:NAME, or leave it out to keep the password in the server\'s keystore',
    };
  }
  const guess = didYouMean(key, allowed);
  return guess !== undefined
    ? { path, at: 'key', message: `unknown field; did you mean ${JSON.stringify(guess)}?` }
    : { path, at: 'key', message: 'unknown field', hint: `Fields here: ${allowed.join(', ')}` };
}

function toProblems(issues: readonly z.core.$ZodIssue[], root: unknown, base: PathSegment[]): DocumentProblem[] {
  const out: DocumentProblem[] = [];
  // A misspelt field also shows up as the field it was meant to be, missing: say it once.
  const meant = new Set<string>();
  for (const issue of issues) {
    const path = [...base, ...(issue.path as PathSegment[])];
    switch (issue.code) {
      case 'unrecognized_keys': {
        const allowed = issue.message.startsWith(ALLOWED_PREFIX) ? issue.message.slice(ALLOWED_PREFIX.length).split(',').filter((k) => k !== '') : [];
        for (const key of issue.keys) {
          const p = unknownField([...path, key], allowed);
          out.push(p);
          const guess = didYouMean(key, allowed);
          if (guess !== undefined) meant.add(JSON.stringify([...path, guess]));
        }
        break;
      }
      case 'invalid_union': {
        const input = valueAt(root, path);
        // Pick the alternative the input was evidently meant to be: one that at least got past
        // the type of the value itself, with the fewest problems.
        let best: DocumentProblem[] | undefined;
        if (input !== null && typeof input === 'object') {
          for (const branch of issue.errors) {
            if (branch.some((i) => i.path.length === 0 && i.code === 'invalid_type')) continue;
            const problems = toProblems(branch, root, path);
            if (best === undefined || problems.length < best.length) best = problems;
          }
        }
        if (best !== undefined) out.push(...best);
        else out.push({ path, at: 'value', ...split(issue.message) });
        break;
      }
      case 'invalid_key': {
        const inner = issue.issues[0];
        const key = path[path.length - 1];
        out.push({ path, at: 'key', ...split(inner?.message ?? `${JSON.stringify(key)} is not a valid key`) });
        break;
      }
      default: {
        const missing = issue.message === MISSING && valueAt(root, path) === undefined;
        out.push({ path, at: missing ? 'parent' : 'value', ...split(issue.message) });
      }
    }
  }
  return out.filter((p) => !(p.message === MISSING && meant.has(JSON.stringify(p.path))));
}
