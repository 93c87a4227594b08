//! PostgreSQL's row-level security, the second wall: a tenant-scoped read that forgot
//! its tenant filter still sees only its tenant's rows.

use cairn_log::args;
use cairn_testkit::{Backend, TestDb};
use cairn_types::Tenancy;

use crate::common::{bootstrapped, server};

async fn ids(
    db: &cairn_log::Db,
    tenancy: &Tenancy,
    sql: &'static str,
) -> anyhow::Result<Vec<String>> {
    let mut scoped = db.scoped(tenancy).await?;
    let rows = scoped.conn().fetch_all(sql, args![]).await?;
    rows.iter()
        .map(|row| Ok(row.get::<cairn_types::OrgId>("org")?.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_without_a_tenant_filter_still_sees_one_tenant() -> anyhow::Result<()> {
    let t = TestDb::new(
        Backend::Postgres,
        "rls::a_query_without_a_tenant_filter_still_sees_one_tenant",
    )
    .await;
    let s = server(t).await?;
    let org_a = bootstrapped(&s, "wall-a").await?;
    let org_b = bootstrapped(&s, "wall-b").await?;
    let db = s.t.db();
    let unfiltered = [
        "SELECT id AS org FROM organizations",
        "SELECT org_id AS org FROM users",
        "SELECT org_id AS org FROM role_assignments",
        "SELECT org_id AS org FROM invitations",
        "SELECT org_id AS org FROM workflow_runs WHERE org_id IS NOT NULL",
        "SELECT org_id AS org FROM domain_events WHERE org_id IS NOT NULL",
    ];
    for sql in unfiltered {
        let seen_by_a = ids(db, &Tenancy::Org(org_a), sql).await?;
        assert!(!seen_by_a.is_empty(), "{sql}: tenant A sees its rows");
        assert!(
            seen_by_a.iter().all(|org| *org == org_a.to_string()),
            "{sql}: tenant A saw {seen_by_a:?}"
        );
        assert!(
            ids(db, &Tenancy::None, sql).await?.is_empty(),
            "{sql}: no tenant sees nothing"
        );
        let all = ids(db, &Tenancy::All, sql).await?;
        assert!(
            all.contains(&org_b.to_string()) && all.contains(&org_a.to_string()),
            "{sql}"
        );
    }
    let mut scoped = db.scoped(&Tenancy::Org(org_a)).await?;
    let steps = scoped
        .conn()
        .fetch_one("SELECT COUNT(*) AS n FROM workflow_steps s JOIN workflow_runs r ON r.id = s.run_id WHERE r.org_id <> $1", args![org_a])
        .await?
        .get::<i64>("n")?;
    assert_eq!(steps, 0, "no workflow step of another tenant");
    let write = scoped
        .conn()
        .execute("DELETE FROM organizations", args![])
        .await;
    assert!(write.is_err(), "a scoped read cannot write");
    Ok(())
}
