-- Every claim of due rows gets its own token. Renewing a lease, the last check before a send
-- and recording the outcome all require the token to be unchanged: once a lease ran out and
-- another instance claimed the row, the first one can neither send it nor overwrite the record.
ALTER TABLE notifier.notifications ADD COLUMN claim_token uuid;
CREATE INDEX notifications_by_claim ON notifier.notifications (claim_token)
    WHERE claim_token IS NOT NULL;
