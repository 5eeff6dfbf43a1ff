-- A manual retry of a dead letter (POST /v1/notifications/{id}/retry) is a person's decision to
-- send it now: it restarts the "too late to be useful" clock and the retry budget.
ALTER TABLE notifier.notifications ADD COLUMN revived_at timestamptz;
ALTER TABLE notifier.notifications ADD COLUMN attempts_before_revival integer NOT NULL DEFAULT 0;
