-- The integration probe's projection: one row per ping, on the probe's own tenant.
CREATE TABLE probe_pings (
    id           TEXT PRIMARY KEY,
    sent_at      TEXT NOT NULL,
    recorded_at  TEXT NOT NULL
) STRICT;
