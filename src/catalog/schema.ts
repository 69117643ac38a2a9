// The catalog's tables as kysely sees them: one interface per table, the columns as stored.
// Times are integers (ms since the epoch, UTC, the server's clock). JSON columns are text in
// SQLite and jsonb in PostgreSQL: written as JSON text, read back as text or as parsed values
// depending on the backend, so only `json.ts` touches them. The tables themselves are made by
// the migrations (src/catalog/migrations/); docs/server.md describes them.

import type { ColumnType, Generated } from 'kysely';

/** A JSON column: written as JSON text, read as text (SQLite) or a value (PostgreSQL). */
export type Json = ColumnType<unknown, string, string>;
export type NullableJson = ColumnType<unknown, string | null, string | null>;

export interface Database {
  coffer_migrations: MigrationsTable;
  clients: ClientsTable;
  storage_units: StorageUnitsTable;
  lifecycles: LifecyclesTable;
  policies: PoliciesTable;
  policy_revisions: RevisionsTable;
  schedules: SchedulesTable;
  images: ImagesTable;
  image_copies: CopiesTable;
  jobs: JobsTable;
  job_logs: JobLogsTable;
  users: UsersTable;
  tokens: TokensTable;
  audit: AuditTable;
  settings: SettingsTable;
  alerts: AlertsTable;
  enrollments: EnrollmentsTable;
  certificates: CertificatesTable;
}

export interface MigrationsTable {
  version: number;
  name: string;
  applied: number;
}

export interface ClientsTable {
  name: string;
  platform: string | null;
  agent_id: string | null;
  host_identity: NullableJson;
  labels: Json;
  max_streams: number | null;
  created: number;
  last_seen: number | null;
  revision: number | null;
}

export interface StorageUnitsTable {
  name: string;
  url: string;
  max_jobs: number | null;
  password_ref: string | null;
  repo_id: string | null;
  spec: Json;
  labels: Json;
  revision: number;
  updated: number;
  updated_by: string | null;
}

export interface LifecyclesTable {
  name: string;
  spec: Json;
  labels: Json;
  revision: number;
  updated: number;
  updated_by: string | null;
}

export interface PoliciesTable {
  name: string;
  spec: Json;
  labels: Json;
  revision: number;
  updated: number;
  updated_by: string | null;
}

export interface RevisionsTable {
  kind: string;
  name: string;
  revision: number;
  /** The whole applied document; null for a removal. */
  document: NullableJson;
  applied: number;
  applied_by: string | null;
}

export interface SchedulesTable {
  id: string;
  policy: string;
  client: string;
  name: string;
  /** The scheduler's Schedule (timing and missed), JSON. */
  timing: Json;
  level: string;
  lifecycle: string | null;
  since: number;
  last_slot: number | null;
  last_state: string | null;
  next_run: number | null;
  error: NullableJson;
  updated: number;
}

export interface ImagesTable {
  id: string;
  client: string;
  policy: string;
  schedule: string | null;
  level: string;
  time: number;
  state: string;
  streams: Json;
  summary: NullableJson;
  job_id: string | null;
  /** When the lifecycle pass looks at it next (default 0: at once); null: nothing left to do. */
  lifecycle_next: ColumnType<number | null, number | null | undefined, number | null>;
}

export interface CopiesTable {
  id: string;
  image_id: string;
  storage_unit: string;
  snapshots: Json;
  state: string;
  expires: number | null;
  hold: string | null;
  created: number;
  updated: number;
}

export interface JobsTable {
  id: string;
  kind: string;
  state: string;
  priority: number;
  client: string | null;
  policy: string | null;
  schedule: string | null;
  storage_unit: string | null;
  spec: Json;
  attempt: number;
  max_attempts: number;
  not_before: number | null;
  queued: number;
  started: number | null;
  ended: number | null;
  updated: number;
  progress: NullableJson;
  result: NullableJson;
  error: NullableJson;
  requested_by: string | null;
  claimed_by: string | null;
  log_seq: number;
  slot: number | null;
}

export interface JobLogsTable {
  job_id: string;
  seq: number;
  time: number;
  level: string;
  message: string;
  data: NullableJson;
}

export interface UsersTable {
  name: string;
  password_hash: string | null;
  role: string;
  grants: Json;
  created: number;
  updated: number;
  disabled: number | null;
}

export interface TokensTable {
  id: string;
  name: string;
  user: string;
  hash: string;
  role: string | null;
  kind: string;
  expires: number | null;
  created: number;
  last_used: number | null;
  revoked: number | null;
}

export interface AuditTable {
  id: Generated<number>;
  time: number;
  actor: string;
  source: string | null;
  action: string;
  target: string | null;
  outcome: string;
  details: NullableJson;
}

export interface SettingsTable {
  key: string;
  value: Json;
  updated: number;
}

export interface AlertsTable {
  id: string;
  time: number;
  updated: number;
  kind: string;
  severity: string;
  state: string;
  storage_unit: string | null;
  images: Json;
  message: string;
  hint: string | null;
  details: NullableJson;
  resolved: number | null;
  resolved_by: string | null;
  resolution: string | null;
}

export interface EnrollmentsTable {
  id: string;
  hash: string;
  name: string;
  role: string;
  expires: number;
  created: number;
  created_by: string;
  used: number | null;
  serial: string | null;
}

export interface CertificatesTable {
  serial: string;
  name: string;
  role: string;
  not_before: number;
  not_after: number;
  issued: number;
  last_seen: number | null;
  address: string | null;
  revoked: number | null;
  revoked_by: string | null;
}
