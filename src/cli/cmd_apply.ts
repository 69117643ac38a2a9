// `coffer apply -f` and `coffer diff -f`: documents read and checked here first (problems name
// file:line:col and nothing is sent), then sent whole to the server, which checks what only it
// can and applies all or nothing. `diff` exits 1 when applying would change something (as
// `kubectl diff`), 0 and silent when not: that is its answer, not an error.

import type { Command } from 'commander';
import type { DocumentChange, Problem } from '../policy/index.ts';
import { output, type Output } from './context.ts';
import { apiFor, serverOption } from './remote.ts';

/** A change as the server answers it (before and after left out). */
type ServerChange = { id: string; kind: string; name: string; action: DocumentChange['action']; fields?: Array<{ path: string }>; diff?: string };

interface Outcome {
  changes: ServerChange[];
  warnings: Problem[];
  dryRun?: boolean;
}

function counts(changes: readonly ServerChange[]) {
  const n = (a: string) => changes.filter((c) => c.action === a).length;
  return { created: n('created'), changed: n('changed'), unchanged: n('unchanged') };
}

function changeLines(out: Output, changes: readonly ServerChange[], dryRun: boolean, withDiff: boolean): void {
  for (const c of changes) {
    out.item({
      type: 'apply', id: c.id, kind: c.kind, name: c.name, action: c.action, dryRun,
      ...(c.fields ? { fields: c.fields.map((f) => f.path) } : {}),
      ...(withDiff && c.diff !== undefined ? { diff: c.diff } : {}),
    });
  }
}

function warningLines(out: Output, warnings: readonly Problem[], formatProblem: (p: Problem) => string): void {
  for (const p of warnings) out.event({ type: 'problem', severity: 'warning', kind: 'document', message: formatProblem(p), ...(p.path ? { path: p.path } : {}) }, `warning: ${formatProblem(p)}`);
}

export function register(program: Command): void {
  serverOption(program
    .command('apply')
    .description('create or change documents (policies, lifecycles, storage units, clients) on the server, all or nothing')
    .requiredOption('-f, --filename <file|dir>', 'a YAML or JSON file, or a directory of them')
    .option('--dry-run', 'check everything and show what would change, change nothing'))
    .action(async (o: { filename: string; dryRun?: boolean }, cmd: Command) => {
      const { formatChanges, formatProblem, hasChanges, loadDocuments, summarizeChanges } = await import('../policy/index.ts');
      const out = output(cmd);
      const docs = await loadDocuments(o.filename, { action: 'apply' });
      const api = apiFor(cmd);
      const r = await api.request<Outcome>('POST', '/api/v1/apply', { body: { documents: docs.map((d) => d.document), dryRun: !!o.dryRun } });
      const dryRun = !!o.dryRun;
      changeLines(out, r.changes, dryRun, false);
      warningLines(out, r.warnings, formatProblem);
      out.summary({ ...counts(r.changes), problems: r.warnings.length, dryRun }, () => summarizeChanges(r.changes as DocumentChange[]).map((l) => `${l}${dryRun ? ' (dry run)' : ''}`));
    });
  serverOption(program
    .command('diff')
    .description('show what `apply` would change: exit 0 and print nothing when nothing would, exit 1 and print the differences otherwise')
    .requiredOption('-f, --filename <file|dir>', 'a YAML or JSON file, or a directory of them'))
    .action(async (o: { filename: string }, cmd: Command) => {
      const { formatChanges, formatProblem, hasChanges, loadDocuments, summarizeChanges } = await import('../policy/index.ts');
      const out = output(cmd);
      const docs = await loadDocuments(o.filename, { action: 'diff' });
      const r = await apiFor(cmd).request<Outcome>('POST', '/api/v1/diff', { body: { documents: docs.map((d) => d.document) } });
      const changed = r.changes.filter((c) => c.action !== 'unchanged');
      changeLines(out, changed, true, true);
      warningLines(out, r.warnings, formatProblem);
      const text = formatChanges(r.changes as DocumentChange[]);
      out.summary({ ...counts(r.changes), problems: r.warnings.length }, () => text.replace(/\n$/, ''));
      if (hasChanges(r.changes as DocumentChange[])) out.setExitCode(1);
    });
}
