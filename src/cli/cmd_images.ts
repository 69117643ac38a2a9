// `coffer images`, `coffer browse` and `coffer restore`: the backups the server's catalog knows
// (an image: one backup of a client by a policy, a snapshot per selection, one or more copies),
// the files in one, and restoring one onto a client (a job; --wait exits as it ended).

import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import type { Image } from '../catalog/images.ts';
import { collect, formatBytes, output, parseIntOption, type Output } from './context.ts';
import type { ApiClient } from './api.ts';
import { waitAndReport } from './cmd_jobs.ts';
import { apiFor, describeJob, localTime, serverOption, sinceOption, table, type Job, apiLine } from './remote.ts';

export interface ImageFilter {
  client?: string;
  policy?: string;
  since?: string;
  state?: string;
  limit?: string;
}

/** Lists images (newest first) as `image` lines or a table; shared with `coffer get images`. */
export async function listImages(api: ApiClient, out: Output, o: ImageFilter): Promise<Image[]> {
  const max = o.limit === undefined ? 100 : parseIntOption('--limit', o.limit, 1, 100_000);
  const images = await api.listAll<Image>('/api/v1/images', { client: o.client, policy: o.policy, state: o.state, since: sinceOption(o.since) }, max);
  for (const image of images) out.item(apiLine({ type: 'image', image }));
  out.summary({ images: images.length }, () => table(['ID', 'TIME', 'CLIENT', 'POLICY', 'SCHEDULE', 'LEVEL', 'STATE', 'STREAMS', 'SIZE'], images.map((i) => {
    const bytes = (i.summary as { scannedBytes?: unknown } | undefined)?.scannedBytes;
    return [i.id, localTime(i.time), i.client, i.policy, i.schedule ?? '-', i.level, i.state, String(Object.keys(i.streams).length), typeof bytes === 'number' ? formatBytes(bytes) : '-'];
  })));
  return images;
}

export function imageFilterOptions(cmd: Command): Command {
  return cmd
    .option('--client <name>', 'only images of this client (a restore operator must give it)')
    .option('--policy <name>', 'only images made by this policy')
    .option('--since <duration>', 'only images of the last 7d, 12h, ...')
    .option('--state <state>', 'only images in this state: pending, ok, partial, failed')
    .option('--limit <n>', 'at most this many, newest first (default 100)');
}

interface FoundEntry {
  image: string;
  snapshot: string;
  time: string;
  path: string;
  type: string;
  size?: number;
}

/** A match as the JSON line carries it. */
function matchLine(m: FoundEntry): Record<string, unknown> {
  return { image: m.image, snapshot: m.snapshot, time: m.time, path: m.path, nodeType: m.type, size: m.size ?? 0 };
}

interface BrowseEntry {
  path: string;
  name: string;
  type: string;
  mode?: number;
  size?: number;
  mtimeNs?: string;
  user?: string;
  group?: string;
  linkTarget?: string;
}

