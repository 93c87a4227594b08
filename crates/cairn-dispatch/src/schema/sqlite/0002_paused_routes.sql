-- Handler routes an operator paused: a projection of the dispatch.route_paused and
-- dispatch.route_resumed events. An event whose route is here is stored and held,
-- not applied, until the route is resumed.
CREATE TABLE dispatch_paused_routes (
    stream_type  TEXT    NOT NULL,
    -- '' when the whole stream type is paused.
    event_type   TEXT    NOT NULL,
    paused_by    TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    since        TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    PRIMARY KEY (stream_type, event_type)
) STRICT;
