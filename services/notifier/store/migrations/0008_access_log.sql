-- Who read which case here: a supervisor's reads of a case's data in the notifier (its
-- schedule, its notifications, a participant's preferences), as records.access_log holds their
-- reads of the record (docs/decisions/0203). Appended to, never changed. Exported page by page
-- in commit order, as records' log is: (transaction_id, id), up to the snapshot's xmin.
CREATE TABLE notifier.access_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at              timestamptz NOT NULL,
    agency          text NOT NULL,
    actor_sub       text NOT NULL,
    actor_role      text NOT NULL,
    case_id         uuid,           -- null: a participant's preferences naming no case
    participant     text,           -- the participant whose preferences were read
    action          text NOT NULL,  -- read, list
    what            text NOT NULL,
    request_id      text
);

CREATE INDEX access_log_commit_order ON notifier.access_log (agency, transaction_id, id);
CREATE INDEX access_log_case ON notifier.access_log (agency, case_id, transaction_id, id);
