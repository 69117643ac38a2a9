// A Backend on an S3 bucket (AWS, MinIO, Ceph RGW, Garage, ...), optionally under a key prefix.
// It makes exactly one attempt per call: retrying is RetryBackend's job, so the SDK's own retries
// are off. Large objects go up as multipart uploads with a few parts in flight.
//
// With `objectLock` (a bucket with S3 Object Lock, for immutable storage units) the objects it
// names are put with a COMPLIANCE retention lock, `locks` reads and extends retain-until dates,
// and delete() removes an object's versions one by one: a plain DeleteObject in such a bucket,
// which is always versioned, only hides the object behind a delete marker and would make a
// locked object look deleted. A locked version's delete fails with REFUSED (lockedError).

import { createHash } from 'node:crypto';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import type { GetObjectCommandOutput } from '@aws-sdk/client-s3';
import { CofferError, isCofferError, throwIfAborted } from '../core/errors.ts';
import { lockedError, resolveRange, validateName, validatePrefix } from './backend.ts';
import type { Backend, CallOptions, GetOptions, ListOptions, ObjectInfo, ObjectLocks } from './backend.ts';

const MiB = 1024 * 1024;
/** S3's smallest part (except the last) and largest part count. */
const MIN_PART_SIZE = 5 * MiB;
const MAX_PARTS = 10_000;
/** Aborting a failed multipart upload gets its own deadline: the caller's signal may have fired. */
const ABORT_UPLOAD_TIMEOUT_MS = 30_000;

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3BackendOptions {
  bucket: string;
  /** Key prefix for every object ("backups/host1"); '/' is appended if missing. */
  prefix?: string;
  /** e.g. http://127.0.0.1:9000 for MinIO; AWS when left out. */
  endpoint?: string;
  /** Default us-east-1. */
  region?: string;
  /** Path-style URLs (endpoint/bucket/key) instead of virtual-host ones (bucket.endpoint/key). */
  forcePathStyle?: boolean;
  /** Left out: the SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, ...). */
  credentials?: S3Credentials;
  /** Multipart part size (default 16 MiB, at least 5 MiB). */
  partSize?: number;
  /** Objects larger than this go up in parts (default 64 MiB). */
  multipartThreshold?: number;
  /** Parts uploaded at once (default 4). */
  partConcurrency?: number;
  /** MaxKeys of each ListObjectsV2 page (default 1000, S3's maximum). */
  pageSize?: number;
  /** Give up connecting after this long (default 10 s). */
  connectTimeoutMs?: number;
  /** Give up on a connection idle for this long (default 60 s). */
  idleTimeoutMs?: number;
  /** The bucket has S3 Object Lock: lock what is written, delete by version (see the header). */
  objectLock?: S3ObjectLockOptions;
}

export interface S3ObjectLockOptions {
  /** Objects put are locked in COMPLIANCE mode until this date (ms since the epoch)... */
  retainUntil?: number;
  /** ...and for at least this long from when each is put (ms), so that a job outlasting `retainUntil` still writes. Both left out: put unlocked. */
  minimumMs?: number;
  /** Which object names get the lock (default: all); mutable objects such as session heartbeats must not. */
  lockName?: (name: string) => boolean;
}

const NOT_FOUND_NAMES = new Set(['NoSuchKey', 'NotFound']);
const DENIED_NAMES = new Set([
  'AccessDenied', 'Forbidden', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken', 'InvalidToken',
  'TokenRefreshRequired', 'AllAccessDisabled', 'AccountProblem', 'InvalidSecurity', 'CredentialsProviderError',
]);
const TRANSIENT_NAMES = new Set([
  'SlowDown', 'Throttling', 'ThrottlingException', 'ThrottledException', 'RequestThrottled', 'RequestLimitExceeded',
  'TooManyRequestsException', 'ServiceUnavailable', 'InternalError', 'RequestTimeout', 'RequestTimeoutException',
  'TimeoutError', 'NetworkingError', 'OperationAborted',
]);
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH',
  'ENETUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT',
]);

