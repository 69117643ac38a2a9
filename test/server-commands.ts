// The CLI's server-side commands (API clients): run with --json in test/server-cli.test.ts
// against a real server, so test/json-output.test.ts exempts them with that reason.
export const SERVER_COMMANDS = [
  'login', 'logout', 'apply', 'diff', 'get', 'delete', 'history', 'backup now',
  'jobs list', 'jobs show', 'jobs logs', 'jobs cancel', 'jobs wait', 'jobs retry',
  'images', 'browse', 'find', 'restore', 'clone', 'hold', 'release',
  'users list', 'users add', 'users set', 'users remove',
  'tokens list', 'tokens create', 'tokens revoke',
  'audit', 'catalog reconcile', 'expire', 'lock-extend',
  'units list', 'units unavailable', 'units available',
] as const;

// The CLI's verification commands: run with --json in test/verify.test.ts.
export const VERIFY_COMMANDS = ['verify', 'alerts list', 'alerts ack'] as const;
/** Run with --json against a real server in test/compliance.test.ts instead. */
export const COMPLIANCE_COMMANDS = ['restore-test', 'report compliance'] as const;

/** Enrollment, revocation and remote agents and nodes: run with --json in test/pki.test.ts. */
export const PKI_COMMANDS = ['clients add', 'clients revoke', 'nodes add', 'nodes revoke', 'nodes list', 'agent enroll', 'node enroll', 'agent run', 'node run'] as const;
