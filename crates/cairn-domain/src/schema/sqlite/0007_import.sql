-- Not projections: where `cairn import` stands in its source, and the source's events
-- it could not map. Replay neither reads nor writes them. Each import unit of work
-- appends its events and moves the cursor in one transaction, so an interrupted
-- import resumes where its last commit left it and never imports an event twice.
CREATE TABLE import_cursor (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    source             TEXT    NOT NULL,
    source_database    TEXT    NOT NULL,
    source_first_id    TEXT    NOT NULL,
    source_order       TEXT    NOT NULL CHECK (source_order IN ('position', 'created_at')),
    read_through       TEXT    NOT NULL,
    completed_through  TEXT,
    stream_id          TEXT    NOT NULL,
    started_position   INTEGER NOT NULL,
    signed_position    INTEGER,
    n_read             INTEGER NOT NULL,
    n_imported         INTEGER NOT NULL,
    n_unmapped         INTEGER NOT NULL,
    started_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL
) STRICT;

CREATE TABLE import_unmapped (
    source_id          TEXT    PRIMARY KEY,
    read_number        INTEGER NOT NULL UNIQUE,
    source_position    INTEGER,
    source_created_at  TEXT    NOT NULL,
    stream_type        TEXT    NOT NULL,
    stream_id          TEXT    NOT NULL,
    event_type         TEXT    NOT NULL,
    cairn_stream_id    TEXT,
    kind               TEXT    NOT NULL
        CHECK (kind IN ('unknown_type', 'refused', 'invalid', 'conflict', 'orphan')),
    reason             TEXT    NOT NULL
) STRICT;
