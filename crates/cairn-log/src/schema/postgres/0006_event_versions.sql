-- Payload versions: the version of its event type's payload an event was written at.
-- Every event written before this migration is version 1, and the hash covers the
-- version only when it is not 1, so their stored hashes and signed checkpoints still
-- verify. Version 0 is the payload shape of events imported from the seed's stack.
-- A constant default does not rewrite the table, and the check is NOT VALID, so the
-- migration does not scan the log under its lock (every existing row is 1).
ALTER TABLE domain_events ADD COLUMN event_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE domain_events ADD CONSTRAINT domain_events_event_version_check
    CHECK (event_version >= 0) NOT VALID;

CREATE OR REPLACE FUNCTION domain_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'domain_events is append-only: events are never deleted'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.position, NEW.event_id, NEW.stream_type, NEW.stream_id, NEW.stream_version,
        NEW.event_type, NEW.event_version, NEW.event_data, NEW.event_metadata,
        NEW.correlation_id, NEW.org_id, NEW.created_at, NEW.hash)
       IS DISTINCT FROM
       (OLD.position, OLD.event_id, OLD.stream_type, OLD.stream_id, OLD.stream_version,
        OLD.event_type, OLD.event_version, OLD.event_data, OLD.event_metadata,
        OLD.correlation_id, OLD.org_id, OLD.created_at, OLD.hash)
    THEN
        RAISE EXCEPTION 'domain_events is append-only: only processed_at and processing_error may change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

-- The events not at version 1, by type: how start-up finds events a newer build wrote.
CREATE INDEX domain_events_versioned ON domain_events (event_type, event_version)
    WHERE event_version <> 1;
