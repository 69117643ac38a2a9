import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isCofferError, type CofferError } from '../core/errors.ts';
import { tempDir } from '../testing/tmp.ts';
import { loadDocuments, normalize, parseDocuments, toJson, toYaml } from './documents.ts';
import { EXAMPLE_GOLD, EXAMPLE_SITE } from './examples.ts';
import type { Problem } from './problems.ts';
import type { LifecycleDocument, StorageUnitDocument } from './schemas.ts';

/** "line:col" (1-based) of the n-th occurrence of `needle` in `text`. */
function at(text: string, needle: string, nth = 1): string {
  let i = -1;
  for (let k = 0; k < nth; k++) {
    i = text.indexOf(needle, i + 1);
    assert.ok(i >= 0, `${needle} occurs ${nth} times`);
  }
  const before = text.slice(0, i).split('\n');
  return `${before.length}:${before[before.length - 1]!.length + 1}`;
}

/** The error parseDocuments() throws for `text` (as file site.yaml). */
function errorOf(text: string, options: Parameters<typeof parseDocuments>[1] = {}): CofferError {
  try {
    parseDocuments(text, { file: 'site.yaml', ...options });
  } catch (e) {
    assert.ok(isCofferError(e, 'INVALID_CONFIG'), `expected INVALID_CONFIG, got ${String(e)}`);
    return e;
  }
  assert.fail('the documents were accepted');
}

function problems(e: CofferError): Problem[] {
  return e.details!.problems as Problem[];
}

describe('parseDocuments()', () => {
  it('accepts the documents of issue #9 exactly as written', () => {
    const docs = parseDocuments(EXAMPLE_SITE, { file: 'site.yaml' }).map((d) => d.document);
    assert.deepEqual(docs, [
      { apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: { name: 'primary' }, spec: { url: '/var/lib/coffer/primary', maxJobs: 4 } },
      { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'standard' }, spec: { copies: [{ operation: 'backup', storageUnit: 'primary', retention: '30d' }] } },
      { apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: { name: 'long-term' }, spec: { copies: [{ operation: 'backup', storageUnit: 'primary', retention: '7y' }] } },
      {
        apiVersion: 'coffer/v1',
        kind: 'Policy',
        metadata: { name: 'web-server', labels: { compliance: 'sox', owner: 'web-team' } },
        spec: {
          clients: ['web01'],
          selections: [
            { paths: ['/srv/www', '/etc'], exclude: ['*.tmp', '/srv/www/cache'] },
            { command: 'pg_dump shop', filename: 'shop.sql', pre: 'psql -c CHECKPOINT shop' },
          ],
          schedules: [
            { name: 'daily', level: 'incremental', calendar: '0 1 * * *', window: { start: '01:00', duration: '6h' } },
            { name: 'weekly', level: 'full', calendar: '0 2 * * 0', lifecycle: 'long-term' },
          ],
          lifecycle: 'standard',
          rpo: '24h',
          rto: '4h',
          maxStreams: 2,
        },
      },
    ]);
  });

  it('accepts the set of issue #9 with its references checked', () => {
    const warnings: Problem[] = [];
    assert.equal(parseDocuments(EXAMPLE_SITE, { file: 'site.yaml', references: { warnings } }).length, 4);
    assert.deepEqual(warnings, []);
  });

  it('accepts the gold lifecycle (backup, duplicate with a window, stage after 30d from offsite)', () => {
    const [doc] = parseDocuments(EXAMPLE_GOLD).map((d) => d.document);
    assert.deepEqual(doc, {
      apiVersion: 'coffer/v1',
      kind: 'Lifecycle',
      metadata: { name: 'gold' },
      spec: {
        copies: [
          { operation: 'backup', storageUnit: 'primary', retention: '14d' },
          { operation: 'duplicate', storageUnit: 'offsite', retention: '1y', window: { start: '06:00', duration: '12h' } },
          { operation: 'stage', storageUnit: 'archive', retention: '7y', after: '30d', from: 'offsite' },
        ],
      },
    });
  });

  it('accepts every:, timezone, missed, passwordFrom, credentialsFrom, immutable, priority and the governance fields', () => {
    const text = `apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: offsite }
spec:
  url: s3://coffer-backups/site-a?endpoint=https://s3.example.com:9000
  passwordFrom: env:COFFER_OFFSITE_PASSWORD
  credentialsFrom: { accessKeyId: env:S3_KEY_ID, secretAccessKey: file:/etc/coffer/s3-secret }
  offsite: true
  immutable: true
  priority: 10
---
apiVersion: coffer/v1
kind: Policy
metadata: { name: erp }
spec:
  clients: [erp01, erp02]
  selections: [{ paths: [/var/lib/erp] }]
  schedules:
    - { name: often, level: incremental, every: 12h, timezone: Europe/Berlin, missed: skip, lifecycle: gold }
  owner: finance-it
  purpose: Ledger data; the only copy of invoices before they reach the archive.
  recovery: Rebuild erp01 from the image, restore /var/lib/erp, run erp-reindex (runbook ERP-7).
  compliance: [sox, gobd]
  offsiteRequired: true
  restoreRequesters: [finance-it, oncall]
  expiryApprovers: [cfo-office]
---
apiVersion: coffer/v1
kind: Client
metadata: { name: erp01, labels: { site: a } }
spec: { maxStreams: 3 }
`;
    const docs = parseDocuments(text).map((d) => d.document);
    assert.equal(docs.length, 3);
    assert.deepEqual(docs[0]!.spec, {
      url: 's3://coffer-backups/site-a?endpoint=https://s3.example.com:9000',
      passwordFrom: 'env:COFFER_OFFSITE_PASSWORD',
      offsite: true,
      immutable: true,
      priority: 10,
      credentialsFrom: { accessKeyId: 'env:S3_KEY_ID', secretAccessKey: 'file:/etc/coffer/s3-secret' },
    });
    assert.equal(docs[1]!.kind === 'Policy' && docs[1]!.spec.schedules[0]!.every, '12h');
  });

  it('reads a JSON list of documents (what get -o json prints for several)', () => {
    const docs = parseDocuments(EXAMPLE_SITE).map((d) => d.document);
    assert.deepEqual(parseDocuments(toJson(docs)).map((d) => d.document), docs);
    assert.deepEqual(parseDocuments(toJson(docs[0]!)).map((d) => d.document), [docs[0]]);
  });

  it('leaves out empty documents (a stray --- or only comments)', () => {
    assert.equal(parseDocuments(`---\n# nothing\n---\n${EXAMPLE_GOLD}---\n`).length, 1);
  });
});

