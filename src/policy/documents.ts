// Reading and writing documents: multi-document YAML (and JSON, which YAML 1.2 reads too) with
// every problem placed at its file, line and column; a directory of files; and the canonical
// export that `coffer get -o yaml|json` prints, which `apply` takes back with no change: keys in
// schema order, labels sorted, what the user left out still left out, so that
// parse(export(x)) equals x and export(parse(export(x))) is byte for byte export(x).

import { readFile, readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { Document, LineCounter, isAlias, isMap, isScalar, isSeq, parseAllDocuments, visit, type Node } from 'yaml';
import { CofferError, throwIfAborted } from '../core/errors.ts';
import { formatPath, invalidDocuments, type PathSegment, type Problem } from './problems.ts';
import { documentId, type CofferDocument } from './schemas.ts';
import { validateReferences, type KnownLookup } from './references.ts';
import { checkDocument, type DocumentProblem } from './validate.ts';

export interface Position {
  line: number;
  column: number;
}

/** A valid document and where it came from, so that later checks (references) can point into it. */
export interface SourcedDocument {
  document: CofferDocument;
  /** The file, as the user named it. */
  file?: string;
  /** Where the document starts in the file. */
  position?: Position;
  /** Where a path inside the document is: its value, or with `at: 'key'` its key. */
  locate?(path: readonly PathSegment[], at?: DocumentProblem['at']): Position | undefined;
}

export interface ReferenceCheckOptions {
  /**
   * Also check references between the documents (validateReferences) and report their errors
   * with the others: the documents the server has (default: none; the set must be complete).
   */
  references?: {
    known?: KnownLookup;
    /** The server's time zone, for schedules that name none (default UTC). */
    defaultTimezone?: string;
    /** Receives the warnings (they do not stop anything). */
    warnings?: Problem[];
  };
}

export interface ParseOptions extends ReferenceCheckOptions {
  /** The file name for messages (as the user gave it). */
  file?: string;
  /** The verb of the error message: "Cannot apply site.yaml: ..." (default apply). */
  action?: string;
}

export interface ReadResult {
  documents: SourcedDocument[];
  problems: Problem[];
  /** "Kind/name" of the documents that had problems, as far as they say what they are. */
  invalid: string[];
}

/** The extensions loadDocuments() reads in a directory. */
export const DOCUMENT_EXTENSIONS = ['.yaml', '.yml', '.json'] as const;

/**
 * Parses YAML or JSON text holding one or more documents (separated by `---`, or a list of
 * them) and checks each against its schema. Throws INVALID_CONFIG listing every problem, each
 * with file:line:col and the path inside the document; returns only when all are valid.
 */
export function parseDocuments(text: string, options: ParseOptions = {}): SourcedDocument[] {
  const { documents, problems, invalid } = readDocuments(text, options);
  problems.push(...duplicates(documents), ...references(documents, invalid, options));
  if (problems.length > 0) throw invalidDocuments(options.file ?? 'the documents', problems, options);
  return documents;
}

/** parseDocuments() without the throw: the valid documents and the problems of the others. */
export function readDocuments(text: string, options: { file?: string } = {}): ReadResult {
  const file = options.file;
  const documents: SourcedDocument[] = [];
  const problems: Problem[] = [];
  const invalid: string[] = [];
  const lineCounter = new LineCounter();
  const source = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  const position = (offset: number): Position => {
    const { line, col } = lineCounter.linePos(offset);
    return { line, column: col };
  };
  const problemAt = (pos: Position | undefined, rest: Omit<Problem, 'file' | 'line' | 'column'>): Problem => ({
    ...(file === undefined ? {} : { file }),
    ...(pos === undefined ? {} : { line: pos.line, column: pos.column }),
    ...rest,
  });
  const yamlDocs = parseAllDocuments(source, { lineCounter, prettyErrors: false, uniqueKeys: true, version: '1.2', strict: true });
  for (const yamlDoc of yamlDocs) {
    const syntax = [...yamlDoc.errors, ...yamlDoc.warnings];
    if (syntax.length > 0) {
      for (const e of syntax) problems.push(problemAt(position(e.pos[0]), { path: '', message: yamlMessage(e.message) }));
      continue;
    }
    // An empty document: a stray --- or only comments.
    if (yamlDoc.contents === null || (isScalar(yamlDoc.contents) && yamlDoc.contents.value === null && yamlDoc.contents.source === '')) continue;
    let value: unknown;
    try {
      value = yamlDoc.toJS({ maxAliasCount: 1000 });
    } catch (e) {
      problems.push(problemAt(position(yamlDoc.contents.range[0]), { path: '', message: e instanceof Error ? e.message : String(e) }));
      continue;
    }
    // A list of documents is read as its items, so that `get -o json` of several reads back.
    const root = yamlDoc.contents;
    const items: { value: unknown; node: Node; prefix: PathSegment[] }[] = Array.isArray(value) && isSeq(root)
      ? value.map((v, i) => ({ value: v, node: root.items[i] as Node, prefix: [i] }))
      : [{ value, node: root, prefix: [] }];
    for (const item of items) {
      const locate = (path: readonly PathSegment[], at: DocumentProblem['at'] = 'value'): Position | undefined => {
        const offset = offsetOf(yamlDoc, item.node, path, at);
        return offset === undefined ? undefined : position(offset);
      };
      const checked = checkDocument(item.value);
      const id = describeDocument(item.value);
      if (!checked.ok) {
        if (id !== undefined) invalid.push(id);
        for (const p of checked.problems) {
          problems.push(problemAt(locate(p.path, p.at), {
            ...(id === undefined ? {} : { document: id }),
            path: formatPath([...item.prefix, ...p.path]),
            message: p.message,
            ...(p.hint === undefined ? {} : { hint: p.hint }),
          }));
        }
        continue;
      }
      const start = position(item.node.range?.[0] ?? 0);
      documents.push({
        document: canonical(checked.document),
        ...(file === undefined ? {} : { file }),
        position: start,
        locate,
      });
    }
  }
  return { documents, problems, invalid };
}

export interface LoadOptions extends ReferenceCheckOptions {
  signal?: AbortSignal;
  /** The verb of the error message (default apply). */
  action?: string;
}

/**
 * Reads a file, or every *.yaml, *.yml and *.json file directly in a directory (sorted by name;
 * names starting with "." are left out), and parses them as parseDocuments() does. Problems of
 * every file are reported together; nothing is returned unless all are valid.
 */
export async function loadDocuments(fileOrDir: string, options: LoadOptions = {}): Promise<SourcedDocument[]> {
  const action = options.action ?? 'apply';
  let info;
  try {
    info = await stat(fileOrDir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CofferError(code === 'ENOENT' ? 'NOT_FOUND' : 'INVALID_CONFIG', `Cannot ${action} ${fileOrDir}: ${code === 'ENOENT' ? 'no such file or directory' : (e as Error).message}`, { cause: e });
  }
  let files: string[];
  if (info.isDirectory()) {
    const names = (await readdir(fileOrDir)).filter((n) => !n.startsWith('.') && (DOCUMENT_EXTENSIONS as readonly string[]).includes(extname(n).toLowerCase()));
    names.sort();
    files = names.map((n) => join(fileOrDir, n));
    if (files.length === 0) {
      throw new CofferError('INVALID_CONFIG', `Cannot ${action} ${fileOrDir}: it holds no .yaml, .yml or .json files`, { hint: 'Give a file, or a directory of document files (subdirectories are not read).' });
    }
  } else {
    files = [fileOrDir];
  }
  const documents: SourcedDocument[] = [];
  const problems: Problem[] = [];
  const invalid: string[] = [];
  for (const file of files) {
    throwIfAborted(options.signal);
    let text: string;
    try {
      text = await readFile(file, { encoding: 'utf8', ...(options.signal === undefined ? {} : { signal: options.signal }) });
    } catch (e) {
      throwIfAborted(options.signal);
      problems.push({ file, path: '', message: `cannot be read: ${(e as Error).message}` });
      continue;
    }
    const result = readDocuments(text, { file });
    documents.push(...result.documents);
    problems.push(...result.problems);
    invalid.push(...result.invalid);
  }
  problems.push(...duplicates(documents), ...references(documents, invalid, options));
  if (problems.length > 0) throw invalidDocuments(fileOrDir, problems, { action });
  if (documents.length === 0) {
    throw new CofferError('INVALID_CONFIG', `Cannot ${action} ${fileOrDir}: it holds no documents`, { hint: 'A document starts with apiVersion: coffer/v1 and kind: ...; several in one file are separated by ---.' });
  }
  return documents;
}

/**
 * Checks a document that came as data (an API request, a stored row) and returns it in canonical
 * form (keys in schema order, labels sorted). Throws INVALID_CONFIG listing every problem.
 */
export function normalize(value: unknown, options: { action?: string } = {}): CofferDocument {
  const checked = checkDocument(value);
  if (checked.ok) return canonical(checked.document);
  const id = describeDocument(value);
  throw invalidDocuments(id ?? 'the document', checked.problems.map((p) => ({
    ...(id === undefined ? {} : { document: id }),
    path: formatPath(p.path),
    message: p.message,
    ...(p.hint === undefined ? {} : { hint: p.hint }),
  })), options);
}

/**
 * The YAML export of one or more documents (separated by ---), canonical: the same documents
 * always give the same bytes. Strings that YAML 1.1 readers would take for something else (yes,
 * on, 01:00) and cron expressions are quoted.
 */
export function toYaml(docs: CofferDocument | readonly CofferDocument[]): string {
  const list: readonly CofferDocument[] = Array.isArray(docs) ? docs : [docs as CofferDocument];
  return list.map((d) => {
    const doc = new Document(normalize(d, { action: 'export' }), { version: '1.2' });
    visit(doc, {
      Scalar(_key, node) {
        if (typeof node.value === 'string' && !node.value.includes('\n') && needsQuotes(node.value)) node.type = 'QUOTE_DOUBLE';
      },
    });
    // doubleQuotedAsJSON: yaml 2.9 folds a long double-quoted string with runs of spaces and
    // line breaks into something it reads back differently (found by roundtrip.test.ts).
    return doc.toString({ lineWidth: 0, indent: 2, indentSeq: true, doubleQuotedAsJSON: true });
  }).join('---\n');
}

/** The JSON export: one document as an object, several as a list; two-space indented, newline-terminated. */
export function toJson(docs: CofferDocument | readonly CofferDocument[]): string {
  const value = Array.isArray(docs) ? docs.map((d) => normalize(d, { action: 'export' })) : normalize(docs, { action: 'export' });
  return `${JSON.stringify(value, null, 2)}\n`;
}

// ---------------------------------------------------------------------------------------------

/** zod gives keys in schema order already; records (labels, annotations) are sorted here. */
function canonical(doc: CofferDocument): CofferDocument {
  const sortRecord = (r: Record<string, string> | undefined) => (r === undefined ? undefined : Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
  const { labels, annotations } = doc.metadata;
  if (labels === undefined && annotations === undefined) return doc;
  const metadata = {
    name: doc.metadata.name,
    ...(labels === undefined ? {} : { labels: sortRecord(labels) }),
    ...(annotations === undefined ? {} : { annotations: sortRecord(annotations) }),
  };
  return { ...doc, metadata } as CofferDocument;
}

/** "Policy/web-server" when the value looks enough like a document to say so. */
function describeDocument(value: unknown): string | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  const { kind, metadata } = value as { kind?: unknown; metadata?: { name?: unknown } };
  if (typeof kind !== 'string' || metadata === null || typeof metadata !== 'object' || typeof metadata.name !== 'string') return undefined;
  return documentId({ kind, metadata: { name: metadata.name } });
}

/** Reference errors, when asked for (warnings go to the caller's list). */
function references(documents: readonly SourcedDocument[], invalid: readonly string[], options: ReferenceCheckOptions): Problem[] {
  const r = options.references;
  if (r === undefined) return [];
  // A document with problems of its own still exists as far as references to it go: saying it
  // does not would only repeat its problems in other words.
  const named = new Set(invalid);
  const known: KnownLookup = (kind, name) => (named.has(`${kind}/${name}`) ? true : r.known?.(kind, name));
  const result = validateReferences(documents, known, r.defaultTimezone === undefined ? {} : { defaultTimezone: r.defaultTimezone });
  r.warnings?.push(...result.warnings);
  return result.errors;
}

/** The same kind and name twice in one apply: the second would silently replace the first. */
function duplicates(documents: readonly SourcedDocument[]): Problem[] {
  const seen = new Map<string, SourcedDocument>();
  const problems: Problem[] = [];
  for (const d of documents) {
    const id = documentId(d.document);
    const first = seen.get(id);
    if (first === undefined) {
      seen.set(id, d);
      continue;
    }
    const pos = d.locate?.(['metadata', 'name']);
    const where = first.file === undefined ? 'earlier' : `at ${first.file}${first.position ? `:${first.position.line}` : ''}`;
    problems.push({
      ...(d.file === undefined ? {} : { file: d.file }),
      ...(pos === undefined ? {} : { line: pos.line, column: pos.column }),
      document: id,
      path: 'metadata.name',
      message: `${id} is defined twice (also ${where})`,
      hint: 'Each document may appear once in what is applied together.',
    });
  }
  return problems;
}

/** The offset of the node a path points to; the deepest node that exists when it does not. */
function offsetOf(doc: Document.Parsed, root: Node, path: readonly PathSegment[], at: DocumentProblem['at']): number | undefined {
  let node: unknown = root;
  let keyNode: Node | undefined;
  let found = 0;
  for (const seg of path) {
    if (isAlias(node)) node = node.resolve(doc);
    if (isMap(node)) {
      const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(seg));
      if (pair === undefined) break;
      keyNode = pair.key as Node;
      // `spec:` with nothing after it has no value node: point at the key.
      node = pair.value ?? pair.key;
    } else if (isSeq(node) && typeof seg === 'number' && node.items[seg] !== undefined) {
      keyNode = undefined;
      node = node.items[seg];
    } else {
      break;
    }
    found++;
  }
  const complete = found === path.length;
  let target = node as Node | undefined;
  if (complete && at === 'key' && keyNode !== undefined) target = keyNode;
  if (complete && at === 'parent' && path.length === 0) target = root;
  return target?.range?.[0];
}

/** yaml's messages end with " at line 3, column 5" when asked not to be pretty; the position is given separately. */
function yamlMessage(message: string): string {
  const first = message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
  return `YAML: ${first.charAt(0).toLowerCase()}${first.slice(1)}`;
}

const YAML11_SPECIAL = /^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|null|Null|NULL|~|[-+]?(?:\.\d+|\d[\d_]*(?:\.\d*)?)(?:[eE][-+]?\d+)?|[-+]?\d[\d_]*(?::[0-5]?\d)+(?:\.\d*)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|0x[\dA-Fa-f_]+|0o?[0-7_]+|0b[01_]+)$/;

function needsQuotes(s: string): boolean {
  return YAML11_SPECIAL.test(s) || s.includes('*');
}
