// Auth against a real SQLite catalog in a temporary file, with a fake clock shared by the catalog
// and the code under test.

import { describe, it } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { openCatalog, type Catalog } from '../catalog/catalog.ts';
import { tempDir } from '../testing/tmp.ts';
import {
  ALL_GRANTS, NO_GRANTS, ROLES, authenticate, createApiToken, ensureInitialAdmin, hashPassword, login, logout,
  mayBrowse, mayRestore, needsRehash, parseGrants, revokeToken, roleCovers, tokenHash, verifyPassword,
  type Principal,
} from './auth.ts';
import { expectCode } from '../testing/errors.ts';

const T0 = Date.UTC(2026, 11, 1, 12, 0, 0);
const PASSWORD = 'correct horse battery staple';
// Cheap parameters where a test hashes many passwords; login() itself is measured with defaults.
const CHEAP = { ln: 4, r: 8, p: 1 };

interface Fixture {
  catalog: Catalog;
  dbPath: string;
  dir: string;
  clock: { t: number; now: () => number };
}

async function fixture(t: TestContext): Promise<Fixture> {
  const dir = await tempDir(t);
  const clock = { t: T0, now: () => clock.t };
  const dbPath = join(dir, 'catalog.db');
  const catalog = await openCatalog(dbPath, { now: clock.now });
  t.after(() => catalog.close());
  return { catalog, dbPath, dir, clock };
}

async function addUser(f: Fixture, name: string, role: string, grants?: Record<string, unknown>): Promise<void> {
  await f.catalog.users.create({ name, role, passwordHash: await hashPassword(PASSWORD), ...(grants === undefined ? {} : { grants }) });
}


/** Every row of the audit table as text, to look for leaked secrets. */
function auditText(dbPath: string): string {
  const db = new DatabaseSync(dbPath, { readOnly: true });
  try {
    return JSON.stringify(db.prepare('SELECT * FROM audit').all());
  } finally {
    db.close();
  }
}

async function loginAs(f: Fixture, user: string, source = '10.0.0.1') {
  return login(f.catalog, { user, password: PASSWORD, source }, { now: f.clock.now });
}

