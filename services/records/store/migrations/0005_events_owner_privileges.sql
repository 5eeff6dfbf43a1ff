-- The owner, too, is refused changes to events by privilege, not only by the triggers: the
-- owner may disable a table's triggers (ALTER TABLE … DISABLE TRIGGER), and REVOKE … FROM
-- PUBLIC in 0001 took nothing away, because PUBLIC never had these rights. An owner could grant
-- them back to itself, deliberately; superusers bypass privileges altogether. The hash chain
-- exposes whatever either does.
DO $$
BEGIN
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON records.events FROM %I',
                   (SELECT tableowner FROM pg_tables
                    WHERE schemaname = 'records' AND tablename = 'events'));
END
$$;
