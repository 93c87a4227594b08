-- Workflow state: projections of the workflow.* events.
CREATE TABLE workflow_runs (
    id              TEXT    PRIMARY KEY,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'failed', 'compensation_failed')),
    input           TEXT    NOT NULL,
    output          TEXT,
    failure         TEXT,
    correlation_id  TEXT    NOT NULL,
    org_id          TEXT,
    actor           TEXT,
    parent_id       TEXT,
    current_step    TEXT,
    version         INTEGER NOT NULL,
    next_run_at     TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
) STRICT;

CREATE INDEX workflow_runs_runnable ON workflow_runs (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX workflow_runs_by_status ON workflow_runs (status, created_at);
CREATE INDEX workflow_runs_by_correlation ON workflow_runs (correlation_id);

CREATE TABLE workflow_steps (
    run_id          TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('action', 'timer', 'compensation')),
    status          TEXT    NOT NULL CHECK (status IN ('running', 'retrying', 'completed', 'failed', 'waiting', 'fired')),
    attempts        INTEGER NOT NULL,
    result          TEXT,
    last_error      TEXT,
    compensable     INTEGER NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    wake_at         TEXT,
    PRIMARY KEY (run_id, name)
) STRICT;

-- Coordination, not a projection: which engine holds which run. Nothing here is
-- derived from events; replay neither reads nor writes it.
CREATE TABLE workflow_leases (
    run_id      TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    expires_at  TEXT    NOT NULL
) STRICT;
