-- Row-level security on workflow state (see log/0002_tenant_reads).
GRANT SELECT ON workflow_runs, workflow_steps TO cairn_tenant_reader;
ALTER TABLE workflow_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON workflow_runs FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(org_id));
ALTER TABLE workflow_steps ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON workflow_steps FOR SELECT TO cairn_tenant_reader
    USING (EXISTS (SELECT 1 FROM workflow_runs r WHERE r.id = workflow_steps.run_id));
