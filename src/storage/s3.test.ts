import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { isCofferError } from '../core/errors.ts';
import { startS3Server } from '../testing/s3server.ts';
import type { S3Server } from '../testing/s3server.ts';
import { randomBytes } from '../testing/random.ts';
import { listAll } from './backend.ts';
import { runConformanceSuite } from './conformance.ts';
import { s3Error, S3Backend } from './s3.ts';
import type { S3BackendOptions } from './s3.ts';
import { openBackend } from './url.ts';

const MiB = 1024 * 1024;

function backendFor(server: S3Server, options: Partial<S3BackendOptions> = {}): S3Backend {
  return new S3Backend({
    bucket: server.bucket,
    endpoint: server.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    ...options,
  });
}

// Small pages so the 1,100-object check spans many ListObjectsV2 pages, and a low threshold so
// the 3 and 4 MiB objects of the overwrite and abort checks go up as multipart uploads.
runConformanceSuite('S3Backend on s3rver', async () => {
  const server = await startS3Server();
  const backend = backendFor(server, { prefix: 'repo/sub', pageSize: 100, partSize: 5 * MiB, multipartThreshold: 2 * MiB });
  return {
    backend,
    async cleanup() {
      await backend.close();
      await server.stop();
    },
  };
});

type Handler = (args: { input: Record<string, unknown>; request?: unknown }) => Promise<{ output: unknown }>;
type Middleware = (next: Handler, context: { commandName?: string }) => Handler;

/** Adds SDK middleware; the SDK types each step's middleware apart, which tests need not. */
function use(backend: S3Backend, step: 'initialize' | 'build' | 'finalizeRequest', middleware: Middleware): void {
  const stack = backend.client.middlewareStack as unknown as { add(m: Middleware, o: { step: string; priority?: 'low' }): void };
  stack.add(middleware, { step, ...(step === 'finalizeRequest' ? { priority: 'low' as const } : {}) });
}

/** Records every command the client sends, with its input. */
function recordCommands(backend: S3Backend): Array<{ command: string; input: Record<string, unknown> }> {
  const sent: Array<{ command: string; input: Record<string, unknown> }> = [];
  const record: Middleware = (next, context) => async (args) => {
    sent.push({ command: String(context.commandName), input: args.input as Record<string, unknown> });
    return next(args);
  };
  use(backend, 'initialize', record);
  return sent;
}

