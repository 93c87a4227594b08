-- SQLite zeroes what it deletes (secure_delete), but a page that splits or merges
-- keeps, in its unused space, copies of the cells that moved out of it: an erased
-- person's address could outlive the erasure there. After an erasure or a restriction
-- the tables that hold people's data in the clear are emptied and refilled, which
-- frees (and zeroes) every page they had; this is how many of the erasures' count
-- that has covered.
ALTER TABLE log_head ADD COLUMN scrubbed_erasures INTEGER NOT NULL DEFAULT 0;
