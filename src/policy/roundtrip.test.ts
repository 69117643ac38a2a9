// Property: every valid set of documents survives export and re-import unchanged, in YAML and in
// JSON, and the export is a fixed point (export(parse(export(x))) === export(x)). The generators
// lean on the strings YAML likes to reinterpret (yes, on, 01:00, 0x1f, ~, "# x", "a: b").

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { normalize, parseDocuments, toJson, toYaml } from './documents.ts';
import type { CofferDocument } from './schemas.ts';

const tricky = fc.constantFrom('yes', 'no', 'on', 'off', 'true', 'null', '~', '01:00', '1:30', '0x1f', '0o17', '1e3', '.inf', '-', '? x', '- x', '#x', 'a # b', 'a: b', '*', '&a', '!tag', '%x', '@x', '`x', '"q"', "'q'", '{a}', '[a]', '|', '>', ' lead', 'trail ', 'ünïcødé', '日本語', '\t tab');
const textPart = fc.oneof(tricky, fc.string({ minLength: 1, maxLength: 12 }), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 8 }));
const oneLine = fc.array(textPart, { minLength: 1, maxLength: 3 }).map((a) => a.join(' ').replace(/[\n\r\0]/g, 'x'));
const prose = fc.array(fc.oneof(textPart, fc.constant('\n'), fc.constant('\n\n')), { minLength: 1, maxLength: 6 })
  .map((a) => a.join(' ').replace(/\0/g, ''))
  .filter((s) => s.trim() !== '');

const name = fc.stringMatching(/^[a-z0-9](?:[a-z0-9._-]{0,10}[a-z0-9])?$/);
const clientName = fc.stringMatching(/^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,10}[A-Za-z0-9])?$/);
const labelKey = fc.stringMatching(/^(?:[a-z0-9]{1,5}\.[a-z]{2,3}\/)?[A-Za-z0-9](?:[A-Za-z0-9._-]{0,8}[A-Za-z0-9])?$/);
const labels = fc.dictionary(labelKey, fc.oneof(oneLine.map((s) => s.slice(0, 253)), fc.constant('')), { maxKeys: 4 });
const metadata = (n: fc.Arbitrary<string>) => fc.record({ name: n, labels, annotations: fc.dictionary(labelKey, prose, { maxKeys: 2 }) }, { requiredKeys: ['name'] });

const duration = fc.tuple(...['y', 'w', 'd', 'h', 'm'].map((u) => fc.option(fc.integer({ min: 1, max: u === 'y' ? 20 : 99 }).map((n) => `${n}${u}`), { nil: '' })))
  .map((parts) => parts.join(''))
  .filter((s) => s !== '');
const shortDuration = fc.oneof(fc.integer({ min: 1, max: 23 }).map((n) => `${n}h`), fc.integer({ min: 1, max: 59 }).map((n) => `${n}m`), fc.constant('24h'), fc.constant('1h30m'));
const time = fc.tuple(fc.integer({ min: 0, max: 23 }), fc.integer({ min: 0, max: 59 })).map(([h, m]) => `${String(h).padStart(2, '0')}:${String(m).padStart(2, '0')}`);
const window = fc.record({ start: time, duration: shortDuration });
const ref = fc.oneof(fc.stringMatching(/^env:[A-Za-z_][A-Za-z0-9_]{0,10}$/), fc.stringMatching(/^file:\/[a-z0-9/._ -]{1,20}$/));

