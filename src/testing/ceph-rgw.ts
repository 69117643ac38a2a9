// A real Ceph RADOS Gateway for tests (S3 with Object Lock, which s3rver lacks): a throwaway
// single-node cluster from Debian's ceph and radosgw packages, every byte of state in one
// temporary directory, every daemon bound to 127.0.0.1 on free ports, without cephx, systemd or
// a manager daemon. One monitor, one OSD on memstore (RAM; bluestore on a sparse file if this
// ceph-osd cannot make a memstore), one radosgw, and one S3 user.
//
// The daemons run in the foreground (-f) as children of this process: stop() signals exactly
// them (gateway, then OSD, then monitor), waits for them, and removes the directory; a test
// process that ends without stop() kills them on exit. Missing binaries are an error that says
// what to install, never a skip.
//
// What a client must know about this gateway (Ceph 16): the AWS SDK's default CRC trailers on
// streamed bodies are refused (S3Backend sends Buffers and asks for checksums only when
// required); a bucket holding COMPLIANCE-locked versions cannot be emptied before they expire,
// so tests lock for seconds and throw the whole cluster away.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { S3Client } from '@aws-sdk/client-s3';
import { freePort } from './ports.ts';

const run = promisify(execFile);

export interface CephRgw {
  /** http://127.0.0.1:PORT, for path-style requests. */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The cluster's directory (ceph.conf, logs, daemon state). */
  dir: string;
  /** How long the start took, in ms. */
  startMs: number;
  /** An AWS SDK client for it (path style; checksums only when required, which RGW 16 needs). The caller destroys it. */
  client(): S3Client;
  /** Stops the daemons and removes the directory. */
  stop(): Promise<void>;
}

export interface CephRgwOptions {
  /** Give up starting after this long (default 120 s). */
  timeoutMs?: number;
  /** What the memstore OSD reports as its size (default 2 GiB; RAM is used only for what is stored). */
  memstoreBytes?: number;
}

const BINARIES = ['ceph', 'ceph-mon', 'ceph-osd', 'monmaptool', 'radosgw', 'radosgw-admin'];
const ACCESS_KEY = 'COFFERTESTACCESSKEY1';
const SECRET_KEY = 'cofferTestSecretKey00000000000000000000001';

