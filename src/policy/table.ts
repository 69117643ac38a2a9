// The rows of `coffer get KIND` and `coffer get KIND -o wide`: one line per document, as text
// cells, with what an omitted field means filled in (DEFAULTS) so a reader sees the effective
// setting. The wide policy row is what a backup governance review reads: owner, purpose,
// recovery, compliance, offsite, who may restore and who may approve expiry.

import { DEFAULTS, type CofferDocument, type Kind, type PolicyDocument } from './schemas.ts';

export interface TableOptions {
  /** The -o wide columns as well. */
  wide?: boolean;
}

const COLUMNS: Record<Kind, { normal: string[]; wide: string[] }> = {
  StorageUnit: { normal: ['NAME', 'URL', 'MAX-JOBS'], wide: ['PRIORITY', 'OFFSITE', 'IMMUTABLE', 'PASSWORD', 'CREDENTIALS', 'LABELS'] },
  Lifecycle: { normal: ['NAME', 'COPIES'], wide: ['LABELS'] },
  Policy: {
    normal: ['NAME', 'CLIENTS', 'SCHEDULES', 'LIFECYCLE', 'RPO', 'OWNER'],
    wide: ['RTO', 'MAX-STREAMS', 'COMPLIANCE', 'OFFSITE', 'RESTORE-BY', 'EXPIRY-BY', 'PURPOSE', 'RECOVERY', 'LABELS'],
  },
  Client: { normal: ['NAME', 'MAX-STREAMS'], wide: ['LABELS'] },
};

/** The column headings of `coffer get KIND` (with `wide`, `-o wide`). */
export function tableColumns(kind: Kind, options: TableOptions = {}): string[] {
  const c = COLUMNS[kind];
  return options.wide ? [...c.normal, ...c.wide] : [...c.normal];
}

const NONE = '-';
const list = (values: readonly string[] | undefined) => (values === undefined || values.length === 0 ? NONE : values.join(','));
const labels = (l: Record<string, string> | undefined) => (l === undefined || Object.keys(l).length === 0 ? NONE : Object.entries(l).map(([k, v]) => `${k}=${v}`).join(','));
/** Prose in a table cell: its first line, at most `max` characters. */
const line = (text: string | undefined, max = 40) => {
  if (text === undefined) return NONE;
  const first = text.trim().split('\n')[0]!.trim();
  return first.length > max ? `${first.slice(0, max - 1)}…` : first;
};

/** One row of `coffer get`, matching tableColumns(doc.kind, options). */
export function tableRow(doc: CofferDocument, options: TableOptions = {}): string[] {
  const name = doc.metadata.name;
  switch (doc.kind) {
    case 'StorageUnit': {
      const s = doc.spec;
      // No maxJobs: the unit sets no limit of its own (the server's job limit applies).
      const row = [name, s.url, s.maxJobs === undefined ? '-' : String(s.maxJobs)];
      if (!options.wide) return row;
      return [...row,
        String(s.priority ?? DEFAULTS.storageUnit.priority),
        String(s.offsite ?? DEFAULTS.storageUnit.offsite),
        String(s.immutable ?? DEFAULTS.storageUnit.immutable),
        s.passwordFrom ?? 'keystore',
        s.credentialsFrom === undefined ? (/^s3:/i.test(s.url) ? 'default' : NONE) : `${s.credentialsFrom.accessKeyId.split(':')[0]}:…`,
        labels(doc.metadata.labels)];
    }
    case 'Lifecycle': {
      const copies = doc.spec.copies.map((c) => `${c.operation}:${c.storageUnit}:${c.retention}${c.after === undefined ? '' : `@${c.after}`}`).join(',');
      return options.wide ? [name, copies, labels(doc.metadata.labels)] : [name, copies];
    }
    case 'Policy':
      return options.wide ? policyWideRow(doc) : policyWideRow(doc).slice(0, COLUMNS.Policy.normal.length);
    case 'Client': {
      const row = [name, doc.spec?.maxStreams === undefined ? NONE : String(doc.spec.maxStreams)];
      return options.wide ? [...row, labels(doc.metadata.labels)] : row;
    }
  }
}

/** The `get policies -o wide` row: tableColumns('Policy', { wide: true }) names its cells. */
export function policyWideRow(doc: PolicyDocument): string[] {
  const s = doc.spec;
  const schedules = s.schedules.map((sc) => `${sc.name}:${sc.level === 'incremental' ? 'incr' : 'full'}`).join(',');
  const lifecycles = [...new Set([s.lifecycle, ...s.schedules.map((sc) => sc.lifecycle)].filter((l): l is string => l !== undefined))];
  return [
    doc.metadata.name,
    list(s.clients),
    schedules,
    list(lifecycles),
    s.rpo ?? NONE,
    line(s.owner, 30),
    s.rto ?? NONE,
    String(s.maxStreams ?? DEFAULTS.policy.maxStreams),
    list(s.compliance),
    s.offsiteRequired === true ? 'required' : 'no',
    list(s.restoreRequesters),
    list(s.expiryApprovers),
    line(s.purpose),
    line(s.recovery),
    labels(doc.metadata.labels),
  ];
}
