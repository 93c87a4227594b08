-- Row-level security on the onboarding projections (see log/0002_tenant_reads).
GRANT SELECT ON organizations, users, role_assignments, invitations TO cairn_tenant_reader;
ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON organizations FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(id));
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON users FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(org_id));
ALTER TABLE role_assignments ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON role_assignments FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(org_id));
ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON invitations FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(org_id));