describe('S3Backend', () => {
  let server: S3Server;
  before(async () => {
    server = await startS3Server();
  });
  after(async () => {
    await server.stop();
  });

  it('put() of an object above the threshold uploads it in parallel parts that read back byte-exact', async () => {
    const backend = backendFor(server, { prefix: 'multipart', partSize: 5 * MiB, multipartThreshold: 10 * MiB });
    const sent = recordCommands(backend);
    let inFlight = 0;
    let maxInFlight = 0;
    const count: Middleware = (next, context) => async (args) => {
      if (context.commandName !== 'UploadPartCommand') return next(args);
      maxInFlight = Math.max(maxInFlight, ++inFlight);
      try {
        return await next(args);
      } finally {
        inFlight--;
      }
    };
    use(backend, 'initialize', count);
    const data = randomBytes(1, 11 * MiB + 123);
    await backend.put('big', data);
    assert.deepEqual(sent.map((s) => s.command), [
      'CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand',
    ]);
    assert.ok(maxInFlight > 1, 'parts went up one at a time');
    assert.ok((await backend.get('big')).equals(data));
    assert.equal((await backend.stat('big')).size, data.length);
    // Across the boundary between part 1 and part 2, and into the short last part.
    assert.ok((await backend.get('big', { offset: 5 * MiB - 100, length: 200 })).equals(data.subarray(5 * MiB - 100, 5 * MiB + 100)));
    assert.ok((await backend.get('big', { offset: 10 * MiB - 1 })).equals(data.subarray(10 * MiB - 1)));
    await backend.delete('big');
    await backend.close();
  });

  it('put() of an object at or below the threshold is a single PutObject', async () => {
    const backend = backendFor(server, { prefix: 'single', partSize: 5 * MiB, multipartThreshold: 6 * MiB });
    const sent = recordCommands(backend);
    await backend.put('six', randomBytes(2, 6 * MiB));
    assert.deepEqual(sent.map((s) => s.command), ['PutObjectCommand']);
    await backend.delete('six');
    await backend.close();
  });

  it('put() aborts the multipart upload when a part fails, and leaves no object', async () => {
    const backend = backendFor(server, { prefix: 'multipart-fail', partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    const sent = recordCommands(backend);
    const failPart2: Middleware = (next) => async (args) => {
      if ((args.input as { PartNumber?: number }).PartNumber === 2) throw Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
      return next(args);
    };
    use(backend, 'initialize', failPart2);
    await assert.rejects(backend.put('broken', randomBytes(3, 12 * MiB)), (e) => isCofferError(e, 'STORAGE_UNAVAILABLE') && /ECONNRESET/.test(e.message));
    const commands = sent.map((s) => s.command);
    assert.equal(commands[0], 'CreateMultipartUploadCommand');
    assert.equal(commands.at(-1), 'AbortMultipartUploadCommand');
    assert.ok(!commands.includes('CompleteMultipartUploadCommand'));
    await assert.rejects(backend.get('broken'), (e) => isCofferError(e, 'NOT_FOUND'));
    await backend.close();
  });

  it('put() aborted during a multipart upload fails with CANCELLED and aborts the upload', async () => {
    const backend = backendFor(server, { prefix: 'multipart-cancel', partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    const sent = recordCommands(backend);
    const controller = new AbortController();
    const abortOnFirstPart: Middleware = (next, context) => async (args) => {
      if (context.commandName === 'UploadPartCommand') controller.abort();
      return next(args);
    };
    use(backend, 'initialize', abortOnFirstPart);
    await assert.rejects(backend.put('cancelled', randomBytes(4, 11 * MiB), { signal: controller.signal }), (e) => isCofferError(e, 'CANCELLED'));
    assert.equal(sent.at(-1)?.command, 'AbortMultipartUploadCommand');
    assert.ok(!sent.some((s) => s.command === 'CompleteMultipartUploadCommand'));
    await assert.rejects(backend.get('cancelled'), (e) => isCofferError(e, 'NOT_FOUND'));
    await backend.close();
  });

  it('list() follows ContinuationToken from page to page', async () => {
    const backend = backendFor(server, { prefix: 'paged', pageSize: 7 });
    await Promise.all(Array.from({ length: 50 }, (_, i) => backend.put(`n/${i}`, Buffer.from([i]))));
    const sent = recordCommands(backend);
    const names = (await listAll(backend, 'n/')).map((o) => o.name);
    assert.equal(new Set(names).size, 50);
    const pages = sent.filter((s) => s.command === 'ListObjectsV2Command').map((s) => s.input);
    assert.equal(pages.length, 8);
    assert.equal(pages[0]!.ContinuationToken, undefined);
    assert.ok(pages.slice(1).every((p) => typeof p.ContinuationToken === 'string' && p.MaxKeys === 7 && p.Prefix === 'paged/n/'));
    await Promise.all(names.map((n) => backend.delete(n)));
    await backend.close();
  });

  it('list() decodes keys when the server says it url-encoded them', async () => {
    const backend = backendFor(server, { prefix: 'encoded' });
    const names = ['a b+c', '100%/ä#?', 'x&y=z'];
    for (const n of names) await backend.put(n, Buffer.from(n));
    // What S3 does with EncodingType=url (s3rver ignores it): percent-escapes, '+' for space.
    const encode: Middleware = (next, context) => async (args) => {
      const result = await next(args);
      if (context.commandName === 'ListObjectsV2Command') {
        const output = result.output as { EncodingType?: string; Contents?: Array<{ Key?: string }> };
        output.EncodingType = 'url';
        for (const c of output.Contents ?? []) c.Key = encodeURIComponent(c.Key!).replace(/%20/g, '+').replace(/%2F/g, '/');
      }
      return result;
    };
    use(backend, 'initialize', encode);
    assert.deepEqual((await listAll(backend, '')).map((o) => o.name).sort(), [...names].sort());
    for (const n of names) await backend.delete(n);
    await backend.close();
  });

  it('get() of a range from a server that ignores Range still returns exactly the requested bytes', async () => {
    const backend = backendFor(server, { prefix: 'norange' });
    const data = randomBytes(5, 1000);
    await backend.put('obj', data);
    const dropRange: Middleware = (next) => async (args) => {
      delete (args.request as { headers: Record<string, string> }).headers.range;
      return next(args);
    };
    use(backend, 'build', dropRange);
    assert.ok((await backend.get('obj', { offset: 100, length: 50 })).equals(data.subarray(100, 150)));
    assert.ok((await backend.get('obj', { offset: 900 })).equals(data.subarray(900)));
    await assert.rejects(backend.get('obj', { offset: 990, length: 20 }), (e) => isCofferError(e, 'INVALID_RANGE'));
    await backend.delete('obj');
    await backend.close();
  });

  it('get() of a body cut short fails with STORAGE_UNAVAILABLE', async () => {
    const backend = backendFor(server, { prefix: 'short' });
    await backend.put('obj', randomBytes(6, 1000));
    const cut: Middleware = (next, context) => async (args) => {
      const result = await next(args);
      if (context.commandName === 'GetObjectCommand') {
        const output = result.output as { Body?: Readable };
        output.Body!.destroy();
        output.Body = Readable.from([Buffer.alloc(10)]);
      }
      return result;
    };
    use(backend, 'initialize', cut);
    await assert.rejects(backend.get('obj'), (e) => isCofferError(e, 'STORAGE_UNAVAILABLE') && /after 10 of 1000 bytes/.test(e.message));
    await assert.rejects(backend.get('obj', { offset: 10, length: 100 }), (e) => isCofferError(e, 'STORAGE_UNAVAILABLE'));
    await backend.close();
  });

  it('wrong credentials fail with STORAGE_DENIED', async () => {
    // s3rver checks the access key id but not the signature.
    const backend = backendFor(server, { credentials: { accessKeyId: 'WRONG', secretAccessKey: 'WRONG' } });
    await assert.rejects(backend.get('x'), (e) => isCofferError(e, 'STORAGE_DENIED') && /InvalidAccessKeyId/.test(e.message) && /AWS_ACCESS_KEY_ID/.test(e.hint ?? ''));
    await assert.rejects(backend.put('x', Buffer.from('x')), (e) => isCofferError(e, 'STORAGE_DENIED'));
    await assert.rejects(listAll(backend, ''), (e) => isCofferError(e, 'STORAGE_DENIED'));
    await backend.close();
  });

  it('a missing bucket fails with NOT_FOUND and a hint, also for delete()', async () => {
    const backend = backendFor(server, { bucket: 'no-such-bucket' });
    for (const call of [() => backend.get('x'), () => backend.put('x', Buffer.from('x')), () => listAll(backend, ''), () => backend.delete('x')]) {
      await assert.rejects(call(), (e) => isCofferError(e, 'NOT_FOUND') && /NoSuchBucket/.test(e.message) && /create the bucket/.test(e.hint ?? ''));
    }
    await assert.rejects(backend.stat('x'), (e) => isCofferError(e, 'NOT_FOUND'));
    await backend.close();
  });

  it('a server that has gone away fails calls with STORAGE_UNAVAILABLE', async () => {
    const gone = await startS3Server();
    const backend = backendFor(gone);
    await backend.put('x', Buffer.from('x'));
    await gone.stop();
    for (const call of [() => backend.get('x'), () => backend.stat('x'), () => backend.put('y', Buffer.from('y')), () => listAll(backend, '')]) {
      await assert.rejects(call(), (e) => isCofferError(e, 'STORAGE_UNAVAILABLE') && e.transient);
    }
    await backend.close();
  });

  it('openBackend() of an s3:// URL with an endpoint uses path-style and credentials from the environment', async () => {
    const backend = await openBackend(`s3://${server.bucket}/via/url?endpoint=${encodeURIComponent(server.endpoint)}`, {
      env: { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey },
    });
    assert.equal(backend.location, `s3://${server.bucket}/via/url`);
    await backend.put('hello', Buffer.from('world'));
    const direct = backendFor(server);
    assert.equal((await direct.get('via/url/hello')).toString(), 'world');
    await backend.delete('hello');
    await backend.close();
    await direct.close();
  });
});

describe('S3Backend addressing', () => {
  /** The host and path the client would send a GetObject to; stops before the network. */
  async function addressOf(options: Partial<S3BackendOptions>, name: string): Promise<{ hostname: string; path: string; port?: number }> {
    const backend = new S3Backend({ bucket: 'coffer-bucket', prefix: 'pre/fix', credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, ...options });
    let seen: { hostname: string; path: string; port?: number } | undefined;
    const capture: Middleware = () => async (args) => {
      const request = args.request as { hostname: string; path: string; port?: number };
      seen = { hostname: request.hostname, path: request.path, ...(request.port ? { port: request.port } : {}) };
      throw new Error('stopped before sending');
    };
    use(backend, 'finalizeRequest', capture);
    await assert.rejects(backend.get(name), /stopped before sending/);
    await backend.close();
    return seen!;
  }

  it('a virtual-host style client puts the bucket in the host name', async () => {
    assert.deepEqual(await addressOf({ endpoint: 'https://s3.example.test', forcePathStyle: false }, 'data/ab'), { hostname: 'coffer-bucket.s3.example.test', path: '/pre/fix/data/ab' });
    assert.deepEqual(await addressOf({ region: 'eu-central-1' }, 'x'), { hostname: 'coffer-bucket.s3.eu-central-1.amazonaws.com', path: '/pre/fix/x' });
  });

  it('a path-style client puts the bucket in the path', async () => {
    assert.deepEqual(await addressOf({ endpoint: 'http://127.0.0.1:9000', forcePathStyle: true }, 'data/ab'), { hostname: '127.0.0.1', port: 9000, path: '/coffer-bucket/pre/fix/data/ab' });
  });

  it('names are percent-encoded in the request path', async () => {
    const { path } = await addressOf({ endpoint: 'https://s3.example.test', forcePathStyle: true }, 'a b+c/ä#?');
    assert.equal(path, '/coffer-bucket/pre/fix/a%20b%2Bc/%C3%A4%23%3F');
  });
});

describe('S3Backend options', () => {
  const base = { bucket: 'b', credentials: { accessKeyId: 'a', secretAccessKey: 'b' } };
  it('location is s3://bucket/prefix, without endpoint or credentials', () => {
    assert.equal(new S3Backend({ ...base, prefix: '/backups/host1/' }).location, 's3://b/backups/host1');
    assert.equal(new S3Backend({ ...base, endpoint: 'https://s3.example.test' }).location, 's3://b');
  });
  it('a part size below 5 MiB, a page size above 1000 or a bad prefix is refused with USAGE', () => {
    assert.throws(() => new S3Backend({ ...base, partSize: 4 * MiB }), (e) => isCofferError(e, 'USAGE') && /at least 5 MiB/.test(e.message));
    assert.throws(() => new S3Backend({ ...base, pageSize: 1001 }), (e) => isCofferError(e, 'USAGE'));
    assert.throws(() => new S3Backend({ ...base, prefix: 'a//b' }), (e) => isCofferError(e, 'USAGE'));
    assert.throws(() => new S3Backend({ ...base, prefix: 'a/../b' }), (e) => isCofferError(e, 'USAGE'));
    assert.throws(() => new S3Backend({ ...base, bucket: '' }), (e) => isCofferError(e, 'USAGE'));
  });
});

describe('s3Error()', () => {
  const sdk = (name: string, status?: number, extra: Record<string, unknown> = {}) =>
    Object.assign(new Error(`${name} happened`), { name, ...(status ? { $metadata: { httpStatusCode: status } } : {}), ...extra });
  const code = (e: unknown) => s3Error(e, 'read', 'x in s3://b').code;

  it('maps missing keys and buckets to NOT_FOUND', () => {
    assert.equal(code(sdk('NoSuchKey', 404)), 'NOT_FOUND');
    assert.equal(code(sdk('NotFound', 404)), 'NOT_FOUND');
    assert.equal(code(sdk('UnknownError', 404)), 'NOT_FOUND');
    const bucket = s3Error(sdk('NoSuchBucket', 404), 'read', 'x');
    assert.equal(bucket.code, 'NOT_FOUND');
    assert.match(bucket.hint ?? '', /bucket/);
  });
  it('maps refused credentials and permissions to STORAGE_DENIED', () => {
    for (const name of ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken']) assert.equal(code(sdk(name, 403)), 'STORAGE_DENIED');
    assert.equal(code(sdk('Whatever', 403)), 'STORAGE_DENIED');
    assert.equal(code(sdk('CredentialsProviderError')), 'STORAGE_DENIED');
  });
  it('maps 416 and InvalidRange to INVALID_RANGE', () => {
    assert.equal(code(sdk('InvalidRange', 416)), 'INVALID_RANGE');
    assert.equal(code(sdk('Unknown', 416)), 'INVALID_RANGE');
  });
  it('maps 5xx, throttling, timeouts and network errors to the transient STORAGE_UNAVAILABLE', () => {
    for (const e of [
      sdk('InternalError', 500), sdk('ServiceUnavailable', 503), sdk('SlowDown', 503), sdk('Whatever', 502), sdk('TooManyRequests', 429),
      sdk('ThrottlingException', 400), sdk('RequestTimeout', 400), sdk('TimeoutError'),
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED' }),
      Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }),
      Object.assign(new Error('getaddrinfo EAI_AGAIN s3.example.test'), { code: 'EAI_AGAIN' }),
      new Error('socket hang up'),
    ]) {
      const mapped = s3Error(e, 'read', 'x');
      assert.equal(mapped.code, 'STORAGE_UNAVAILABLE', `${e.name}: ${e.message}`);
      assert.ok(mapped.transient);
    }
  });
  it('maps an abort to CANCELLED and anything else to STORAGE_ERROR', () => {
    assert.equal(code(sdk('AbortError')), 'CANCELLED');
    assert.equal(s3Error(sdk('InternalError', 500), 'read', 'x', AbortSignal.abort()).code, 'CANCELLED');
    assert.equal(code(sdk('InvalidBucketName', 400)), 'STORAGE_ERROR');
    assert.match(s3Error(sdk('PermanentRedirect', 301), 'read', 'x').hint ?? '', /region/);
    const skewed = s3Error(sdk('RequestTimeTooSkewed', 403), 'read', 'x');
    assert.equal(skewed.code, 'STORAGE_ERROR');
    assert.match(skewed.hint ?? '', /clock/);
  });
  it('says what failed, where, and what the server said', () => {
    assert.equal(s3Error(sdk('SlowDown', 503), 'write', 'data/ab in s3://b/p').message, 'Cannot write data/ab in s3://b/p: SlowDown (HTTP 503): SlowDown happened');
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED' });
    assert.equal(s3Error(refused, 'read', 'x').message, 'Cannot read x: ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:9');
  });
});
