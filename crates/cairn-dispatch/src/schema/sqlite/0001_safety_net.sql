-- Audit of projection writes made by the safety net instead of a handler.
CREATE TABLE safety_net_writes (
    id              TEXT PRIMARY KEY,
    at              TEXT NOT NULL,
    projection      TEXT NOT NULL,
    row_key         TEXT NOT NULL,
    reason          TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    context         TEXT NOT NULL
) STRICT;
