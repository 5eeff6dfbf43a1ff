-- The append-only event store of the records service.

CREATE TABLE records.events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction: the feed orders by (transaction_id, global_position) and only
    -- hands out events of transactions older than every one still running, so nothing that
    -- commits late can land behind a reader's checkpoint.
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       uuid NOT NULL,
    version         integer NOT NULL CHECK (version > 0),
    event_id        uuid NOT NULL UNIQUE,
    type            text NOT NULL,
    schema_version  integer NOT NULL CHECK (schema_version > 0),
    data            jsonb NOT NULL,
    metadata        jsonb NOT NULL,
    agency          text NOT NULL,
    recorded_at     timestamptz NOT NULL,
    prev_hash       text NOT NULL,
    hash            text NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE INDEX events_feed_order ON records.events (transaction_id, global_position);
CREATE INDEX events_stream_time ON records.events (stream_id, recorded_at);

-- The head of each stream: its agency, version and last hash; locked row by row on append.
CREATE TABLE records.streams (
    stream_id  uuid PRIMARY KEY,
    agency     text NOT NULL,
    version    integer NOT NULL,
    last_hash  text NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE records.idempotency_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    fingerprint  text NOT NULL,
    stream_id    uuid NOT NULL,
    event_ids    uuid[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE FUNCTION records.refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'records.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON records.events
    FOR EACH ROW EXECUTE FUNCTION records.refuse_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON records.events
    FOR EACH STATEMENT EXECUTE FUNCTION records.refuse_event_change();

REVOKE UPDATE, DELETE, TRUNCATE ON records.events FROM PUBLIC;

-- Wakes long-polling feed readers; delivered at commit, once per transaction.
CREATE FUNCTION records.notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('records_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON records.events
    FOR EACH STATEMENT EXECUTE FUNCTION records.notify_appended();
