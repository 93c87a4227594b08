-- 100 bench.recorded events in one transaction (one INSERT), appended to this client's
-- own stream with versions base+1 .. base+100; every row fires the trigger.
-- pgbench: one transaction = 100 events, so events per second = tps x 100.
INSERT INTO domain_events (stream_id, stream_type, stream_version, event_type,
                           event_data, event_metadata)
SELECT s.stream_id,
       'bench',
       b.base + g.n,
       'bench.recorded',
       '{"note": "benchmark event", "amount": 42}'::jsonb,
       jsonb_build_object('correlation_id', gen_random_uuid())
  FROM (SELECT md5('seed-bench-client-' || :client_id)::uuid AS stream_id) s
 CROSS JOIN LATERAL (SELECT coalesce(max(e.stream_version), 0) AS base
                       FROM domain_events e WHERE e.stream_id = s.stream_id) b
 CROSS JOIN generate_series(1, 100) AS g (n)
 ORDER BY g.n;
