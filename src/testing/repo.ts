// A repository for tests: cheap KDF, small chunks and packs (so that small test data spans many
// chunks and packs), a private cache directory, and a worker pool.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Backend } from '../storage/backend.ts';
import { MemoryBackend } from '../storage/memory.ts';
import { Repository } from '../repository/repository.ts';
import { WorkerPool } from '../engine/pool.ts';

export const TEST_KDF = { N: 1024, r: 8, p: 1 };
export const TEST_CHUNKER = { minSize: 4096, avgSize: 16384, maxSize: 65536 };
export const TEST_PASSWORD = 'correct horse battery staple';

export interface TestRepo {
  repo: Repository;
  backend: Backend;
  pool: WorkerPool;
  cacheDir: string;
  /** Opens the same repository again (a second process would do the same). */
  reopen(): Promise<Repository>;
  close(): Promise<void>;
}

export async function makeTestRepo(options: { backend?: Backend; packSize?: number; workers?: number; master?: Uint8Array } = {}): Promise<TestRepo> {
  const backend = options.backend ?? new MemoryBackend();
  const cacheDir = await mkdtemp(join(tmpdir(), 'coffer-cache-'));
  const repo = await Repository.init(backend, TEST_PASSWORD, { kdf: TEST_KDF, chunker: TEST_CHUNKER, packSize: options.packSize ?? 256 * 1024, cacheDir, compressionLevel: 3, master: options.master });
  const pool = await WorkerPool.create({ keys: repo.keys, chunker: repo.config.chunker, level: repo.config.compressionLevel, workers: options.workers ?? 2 });
  const opened: Repository[] = [repo];
  return {
    repo,
    backend,
    pool,
    cacheDir,
    async reopen() {
      const dir = await mkdtemp(join(tmpdir(), 'coffer-cache-'));
      const r = await Repository.open(backend, TEST_PASSWORD, { cacheDir: dir });
      opened.push(r);
      return r;
    },
    async close() {
      await pool.close();
      for (const r of opened) await r.close();
      await rm(cacheDir, { recursive: true, force: true });
    },
  };
}
