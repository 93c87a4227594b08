-- Events stored without an outcome: health checks count them on every scrape, so
-- the count must not read the whole log. The index holds only such events (none,
-- normally).
CREATE INDEX domain_events_unprocessed ON domain_events (created_at)
    WHERE processed_at IS NULL AND processing_error_code IS NULL;
