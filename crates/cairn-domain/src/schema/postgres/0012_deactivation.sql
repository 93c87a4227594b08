-- A person can be deactivated (their tokens stop working) and reactivated; their row
-- keeps when and why while it lasts.
ALTER TABLE users ADD COLUMN deactivated_at TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN deactivation_reason TEXT;
