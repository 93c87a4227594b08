-- Workflow state: projections of the workflow.* events.
CREATE TABLE workflow_runs (
    id              UUID        PRIMARY KEY,
    kind            TEXT        NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'failed', 'compensation_failed')),
    input           JSONB       NOT NULL,
    output          JSONB,
    failure         TEXT,
    correlation_id  UUID        NOT NULL,
    org_id          UUID,
    actor           TEXT,
    parent_id       UUID,
    current_step    TEXT,
    version         BIGINT      NOT NULL,
    next_run_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE INDEX workflow_runs_runnable ON workflow_runs (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX workflow_runs_by_status ON workflow_runs (status, created_at);
CREATE INDEX workflow_runs_by_correlation ON workflow_runs (correlation_id);

CREATE TABLE workflow_steps (
    run_id          UUID        NOT NULL,
    name            TEXT        NOT NULL,
    seq             BIGINT      NOT NULL,
    kind            TEXT        NOT NULL CHECK (kind IN ('action', 'timer', 'compensation')),
    status          TEXT        NOT NULL CHECK (status IN ('running', 'retrying', 'completed', 'failed', 'waiting', 'fired')),
    attempts        BIGINT      NOT NULL,
    result          JSONB,
    last_error      TEXT,
    compensable     BOOLEAN     NOT NULL,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    wake_at         TIMESTAMPTZ,
    PRIMARY KEY (run_id, name)
);

-- Coordination, not a projection: which engine holds which run. Nothing here is
-- derived from events; replay neither reads nor writes it.
CREATE TABLE workflow_leases (
    run_id      UUID        PRIMARY KEY,
    owner       TEXT        NOT NULL,
    epoch       BIGINT      NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
