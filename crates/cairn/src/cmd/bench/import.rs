//! `cairn bench import`: `cairn import` of generated seed events, in events per second.
//!
//! The seed's event store (`bench/seed-trigger/schema.sql`) is built in a schema of its
//! own in --seed-url and filled in one statement, its trigger off, with organizations
//! going through the seed's onboarding: each ten events create an organization, its
//! admin and their role, change its settings, invite a clinician who accepts, and
//! complete the bootstrap, with the workflow queue's record. The import then runs into
//! a fresh cairn database on --database-url, as `cairn import` does, checkpoints
//! included.

use std::process::ExitCode;

use anyhow::Context as _;
use console::style;
use serde::Serialize;

use cairn_dispatch::EventStore;
use cairn_domain::import::Source;
use cairn_log::{AuditKey, Backend, Db, DbOptions, Sql};

use super::Place;
use crate::app;
use crate::cli::BenchImportArgs;
use crate::cmd::audit::Target;
use crate::cmd::import::{Options, import as run_import};
use crate::ui;

/// The seed's event store, as its design document describes it.
const SEED_SCHEMA: &str = include_str!("../../../../../bench/seed-trigger/schema.sql");

/// Fills the seed's `domain_events` with `$n` events, ten per organization.
const FILL: &str = "
ALTER TABLE domain_events DISABLE TRIGGER process_domain_event_trigger;
INSERT INTO domain_events (stream_id, stream_type, stream_version, event_type, event_data,
                           event_metadata, created_at, processed_at)
SELECT CASE WHEN k IN (0, 3, 8) THEN org WHEN k IN (1, 2, 4) THEN ada
            WHEN k = 5 THEN inv WHEN k IN (6, 7) THEN grace ELSE queue END,
       CASE WHEN k IN (0, 3, 8) THEN 'organization' WHEN k IN (1, 2, 4, 6, 7) THEN 'user'
            WHEN k = 5 THEN 'invitation' ELSE 'workflow_queue' END,
       CASE k WHEN 0 THEN 1 WHEN 3 THEN 2 WHEN 8 THEN 3 WHEN 1 THEN 1 WHEN 2 THEN 2
              WHEN 4 THEN 3 WHEN 6 THEN 1 WHEN 7 THEN 2 ELSE 1 END,
       CASE k WHEN 0 THEN 'organization.created' WHEN 1 THEN 'user.created'
              WHEN 2 THEN 'user.role.assigned'
              WHEN 3 THEN 'organization.direct_care_settings_updated'
              WHEN 4 THEN 'user.invited' WHEN 5 THEN 'invitation.accepted'
              WHEN 6 THEN 'user.created' WHEN 7 THEN 'user.role.assigned'
              WHEN 8 THEN 'organization.bootstrap.completed'
              ELSE 'workflow.queue.pending' END,
       CASE k
           WHEN 0 THEN jsonb_build_object('name', 'Care ' || g, 'slug', 'care-' || g,
                                          'sender_domain', 'mail.care' || g || '.example.com')
           WHEN 1 THEN jsonb_build_object('organization_id', org,
                                          'email', 'ada' || g || '@example.com',
                                          'name', 'Ada ' || g)
           WHEN 2 THEN jsonb_build_object('organization_id', org, 'role', 'admin')
           WHEN 3 THEN jsonb_build_object('settings', jsonb_build_object(
                           'visit_verification', true, 'client_assignment', g % 2 = 0,
                           'max_caseload', 10 + g % 40))
           WHEN 4 THEN jsonb_build_object('invitation_id', inv, 'organization_id', org,
                                          'user_id', grace,
                                          'email', 'grace' || g || '@example.com',
                                          'role', 'clinician',
                                          'token_hash', md5('token' || g),
                                          'expires_at', at + interval '7 days',
                                          'message_id', '<' || inv || '@mail.example.com>')
           WHEN 5 THEN jsonb_build_object('user_id', grace)
           WHEN 6 THEN jsonb_build_object('organization_id', org,
                                          'email', 'grace' || g || '@example.com',
                                          'name', 'Grace ' || g)
           WHEN 7 THEN jsonb_build_object('organization_id', org, 'role', 'clinician')
           WHEN 8 THEN jsonb_build_object('workflow_id', queue, 'invitations_sent', 1)
           ELSE jsonb_build_object('organization_id', org, 'workflow', 'organization-bootstrap')
       END,
       jsonb_build_object('correlation_id', md5('request' || g)::uuid),
       at, at
FROM (SELECT i, g, k, at,
             md5('org' || g)::uuid AS org, md5('ada' || g)::uuid AS ada,
             md5('grace' || g)::uuid AS grace, md5('inv' || g)::uuid AS inv,
             md5('queue' || g)::uuid AS queue
        FROM (SELECT i, i / 10 AS g, i % 10 AS k,
                     timestamptz '2025-11-25 00:00:00+00' + i * interval '10 milliseconds' AS at
                FROM generate_series(0, $n - 1) AS s (i)) numbered) events
