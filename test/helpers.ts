// Helpers for integration tests: building source trees and comparing restored trees.
import { mkdir, writeFile, readdir, lstat, readFile, readlink, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes, textBytes } from '../src/testing/random.ts';

/** Writes a tree of files at chunk-size edges, text and random, with subdirectories and a symlink. */
export async function makeSourceTree(dir: string, seed = 1, scale = 1): Promise<void> {
  await mkdir(join(dir, 'sub', 'deeper'), { recursive: true });
  await mkdir(join(dir, 'empty'), { recursive: true });
  const sizes = [0, 1, 4095, 4096, 4097, 16384, 65535, 65536, 65537, 200_000 * scale, 1_000_000 * scale];
  let i = 0;
  for (const s of sizes) {
    await writeFile(join(dir, `rand-${s}.bin`), randomBytes(seed * 1000 + i++, s));
    await writeFile(join(dir, 'sub', `text-${s}.txt`), textBytes(seed * 1000 + i++, s));
  }
  await writeFile(join(dir, 'sub', 'deeper', 'dup.bin'), randomBytes(seed * 1000 + 1, 200_000 * scale));
  await writeFile(join(dir, 'name with spaces & ünïcödé.txt'), 'hello\n');
  await symlink('sub/text-1.txt', join(dir, 'link'));
}

export interface Entry {
  type: string;
  mode: number;
  size: number;
  mtimeMs: number;
  content?: string;
  target?: string;
}

/** Lists a tree: type, mode, size, mtime (ms), content (base64 of sha-like digest) per path. */
export async function listTree(dir: string, base = ''): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  for (const name of (await readdir(dir)).sort()) {
    const p = join(dir, name);
    const rel = base ? `${base}/${name}` : name;
    const st = await lstat(p);
    const e: Entry = { type: st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other', mode: st.mode & 0o7777, size: st.isFile() ? st.size : 0, mtimeMs: Math.floor(st.mtimeMs) };
    if (st.isFile()) e.content = (await readFile(p)).toString('base64');
    if (st.isSymbolicLink()) e.target = await readlink(p);
    out.set(rel, e);
    if (st.isDirectory()) for (const [k, v] of await listTree(p, rel)) out.set(k, v);
  }
  return out;
}
