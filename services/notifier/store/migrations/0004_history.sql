-- When this schema's memory of what was sent begins: stamped by the first notifier that starts
-- on it. A notice that fell due before then is not sent (the schema may have been rebuilt, and
-- whether it went out before cannot be known).
CREATE TABLE notifier.history (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    began_at timestamptz NOT NULL
);