interface SdkError {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
}

function sdkName(e: unknown): string {
  const err = (typeof e === 'object' && e !== null ? e : {}) as SdkError;
  return err.Code ?? err.name ?? '';
}

/**
 * Turns an SDK or network error into a CofferError. Exported for tests: throttling, 5xx and
 * expired tokens cannot be provoked on a test server.
 */
export function s3Error(e: unknown, action: string, where: string, signal?: AbortSignal): CofferError {
  if (isCofferError(e)) return e;
  const err = (typeof e === 'object' && e !== null ? e : {}) as SdkError;
  if (signal?.aborted || err.name === 'AbortError') {
    return new CofferError('CANCELLED', 'Cancelled: the operation was interrupted', { cause: signal?.reason ?? e });
  }
  const name = sdkName(e);
  const status = err.$metadata?.httpStatusCode;
  const code = typeof err.code === 'string' ? err.code : '';
  const message = err.message && err.message !== 'UnknownError' ? err.message : '';
  const label = name && name !== 'Error' ? name : code || 'Error';
  const what = `${label}${status ? ` (HTTP ${status})` : ''}${message ? `: ${message}` : ''}`;
  const text = `Cannot ${action} ${where}: ${what}`;
  if (name === 'NoSuchBucket') {
    return new CofferError('NOT_FOUND', text, { cause: e, hint: 'Check the bucket name, region and endpoint, or create the bucket first.' });
  }
  if (NOT_FOUND_NAMES.has(name) || status === 404) return new CofferError('NOT_FOUND', text, { cause: e });
  if (name === 'InvalidRange' || status === 416) return new CofferError('INVALID_RANGE', text, { cause: e });
  // S3 sends this one as a 403, but new credentials would not help.
  if (name === 'RequestTimeTooSkewed') {
    return new CofferError('STORAGE_ERROR', text, { cause: e, hint: 'This computer\'s clock is wrong; set it right (NTP) and try again.' });
  }
  if (DENIED_NAMES.has(name) || status === 401 || status === 403) {
    return new CofferError('STORAGE_DENIED', text, {
      cause: e,
      hint: 'Check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the AWS profile) and that they may use this bucket.',
    });
  }
  if (
    TRANSIENT_NAMES.has(name) || TRANSIENT_CODES.has(code) || TRANSIENT_CODES.has(name) || (status !== undefined && (status >= 500 || status === 429)) ||
    err.$retryable !== undefined || /socket hang up|ECONNRESET|ECONNREFUSED/.test(err.message ?? '')
  ) {
    return new CofferError('STORAGE_UNAVAILABLE', text, {
      cause: e,
      hint: code === 'ENOTFOUND' ? 'Check the endpoint host name and the network.' : 'The storage service is unreachable or busy; try again later.',
    });
  }
  if (name === 'PermanentRedirect' || name === 'AuthorizationHeaderMalformed' || status === 301) {
    return new CofferError('STORAGE_ERROR', text, { cause: e, hint: 'The bucket is in another region: set the region to the bucket\'s.' });
  }
  return new CofferError('STORAGE_ERROR', text, { cause: e });
}

export class S3Backend implements Backend {
  readonly location: string;
  /** The SDK client; exposed so that tests can add middleware. */
  readonly client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #partSize: number;
  readonly #threshold: number;
  readonly #partConcurrency: number;
  readonly #pageSize: number;
  readonly #lock: S3ObjectLockOptions | undefined;
  readonly locks?: ObjectLocks;

