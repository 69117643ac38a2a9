// Byte helpers shared by backup and restore.

const ZERO = Buffer.alloc(64 * 1024);

/** Whether every byte of `b` is zero (compared 64 KiB at a time with memcmp). */
export function isAllZero(b: Uint8Array): boolean {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < buf.length; i += ZERO.length) {
    const n = Math.min(ZERO.length, buf.length - i);
    if (!buf.subarray(i, i + n).equals(n === ZERO.length ? ZERO : ZERO.subarray(0, n))) return false;
  }
  return true;
}
