-- Row-level security: the second wall behind the policy.
--
-- Tenant-scoped reads run as cairn_tenant_reader with cairn.tenant set to one
-- organization (or 'all'); the policies below hide every other tenant's rows from that
-- role, even from a query that forgot its own filter. Owners (cairn's internal paths:
-- appends, handlers, the workflow engine, the command line) are unaffected.

DO $$
BEGIN
    CREATE ROLE cairn_tenant_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another database on this server made it first
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT cairn_tenant_reader TO %I', current_user);
EXCEPTION WHEN others THEN
    NULL; -- a superuser needs no membership; a concurrent grant may race here
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO cairn_tenant_reader', current_schema());
END
$$;

CREATE FUNCTION cairn_tenant_visible(org uuid) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('cairn.tenant', true), '') = 'all'
        OR (org IS NOT NULL AND org::text = current_setting('cairn.tenant', true))
$$;

GRANT SELECT ON domain_events, log_head TO cairn_tenant_reader;
ALTER TABLE domain_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON domain_events FOR SELECT TO cairn_tenant_reader
    USING (cairn_tenant_visible(org_id));
