// `coffer repo init`: creates a repository on a backend.
import type { Command } from 'commander';
import { DEFAULT_CHUNKER, Repository } from '../repository/repository.ts';
import { backendFor, getPassword, interruptSignal, openOptions, output, parseIntOption, repoUrl } from './context.ts';

export function register(repo: Command): void {
  repo
    .command('init')
    .description('create a new repository')
    .option('--chunk-min <bytes>', 'smallest content-defined chunk')
    .option('--chunk-avg <bytes>', 'average chunk (a power of two)')
    .option('--chunk-max <bytes>', 'largest chunk')
    .option('--compression <level>', 'zstd level, 1-19 (default 3)')
    .option('--pack-size <MiB>', 'target pack size in MiB (default 16)')
    .option('--force', 'create the repository even if the directory or S3 prefix already holds other files')
    .action(async (opts: Record<string, string | undefined>, cmd: Command) => {
      const out = output(cmd);
      const url = repoUrl(cmd);
      const backend = await backendFor(url);
      try {
        // Before the passphrase prompt: nobody should type a new passphrase twice to be refused.
        await Repository.checkInitLocation(backend, { signal: interruptSignal(), force: Boolean(opts.force) });
        const password = await getPassword(cmd, { confirm: true });
        const chunker = opts.chunkAvg || opts.chunkMin || opts.chunkMax
          ? {
              minSize: parseIntOption('--chunk-min', opts.chunkMin ?? String(DEFAULT_CHUNKER.minSize), 64, 64 << 20),
              avgSize: parseIntOption('--chunk-avg', opts.chunkAvg ?? String(DEFAULT_CHUNKER.avgSize), 256, 64 << 20),
              maxSize: parseIntOption('--chunk-max', opts.chunkMax ?? String(DEFAULT_CHUNKER.maxSize), 1024, 128 << 20),
            }
          : undefined;
        const r = await Repository.init(backend, password, {
          ...openOptions(cmd, interruptSignal()),
          chunker,
          compressionLevel: opts.compression ? parseIntOption('--compression', opts.compression, 1, 19) : undefined,
          packSize: opts.packSize ? parseIntOption('--pack-size', opts.packSize, 1, 1024) * 1024 * 1024 : undefined,
          force: Boolean(opts.force),
        });
        await r.close();
        out.summary({ id: r.id, location: backend.location, config: r.config }, () => `created repository ${r.id.slice(0, 12)} at ${backend.location}`);
      } finally {
        await backend.close();
      }
    });
}
