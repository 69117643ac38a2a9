// `coffer get KIND [NAME]` and `coffer delete KIND NAME`, as kubectl: a table by default (-o wide
// for every column), -o yaml for documents `apply` takes back unchanged, -o json. Besides the
// document kinds: `schedules` (their next runs), and `jobs` and `images` (as `coffer jobs` and
// `coffer images`).

import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import type { CofferDocument } from '../policy/index.ts';
import { KINDS, kindFromName, type Kind } from '../policy/kinds.ts';
import { output } from './context.ts';
import { listImages } from './cmd_images.ts';
import { listJobs } from './cmd_jobs.ts';
import { apiFor, humanDuration, localTime, serverOption, table, apiLine } from './remote.ts';

const FORMATS = ['table', 'wide', 'yaml', 'json'] as const;
const EXTRA = ['schedules', 'jobs', 'images'];

interface Schedule {
  policy: string;
  client: string;
  name: string;
  level: string;
  timezone?: string;
  calendar?: string;
  every?: number;
  window?: { start: number; durationMs: number } | Record<string, unknown>;
  runs: Array<{ slot: number; start: number; end: number }>;
  lastState?: string;
  lastSlot?: number;
  error?: { message?: string };
}

interface ClientInfo {
  name: string;
  platform?: string;
  connected?: boolean;
  lastSeen?: number;
}

function kindOf(name: string): Kind | 'schedules' | 'jobs' | 'images' {
  const lower = name.toLowerCase();
  for (const e of EXTRA) if (lower === e || lower === e.slice(0, -1)) return e as 'schedules' | 'jobs' | 'images';
  const k = kindFromName(name);
  if (!k) throw new CofferError('USAGE', `Cannot get ${JSON.stringify(name)}: no such kind`, { hint: 'Use policies, lifecycles, storageunits (su), clients, schedules, jobs or images.' });
  return k;
}

const PLURAL: Record<Kind, string> = { Policy: 'policies', Lifecycle: 'lifecycles', StorageUnit: 'storageunits', Client: 'clients' };
const plural = (k: Kind) => PLURAL[k];

