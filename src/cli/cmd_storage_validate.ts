// `coffer storage validate URL`: run the backend conformance checks against real storage, in a
// scratch prefix that is removed afterwards.
import type { Command } from 'commander';
import { CofferError } from '../core/errors.ts';
import { validateStorage } from '../storage/conformance.ts';
import { backendFor, interruptSignal, output } from './context.ts';

export function register(program: Command): void {
  const storage = program.command('storage').description('work with storage locations');
  storage
    .command('validate <url>')
    .description('check that a bucket or directory behaves as Coffer needs (non-destructive: uses a scratch prefix)')
    .action(async (url: string, _o: unknown, cmd: Command) => {
      const out = output(cmd);
      const backend = await backendFor(url);
      try {
        const results = await validateStorage(backend, {
          signal: interruptSignal(),
          onResult: (r) => out.event({ type: 'check', name: r.name, ok: r.ok, ms: r.ms, error: r.error ? String(r.error) : undefined }, `${r.ok ? 'ok  ' : 'FAIL'} ${r.name} (${r.ms} ms)${r.ok ? '' : `: ${r.error}`}`),
        });
        const failed = results.filter((r) => !r.ok);
        out.summary({ location: backend.location, passed: results.length - failed.length, failed: failed.length }, () => `${results.length - failed.length} passed, ${failed.length} failed`);
        if (failed.length) throw new CofferError('CHECK_FAILED', `Storage at ${backend.location} failed ${failed.length} check(s)`, { hint: 'Coffer needs every check to pass for safe backups; see the failures above.' });
      } finally {
        await backend.close();
      }
    });
}
