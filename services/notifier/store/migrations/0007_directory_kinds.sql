-- Staff and participants are kept apart in the directory. User ids are the identity
-- provider's, and a participant's may be the very id a staff member has: keyed by agency and
-- user alone, a participant setting their own preferences took over that staff member's entry
-- (their address, and with it their mail). Each entry now has its kind, derived from its role,
-- and the key includes it. Every entry stored before keeps its place (the old key was unique,
-- so no two of them meet).
ALTER TABLE notifier.directory
    ADD COLUMN kind text NOT NULL GENERATED ALWAYS AS
        (CASE WHEN role = 'participant' THEN 'participant' ELSE 'staff' END) STORED;
ALTER TABLE notifier.directory DROP CONSTRAINT directory_pkey,
    ADD PRIMARY KEY (agency, kind, user_id);
