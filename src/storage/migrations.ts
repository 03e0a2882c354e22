/**
 * The PostgreSQL schema of every store, as numbered migrations. A migration is never edited once
 * released: a change is a new one with the next number. The SQLite files keep their own
 * `create ... if not exists` schemas beside each store (one file each, as before).
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: 'stores',
    sql: `
create table drafts (
  id text primary key,
  identifier_value text not null unique,
  patient_id text not null,
  encounter_id text not null,
  kind text not null,
  updated_at text not null,
  body text not null
);
create index drafts_patient on drafts (patient_id);
create index drafts_updated on drafts (updated_at);
create table regenerations (
  encounter_id text not null,
  kind text not null,
  body text not null,
  requested_at text not null,
  primary key (encounter_id, kind)
);
create table generations (
  encounter_id text not null,
  kind text not null,
  generation integer not null,
  updated_at text not null,
  primary key (encounter_id, kind)
);
create table record_changes (
  draft_id text primary key,
  body text not null,
  updated_at text not null
);

create table smart_sessions (key text primary key, value text not null, expires_at bigint not null);
create index smart_sessions_expiry on smart_sessions (expires_at);

create table subscription_state (
  subscription text primary key,
  highest integer not null,
  last_contact_at bigint not null,
  status text
);
create table subscription_seen (
  subscription text not null,
  event_number integer not null,
  signature text not null,
  received_at bigint not null,
  primary key (subscription, event_number)
);
create table subscription_missing (
  subscription text not null,
  event_number integer not null,
  detected_at bigint not null,
  primary key (subscription, event_number)
);
create table service_subscription (
  singleton integer primary key check (singleton = 1),
  reference text not null,
  ensured_at bigint not null
);
create table poll_cursor (name text primary key, cursor text not null);
create table poll_seen (
  resource_id text not null,
  version text not null,
  last_updated text not null,
  primary key (resource_id, version)
);

create table nudge_delivery (
  nudge_id text primary key,
  rule_id text not null,
  rule_version text not null,
  patient_id text not null,
  occasion_id text not null,
  delivered_at bigint not null
);
create index nudge_delivery_rule_patient on nudge_delivery (rule_id, patient_id, delivered_at);
create index nudge_delivery_occasion on nudge_delivery (patient_id, occasion_id);
create table nudge_outcome (
  nudge_id text primary key,
  outcome text not null,
  reason text,
  source text not null,
  recorded_at bigint not null
);
create table nudge_delivery_mode (nudge_id text primary key, silent integer not null);
create table nudge_snooze (
  nudge_id text not null,
  rule_id text not null,
  patient_id text not null,
  until bigint not null,
  recorded_at bigint not null,
  primary key (nudge_id, until)
);
create index nudge_snooze_rule_patient on nudge_snooze (rule_id, patient_id, until);
create table rule_logic (
  rule_id text not null,
  rule_version text not null,
  logic_fingerprint text not null,
  first_served_at bigint not null,
  primary key (rule_id, rule_version)
);

create table drafted_nudges (
  encounter_id text primary key,
  patient_id text not null,
  body text not null,
  remembered_at bigint not null
);
create index drafted_nudges_patient on drafted_nudges (patient_id, remembered_at);
`,
  },
  {
    version: 2,
    name: 'rate-limits',
    sql: `
create table rate_buckets (
  name text not null,
  client text not null,
  tokens double precision not null,
  refilled_at bigint not null,
  allowed integer not null,
  primary key (name, client)
);
create index rate_buckets_refilled on rate_buckets (refilled_at);
`,
  },
];
