// How busy this host is, sent with every pong (protocol.ts nodeLoad): the server gives jobs to
// the least loaded storage node that serves their unit. Linux's own counters, read cheaply: the
// load average, MemAvailable, and the share of CPU time spent waiting for I/O since the last call.

import { readFileSync } from 'node:fs';
import { availableParallelism, freemem, loadavg, totalmem } from 'node:os';
import type { NodeLoad } from './protocol.ts';

export class LoadMeter {
  private lastIo: { iowait: number; total: number } | undefined;

  /** The load now; `jobs` and `bytesInFlight` come from the caller (its runtime and data service). */
  measure(jobs: number, bytesInFlight: number): NodeLoad {
    return {
      cpu: Math.round((loadavg()[0]! / availableParallelism()) * 1000) / 1000,
      memory: Math.round(memoryUsed() * 1000) / 1000,
      ioWait: Math.round(this.ioWait() * 1000) / 1000,
      jobs,
      bytesInFlight: Math.max(0, Math.round(bytesInFlight)),
    };
  }

  /** The share of CPU time in iowait since the last call (0 the first time, or off Linux). */
  private ioWait(): number {
    let line: string | undefined;
    try {
      line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0];
    } catch {
      return 0;
    }
    const f = (line ?? '').trim().split(/\s+/).slice(1).map(Number);
    if (f.length < 5 || f.some((n) => !Number.isFinite(n))) return 0;
    const now = { iowait: f[4]!, total: f.reduce((a, b) => a + b, 0) };
    const last = this.lastIo;
    this.lastIo = now;
    if (!last || now.total <= last.total) return 0;
    return Math.min(1, Math.max(0, (now.iowait - last.iowait) / (now.total - last.total)));
  }
}

function memoryUsed(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'latin1'));
    if (m) return Math.min(1, Math.max(0, 1 - (Number(m[1]) * 1024) / totalmem()));
  } catch {
    /* not Linux: the portable figure below */
  }
  return Math.min(1, Math.max(0, 1 - freemem() / totalmem()));
}
