-- Not projections: where `cairn import` stands in its source, and the source's events
-- it could not map. Replay neither reads nor writes them. Each import unit of work
-- appends its events and moves the cursor in one transaction, so an interrupted
-- import resumes where its last commit left it and never imports an event twice.
CREATE TABLE import_cursor (
    id                 SMALLINT    PRIMARY KEY CHECK (id = 1),
    source             TEXT        NOT NULL,
    source_database    TEXT        NOT NULL,
    source_first_id    UUID        NOT NULL,
    source_order       TEXT        NOT NULL CHECK (source_order IN ('position', 'created_at')),
    read_through       TEXT        NOT NULL,
    completed_through  TEXT,
    stream_id          UUID        NOT NULL,
    started_position   BIGINT      NOT NULL,
    signed_position    BIGINT,
    n_read             BIGINT      NOT NULL,
    n_imported         BIGINT      NOT NULL,
    n_unmapped         BIGINT      NOT NULL,
    started_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);

CREATE TABLE import_unmapped (
    source_id          UUID        PRIMARY KEY,
    read_number        BIGINT      NOT NULL UNIQUE,
    source_position    BIGINT,
    source_created_at  TIMESTAMPTZ NOT NULL,
    stream_type        TEXT        NOT NULL,
    stream_id          UUID        NOT NULL,
    event_type         TEXT        NOT NULL,
    cairn_stream_id    UUID,
    kind               TEXT        NOT NULL
        CHECK (kind IN ('unknown_type', 'refused', 'invalid', 'conflict', 'orphan')),
    reason             TEXT        NOT NULL
);
