// `coffer verify` and `coffer alerts`: verification of stored copies on the server. `verify`
// queues a verify job for a storage unit (or one image's copy in it) that reads back every pack
// (--all, the default) or a share of them from the unit's cursor on (--subset N%); damage it finds
// marks the copies suspect, raises an alert and queues a repair from a good copy. `alerts` lists
// the alerts that are not resolved (--all: every one); `alerts ack ID` acknowledges one.

import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { output, parseIntOption } from './context.ts';
import { waitAndReport } from './cmd_jobs.ts';
import { apiFor, apiLine, describeJob, localTime, serverOption, table, type Job } from './remote.ts';

interface Alert {
  id: string;
  time: number;
  kind: string;
  severity: string;
  state: string;
  storageUnit?: string;
  images: string[];
  message: string;
  hint?: string;
  resolution?: string;
  resolvedBy?: string;
}

/** "5%", "0.5%" or "5" → 5; USAGE otherwise. */
export function parsePercent(value: string): number {
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(value.trim());
  const n = m ? Number(m[1]) : NaN;
  if (!(n > 0 && n <= 100)) throw new CofferError('USAGE', `Cannot use --subset ${value}: give a share of the packs between 0% and 100%, such as 5%`, { hint: 'Use --subset 5% to read a twentieth of the packs, or --all to read every one.' });
  return n;
}

function describeAlert(a: Alert): string[] {
  return [
    `${a.id}  ${a.severity.toUpperCase()}  ${a.state}  ${localTime(a.time)}${a.storageUnit ? `  unit ${a.storageUnit}` : ''}`,
    `  ${a.message}`,
    ...(a.hint ? [`  ${a.hint}`] : []),
    ...(a.resolution ? [`  ${a.state === 'resolved' ? 'Resolved' : 'Acknowledged'} by ${a.resolvedBy ?? '?'}: ${a.resolution}`] : a.resolvedBy ? [`  Acknowledged by ${a.resolvedBy}`] : []),
  ];
}

export function register(program: Command): void {
  serverOption(program.command('verify').description('read back a storage unit\'s packs and check every chunk (a job); damage marks copies suspect, raises an alert and queues a repair')
    .requiredOption('--unit <name>', 'the storage unit')
    .option('--image <id>', 'only the packs of this image\'s copy in the unit')
    .option('--all', 'read every pack (the default)')
    .option('--subset <percent>', 'read this share of the packs, from where the unit\'s last share ended (e.g. 5%)')
    .option('--wait', 'wait until the job ends, and exit as it ended (3: damage was found)'))
    .action(async (o: { unit: string; image?: string; all?: boolean; subset?: string; wait?: boolean }, cmd: Command) => {
      if (o.all && o.subset !== undefined) throw new CofferError('USAGE', 'Cannot verify: give either --all or --subset, not both');
      const out = output(cmd);
      const api = apiFor(cmd);
      const job = await api.request<Job>('POST', '/api/v1/verify', {
        body: { unit: o.unit, ...(o.image ? { image: o.image } : {}), ...(o.subset !== undefined ? { subsetPercent: parsePercent(o.subset) } : {}) },
      });
      if (o.wait) return waitAndReport(api, out, [job], (ended) => ({ jobs: ended }));
      out.summary({ jobs: [job] }, () => `queued ${describeJob(job)}`);
    });

  const alerts = program.command('alerts').description('alerts raised by the server (damage found by verify jobs): list (the default), ack');
  serverOption(alerts.command('list', { isDefault: true }).description('alerts not resolved yet, newest first (--all: every one)')
    .option('--all', 'resolved ones too')
    .option('--unit <name>', 'only alerts about this storage unit')
    .option('--limit <n>', 'at most this many (default 100)'))
    .action(async (o: { all?: boolean; unit?: string; limit?: string }, cmd: Command) => {
      const out = output(cmd);
      const max = o.limit === undefined ? 100 : parseIntOption('--limit', o.limit, 1, 100_000);
      const list = await apiFor(cmd).listAll<Alert>('/api/v1/alerts', { ...(o.all ? { state: 'all' } : {}), ...(o.unit ? { unit: o.unit } : {}) }, max);
      for (const alert of list) out.item(apiLine({ type: 'alert', alert }));
      out.summary({ alerts: list.length }, () => (list.length
        ? [table(['ID', 'SEVERITY', 'STATE', 'TIME', 'UNIT', 'IMAGES'], list.map((a) => [a.id, a.severity, a.state, localTime(a.time), a.storageUnit ?? '-', String(a.images.length)])), '', ...list.flatMap(describeAlert)]
        : `no ${o.all ? '' : 'open '}alerts`));
    });
  serverOption(alerts.command('ack <id>').description('acknowledge an alert: seen, someone is on it (it stays listed until resolved)'))
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const alert = await apiFor(cmd).request<Alert>('POST', `/api/v1/alerts/${encodeURIComponent(id)}/ack`);
      output(cmd).summary({ alert }, () => describeAlert(alert));
    });
}
