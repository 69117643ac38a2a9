// The compliance report (`coffer report compliance`, GET /api/v1/reports/compliance): for each
// policy and each of its clients, is what the policy promises true now, by the server's clock?
//
//   - RPO: the newest `ok` image is younger than the policy's rpo (no good backup at all is out,
//     rpo or not: the policy is not working for that client);
//   - RTO: with an rto or restoreTests, the newest restore test that ended passed, restored within
//     the rto, and is not overdue (older than the longest gap between its runs plus a day);
//   - copies: every image has the copies its lifecycle requires by now. A duplicate or stage copy
//     is due at the image's time + its `after`, + a day of slack when it has a window (it waits
//     for the window), + an hour for the queue; it is no longer required once it expired
//     (retention) or was staged away (a later stage `from` its unit is due). A missing windowed
//     copy is "behind its window", another one "uncloned". An offsiteRequired policy's images
//     need a live copy on a storage unit with `offsite: true` once its offsite copy is due (an
//     hour after the backup when its lifecycle plans none, which is then reported too);
//   - images on legal hold are listed (informational: a hold is not a problem).
//
// Everything is counted by a few SQL aggregates (src/catalog/compliance.ts): per policy and
// lifecycle copy one statement over the policy's images in the time range where that copy is
// required, grouped by client; never a query per image or per client.

import type { HeldImage, LastRestoreTest, MissingCopies } from '../catalog/compliance.ts';
import { checkDuration, longestGap, parseDuration, type LifecycleDocument, type PolicyDocument } from '../policy/index.ts';
import { RESTORE_TEST_KIND } from './schedule-store.ts';
import type { Services } from './services.ts';

/** How long a job may wait in the queue before a copy that is due counts as missing. */
export const QUEUE_GRACE_MS = 3_600_000;
/** A copy with a window waits for it: up to a day. */
export const WINDOW_SLACK_MS = 86_400_000;
/** A restore test is overdue this long after its next run was due. */
export const TEST_GRACE_MS = 86_400_000;

export interface CopyGap {
  storageUnit: string;
  operation: string;
  /** The copy has a window: it is behind its window, rather than uncloned. */
  windowed: boolean;
  images: number;
  oldestImage: string;
  oldestTime: number;
}

export interface ComplianceRow {
  policy: string;
  client: string;
  status: 'ok' | 'out';
  /** What is out of compliance, one sentence each (empty when ok). */
  problems: string[];
  /** The newest ok image; null: none. */
  lastBackup: { image: string; time: number; ageMs: number } | null;
  rpoMs: number | null;
  /** The newest restore test that ended; null: none (or the policy has neither rto nor restoreTests). */
  restoreTest: { job: string; state: string; time: number | null; image: string | null; restoreMs: number | null; sample: unknown; passed: boolean; withinRto: boolean | null } | null;
  rtoMs: number | null;
  /** Lifecycle copies due but missing, per storage unit. */
  copies: CopyGap[];
  /** offsiteRequired: images without a live copy on an offsite unit; null when not required. */
  offsite: { images: number; oldestImage: string | null; oldestTime: number | null } | null;
}

export interface ComplianceReport {
  /** When, by the server's clock. */
  time: number;
  compliant: boolean;
  policies: number;
  /** Rows: (policy, client) pairs. */
  clients: number;
  outOfCompliance: number;
  rows: ComplianceRow[];
  /** Images on legal hold, oldest first (at most 1000), and how many in all. */
  holds: HeldImage[];
  holdsTotal: number;
}

type PolicySpec = PolicyDocument['spec'];
type LifecycleSpec = LifecycleDocument['spec'];

const key = (policy: string, client: string) => `${policy}\u0000${client}`;
const ms = (d: string | undefined, fallback: number) => {
  if (d === undefined) return fallback;
  const r = checkDuration(d, { infinite: true, zero: true });
  return r.ok ? r.ms : fallback;
};
const isoTime = (t: number) => new Date(t).toISOString().replace(/\.\d{3}Z$/, 'Z');

