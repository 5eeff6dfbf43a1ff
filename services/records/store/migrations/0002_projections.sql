-- Read models, rebuilt from records.events by `casetrail rebuild-projections`.

-- The current plan of each case, written in the same transaction as its events; it doubles as
-- the caseload index (per case manager: status, next review due, open step due dates).
CREATE TABLE records.plans (
    case_id             uuid PRIMARY KEY,
    agency              text NOT NULL,
    version             integer NOT NULL,
    status              text NOT NULL,
    case_manager        text NOT NULL,
    risk_level          text NOT NULL,
    participant_name    text NOT NULL,
    next_review_due     date,
    open_step_due_dates date[] NOT NULL,
    active_goals        integer NOT NULL,
    opened_at           timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    view                jsonb NOT NULL
);

CREATE INDEX plans_caseload ON records.plans (agency, case_manager, status, case_id);
CREATE INDEX plans_review_due ON records.plans (agency, next_review_due, case_id);

-- Who read which case: supervisors' and auditors' reads are themselves part of the record.
CREATE TABLE records.access_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    agency      text NOT NULL,
    actor_sub   text NOT NULL,
    actor_role  text NOT NULL,
    case_id     uuid NOT NULL,
    action      text NOT NULL,
    request_id  text
);

CREATE INDEX access_log_case ON records.access_log (case_id, at);
