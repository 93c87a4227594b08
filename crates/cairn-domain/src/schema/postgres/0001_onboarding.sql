-- Onboarding projections (PostgreSQL). Written only by the handlers in cairn-domain.
CREATE TABLE organizations (
    id                    UUID        PRIMARY KEY,
    name                  TEXT        NOT NULL,
    slug                  TEXT        NOT NULL,
    sender_domain         TEXT        NOT NULL,
    sender_address        TEXT        NOT NULL,
    status                TEXT        NOT NULL CHECK (status IN ('bootstrapping', 'active', 'failed')),
    is_active             BOOLEAN     NOT NULL,
    direct_care_settings  JSONB       NOT NULL,
    workflow_id           UUID,
    failure_reason        TEXT,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    deactivated_at        TIMESTAMPTZ
);
CREATE UNIQUE INDEX organizations_by_slug ON organizations (slug);

CREATE TABLE users (
    id          UUID        PRIMARY KEY,
    org_id      UUID        NOT NULL,
    email       TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('invited', 'active')),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX users_by_org_email ON users (org_id, email);

CREATE TABLE role_assignments (
    user_id      UUID        NOT NULL,
    role         TEXT        NOT NULL,
    org_id       UUID        NOT NULL,
    assigned_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE INDEX role_assignments_by_org ON role_assignments (org_id);

CREATE TABLE invitations (
    id             UUID        PRIMARY KEY,
    org_id         UUID        NOT NULL,
    user_id        UUID        NOT NULL,
    email          TEXT        NOT NULL,
    roles          JSONB       NOT NULL,
    status         TEXT        NOT NULL CHECK (status IN ('pending', 'accepted', 'revoked', 'expired')),
    token_hash     TEXT        NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    send_count     BIGINT      NOT NULL,
    message_id     TEXT        NOT NULL,
    last_sent_at   TIMESTAMPTZ NOT NULL,
    accepted_at    TIMESTAMPTZ,
    revoked_at     TIMESTAMPTZ,
    revoke_reason  TEXT,
    expired_at     TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX invitations_by_token ON invitations (token_hash);
CREATE INDEX invitations_by_org ON invitations (org_id, id);

-- Not projections: the key invitation tokens are derived with, and command results
-- kept for idempotency keys.
CREATE TABLE domain_secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

CREATE TABLE command_results (
    key           TEXT        PRIMARY KEY,
    command       TEXT        NOT NULL,
    fingerprint   TEXT        NOT NULL,
    response      JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
