// A Policy's restoreTests: accepted as written (and given back unchanged by the canonical
// export), and each mistake reported with its file, line, column and what to write instead; the
// scratch place check that the schema and the agent share (scratch-path.ts).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { isCofferError } from '../core/errors.ts';
import { parseDocuments, toYaml } from './index.ts';
import type { Problem } from './problems.ts';
import { scratchPathProblem } from './scratch-path.ts';

const policy = (restoreTests: string) => `apiVersion: coffer/v1
kind: Policy
metadata: { name: db }
spec:
  clients: [db1]
  selections: [{ paths: [/var/lib/postgresql] }]
  schedules: [{ name: nightly, level: full, calendar: "0 1 * * *" }]
  lifecycle: gold
  rto: 4h
  restoreTests: ${restoreTests}
`;

function problemsOf(text: string): Problem[] {
  try {
    parseDocuments(text, { file: 'db.yaml' });
  } catch (e) {
    assert.ok(isCofferError(e, 'INVALID_CONFIG'), String(e));
    return e.details!.problems as Problem[];
  }
  assert.fail('accepted');
}

describe('restoreTests', () => {
  it('accepts every or a calendar, a scratch client and place, a sample or all, and exports them as written', () => {
    for (const rt of ['{ every: 7d }', '{ calendar: "0 3 * * 0", timezone: Europe/Berlin, client: scratch1, path: /srv/restore-test, sample: 100, missed: skip }', '{ every: 30d, sample: all }']) {
      const [doc] = parseDocuments(policy(rt), { file: 'db.yaml' });
      const again = parseDocuments(toYaml([doc!.document]), { file: 'again.yaml' });
      assert.deepEqual(again[0]!.document, doc!.document, rt);
    }
  });

  it('names what is wrong, where, and what to write instead', () => {
    const cases: Array<[string, string, RegExp]> = [
      ['{ path: /var/tmp/x }', 'spec.restoreTests', /says neither when nor how often restore tests run/],
      ['{ every: 7d, calendar: "0 3 * * 0" }', 'spec.restoreTests.every', /calendar or every, not both/],
      ['{ every: 30m }', 'spec.restoreTests.every', /.+/],
      ['{ every: 7d, timezone: UTC }', 'spec.restoreTests.timezone', /applies to a calendar only/],
      ['{ every: 7d, path: / }', 'spec.restoreTests.path', /is the root directory: a restore test never restores there/],
      ['{ every: 7d, path: /usr/local/scratch }', 'spec.restoreTests.path', /inside the system directory \/usr/],
      ['{ every: 7d, path: /var/lib/coffer }', 'spec.restoreTests.path', /inside the system directory \/var\/lib/],
      ['{ every: 7d, path: /home }', 'spec.restoreTests.path', /"\/home" is a system directory: a restore test needs a directory of its own below it/],
      ['{ every: 7d, path: scratch }', 'spec.restoreTests.path', /is not an absolute path/],
      ['{ every: 7d, sample: 0 }', 'spec.restoreTests.sample', /.+/],
      ['{ every: 7d, sample: some }', 'spec.restoreTests.sample', /expected a number of files or "all", got the text "some"/],
      ['{ every: 7d, clients: [a] }', 'spec.restoreTests.clients', /unknown field; did you mean "client"/],
    ];
    for (const [rt, path, message] of cases) {
      const [p, ...more] = problemsOf(policy(rt));
      assert.equal(more.length, 0, `${rt}: ${JSON.stringify(more)}`);
      assert.equal(p!.path.startsWith(path), true, `${rt}: ${JSON.stringify(p)}`);
      assert.match(`${p!.message} ${p!.hint ?? ''}`, message, rt);
      assert.equal(p!.file, 'db.yaml');
      assert.equal(p!.line, 10, rt);
      assert.ok(p!.column! > 1, rt);
    }
  });

  it('scratchPathProblem() refuses the root, system directories and what is inside the system trees, not a place of its own', () => {
    for (const ok of ['/var/tmp/coffer-restore-test', '/tmp/rt', '/srv/restore-test', '/home/backup/scratch', '/mnt/scratch/x', '/opt/rt']) assert.equal(scratchPathProblem(ok), undefined, ok);
    for (const bad of ['/', '/etc', '/etc/x', '/usr', '/usr/local/x', '/lib64/x', '/libx32', '/proc/1', '/var', '/var/tmp', '/var/log/x', '/home', '/tmp', '/root', '/boot/x']) assert.ok(scratchPathProblem(bad), bad);
  });
});
