// Turns the repository locations users type (--repo, COFFER_REPOSITORY) into Backends: a path,
// file:///path, s3://bucket/prefix?endpoint=...&region=...&path-style=..., or memory: for tests.
// Secrets never go in a URL (it ends up in shell history, logs and process lists): S3
// credentials come from the environment or the AWS SDK's usual sources.

import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CofferError } from '../core/errors.ts';
import type { Backend } from './backend.ts';
import { LocalBackend } from './local.ts';
import { MemoryBackend } from './memory.ts';
import type { S3BackendOptions } from './s3.ts';

export type BackendSpec =
  | { kind: 'local'; path: string }
  | { kind: 'memory' }
  | { kind: 's3'; bucket: string; prefix: string; endpoint?: string; region?: string; forcePathStyle: boolean };

export interface OpenBackendOptions {
  /** Where S3 credentials are read from (default process.env). */
  env?: Record<string, string | undefined>;
  /** Extra S3 settings (part size, page size, timeouts) that have no place in a URL. */
  s3?: Omit<Partial<S3BackendOptions>, 'bucket' | 'prefix' | 'endpoint' | 'region' | 'forcePathStyle'>;
}

const FORMS = 'Use a directory path (/srv/backup, ./repo), file:///srv/backup, s3://bucket/prefix (optionally ?endpoint=https://host:port&region=eu-west-1&path-style=true) or memory: (tests only).';
const S3_PARAMS = new Set(['endpoint', 'region', 'path-style']);
const SECRET_PARAM = /key|secret|token|password|credential/i;
/** DNS-style names, plus the upper case and '_' that old us-east-1 buckets may have. */
const BUCKET_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{2,62}$/;

function usage(url: string, why: string, hint: string = FORMS): CofferError {
  return new CofferError('USAGE', `Cannot use the repository location ${JSON.stringify(url)}: ${why}`, { hint });
}

/** Parses a repository location without opening anything. */
export function parseBackendUrl(url: string): BackendSpec {
  if (typeof url !== 'string' || url.trim() === '') throw usage(String(url), 'it is empty');
  // A colon before the first '/' makes it a URL, so that "sftp:host" or scp-style
  // "user@host:/srv" cannot quietly become a local directory of that name. A local path with
  // such a colon can be written ./like:this.
  const head = url.split('/')[0]!;
  if (url.startsWith('.') || !head.includes(':')) return { kind: 'local', path: resolve(url) };
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase() ?? head;
  switch (scheme) {
    case 'file':
      return { kind: 'local', path: parseFileUrl(url) };
    case 'memory':
      if (url.toLowerCase() !== 'memory:' && url.toLowerCase() !== 'memory://') throw usage(url, 'memory: takes nothing after the colon');
      return { kind: 'memory' };
    case 's3':
      return parseS3Url(url);
    default:
      throw new CofferError('UNSUPPORTED', `Cannot use the repository location ${JSON.stringify(redact(url))}: Coffer does not support "${scheme.replace(/:$/, '')}:" storage`, {
        hint: `${FORMS} A local directory whose name has a colon can be written ./name:like:this.`,
      });
  }
}

function parseFileUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw usage(url, 'it is not a valid file: URL', 'Write file:///absolute/path (three slashes).');
  }
  if (parsed.host !== '' && parsed.host !== 'localhost') throw usage(url, `file: URLs on another host (${parsed.host}) are not supported`, 'Write file:///absolute/path (three slashes), or mount the share and use its path.');
  if (parsed.search || parsed.hash) throw usage(url, 'file: URLs take no ?query or #fragment', 'Write file:///absolute/path; encode ? and # in names as %3F and %23.');
  if (parsed.pathname === '/' || parsed.pathname === '') throw usage(url, 'it names the root directory', 'Give a directory below /, e.g. file:///srv/backup.');
  return fileURLToPath(parsed);
}

