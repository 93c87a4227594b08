-- The seed's event-processing design, as its design document describes it: one event
-- table, ONE trigger on it, one dispatcher that routes by stream_type to a router per
-- stream type, each router routing by event_type to a handler that writes projections
-- in the same transaction as the INSERT.
--
--   INSERT INTO domain_events
--     -> BEFORE INSERT trigger: process_domain_event()
--       -> routes by stream_type to a router (process_user_event, ...)
--         -> routes by event_type to a handler (handle_user_invited, ...)
--           -> the handler upserts its projection
--     -> the event is stored with processed_at, or with processing_error
--
-- Rules kept from the design:
-- * a single trigger on domain_events, never one per event type;
-- * an unknown stream_type raises P9002 (dispatcher), an unknown event_type P9001
--   (router); the dispatcher catches every exception and records it in
--   processing_error (never RAISE WARNING, which would mark the event processed);
-- * retry: clear processing_error and processed_at with an UPDATE, and the BEFORE
--   UPDATE trigger routes the event again;
-- * handlers are idempotent (ON CONFLICT) and take their times from the event's
--   created_at, never now().
--
-- Load into an empty database: psql -v ON_ERROR_STOP=1 -f schema.sql

CREATE TABLE domain_events (
    position          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                UUID        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    stream_id         UUID        NOT NULL,
    stream_type       TEXT        NOT NULL,
    stream_version    INTEGER     NOT NULL CHECK (stream_version > 0),
    event_type        TEXT        NOT NULL,
    event_data        JSONB       NOT NULL,
    event_metadata    JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at      TIMESTAMPTZ,
    processing_error  TEXT,
    UNIQUE (stream_id, stream_version)
);

-- Tracing a request, and the admin dashboard's list of failed events.
CREATE INDEX domain_events_by_correlation
    ON domain_events ((event_metadata ->> 'correlation_id'), position);
CREATE INDEX domain_events_failed
    ON domain_events (created_at) WHERE processing_error IS NOT NULL;
CREATE INDEX domain_events_unprocessed
    ON domain_events (created_at) WHERE processed_at IS NULL AND processing_error IS NULL;

-- Projections ----------------------------------------------------------------------

