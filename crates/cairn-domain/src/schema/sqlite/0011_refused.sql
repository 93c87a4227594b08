-- An invitation whose email the mail server refused for good is 'refused', with when
-- and what the server said. SQLite cannot change a CHECK constraint in place, so the
-- table is rebuilt with the same rows, columns and indexes.
CREATE TABLE invitations_next (
    id              TEXT    PRIMARY KEY,
    org_id          TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    email           TEXT    NOT NULL,
    roles           TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'accepted', 'revoked', 'expired', 'refused')),
    token_hash      TEXT    NOT NULL,
    expires_at      TEXT    NOT NULL,
    send_count      INTEGER NOT NULL,
    message_id      TEXT    NOT NULL,
    last_sent_at    TEXT    NOT NULL,
    accepted_at     TEXT,
    revoked_at      TEXT,
    revoke_reason   TEXT,
    expired_at      TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    erased_at       TEXT,
    restricted_at   TEXT,
    refused_at      TEXT,
    delivery_reply  TEXT
) STRICT;
INSERT INTO invitations_next (id, org_id, user_id, email, roles, status, token_hash, expires_at,
    send_count, message_id, last_sent_at, accepted_at, revoked_at, revoke_reason, expired_at,
    created_at, updated_at, erased_at, restricted_at)
SELECT id, org_id, user_id, email, roles, status, token_hash, expires_at,
    send_count, message_id, last_sent_at, accepted_at, revoked_at, revoke_reason, expired_at,
    created_at, updated_at, erased_at, restricted_at
FROM invitations;
DROP TABLE invitations;
ALTER TABLE invitations_next RENAME TO invitations;
CREATE UNIQUE INDEX invitations_by_token ON invitations (token_hash);
CREATE INDEX invitations_by_org ON invitations (org_id, id);
CREATE INDEX invitations_by_email ON invitations (email);