function parseS3Url(url: string): BackendSpec {
  const match = /^s3:\/\/([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$/i.exec(url);
  if (match === null) throw usage(url, 'it is not an s3://bucket/prefix URL');
  const [, bucket = '', rawPath = '', query = '', fragment] = match;
  if (fragment !== undefined) throw usage(redact(url), 'it has a #fragment', 'Encode # in the prefix as %23.');
  if (bucket.includes('@') || bucket.includes(':')) {
    throw usage(redact(url), 'credentials or ports do not belong in the bucket part', 'Write s3://bucket/prefix; put the endpoint in ?endpoint= and credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.');
  }
  if (!BUCKET_NAME.test(bucket)) throw usage(url, bucket === '' ? 'it names no bucket' : `"${bucket}" is not a valid bucket name`, 'Write s3://bucket/prefix with a bucket name of letters, digits, ".", "-" and "_".');
  let prefix: string;
  try {
    prefix = decodeURIComponent(rawPath).replace(/^\/+/, '').replace(/\/+$/, '');
  } catch {
    throw usage(url, 'the prefix has a broken %-escape');
  }
  if (prefix.split('/').some((s) => s === '.' || s === '..') || prefix.includes('//') || prefix.includes('\\') || prefix.includes('\0')) {
    throw usage(url, `the prefix ${JSON.stringify(prefix)} has an empty, "." or ".." segment or a bad character`, 'Write a prefix like s3://bucket/backups/host1.');
  }
  const params = new URLSearchParams(query.slice(1));
  for (const key of params.keys()) {
    if (SECRET_PARAM.test(key)) {
      throw usage(redact(url), `secrets such as "${key}" are not allowed in the URL`, 'Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile) instead: URLs end up in shell history and logs.');
    }
    if (!S3_PARAMS.has(key)) throw usage(url, `unknown parameter "${key}"`, 'S3 URLs take ?endpoint=, ?region= and ?path-style=true|false.');
  }
  const endpoint = params.get('endpoint') ?? undefined;
  if (endpoint !== undefined) {
    let parsed: URL;
    try {
      parsed = new URL(endpoint);
    } catch {
      throw usage(url, `the endpoint ${JSON.stringify(endpoint)} is not a URL`, 'Write the endpoint as ?endpoint=https://host:port.');
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw usage(url, 'the endpoint must be an http:// or https:// URL', 'Write the endpoint as ?endpoint=https://host:port.');
    if (parsed.username || parsed.password) {
      throw usage(redact(url), 'the endpoint has credentials in it', 'Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead.');
    }
  }
  const region = params.get('region') ?? undefined;
  if (region !== undefined && !/^[a-z0-9-]+$/i.test(region)) throw usage(url, `"${region}" is not a region name`, 'Write e.g. ?region=eu-west-1.');
  const pathStyle = params.get('path-style');
  if (pathStyle !== null && pathStyle !== 'true' && pathStyle !== 'false') throw usage(url, 'path-style must be true or false');
  return {
    kind: 's3',
    bucket,
    prefix,
    ...(endpoint === undefined ? {} : { endpoint }),
    ...(region === undefined ? {} : { region }),
    // Self-hosted servers (MinIO, Ceph, Garage) usually want path-style; AWS wants virtual-host.
    forcePathStyle: pathStyle === null ? endpoint !== undefined : pathStyle === 'true',
  };
}

/** Hides anything after '@' in an authority, in case someone typed a password into a URL. */
function redact(url: string): string {
  return url.replace(/\/\/[^/@?#]*@/g, '//***@').replace(/([?&][^=&]*(?:key|secret|token|password|credential)[^=&]*=)[^&#]*/gi, '$1***');
}

/** Opens the storage a location names. memory: gives a new, empty store each time. */
export async function openBackend(url: string, options: OpenBackendOptions = {}): Promise<Backend> {
  const spec = parseBackendUrl(url);
  switch (spec.kind) {
    case 'local':
      return new LocalBackend(spec.path);
    case 'memory':
      return new MemoryBackend();
    case 's3': {
      const env = options.env ?? process.env;
      const accessKeyId = env.AWS_ACCESS_KEY_ID;
      const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
      if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
        throw new CofferError('USAGE', `Cannot open ${describeBackendUrl(url)}: only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set`, {
          hint: 'Set both, or neither to use an AWS profile or instance role.',
        });
      }
      // The AWS SDK is loaded only for S3 repositories: it adds ~33 MB of RSS and 0.07 s of
      // start-up to every command on a local one.
      const { S3Backend } = await import('./s3.ts');
      return new S3Backend({
        ...options.s3,
        bucket: spec.bucket,
        prefix: spec.prefix,
        ...(spec.endpoint === undefined ? {} : { endpoint: spec.endpoint }),
        ...(spec.region === undefined ? {} : { region: spec.region }),
        forcePathStyle: spec.forcePathStyle,
        // Neither set: the SDK's default chain (profiles, SSO, instance and container roles).
        ...(accessKeyId === undefined || secretAccessKey === undefined
          ? {}
          : { credentials: { accessKeyId, secretAccessKey, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) } }),
      });
    }
  }
}

/** A location for messages, without opening it: the directory, "s3://bucket/prefix" or "memory:". */
export function describeBackendUrl(url: string): string {
  const spec = parseBackendUrl(url);
  switch (spec.kind) {
    case 'local':
      return spec.path;
    case 'memory':
      return 'memory:';
    case 's3':
      return `s3://${spec.bucket}${spec.prefix ? `/${spec.prefix}` : ''}${spec.endpoint ? ` at ${spec.endpoint}` : ''}`;
  }
}