describe('parseDocuments() problems', () => {
  it('bad YAML: file, line and column of the syntax error', () => {
    const text = 'apiVersion: coffer/v1\nkind: StorageUnit\nmetadata: { name: x\nspec:\n  url: /x\n';
    assert.match(errorOf(text).message, /^Cannot apply site\.yaml: site\.yaml:4:1: YAML: flow map .* end with a \}/);
  });

  it('an unknown kind, with what was meant', () => {
    const text = EXAMPLE_SITE.replace('kind: Policy', 'kind: Polcy');
    assert.ok(errorOf(text).message.includes(`site.yaml:${at(text, 'Polcy')}: kind: "Polcy" is not a kind; did you mean "Policy"?`));
  });

  it('a wrong apiVersion', () => {
    const text = EXAMPLE_SITE.replace('apiVersion: coffer/v1\nkind: Policy', 'apiVersion: coffer/v2\nkind: Policy');
    assert.ok(errorOf(text).message.includes(`site.yaml:${at(text, 'coffer/v2')}: apiVersion: "coffer/v2" is not an apiVersion this Coffer reads. Write apiVersion: coffer/v1.`));
  });

  it('a misspelt field, pointed at its key, with a suggestion', () => {
    const text = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJob: 4').replace('filename: shop.sql', 'fileName: shop.sql');
    const e = errorOf(text);
    assert.ok(e.message.includes(`site.yaml:${at(text, 'maxJob:')}: spec.maxJob: unknown field; did you mean "maxJobs"?`));
    assert.ok(e.message.includes(`site.yaml:${at(text, 'fileName')}: spec.selections[1].fileName: unknown field; did you mean "filename"?`));
    // The field it was meant to be is not also reported as missing.
    assert.equal(problems(e).length, 2);
  });

  it('an unknown field with no likely meaning lists the fields there', () => {
    const text = EXAMPLE_SITE.replace('  maxStreams: 2', '  maxStreams: 2\n  colour: blue');
    assert.match(errorOf(text).message, new RegExp(`site\\.yaml:${at(text, 'colour')}: spec\\.colour: unknown field\\. Fields here: clients, selections, schedules, `));
  });

  it('bad durations: spelled out, negative, zero, months', () => {
    const text = EXAMPLE_SITE.replace('retention: 7y', 'retention: 7 years').replace('rpo: 24h', 'rpo: -1d').replace('rto: 4h', 'rto: 0').replace('retention: 30d', 'retention: 3mo');
    const m = errorOf(text).message;
    assert.ok(m.includes(`site.yaml:${at(text, '7 years')}: spec.copies[0].retention: "7 years" is not a duration. Write 7y`), m);
    assert.ok(m.includes(`site.yaml:${at(text, '-1d')}: spec.rpo: "-1d" is negative.`), m);
    assert.ok(m.includes(`site.yaml:${at(text, 'rto: 0') .replace(/:(\d+)$/, (_, c) => `:${Number(c) + 5}`)}: spec.rto: a duration of 0 is not allowed here`), m);
    assert.ok(m.includes(`site.yaml:${at(text, '3mo')}: spec.copies[0].retention: "3mo": months vary in length`), m);
    assert.match(m, /Cannot apply site\.yaml: 4 problems\n/);
  });

  it('a bad cron expression', () => {
    const text = EXAMPLE_SITE.replace('"0 2 * * 0"', '"0 2 * * 8"');
    assert.ok(errorOf(text).message.includes(`site.yaml:${at(text, '"0 2 * * 8"')}: spec.schedules[1].calendar: "0 2 * * 8" is not a valid cron expression (`));
  });

  it('a bad time zone, with the zone that was meant', () => {
    const text = EXAMPLE_SITE.replace('lifecycle: long-term }', 'lifecycle: long-term, timezone: Europe/Berln }');
    assert.ok(errorOf(text).message.includes(`site.yaml:${at(text, 'Europe/Berln')}: spec.schedules[1].timezone: "Europe/Berln" is not a time zone. Did you mean "Europe/Berlin"?`));
  });

  it('a missing required field, pointed at the map that lacks it', () => {
    const text = EXAMPLE_SITE.replace('{ name: weekly, level: full,', '{ name: weekly,');
    assert.ok(errorOf(text).message.includes(`site.yaml:${at(text, '{ name: weekly')}: spec.schedules[1].level: required field is missing`));
    const noUrl = 'apiVersion: coffer/v1\nkind: StorageUnit\nmetadata: { name: x }\nspec:\n  maxJobs: 2\n';
    assert.ok(errorOf(noUrl).message.includes('site.yaml:5:3: spec.url: required field is missing'));
  });

  it('a schedule with neither calendar nor every, and one with both', () => {
    const text = EXAMPLE_SITE.replace('calendar: "0 1 * * *", ', '').replace('calendar: "0 2 * * 0"', 'calendar: "0 2 * * 0", every: 1d');
    const m = errorOf(text).message;
    assert.ok(m.includes(`site.yaml:${at(text, '{ name: daily')}: spec.schedules[0]: says neither when nor how often it runs. Give calendar: "0 1 * * *" or every: 12h.`), m);
    assert.ok(m.includes(`site.yaml:${at(text, '1d,')}: spec.schedules[1].every: a schedule has calendar or every, not both`), m);
  });

  it('the same kind and name twice in one set', () => {
    const text = `${EXAMPLE_SITE}---\n${EXAMPLE_SITE.split('---')[0]}`;
    assert.equal(at(text, 'primary }', 2), '45:19');
    assert.ok(errorOf(text).message.includes(`site.yaml:45:19: metadata.name: StorageUnit/primary is defined twice (also at site.yaml:1)`));
  });

  it('dangling references, with suggestions, when references are checked', () => {
    const text = EXAMPLE_SITE.replace('lifecycle: long-term', 'lifecycle: long-trem').replace('storageUnit: primary, retention: 30d', 'storageUnit: primray, retention: 30d');
    const m = errorOf(text, { references: {} }).message;
    assert.ok(m.includes(`site.yaml:${at(text, 'primray')}: spec.copies[0].storageUnit: storage unit "primray" does not exist; did you mean "primary"?`), m);
    assert.ok(m.includes(`site.yaml:${at(text, 'long-trem')}: spec.schedules[1].lifecycle: lifecycle "long-trem" does not exist; did you mean "long-term"?`), m);
    // Without the check, the documents alone are valid.
    assert.equal(parseDocuments(text).length, 4);
  });

  it('a reference to a document that has problems of its own is not reported again', () => {
    const text = EXAMPLE_SITE.replace('retention: 7y', 'retention: 7 years');
    assert.equal(problems(errorOf(text, { references: {} })).length, 1);
  });

  it('a password in a document is refused with a hint to use passwordFrom, without repeating it', () => {
    const text = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobs: 4\n  password: hunter2');
    const e = errorOf(text);
    assert.ok(e.message.includes(`site.yaml:${at(text, 'password')}: spec.password: secrets never go in documents`));
    assert.match(e.hint ?? '', /Nothing was applied/);
    assert.match(e.message, /Write passwordFrom: file:\/path/);
    assert.doesNotMatch(e.message, /hunter2/);
    const inline = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobs: 4\n  passwordFrom: hunter2');
    const m = errorOf(inline).message;
    assert.ok(m.includes(`site.yaml:${at(inline, 'hunter2')}: spec.passwordFrom: is not a reference to the repository password (file:/path or env:NAME)`), m);
    assert.doesNotMatch(m, /hunter2/);
  });

  it('a StorageUnit bandwidth is a rate such as 50MB/s; anything else says how to write one', () => {
    const good = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobs: 4\n  bandwidth: 50MB/s');
    const unit = parseDocuments(good, { file: 'site.yaml' }).map((d) => d.document).find((d) => d.kind === 'StorageUnit')!;
    assert.equal((unit.spec as { bandwidth?: string }).bandwidth, '50MB/s');
    const bad = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobs: 4\n  bandwidth: 50 megs');
    const m = errorOf(bad).message;
    assert.ok(m.includes(`site.yaml:${at(bad, '50 megs')}: spec.bandwidth: "50 megs" is not a rate`), m);
    assert.match(m, /Write a number of bytes per second such as "50MB\/s"/);
  });

  it('S3 keys in a document are refused with a hint to use credentialsFrom', () => {
    const text = EXAMPLE_SITE.replace('url: /var/lib/coffer/primary', 'url: s3://bucket/p\n  secretAccessKey: abc');
    assert.ok(errorOf(text).message.includes(`site.yaml:${at(text, 'secretAccessKey')}: spec.secretAccessKey: secrets never go in documents (they end up in version control, in backups of the catalog and in \`coffer get\`). For S3 write credentialsFrom:`));
    const local = EXAMPLE_SITE.replace('maxJobs: 4', 'credentialsFrom: { accessKeyId: env:A, secretAccessKey: env:B }');
    assert.ok(errorOf(local).message.includes(`site.yaml:${at(local, '{ accessKeyId')}: spec.credentialsFrom: applies to s3:// storage units only`));
  });

  it('immutable needs S3 (Object Lock), and minimumLock needs immutable: refused with what to do', () => {
    const local = EXAMPLE_SITE.replace('maxJobs: 4', 'immutable: true');
    const e = errorOf(local);
    assert.ok(e.message.includes('spec.immutable: needs S3 storage with Object Lock'), e.message);
    assert.ok(problems(e).some((p) => /Object Lock enabled/.test(p.hint ?? '')), JSON.stringify(problems(e)));
    const alone = EXAMPLE_SITE.replace('maxJobs: 4', 'minimumLock: 30d');
    assert.ok(errorOf(alone).message.includes('spec.minimumLock: applies to immutable storage units only'));
    const bad = EXAMPLE_SITE.replace('url: /var/lib/coffer/primary', 'url: s3://vault/p\n  immutable: true\n  minimumLock: 30 days');
    assert.match(errorOf(bad).message, /spec\.minimumLock/);
    const good = EXAMPLE_SITE.replace('url: /var/lib/coffer/primary', 'url: s3://vault/p\n  immutable: true\n  minimumLock: 90d');
    assert.ok(parseDocuments(good, { file: 'site.yaml' }).length > 0);
  });

  it('a wrong type says what was expected and how to write it', () => {
    const text = EXAMPLE_SITE.replace('maxStreams: 2', 'maxStreams: "2"').replace('start: "01:00"', 'start: 25:00');
    const m = errorOf(text).message;
    assert.ok(m.includes(`site.yaml:${at(text, '"2"')}: spec.maxStreams: expected a number, got the text "2". Write it without quotes: 2.`), m);
    assert.ok(m.includes(`site.yaml:${at(text, '25:00')}: spec.schedules[0].window.start: "25:00" is not a time of day.`), m);
  });

  it('lifecycle rules: the first copy is the backup, from names an earlier copy', () => {
    const text = EXAMPLE_GOLD.replace('from: offsite', 'from: ofsite').replace('operation: backup,  ', 'operation: stage,   ');
    const m = errorOf(text).message;
    assert.ok(m.includes(`site.yaml:${at(text, 'stage', 1)}: spec.copies[0].operation: the first copy is the backup copy`), m);
    assert.ok(m.includes(`site.yaml:${at(text, 'ofsite')}: spec.copies[2].from: "ofsite" is not the storage unit of an earlier copy; did you mean "offsite"?`), m);
  });

  it('highWater: a percentage on stage copies only; capacity: a size', () => {
    const ok = EXAMPLE_GOLD.replace('from: offsite }', 'from: offsite, highWater: "80%" }');
    assert.equal((parseDocuments(ok, { file: 'site.yaml' })[0]!.document as LifecycleDocument).spec.copies[2]!.highWater, '80%');
    const text = EXAMPLE_GOLD.replace('from: offsite }', 'from: offsite, highWater: 80 }').replace('duration: 12h }', 'duration: 12h }, highWater: "120%"');
    const m = errorOf(text).message;
    assert.ok(m.includes(`site.yaml:${at(text, '80 }')}: spec.copies[2].highWater: expected a percentage such as "80%", got the number 80. Write it as text with a percent sign: "80%".`), m);
    assert.ok(m.includes(`site.yaml:${at(text, '"120%"')}: spec.copies[1].highWater: "120%" is not between 0% and 100%.`), m);
    const dup = EXAMPLE_GOLD.replace('duration: 12h }', 'duration: 12h }, highWater: "90%"');
    assert.ok(errorOf(dup).message.includes(`site.yaml:${at(dup, '"90%"')}: spec.copies[1].highWater: applies to stage copies, not to a duplicate copy. A high-water mark releases the source copy early; only a stage releases its source.`), errorOf(dup).message);
    const units = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobs: 4\n  capacity: 2 TB');
    assert.ok(errorOf(units).message.includes(`site.yaml:${at(units, '2 TB')}: spec.capacity: "2 TB" has spaces in it. Write it without spaces, e.g. 2TB.`));
    const good = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobs: 4\n  capacity: 2TB');
    assert.equal((parseDocuments(good)[0]!.document as StorageUnitDocument).spec.capacity, '2TB');
  });

  it('reports every problem of every document at once, in file order', () => {
    const text = EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobz: 4').replace('retention: 30d', 'retention: 30 days').replace('"0 2 * * 0"', '"0 2 * * 8"').replace('name: web-server', 'name: Web Server');
    const e = errorOf(text);
    assert.equal(problems(e).length, 4);
    const lines = e.message.split('\n').slice(1).map((l) => Number(/site\.yaml:(\d+):/.exec(l)![1]));
    assert.deepEqual(lines, [...lines].sort((a, b) => a - b));
    assert.match(e.message, /^Cannot apply site\.yaml: 4 problems\n/);
    assert.equal(e.exitCode, 2);
  });
});

