-- Spans: the time each hop of a request took, for its timeline. Not part of the log:
-- written in the background, never hashed, and safe to prune.
CREATE TABLE trace_spans (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    correlation_id  TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    org_id          TEXT,
    started_at      TEXT    NOT NULL,
    duration_us     INTEGER NOT NULL CHECK (duration_us >= 0),
    error           TEXT,
    attributes      TEXT    NOT NULL
) STRICT;

CREATE INDEX trace_spans_by_correlation ON trace_spans (correlation_id, started_at);