const storageUnit = fc.oneof(
  fc.record({ url: fc.constantFrom('/var/lib/coffer/primary', '/srv/backup one', 'file:///srv/b', '/yes'), maxJobs: fc.integer({ min: 1, max: 1000 }), passwordFrom: ref, offsite: fc.boolean(), immutable: fc.constant(false), priority: fc.integer({ min: -100, max: 100 }) }, { requiredKeys: ['url'] }),
  fc.record({
    url: fc.constantFrom('s3://bucket/prefix', 's3://coffer-b/a/b?endpoint=http://127.0.0.1:9000&path-style=true', 's3://bkt'),
    credentialsFrom: fc.record({ accessKeyId: ref, secretAccessKey: ref, sessionToken: ref }, { requiredKeys: ['accessKeyId', 'secretAccessKey'] }),
    offsite: fc.boolean(),
  }, { requiredKeys: ['url'] }),
  // Immutable (S3 only), with or without a minimum lock.
  fc.record({
    url: fc.constantFrom('s3://vault/prefix', 's3://vault?endpoint=https://s3.example.com'),
    immutable: fc.constant(true),
    minimumLock: fc.constantFrom('30d', '1y', '12h', '90s'),
  }, { requiredKeys: ['url', 'immutable'] }),
).chain((spec) => metadata(name).map((m) => ({ apiVersion: 'coffer/v1', kind: 'StorageUnit', metadata: m, spec })));

const lifecycle = fc.uniqueArray(name, { minLength: 1, maxLength: 4 }).chain((units) => {
  const [first, ...rest] = units;
  const backup = fc.record({ operation: fc.constant('backup'), storageUnit: fc.constant(first!), retention: fc.oneof(duration, fc.constant('infinite')) });
  const others = rest.map((u, i) => fc.record({
    operation: fc.constant(i === rest.length - 1 && rest.length > 1 ? 'stage' : 'duplicate'),
    storageUnit: fc.constant(u),
    retention: fc.oneof(duration, fc.constant('infinite')),
    window,
    from: fc.constant(i === 0 ? first! : rest[i - 1]!),
  }, { requiredKeys: ['operation', 'storageUnit', 'retention'] }));
  return fc.tuple(backup, ...others);
}).chain((copies) => metadata(name).map((m) => ({ apiVersion: 'coffer/v1', kind: 'Lifecycle', metadata: m, spec: { copies } })));

