-- Holds: a stream whose event could not be applied (and whose route holds), or whose
-- event's route is paused, keeps its later events stored but not applied until the
-- event it waits behind is retried, skipped or resumed. The hold is derived from the
-- log (replay rebuilds it), and the writer reads it with the stream's version.
ALTER TABLE domain_events ADD COLUMN held_behind BIGINT;

CREATE INDEX domain_events_held ON domain_events (stream_id, position)
    WHERE held_behind IS NOT NULL;

CREATE TABLE stream_holds (
    stream_id    UUID        PRIMARY KEY,
    stream_type  TEXT        NOT NULL,
    org_id       UUID,
    behind       BIGINT      NOT NULL,
    cause        TEXT        NOT NULL CHECK (cause IN ('failed', 'paused')),
    since        TIMESTAMPTZ NOT NULL
);

GRANT SELECT ON stream_holds TO cairn_tenant_reader;
ALTER TABLE stream_holds ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON stream_holds FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(org_id));

-- The hash of the newest event that paused or resumed a handler route: a writer that
-- finds it changed reads the paused routes again.
ALTER TABLE log_head ADD COLUMN controls TEXT NOT NULL DEFAULT '';