export function register(program: Command): void {
  serverOption(imageFilterOptions(program.command('images').description('list images (backups) in the catalog, newest first')))
    .action(async (o: ImageFilter, cmd: Command) => {
      await listImages(apiFor(cmd), output(cmd), o);
    });

  serverOption(program
    .command('browse <image> [path]')
    .description('list a directory of an image (default /)')
    .option('--stream <key>', 'which of the image\'s streams (selections) to browse (default its first)'))
    .action(async (image: string, path: string | undefined, o: { stream?: string }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const entries: BrowseEntry[] = [];
      let head: { image: string; stream: string; streams: string[]; path: string } | undefined;
      for (let after: string | undefined; ;) {
        const page = await api.request<{ image: string; stream: string; streams: string[]; path: string; items: BrowseEntry[]; next?: string }>('GET', `/api/v1/images/${encodeURIComponent(image)}/browse`, { query: { path: path ?? '/', stream: o.stream, after, limit: 1000 } });
        head ??= page;
        entries.push(...page.items);
        for (const entry of page.items) out.item(apiLine({ type: 'browseEntry', entry }));
        if (!page.next) break;
        after = page.next;
      }
      const h = head!;
      if (h.streams.length > 1 && !o.stream) out.info(`note: stream ${h.stream} (the image has ${h.streams.length}: ${h.streams.join(', ')}; choose with --stream)`);
      out.summary({ image: h.image, stream: h.stream, streams: h.streams, path: h.path, entries: entries.length }, () => table(['TYPE', 'SIZE', 'MODIFIED', 'OWNER', 'NAME'], entries.map((e) => [
        e.type,
        e.type === 'file' ? formatBytes(e.size ?? 0) : '-',
        e.mtimeNs ? localTime(Number(BigInt(e.mtimeNs) / 1_000_000n)) : '-',
        `${e.user ?? '-'}:${e.group ?? '-'}`,
        `${e.name}${e.type === 'dir' ? '/' : ''}${e.linkTarget !== undefined ? ` -> ${e.linkTarget}` : ''}`,
      ])));
    });

  serverOption(program
    .command('find <pattern>')
    .description('find files by name or path pattern in a client\'s images, newest first ("*.conf", "/etc/**/hosts")')
    .requiredOption('--client <name>', 'the client whose images to search')
    .option('--policy <name>', 'only images made by this policy')
    .option('--since <duration>', 'only images of the last 7d, 12h, ...')
    .option('--images <n>', 'search at most this many images, newest first (default 100)')
    .option('--limit <n>', 'at most this many matches (default 1000)'))
    .action(async (pattern: string, o: { client: string; policy?: string; since?: string; images?: string; limit?: string }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const images = o.images === undefined ? undefined : parseIntOption('--images', o.images, 1, 1000);
      const limit = o.limit === undefined ? undefined : parseIntOption('--limit', o.limit, 1, 1000);
      const r = await api.request<{ items: FoundEntry[]; more: boolean; imagesSearched: number; unreadable: Array<{ snapshot: string; error: string }> }>('GET', '/api/v1/find', {
        query: { pattern, client: o.client, policy: o.policy, since: sinceOption(o.since), images, limit },
      });
      for (const match of r.items) out.item(apiLine({ type: 'found', ...matchLine(match) }));
      for (const u of r.unreadable) out.warning(`snapshot ${u.snapshot.slice(0, 12)}`, u.error);
      out.summary({ pattern, client: o.client, matches: r.items.length, more: r.more, imagesSearched: r.imagesSearched, warnings: r.unreadable.length }, () => [
        table(['IMAGE', 'TIME', 'TYPE', 'SIZE', 'PATH'], r.items.map((m) => [m.image, m.time, m.type, m.type === 'file' ? formatBytes(m.size ?? 0) : '-', m.path])),
        `${r.items.length} match(es) in ${r.imagesSearched} image(s)${r.more ? ' (more: raise --limit)' : ''}`,
      ]);
      if (r.unreadable.length) throw new CofferError('WARNINGS', `${r.unreadable.length} snapshot(s) could not be read and were not searched`, { hint: 'Run `coffer catalog reconcile` and check the storage unit.' });
    });

  serverOption(program
    .command('clone')
    .description('clone the images a query finds to one or more storage units: only the chunks each lacks are sent, all from one read (one duplicate job per image on the server)')
    .requiredOption('--where <query>', 'which images: words key=value, e.g. "client=db1 level=full since=7d" (client, policy, level, since, until)')
    .requiredOption('--to <units>', 'the storage unit(s) to clone to: repeat --to, or list them as A,B', (v: string, prev: string[] = []) => [...prev, ...v.split(',')])
    .option('--copies <n>', 'new copies per image, in the first N listed units that lack one (default: every unit listed)')
    .option('--retention <duration>', 'how long the new copies stay (default: as the image\'s lifecycle says for each unit)')
    .option('--limit <n>', 'at most this many images, newest first (default 1000)')
    .option('--dry-run', 'list the images that would be cloned, queue nothing'))
    .action(async (o: { where: string; to: string[]; copies?: string; retention?: string; limit?: string; dryRun?: boolean }, cmd: Command) => {
      const where: Record<string, unknown> = {};
      for (const word of o.where.trim().split(/\s+/).filter(Boolean)) {
        const m = /^([a-z]+)=(.+)$/.exec(word);
        if (!m) throw new CofferError('USAGE', `Cannot read --where ${JSON.stringify(o.where)}: ${JSON.stringify(word)} is not key=value`, { hint: 'Write it as "client=db1 level=full since=7d".' });
        const [, key, value] = m as unknown as [string, string, string];
        if (key === 'client' || key === 'policy' || key === 'level') where[key] = value;
        else if (key === 'since' || key === 'until') where[key] = sinceOption(value, `--where ${key}`);
        else throw new CofferError('USAGE', `Cannot filter on ${JSON.stringify(key)} in --where`, { hint: 'Use client, policy, level, since or until.' });
      }
      const to = o.to.map((u) => u.trim());
      if (to.some((u) => u === '')) throw new CofferError('USAGE', `Cannot read --to ${JSON.stringify(o.to.join(','))}: a storage unit name is empty`, { hint: 'Write --to offsite --to archive, or --to offsite,archive.' });
      const copies = o.copies === undefined ? undefined : parseIntOption('--copies', o.copies, 1, 16);
      const limit = o.limit === undefined ? undefined : parseIntOption('--limit', o.limit, 1, 10_000);
      const r = await apiFor(cmd).request<{ to: string[]; copies: number; dryRun: boolean; images: Array<{ image: string; from: string; targets: Array<{ to: string; retention: string }> }>; skipped: Array<{ image: string; reason: string }>; jobs: Job[] }>('POST', '/api/v1/clones', {
        body: { where, to, ...(copies ? { copies } : {}), ...(o.retention ? { retention: o.retention } : {}), ...(limit ? { limit } : {}), dryRun: !!o.dryRun },
      });
      const out = output(cmd);
      const units = r.to.join(', ');
      out.summary({ to: r.to, copies: r.copies, dryRun: r.dryRun, images: r.images.length, skipped: r.skipped.length, jobs: r.jobs.map((j) => j.id) }, () => [
        table(['IMAGE', 'FROM', 'TO', 'RETENTION'], r.images.map((i) => [i.image, i.from, i.targets.map((t) => t.to).join(','), i.targets.map((t) => t.retention).join(',')])),
        ...r.skipped.map((x) => `skipped ${x.image}: ${x.reason}`),
        r.dryRun ? `${r.images.length} image(s) would be cloned to ${units}` : `${r.jobs.length} duplicate job(s) queued to ${units}; follow them with \`coffer jobs --kind duplicate\``,
      ]);
    });

  serverOption(program
    .command('hold <image>')
    .description('legal hold (admin): keep every copy of an image whatever its retention, until released')
    .requiredOption('--reason <text>', 'why it is held: a case number, an investigation (recorded with the hold and in the audit log)'))
    .action(async (image: string, o: { reason: string }, cmd: Command) => {
      const r = await apiFor(cmd).request<{ image: string; reason: string; copies: Array<{ storageUnit: string }> }>('POST', `/api/v1/images/${encodeURIComponent(image)}/hold`, { body: { reason: o.reason } });
      output(cmd).summary({ image: r.image, reason: r.reason, copies: r.copies.length }, () => `image ${r.image}: ${r.copies.length} cop${r.copies.length === 1 ? 'y' : 'ies'} held (${r.copies.map((c) => c.storageUnit).join(', ')}): ${r.reason}`);
    });

  serverOption(program
    .command('release <image>')
    .description('release a legal hold (admin): the copies expire at their own time again'))
    .action(async (image: string, _o: unknown, cmd: Command) => {
      const r = await apiFor(cmd).request<{ image: string; copies: unknown[] }>('POST', `/api/v1/images/${encodeURIComponent(image)}/release`);
      output(cmd).summary({ image: r.image, copies: r.copies.length }, () => `image ${r.image}: hold released on ${r.copies.length} cop${r.copies.length === 1 ? 'y' : 'ies'}`);
    });

  serverOption(program
    .command('restore <image>')
    .description('restore an image onto a client (a job on the server)')
    .requiredOption('--to-client <name>', 'the client to restore onto')
    .requiredOption('--to-path <dir>', 'the directory on that client to restore into (absolute)')
    .option('--include <pattern>', 'only paths matching (repeatable)', collect)
    .option('--exclude <pattern>', 'leave out paths matching (repeatable)', collect)
    .option('--overwrite <when>', 'existing files: never, if-changed or always')
    .option('--dry-run', 'only show what would happen (the job\'s result says)')
    .option('--force', 'restore onto another host than the image\'s (needs --confirm-host)')
    .option('--confirm-host <name>', 'with --force: the target client\'s name again')
    .option('--wait', 'wait until the restore ends; exit 0 succeeded, 3 with warnings, 1 failed, 130 cancelled'))
    .action(async (image: string, o: { toClient: string; toPath: string; include?: string[]; exclude?: string[]; overwrite?: string; dryRun?: boolean; force?: boolean; confirmHost?: string; wait?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const api = apiFor(cmd);
      const job = await api.request<Job>('POST', '/api/v1/restores', {
        body: {
          image, toClient: o.toClient, toPath: o.toPath,
          ...(o.include ? { include: o.include } : {}), ...(o.exclude ? { exclude: o.exclude } : {}),
          ...(o.overwrite ? { overwrite: o.overwrite } : {}), ...(o.dryRun ? { dryRun: true } : {}),
          ...(o.force ? { force: true } : {}), ...(o.confirmHost ? { confirmHost: o.confirmHost } : {}),
        },
      });
      if (o.wait) return waitAndReport(api, out, [job], (ended) => ({ jobs: ended }));
      out.summary({ jobs: [job] }, () => [`queued ${describeJob(job)}`, `Follow it with: coffer jobs logs ${job.id} --follow`]);
    });
}