const path = fc.array(fc.stringMatching(/^[A-Za-z0-9 ._~:#-]{1,8}$/).filter((s) => s !== '.' && s !== '..'), { minLength: 0, maxLength: 3 }).map((a) => `/${a.join('/')}`);
const command = prose.map((s) => s.slice(0, 4096));
const hook = fc.oneof(command, fc.record({ command, timeout: fc.constantFrom('5m', '1h', '30s', '1d') }, { requiredKeys: ['command'] }));
const hooks = { pre: hook, post: hook };
const selection = fc.oneof(
  fc.record({ paths: fc.array(path, { minLength: 1, maxLength: 3 }), exclude: fc.array(oneLine, { maxLength: 3 }), include: fc.array(oneLine, { maxLength: 2 }), oneFileSystem: fc.boolean(), excludeCaches: fc.boolean(), chunking: fc.constantFrom('auto', 'cdc'), ...hooks }, { requiredKeys: ['paths'] }),
  fc.record({ command, filename: fc.stringMatching(/^[a-z0-9_-]{1,8}(?:\.sql)?$/), ...hooks }, { requiredKeys: ['command', 'filename'] }),
  fc.record({ images: fc.array(path, { minLength: 1, maxLength: 2 }), chunking: fc.constantFrom('fixed', 'cdc'), ...hooks }, { requiredKeys: ['images'] }),
);
const schedule = fc.record({
  level: fc.constantFrom('full', 'incremental'),
  timing: fc.oneof(
    fc.constantFrom('0 1 * * *', '0 2 * * 0', '*/15 * * * *', '0 0 1 * *', '30 4 * * 1-5', '0 0 3 * * *', '@daily').map((calendar) => ({ calendar })),
    fc.constantFrom('12h', '1d', '30m', '1w').map((every) => ({ every })),
  ),
  rest: fc.record({ window, timezone: fc.constantFrom('UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata'), lifecycle: name, missed: fc.constantFrom('catch-up', 'skip') }, { requiredKeys: [] }),
});
const policy = fc.record({
  clients: fc.uniqueArray(clientName, { minLength: 1, maxLength: 3 }),
  selections: fc.array(selection, { minLength: 1, maxLength: 3 }),
  schedules: fc.array(schedule, { minLength: 1, maxLength: 3 }),
  lifecycle: name,
  rpo: duration,
  rto: duration,
  maxStreams: fc.integer({ min: 1, max: 64 }),
  owner: prose.map((s) => s.slice(0, 200)).filter((s) => s.trim() !== ''),
  purpose: prose,
  recovery: prose,
  compliance: fc.uniqueArray(fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,10}$/), { maxLength: 3 }),
  offsiteRequired: fc.boolean(),
  restoreRequesters: fc.uniqueArray(oneLine.map((s) => s.slice(0, 200)).filter((s) => s.trim() !== ''), { maxLength: 3 }),
  expiryApprovers: fc.uniqueArray(oneLine.map((s) => s.slice(0, 200)).filter((s) => s.trim() !== ''), { maxLength: 2 }),
}, { requiredKeys: ['clients', 'selections', 'schedules', 'lifecycle'] }).map((spec) => ({
  ...spec,
  // Unique schedule names and command file names, as the schema requires.
  schedules: spec.schedules.map((s, i) => ({ name: `s${i}`, level: s.level, ...s.timing, ...s.rest })).map((s) => ('window' in s && 'every' in s && s.every === '30m' ? { ...s, every: '1d' } : s)),
  selections: spec.selections.map((s, i) => ('filename' in s ? { ...s, filename: `${i}-${s.filename}` } : s)),
})).chain((spec) => metadata(name).map((m) => ({ apiVersion: 'coffer/v1', kind: 'Policy', metadata: m, spec })));

const client = fc.record({ metadata: metadata(clientName), spec: fc.option(fc.record({ maxStreams: fc.integer({ min: 1, max: 256 }) }, { requiredKeys: [] }), { nil: undefined }) })
  .map(({ metadata: m, spec }) => ({ apiVersion: 'coffer/v1', kind: 'Client', metadata: m, ...(spec === undefined ? {} : { spec }) }));

const documents = fc.uniqueArray(fc.oneof(storageUnit, lifecycle, policy, client), {
  minLength: 1,
  maxLength: 5,
  selector: (d) => `${d.kind}/${d.metadata.name}`,
}).map((docs) => JSON.parse(JSON.stringify(docs)) as CofferDocument[]); // plain objects, as a parser makes

describe('round trip', () => {
  it('the generated documents are valid (the generators are right)', () => {
    fc.assert(fc.property(documents, (docs) => {
      for (const d of docs) normalize(d);
    }), { numRuns: 200 });
  });

  it('parse(toYaml(x)) equals x, and toYaml is a fixed point', () => {
    fc.assert(fc.property(documents, (docs) => {
      const yaml = toYaml(docs);
      const back = parseDocuments(yaml).map((d) => d.document);
      assert.deepStrictEqual(back, docs);
      assert.equal(toYaml(back), yaml);
    }), { numRuns: Number(process.env.COFFER_FC_RUNS ?? 300) });
  });

  it('parse(toJson(x)) equals x, and toJson is a fixed point', () => {
    fc.assert(fc.property(documents, (docs) => {
      const json = toJson(docs);
      const back = parseDocuments(json).map((d) => d.document);
      assert.deepStrictEqual(back, docs);
      assert.equal(toJson(back), json);
    }), { numRuns: 200 });
  });

  it('the export does not depend on the order of keys in the input', () => {
    const shuffle = (v: unknown): unknown => (Array.isArray(v) ? v.map(shuffle) : v !== null && typeof v === 'object' ? Object.fromEntries(Object.entries(v).reverse().map(([k, x]) => [k, shuffle(x)])) : v);
    fc.assert(fc.property(documents, (docs) => {
      assert.equal(toYaml(docs.map((d) => shuffle(d) as CofferDocument)), toYaml(docs));
    }), { numRuns: 100 });
  });
});
