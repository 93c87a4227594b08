-- How many of the erasures' count the tables holding people's data in the clear have
-- been rebuilt after (SQLite, where a split page keeps copies of moved cells in its
-- unused space). PostgreSQL keeps old row versions until VACUUM instead; the column
-- is here so that both backends hold the same head.
ALTER TABLE log_head ADD COLUMN scrubbed_erasures BIGINT NOT NULL DEFAULT 0;