describe('passwords', () => {
  it('hashPassword() writes a PHC string that verifyPassword() accepts and a wrong password does not', async () => {
    const stored = await hashPassword(PASSWORD);
    assert.match(stored, /^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
    assert.equal(await verifyPassword(PASSWORD, stored), true);
    assert.equal(await verifyPassword(`${PASSWORD}!`, stored), false);
    assert.equal(await verifyPassword('', stored), false);
    assert.notEqual(await hashPassword(PASSWORD), stored, 'salted');
  });

  it('verifyPassword() reads the parameters from the stored string, and treats the password in NFC', async () => {
    const cheap = await hashPassword('Café au lait, très chaud', { params: CHEAP });
    assert.match(cheap, /^\$scrypt\$ln=4,r=8,p=1\$/);
    assert.equal(await verifyPassword('Café au lait, très chaud', cheap), true);
    assert.equal(await verifyPassword('Café au lait, très chaud'.normalize('NFD'), cheap), true);
  });

  it('verifyPassword() is false for a missing or malformed hash, never an error', async () => {
    assert.equal(await verifyPassword(PASSWORD, undefined), false);
    assert.equal(await verifyPassword(PASSWORD, 'plain text'), false);
    assert.equal(await verifyPassword(PASSWORD, '$scrypt$ln=40,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), false);
  });

  it('needsRehash() is true for weaker or other parameters and malformed strings, false for the defaults', async () => {
    assert.equal(needsRehash(await hashPassword(PASSWORD)), false);
    const cheap = await hashPassword(PASSWORD, { params: CHEAP });
    assert.equal(needsRehash(cheap), true);
    assert.equal(needsRehash(cheap, CHEAP), false);
    assert.equal(needsRehash(undefined), true);
    assert.equal(needsRehash('$scrypt$garbage'), true);
  });

  it('hashPassword() refuses a password shorter than 12 characters with a USAGE error that says so', async () => {
    const e = await expectCode(hashPassword('short'), 'USAGE', /5 characters, fewer than 12/);
    assert.match(e.hint ?? '', /at least 12/);
    await hashPassword('twelve chars', { params: CHEAP }); // exactly 12
  });

  it('login() raises an old, weaker hash to the current parameters', async (t) => {
    const f = await fixture(t);
    await f.catalog.users.create({ name: 'old', role: 'operator', passwordHash: await hashPassword(PASSWORD, { params: CHEAP }) });
    await loginAs(f, 'old');
    const after = (await f.catalog.users.get('old')).passwordHash!;
    assert.match(after, /^\$scrypt\$ln=15,/);
    assert.equal(await verifyPassword(PASSWORD, after), true);
  });
});

describe('roles and grants', () => {
  it('roleCovers() orders admin > operator > restore and auditor, which are incomparable', () => {
    for (const r of ROLES) assert.equal(roleCovers('admin', r), true);
    assert.equal(roleCovers('operator', 'admin'), false);
    assert.equal(roleCovers('operator', 'restore'), true);
    assert.equal(roleCovers('operator', 'auditor'), true);
    assert.equal(roleCovers('restore', 'auditor'), false);
    assert.equal(roleCovers('auditor', 'restore'), false);
    assert.equal(roleCovers('restore', 'operator'), false);
  });

  const restorer = (grants: unknown) => ({ role: 'restore' as const, grants: parseGrants(grants) });

  it('mayRestore() lets a restore operator restore a granted client into a permitted directory only', () => {
    const p = restorer({ clients: ['web1', 'db1'], destinations: [{ client: 'web1', paths: ['/srv/restore'] }, { client: 'scratch', paths: ['/tmp/r', '/data/in'] }] });
    assert.equal(mayRestore(p, { fromClient: 'web1', toClient: 'web1', toPath: '/srv/restore' }).allowed, true);
    assert.equal(mayRestore(p, { fromClient: 'db1', toClient: 'scratch', toPath: '/data/in/db1/2026' }).allowed, true);
    const notGranted = mayRestore(p, { fromClient: 'mail1', toClient: 'web1', toPath: '/srv/restore' });
    assert.equal(notGranted.allowed, false);
    assert.match(notGranted.reason, /mail1 is not among the clients granted/);
    assert.equal(mayRestore(p, { fromClient: 'web1', toClient: 'db1', toPath: '/srv/restore' }).allowed, false);
    const outside = mayRestore(p, { fromClient: 'web1', toClient: 'web1', toPath: '/srv/restored' });
    assert.equal(outside.allowed, false, 'a sibling sharing a prefix is not inside');
    assert.match(outside.reason, /outside the permitted destinations \(\/srv\/restore\)/);
    assert.equal(mayRestore(p, { fromClient: 'web1', toClient: 'web1', toPath: '/srv/restore/../../etc' }).allowed, false);
    assert.equal(mayRestore(p, { fromClient: 'web1', toClient: 'web1', toPath: 'srv/restore' }).allowed, false);
  });

  it('mayRestore() honours "*" grants, Windows paths without case, and roles', () => {
    assert.equal(mayRestore(restorer({ clients: '*', destinations: '*' }), { fromClient: 'any', toClient: 'other', toPath: '/' }).allowed, true);
    const win = restorer({ clients: ['pc1'], destinations: [{ client: 'pc1', paths: ['C:\\Restore'] }] });
    assert.equal(mayRestore(win, { fromClient: 'pc1', toClient: 'pc1', toPath: 'c:/restore/Docs' }).allowed, true);
    assert.equal(mayRestore(win, { fromClient: 'pc1', toClient: 'pc1', toPath: 'D:\\Restore' }).allowed, false);
    assert.equal(mayRestore(restorer({}), { fromClient: 'pc1', toClient: 'pc1', toPath: '/x' }).allowed, false);
    assert.equal(mayRestore({ role: 'operator', grants: ALL_GRANTS }, { fromClient: 'a', toClient: 'b', toPath: '/x' }).allowed, true);
    assert.equal(mayRestore({ role: 'auditor', grants: ALL_GRANTS }, { fromClient: 'a', toClient: 'a', toPath: '/x' }).allowed, false);
    assert.equal(mayBrowse({ role: 'auditor', grants: NO_GRANTS }, 'a').allowed, true);
    assert.equal(mayBrowse(restorer({ clients: ['b'] }), 'a').allowed, false);
  });

  it('parseGrants() names what is wrong', () => {
    assert.throws(() => parseGrants({ clients: 'web1' }), /clients is not "\*" or a list/);
    assert.throws(() => parseGrants({ destinations: [{ client: 'a', paths: ['relative'] }] }), /destinations\[0\]\.paths\[0\] is not an absolute path/);
    assert.throws(() => parseGrants({ destinations: [{ client: 'a', paths: ['/a/../b'] }] }), /\.\. segments/);
    assert.throws(() => parseGrants({ client: ['a'] }), /unknown field "client"/);
  });
});

describe('login and sessions', () => {
  it('login() opens a 12-hour session that authenticate() accepts until it expires', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'operator');
    const session = await loginAs(f, 'alice');
    assert.match(session.token, /^cof_[A-Za-z0-9_-]{43}$/);
    assert.equal(session.role, 'operator');
    assert.equal(session.expires, T0 + 12 * 3_600_000);
    const stored = await f.catalog.tokens.get(session.tokenId);
    assert.equal(stored.hash, tokenHash(session.token));
    assert.equal(stored.kind, 'session');
    assert.ok(!readFileSync(f.dbPath).includes(session.token), 'the secret is not in the catalog file');

    const p = await authenticate(f.catalog, `Bearer ${session.token}`, { now: f.clock.now });
    assert.deepEqual(p, { user: 'alice', role: 'operator', grants: ALL_GRANTS, tokenId: session.tokenId, tokenKind: 'session', expires: session.expires });

    f.clock.t = session.expires - 1;
    await authenticate(f.catalog, `Bearer ${session.token}`, { now: f.clock.now });
    f.clock.t = session.expires;
    const e = await expectCode(authenticate(f.catalog, `Bearer ${session.token}`, { now: f.clock.now }), 'UNAUTHENTICATED', /session expired at/);
    assert.match(e.hint ?? '', /coffer login --server URL --user NAME/);
  });

  it('authenticate() refuses a missing, malformed or unknown token with a hint to log in', async (t) => {
    const f = await fixture(t);
    for (const header of [undefined, '', 'Basic YWxpY2U6eA==', 'Bearer', 'Bearer cof_short', `Bearer ${'x'.repeat(47)}`, `Bearer cof_${'A'.repeat(43)}`]) {
      const e = await expectCode(authenticate(f.catalog, header, { now: f.clock.now }), 'UNAUTHENTICATED');
      assert.match(e.hint ?? '', /coffer login/);
    }
    await expectCode(authenticate(f.catalog, `Bearer cof_${'A'.repeat(43)}`), 'UNAUTHENTICATED', /not known/);
  });

  it('a wrong password and an unknown user get the same message and take about the same time', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'operator');
    const time = async (user: string) => {
      const start = performance.now();
      const e = await expectCode(login(f.catalog, { user, password: 'not the password', source: `10.0.0.${user.length}` }, { now: f.clock.now }), 'UNAUTHENTICATED');
      return { message: e.message, hint: e.hint, ms: performance.now() - start };
    };
    await time('warmup-user');
    // Interleaved, four of each, compared by their fastest: other work on the machine only ever
    // adds time, so the minimum is what the code itself takes (averages of two failed under load).
    const wrong: Array<{ message: string; hint?: string; ms: number }> = [];
    const unknown: typeof wrong = [];
    for (let i = 0; i < 4; i++) {
      wrong.push(await time('alice'));
      unknown.push(await time('mallory'));
    }
    assert.equal(wrong[0]!.message, unknown[0]!.message);
    assert.equal(wrong[0]!.hint, unknown[0]!.hint);
    const min = (xs: { ms: number }[]) => Math.min(...xs.map((x) => x.ms));
    // Both run scrypt with the same parameters; without the dummy hash the unknown user took < 5 ms.
    assert.ok(min(unknown) > 0.5 * min(wrong) && min(unknown) < 2 * min(wrong), `wrong password ${min(wrong)} ms, unknown user ${min(unknown)} ms (fastest of four)`);
  });

  it('a disabled user cannot log in, and its sessions stop working at once', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'bob', 'operator');
    const session = await loginAs(f, 'bob');
    await f.catalog.users.update('bob', { disabled: true });
    await expectCode(authenticate(f.catalog, `Bearer ${session.token}`, { now: f.clock.now }), 'UNAUTHENTICATED', /user bob is disabled/);
    await expectCode(loginAs(f, 'bob'), 'UNAUTHENTICATED', /user name or the password is wrong/);
    await f.catalog.users.update('bob', { disabled: false });
    await authenticate(f.catalog, `Bearer ${session.token}`, { now: f.clock.now });
    await f.catalog.users.remove('bob');
    await expectCode(authenticate(f.catalog, `Bearer ${session.token}`, { now: f.clock.now }), 'UNAUTHENTICATED');
  });

  it('authenticate() records last_used at most once a minute', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'operator');
    const s = await loginAs(f, 'alice');
    const header = `Bearer ${s.token}`;
    await authenticate(f.catalog, header, { now: f.clock.now });
    assert.equal((await f.catalog.tokens.get(s.tokenId)).lastUsed, T0);
    f.clock.t = T0 + 59_000;
    await authenticate(f.catalog, header, { now: f.clock.now });
    assert.equal((await f.catalog.tokens.get(s.tokenId)).lastUsed, T0);
    f.clock.t = T0 + 60_000;
    await authenticate(f.catalog, header, { now: f.clock.now });
    assert.equal((await f.catalog.tokens.get(s.tokenId)).lastUsed, T0 + 60_000);
  });

  it('logout() ends the session', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'operator');
    const s = await loginAs(f, 'alice');
    const p = await authenticate(f.catalog, `Bearer ${s.token}`, { now: f.clock.now });
    await logout(f.catalog, p, { source: '10.0.0.1', now: f.clock.now });
    await expectCode(authenticate(f.catalog, `Bearer ${s.token}`, { now: f.clock.now }), 'UNAUTHENTICATED', /revoked/);
  });
});

