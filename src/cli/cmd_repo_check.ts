// `coffer repo check [--read-data [--subset N%]]`: verify the repository.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { check } from '../repository/check.ts';
import { formatBytes, output, withRepo } from './context.ts';

export function parsePercent(v: string): number {
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(v.trim());
  const n = m ? Number(m[1]) : NaN;
  if (!(n > 0 && n <= 100)) throw new CofferError('USAGE', `Cannot use --subset ${JSON.stringify(v)}: give a percentage above 0 and at most 100, e.g. 10%`);
  return n;
}

export function register(repo: Command): void {
  repo
    .command('check')
    .description('check the repository structure; with --read-data also every byte')
    .option('--read-data', 'download and verify every pack')
    .option('--subset <percent>', 'with --read-data: only a random N% of the packs')
    .action(async (o: { readData?: boolean; subset?: string }, cmd: Command) => {
      const out = output(cmd);
      if (o.subset && !o.readData) throw new CofferError('USAGE', 'Cannot use --subset without --read-data');
      const subsetPercent = o.subset ? parsePercent(o.subset) : undefined;
      await withRepo(cmd, async (r, signal) => {
        const res = await check(r, { signal, readData: o.readData, subsetPercent, onProgress: (m) => out.event({ type: 'progress', message: m }) });
        for (const p of res.problems) {
          out.item({ type: 'problem', severity: p.severity, kind: p.kind, message: p.message, pack: p.pack, blob: p.blob, snapshot: p.snapshot, path: p.path });
        }
        for (const a of res.affected) out.item({ type: 'affected', snapshot: a.snapshot, path: a.path, blob: a.blob });
        // Found errors end with CHECK_FAILED, whose details.summary keeps this summary (docs/json.md).
        out.summary({ ok: res.ok, readData: !!o.readData, stats: { snapshots: res.stats.snapshots, trees: res.stats.trees, indexFiles: res.stats.indexFiles, packs: res.stats.packs, blobs: res.stats.blobs, packsRead: res.stats.packsRead, bytesRead: res.stats.bytesRead }, problems: res.problems.length, damageRecorded: res.damageRecorded, damageCleared: res.damageCleared, advice: res.advice }, () => {
          const lines = [
            `${res.stats.snapshots} snapshots, ${res.stats.trees} trees, ${res.stats.indexFiles} index files, ${res.stats.packs} packs, ${res.stats.blobs} blobs`,
            ...(o.readData ? [`read ${res.stats.packsRead} packs, ${formatBytes(res.stats.bytesRead)}`] : []),
            ...res.problems.map((p) => `${p.severity}: ${p.message}`),
          ];
          if (res.affected.length) {
            lines.push('affected files:');
            for (const a of res.affected) lines.push(`  snapshot ${a.snapshot.slice(0, 12)}  ${a.path}  (blob ${a.blob.slice(0, 12)})`);
          }
          if (res.damageRecorded) lines.push(`recorded the damage found in the repository (damage/${res.damageRecorded.slice(0, 12)}): backups no longer deduplicate against it`);
          for (const p of res.damageCleared) lines.push(`pack ${p.slice(0, 12)} reads intact again: its damage record was cleared`);
          if (res.advice.length) lines.push('what to do:', ...res.advice.map((a) => `  ${a}`));
          lines.push(res.ok ? 'no errors were found' : `${res.problems.filter((p) => p.severity === 'error').length} error(s) found`);
          return lines;
        });
        if (!res.ok) throw new CofferError('CHECK_FAILED', 'The repository check found errors', { hint: res.advice.length ? `See the list above; ${res.advice[0]}.` : 'See the list above.' });
      });
    });
}
