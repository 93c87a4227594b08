-- The version of its kind's definition a run started on, and finishes on: from the
-- run's workflow.started event. Every run started before definitions had versions is
-- version 1, which is also what replay rebuilds for them.
ALTER TABLE workflow_runs ADD COLUMN definition_version INTEGER NOT NULL DEFAULT 1;
