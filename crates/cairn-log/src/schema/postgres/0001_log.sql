-- The append-only event log (PostgreSQL).

CREATE TABLE log_head (
    id              SMALLINT PRIMARY KEY CHECK (id = 1),
    last_position   BIGINT NOT NULL,
    last_hash       TEXT   NOT NULL,
    failed_events   BIGINT NOT NULL
);

INSERT INTO log_head (id, last_position, last_hash, failed_events)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE domain_events (
    position                  BIGINT      PRIMARY KEY CHECK (position > 0),
    event_id                  UUID        NOT NULL UNIQUE,
    stream_type               TEXT        NOT NULL,
    stream_id                 UUID        NOT NULL,
    stream_version            BIGINT      NOT NULL CHECK (stream_version > 0),
    event_type                TEXT        NOT NULL,
    event_data                JSONB       NOT NULL,
    event_metadata            JSONB       NOT NULL,
    correlation_id            UUID        NOT NULL,
    org_id                    UUID,
    created_at                TIMESTAMPTZ NOT NULL,
    processed_at              TIMESTAMPTZ,
    processing_error_code     TEXT,
    processing_error_message  TEXT,
    hash                      TEXT        NOT NULL,
    UNIQUE (stream_id, stream_version),
    CHECK ((processing_error_code IS NULL) = (processing_error_message IS NULL))
);

CREATE INDEX domain_events_by_correlation ON domain_events (correlation_id, position);
CREATE INDEX domain_events_by_org ON domain_events (org_id, position) WHERE org_id IS NOT NULL;
CREATE INDEX domain_events_failed ON domain_events (processing_error_code, position)
    WHERE processing_error_code IS NOT NULL;

-- Events are immutable: only the processing columns ever change.
CREATE FUNCTION domain_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'domain_events is append-only: events are never deleted'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.position, NEW.event_id, NEW.stream_type, NEW.stream_id, NEW.stream_version,
        NEW.event_type, NEW.event_data, NEW.event_metadata, NEW.correlation_id, NEW.org_id,
        NEW.created_at, NEW.hash)
       IS DISTINCT FROM
       (OLD.position, OLD.event_id, OLD.stream_type, OLD.stream_id, OLD.stream_version,
        OLD.event_type, OLD.event_data, OLD.event_metadata, OLD.correlation_id, OLD.org_id,
        OLD.created_at, OLD.hash)
    THEN
        RAISE EXCEPTION 'domain_events is append-only: only processed_at and processing_error may change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER domain_events_immutable
    BEFORE UPDATE OR DELETE ON domain_events
    FOR EACH ROW EXECUTE FUNCTION domain_events_immutable();

CREATE TRIGGER domain_events_no_truncate
    BEFORE TRUNCATE ON domain_events
    FOR EACH STATEMENT EXECUTE FUNCTION domain_events_immutable();

CREATE TABLE idempotency_keys (
    key             TEXT        PRIMARY KEY,
    fingerprint     TEXT        NOT NULL,
    first_position  BIGINT      NOT NULL,
    n_events        BIGINT      NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