  constructor(options: S3BackendOptions) {
    if (!options.bucket) throw new CofferError('USAGE', 'Cannot use S3 storage: no bucket given', { hint: 'Use s3://bucket/prefix.' });
    this.#bucket = options.bucket;
    this.#prefix = normalisePrefix(options.prefix ?? '');
    this.#partSize = options.partSize ?? 16 * MiB;
    this.#threshold = options.multipartThreshold ?? 64 * MiB;
    this.#partConcurrency = Math.max(1, options.partConcurrency ?? 4);
    this.#pageSize = options.pageSize ?? 1000;
    if (!Number.isSafeInteger(this.#partSize) || this.#partSize < MIN_PART_SIZE) {
      throw new CofferError('USAGE', `Cannot use a multipart part size of ${this.#partSize} bytes: S3 needs at least 5 MiB`, { hint: 'Set partSize to 5 MiB or more.' });
    }
    if (!Number.isSafeInteger(this.#pageSize) || this.#pageSize < 1 || this.#pageSize > 1000) {
      throw new CofferError('USAGE', `Cannot list ${this.#pageSize} keys per page: S3 allows 1 to 1000`, { hint: 'Set pageSize between 1 and 1000.' });
    }
    this.location = `s3://${this.#bucket}${this.#prefix ? `/${this.#prefix.slice(0, -1)}` : ''}`;
    this.#lock = options.objectLock;
    if (this.#lock) {
      const { retainUntil, minimumMs } = this.#lock;
      if (retainUntil !== undefined && !Number.isSafeInteger(retainUntil)) {
        throw new CofferError('USAGE', `Cannot lock objects until ${retainUntil}: not a date`, { hint: 'Give retainUntil in ms since the epoch.' });
      }
      if (minimumMs !== undefined && (!Number.isSafeInteger(minimumMs) || minimumMs < 1000)) {
        throw new CofferError('USAGE', `Cannot lock objects for ${minimumMs} ms: give a whole number of ms, at least 1000`);
      }
      this.locks = {
        check: (o) => this.#checkObjectLock(o?.signal),
        lockedUntil: (name, o) => this.#lockedUntil(name, undefined, o?.signal),
        extend: (name, until, o) => this.#extendLock(name, until, o?.signal),
      };
    }
    this.client = new S3Client({
      region: options.region ?? 'us-east-1',
      ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
      forcePathStyle: options.forcePathStyle ?? false,
      ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
      maxAttempts: 1,
      // Newer SDKs add CRC checksums to every request; Ceph RGW and others reject them.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: options.connectTimeoutMs ?? 10_000, socketTimeout: options.idleTimeoutMs ?? 60_000 },
    });
  }

  async put(name: string, data: Uint8Array, options?: CallOptions): Promise<void> {
    const signal = options?.signal;
    throwIfAborted(signal);
    validateName(name);
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    try {
      if (body.length > this.#threshold) {
        await this.#putMultipart(this.#key(name), body, signal, this.#lockFor(name));
      } else {
        await this.client.send(
          new PutObjectCommand({ Bucket: this.#bucket, Key: this.#key(name), Body: body, ContentLength: body.length, ContentMD5: md5(body), ...this.#lockFor(name) }),
          { abortSignal: signal },
        );
      }
    } catch (e) {
      const error = s3Error(e, 'write', this.#where(name), signal);
      if (this.#lockFor(name).ObjectLockMode && sdkName(e) === 'InvalidRequest') {
        throw new CofferError('REFUSED', `Cannot write ${this.#where(name)} with an Object Lock: ${error.message}`, { cause: e, hint: NO_LOCK_HINT });
      }
      throw error;
    }
  }

  async get(name: string, options?: GetOptions): Promise<Buffer> {
    const signal = options?.signal;
    throwIfAborted(signal);
    validateName(name);
    const offset = options?.offset ?? 0;
    const length = options?.length;
    if (!Number.isSafeInteger(offset) || offset < 0 || (length !== undefined && (!Number.isSafeInteger(length) || length < 0))) {
      throw new CofferError('INVALID_RANGE', `Cannot read ${this.#where(name)} bytes ${offset}+${length}: offset and length must be whole numbers, 0 or more`);
    }
    // S3 has no way to ask for zero bytes; the size alone decides.
    if (length === 0) return this.#emptyRange(name, options);
    const range = length !== undefined ? `bytes=${offset}-${offset + length - 1}` : offset > 0 ? `bytes=${offset}-` : undefined;
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#key(name), Range: range }), { abortSignal: signal });
      const body = await readBody(out.Body, out.ContentLength, signal);
      return range === undefined ? body : this.#checkRange(name, out, body, offset, length);
    } catch (e) {
      const error = s3Error(e, 'read', this.#where(name), signal);
      // "bytes=N-" with N = size is unsatisfiable to S3 but a valid, empty read to us.
      if (error.code === 'INVALID_RANGE' && length === undefined) return this.#emptyRange(name, options);
      throw error;
    }
  }

  async stat(name: string, options?: CallOptions): Promise<ObjectInfo> {
    const signal = options?.signal;
    throwIfAborted(signal);
    validateName(name);
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: this.#key(name) }), { abortSignal: signal });
      if (out.ContentLength === undefined) {
        throw new CofferError('STORAGE_ERROR', `Cannot stat ${this.#where(name)}: the server sent no Content-Length`);
      }
      return { name, size: out.ContentLength, ...(out.LastModified ? { modified: toSeconds(out.LastModified) } : {}) };
    } catch (e) {
      throw s3Error(e, 'stat', this.#where(name), signal);
    }
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    const signal = options?.signal;
    throwIfAborted(signal);
    validatePrefix(prefix);
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.#bucket,
            Prefix: this.#prefix + prefix,
            MaxKeys: this.#pageSize,
            ContinuationToken: token,
            // Keys may hold characters XML 1.0 cannot carry; servers that honour this say so.
            EncodingType: 'url',
          }),
          { abortSignal: signal },
        );
      } catch (e) {
        throw s3Error(e, 'list', this.#where(prefix), signal);
      }
      const encoded = page.EncodingType === 'url';
      for (const object of page.Contents ?? []) {
        throwIfAborted(signal);
        if (object.Key === undefined) continue;
        const key = encoded ? decodeKey(object.Key) : object.Key;
        const name = key.slice(this.#prefix.length);
        // Keys Coffer cannot have written, such as the "folder/" markers of S3 consoles.
        if (!key.startsWith(this.#prefix) || !isValidName(name)) continue;
        if (object.Size === undefined) throw new CofferError('STORAGE_ERROR', `Cannot list ${this.#where(prefix)}: the server sent no size for ${name}`);
        yield { name, size: object.Size, ...(object.LastModified ? { modified: toSeconds(object.LastModified) } : {}) };
      }
      if (page.IsTruncated && !page.NextContinuationToken) {
        // Ending here would silently drop the rest of the listing.
        throw new CofferError('STORAGE_ERROR', `Cannot list ${this.#where(prefix)}: the server said there are more keys but sent no continuation token`);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async delete(name: string, options?: CallOptions): Promise<void> {
    const signal = options?.signal;
    throwIfAborted(signal);
    validateName(name);
    if (this.#lock) return this.#deleteVersions(name, signal);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#key(name) }), { abortSignal: signal });
    } catch (e) {
      const error = s3Error(e, 'delete', this.#where(name), signal);
      // S3 answers 204 for a missing key, some compatible servers 404: both mean "gone".
      if (error.code === 'NOT_FOUND' && sdkName(e) !== 'NoSuchBucket') return;
      throw error;
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  async #emptyRange(name: string, options: GetOptions | undefined): Promise<Buffer> {
    const info = await this.stat(name, options);
    resolveRange(name, info.size, options);
    return Buffer.alloc(0);
  }

  /** Checks a ranged answer against the request; S3 answers a range running past the end with fewer bytes. */
  #checkRange(name: string, out: GetObjectCommandOutput, body: Buffer, offset: number, length: number | undefined): Buffer {
    if (out.$metadata.httpStatusCode === 200) {
      // A server may ignore Range (RFC 9110) and send the whole object.
      const [start, end] = resolveRange(name, body.length, { offset, length });
      return body.subarray(start, end);
    }
    const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(out.ContentRange ?? '');
    if (match === null) {
      if (length !== undefined && body.length < length) throw this.#pastEnd(name, offset, length, undefined);
      if (length !== undefined && body.length > length) throw this.#badRange(name, offset, length, out.ContentRange);
      return body;
    }
    const first = Number(match[1]);
    const last = Number(match[2]);
    const total = match[3] === '*' ? undefined : Number(match[3]);
    if (first !== offset || last - first + 1 !== body.length) throw this.#badRange(name, offset, length, out.ContentRange);
    if (length === undefined) {
      if (total !== undefined && last + 1 !== total) throw this.#badRange(name, offset, length, out.ContentRange);
      return body;
    }
    if (body.length < length) {
      if (total !== undefined && last + 1 === total) throw this.#pastEnd(name, offset, length, total);
      throw this.#badRange(name, offset, length, out.ContentRange);
    }
    if (body.length > length) throw this.#badRange(name, offset, length, out.ContentRange);
    return body;
  }

  #pastEnd(name: string, offset: number, length: number, size: number | undefined): CofferError {
    return new CofferError('INVALID_RANGE', `Cannot read ${this.#where(name)} bytes ${offset}+${length}: the object has ${size ?? 'fewer'} bytes`);
  }

  #badRange(name: string, offset: number, length: number | undefined, contentRange: string | undefined): CofferError {
    return new CofferError('STORAGE_ERROR', `Cannot read ${this.#where(name)} bytes ${offset}+${length ?? 'to the end'}: the server answered with range ${JSON.stringify(contentRange ?? null)}`, {
      hint: 'The storage server does not handle ranged reads correctly; Coffer needs it to.',
    });
  }

  async #putMultipart(key: string, body: Buffer, signal: AbortSignal | undefined, lock: LockParameters): Promise<void> {
    const partSize = Math.max(this.#partSize, Math.ceil(body.length / MAX_PARTS));
    const partCount = Math.ceil(body.length / partSize);
    const created = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.#bucket, Key: key, ...lock }), { abortSignal: signal });
    const uploadId = created.UploadId;
    if (!uploadId) throw new CofferError('STORAGE_ERROR', `Cannot write ${key} to ${this.location}: the server started a multipart upload without an upload id`);
    // One failed part stops the others at once.
    const parts = new AbortController();
    const stop = (): void => parts.abort(signal?.reason);
    signal?.addEventListener('abort', stop, { once: true });
    let failure: unknown;
    try {
      const etags = new Array<string>(partCount);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < partCount && failure === undefined) {
          const i = next++;
          const part = body.subarray(i * partSize, Math.min(body.length, (i + 1) * partSize));
          try {
            const out = await this.client.send(
              new UploadPartCommand({ Bucket: this.#bucket, Key: key, UploadId: uploadId, PartNumber: i + 1, Body: part, ContentLength: part.length, ContentMD5: md5(part) }),
              { abortSignal: parts.signal },
            );
            if (!out.ETag) throw new CofferError('STORAGE_ERROR', `Cannot write ${key} to ${this.location}: the server sent no ETag for part ${i + 1}`);
            etags[i] = out.ETag;
          } catch (e) {
            failure ??= e;
            parts.abort();
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(this.#partConcurrency, partCount) }, worker));
      if (failure !== undefined) throw failure;
      throwIfAborted(signal);
      await this.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.#bucket,
          Key: key,
          UploadId: uploadId,
          MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
        }),
        { abortSignal: signal },
      );
      // Some servers (Ceph RGW 16) ignore the lock of a multipart upload: set it on the object.
      if (lock.ObjectLockRetainUntilDate) {
        await this.client.send(
          new PutObjectRetentionCommand({ Bucket: this.#bucket, Key: key, Retention: { Mode: 'COMPLIANCE', RetainUntilDate: lock.ObjectLockRetainUntilDate } }),
          { abortSignal: signal },
        );
      }
    } catch (e) {
      // Best effort: parts left behind cost money but harm nothing; a bucket lifecycle rule
      // ("abort incomplete multipart uploads") removes them for good.
      await this.client
        .send(new AbortMultipartUploadCommand({ Bucket: this.#bucket, Key: key, UploadId: uploadId }), { abortSignal: AbortSignal.timeout(ABORT_UPLOAD_TIMEOUT_MS) })
        .catch(() => {});
      throw e;
    } finally {
      signal?.removeEventListener('abort', stop);
    }
  }

  #lockFor(name: string): LockParameters {
    const lock = this.#lock;
    if (!lock || (lock.retainUntil === undefined && lock.minimumMs === undefined) || !(lock.lockName?.(name) ?? true)) return {};
    const until = Math.max(lock.retainUntil ?? 0, lock.minimumMs === undefined ? 0 : Date.now() + lock.minimumMs);
    return { ObjectLockMode: 'COMPLIANCE', ObjectLockRetainUntilDate: new Date(until) };
  }

  /** Deletes every version (and delete marker) of one key; a locked version stops it with REFUSED. */
  async #deleteVersions(name: string, signal: AbortSignal | undefined): Promise<void> {
    const key = this.#key(name);
    const versions: string[] = [];
    try {
      let keyMarker: string | undefined;
      let versionMarker: string | undefined;
      do {
        const page = await this.client.send(
          new ListObjectVersionsCommand({ Bucket: this.#bucket, Prefix: key, KeyMarker: keyMarker, VersionIdMarker: versionMarker }),
          { abortSignal: signal },
        );
        // Delete markers first: an object someone hid behind one is visible again if its version is locked.
        for (const v of [...(page.DeleteMarkers ?? []), ...(page.Versions ?? [])]) if (v.Key === key && v.VersionId) versions.push(v.VersionId);
        if (page.IsTruncated && !page.NextKeyMarker) throw new CofferError('STORAGE_ERROR', `Cannot delete ${this.#where(name)}: the server said there are more versions but sent no marker`);
        keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
        versionMarker = page.IsTruncated ? page.NextVersionIdMarker : undefined;
      } while (keyMarker !== undefined);
    } catch (e) {
      throw s3Error(e, 'delete', this.#where(name), signal);
    }
    for (const versionId of versions) {
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: key, VersionId: versionId }), { abortSignal: signal });
      } catch (e) {
        if (sdkName(e) === 'NoSuchVersion' || sdkName(e) === 'NoSuchKey') continue;
        if (sdkName(e) === 'AccessDenied') {
          const until = await this.#lockedUntil(name, versionId, signal).catch(() => undefined);
          if (until !== undefined) throw lockedError(this.#where(name), until, e);
        }
        throw s3Error(e, 'delete', this.#where(name), signal);
      }
    }
  }

  async #checkObjectLock(signal: AbortSignal | undefined): Promise<void> {
    let enabled: string | undefined;
    try {
      enabled = (await this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.#bucket }), { abortSignal: signal })).ObjectLockConfiguration?.ObjectLockEnabled;
    } catch (e) {
      if (sdkName(e) !== 'ObjectLockConfigurationNotFoundError') throw s3Error(e, 'read the Object Lock configuration of', `bucket ${this.#bucket}`, signal);
    }
    if (enabled !== 'Enabled') {
      throw new CofferError('REFUSED', `Cannot keep immutable copies in ${this.location}: the bucket ${this.#bucket} does not have Object Lock enabled`, { hint: NO_LOCK_HINT });
    }
  }

  async #lockedUntil(name: string, versionId: string | undefined, signal: AbortSignal | undefined): Promise<number | undefined> {
    validateName(name);
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: this.#key(name), VersionId: versionId }), { abortSignal: signal });
      return out.ObjectLockMode && out.ObjectLockRetainUntilDate ? out.ObjectLockRetainUntilDate.getTime() : undefined;
    } catch (e) {
      throw s3Error(e, 'read the lock of', this.#where(name), signal);
    }
  }

  async #extendLock(name: string, until: number, signal: AbortSignal | undefined): Promise<number> {
    validateName(name);
    if (!Number.isSafeInteger(until)) throw new CofferError('USAGE', `Cannot lock ${this.#where(name)} until ${until}: not a date`);
    try {
      await this.client.send(
        new PutObjectRetentionCommand({ Bucket: this.#bucket, Key: this.#key(name), Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(until) } }),
        { abortSignal: signal },
      );
      return until;
    } catch (e) {
      // Refused when it would shorten a lock: then the lock in force is already long enough.
      if (sdkName(e) === 'AccessDenied') {
        const current = await this.#lockedUntil(name, undefined, signal).catch(() => undefined);
        if (current !== undefined && current >= until) return current;
      }
      // Refused because the date passed on the way: a lock ending in the past is no lock to set.
      if (sdkName(e) === 'InvalidArgument' && until <= Date.now()) return (await this.#lockedUntil(name, undefined, signal)) ?? until;
      throw s3Error(e, 'lock', this.#where(name), signal);
    }
  }

  #key(name: string): string {
    return this.#prefix + name;
  }

  #where(name: string): string {
    return `${name} in ${this.location}`;
  }
}

type LockParameters = { ObjectLockMode?: 'COMPLIANCE'; ObjectLockRetainUntilDate?: Date };

const NO_LOCK_HINT = 'Use a bucket made with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket, or the option in your storage\'s console), or set immutable: false on the storage unit.';

function normalisePrefix(prefix: string): string {
  const trimmed = prefix.replace(/^\/+/, '').replace(/\/+$/, '');
  if (trimmed === '') return '';
  try {
    validateName(trimmed);
  } catch {
    throw new CofferError('USAGE', `Cannot use the S3 key prefix ${JSON.stringify(prefix)}: it has an empty, "." or ".." segment or a bad character`, {
      hint: 'Use a prefix like "backups/host1".',
    });
  }
  return `${trimmed}/`;
}

/**
 * S3 keeps LastModified to the second, but some servers (Ceph RGW) list it with milliseconds and
 * give HeadObject whole seconds: both are cut to the second, so that stat() and list() agree.
 */
function toSeconds(date: Date): number {
  return Math.floor(date.getTime() / 1000) * 1000;
}

function md5(data: Uint8Array): string {
  return createHash('md5').update(data).digest('base64');
}

/** Undoes EncodingType=url: percent-escapes, with '+' for a space (as S3 writes them). */
function decodeKey(key: string): string {
  try {
    return decodeURIComponent(key.replace(/\+/g, '%20'));
  } catch (e) {
    throw new CofferError('STORAGE_ERROR', `Cannot list: the server sent a badly encoded key ${JSON.stringify(key)}`, { cause: e });
  }
}

function isValidName(name: string): boolean {
  try {
    validateName(name);
    return true;
  } catch {
    return false;
  }
}

/** Reads a response body completely; a body shorter than announced is a broken transfer. */
async function readBody(body: unknown, expected: number | undefined, signal: AbortSignal | undefined): Promise<Buffer> {
  if (body === undefined || body === null) {
    if (expected) throw new CofferError('STORAGE_UNAVAILABLE', `Cannot read the response: expected ${expected} bytes, got no body`);
    return Buffer.alloc(0);
  }
  const stream = body as AsyncIterable<Uint8Array> & { destroy?: (error?: Error) => void };
  const onAbort = (): void => stream.destroy?.(new CofferError('CANCELLED', 'Cancelled: the operation was interrupted', { cause: signal?.reason }));
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (expected !== undefined) {
      const out = Buffer.allocUnsafe(expected);
      let filled = 0;
      for await (const chunk of stream) {
        if (filled + chunk.length > expected) {
          throw new CofferError('STORAGE_ERROR', `Cannot read the response: the server sent more than the ${expected} bytes it announced`);
        }
        out.set(chunk, filled);
        filled += chunk.length;
      }
      if (filled !== expected) {
        throw new CofferError('STORAGE_UNAVAILABLE', `Cannot read the response: the connection ended after ${filled} of ${expected} bytes`, {
          hint: 'The transfer was cut short; try again.',
        });
      }
      return out;
    }
    const chunks: Uint8Array[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    return Buffer.concat(chunks);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
