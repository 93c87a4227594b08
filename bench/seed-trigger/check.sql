-- Checks a database the seed benchmark has just written, and the design's failure
-- behaviour. Raises (and exits non-zero under ON_ERROR_STOP) on any problem.
--
--   psql -v ON_ERROR_STOP=1 -v writers=8 -f check.sql
--
-- writers: how many pgbench clients wrote, so how many streams there must be.

\set QUIET on
SELECT set_config('seed_check.writers', :'writers', false) \gset

-- 1. The benchmark's events: all processed, no error, gapless versions per stream,
--    and bench_totals agreeing with the log, one row per client stream.
DO $$
DECLARE
    expected_streams integer := current_setting('seed_check.writers')::integer;
    n_events bigint;
    n_streams bigint;
    n_bad bigint;
BEGIN
    SELECT count(*), count(DISTINCT stream_id) INTO n_events, n_streams
      FROM domain_events WHERE stream_type = 'bench';
    IF n_events = 0 THEN
        RAISE EXCEPTION 'check: no benchmark events were written';
    END IF;
    IF n_streams <> expected_streams THEN
        RAISE EXCEPTION 'check: % streams written, expected one per client (%)',
            n_streams, expected_streams;
    END IF;

    SELECT count(*) INTO n_bad FROM domain_events
     WHERE stream_type = 'bench' AND (processed_at IS NULL OR processing_error IS NOT NULL);
    IF n_bad > 0 THEN
        RAISE EXCEPTION 'check: % of % benchmark events are not processed or have an error',
            n_bad, n_events;
    END IF;

    SELECT count(*) INTO n_bad FROM (
        SELECT stream_id FROM domain_events WHERE stream_type = 'bench'
         GROUP BY stream_id
        HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)
    ) gaps;
    IF n_bad > 0 THEN
        RAISE EXCEPTION 'check: % streams have gaps in their versions', n_bad;
    END IF;

    SELECT count(*) INTO n_bad
      FROM (SELECT stream_id, count(*) AS n, max(position) AS last
              FROM domain_events WHERE stream_type = 'bench' GROUP BY stream_id) s
      FULL JOIN bench_totals t USING (stream_id)
     WHERE t.stream_id IS NULL OR s.stream_id IS NULL
        OR t.n_events <> s.n OR t.last_position <> s.last;
    IF n_bad > 0 THEN
        RAISE EXCEPTION 'check: bench_totals disagrees with the log for % streams', n_bad;
    END IF;

    RAISE NOTICE 'check: % events in % streams, all processed; bench_totals agrees',
        n_events, n_streams;
END
$$;

-- 2. Failures are recorded, not swallowed, and a retry routes the event again.
--    Rolled back: the benchmark's database is left as it was.
BEGIN;
DO $$
DECLARE
    org uuid := gen_random_uuid();
    person uuid := gen_random_uuid();
    failed_position bigint;
    outcome domain_events;
BEGIN
    -- An unknown stream type: stored, with P9002, not marked processed.
    INSERT INTO domain_events (stream_id, stream_type, stream_version, event_type, event_data)
    VALUES (gen_random_uuid(), 'no_such_stream', 1, 'no_such_stream.happened', '{}')
    RETURNING * INTO outcome;
    IF outcome.processing_error IS NULL OR outcome.processing_error NOT LIKE 'P9002:%'
       OR outcome.processed_at IS NOT NULL THEN
        RAISE EXCEPTION 'check: an unknown stream type was not recorded as P9002 (error %, processed_at %)',
            outcome.processing_error, outcome.processed_at;
    END IF;

    -- An unknown event type on a known stream type: P9001.
    INSERT INTO domain_events (stream_id, stream_type, stream_version, event_type, event_data)
    VALUES (gen_random_uuid(), 'bench', 1, 'bench.no_such_event', '{}')
    RETURNING * INTO outcome;
    IF outcome.processing_error IS NULL OR outcome.processing_error NOT LIKE 'P9001:%'
       OR outcome.processed_at IS NOT NULL THEN
        RAISE EXCEPTION 'check: an unknown event type was not recorded as P9001 (error %, processed_at %)',
            outcome.processing_error, outcome.processed_at;
    END IF;

    -- A handler that fails (its organization does not exist yet): the error is
    -- recorded and the handler's write is rolled back.
    INSERT INTO domain_events (stream_id, stream_type, stream_version, event_type, event_data)
    VALUES (person, 'user', 1, 'user.created',
            jsonb_build_object('organization_id', org, 'email', 'a@example.co.uk', 'name', 'A'))
    RETURNING * INTO outcome;
    failed_position := outcome.position;
    IF outcome.processing_error IS NULL OR outcome.processing_error NOT LIKE '23503:%' THEN
        RAISE EXCEPTION 'check: a failing handler was not recorded (error %)', outcome.processing_error;
    END IF;
    IF EXISTS (SELECT 1 FROM users_projection WHERE id = person) THEN
        RAISE EXCEPTION 'check: a failing handler''s write was not rolled back';
    END IF;

    -- Once the cause is gone, clearing the outcome re-fires the trigger.
    INSERT INTO domain_events (stream_id, stream_type, stream_version, event_type, event_data)
    VALUES (org, 'organization', 1, 'organization.created',
            '{"name": "Check Care", "slug": "check-care"}')
    RETURNING * INTO outcome;
    IF outcome.processed_at IS NULL OR outcome.processing_error IS NOT NULL THEN
        RAISE EXCEPTION 'check: organization.created failed: %', outcome.processing_error;
    END IF;
    UPDATE domain_events SET processing_error = NULL, processed_at = NULL
     WHERE position = failed_position
    RETURNING * INTO outcome;
    IF outcome.processed_at IS NULL OR outcome.processing_error IS NOT NULL
       OR NOT EXISTS (SELECT 1 FROM users_projection WHERE id = person) THEN
        RAISE EXCEPTION 'check: the retry did not process the event (error %)', outcome.processing_error;
    END IF;

    RAISE NOTICE 'check: unknown stream type -> P9002, unknown event type -> P9001, handler error recorded and rolled back, retry re-routes';
END
$$;
ROLLBACK;