CREATE TABLE bench_totals (
    stream_id      UUID        PRIMARY KEY,
    n_events       BIGINT      NOT NULL,
    last_position  BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE organizations_projection (
    id                    UUID        PRIMARY KEY,
    name                  TEXT        NOT NULL,
    slug                  TEXT        NOT NULL UNIQUE,
    status                TEXT        NOT NULL
        CHECK (status IN ('pending', 'active', 'failed', 'inactive')),
    direct_care_settings  JSONB       NOT NULL DEFAULT '{}'::jsonb,
    failure_reason        TEXT,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);

CREATE TABLE users_projection (
    id               UUID        PRIMARY KEY,
    organization_id  UUID        NOT NULL REFERENCES organizations_projection (id),
    email            TEXT        NOT NULL,
    name             TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE TABLE user_roles_projection (
    user_id          UUID        NOT NULL REFERENCES users_projection (id),
    organization_id  UUID        NOT NULL REFERENCES organizations_projection (id),
    role             TEXT        NOT NULL,
    assigned_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, organization_id, role)
);

CREATE TABLE invitations_projection (
    id               UUID        PRIMARY KEY,
    organization_id  UUID        NOT NULL REFERENCES organizations_projection (id),
    email            TEXT        NOT NULL,
    role             TEXT        NOT NULL,
    status           TEXT        NOT NULL
        CHECK (status IN ('pending', 'accepted', 'revoked')),
    invited_by       UUID,
    expires_at       TIMESTAMPTZ NOT NULL,
    accepted_by      UUID,
    invited_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- Handlers: one per event type, each writing its projection -----------------------

-- bench.recorded: the same upsert as `cairn bench append`'s handler.
CREATE FUNCTION handle_bench_recorded(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_totals (stream_id, n_events, last_position, updated_at)
    VALUES (p_event.stream_id, p_event.stream_version, p_event.position, p_event.created_at)
    ON CONFLICT (stream_id) DO UPDATE SET
        n_events = excluded.n_events,
        last_position = excluded.last_position,
        updated_at = excluded.updated_at;
END
$$;

CREATE FUNCTION handle_organization_created(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO organizations_projection (id, name, slug, status, created_at, updated_at)
    VALUES (p_event.stream_id,
            p_event.event_data ->> 'name',
            p_event.event_data ->> 'slug',
            'pending',
            p_event.created_at,
            p_event.created_at)
    ON CONFLICT (id) DO UPDATE SET
        name = excluded.name,
        slug = excluded.slug,
        updated_at = excluded.updated_at;
END
$$;

CREATE FUNCTION handle_organization_bootstrap_completed(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE organizations_projection
       SET status = 'active', failure_reason = NULL, updated_at = p_event.created_at
     WHERE id = p_event.stream_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', p_event.stream_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

CREATE FUNCTION handle_organization_bootstrap_failed(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE organizations_projection
       SET status = 'failed',
           failure_reason = p_event.event_data ->> 'reason',
           updated_at = p_event.created_at
     WHERE id = p_event.stream_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', p_event.stream_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

CREATE FUNCTION handle_organization_deactivated(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE organizations_projection
       SET status = 'inactive', updated_at = p_event.created_at
     WHERE id = p_event.stream_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', p_event.stream_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- Underscores within a level, dots between levels: the design's naming convention.
CREATE FUNCTION handle_organization_direct_care_settings_updated(p_event domain_events)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE organizations_projection
       SET direct_care_settings = p_event.event_data -> 'settings',
           updated_at = p_event.created_at
     WHERE id = p_event.stream_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', p_event.stream_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

CREATE FUNCTION handle_user_created(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO users_projection (id, organization_id, email, name, created_at, updated_at)
    VALUES (p_event.stream_id,
            (p_event.event_data ->> 'organization_id')::uuid,
            p_event.event_data ->> 'email',
            p_event.event_data ->> 'name',
            p_event.created_at,
            p_event.created_at)
    ON CONFLICT (id) DO UPDATE SET
        email = excluded.email,
        name = excluded.name,
        updated_at = excluded.updated_at;
END
$$;

-- user.invited lives on the inviting user's stream and creates the invitation.
CREATE FUNCTION handle_user_invited(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO invitations_projection (id, organization_id, email, role, status,
                                        invited_by, expires_at, invited_at, updated_at)
    VALUES ((p_event.event_data ->> 'invitation_id')::uuid,
            (p_event.event_data ->> 'organization_id')::uuid,
            p_event.event_data ->> 'email',
            p_event.event_data ->> 'role',
            'pending',
            p_event.stream_id,
            (p_event.event_data ->> 'expires_at')::timestamptz,
            p_event.created_at,
            p_event.created_at)
    ON CONFLICT (id) DO UPDATE SET
        email = excluded.email,
        role = excluded.role,
        expires_at = excluded.expires_at,
        updated_at = excluded.updated_at;
END
$$;

CREATE FUNCTION handle_user_role_assigned(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_roles_projection (user_id, organization_id, role, assigned_at)
    VALUES (p_event.stream_id,
            (p_event.event_data ->> 'organization_id')::uuid,
            p_event.event_data ->> 'role',
            p_event.created_at)
    ON CONFLICT (user_id, organization_id, role) DO NOTHING;
END
$$;

CREATE FUNCTION handle_invitation_accepted(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE invitations_projection
       SET status = 'accepted',
           accepted_by = (p_event.event_data ->> 'user_id')::uuid,
           updated_at = p_event.created_at
     WHERE id = p_event.stream_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invitation % does not exist', p_event.stream_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

CREATE FUNCTION handle_invitation_revoked(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE invitations_projection
       SET status = 'revoked', updated_at = p_event.created_at
     WHERE id = p_event.stream_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invitation % does not exist', p_event.stream_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

CREATE FUNCTION handle_invitation_resent(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE invitations_projection
       SET expires_at = (p_event.event_data ->> 'expires_at')::timestamptz,
           updated_at = p_event.created_at
     WHERE id = p_event.stream_id AND status = 'pending';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invitation % is not pending', p_event.stream_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- Routers: one per stream type, routing by event_type -----------------------------

CREATE FUNCTION process_bench_event(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CASE p_event.event_type
        WHEN 'bench.recorded' THEN PERFORM handle_bench_recorded(p_event);
        ELSE RAISE EXCEPTION 'unknown event_type "%" for stream_type "bench"', p_event.event_type
            USING ERRCODE = 'P9001';
    END CASE;
END
$$;

CREATE FUNCTION process_organization_event(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CASE p_event.event_type
        WHEN 'organization.created' THEN
            PERFORM handle_organization_created(p_event);
        WHEN 'organization.bootstrap.completed' THEN
            PERFORM handle_organization_bootstrap_completed(p_event);
        WHEN 'organization.bootstrap.failed' THEN
            PERFORM handle_organization_bootstrap_failed(p_event);
        WHEN 'organization.deactivated' THEN
            PERFORM handle_organization_deactivated(p_event);
        WHEN 'organization.direct_care_settings_updated' THEN
            PERFORM handle_organization_direct_care_settings_updated(p_event);
        ELSE RAISE EXCEPTION 'unknown event_type "%" for stream_type "organization"', p_event.event_type
            USING ERRCODE = 'P9001';
    END CASE;
END
$$;

CREATE FUNCTION process_user_event(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CASE p_event.event_type
        WHEN 'user.created' THEN PERFORM handle_user_created(p_event);
        WHEN 'user.invited' THEN PERFORM handle_user_invited(p_event);
        WHEN 'user.role.assigned' THEN PERFORM handle_user_role_assigned(p_event);
        ELSE RAISE EXCEPTION 'unknown event_type "%" for stream_type "user"', p_event.event_type
            USING ERRCODE = 'P9001';
    END CASE;
END
$$;

CREATE FUNCTION process_invitation_event(p_event domain_events) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CASE p_event.event_type
        WHEN 'invitation.accepted' THEN PERFORM handle_invitation_accepted(p_event);
        WHEN 'invitation.revoked' THEN PERFORM handle_invitation_revoked(p_event);
        WHEN 'invitation.resent' THEN PERFORM handle_invitation_resent(p_event);
        ELSE RAISE EXCEPTION 'unknown event_type "%" for stream_type "invitation"', p_event.event_type
            USING ERRCODE = 'P9001';
    END CASE;
END
$$;

-- The dispatcher, and the one trigger -----------------------------------------------

CREATE FUNCTION process_domain_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- An UPDATE routes the event again only when it is a retry: both outcome
    -- columns cleared. Any other UPDATE leaves the recorded outcome alone.
    IF TG_OP = 'UPDATE'
       AND (NEW.processed_at IS NOT NULL OR NEW.processing_error IS NOT NULL) THEN
        RETURN NEW;
    END IF;

    BEGIN
        CASE NEW.stream_type
            WHEN 'bench' THEN PERFORM process_bench_event(NEW);
            WHEN 'organization' THEN PERFORM process_organization_event(NEW);
            WHEN 'user' THEN PERFORM process_user_event(NEW);
            WHEN 'invitation' THEN PERFORM process_invitation_event(NEW);
            ELSE RAISE EXCEPTION 'unknown stream_type "%"', NEW.stream_type
                USING ERRCODE = 'P9002';
        END CASE;
        NEW.processed_at := now();
        NEW.processing_error := NULL;
    EXCEPTION WHEN OTHERS THEN
        -- The handler's writes roll back with this block; the event is still stored,
        -- with its error, for the dashboard and for a retry.
        NEW.processed_at := NULL;
        NEW.processing_error := SQLSTATE || ': ' || SQLERRM;
    END;
    RETURN NEW;
END
$$;

CREATE TRIGGER process_domain_event_trigger
    BEFORE INSERT OR UPDATE ON domain_events
    FOR EACH ROW EXECUTE FUNCTION process_domain_event();
