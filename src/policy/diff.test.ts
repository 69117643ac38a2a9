import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { diffDocuments, formatChanges, hasChanges, summarizeChanges, unifiedDiff } from './diff.ts';
import { parseDocuments } from './documents.ts';
import { EXAMPLE_SITE } from './examples.ts';

const docs = (text: string) => parseDocuments(text).map((d) => d.document);
const site = docs(EXAMPLE_SITE);

describe('diffDocuments()', () => {
  it('reports nothing when the desired documents are what is applied, whatever their layout', () => {
    const reformatted = EXAMPLE_SITE.replace('metadata: { name: primary }', 'metadata:\n  name: primary   # the main one').replace('  maxStreams: 2\n', '').replace('  rpo: 24h', '  maxStreams: 2\n  rpo: 24h');
    const changes = diffDocuments(site, docs(reformatted));
    assert.equal(hasChanges(changes), false);
    assert.equal(formatChanges(changes), '');
    assert.deepEqual(changes.map((c) => c.action), ['unchanged', 'unchanged', 'unchanged', 'unchanged']);
  });

  it('shows created documents whole, and changed ones as fields and a unified diff', () => {
    const desired = docs(EXAMPLE_SITE.replace('rpo: 24h', 'rpo: 12h').replace('retention: 30d', 'retention: 31d').replace('  maxStreams: 2\n', ''));
    const changes = diffDocuments(site.slice(1), desired);
    assert.equal(hasChanges(changes), true);
    assert.deepEqual(summarizeChanges(changes), [
      'StorageUnit/primary created',
      'Lifecycle/standard changed (spec.copies[0].retention)',
      'Lifecycle/long-term unchanged',
      'Policy/web-server changed (spec.rpo, spec.maxStreams)',
    ]);
    const policy = changes[3]!;
    assert.ok(policy.action === 'changed');
    assert.deepEqual(policy.fields, [{ path: 'spec.rpo', before: '24h', after: '12h' }, { path: 'spec.maxStreams', before: 2 }]);
    assert.equal(formatChanges(changes), `--- /dev/null
+++ StorageUnit/primary (desired)
@@ -0,0 +1,7 @@
+apiVersion: coffer/v1
+kind: StorageUnit
+metadata:
+  name: primary
+spec:
+  url: /var/lib/coffer/primary
+  maxJobs: 4
--- Lifecycle/standard (applied)
+++ Lifecycle/standard (desired)
@@ -6,4 +6,4 @@
   copies:
     - operation: backup
       storageUnit: primary
-      retention: 30d
+      retention: 31d
--- Policy/web-server (applied)
+++ Policy/web-server (desired)
@@ -30,6 +30,5 @@
       calendar: "0 2 * * 0"
       lifecycle: long-term
   lifecycle: standard
-  rpo: 24h
+  rpo: 12h
   rto: 4h
-  maxStreams: 2
`);
  });

  it('a different spelling of the same duration is a change: the stored document is what was applied', () => {
    const changes = diffDocuments(site, docs(EXAMPLE_SITE.replace('rpo: 24h', 'rpo: 1d')));
    assert.deepEqual(summarizeChanges(changes).filter((l) => !l.endsWith('unchanged')), ['Policy/web-server changed (spec.rpo)']);
  });

  it('lists documents the desired set lacks as deleted only when asked to prune', () => {
    assert.equal(diffDocuments(site, site.slice(0, 3)).length, 3);
    const changes = diffDocuments(site, site.slice(0, 3), { prune: true });
    assert.deepEqual(summarizeChanges(changes).slice(3), ['Policy/web-server deleted']);
    assert.match(formatChanges(changes), /^--- Policy\/web-server \(applied\)\n\+\+\+ \/dev\/null\n@@ -1,\d+ \+0,0 @@\n-apiVersion: coffer\/v1\n/);
  });
});

describe('unifiedDiff()', () => {
  it('makes separate hunks for changes far apart, with three lines of context', () => {
    const a = Array.from({ length: 20 }, (_, i) => `line ${i}`).join('\n');
    const b = a.replace('line 2', 'LINE 2').replace('line 17', 'LINE 17');
    assert.equal(unifiedDiff(a, b, { from: 'a', to: 'b' }), `--- a
+++ b
@@ -1,6 +1,6 @@
 line 0
 line 1
-line 2
+LINE 2
 line 3
 line 4
 line 5
@@ -15,6 +15,6 @@
 line 14
 line 15
 line 16
-line 17
+LINE 17
 line 18
 line 19
`);
    assert.equal(unifiedDiff(a, a, { from: 'a', to: 'b' }), '');
  });
});
