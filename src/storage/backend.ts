// The one storage interface every repository sits on: a dumb, flat store of immutable named
// objects. Retry, fault injection and the like are wrappers implementing this same interface.

import { CofferError } from '../core/errors.ts';

export interface ObjectInfo {
  /** The object's full name, as given to put(). */
  name: string;
  /** Size in bytes. */
  size: number;
  /**
   * When the object was last written, in ms since the epoch by the storage's own clock (a local
   * file's mtime, S3's LastModified, possibly rounded to the second). Coffer compares these only
   * with each other, never with a local clock: that is how sessions on hosts whose clocks
   * disagree still agree on which of them are stale (see repository/session.ts).
   */
  modified?: number;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface GetOptions extends CallOptions {
  /** First byte to return (default 0). */
  offset?: number;
  /** How many bytes to return (default: to the end of the object). */
  length?: number;
  /**
   * A buffer to read into, at least as long as the range: a backend that can returns a view of
   * it (the caller reuses its buffers instead of a fresh one per read); others ignore it, so
   * callers compare the result's memory with theirs.
   */
  into?: Uint8Array;
}

export interface ListOptions extends CallOptions {}

/**
 * A store of named, immutable byte objects.
 *
 * Names: non-empty strings of '/'-separated segments; no leading or trailing '/', no empty, '.'
 * or '..' segment, no NUL or backslash, at most 1024 bytes of UTF-8. Any other character
 * (spaces, '+', '%', unicode) is allowed and round-trips. `validateName()` enforces this and
 * every backend calls it.
 *
 * Guarantees every implementation MUST give (checked by the conformance suite):
 * - put() is atomic: a reader sees either no object or the whole object, never a part; after
 *   put() resolves the object is durable (local: fsynced file and directory) and visible to
 *   get(), stat() and list() (read-after-write). Once put() has settled the backend holds no
 *   reference to `data`: the caller may reuse or free it (BlobSaver frees each pack at once).
 * - put() over an existing name replaces it atomically. Coffer only ever rewrites a name with
 *   the same bytes (content-addressed objects) or for a small set of mutable objects (session
 *   heartbeats), so last-writer-wins is enough.
 * - get() returns exactly the requested range. A range that starts or ends past the end of the
 *   object fails with INVALID_RANGE; a missing object fails with NOT_FOUND.
 * - stat() gives the size and the time of the last write by the storage's clock (`modified`, as
 *   list() does); NOT_FOUND when missing. A later put() never gets an earlier `modified`.
 * - list(prefix) yields every object whose name starts with `prefix` (a plain string prefix, not
 *   a directory), each exactly once, in no particular order, across any number of pages. A
 *   listing that cannot be completed MUST throw, never end early: callers such as prune rely on
 *   a complete listing before they delete anything.
 * - delete() removes the object; deleting a missing object succeeds (idempotent).
 * - Errors are CofferErrors: NOT_FOUND, INVALID_RANGE, STORAGE_UNAVAILABLE (transient; safe to
 *   retry), STORAGE_DENIED and STORAGE_ERROR (permanent), CANCELLED when `signal` fires.
 * - Any number of concurrent calls, from this process or others, are allowed.
 */
export interface Backend {
  /** A human-readable location without secrets, e.g. `s3://bucket/prefix` or `/srv/repo`. */
  readonly location: string;
  /** Object Lock, on stores that lock objects (S3 with Object Lock); undefined elsewhere. */
  readonly locks?: ObjectLocks;
  put(name: string, data: Uint8Array, options?: CallOptions): Promise<void>;
  get(name: string, options?: GetOptions): Promise<Buffer>;
  stat(name: string, options?: CallOptions): Promise<ObjectInfo>;
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo>;
  delete(name: string, options?: CallOptions): Promise<void>;
  /** Releases connections and handles. The backend is unusable afterwards. */
  close(): Promise<void>;
}

/**
 * Write-once-read-many locks (S3 Object Lock in COMPLIANCE mode): a locked object cannot be
 * deleted or overwritten by anyone, administrators included, before its retain-until date, and
 * that date can be moved later but never earlier. A backend with locks deletes an object by
 * removing its versions (not by hiding it behind a delete marker), and fails such a delete with
 * REFUSED and `details.lockedUntil` (see lockedError) while a version is locked. Dates are ms
 * since the epoch by the storage's clock.
 */
export interface ObjectLocks {
  /** Fails with REFUSED, saying what to do, unless the store can lock objects (the bucket has Object Lock enabled). */
  check(options?: CallOptions): Promise<void>;
  /** When the object's lock ends; undefined when it is not locked. NOT_FOUND when missing. */
  lockedUntil(name: string, options?: CallOptions): Promise<number | undefined>;
  /** Locks the object until at least `until` (never earlier than it is); returns the date now in force. */
  extend(name: string, until: number, options?: CallOptions): Promise<number>;
}

/** The error of a delete (or overwrite) refused because the object is locked. */
export function lockedError(where: string, until: number | undefined, cause?: unknown): CofferError {
  const when = until === undefined ? 'its lock ends' : new Date(until).toISOString();
  return new CofferError('REFUSED', `Cannot delete ${where}: it is locked (Object Lock, compliance mode) until ${when}`, {
    cause,
    hint: 'Nobody can delete a locked object before its lock ends, administrators included; a later prune or expiry deletes it then.',
    details: { lockedUntil: until ?? null },
  });
}

/** The retain-until date of a refused delete of a locked object (ms; null when unknown); undefined for any other error. */
export function lockedUntilOf(e: unknown): number | null | undefined {
  if (!(e instanceof CofferError) || e.code !== 'REFUSED' || e.details === undefined || !('lockedUntil' in e.details)) return undefined;
  const until = e.details.lockedUntil;
  return typeof until === 'number' ? until : null;
}

const MAX_NAME_BYTES = 1024;

/** Throws STORAGE_ERROR if `name` is not a valid object name (see Backend). */
export function validateName(name: string): void {
  const bad = (why: string): never => {
    throw new CofferError('STORAGE_ERROR', `Cannot use object name ${JSON.stringify(name)}: ${why}`, {
      hint: 'Object names are relative, /-separated, without empty, "." or ".." segments.',
    });
  };
  if (typeof name !== 'string' || name.length === 0) bad('it is empty');
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) bad(`it is longer than ${MAX_NAME_BYTES} bytes`);
  if (name.includes('\0')) bad('it contains a NUL byte');
  if (name.includes('\\')) bad('it contains a backslash');
  for (const seg of name.split('/')) {
    if (seg === '' || seg === '.' || seg === '..') bad('it has an empty, "." or ".." segment');
  }
}

/** Validates a list prefix: '' or a name prefix (may end with '/'). */
export function validatePrefix(prefix: string): void {
  if (prefix === '') return;
  validateName(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
}

/** Collects a listing into an array (for small listings and tests). */
export async function listAll(backend: Backend, prefix: string, options?: ListOptions): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const info of backend.list(prefix, options)) out.push(info);
  return out;
}

/** Checks a ranged read's arguments against an object size; returns [start, end). */
export function resolveRange(name: string, size: number, options: GetOptions | undefined): [number, number] {
  const offset = options?.offset ?? 0;
  const length = options?.length ?? size - offset;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new CofferError('INVALID_RANGE', `Cannot read ${name} bytes ${offset}+${length}: the object has ${size} bytes`);
  }
  return [offset, offset + length];
}
