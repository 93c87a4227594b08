-- Restriction: a person restricted until their erasure keeps their rows with an empty
-- name and address, as an erased person does, and the time they were restricted.
ALTER TABLE users ADD COLUMN restricted_at TEXT;
ALTER TABLE invitations ADD COLUMN restricted_at TEXT;
