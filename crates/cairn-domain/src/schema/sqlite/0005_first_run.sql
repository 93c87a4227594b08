-- An idempotency key remembers the correlation id of the request that first ran its
-- command, so that a repeat answers with it.
ALTER TABLE command_results ADD COLUMN correlation_id TEXT;
