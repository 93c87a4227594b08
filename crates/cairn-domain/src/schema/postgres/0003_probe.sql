-- The integration probe's projection: one row per ping, on the probe's own tenant.
-- Row-level security with no policy for the tenant reader: no tenant ever reads it.
CREATE TABLE probe_pings (
    id           UUID        PRIMARY KEY,
    sent_at      TIMESTAMPTZ NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL
);
ALTER TABLE probe_pings ENABLE ROW LEVEL SECURITY;