/** "3d04h": a duration for a sentence. */
function human(t: number): string {
  const m = Math.round(t / 60_000);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

async function allPolicies(s: Services, only: string | undefined): Promise<Array<{ name: string; spec: PolicySpec }>> {
  if (only !== undefined) return [{ name: only, spec: (await s.catalog.policies.get(only)).spec as PolicySpec }];
  const out: Array<{ name: string; spec: PolicySpec }> = [];
  for (let cursor: string | undefined; ;) {
    const page = await s.catalog.policies.list({ limit: 1000, cursor });
    for (const p of page.items) out.push({ name: p.name, spec: p.spec as PolicySpec });
    if (!page.next) return out;
    cursor = page.next;
  }
}

/** The lifecycles a policy's images follow, each with the schedules whose images it governs. */
function lifecycleGroups(policy: PolicySpec): Array<{ lifecycle: string; schedules: { in: string[] } | { notIn: string[] } }> {
  const own = new Map<string, string[]>();
  for (const s of policy.schedules) {
    if (s.lifecycle === undefined || s.lifecycle === policy.lifecycle) continue;
    own.set(s.lifecycle, [...(own.get(s.lifecycle) ?? []), s.name]);
  }
  const groups: Array<{ lifecycle: string; schedules: { in: string[] } | { notIn: string[] } }> = [];
  // Images of ad hoc backups (no schedule) and of schedules without their own follow the policy's.
  if (policy.lifecycle !== undefined) groups.push({ lifecycle: policy.lifecycle, schedules: { notIn: [...own.values()].flat() } });
  for (const [lifecycle, names] of own) groups.push({ lifecycle, schedules: { in: names } });
  return groups;
}

interface Gaps {
  /** Problems of the policy itself, true of each of its clients. */
  problems: string[];
  /** Per client: lifecycle copies due and missing. */
  copies: Map<string, CopyGap[]>;
  /** Per client: images without a copy on an offsite unit (offsiteRequired). */
  offsite: Map<string, MissingCopies>;
}

interface ReportContext {
  s: Services;
  now: number;
  offsiteUnits: string[];
  lifecycle(name: string): Promise<LifecycleSpec | undefined>;
}

/** The copies a policy's images lack by now, per client: one statement per lifecycle copy (and one for offsite). */
async function policyGaps(ctx: ReportContext, name: string, spec: PolicySpec): Promise<Gaps> {
  const { s, now, offsiteUnits } = ctx;
  const gaps: Gaps = { problems: [], copies: new Map(), offsite: new Map() };
  const addGap = (m: MissingCopies, gap: Omit<CopyGap, 'images' | 'oldestImage' | 'oldestTime'>) => {
    const list = gaps.copies.get(m.client) ?? [];
    const same = list.find((g) => g.storageUnit === gap.storageUnit && g.operation === gap.operation);
    if (same) {
      same.images += m.images;
      if (m.oldestTime < same.oldestTime) Object.assign(same, { oldestImage: m.oldestImage, oldestTime: m.oldestTime });
    } else list.push({ ...gap, images: m.images, oldestImage: m.oldestImage, oldestTime: m.oldestTime });
    gaps.copies.set(m.client, list);
  };
  for (const group of lifecycleGroups(spec)) {
    const lc = await ctx.lifecycle(group.lifecycle);
    if (!lc) {
      gaps.problems.push(`its lifecycle ${group.lifecycle} does not exist`);
      continue;
    }
    const copies = lc.copies;
    for (const [i, copy] of copies.entries()) {
      if (i === 0) continue;
      const due = ms(copy.after, 0) + (copy.window ? WINDOW_SLACK_MS : 0) + QUEUE_GRACE_MS;
      // Not required any more once expired, or once a stage from its unit is due.
      const stagedAway = copies.slice(i + 1).filter((c) => c.operation === 'stage' && c.from === copy.storageUnit).map((c) => ms(c.after, 0));
      const keptFor = Math.min(ms(copy.retention, Infinity), ...stagedAway);
      const found = await s.catalog.compliance.missingCopies({
        policy: name, units: [copy.storageUnit], until: now - due, after: Number.isFinite(keptFor) ? now - keptFor : -Infinity, schedules: group.schedules,
      });
      for (const m of found) addGap(m, { storageUnit: copy.storageUnit, operation: copy.operation, windowed: copy.window !== undefined });
    }
    if (!spec.offsiteRequired) continue;
    if (offsiteUnits.length === 0) {
      gaps.problems.push('it requires an offsite copy, but no storage unit is offsite (offsite: true)');
      continue;
    }
    const planned = copies.filter((c) => offsiteUnits.includes(c.storageUnit));
    if (planned.length === 0) gaps.problems.push(`it requires an offsite copy, but its lifecycle ${group.lifecycle} makes none (no copy on ${offsiteUnits.join(', ')})`);
    const due = (planned.length ? Math.min(...planned.map((c) => ms(c.after, 0) + (c.window ? WINDOW_SLACK_MS : 0))) : 0) + QUEUE_GRACE_MS;
    for (const m of await s.catalog.compliance.missingCopies({ policy: name, units: offsiteUnits, until: now - due, after: -Infinity, schedules: group.schedules })) {
      const had = gaps.offsite.get(m.client);
      gaps.offsite.set(m.client, had ? { client: m.client, images: had.images + m.images, oldestImage: had.oldestTime <= m.oldestTime ? had.oldestImage : m.oldestImage, oldestTime: Math.min(had.oldestTime, m.oldestTime) } : m);
    }
  }
  return gaps;
}

/** The longest time between two runs of a policy's restore tests (undefined: none scheduled). */
function testInterval(spec: PolicySpec, now: number): number | undefined {
  const t = spec.restoreTests;
  if (t === undefined) return undefined;
  return longestGap([{
    ...(t.every === undefined ? {} : { everyMs: parseDuration(t.every) }),
    ...(t.calendar === undefined ? {} : { calendar: t.calendar }),
    ...(t.timezone === undefined ? {} : { timezone: t.timezone }),
  }], { from: new Date(now), horizonMs: 400 * 86_400_000 });
}

/** A client's last restore test against the policy's rto and test schedule. */
function checkRestoreTest(spec: PolicySpec, t: LastRestoreTest | undefined, now: number, interval: number | undefined): { restoreTest: ComplianceRow['restoreTest']; problems: string[] } {
  const problems: string[] = [];
  if (!t) {
    problems.push(spec.restoreTests === undefined
      ? `no restore test has run to show the rto of ${spec.rto} can be met (give the policy restoreTests, or run coffer restore-test)`
      : 'no restore test has run yet');
    return { restoreTest: null, problems };
  }
  const rtoMs = spec.rto === undefined ? null : parseDuration(spec.rto);
  const r = t.result ?? {};
  const restoreMs = typeof r.restoreMs === 'number' ? r.restoreMs : null;
  const withinRto = rtoMs === null || restoreMs === null ? null : restoreMs <= rtoMs;
  const restoreTest = {
    job: t.job, state: t.state, time: t.ended ?? null, image: typeof r.image === 'string' ? r.image : null, restoreMs,
    sample: r.sample ?? null, passed: t.state !== 'failed' && r.passed !== false, withinRto,
  };
  const which = `the last restore test (job ${t.job}${t.ended === undefined ? '' : ` on ${isoTime(t.ended)}`})`;
  if (!restoreTest.passed) problems.push(`${which} failed: ${String(t.error?.message ?? 'see its log')}`);
  else if (withinRto === false) problems.push(`${which} took ${human(restoreMs!)} to restore, more than the rto of ${spec.rto}`);
  else if (rtoMs !== null && restoreMs === null) problems.push(`${which} recorded no restore time`);
  if (interval !== undefined && Number.isFinite(interval) && t.ended !== undefined && now - t.ended > interval + TEST_GRACE_MS) {
    problems.push(`the last restore test is ${human(now - t.ended)} old: it is overdue`);
  }
  return { restoreTest, problems };
}

async function offsiteUnitsOf(s: Services): Promise<string[]> {
  const out: string[] = [];
  for (let cursor: string | undefined; ;) {
    const page = await s.catalog.storageUnits.list({ limit: 1000, cursor });
    for (const u of page.items) if ((u.spec as { offsite?: boolean }).offsite === true) out.push(u.name);
    if (!page.next) return out;
    cursor = page.next;
  }
}

/** Builds the report: every policy (or one), every client of it. NOT_FOUND for an unknown policy. */
export async function complianceReport(s: Services, options: { policy?: string } = {}): Promise<ComplianceReport> {
  const now = s.now();
  const policies = await allPolicies(s, options.policy);
  const lifecycles = new Map<string, LifecycleSpec | undefined>();
  const ctx: ReportContext = {
    s, now, offsiteUnits: await offsiteUnitsOf(s),
    lifecycle: async (name) => {
      if (!lifecycles.has(name)) lifecycles.set(name, (await s.catalog.lifecycles.find(name))?.spec as LifecycleSpec | undefined);
      return lifecycles.get(name);
    },
  };
  const backups = new Map((await s.catalog.compliance.lastBackups(policies.map((p) => p.name))).map((b) => [key(b.policy, b.client), b]));
  const tested = policies.filter((p) => p.spec.rto !== undefined || p.spec.restoreTests !== undefined).map((p) => p.name);
  const tests = new Map((await s.catalog.compliance.lastRestoreTests(tested, RESTORE_TEST_KIND)).map((t) => [key(t.policy, t.client), t]));
  const registered = await s.catalog.clients.registered([...new Set(policies.flatMap((p) => p.spec.clients))]);

  const rows: ComplianceRow[] = [];
  for (const { name, spec } of policies) {
    const gaps = await policyGaps(ctx, name, spec);
    const rpoMs = spec.rpo === undefined ? null : parseDuration(spec.rpo);
    const interval = testInterval(spec, now);
    for (const client of spec.clients) {
      const problems = [...gaps.problems];
      if (!registered.has(client)) problems.push('the client is not registered: no agent of it has connected');
      const b = backups.get(key(name, client));
      const lastBackup = b?.image !== undefined && b.time !== undefined ? { image: b.image, time: b.time, ageMs: now - b.time } : null;
      if (!lastBackup) problems.push('no good backup');
      else if (rpoMs !== null && lastBackup.ageMs > rpoMs) problems.push(`the last good backup is ${human(lastBackup.ageMs)} old (${isoTime(lastBackup.time)}), more than the rpo of ${spec.rpo}`);

      let restoreTest: ComplianceRow['restoreTest'] = null;
      if (spec.rto !== undefined || spec.restoreTests !== undefined) {
        const checked = checkRestoreTest(spec, tests.get(key(name, client)), now, interval);
        restoreTest = checked.restoreTest;
        problems.push(...checked.problems);
      }

      const copies = (gaps.copies.get(client) ?? []).sort((a, b) => a.storageUnit.localeCompare(b.storageUnit));
      for (const g of copies) {
        problems.push(`${g.images} image(s) ${g.windowed ? `have no ${g.operation} copy on ${g.storageUnit}: it is behind its window` : `lack their ${g.operation} copy on ${g.storageUnit}`} (oldest ${g.oldestImage} of ${isoTime(g.oldestTime)})`);
      }
      let offsite: ComplianceRow['offsite'] = null;
      if (spec.offsiteRequired) {
        const o = gaps.offsite.get(client);
        offsite = { images: o?.images ?? 0, oldestImage: o?.oldestImage ?? null, oldestTime: o?.oldestTime ?? null };
        if (o) problems.push(`${o.images} image(s) have no copy on an offsite storage unit (oldest ${o.oldestImage} of ${isoTime(o.oldestTime)})`);
      }
      rows.push({ policy: name, client, status: problems.length ? 'out' : 'ok', problems, lastBackup, rpoMs, restoreTest, rtoMs: spec.rto === undefined ? null : parseDuration(spec.rto), copies, offsite });
    }
  }
  const holds = await s.catalog.compliance.holds(1000);
  const out = rows.filter((r) => r.status === 'out').length;
  return { time: now, compliant: out === 0, policies: policies.length, clients: rows.length, outOfCompliance: out, rows, holds: holds.items, holdsTotal: holds.total };
}
