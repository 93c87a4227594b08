-- Payload versions: the version of its event type's payload an event was written at.
-- Every event written before this migration is version 1, and the hash covers the
-- version only when it is not 1, so their stored hashes and signed checkpoints still
-- verify. Version 0 is the payload shape of events imported from the seed's stack.
ALTER TABLE domain_events ADD COLUMN event_version INTEGER NOT NULL DEFAULT 1
    CHECK (event_version >= 0);

DROP TRIGGER domain_events_immutable;
CREATE TRIGGER domain_events_immutable
BEFORE UPDATE OF position, event_id, stream_type, stream_id, stream_version, event_type,
                 event_version, event_data, event_metadata, correlation_id, org_id,
                 created_at, hash
ON domain_events
BEGIN
    SELECT RAISE(ABORT, 'domain_events is append-only: only processed_at and processing_error may change');
END;

-- The events not at version 1, by type: how start-up finds events a newer build wrote.
CREATE INDEX domain_events_versioned ON domain_events (event_type, event_version)
    WHERE event_version <> 1;
