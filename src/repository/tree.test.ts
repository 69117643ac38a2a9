// encodeTreeParts() writes the bytes encodeTree() writes, from nodes encoded one by one.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { compareNames, decodeTree, encodeTree, encodeTreeParts, type TreeNode } from './tree.ts';

const node = fc.record({
  name: fc.string({ minLength: 1, maxLength: 12 }).filter((n) => n !== '.' && n !== '..' && !n.includes('/') && !n.includes('\0')),
  size: fc.nat(1 << 20),
  mtime: fc.bigInt(0n, 1n << 62n),
  user: fc.option(fc.constantFrom('root', 'ånsgar', '用户'), { nil: undefined }),
});

describe('encodeTreeParts', () => {
  it('gives encodeTree()\'s bytes for nodes in name order, in a plain or a shared buffer', () => {
    fc.assert(fc.property(fc.uniqueArray(node, { selector: (n) => n.name, maxLength: 40 }), fc.boolean(), (raw, shared) => {
      const nodes: TreeNode[] = raw.map((r) => ({
        name: r.name, type: 'file', mode: 0o644, uid: 0, gid: 0, ...(r.user ? { user: r.user } : {}), mtimeNs: r.mtime.toString(), size: r.size, content: [],
      }));
      const sorted = [...nodes].sort(compareNames);
      const parts = encodeTreeParts(sorted.map((n) => JSON.stringify(n)), shared);
      assert.deepEqual(parts, encodeTree({ nodes }));
      assert.equal(parts.buffer instanceof SharedArrayBuffer, shared);
      assert.deepEqual(decodeTree(parts).nodes, sorted);
    }));
  });

  it('writes an empty tree', () => {
    assert.equal(encodeTreeParts([]).toString(), '{"nodes":[]}');
  });
});