/** Starts a cluster; fails (with the daemons' log tails) if it is not serving S3 in time. */
export async function startCephRgw(options: CephRgwOptions = {}): Promise<CephRgw> {
  checkBinaries();
  const started = Date.now();
  const deadline = started + (options.timeoutMs ?? 120_000);
  const dir = await mkdtemp(join(tmpdir(), 'coffer-ceph-'));
  const conf = join(dir, 'ceph.conf');
  const children: Array<{ name: string; child: ChildProcess }> = [];
  const killAll = () => {
    for (const { child } of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  const onExit = () => {
    killAll();
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  const daemon = (name: string, file: string, args: string[]) => {
    const child = spawn(file, ['-f', '-c', conf, ...args], { stdio: 'ignore' });
    child.on('error', () => {});
    children.push({ name, child });
    return child;
  };
  const ceph = async (...args: string[]) => (await run('ceph', ['-c', conf, '--connect-timeout', '10', ...args], { timeout: 30_000 })).stdout;
  const waitFor = async (what: string, child: ChildProcess, check: () => Promise<boolean>) => {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${what}: the daemon exited (${child.exitCode ?? child.signalCode})`);
      if (await check().catch(() => false)) return;
      if (Date.now() > deadline) throw new Error(`${what}: not ready after ${Math.round((Date.now() - started) / 1000)} s`);
      await new Promise((r) => setTimeout(r, 250));
    }
  };

  try {
    const monPort = await freePort();
    const rgwPort = await freePort();
    const fsid = randomUUID();
    for (const sub of ['run', 'log', 'mon', 'osd/0', 'rgw']) await mkdir(join(dir, sub), { recursive: true });
    let store = 'memstore';
    await writeFile(conf, cephConf({ dir, fsid, monPort, rgwPort, store, memstoreBytes: options.memstoreBytes ?? 2 ** 31 }));

    // Monitor.
    await run('monmaptool', ['--create', '--clobber', '--enable-all-features', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, join(dir, 'monmap')], { timeout: 30_000 });
    await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')], { timeout: 60_000 });
    const mon = daemon('mon.a', 'ceph-mon', ['-i', 'a']);
    await waitFor('ceph-mon', mon, async () => (await ceph('mon', 'stat'), true));

    // One OSD: memstore if this build can make one, else bluestore on a sparse file.
    const osdUuid = randomUUID();
    try {
      await run('ceph-osd', ['-c', conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid], { timeout: 60_000 });
    } catch {
      store = 'bluestore';
      await writeFile(conf, cephConf({ dir, fsid, monPort, rgwPort, store, memstoreBytes: options.memstoreBytes ?? 2 ** 31 }));
      await rm(join(dir, 'osd/0'), { recursive: true, force: true });
      await mkdir(join(dir, 'osd/0'));
      await run('ceph-osd', ['-c', conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid], { timeout: 60_000 });
    }
    await ceph('osd', 'new', osdUuid, '0');
    const osd = daemon('osd.0', 'ceph-osd', ['-i', '0']);
    await waitFor(`ceph-osd (${store})`, osd, async () => (JSON.parse(await ceph('osd', 'stat', '-f', 'json')) as { num_up_osds?: number }).num_up_osds === 1);

    // The gateway and its S3 user.
    const endpoint = `http://127.0.0.1:${rgwPort}`;
    const rgw = daemon('client.rgw.0', 'radosgw', ['-n', 'client.rgw.0']);
    await waitFor('radosgw', rgw, async () => (await fetch(endpoint, { signal: AbortSignal.timeout(5000) })).status === 200);
    await run('radosgw-admin', ['-c', conf, 'user', 'create', '--uid=coffer', '--display-name=Coffer tests', `--access-key=${ACCESS_KEY}`, `--secret-key=${SECRET_KEY}`], { timeout: 60_000 });

    let stopped: Promise<void> | undefined;
    return {
      endpoint,
      region: 'us-east-1',
      accessKeyId: ACCESS_KEY,
      secretAccessKey: SECRET_KEY,
      dir,
      startMs: Date.now() - started,
      client: () => new S3Client({
        region: 'us-east-1', endpoint, forcePathStyle: true, credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY },
        requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
      }),
      stop: () => (stopped ??= (async () => {
        // The gateway first, the monitor last: each daemon's clients go before it does.
        for (const { child } of [...children].reverse()) await stopChild(child);
        process.off('exit', onExit);
        await rm(dir, { recursive: true, force: true });
      })()),
    };
  } catch (e) {
    const logs = await logTails(dir);
    killAll();
    process.off('exit', onExit);
    await rm(dir, { recursive: true, force: true });
    throw new Error(`Cannot start Ceph RGW for the tests: ${(e as Error).message}\n${logs}`, { cause: e });
  }
}

/** SIGTERM, then SIGKILL after 10 s; resolves when the process is gone. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

function checkBinaries(): void {
  const path = (process.env.PATH ?? '').split(delimiter);
  const missing = BINARIES.filter((b) => !path.some((d) => d && existsSync(join(d, b))));
  if (missing.length) {
    throw new Error(
      `Cannot start Ceph RGW for the tests: ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not installed. ` +
      'Install Debian\'s packages: apt-get install -y --no-install-recommends ceph radosgw (.ci/run does this).',
    );
  }
}

function cephConf(o: { dir: string; fsid: string; monPort: number; rgwPort: number; store: string; memstoreBytes: number }): string {
  return `# A throwaway test cluster made by Coffer's src/testing/ceph-rgw.ts.
[global]
fsid = ${o.fsid}
mon host = [v2:127.0.0.1:${o.monPort}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = ${o.dir}/run
crash dir = ${o.dir}/crash
log file = ${o.dir}/log/$name.log
mon cluster log file = ${o.dir}/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = ${o.dir}/mon/$id
paxos propose interval = 0.1
admin socket = ${o.dir}/run/$name.asok

[osd]
osd data = ${o.dir}/osd/$id
admin socket = ${o.dir}/run/$name.asok
osd objectstore = ${o.store}
osd crush initial weight = 1
memstore device bytes = ${o.memstoreBytes}
bluestore block create = true
bluestore block size = 10737418240
osd memory target = 1073741824

[client.rgw.0]
rgw data = ${o.dir}/rgw
admin socket = ${o.dir}/run/$name.asok
rgw frontends = beast endpoint=127.0.0.1:${o.rgwPort} tcp_nodelay=1
rgw thread pool size = 64
rgw init timeout = 120
rgw gc obj min wait = 60
rgw gc processor period = 60
ms mon client mode = crc
`;
}

async function logTails(dir: string): Promise<string> {
  const out: string[] = [];
  for (const name of ['mon.a', 'osd.0', 'client.rgw.0']) {
    const text = await readFile(join(dir, 'log', `${name}.log`), 'utf8').catch(() => '');
    if (text) out.push(`--- ${name}.log (tail)\n${text.trimEnd().split('\n').slice(-15).join('\n')}`);
  }
  return out.join('\n');
}