describe('failed-login rate limiting', () => {
  it('after 5 failures a user name is locked with "try again in N s", growing, and a success resets it', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'operator');
    // Each attempt from another address, so only the user name's record counts.
    let n = 0;
    const attempt = (password: string) => login(f.catalog, { user: 'alice', password, source: `10.1.0.${n++}` }, { now: f.clock.now });
    for (let i = 0; i < 4; i++) await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED');
    await loginAs(f, 'alice', '10.2.0.1'); // four failures: not locked yet; the success resets
    for (let i = 0; i < 5; i++) await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED');
    const locked = await expectCode(attempt(PASSWORD), 'RATE_LIMITED', /try again in 30 s$/);
    assert.equal(locked.details?.retryAfterS, 30);
    f.clock.t += 10_000;
    await expectCode(attempt(PASSWORD), 'RATE_LIMITED', /try again in 20 s$/);
    f.clock.t += 20_000;
    await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED'); // the 6th failure: 60 s
    await expectCode(attempt(PASSWORD), 'RATE_LIMITED', /try again in 60 s$/);
    f.clock.t += 60_000;
    await attempt(PASSWORD);
    await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED'); // counting starts again
    await attempt(PASSWORD);
  });

  it('the lock doubles up to 15 minutes while failures go on, and is forgotten 15 minutes after the last lock', async (t) => {
    const f = await fixture(t);
    await f.catalog.users.create({ name: 'carol', role: 'auditor', passwordHash: await hashPassword(PASSWORD, { params: CHEAP }) });
    const attempt = (password: string) => login(f.catalog, { user: 'carol', password, source: '10.3.0.1' }, { now: f.clock.now, params: CHEAP });
    for (let i = 0; i < 4; i++) await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED');
    const locks: number[] = [];
    for (let i = 0; i < 8; i++) {
      await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED');
      const e = await expectCode(attempt(PASSWORD), 'RATE_LIMITED');
      locks.push(e.details!.retryAfterS as number);
      f.clock.t += locks.at(-1)! * 1000; // retry as soon as the lock ends
    }
    assert.deepEqual(locks, [30, 60, 120, 240, 480, 900, 900, 900]);
    f.clock.t += 15 * 60_000 - 1;
    await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED');
    await expectCode(attempt(PASSWORD), 'RATE_LIMITED', /try again in 900 s/);
    f.clock.t += 900_000 + 15 * 60_000;
    await expectCode(attempt('wrong password!'), 'UNAUTHENTICATED'); // a new run: the first failure
    await attempt(PASSWORD);
  });

  it('a source address is locked after 5 failures whatever the user names, with the same message', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'operator');
    for (let i = 0; i < 5; i++) {
      await expectCode(login(f.catalog, { user: `guess${i}`, password: 'whatever it is', source: '203.0.113.9' }, { now: f.clock.now }), 'UNAUTHENTICATED');
    }
    await expectCode(login(f.catalog, { user: 'alice', password: PASSWORD, source: '203.0.113.9' }, { now: f.clock.now }), 'RATE_LIMITED', /try again in 30 s/);
    await loginAs(f, 'alice', '198.51.100.1'); // another address is not affected
  });
});

