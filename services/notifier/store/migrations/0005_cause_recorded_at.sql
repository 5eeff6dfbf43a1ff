-- When the records service recorded the event that called for a notice (for a re-dated notice,
-- the event that re-dated it). A notice due before this schema's history began is held back
-- only if its cause is older than that history too: one first called for later (a step written
-- today with yesterday's date) cannot have been sent by an earlier notifier. Rows from before
-- this column existed keep NULL: unknown, so they are treated as older.
ALTER TABLE notifier.notifications ADD COLUMN cause_recorded_at timestamptz;
