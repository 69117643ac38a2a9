// Example documents: the ones issue #9 and its successor must accept as written, kept here so
// the tests, `coffer` help texts and docs all show the same thing.

/** A storage unit, two lifecycles and a policy for client web01 (issue #9). */
export const EXAMPLE_SITE = `apiVersion: coffer/v1
kind: StorageUnit
metadata: { name: primary }
spec:
  url: /var/lib/coffer/primary        # a path, file:///path or s3://bucket/prefix?endpoint=...
  maxJobs: 4
---
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: standard }
spec:
  copies:
    - { operation: backup, storageUnit: primary, retention: 30d }
---
apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: long-term }
spec:
  copies:
    - { operation: backup, storageUnit: primary, retention: 7y }
---
apiVersion: coffer/v1
kind: Policy
metadata:
  name: web-server
  labels: { owner: web-team, compliance: sox }
spec:
  clients: [web01]
  selections:
    - paths: [/srv/www, /etc]
      exclude: ["*.tmp", "/srv/www/cache"]
    - command: pg_dump shop
      filename: shop.sql
      pre: psql -c CHECKPOINT shop
  schedules:
    - { name: daily, level: incremental, calendar: "0 1 * * *", window: { start: "01:00", duration: 6h } }
    - { name: weekly, level: full, calendar: "0 2 * * 0", lifecycle: long-term }
  lifecycle: standard
  rpo: 24h
  rto: 4h
  maxStreams: 2
`;

/** A lifecycle with a duplicate and a stage (the issue after #9). */
export const EXAMPLE_GOLD = `apiVersion: coffer/v1
kind: Lifecycle
metadata: { name: gold }
spec:
  copies:
    - { operation: backup,    storageUnit: primary, retention: 14d }
    - { operation: duplicate, storageUnit: offsite, retention: 1y, window: { start: "06:00", duration: 12h } }
    - { operation: stage,     storageUnit: archive, retention: 7y, after: 30d, from: offsite }
`;
