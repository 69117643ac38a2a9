// Shared by every kind of worker thread (engine pool, restore writers).

/**
 * Node options for the workers: inherited (undefined) unless the parent ran `node -e` with
 * --input-type, which a worker refuses at start-up; then the same options without those.
 * (An explicit list is avoided otherwise: under `node --test` the parent's execArgv spells out
 * options that a worker cannot take.)
 */
export function workerExecArgv(): string[] | undefined {
  const argv = process.execArgv;
  if (!argv.some((a) => a.startsWith('--input-type'))) return undefined;
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--input-type' || a === '-e' || a === '--eval' || a === '-p' || a === '--print') {
      i++;
      continue;
    }
    if (a.startsWith('--input-type=') || a.startsWith('--eval=') || a.startsWith('--print=')) continue;
    out.push(a);
  }
  return out;
}
