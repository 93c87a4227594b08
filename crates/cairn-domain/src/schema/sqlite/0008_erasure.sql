-- Erasure: an erased person's rows stay as tombstones, with an empty name and address
-- and the time they were erased. Addresses are unique per organization only among
-- people not erased (and rows a replay rebuilds before it reaches their erasure).
ALTER TABLE users ADD COLUMN erased_at TEXT;
ALTER TABLE invitations ADD COLUMN erased_at TEXT;
DROP INDEX users_by_org_email;
CREATE UNIQUE INDEX users_by_org_email ON users (org_id, email) WHERE email <> '';
