-- The access log: one record per read that returned people's data (who read, whose
-- data or which list, when, through what, in which request). Hash-chained like the
-- event log but on a chain of its own, append-only, and pruned only from its oldest
-- end, past its retention: the head keeps the hash of the last pruned record as the
-- anchor the remaining chain starts from.

CREATE TABLE access_head (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq        INTEGER NOT NULL CHECK (last_seq >= 0),
    last_hash       TEXT    NOT NULL,
    pruned_seq      INTEGER NOT NULL CHECK (pruned_seq >= 0),
    pruned_hash     TEXT    NOT NULL,
    CHECK (pruned_seq <= last_seq)
) STRICT;

INSERT INTO access_head (id, last_seq, last_hash, pruned_seq, pruned_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000',
        0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE access_log (
    seq             INTEGER PRIMARY KEY CHECK (seq > 0),
    recorded_at     TEXT    NOT NULL,
    who             TEXT    NOT NULL,
    via             TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    org_id          TEXT,
    resource        TEXT    NOT NULL,
    subjects        TEXT    NOT NULL,
    hash            TEXT    NOT NULL
) STRICT;

CREATE INDEX access_log_by_time ON access_log (recorded_at, seq);

-- Records never change; one is deleted only once the head's anchor has moved past it
-- (pruning, past the retention period).
CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only: records never change');
END;

CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
WHEN OLD.seq > (SELECT pruned_seq FROM access_head WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only: a record is deleted only when pruned past its retention');
END;

-- The head only moves forward.
CREATE TRIGGER access_head_forward BEFORE UPDATE ON access_head
WHEN NEW.last_seq < OLD.last_seq OR NEW.pruned_seq < OLD.pruned_seq
BEGIN
    SELECT RAISE(ABORT, 'access_head only moves forward');
END;

CREATE TRIGGER access_head_no_delete BEFORE DELETE ON access_head
BEGIN
    SELECT RAISE(ABORT, 'access_head only moves forward');
END;