describe('API tokens', () => {
  async function principal(f: Fixture, user: string): Promise<Principal> {
    const s = await loginAs(f, user);
    return authenticate(f.catalog, `Bearer ${s.token}`, { now: f.clock.now });
  }

  it('createApiToken() makes a token shown once, stored hashed, that authenticates with its role until it expires', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'admin');
    const admin = await principal(f, 'alice');
    const created = await createApiToken(f.catalog, admin, { name: 'ci', role: 'operator', expiresIn: '30d' }, { source: '10.0.0.1', now: f.clock.now });
    assert.match(created.token, /^cof_[A-Za-z0-9_-]{43}$/);
    assert.equal(created.expires, T0 + 30 * 86_400_000);
    const stored = await f.catalog.tokens.get(created.id);
    assert.equal(stored.hash, tokenHash(created.token));
    assert.equal(stored.kind, 'api');
    const p = await authenticate(f.catalog, `Bearer ${created.token}`, { now: f.clock.now });
    assert.equal(p.role, 'operator');
    assert.equal(p.tokenKind, 'api');
    f.clock.t = created.expires;
    await expectCode(authenticate(f.catalog, `Bearer ${created.token}`, { now: f.clock.now }), 'UNAUTHENTICATED', /API token ci expired/);
  });

  it('a token role may not exceed its creator\'s role', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'op', 'operator');
    await addUser(f, 'rest', 'restore', { clients: ['web1'], destinations: [{ client: 'web1', paths: ['/restore'] }] });
    await addUser(f, 'aud', 'auditor');
    const op = await principal(f, 'op');
    const rest = await principal(f, 'rest');
    const aud = await principal(f, 'aud');
    await expectCode(createApiToken(f.catalog, op, { name: 'x', role: 'admin' }, { now: f.clock.now }), 'FORBIDDEN', /your role operator does not include it/);
    await expectCode(createApiToken(f.catalog, rest, { name: 'x', role: 'auditor' }, { now: f.clock.now }), 'FORBIDDEN');
    await expectCode(createApiToken(f.catalog, aud, { name: 'x', role: 'restore' }, { now: f.clock.now }), 'FORBIDDEN');
    await expectCode(createApiToken(f.catalog, op, { name: 'x', role: 'superuser' }, { now: f.clock.now }), 'USAGE', /no such role/);
    await expectCode(createApiToken(f.catalog, op, { name: 'x', expiresIn: '2y' }, { now: f.clock.now }), 'USAGE', /longer than the longest allowed/);
    const asAuditor = await createApiToken(f.catalog, op, { name: 'read-only', role: 'auditor' }, { now: f.clock.now });
    assert.equal((await authenticate(f.catalog, `Bearer ${asAuditor.token}`, { now: f.clock.now })).role, 'auditor');
    const restTok = await createApiToken(f.catalog, rest, { name: 'mine' }, { now: f.clock.now });
    const rp = await authenticate(f.catalog, `Bearer ${restTok.token}`, { now: f.clock.now });
    assert.equal(rp.role, 'restore');
    assert.deepEqual(rp.grants, { clients: ['web1'], destinations: [{ client: 'web1', paths: ['/restore'] }] });
    // The operator's token stops working when the operator is demoted below it.
    await f.catalog.users.update('op', { role: 'restore' });
    await expectCode(authenticate(f.catalog, `Bearer ${asAuditor.token}`, { now: f.clock.now }), 'UNAUTHENTICATED', /more than the user op now has/);
  });

  it('revokeToken() is refused to other users, and a revoked token is refused at once', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'admin');
    await addUser(f, 'bob', 'operator');
    const bob = await principal(f, 'bob');
    const alice = await principal(f, 'alice');
    const tok = await createApiToken(f.catalog, alice, { name: 'backup-bot' }, { now: f.clock.now });
    await expectCode(revokeToken(f.catalog, bob, tok.id, { now: f.clock.now }), 'FORBIDDEN', /belongs to another user/);
    await authenticate(f.catalog, `Bearer ${tok.token}`, { now: f.clock.now });
    await revokeToken(f.catalog, alice, tok.id, { source: '10.0.0.1', now: f.clock.now });
    await expectCode(authenticate(f.catalog, `Bearer ${tok.token}`, { now: f.clock.now }), 'UNAUTHENTICATED', /API token backup-bot was revoked/);
    const bobTok = await createApiToken(f.catalog, bob, { name: 'b' }, { now: f.clock.now });
    await revokeToken(f.catalog, alice, bobTok.id, { now: f.clock.now }); // an admin may revoke anyone's
    await expectCode(revokeToken(f.catalog, alice, 'NOPE', { now: f.clock.now }), 'NOT_FOUND');
  });
});

