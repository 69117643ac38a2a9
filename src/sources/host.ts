// The identity of the host this process runs on: name, platform, OS release and machine id. It
// is read here, at the edge, by whoever starts a job for this host (the CLI, an agent), and passed
// in: a job never assumes it runs on the host whose data it handles.

import { readFileSync } from 'node:fs';
import { arch, hostname, platform } from 'node:os';
import type { HostIdentity } from '../repository/snapshot.ts';

export function localHostIdentity(): HostIdentity {
  let machineId: string | undefined;
  let osRelease: string | undefined;
  try {
    machineId = readFileSync('/etc/machine-id', 'utf8').trim() || undefined;
  } catch {
    /* not every system has one */
  }
  try {
    osRelease = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
  } catch {
    /* optional */
  }
  return { hostname: hostname(), os: platform(), osRelease, arch: arch(), machineId };
}
