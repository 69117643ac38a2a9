// `coffer repo repair index|packs|snapshots|config` (and `rebuild-index`, the old name of
// `repair index`): put a damaged repository back in order while keeping everything that can
// still be read. Each has --dry-run; each run that changes something writes a report (JSON) that
// names every file that was lost, to --report FILE or ./coffer-repair-<kind>-<time>.json. Files
// lost are printed as warnings (exit code 3).
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { repairConfig, repairIndex, repairPacks, repairSnapshots, reportName, type LostFile } from '../repository/repair.ts';
import type { Repository } from '../repository/repository.ts';
import { makePool, output, withRepo, type Output } from './context.ts';

interface RepairCliOptions {
  dryRun?: boolean;
  report?: string;
}

/**
 * Writes the report where asked; by default next to where the command ran, but not for a dry run
 * nor when there was nothing to repair.
 */
async function saveReport(repo: Repository, kind: string, o: RepairCliOptions, report: object, somethingDone = true): Promise<string | undefined> {
  if (!o.report && (o.dryRun || !somethingDone)) return undefined;
  const path = resolve(o.report ?? reportName(kind));
  const body = { repository: repo.backend.location, repositoryId: repo.id, time: new Date().toISOString(), ...report };
  try {
    await writeFile(path, JSON.stringify(body, null, 2) + '\n', { mode: 0o600 });
  } catch (e) {
    throw new CofferError('USAGE', `Cannot write the repair report to ${path}: ${(e as Error).message}`, { hint: 'The repair itself is done; run it again with --dry-run --report FILE (a place you can write to) to have the report.' });
  }
  return path;
}

/** Each lost file as a warning; the count as WARNINGS (exit 3) at the end. */
function reportLost(out: Output, lost: LostFile[]): void {
  for (const f of lost) {
    const what = f.what === 'snapshot' ? 'the snapshot object is unreadable' : f.what === 'directory' ? `its directory tree is lost${f.blob ? ` (tree ${f.blob.slice(0, 12)})` : ''}` : `its data is lost (blob ${f.blob!.slice(0, 12)})`;
    out.event({ type: 'warning', snapshot: f.snapshot, path: f.path, problem: what }, `lost: snapshot ${f.snapshot.slice(0, 12)}  ${f.path}  (${what})`);
  }
}

function finish(lostCount: number, listed: number, reportPath: string | undefined): void {
  if (lostCount === 0) return;
  throw new CofferError('WARNINGS', `${lostCount} file(s) or director(ies) of snapshots are lost${lostCount > listed ? ` (${listed} listed)` : ''}`, {
    hint: reportPath ? `They are listed above and in ${reportPath}.` : 'They are listed above.',
  });
}

function common(c: Command): Command {
  return c.option('--dry-run', 'only show what would be done; change nothing').option('--report <file>', 'where to write the report (default ./coffer-repair-<kind>-<time>.json; dry runs only with this option)');
}

