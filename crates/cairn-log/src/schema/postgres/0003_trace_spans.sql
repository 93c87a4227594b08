-- Spans: the time each hop of a request took, for its timeline. Not part of the log:
-- written in the background, never hashed, and safe to prune.
CREATE TABLE trace_spans (
    id              BIGSERIAL   PRIMARY KEY,
    correlation_id  UUID        NOT NULL,
    kind            TEXT        NOT NULL,
    name            TEXT        NOT NULL,
    org_id          UUID,
    started_at      TIMESTAMPTZ NOT NULL,
    duration_us     BIGINT      NOT NULL CHECK (duration_us >= 0),
    error           TEXT,
    attributes      JSONB       NOT NULL
);

CREATE INDEX trace_spans_by_correlation ON trace_spans (correlation_id, started_at);

GRANT SELECT ON trace_spans TO cairn_tenant_reader;
ALTER TABLE trace_spans ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON trace_spans FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(org_id));
