-- Onboarding projections (SQLite). Written only by the handlers in cairn-domain.
CREATE TABLE organizations (
    id                    TEXT    PRIMARY KEY,
    name                  TEXT    NOT NULL,
    slug                  TEXT    NOT NULL,
    sender_domain         TEXT    NOT NULL,
    sender_address        TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('bootstrapping', 'active', 'failed')),
    is_active             INTEGER NOT NULL,
    direct_care_settings  TEXT    NOT NULL,
    workflow_id           TEXT,
    failure_reason        TEXT,
    created_at            TEXT    NOT NULL,
    updated_at            TEXT    NOT NULL,
    deactivated_at        TEXT
) STRICT;
CREATE UNIQUE INDEX organizations_by_slug ON organizations (slug);

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    email       TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('invited', 'active')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX users_by_org_email ON users (org_id, email);

CREATE TABLE role_assignments (
    user_id      TEXT NOT NULL,
    role         TEXT NOT NULL,
    org_id       TEXT NOT NULL,
    assigned_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
) STRICT;
CREATE INDEX role_assignments_by_org ON role_assignments (org_id);

CREATE TABLE invitations (
    id             TEXT    PRIMARY KEY,
    org_id         TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    email          TEXT    NOT NULL,
    roles          TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('pending', 'accepted', 'revoked', 'expired')),
    token_hash     TEXT    NOT NULL,
    expires_at     TEXT    NOT NULL,
    send_count     INTEGER NOT NULL,
    message_id     TEXT    NOT NULL,
    last_sent_at   TEXT    NOT NULL,
    accepted_at    TEXT,
    revoked_at     TEXT,
    revoke_reason  TEXT,
    expired_at     TEXT,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
) STRICT;
CREATE UNIQUE INDEX invitations_by_token ON invitations (token_hash);
CREATE INDEX invitations_by_org ON invitations (org_id, id);

-- Not projections: the key invitation tokens are derived with, and command results
-- kept for idempotency keys.
CREATE TABLE domain_secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) STRICT;

CREATE TABLE command_results (
    key           TEXT PRIMARY KEY,
    command       TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    response      TEXT NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;
