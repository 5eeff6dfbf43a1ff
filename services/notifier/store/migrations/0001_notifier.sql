-- The notifier's own schema: its checkpoint on the records feed, its read model of cases
-- (built only from feed events), its directory of recipients and the durable schedule.

CREATE TABLE notifier.checkpoint (
    name text PRIMARY KEY,
    position text NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE notifier.cases (
    case_id uuid PRIMARY KEY,
    agency text NOT NULL,
    case_manager text NOT NULL,
    status text NOT NULL CHECK (status IN ('open', 'closed')),
    participant_name text NOT NULL,
    preferred_name text,
    participant_email text,
    last_version integer NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX cases_by_manager ON notifier.cases (agency, case_manager);

CREATE TABLE notifier.goals (
    case_id uuid NOT NULL REFERENCES notifier.cases ON DELETE CASCADE,
    goal_id uuid NOT NULL,
    title text NOT NULL,
    in_their_words text,
    status text NOT NULL,
    target_date date,
    PRIMARY KEY (case_id, goal_id)
);

CREATE TABLE notifier.steps (
    case_id uuid NOT NULL REFERENCES notifier.cases ON DELETE CASCADE,
    step_id uuid NOT NULL,
    goal_id uuid NOT NULL,
    description text NOT NULL,
    due_date date,
    status text NOT NULL,
    PRIMARY KEY (case_id, step_id)
);

-- pending reviews only: a review held leaves this table
CREATE TABLE notifier.reviews (
    case_id uuid NOT NULL REFERENCES notifier.cases ON DELETE CASCADE,
    review_id uuid NOT NULL,
    due_date date NOT NULL,
    scheduled_at timestamptz NOT NULL,
    PRIMARY KEY (case_id, review_id)
);

-- preferences double as the directory: who belongs to which agency, in which role
CREATE TABLE notifier.directory (
    agency text NOT NULL,
    user_id text NOT NULL,
    role text NOT NULL,
    email text,
    delivery text NOT NULL CHECK (delivery IN ('immediate', 'daily_digest')),
    timezone text NOT NULL,
    quiet_start time,
    quiet_end time,
    celebrations boolean NOT NULL,
    cases uuid[] NOT NULL DEFAULT '{}',
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (agency, user_id)
);
CREATE INDEX directory_by_role ON notifier.directory (agency, role);
CREATE INDEX directory_by_case ON notifier.directory USING gin (cases);

CREATE TABLE notifier.notifications (
    id uuid PRIMARY KEY,
    key text NOT NULL UNIQUE,
    kind text NOT NULL,
    case_id uuid,
    agency text NOT NULL,
    recipient_role text NOT NULL
        CHECK (recipient_role IN ('case_manager', 'participant', 'supervisors', 'user')),
    recipient text NOT NULL,
    due_at timestamptz NOT NULL,
    not_before timestamptz NOT NULL,
    status text NOT NULL
        CHECK (status IN ('scheduled', 'sent', 'failed', 'dead', 'cancelled')),
    attempts integer NOT NULL DEFAULT 0,
    last_code integer,
    last_error text,
    message_id text NOT NULL,
    context jsonb NOT NULL DEFAULT '{}',
    -- cancelled because the case no longer called for it (closed, held, revised): a later
    -- event (a reopening) may call for it again
    cancelled_by_case boolean NOT NULL DEFAULT false,
    source_event uuid,
    parent_id uuid REFERENCES notifier.notifications,
    digest_id uuid REFERENCES notifier.notifications,
    lease_owner text,
    lease_until timestamptz,
    first_attempt_at timestamptz,
    sent_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX notifications_due ON notifier.notifications (not_before)
    WHERE status IN ('scheduled', 'failed') AND digest_id IS NULL;
CREATE INDEX notifications_by_case ON notifier.notifications (case_id, due_at);
CREATE INDEX notifications_by_recipient ON notifier.notifications (agency, recipient, due_at);
CREATE INDEX notifications_by_digest ON notifier.notifications (digest_id)
    WHERE digest_id IS NOT NULL;

-- every SMTP attempt, with the server's reply code (NULL: no reply, e.g. connection refused)
CREATE TABLE notifier.attempts (
    notification_id uuid NOT NULL REFERENCES notifier.notifications,
    attempt integer NOT NULL,
    attempted_at timestamptz NOT NULL,
    smtp_code integer,
    outcome text NOT NULL CHECK (outcome IN ('sent', 'transient', 'permanent', 'skipped')),
    error text,
    PRIMARY KEY (notification_id, attempt)
);

INSERT INTO notifier.checkpoint (name, position, updated_at) VALUES ('records-feed', '', now());
