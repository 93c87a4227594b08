-- Paused runs and kinds: projections of the workflow_control.* events. The engine
-- claims no run that is paused, or whose kind is.
ALTER TABLE workflow_runs ADD COLUMN paused_at TIMESTAMPTZ;
ALTER TABLE workflow_runs ADD COLUMN paused_by TEXT;
ALTER TABLE workflow_runs ADD COLUMN pause_reason TEXT;

CREATE INDEX workflow_runs_paused ON workflow_runs (id) WHERE paused_at IS NOT NULL;

CREATE TABLE workflow_kind_pauses (
    kind       TEXT        PRIMARY KEY,
    paused_by  TEXT        NOT NULL,
    reason     TEXT        NOT NULL,
    since      TIMESTAMPTZ NOT NULL,
    position   BIGINT      NOT NULL
);

-- Platform-wide: a tenant's run shows that its kind is paused.
GRANT SELECT ON workflow_kind_pauses TO cairn_tenant_reader;
