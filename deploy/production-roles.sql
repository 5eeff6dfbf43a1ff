-- One database role per service, each with exactly the privileges its code uses.
--
-- Run as the owner of the schemas (the role the migration Job connects as, OWNER_DATABASE_URL)
-- after `casetrail migrate`, e.g. `psql "$OWNER_DATABASE_URL" -f deploy/production-roles.sql`.
-- Creating the roles the first time also needs CREATEROLE (or let a superuser run it once).
-- It is safe to run again, and must be, whenever a release changes this file: it creates a role
-- only when it is missing and never touches passwords (set them once yourself:
-- ALTER ROLE casetrail_records PASSWORD '…'), and it first takes away every privilege the two
-- roles hold on the two schemas, so each run leaves them with exactly what is granted here.
-- All of it in one transaction: a running service never sees the roles half-granted.
--
-- casetrail_records: the records service. Events and the access log (the record of who read
--   which case) can be read and appended to, never changed; the other tables as the code
--   uses them (services/records/store/, services/records/projections/).
-- casetrail_notifier: the notifier. Its own schema only: it reads cases through the feed, so
--   it has no way into records' personal data (services/notifier/store/).
-- Neither may change schema_migrations or create anything: only the owner migrates.
BEGIN;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'casetrail_records') THEN
        CREATE ROLE casetrail_records LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'casetrail_notifier') THEN
        CREATE ROLE casetrail_notifier LOGIN;
    END IF;
END
$$;

-- From nothing: whatever an earlier version of this file (or a hand) granted is taken back.
REVOKE ALL ON ALL TABLES IN SCHEMA records, notifier FROM casetrail_records, casetrail_notifier;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA records, notifier
    FROM casetrail_records, casetrail_notifier;
REVOKE ALL ON SCHEMA records, notifier FROM casetrail_records, casetrail_notifier;

-- The records service.
GRANT USAGE ON SCHEMA records TO casetrail_records;
GRANT SELECT, INSERT ON records.events, records.idempotency_keys, records.access_log
    TO casetrail_records;
GRANT SELECT, INSERT, UPDATE ON records.streams TO casetrail_records;       -- the head moves
GRANT SELECT, INSERT, UPDATE, DELETE ON records.plans TO casetrail_records; -- upsert; rebuild
GRANT SELECT, INSERT, DELETE ON records.outcome_facts TO casetrail_records; -- rebuild clears
GRANT SELECT ON records.schema_migrations TO casetrail_records;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA records TO casetrail_records;

-- The notifier.
GRANT USAGE ON SCHEMA notifier TO casetrail_notifier;
GRANT SELECT, UPDATE ON notifier.checkpoint TO casetrail_notifier;
GRANT SELECT, INSERT, UPDATE ON notifier.cases, notifier.directory, notifier.notifications
    TO casetrail_notifier;
GRANT SELECT, INSERT, DELETE ON notifier.goals, notifier.steps, notifier.reviews
    TO casetrail_notifier;                                                   -- rewritten per case
GRANT SELECT, INSERT ON notifier.attempts, notifier.history, notifier.access_log
    TO casetrail_notifier;
GRANT SELECT ON notifier.schema_migrations TO casetrail_notifier;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA notifier TO casetrail_notifier;

-- Tables and sequences a later migration creates (as the schema's owner, which runs them):
-- each service may read and append to those of its own schema and nothing more, until a
-- release that needs more changes this file and it is run again.
DO $$
DECLARE
    owned record;
BEGIN
    FOR owned IN
        SELECT r.schema, n.nspowner::regrole::text AS owner, r.service
        FROM (VALUES ('records', 'casetrail_records'), ('notifier', 'casetrail_notifier'))
            AS r(schema, service)
        JOIN pg_namespace n ON n.nspname = r.schema
    LOOP
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA %I REVOKE ALL ON TABLES'
                       ' FROM casetrail_records, casetrail_notifier', owned.owner, owned.schema);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA %I REVOKE ALL ON'
                       ' SEQUENCES FROM casetrail_records, casetrail_notifier',
                       owned.owner, owned.schema);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA %I GRANT SELECT, INSERT'
                       ' ON TABLES TO %I', owned.owner, owned.schema, owned.service);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA %I GRANT USAGE ON'
                       ' SEQUENCES TO %I', owned.owner, owned.schema, owned.service);
    END LOOP;
END
$$;

COMMIT;
