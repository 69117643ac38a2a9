// One error class for everything a user can cause or meet. Every error carries a code from a
// closed set; `EXIT_CODES` and `HTTP_STATUS` are the only places that map codes to process exit
// codes and HTTP statuses. Messages say what failed and what to do ("Cannot <action>: <state>").

export const ERROR_CODES = [
  'USAGE', //              bad arguments or options
  'INVALID_CONFIG', //     a config or policy file is wrong
  'NOT_FOUND', //          an object, snapshot, key or path does not exist
  'ALREADY_EXISTS', //     e.g. `repo init` on an existing repository
  'WRONG_PASSWORD', //     no key file opens with the given passphrase
  'CORRUPT', //            data failed an integrity check (MAC, hash, structure)
  'UNSUPPORTED', //        unknown format version, algorithm or backend scheme
  'STORAGE_UNAVAILABLE', // transient storage failure (network, 5xx, throttling): may be retried
  'STORAGE_DENIED', //     permission or credential failure: retrying will not help
  'STORAGE_ERROR', //      other permanent storage failure (disk full, invalid name, ...)
  'INVALID_RANGE', //      a ranged read outside the object
  'CONFLICT', //           another process holds what this operation needs
  'CHECK_FAILED', //       `repo check` found problems
  'COMPLIANCE', //         the compliance report found something out of compliance (its answer, not a failure)
  'REFUSED', //            a safety rule stopped the operation (e.g. cross-host restore)
  'WARNINGS', //           the operation completed, with warnings (unreadable or changed files)
  'CANCELLED', //          interrupted by signal or abort
  'PROTOCOL', //           a peer (agent, server) sent something this release does not speak
  'UNAUTHENTICATED', //    not logged in, or the session or token expired or was revoked
  'FORBIDDEN', //          logged in, but the role does not allow this
  'RATE_LIMITED', //       too many attempts (failed logins): wait and try again
  'INTERNAL', //           a bug: please report it
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Process exit codes by error code: 0 ok, 1 error, 2 usage, 3 completed with warnings, 4 not logged in, 5 not allowed, 6 out of compliance. */
export const EXIT_CODES: Record<ErrorCode, number> = {
  USAGE: 2,
  INVALID_CONFIG: 2,
  NOT_FOUND: 1,
  ALREADY_EXISTS: 1,
  WRONG_PASSWORD: 1,
  CORRUPT: 1,
  UNSUPPORTED: 1,
  STORAGE_UNAVAILABLE: 1,
  STORAGE_DENIED: 1,
  STORAGE_ERROR: 1,
  INVALID_RANGE: 1,
  CONFLICT: 1,
  CHECK_FAILED: 1,
  COMPLIANCE: 6,
  REFUSED: 1,
  WARNINGS: 3,
  CANCELLED: 130,
  PROTOCOL: 1,
  UNAUTHENTICATED: 4,
  FORBIDDEN: 5,
  RATE_LIMITED: 1,
  INTERNAL: 1,
};

/** HTTP statuses by error code, for the server's REST API. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  USAGE: 400,
  INVALID_CONFIG: 422,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  WRONG_PASSWORD: 401,
  CORRUPT: 500,
  UNSUPPORTED: 422,
  STORAGE_UNAVAILABLE: 503,
  STORAGE_DENIED: 502,
  STORAGE_ERROR: 502,
  INVALID_RANGE: 416,
  CONFLICT: 409,
  CHECK_FAILED: 500,
  COMPLIANCE: 200,
  REFUSED: 403,
  WARNINGS: 200,
  CANCELLED: 499,
  PROTOCOL: 502,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  RATE_LIMITED: 429,
  INTERNAL: 500,
};

export interface CofferErrorOptions {
  /** What the user can do about it; printed on its own line after the message. */
  hint?: string;
  cause?: unknown;
  /** Structured details for --json output and logs. */
  details?: Record<string, unknown>;
}

export class CofferError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: CofferErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CofferError';
    this.code = code;
    this.hint = options.hint;
    this.details = options.details;
  }

  /** True when retrying the same call may succeed. */
  get transient(): boolean {
    return this.code === 'STORAGE_UNAVAILABLE';
  }

  get exitCode(): number {
    return EXIT_CODES[this.code];
  }

  get httpStatus(): number {
    return HTTP_STATUS[this.code];
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, hint: this.hint, details: this.details };
  }
}

export function isCofferError(e: unknown, code?: ErrorCode): e is CofferError {
  return e instanceof CofferError && (code === undefined || e.code === code);
}

/** Normalises anything thrown into a CofferError at the edges (CLI, HTTP). */
export function toCofferError(e: unknown): CofferError {
  if (e instanceof CofferError) return e;
  if (e instanceof Error && (e.name === 'AbortError' || (e as { code?: string }).code === 'ABORT_ERR')) {
    return new CofferError('CANCELLED', 'Cancelled: the operation was interrupted', { cause: e });
  }
  const message = e instanceof Error ? e.message : String(e);
  return new CofferError('INTERNAL', `Unexpected error: ${message}`, {
    cause: e,
    hint: 'This is a bug in Coffer. Run again with --debug and report the output.',
  });
}

/** Throws CANCELLED if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw new CofferError('CANCELLED', 'Cancelled: the operation was interrupted', { cause: signal.reason });
  }
}
