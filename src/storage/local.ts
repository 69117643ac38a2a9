// A Backend on a local (or mounted) directory. Object names map to files below the root, '/'
// segments to directories. Writes go to a temporary file in the target directory that is fsynced
// and renamed over the target, so a reader or a crash never sees half an object.

import { randomBytes } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { lstat, mkdir, open, opendir, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { CofferError, throwIfAborted } from '../core/errors.ts';
import { resolveRange, validateName, validatePrefix } from './backend.ts';
import type { Backend, CallOptions, GetOptions, ListOptions, ObjectInfo } from './backend.ts';

/** Temporary files: `.tmp-` and 24 hex digits. Never listed; object names of this form are refused. */
const TEMP_FILE = /^\.tmp-[0-9a-f]{24}$/;
/** Large objects are read and written in pieces so that an abort takes effect in between. */
const IO_CHUNK = 8 * 1024 * 1024;
/** How many files list() stats at once. */
const STAT_BATCH = 64;
// Key files and the config let anyone who copies them guess the passphrase offline, so the
// repository is private to its owner whatever the umask, as restic's is: files 0600, directories
// 0700 (the mode applies only to what this backend creates; an existing directory keeps its own).
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

const TRANSIENT_CODES = new Set(['EIO', 'EAGAIN', 'EMFILE', 'ENFILE', 'EBUSY', 'EINTR', 'ETIMEDOUT', 'ESTALE']);
const DENIED_CODES = new Set(['EACCES', 'EPERM']);
/** Codes meaning "there is no object of that name" when reading. */
const MISSING_CODES = new Set(['ENOENT', 'ENOTDIR', 'EISDIR']);

type Access = 'read' | 'write';

/**
 * Turns a Node fs error into a CofferError. With access 'read', a missing file or directory means
 * there is no such object (NOT_FOUND); when writing or listing it is an error. Exported for tests:
 * some codes (EACCES as root, ENOSPC, EIO) cannot be provoked on a test machine.
 */
export function fsError(e: unknown, action: string, where: string, access: Access): CofferError {
  if (e instanceof CofferError) return e;
  const code = (e as NodeJS.ErrnoException | undefined)?.code ?? '';
  const message = e instanceof Error ? e.message : String(e);
  const text = `Cannot ${action} ${where}: ${message}`;
  if (access === 'read' && MISSING_CODES.has(code)) return new CofferError('NOT_FOUND', text, { cause: e });
  if (DENIED_CODES.has(code)) {
    return new CofferError('STORAGE_DENIED', text, {
      cause: e,
      hint: 'Check that the user running Coffer may read and write the repository directory.',
    });
  }
  if (TRANSIENT_CODES.has(code)) {
    return new CofferError('STORAGE_UNAVAILABLE', text, {
      cause: e,
      hint: 'This may be temporary (I/O error, too many open files); try again.',
    });
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new CofferError('STORAGE_ERROR', text, { cause: e, hint: 'Free some space on the repository disk, or raise the quota.' });
  }
  if (code === 'EROFS') {
    return new CofferError('STORAGE_ERROR', text, { cause: e, hint: 'The repository is on a read-only file system; remount it read-write.' });
  }
  return new CofferError('STORAGE_ERROR', text, { cause: e });
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Makes a directory's entries (a new file name, a new subdirectory) durable. */
async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class LocalBackend implements Backend {
  readonly location: string;
  readonly #root: string;

  constructor(rootDir: string) {
    this.#root = resolve(rootDir);
    this.location = this.#root;
  }

  async put(name: string, data: Uint8Array, options?: CallOptions): Promise<void> {
    const signal = options?.signal;
    throwIfAborted(signal);
    const target = this.#path(name);
    const dir = dirname(target);
    const temp = join(dir, `.tmp-${randomBytes(12).toString('hex')}`);
    let fh: FileHandle | undefined;
    let renamed = false;
    try {
      fh = await this.#createTemp(temp, dir);
      for (let done = 0; done < data.length; ) {
        throwIfAborted(signal);
        const { bytesWritten } = await fh.write(data, done, Math.min(IO_CHUNK, data.length - done), done);
        done += bytesWritten;
      }
      await fh.sync();
      await fh.close();
      fh = undefined;
      throwIfAborted(signal);
      await rename(temp, target);
      renamed = true;
      await fsyncDir(dir);
    } catch (e) {
      await fh?.close().catch(() => {});
      if (!renamed) await unlink(temp).catch(() => {});
      throw fsError(e, 'write', this.#where(name), 'write');
    }
  }

  async get(name: string, options?: GetOptions): Promise<Buffer> {
    const signal = options?.signal;
    throwIfAborted(signal);
    const path = this.#path(name);
    let fh: FileHandle | undefined;
    try {
      fh = await open(path, 'r');
      const info = await fh.stat();
      if (!info.isFile()) throw missing(this.#where(name));
      const [start, end] = resolveRange(name, info.size, options);
      const into = options?.into;
      const out = into && into.byteLength >= end - start ? Buffer.from(into.buffer, into.byteOffset, end - start) : Buffer.allocUnsafe(end - start);
      for (let done = 0; done < out.length; ) {
        throwIfAborted(signal);
        const { bytesRead } = await fh.read(out, done, Math.min(IO_CHUNK, out.length - done), start + done);
        if (bytesRead === 0) {
          // Objects are only ever replaced by rename, so an open file never shrinks unless
          // something outside Coffer truncated it.
          throw new CofferError('STORAGE_ERROR', `Cannot read ${this.#where(name)}: the file ended after ${start + done} of ${info.size} bytes`, {
            hint: 'Something other than Coffer is changing files in the repository; stop it and run `coffer repo check`.',
          });
        }
        done += bytesRead;
      }
      return out;
    } catch (e) {
      throw fsError(e, 'read', this.#where(name), 'read');
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  async stat(name: string, options?: CallOptions): Promise<ObjectInfo> {
    throwIfAborted(options?.signal);
    const path = this.#path(name);
    try {
      const info = await stat(path);
      if (!info.isFile()) throw missing(this.#where(name));
      return { name, size: info.size, modified: info.mtimeMs };
    } catch (e) {
      throw fsError(e, 'stat', this.#where(name), 'read');
    }
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    const signal = options?.signal;
    throwIfAborted(signal);
    validatePrefix(prefix);
    // Only the directory holding the prefix's last segment can contain matches: "data/ab" walks
    // data/ and keeps names starting with "data/ab".
    const slash = prefix.lastIndexOf('/');
    const stack: string[] = [slash < 0 ? '' : prefix.slice(0, slash)];
    while (stack.length > 0) {
      const rel = stack.pop()!;
      const abs = rel === '' ? this.#root : join(this.#root, ...rel.split('/'));
      let files: string[] = [];
      try {
        // One directory at a time, streamed, so memory stays small for huge directories.
        for await (const entry of await opendir(abs, { bufferSize: 256 })) {
          throwIfAborted(signal);
          const name = rel === '' ? entry.name : `${rel}/${entry.name}`;
          let isDir = entry.isDirectory();
          let isFile = entry.isFile();
          if (!isDir && !isFile && !entry.isSymbolicLink() && !entry.isFIFO() && !entry.isSocket()) {
            // Some file systems do not report entry types; ask.
            const info = await lstat(join(abs, entry.name)).catch(() => undefined);
            isDir = info?.isDirectory() ?? false;
            isFile = info?.isFile() ?? false;
          }
          if (isDir) {
            const sub = `${name}/`;
            if (sub.startsWith(prefix) || prefix.startsWith(sub)) stack.push(name);
          } else if (isFile && !TEMP_FILE.test(entry.name) && name.startsWith(prefix) && isValidName(name)) {
            files.push(name);
            if (files.length >= STAT_BATCH) {
              yield* this.#sizes(files, signal);
              files = [];
            }
          }
        }
      } catch (e) {
        // The start directory may not exist yet (nothing stored under the prefix); a
        // subdirectory may have been removed by someone else since it was seen.
        if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR') continue;
        throw fsError(e, 'list', `${rel || '.'} in ${this.#root}`, 'write');
      }
      yield* this.#sizes(files, signal);
    }
  }

  async delete(name: string, options?: CallOptions): Promise<void> {
    throwIfAborted(options?.signal);
    const path = this.#path(name);
    try {
      // No directory fsync: a delete lost in a crash leaves an unreferenced object, which prune
      // removes again.
      await unlink(path);
    } catch (e) {
      if (MISSING_CODES.has(errCode(e) ?? '')) return;
      throw fsError(e, 'delete', this.#where(name), 'write');
    }
  }

  async close(): Promise<void> {}

  async *#sizes(names: string[], signal: AbortSignal | undefined): AsyncIterable<ObjectInfo> {
    const infos = await Promise.all(
      names.map(async (name) => {
        try {
          const info = await lstat(join(this.#root, ...name.split('/')));
          return info.isFile() ? { name, size: info.size, modified: info.mtimeMs } : undefined;
        } catch (e) {
          // Deleted between reading the directory and now: no longer listed.
          if (errCode(e) === 'ENOENT') return undefined;
          throw fsError(e, 'list', this.#where(name), 'write');
        }
      }),
    );
    for (const info of infos) {
      throwIfAborted(signal);
      if (info !== undefined) yield info;
    }
  }

  async #createTemp(temp: string, dir: string): Promise<FileHandle> {
    try {
      return await open(temp, 'wx', FILE_MODE);
    } catch (e) {
      if (errCode(e) !== 'ENOENT') throw e;
    }
    await this.#ensureDir(dir);
    return await open(temp, 'wx', FILE_MODE);
  }

  /** Creates `dir` and missing parents, fsyncing each new directory's parent. */
  async #ensureDir(dir: string): Promise<void> {
    if (dir === this.#root) {
      try {
        await mkdir(dir, DIR_MODE);
      } catch (e) {
        if (errCode(e) === 'EEXIST') return;
        if (errCode(e) !== 'ENOENT') throw e;
        await mkdir(dir, { recursive: true, mode: DIR_MODE });
      }
      await fsyncDir(dirname(dir));
      return;
    }
    try {
      await mkdir(dir, DIR_MODE);
    } catch (e) {
      if (errCode(e) === 'EEXIST') return;
      if (errCode(e) !== 'ENOENT') throw e;
      await this.#ensureDir(dirname(dir));
      try {
        await mkdir(dir, DIR_MODE);
      } catch (e2) {
        // Another writer created it meanwhile.
        if (errCode(e2) !== 'EEXIST') throw e2;
        return;
      }
    }
    await fsyncDir(dirname(dir));
  }

  #path(name: string): string {
    validateName(name);
    const segments = name.split('/');
    if (TEMP_FILE.test(segments[segments.length - 1]!)) {
      throw new CofferError('STORAGE_ERROR', `Cannot use object name ${JSON.stringify(name)}: names like .tmp-<24 hex digits> are reserved for temporary files`, {
        hint: 'Choose another name; the local backend uses these for atomic writes.',
      });
    }
    const path = join(this.#root, ...segments);
    // validateName already rules out '..'; this guards against any future change there.
    if (!path.startsWith(this.#root.endsWith(sep) ? this.#root : this.#root + sep)) {
      throw new CofferError('STORAGE_ERROR', `Cannot use object name ${JSON.stringify(name)}: it points outside ${this.#root}`);
    }
    return path;
  }

  #where(name: string): string {
    return `${name} in ${this.#root}`;
  }
}

function missing(where: string): CofferError {
  return new CofferError('NOT_FOUND', `Cannot read ${where}: no such object`);
}

function isValidName(name: string): boolean {
  try {
    validateName(name);
    return true;
  } catch {
    return false;
  }
}
