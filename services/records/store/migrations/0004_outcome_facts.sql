-- Outcome analytics read these facts, one per event that matters to them (see
-- services/records/projections/outcomes.py); rebuilt from the events with the plans.
-- After upgrading a database that already holds events, run `casetrail rebuild-projections`
-- once to derive the facts of the events recorded before this table existed.
CREATE TABLE records.outcome_facts (
    event_id    uuid PRIMARY KEY,
    case_id     uuid NOT NULL,
    version     integer NOT NULL,
    agency      text NOT NULL,
    kind        text NOT NULL,
    occurred_on date NOT NULL,
    domain      text,
    days        integer,
    agreed      boolean,
    co_created  boolean,
    on_time     boolean
);

CREATE INDEX outcome_facts_agency_day ON records.outcome_facts (agency, occurred_on);
