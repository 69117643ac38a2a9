import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseDocuments } from './documents.ts';
import { EXAMPLE_GOLD, EXAMPLE_SITE } from './examples.ts';
import { policyWideRow, tableColumns, tableRow } from './table.ts';

const [unit, standard, , policy] = parseDocuments(EXAMPLE_SITE).map((d) => d.document);

describe('table rows', () => {
  it('get policies and get policies -o wide', () => {
    assert.deepEqual(tableColumns('Policy'), ['NAME', 'CLIENTS', 'SCHEDULES', 'LIFECYCLE', 'RPO', 'OWNER']);
    assert.deepEqual(tableRow(policy!), ['web-server', 'web01', 'daily:incr,weekly:full', 'standard,long-term', '24h', '-']);
    const governed = parseDocuments(EXAMPLE_SITE.replace('  maxStreams: 2', '  maxStreams: 2\n  owner: web-team\n  purpose: |\n    Shop pages and orders.\n    Second line.\n  compliance: [sox, pci-dss]\n  offsiteRequired: true\n  restoreRequesters: [web-team, oncall]\n  expiryApprovers: [cto]'))[3]!.document;
    assert.ok(governed.kind === 'Policy');
    const columns = tableColumns('Policy', { wide: true });
    const row = policyWideRow(governed);
    assert.equal(row.length, columns.length);
    assert.deepEqual(Object.fromEntries(columns.map((c, i) => [c, row[i]])), {
      NAME: 'web-server', CLIENTS: 'web01', SCHEDULES: 'daily:incr,weekly:full', LIFECYCLE: 'standard,long-term', RPO: '24h', OWNER: 'web-team',
      RTO: '4h', 'MAX-STREAMS': '2', COMPLIANCE: 'sox,pci-dss', OFFSITE: 'required', 'RESTORE-BY': 'web-team,oncall', 'EXPIRY-BY': 'cto',
      PURPOSE: 'Shop pages and orders.', RECOVERY: '-', LABELS: 'compliance=sox,owner=web-team',
    });
    assert.deepEqual(tableRow(governed, { wide: true }), row);
  });

  it('storage units, lifecycles and clients, with defaults filled in', () => {
    assert.deepEqual(tableRow(unit!, { wide: true }), ['primary', '/var/lib/coffer/primary', '4', '0', 'false', 'false', 'keystore', '-', '-']);
    assert.equal(tableColumns('StorageUnit', { wide: true }).length, 9);
    assert.deepEqual(tableRow(standard!), ['standard', 'backup:primary:30d']);
    assert.deepEqual(tableRow(parseDocuments(EXAMPLE_GOLD)[0]!.document), ['gold', 'backup:primary:14d,duplicate:offsite:1y,stage:archive:7y@30d']);
    const client = parseDocuments('apiVersion: coffer/v1\nkind: Client\nmetadata: { name: web01 }\n')[0]!.document;
    assert.deepEqual(tableRow(client, { wide: true }), ['web01', '-', '-']);
  });
});