describe('loadDocuments()', () => {
  it('reads every *.yaml, *.yml and *.json file of a directory, sorted by name', async (t) => {
    const dir = await tempDir(t);
    const parts = EXAMPLE_SITE.split('---\n');
    await writeFile(join(dir, '20-lifecycles.yml'), `${parts[1]}---\n${parts[2]}`);
    await writeFile(join(dir, '10-storage.yaml'), parts[0]!);
    await writeFile(join(dir, '30-policy.json'), toJson(parseDocuments(parts[3]!).map((d) => d.document)));
    await writeFile(join(dir, 'README.md'), '# not a document');
    await writeFile(join(dir, '.hidden.yaml'), 'not: valid');
    await mkdir(join(dir, 'sub'));
    await writeFile(join(dir, 'sub', 'x.yaml'), 'not: valid');
    const docs = await loadDocuments(dir, { references: {} });
    assert.deepEqual(docs.map((d) => `${d.document.kind}/${d.document.metadata.name}`), ['StorageUnit/primary', 'Lifecycle/standard', 'Lifecycle/long-term', 'Policy/web-server']);
    assert.deepEqual(docs.map((d) => d.file), [join(dir, '10-storage.yaml'), join(dir, '20-lifecycles.yml'), join(dir, '20-lifecycles.yml'), join(dir, '30-policy.json')]);
    assert.deepEqual(docs.map((d) => d.document), parseDocuments(EXAMPLE_SITE).map((d) => d.document));
  });

  it('reports the problems of all files together and names each file; duplicates across files too', async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, 'a.yaml'), EXAMPLE_SITE.replace('maxJobs: 4', 'maxJobz: 4'));
    await writeFile(join(dir, 'b.yaml'), EXAMPLE_SITE.split('---\n')[1]!);
    await writeFile(join(dir, 'c.yml'), EXAMPLE_GOLD.replace('14d', '14x'));
    await assert.rejects(loadDocuments(dir), (e: CofferError) => {
      assert.equal(e.code, 'INVALID_CONFIG');
      assert.match(e.message, new RegExp(`^Cannot apply ${dir}: 3 problems\n`));
      assert.ok(e.message.includes(`${join(dir, 'a.yaml')}:6:3: spec.maxJobz: unknown field; did you mean "maxJobs"?`), e.message);
      assert.ok(e.message.includes(`${join(dir, 'c.yml')}:6:64: spec.copies[0].retention: "14x": "x" is not a unit`), e.message);
      assert.ok(e.message.includes(`${join(dir, 'b.yaml')}:3:19: metadata.name: Lifecycle/standard is defined twice (also at ${join(dir, 'a.yaml')}:8)`), e.message);
      return true;
    });
  });

  it('says what is wrong with a missing path, and an empty directory', async (t) => {
    const dir = await tempDir(t);
    await assert.rejects(loadDocuments(join(dir, 'nope.yaml')), (e: CofferError) => e.code === 'NOT_FOUND' && /no such file or directory/.test(e.message));
    await assert.rejects(loadDocuments(dir), (e: CofferError) => e.code === 'INVALID_CONFIG' && /holds no \.yaml, \.yml or \.json files/.test(e.message));
  });
});