export function register(program: Command): void {
  serverOption(program
    .command('get <kind> [name]')
    .description(`list documents or other objects: ${KINDS.map((k) => plural(k)).join(', ')}, ${EXTRA.join(', ')}`)
    .option('-o, --output <format>', 'table (default), wide, yaml or json'))
    .action(async (kindName: string, name: string | undefined, o: { output?: string }, cmd: Command) => {
      const { policyWideRow, tableColumns, tableRow, toJson, toYaml } = await import('../policy/index.ts');
      const out = output(cmd);
      const format = (o.output ?? 'table') as (typeof FORMATS)[number];
      if (!FORMATS.includes(format)) throw new CofferError('USAGE', `Cannot use -o ${o.output}: give table, wide, yaml or json`);
      const kind = kindOf(kindName);
      const api = apiFor(cmd);
      if (kind === 'jobs' || kind === 'images') {
        if (name !== undefined) throw new CofferError('USAGE', `Cannot get one of ${kind} by name`, { hint: kind === 'jobs' ? 'Use `coffer jobs show ID`.' : 'Use `coffer images` and `coffer browse IMAGE`.' });
        if (kind === 'jobs') await listJobs(api, out, {});
        else await listImages(api, out, {});
        return;
      }
      if (kind === 'schedules') {
        const items = await api.listAll<Schedule>('/api/v1/schedules', { policy: name });
        for (const schedule of items) out.item(apiLine({ type: 'schedule', schedule }));
        const rows = items.map((s) => [
          s.policy, s.client, s.name, s.level,
          s.calendar ?? (s.every !== undefined ? `every ${humanDuration(s.every)}` : '-'),
          s.error ? `error: ${s.error.message ?? ''}` : localTime(s.runs[0]?.start),
          s.lastState ? `${s.lastState} ${localTime(s.lastSlot)}` : '-',
        ]);
        out.summary({ kind: 'schedules', count: items.length }, () => (format === 'yaml' || format === 'json' ? JSON.stringify(items, null, 2) : table(['POLICY', 'CLIENT', 'SCHEDULE', 'LEVEL', 'WHEN', 'NEXT-RUN', 'LAST'], rows)));
        return;
      }
      const path = `/api/v1/documents/${plural(kind)}`;
      const docs = name !== undefined ? [await api.request<CofferDocument>('GET', `${path}/${encodeURIComponent(name)}`)] : (await api.request<{ items: CofferDocument[] }>('GET', path)).items;
      if (kind === 'Client' && (format === 'table' || format === 'wide')) {
        // Clients are registered by their agents; a Client document only adds labels and limits.
        const clients = (await api.listAll<ClientInfo>('/api/v1/clients')).filter((c) => name === undefined || c.name === name);
        if (name !== undefined && clients.length === 0) throw new CofferError('NOT_FOUND', `No client named ${name}`, { hint: 'List them with `coffer get clients`.' });
        const byName = new Map(docs.map((d) => [d.metadata.name, d]));
        for (const client of clients) out.item(apiLine({ type: 'client', client, ...(byName.has(client.name) ? { document: byName.get(client.name)! } : {}) }));
        out.summary({ kind: 'Client', count: clients.length }, () => table(['NAME', 'CONNECTED', 'PLATFORM', 'LAST-SEEN', ...tableColumns('Client', { wide: format === 'wide' }).slice(1)], clients.map((c) => {
          const d = byName.get(c.name);
          const cells = d ? tableRow(d, { wide: format === 'wide' }).slice(1) : tableColumns('Client', { wide: format === 'wide' }).slice(1).map(() => '-');
          return [c.name, c.connected ? 'yes' : 'no', c.platform ?? '-', localTime(c.lastSeen), ...cells];
        })));
        return;
      }
      for (const document of docs) out.item({ type: 'document', document });
      out.summary({ kind, count: docs.length }, () => {
        if (format === 'yaml') return docs.length ? toYaml(docs).replace(/\n$/, '') : '';
        if (format === 'json') return toJson(docs).replace(/\n$/, '');
        const wide = format === 'wide';
        return table(tableColumns(kind, { wide }), docs.map((d) => (wide && d.kind === 'Policy' ? policyWideRow(d) : tableRow(d, { wide }))));
      });
    });

  serverOption(program
    .command('delete <kind> <name>')
    .description('delete a document (admin): a policy, lifecycle, storage unit or client'))
    .action(async (kindName: string, name: string, _o: unknown, cmd: Command) => {
      const { policyWideRow, tableColumns, tableRow, toJson, toYaml } = await import('../policy/index.ts');
      const kind = kindFromName(kindName);
      if (!kind) throw new CofferError('USAGE', `Cannot delete ${JSON.stringify(kindName)}: no such kind`, { hint: 'Use policy, lifecycle, storageunit (su) or client.' });
      const r = await apiFor(cmd).request<{ deleted: string }>('DELETE', `/api/v1/documents/${plural(kind)}/${encodeURIComponent(name)}`);
      output(cmd).summary({ deleted: r.deleted }, () => `${r.deleted} deleted`);
    });

  serverOption(program
    .command('history <kind> <name>')
    .description('every revision of a document: when it was applied or deleted, and by whom (-o yaml: a revision whole)')
    .option('--revision <n>', 'print this revision as the document applied (with -o yaml or json)')
    .option('-o, --output <format>', 'table, yaml or json (with --revision)', 'table'))
    .action(async (kindName: string, name: string, o: { revision?: string; output: string }, cmd: Command) => {
      const { policyWideRow, tableColumns, tableRow, toJson, toYaml } = await import('../policy/index.ts');
      const out = output(cmd);
      const kind = kindFromName(kindName);
      if (!kind) throw new CofferError('USAGE', `Cannot show the history of ${JSON.stringify(kindName)}: no such kind`, { hint: 'Use policy, lifecycle, storageunit (su) or client.' });
      const api = apiFor(cmd);
      const revisions = await api.listAll<Revision>(`/api/v1/documents/${plural(kind)}/${encodeURIComponent(name)}/history`);
      if (revisions.length === 0) throw new CofferError('NOT_FOUND', `No ${kind} named ${name} was ever applied`);
      if (o.revision !== undefined) {
        const n = Number(o.revision);
        const r = revisions.find((x) => x.revision === n);
        if (!r) throw new CofferError('NOT_FOUND', `${kind}/${name} has no revision ${o.revision}`, { hint: `Its revisions: ${revisions.map((x) => x.revision).join(', ')}.` });
        if (!r.document) throw new CofferError('NOT_FOUND', `Revision ${n} of ${kind}/${name} is its deletion: it holds no document`);
        if (!out.json && o.output !== 'json') {
          process.stdout.write(toYaml([r.document as CofferDocument]));
          return;
        }
        out.item(apiLine({ type: 'revision', revision: r }), toJson([r.document as CofferDocument]));
        out.summary({ kind, name, revisions: 1 });
        return;
      }
      for (const r of revisions) out.item(apiLine({ type: 'revision', revision: r }));
      out.summary({ kind, name, revisions: revisions.length }, () => table(['REVISION', 'APPLIED', 'BY', 'CHANGE'], revisions.map((r) => [String(r.revision), localTime(r.applied), r.appliedBy ?? '-', r.document ? 'applied' : 'deleted'])));
    });
}

interface Revision {
  kind: string;
  name: string;
  revision: number;
  document?: Record<string, unknown>;
  applied: number;
  appliedBy?: string;
}