describe('audit', () => {
  it('logins, failures, lockouts and token changes are audited, and no secret is in the audit table', async (t) => {
    const f = await fixture(t);
    await addUser(f, 'alice', 'admin');
    const secrets: string[] = [PASSWORD];
    const s = await loginAs(f, 'alice');
    secrets.push(s.token);
    const wrong = 'a wrong password here';
    secrets.push(wrong);
    for (let i = 0; i < 6; i++) await login(f.catalog, { user: 'alice', password: wrong, source: '192.0.2.7' }, { now: f.clock.now }).catch(() => {});
    await login(f.catalog, { user: 'nobody', password: wrong, source: '192.0.2.8' }, { now: f.clock.now }).catch(() => {});
    const p = await authenticate(f.catalog, `Bearer ${s.token}`, { now: f.clock.now });
    const tok = await createApiToken(f.catalog, p, { name: 'ci' }, { source: '10.0.0.1', now: f.clock.now });
    secrets.push(tok.token);
    await revokeToken(f.catalog, p, tok.id, { source: '10.0.0.1', now: f.clock.now });

    const entries = (await f.catalog.audit.list({ limit: 100 })).items.reverse();
    const summary = entries.map((e) => `${e.action} ${e.actor} ${e.outcome} ${e.source}`);
    assert.deepEqual(summary, [
      'login alice ok 10.0.0.1',
      ...Array(5).fill('login alice failed 192.0.2.7'),
      'login alice denied 192.0.2.7',
      'login nobody failed 192.0.2.8',
      'token.create alice ok 10.0.0.1',
      'token.revoke alice ok 10.0.0.1',
    ]);
    assert.equal(entries[1]!.details?.reason, 'wrong password');
    assert.equal(entries[7]!.details?.reason, 'unknown user');
    assert.equal(entries[8]!.target, `token/${tok.id}`);
    const text = auditText(f.dbPath);
    for (const secret of secrets) {
      assert.ok(!text.includes(secret), `the audit table holds a secret: ${secret.slice(0, 6)}...`);
      assert.ok(!text.includes(tokenHash(secret)), 'the audit table holds a token hash');
    }
  });
});