export function register(repo: Command): void {
  const repair = repo.command('repair').description('repair a damaged repository, keeping everything that can still be read (run `coffer repo check --read-data` first)');

  const index = async (o: RepairCliOptions, cmd: Command) => {
    const out = output(cmd);
    await withRepo(cmd, async (r, signal) => {
      const res = await repairIndex(r, { signal, dryRun: o.dryRun, onProgress: (m) => out.event({ type: 'progress', message: m }, m) });
      const path = await saveReport(r, 'index', o, res);
      reportLost(out, res.lostFiles);
      const { lostFiles, lostFileCount, ...rest } = res;
      out.summary({ ...rest, lostFiles: lostFileCount, warnings: lostFiles.length, ...(path ? { report: path } : {}) }, () => [
        `${o.dryRun ? 'would index' : 'indexed'} ${res.blobs} blobs in ${res.packs} packs; ${o.dryRun ? 'would write new index files' : `wrote ${res.indexFilesWritten} index file(s), removed ${res.indexFilesRemoved}`}`,
        ...res.damagedPacks.map((d) => `pack ${d.pack.slice(0, 12)}: trailer unreadable (${d.error}); kept ${d.blobsKept} of the ${d.blobsKnown} blobs the old index knew, each read and verified`),
        ...res.missingPacks.map((p) => `pack ${p.slice(0, 12)} is listed by the old index but not in storage: its blobs are not indexed any more`),
        ...res.indexFilesQuarantined.map((i) => `index file ${i.slice(0, 12)} is unreadable: ${o.dryRun ? 'would be moved' : 'moved'} to quarantine/`),
        `${res.lostFileCount} file(s) lost${path ? `; report in ${path}` : ''}`,
      ]);
      finish(res.lostFileCount, lostFiles.length, path);
    });
  };

  common(repair.command('index').description('rebuild the index from the packs; for a pack whose trailer is unreadable keep what the old index knew of it, blob by blob, after verifying each'))
    .action(index);
  common(repo.command('rebuild-index').description('the old name of `repo repair index`')).action(index);

  common(repair.command('packs [pack...]').description('salvage the readable blobs of damaged packs (recorded damage, missing, wrong size; or the packs named) into new packs and quarantine the damaged ones'))
    .action(async (packs: string[], o: RepairCliOptions, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const pool = await makePool(cmd, r);
        try {
          const res = await repairPacks(r, pool, { signal, dryRun: o.dryRun, packs, onProgress: (m) => out.event({ type: 'progress', message: m }, m) });
          const path = await saveReport(r, 'packs', o, res, res.packs.length > 0 || res.lostFileCount > 0);
          reportLost(out, res.lostFiles);
          const { lostFiles, lostFileCount, ...rest } = res;
          out.summary({ ...rest, lostFiles: lostFileCount, warnings: lostFiles.length, ...(path ? { report: path } : {}) }, () => [
            ...(res.packs.length === 0 ? ['no damaged pack: nothing to repair'] : []),
            ...res.packs.map((p) => `pack ${p.pack.slice(0, 12)} (${p.problem}): ${p.blobs} blobs, ${p.salvaged} salvaged, ${p.elsewhere} with a good copy elsewhere, ${p.lost} lost${p.quarantined ? '; moved to quarantine/' : ''}`),
            `${o.dryRun ? 'would salvage' : 'salvaged'} ${res.blobsSalvaged} blob(s), ${res.blobsLost} lost; ${res.lostFileCount} file(s) lost${path ? `; report in ${path}` : ''}`,
          ]);
          finish(res.lostFileCount, lostFiles.length, path);
        } finally {
          await pool.close();
        }
      });
    });

  common(repair.command('snapshots').description('write, for each snapshot that uses lost data, one in which what is lost is renamed NAME.damaged (zero-filled, or an empty directory) and everything else stays; quarantine unreadable snapshot objects'))
    .option('--forget', 'remove each original snapshot once its repaired one is written')
    .option('--recover', 'also make snapshots of trees that no snapshot reaches (done anyway when a snapshot object is unreadable)')
    .action(async (o: RepairCliOptions & { forget?: boolean; recover?: boolean }, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const pool = await makePool(cmd, r);
        try {
          const res = await repairSnapshots(r, pool, { signal, dryRun: o.dryRun, forget: o.forget, recover: o.recover, onProgress: (m) => out.event({ type: 'progress', message: m }, m) });
          const path = await saveReport(r, 'snapshots', o, res, res.repaired.length + res.unreadable.length + res.recovered.length + res.lostFileCount > 0);
          reportLost(out, res.lostFiles);
          const { lostFiles, lostFileCount, ...rest } = res;
          out.summary({ ...rest, lostFiles: lostFileCount, warnings: lostFiles.length, ...(path ? { report: path } : {}) }, () => [
            ...(res.repaired.length + res.unreadable.length === 0 ? ['no snapshot uses lost data: nothing to repair'] : []),
            ...res.repaired.map((x) => `snapshot ${x.snapshot.slice(0, 12)}: ${x.lostFiles} entr${x.lostFiles === 1 ? 'y' : 'ies'} lost; ${x.replacement ? `repaired as ${x.replacement.slice(0, 12)}` : 'would be repaired'}${x.forgotten ? ', original removed' : ''}`),
            ...res.unreadable.map((u) => `snapshot ${u.snapshot.slice(0, 12)} is unreadable (${u.error})${u.quarantined ? ': moved to quarantine/' : ''}`),
            ...res.recovered.map((x) => `trees no snapshot reaches: ${x.entries} entries at the top${x.snapshot ? `, recovered as snapshot ${x.snapshot.slice(0, 12)} (tag recovered)` : ', would be recovered'}`),
            `${res.lostFileCount} entr${res.lostFileCount === 1 ? 'y' : 'ies'} lost${path ? `; report in ${path}` : ''}`,
          ]);
          finish(res.lostFileCount, lostFiles.length, path);
        } finally {
          await pool.close();
        }
      });
    });

  repair.command('config').description('rewrite a missing or damaged copy of the config (init writes two: config and config.copy) from the one that reads')
    .option('--dry-run', 'only show what would be done; change nothing')
    .action(async (o: { dryRun?: boolean }, cmd: Command) => {
      const out = output(cmd);
      await withRepo(cmd, async (r, signal) => {
        const res = await repairConfig(r, { signal, dryRun: o.dryRun });
        out.summary({ ...res }, () => [
          ...res.copies.map((c) => `${c.name}: ${c.ok ? 'ok' : c.problem}`),
          res.rewritten.length ? `${o.dryRun ? 'would rewrite' : 'rewrote'} ${res.rewritten.join(', ')} from the good copy${o.dryRun ? '' : ' (the damaged one is in quarantine/)'}` : 'both copies are good: nothing to do',
        ]);
      });
    });
}
