// `coffer report compliance`: per policy and client, whether the policy's promises hold now (the
// server's report, src/server/compliance.ts): the last good backup against the rpo, the last
// restore test against the rto, the copies the lifecycle requires by now, an offsite copy where
// required; images on legal hold are listed. Exit 0 when everything complies and 6 (COMPLIANCE)
// when something does not, so that monitoring can run it; other exit codes are errors.

import type { Command } from 'commander';
import type { ComplianceReport, ComplianceRow } from '../server/compliance.ts';
import { EXIT_CODES } from '../core/errors.ts';
import { output } from './context.ts';
import { apiFor, apiLine, humanDuration, localTime, serverOption, table } from './remote.ts';

function testText(t: ComplianceRow['restoreTest']): string {
  if (!t) return '-';
  return `${localTime(t.time)} ${!t.passed ? 'FAILED' : t.withinRto === false ? 'TOO SLOW' : 'passed'}${t.restoreMs === null ? '' : ` ${humanDuration(t.restoreMs)}`}`;
}

function human(report: ComplianceReport, all: boolean): string[] {
  const shown = all ? report.rows : report.rows.filter((r) => r.status === 'out');
  const lines: string[] = [];
  if (shown.length) {
    lines.push(table(['POLICY', 'CLIENT', 'STATUS', 'LAST BACKUP', 'RPO', 'LAST RESTORE TEST', 'RTO'], shown.map((r) => [
      r.policy, r.client, r.status === 'ok' ? 'ok' : 'OUT',
      r.lastBackup ? `${localTime(r.lastBackup.time)} (${humanDuration(r.lastBackup.ageMs)} ago)` : 'none',
      r.rpoMs === null ? '-' : humanDuration(r.rpoMs), testText(r.restoreTest), r.rtoMs === null ? '-' : humanDuration(r.rtoMs),
    ])), '');
    for (const r of shown) for (const p of r.problems) lines.push(`${r.policy}/${r.client}: ${p}`);
    if (shown.some((r) => r.problems.length)) lines.push('');
  }
  if (report.holdsTotal > 0) {
    lines.push(`On legal hold (${report.holdsTotal} image${report.holdsTotal === 1 ? '' : 's'}; kept whatever their retention):`);
    lines.push(table(['IMAGE', 'TIME', 'CLIENT', 'POLICY', 'REASON'], report.holds.map((h) => [h.image, localTime(h.time), h.client, h.policy, h.reason])), '');
  }
  const pairs = `${report.clients} client${report.clients === 1 ? '' : 's'} of ${report.policies} polic${report.policies === 1 ? 'y' : 'ies'}`;
  lines.push(report.compliant
    ? `COMPLIANT: all ${pairs} meet their policies (${localTime(report.time)}).`
    : `OUT OF COMPLIANCE: ${report.outOfCompliance} of ${pairs} (${localTime(report.time)}).`);
  return lines;
}

export function register(program: Command): void {
  const report = program.command('report').description('reports from the server');
  serverOption(report
    .command('compliance')
    .description('per policy and client: last backup against the rpo, last restore test against the rto, missing copies, offsite copies; images on hold. Exit 0 compliant, 6 out of compliance')
    .option('--policy <name>', 'only this policy')
    .option('--all', 'list the clients that comply too (default: only those out of compliance)'))
    .action(async (o: { policy?: string; all?: boolean }, cmd: Command) => {
      const out = output(cmd);
      const r = await apiFor(cmd).request<ComplianceReport>('GET', '/api/v1/reports/compliance', { query: o.policy === undefined ? {} : { policy: o.policy } });
      for (const row of r.rows) out.item(apiLine({ type: 'compliance', ...row }));
      for (const h of r.holds) out.item(apiLine({ type: 'held', ...h }));
      out.summary({ compliant: r.compliant, time: r.time, policies: r.policies, clients: r.clients, outOfCompliance: r.outOfCompliance, holds: r.holdsTotal }, () => human(r, !!o.all));
      out.setExitCode(r.compliant ? 0 : EXIT_CODES.COMPLIANCE);
    });
}
