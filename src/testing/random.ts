// Seeded random data for tests: the same seed always gives the same bytes (sfc32).
export function rng(seed: number): () => number {
  let a = 0x9e3779b9 ^ seed, b = 0x243f6a88 ^ Math.imul(seed, 31), c = 0xb7e15162, d = 1;
  const next = () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 12; i++) next();
  return next;
}

export function randomBytes(seed: number, size: number): Buffer {
  const r = rng(seed);
  const out = Buffer.allocUnsafe(size);
  let i = 0;
  for (; i + 4 <= size; i += 4) out.writeUInt32LE(Math.floor(r() * 4294967296), i);
  for (; i < size; i++) out[i] = Math.floor(r() * 256);
  return out;
}

/** Compressible text-like bytes. */
export function textBytes(seed: number, size: number): Buffer {
  const r = rng(seed);
  const words = ['backup', 'restore', 'chunk', 'pack', 'index', 'snapshot', 'coffer', 'tree', 'blob', 'data', 'the', 'of', 'and'];
  const parts: string[] = [];
  let n = 0;
  while (n < size) {
    const w = words[Math.floor(r() * words.length)]! + (r() < 0.1 ? '\n' : ' ');
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join('').slice(0, size));
}
