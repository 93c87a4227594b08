-- One bench.recorded event per transaction, appended to this client's own stream.
-- pgbench: one transaction = one event, so tps = events per second.
INSERT INTO domain_events (stream_id, stream_type, stream_version, event_type,
                           event_data, event_metadata)
SELECT s.stream_id,
       'bench',
       coalesce((SELECT max(e.stream_version) FROM domain_events e
                  WHERE e.stream_id = s.stream_id), 0) + 1,
       'bench.recorded',
       '{"note": "benchmark event", "amount": 42}'::jsonb,
       jsonb_build_object('correlation_id', gen_random_uuid())
  FROM (SELECT md5('seed-bench-client-' || :client_id)::uuid AS stream_id) s;
