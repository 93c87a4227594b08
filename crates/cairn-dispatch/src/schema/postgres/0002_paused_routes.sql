-- Handler routes an operator paused: a projection of the dispatch.route_paused and
-- dispatch.route_resumed events. An event whose route is here is stored and held,
-- not applied, until the route is resumed.
CREATE TABLE dispatch_paused_routes (
    stream_type  TEXT        NOT NULL,
    -- '' when the whole stream type is paused.
    event_type   TEXT        NOT NULL,
    paused_by    TEXT        NOT NULL,
    reason       TEXT        NOT NULL,
    since        TIMESTAMPTZ NOT NULL,
    position     BIGINT      NOT NULL,
    PRIMARY KEY (stream_type, event_type)
);

-- Platform-wide: every tenant's reads may see which routes are paused (their own
-- commands are refused while one is).
GRANT SELECT ON dispatch_paused_routes TO cairn_tenant_reader;