describe('ensureInitialAdmin()', () => {
  it('creates admin with a random password in a 0600 file on first start, and nothing afterwards', async (t) => {
    const f = await fixture(t);
    const first = await ensureInitialAdmin(f.catalog, { dataDir: f.dir });
    assert.equal(first.created, true);
    assert.ok(first.created && first.password !== undefined);
    assert.match(first.password, /^[A-Za-z0-9_-]{24}$/);
    const file = join(f.dir, 'initial-admin-password');
    assert.equal(first.passwordFile, file);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(readFileSync(file, 'utf8'), `${first.password}\n`);
    const admin = await f.catalog.users.get('admin');
    assert.equal(admin.role, 'admin');
    const s = await login(f.catalog, { user: 'admin', password: first.password, source: 'local' }, { now: f.clock.now });
    assert.equal(s.role, 'admin');
    assert.ok(!auditText(f.dbPath).includes(first.password));

    writeFileSync(file, 'changed\n'); // the user saved it; a second start must not touch it
    assert.deepEqual(await ensureInitialAdmin(f.catalog, { dataDir: f.dir }), { created: false });
    assert.equal(readFileSync(file, 'utf8'), 'changed\n');
  });

  it('uses a given password (COFFER_ADMIN_PASSWORD) and writes no file; a short one is refused', async (t) => {
    const f = await fixture(t);
    await expectCode(ensureInitialAdmin(f.catalog, { dataDir: f.dir, password: 'short' }), 'USAGE', /fewer than 12/);
    const made = await ensureInitialAdmin(f.catalog, { dataDir: f.dir, password: PASSWORD });
    assert.deepEqual(made, { created: true, user: 'admin', password: undefined, passwordFile: undefined });
    assert.throws(() => statSync(join(f.dir, 'initial-admin-password')), /ENOENT/);
    await loginAs(f, 'admin');
  });

  it('refuses to overwrite a leftover password file', async (t) => {
    const f = await fixture(t);
    writeFileSync(join(f.dir, 'initial-admin-password'), 'old\n', { mode: 0o600 });
    await expectCode(ensureInitialAdmin(f.catalog, { dataDir: f.dir }), 'ALREADY_EXISTS', /exists although the catalog has no users/);
    assert.equal((await f.catalog.users.list()).items.length, 0);
  });
});
