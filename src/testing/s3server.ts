// A real S3-compatible server for tests: the s3rver package on loopback, in a temporary
// directory, in a child process of its own.
//
// A child process because s3rver encrypts its ListObjectsV2 continuation tokens with DES, which
// the OpenSSL 3 in Node 24 only offers with --openssl-legacy-provider (without it, every
// truncated listing fails with 500 InternalError); it also keeps the server's file I/O off the
// test process's event loop, and stop() is a real "the server went away".
//
// s3rver deviates from S3 in ways that would make correct clients fail; the child fixes these in
// s3rver's file store (never in S3Backend):
// - listObjects walks its directories in file name order, which is not key order ("a/x" comes
//   before "a-b"), yet continues each page after the last key returned: keys that sort between
//   are skipped. Fixed: keys are sorted by UTF-8 bytes, as S3 sorts them.
// - putObject, putPart and putMetadata write in place, and the first two answer before the file
//   is flushed, so readers see half-written objects or fail on half-written metadata with 500
//   InternalError (S3 puts are atomic, and read-after-write consistent). Fixed: write to a
//   temporary file, wait for it, rename.
// - deleteObject removes emptied directories with an unguarded readdir/rmdir, so concurrent
//   deletes in one directory fail with 500 InternalError. Fixed: directories are left alone.
// - getObject stats the file, then opens it by path: a read racing an overwrite gets the old
//   size with the new bytes. "Range: bytes=0-0" returns the whole object (`end || Infinity`),
//   and a range on an empty object a broken 206 (S3: 416). Fixed: getObject reads one open
//   file and computes ranges as S3 does.
// Not fixed: AbortMultipartUpload (DELETE ?uploadId) answers 405 MethodNotAllowed; S3Backend
// treats a failed abort as best effort, as it must for real S3 too. s3rver checks the access
// key id but not the signature, so a wrong secret is accepted.

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rename, rm, unlink } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';

export interface S3Server {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Stops the server and removes its directory. */
  stop(): Promise<void>;
}

const SERVE_FLAG = '--coffer-s3rver-child';
/** s3rver's fixed credentials. */
const ACCESS_KEY = 'S3RVER';

export async function startS3Server(options: { bucket?: string } = {}): Promise<S3Server> {
  const directory = await mkdtemp(join(tmpdir(), 'coffer-s3rver-'));
  const bucket = options.bucket ?? 'coffer-test';
  const child = spawn(process.execPath, ['--openssl-legacy-provider', fileURLToPath(import.meta.url), SERVE_FLAG, directory, bucket], {
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m) => resolve((m as { port: number }).port));
      child.once('error', reject);
      child.once('exit', (code, signal) => reject(new Error(`Cannot start s3rver: the child process exited (${code ?? signal})`)));
    });
  } catch (e) {
    child.kill('SIGKILL');
    await rm(directory, { recursive: true, force: true });
    throw e;
  }
  // A test that forgets stop() must not keep the test process alive; the child exits when the
  // IPC channel closes.
  child.unref();
  child.channel?.unref();
  let stopped: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    accessKeyId: ACCESS_KEY,
    secretAccessKey: ACCESS_KEY,
    stop: () => (stopped ??= stopChild(child, directory)),
  };
}

async function stopChild(child: ChildProcess, directory: string): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    child.ref();
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    await exited;
  }
  await rm(directory, { recursive: true, force: true });
}

// --- the child process -----------------------------------------------------------------------

const OBJECT_SUFFIX = '._S3rver_object';

interface StoredObject {
  content: Readable | null | undefined;
  range?: { start: number; end: number };
  metadata: Record<string, string>;
}

