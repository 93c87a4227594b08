-- The append-only event log (SQLite).

CREATE TABLE log_head (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    last_position   INTEGER NOT NULL,
    last_hash       TEXT    NOT NULL,
    failed_events   INTEGER NOT NULL
) STRICT;

INSERT INTO log_head (id, last_position, last_hash, failed_events)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE domain_events (
    position                  INTEGER PRIMARY KEY CHECK (position > 0),
    event_id                  TEXT    NOT NULL UNIQUE,
    stream_type               TEXT    NOT NULL,
    stream_id                 TEXT    NOT NULL,
    stream_version            INTEGER NOT NULL CHECK (stream_version > 0),
    event_type                TEXT    NOT NULL,
    event_data                TEXT    NOT NULL,
    event_metadata            TEXT    NOT NULL,
    correlation_id            TEXT    NOT NULL,
    org_id                    TEXT,
    created_at                TEXT    NOT NULL,
    processed_at              TEXT,
    processing_error_code     TEXT,
    processing_error_message  TEXT,
    hash                      TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version),
    CHECK ((processing_error_code IS NULL) = (processing_error_message IS NULL))
) STRICT;

CREATE INDEX domain_events_by_correlation ON domain_events (correlation_id, position);
CREATE INDEX domain_events_by_org ON domain_events (org_id, position) WHERE org_id IS NOT NULL;
CREATE INDEX domain_events_failed ON domain_events (processing_error_code, position)
    WHERE processing_error_code IS NOT NULL;

-- Events are immutable: only the processing columns ever change.
CREATE TRIGGER domain_events_no_delete BEFORE DELETE ON domain_events
BEGIN
    SELECT RAISE(ABORT, 'domain_events is append-only: events are never deleted');
END;

CREATE TRIGGER domain_events_immutable
BEFORE UPDATE OF position, event_id, stream_type, stream_id, stream_version, event_type,
                 event_data, event_metadata, correlation_id, org_id, created_at, hash
ON domain_events
BEGIN
    SELECT RAISE(ABORT, 'domain_events is append-only: only processed_at and processing_error may change');
END;

CREATE TABLE idempotency_keys (
    key             TEXT    PRIMARY KEY,
    fingerprint     TEXT    NOT NULL,
    first_position  INTEGER NOT NULL,
    n_events        INTEGER NOT NULL,
    created_at      TEXT    NOT NULL
) STRICT;