describe('toYaml() and toJson()', () => {
  it('print the canonical form: block style, labels sorted, defaults left out, cron and times quoted', () => {
    const docs = parseDocuments(EXAMPLE_SITE).map((d) => d.document);
    const yaml = toYaml(docs);
    assert.match(yaml, /labels:\n {4}compliance: sox\n {4}owner: web-team\n/);
    assert.match(yaml, /calendar: "0 1 \* \* \*"\n/);
    assert.match(yaml, /start: "01:00"\n/);
    assert.doesNotMatch(yaml, /missed|offsite|oneFileSystem/);
    assert.deepEqual(parseDocuments(yaml).map((d) => d.document), docs);
    assert.equal(toYaml(parseDocuments(yaml).map((d) => d.document)), yaml);
  });

  it('normalize() orders keys as the schema does, whatever order they came in', () => {
    const doc = normalize({ spec: { maxJobs: 2, url: '/x' }, metadata: { labels: { b: '1', a: '2' }, name: 'x' }, kind: 'StorageUnit', apiVersion: 'coffer/v1' });
    assert.equal(JSON.stringify(doc), '{"apiVersion":"coffer/v1","kind":"StorageUnit","metadata":{"name":"x","labels":{"a":"2","b":"1"}},"spec":{"url":"/x","maxJobs":2}}');
    assert.throws(() => normalize({ kind: 'StorageUnit' }), (e: CofferError) => e.code === 'INVALID_CONFIG' && /apiVersion is missing/.test(e.message));
  });
});
