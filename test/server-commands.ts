// The CLI's server-side commands (API clients): run with --json in test/server-cli.test.ts
// against a real server, so test/json-output.test.ts exempts them with that reason.
export const SERVER_COMMANDS = [
  'login', 'logout', 'apply', 'diff', 'get', 'delete', 'history', 'backup now',
  'jobs list', 'jobs show', 'jobs logs', 'jobs cancel', 'jobs wait', 'jobs retry',
  'images', 'browse', 'find', 'restore', 'clone', 'hold', 'release',
  'users list', 'users add', 'users set', 'users remove',
  'tokens list', 'tokens create', 'tokens revoke',
  'audit', 'catalog reconcile', 'expire', 'lock-extend',
] as const;