ORDER BY i;
ALTER TABLE domain_events ENABLE TRIGGER process_domain_event_trigger;
ANALYZE domain_events;
";

#[derive(Debug, Serialize)]
struct BenchImportReport {
    backend: &'static str,
    place: String,
    events: u64,
    imported: i64,
    unmapped: i64,
    failed: i64,
    /// The whole import, from opening the target to the last checkpoint.
    seconds: f64,
    events_per_second: f64,
    /// Of `seconds`, checking the chain and signing the two checkpoints.
    signing_seconds: f64,
    /// Filling the seed's table, not measured.
    fill_seconds: f64,
}

pub async fn import(url: &str, args: BenchImportArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=100_000_000).contains(&args.events),
        "--events must be 1 to 100,000,000, not {}",
        args.events
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.batch),
        "--batch must be 1 to 10,000, not {}",
        args.batch
    );
    let seed_schema = format!(
        "cairn_bench_seed_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let seed = Db::connect(
        &args.seed_url,
        &DbOptions {
            max_connections: 2,
            schema: Some(seed_schema.clone()),
            writer: None,
        },
    )
    .await
    .context("--seed-url")?;
    anyhow::ensure!(
        seed.backend() == Backend::Postgres,
        "--seed-url must name a PostgreSQL database: the seed's event store is PostgreSQL's"
    );
    let result = measure(url, &args, &seed, &seed_schema).await;
    seed.drop_schema(&seed_schema)
        .await
        .context("removing the seed's schema")?;
    seed.close().await;
    let report = result?;
    if args.json.json {
        ui::print_json(&report)?;
    } else {
        outln!(
            "{} import · {} seed events from a temporary schema {seed_schema} · {}",
            style("cairn bench").bold(),
            ui::count(report.events),
            report.place
        );
        outln!(
            "  {} events/s: {} imported, {} left out, {} failed in cairn, in {} (of which \
             checking the chain and signing the checkpoints {}; filling the seed took {})",
            ui::count(report.events_per_second as u64),
            ui::count(u64::try_from(report.imported).unwrap_or(0)),
            ui::count(u64::try_from(report.unmapped).unwrap_or(0)),
            ui::count(u64::try_from(report.failed).unwrap_or(0)),
            ui::duration(std::time::Duration::from_secs_f64(report.seconds)),
            ui::duration(std::time::Duration::from_secs_f64(report.signing_seconds)),
            ui::duration(std::time::Duration::from_secs_f64(report.fill_seconds)),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    url: &str,
    args: &BenchImportArgs,
    seed: &Db,
    seed_schema: &str,
) -> anyhow::Result<BenchImportReport> {
    let filled = std::time::Instant::now();
    {
        let mut session = seed.writing_session().await?;
        session
            .conn()
            .execute_script(SEED_SCHEMA)
            .await
            .context("creating the seed's schema")?;
        session
            .conn()
            .execute_script(Sql::built(FILL.replace("$n", &args.events.to_string())))
            .await
            .context("filling the seed's domain_events")?;
    }
    let fill_seconds = filled.elapsed().as_secs_f64();
    let separator = if args.seed_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let source_url = format!(
        "{}{separator}options=-c%20search_path%3D{seed_schema}",
        args.seed_url
    );
    let source = Source::open(&source_url).await?;
    let (place, db, described) = Place::open(url, None).await?;
    let backend = db.backend();
    let store = EventStore::new(db, app::registry());
    let checkpoints = tempfile::tempdir().context("a directory for the checkpoints")?;
    let mut seed_bytes = [0_u8; 32];
    getrandom::fill(&mut seed_bytes)
        .map_err(|e| anyhow::anyhow!("the system's random number generator failed: {e}"))?;
    let key = AuditKey::from_seed(seed_bytes);
    let progress = ui::Progress::new("importing");
    let ran = run_import(
        &store,
        &source,
        &key,
        &Target::Dir(checkpoints.path().to_owned()),
        &Options {
            batch: args.batch,
            pause_after: None,
        },
        &mut |done, total| progress.update(done, total),
    )
    .await;
    progress.finish();
    source.close().await;
    let failed = match &ran {
        Ok(ran) => {
            cairn_domain::import::ledger::imported(store.db(), &ran.standing)
                .await?
                .n_failed
        }
        Err(_) => 0,
    };
    store.db().close().await;
    place.remove().await?;
    let ran = ran?;
    let seconds = ran.elapsed.as_secs_f64();
    Ok(BenchImportReport {
        backend: match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        },
        place: described,
        events: args.events,
        imported: ran.standing.n_imported,
        unmapped: ran.standing.n_unmapped,
        failed,
        seconds,
        events_per_second: ran.run.read as f64 / seconds.max(1e-9),
        signing_seconds: ran.signing.as_secs_f64(),
        fill_seconds,
    })
}
