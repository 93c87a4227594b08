-- The access log: one record per read that returned people's data (who read, whose
-- data or which list, when, through what, in which request). Hash-chained like the
-- event log but on a chain of its own, append-only, and pruned only from its oldest
-- end, past its retention: the head keeps the hash of the last pruned record as the
-- anchor the remaining chain starts from.

CREATE TABLE access_head (
    id              SMALLINT PRIMARY KEY CHECK (id = 1),
    last_seq        BIGINT NOT NULL CHECK (last_seq >= 0),
    last_hash       TEXT   NOT NULL,
    pruned_seq      BIGINT NOT NULL CHECK (pruned_seq >= 0),
    pruned_hash     TEXT   NOT NULL,
    CHECK (pruned_seq <= last_seq)
);

INSERT INTO access_head (id, last_seq, last_hash, pruned_seq, pruned_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000',
        0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE access_log (
    seq             BIGINT      PRIMARY KEY CHECK (seq > 0),
    recorded_at     TIMESTAMPTZ NOT NULL,
    who             TEXT        NOT NULL,
    via             TEXT        NOT NULL,
    correlation_id  UUID        NOT NULL,
    org_id          UUID,
    resource        TEXT        NOT NULL,
    subjects        TEXT        NOT NULL,
    hash            TEXT        NOT NULL
);

CREATE INDEX access_log_by_time ON access_log (recorded_at, seq);

-- Records never change; one is deleted only once the head's anchor has moved past it
-- (pruning, past the retention period).
CREATE FUNCTION access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.seq <= (SELECT pruned_seq FROM access_head WHERE id = 1) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'access_log is append-only: a record is deleted only when pruned past its retention'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RAISE EXCEPTION 'access_log is append-only: records never change'
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER access_log_append_only
    BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION access_log_append_only();

CREATE TRIGGER access_log_no_truncate
    BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

-- The head only moves forward.
CREATE FUNCTION access_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.last_seq < OLD.last_seq OR NEW.pruned_seq < OLD.pruned_seq THEN
        RAISE EXCEPTION 'access_head only moves forward'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER access_head_forward
    BEFORE UPDATE OR DELETE ON access_head
    FOR EACH ROW EXECUTE FUNCTION access_head_forward();
