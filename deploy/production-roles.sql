-- Run once as the database owner after `casetrail migrate`: the services then connect as
-- casetrail_app, which may read and append events but, like everyone, never change them.
CREATE ROLE casetrail_app LOGIN PASSWORD 'set-me';
GRANT USAGE ON SCHEMA records, notifier TO casetrail_app;
GRANT SELECT, INSERT ON records.events TO casetrail_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON records.streams, records.plans,
      records.idempotency_keys, records.access_log, records.outcome_facts TO casetrail_app;
GRANT SELECT ON records.schema_migrations TO casetrail_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA records TO casetrail_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA notifier TO casetrail_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA notifier TO casetrail_app;
