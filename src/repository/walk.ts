// Walking snapshot trees: used by check, prune and find. Subtrees shared between snapshots are
// visited once per walk (a `seen` set), so walking every snapshot costs about one tree load per
// distinct tree.

import type { CallOptions } from '../storage/backend.ts';
import { throwIfAborted } from '../core/errors.ts';
import { fromHex } from '../engine/hash.ts';
import { decodeTree, type Tree, type TreeNode } from './tree.ts';
import type { Repository } from './repository.ts';

export async function loadTree(repo: Repository, id: string, options?: CallOptions): Promise<Tree> {
  return decodeTree(await repo.readBlob('tree', fromHex(id), options));
}

export interface WalkVisitor {
  /** Called for every node; `path` is the node's path inside the snapshot ("/a/b"). */
  node?(path: string, node: TreeNode): void | Promise<void>;
  /** Called when a tree cannot be loaded; the walk goes on without it. Rethrow to stop. */
  treeError?(path: string, treeId: string, error: unknown): void | Promise<void>;
  /** Called for each tree id; return false to skip it (already visited elsewhere). */
  enterTree?(treeId: string): boolean;
}

export async function walkTree(repo: Repository, rootTree: string, visitor: WalkVisitor, options?: CallOptions): Promise<void> {
  const stack: Array<{ id: string; path: string }> = [{ id: rootTree, path: '' }];
  while (stack.length) {
    throwIfAborted(options?.signal);
    const { id, path } = stack.pop()!;
    if (visitor.enterTree && !visitor.enterTree(id)) continue;
    let tree: Tree;
    try {
      tree = await loadTree(repo, id, options);
    } catch (e) {
      if (!visitor.treeError) throw e;
      await visitor.treeError(path || '/', id, e);
      continue;
    }
    for (const n of tree.nodes) {
      const p = `${path}/${n.name}`;
      await visitor.node?.(p, n);
      if (n.type === 'dir' && n.subtree) stack.push({ id: n.subtree, path: p });
    }
  }
}
