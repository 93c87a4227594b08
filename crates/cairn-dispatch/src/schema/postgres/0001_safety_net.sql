-- Audit of projection writes made by the safety net instead of a handler.
CREATE TABLE safety_net_writes (
    id              UUID PRIMARY KEY,
    at              TIMESTAMPTZ NOT NULL,
    projection      TEXT NOT NULL,
    row_key         JSONB NOT NULL,
    reason          TEXT NOT NULL,
    correlation_id  UUID NOT NULL,
    context         JSONB NOT NULL
);