// s3rver ships no types.
function patchStore(store: any, S3Object: any): void {
  store.listObjects = async function listObjects(this: any, bucket: string, options: any) {
    const { delimiter = '', startAfter = '', prefix = '', maxKeys = Infinity } = options;
    const bucketPath: string = this.getBucketPath(bucket);
    const keys: string[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      for (const entry of entries) {
        const keyPart = rel + entry.name;
        if (entry.isDirectory()) {
          if (entry.name.startsWith('._S3rver_')) continue;
          const sub = `${keyPart}/`;
          if (sub.startsWith(prefix) || prefix.startsWith(sub)) await walk(join(dir, entry.name), sub);
        } else if (entry.name.endsWith(OBJECT_SUFFIX)) {
          const key = keyPart.slice(0, -OBJECT_SUFFIX.length);
          if (key.startsWith(prefix) && utf8Compare(key, startAfter) > 0) keys.push(key);
        }
      }
    };
    await walk(bucketPath, '');
    keys.sort(utf8Compare);
    const page: string[] = [];
    const commonPrefixes = new Set<string>();
    let isTruncated = false;
    for (const key of keys) {
      const idx = delimiter ? key.slice(prefix.length).indexOf(delimiter) : -1;
      if (idx !== -1) {
        commonPrefixes.add(key.slice(0, prefix.length + idx + 1));
        continue;
      }
      if (page.length >= maxKeys) {
        isTruncated = true;
        break;
      }
      page.push(key);
    }
    const metadata = await Promise.all(
      page.map((key) =>
        this.getMetadata(bucket, key).catch((e: NodeJS.ErrnoException) => {
          if (e.code === 'ENOENT') return undefined;
          throw e;
        }),
      ),
    );
    return {
      objects: page.flatMap((key, i) => (metadata[i] === undefined ? [] : [new S3Object(bucket, key, null, metadata[i])])),
      commonPrefixes: [...commonPrefixes].sort(),
      isTruncated,
    };
  };

  store.putObject = async function putObject(this: any, object: any) {
    const objectPath: string = this.getResourcePath(object.bucket, object.key, 'object');
    await mkdir(dirname(objectPath), { recursive: true });
    const { size, md5, temp } = await writeCounted(Buffer.isBuffer(object.content) ? Readable.from([object.content]) : object.content, objectPath);
    await this.putMetadata(object.bucket, object.key, object.metadata, md5);
    await rename(temp, objectPath);
    return { size, md5 };
  };

  store.putMetadata = async function putMetadata(this: any, bucket: string, key: string, metadata: Record<string, string>, md5?: string) {
    const kept = Object.fromEntries(Object.entries(metadata).filter(([name]) => S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-')));
    if (md5) await writeFileAtomic(this.getResourcePath(bucket, key, 'object.md5'), md5);
    await writeFileAtomic(this.getResourcePath(bucket, key, 'metadata.json'), JSON.stringify(kept, null, 2));
  };

  store.putPart = async function putPart(this: any, bucket: string, uploadId: string, partNumber: number, content: Readable) {
    const partPath = join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId, String(partNumber));
    await mkdir(dirname(partPath), { recursive: true });
    const { size, md5, temp } = await writeCounted(content, partPath);
    await rename(temp, partPath);
    await writeFileAtomic(`${partPath}.md5`, md5);
    return { size, md5 };
  };

  store.deleteObject = async function deleteObject(this: any, bucket: string, key: string) {
    // Empty directories stay: removing them raced with other deletes and puts in the same one.
    await Promise.all(
      ['object', 'object.md5', 'metadata.json'].map((resource) =>
        unlink(this.getResourcePath(bucket, key, resource)).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT') throw e;
        }),
      ),
    );
  };

  store.getObject = async function getObject(this: any, bucket: string, key: string, options: any) {
    let handle;
    try {
      handle = await open(this.getResourcePath(bucket, key, 'object'), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
    try {
      // Size and bytes from the one open file, so an overwrite meanwhile cannot mix versions.
      const size = (await handle.stat()).size;
      const metadata = { ...(await this.getMetadata(bucket, key)), 'content-length': String(size) };
      const object = new S3Object(bucket, key, null, metadata) as StoredObject;
      const ranged = options !== undefined && (options.start !== undefined || options.end !== undefined);
      if (!ranged) {
        object.content = handle.createReadStream();
        return object;
      }
      const start: number = options.start ?? 0;
      const end = Math.min(options.end ?? Infinity, size - 1);
      object.range = { start, end };
      if (size === 0 || start > end) {
        // No content: s3rver answers 416 InvalidRange.
        await handle.close();
        return object;
      }
      object.content = handle.createReadStream({ start, end });
      return object;
    } catch (e) {
      await handle.close();
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  };
}

async function writeCounted(content: Readable, path: string): Promise<{ size: number; md5: string; temp: string }> {
  const temp = `${path}.${randomBytes(8).toString('hex')}.tmp`;
  const hash = createHash('md5');
  let size = 0;
  try {
    await pipeline(
      content,
      new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          hash.update(chunk);
          size += chunk.length;
          callback(null, chunk);
        },
      }),
      createWriteStream(temp),
    );
  } catch (e) {
    await unlink(temp).catch(() => {});
    throw e;
  }
  return { size, md5: hash.digest('hex'), temp };
}

async function writeFileAtomic(path: string, text: string): Promise<void> {
  const { temp } = await writeCounted(Readable.from([Buffer.from(text)]), path);
  await rename(temp, path);
}

function utf8Compare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

async function serve(directory: string, bucket: string): Promise<void> {
  const require = createRequire(import.meta.url);
  const S3rver = require('s3rver');
  const FilesystemStore = require('s3rver/lib/stores/filesystem.js');
  const S3Object = require('s3rver/lib/models/object.js');
  patchStore(FilesystemStore.prototype, S3Object);
  const server = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory, configureBuckets: [{ name: bucket }] });
  const { port } = (await server.run()) as { port: number };
  // The child removes its own directory too, in case the parent died without calling stop().
  const stop = (): void => {
    server
      .close()
      .finally(() => rm(directory, { recursive: true, force: true }))
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop);
  process.send!({ port });
}

if (import.meta.main && process.argv[2] === SERVE_FLAG) {
  await serve(process.argv[3]!, process.argv[4]!);
}
