// Storage nodes (media servers) as the server sees them: which are connected, where agents reach
// their data service, how busy they are, and which one gets a job for a storage unit. A unit's
// `nodes` (StorageUnit spec) names the nodes that serve it; `server` is the server's own embedded
// node, which serves every unit that names none. Among the connected ones the least loaded gets
// the job, as NetBackup 6.5 balances media servers: by the load each reports with every pong
// (CPU, memory, I/O wait, running jobs, bytes in flight) plus the jobs this server gave it since.

import { CofferError } from '../core/errors.ts';
import type { StorageUnit } from '../catalog/storage-units.ts';
import type { NodeLoad } from '../agent/protocol.ts';
import type { AgentLink } from './agent-link.ts';

/** The name a unit's `nodes` gives the server's embedded node. */
export const EMBEDDED_NODE = 'server';

export interface NodeEntry {
  name: string;
  link: AgentLink;
  /** host:port of its data service, where agents send backups (none: it serves no remote agent). */
  dataAddress: string | undefined;
  embedded: boolean;
  /** Jobs given to it by this server that have not ended. */
  assigned: number;
  since: number;
}

/** What a node's load costs in the choice: a running job weighs 1, a fully busy CPU 2. */
export function loadScore(load: NodeLoad | undefined, assigned: number): number {
  const l = load ?? { cpu: 0, memory: 0, ioWait: 0, jobs: 0, bytesInFlight: 0 };
  return l.jobs + assigned + 2 * Math.min(l.cpu, 4) + l.memory + 2 * l.ioWait + l.bytesInFlight / (64 << 20);
}

export class NodeRegistry {
  private readonly nodes = new Map<string, NodeEntry>();

  /** A node's connection; replaces an older one of the same name. */
  set(name: string, link: AgentLink, info: { dataAddress?: string; embedded?: boolean } = {}): void {
    const entry: NodeEntry = { name, link, dataAddress: info.dataAddress, embedded: info.embedded === true, assigned: 0, since: Date.now() };
    this.nodes.set(name, entry);
    void link.closed.then(() => {
      if (this.nodes.get(name) === entry) this.nodes.delete(name);
    });
  }

  get(name: string): NodeEntry | undefined {
    const e = this.nodes.get(name);
    return e && e.link.isOpen ? e : undefined;
  }

  list(): NodeEntry[] {
    return [...this.nodes.values()].filter((e) => e.link.isOpen);
  }

  /** The names of the nodes that serve a unit (its spec's `nodes`, the embedded node when none). */
  static servers(unit: StorageUnit): string[] {
    const named = (unit.spec as { nodes?: string[] }).nodes;
    return named?.length ? named : [EMBEDDED_NODE];
  }

  /**
   * The least loaded connected node serving every unit given, not in `exclude` (nodes that failed
   * this job already); `needData`: only nodes with a data service (a remote agent's job).
   * STORAGE_UNAVAILABLE when none is connected: the job is retried.
   */
  choose(units: readonly StorageUnit[], options: { exclude?: ReadonlySet<string>; needData?: boolean } = {}): NodeEntry {
    const named = units.map((u) => new Set(NodeRegistry.servers(u)));
    const candidates = this.list().filter((e) => {
      const id = e.embedded ? EMBEDDED_NODE : e.name;
      return named.every((s) => s.has(id)) && !options.exclude?.has(e.name) && (!options.needData || e.dataAddress !== undefined);
    });
    if (!candidates.length) {
      const names = [...new Set(named.flatMap((s) => [...s]))];
      const what = units.map((u) => u.name).join(', ');
      throw new CofferError('STORAGE_UNAVAILABLE', `No storage node serving ${units.length === 1 ? 'unit' : 'units'} ${what} is connected${options.exclude?.size ? ` (left out after failing this job: ${[...options.exclude].join(', ')})` : ''}: ${names.join(', ')}`, {
        hint: 'Check that the nodes run (`coffer nodes` lists the connected ones); the job is retried.',
      });
    }
    let best = candidates[0]!;
    let bestScore = Infinity;
    for (const e of candidates) {
      const score = loadScore(e.link.load, e.assigned);
      if (score < bestScore || (score === bestScore && e.assigned < best.assigned)) {
        best = e;
        bestScore = score;
      }
    }
    return best;
  }

  /** Counts a job against a node until `done` settles. */
  static track<T>(node: NodeEntry, done: Promise<T>): Promise<T> {
    node.assigned++;
    return done.finally(() => {
      node.assigned--;
    });
  }
}
