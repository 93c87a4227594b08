//! The log writer under load from commands (issue 8, group commit): 64 writers at once
//! issue commands that succeed, fail a check, fail in a handler (their only event, or
//! the second of two appends after the first was applied), and repeat an idempotency
//! key, while the workflow engine records its steps through the same
//! writer and a reader follows the log. On both backends, in both write modes.
//!
//! Every invariant of the log holds afterwards: gapless positions and an intact hash
//! chain, projections equal to a replay of the log, a refused command left nothing,
//! a repeated key did its work once, and the reader never skipped an event.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_dispatch::{EventStore, VerifyOptions};
use cairn_domain::queries;
use cairn_domain::{
    BootstrapRequest, CommandContext, CommandError, Domain, DomainConfig, InviteeRequest,
};
use cairn_log::{Db, EventFilter, WriteMode, WriterConfig};
use cairn_policy::Principal;
use cairn_testkit::{Backend, TestDb, backend_test};
use cairn_types::{CorrelationId, InvitationId, OrgId, Position};
use cairn_workflow::{EngineConfig, SystemClock};
use serde_json::json;

use crate::common::registry;

const WRITERS: usize = 64;
const ROUNDS: usize = 6;
const ORGS: usize = 4;

fn admin() -> CommandContext {
    CommandContext::new(Principal::PlatformAdmin {
        name: "load".into(),
    })
}

fn bootstrap(slug: &str) -> BootstrapRequest {
    serde_json::from_value(json!({
        "organization": {"name": "Load Care", "slug": slug, "sender_domain": "mail.load.example.com"},
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
    }))
    .expect("a well-formed request")
}

fn invitee(email: &str, name: &str) -> InviteeRequest {
    InviteeRequest {
        email: email.to_owned(),
        name: name.to_owned(),
        roles: vec!["viewer".to_owned()],
    }
}

/// Makes two projections refuse some rows, as broken handlers would: `users` refuses
/// one name (a command's only event fails), and `workflow_runs` refuses the runs of
/// bootstraps whose slug says so (a command's second append fails after its first
/// was applied).
async fn break_handlers(t: &TestDb, db: &Db) -> anyhow::Result<()> {
    let script = match t.backend() {
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_mallory BEFORE INSERT ON users WHEN NEW.name = 'Mallory Refused'
             BEGIN SELECT RAISE(ABORT, 'users refuses Mallory'); END;
             CREATE TRIGGER refuse_runs BEFORE INSERT ON workflow_runs
             WHEN EXISTS (SELECT 1 FROM organizations o
                          WHERE o.id = NEW.org_id AND o.slug LIKE 'refused-bootstrap%')
             BEGIN SELECT RAISE(ABORT, 'workflow_runs refuses this run'); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION '% refuses this row', TG_TABLE_NAME; END $$;
             CREATE TRIGGER refuse_mallory BEFORE INSERT ON users FOR EACH ROW
             WHEN (NEW.name = 'Mallory Refused') EXECUTE FUNCTION refuse_row();
             CREATE FUNCTION refuse_run() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF EXISTS (SELECT 1 FROM organizations o
                            WHERE o.id = NEW.org_id AND o.slug LIKE 'refused-bootstrap%') THEN
                     RAISE EXCEPTION 'workflow_runs refuses this run';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_runs BEFORE INSERT ON workflow_runs FOR EACH ROW
             EXECUTE FUNCTION refuse_run();"
        }
    };
    let mut tx = db.begin().await?;
    tx.conn().execute_script(script).await?;
    tx.commit().await?;
    Ok(())
}

/// What one command was expected to do, and what it did.
enum Done {
    Invited { org_id: OrgId, email: String },
    Refused { correlation_id: CorrelationId },
    Shared { org_id: OrgId },
    Settings,
}

async fn run_one(
    domain: &Domain,
    orgs: &[OrgId],
    writer: usize,
    round: usize,
) -> anyhow::Result<Done> {
    let org_id = orgs[(writer + round) % orgs.len()];
    let ctx = admin();
    let correlation_id = ctx.correlation_id;
    match (writer + round) % 7 {
        0 => {
            let settings = serde_json::from_value(json!({
                "visit_verification": true,
                "client_assignment": writer.is_multiple_of(2),
                "max_caseload": 1 + (writer * ROUNDS + round) % 40,
            }))?;
            domain
                .update_direct_care_settings(&ctx, org_id, &settings)
                .await?;
            Ok(Done::Settings)
        }
        1 => {
            let email = format!("person-{writer}-{round}@example.com");
            domain
                .invite(&ctx, org_id, &invitee(&email, "Pat Example"))
                .await?;
            Ok(Done::Invited { org_id, email })
        }
        2 => {
            // The organization's admin is there already: the check refuses.
            match domain
                .invite(&ctx, org_id, &invitee("ada@example.com", "Ada Again"))
                .await
            {
                Err(CommandError::Conflict(_)) => Ok(Done::Refused { correlation_id }),
                other => anyhow::bail!("a second invitation of the admin: {other:?}"),
            }
        }
        3 => {
            // The handler refuses this name: the command fails and writes nothing.
            let email = format!("mallory-{writer}-{round}@example.com");
            match domain
                .invite(&ctx, org_id, &invitee(&email, "Mallory Refused"))
                .await
            {
                Err(CommandError::NotApplied { event_type, .. })
                    if event_type == "user.invited" =>
                {
                    Ok(Done::Refused { correlation_id })
                }
                other => anyhow::bail!("an invitation the handler refuses: {other:?}"),
            }
        }
        4 => {
            // Every writer repeats one idempotency key: one organization.
            let mut ctx = ctx;
            ctx.idempotency_key = Some("the-shared-bootstrap".to_owned());
            let accepted = domain
                .bootstrap(&ctx, &bootstrap("shared-under-load"))
                .await?;
            Ok(Done::Shared {
                org_id: accepted.org_id,
            })
        }
        5 => {
            // The organization's event is applied, then its workflow's start fails in
            // a handler: neither may stay.
            let slug = format!("refused-bootstrap-{writer}-{round}");
            match domain.bootstrap(&ctx, &bootstrap(&slug)).await {
                Err(CommandError::NotApplied { event_type, .. })
                    if event_type == "workflow.started" =>
                {
                    Ok(Done::Refused { correlation_id })
                }
                other => anyhow::bail!("a bootstrap whose run the handler refuses: {other:?}"),
            }
        }
        _ => match domain
            .revoke_invitation(&ctx, InvitationId::new_v7(), "no such invitation")
            .await
        {
            Err(CommandError::NotFound { .. }) => Ok(Done::Refused { correlation_id }),
            other => anyhow::bail!("revoking an invitation that does not exist: {other:?}"),
        },
    }
}

/// Follows the log as a subscriber does: reads after its cursor whenever the head
/// moves, and fails on the first gap or repeat.
async fn follow(db: Db, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<Position>> {
    let mut head = db.head_watch();
    let mut seen = Vec::new();
    let mut cursor = Position::START;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        loop {
            let events = db
                .reader()
                .await?
                .conn()
                .read_events(&EventFilter::after(cursor))
                .await?;
            let Some(last) = events.last() else { break };
            for event in &events {
                anyhow::ensure!(
                    event.position == cursor.next(),
                    "after {cursor} the reader found {} first: a gap or a repeat",
                    event.position
                );
                cursor = event.position;
                seen.push(cursor);
            }
            cursor = last.position;
        }
        if stopping {
            return Ok(seen);
        }
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), head.changed()).await;
    }
}

async fn under_load(t: &TestDb, mode: WriteMode) -> anyhow::Result<()> {
    t.migrate_sets(&[
        cairn_dispatch::MIGRATIONS,
        cairn_workflow::MIGRATIONS,
        cairn_domain::MIGRATIONS,
    ])
    .await?;
    let db = t
        .connect_with(WriterConfig {
            mode,
            ..WriterConfig::for_backend(t.backend())
        })
        .await?;
    let outbox = tempfile::tempdir()?;
    let domain = Domain::open(
        EventStore::new(db.clone(), registry()),
        Arc::new(cairn_mail::OutboxMailer::new(outbox.path())),
        Arc::new(SystemClock),
        DomainConfig::default(),
        EngineConfig::default(),
    )
    .await?;
    let mut orgs = Vec::new();
    for index in 0..ORGS {
        orgs.push(
            domain
                .bootstrap(&admin(), &bootstrap(&format!("load-{index}")))
                .await?
                .org_id,
        );
    }
    domain.engine().run_until_idle().await?;
    break_handlers(t, &db).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow(db.clone(), stop.clone()));
    let (engine_stop, engine_stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = domain.engine().clone();
    let engine_task = tokio::spawn(async move {
        engine
            .run(async move {
                let _ = engine_stopped.await;
            })
            .await;
    });
    let orgs = Arc::new(orgs);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let domain = domain.clone();
        let orgs = orgs.clone();
        writers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for round in 0..ROUNDS {
                done.push(run_one(&domain, &orgs, writer, round).await?);
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = Vec::new();
    for writer in writers {
        done.extend(writer.await??);
    }
    let _ = engine_stop.send(());
    engine_task.await?;
    domain.engine().run_until_idle().await?;
    stop.store(true, Ordering::SeqCst);
    let seen = follower.await??;

    let mut reader = db.reader().await?;
    let head = reader.conn().head().await?.last_position;
    let events = reader
        .conn()
        .read_events(&EventFilter {
            limit: Some(1_000_000),
            ..EventFilter::default()
        })
        .await?;
    let positions: Vec<i64> = events.iter().map(|e| e.position.get()).collect();
    assert_eq!(
        positions,
        (1..=head.get()).collect::<Vec<_>>(),
        "gapless positions"
    );
    assert_eq!(
        seen.last().copied(),
        Some(head),
        "the reader reached the head"
    );
    assert_eq!(seen.len(), events.len(), "the reader saw every event once");

    let mut shared = BTreeSet::new();
    let mut invited = 0;
    let mut refused = 0;
    for outcome in &done {
        match outcome {
            Done::Invited { org_id, email } => {
                invited += 1;
                let user = queries::user_by_email(&mut reader.conn(), *org_id, email).await?;
                assert!(
                    user.is_some(),
                    "{email} was invited and is a user of {org_id}"
                );
            }
            Done::Refused { correlation_id } => {
                refused += 1;
                let left = reader
                    .conn()
                    .read_events(&EventFilter {
                        correlation_id: Some(*correlation_id),
                        ..EventFilter::default()
                    })
                    .await?;
                assert!(left.is_empty(), "a refused command left events: {left:?}");
            }
            Done::Shared { org_id } => {
                shared.insert(*org_id);
            }
            Done::Settings => {}
        }
    }
    assert_eq!(
        shared.len(),
        1,
        "one idempotency key, one organization: {shared:?}"
    );
    assert!(invited > 0 && refused > 0);
    let initiated = events
        .iter()
        .filter(|e| e.event_type.as_str() == "organization.bootstrap.initiated")
        .count();
    assert_eq!(initiated, ORGS + 1, "the shared bootstrap ran once");
    drop(reader);

    let audit = db.verify_chain(&mut |_, _| {}).await?;
    assert!(audit.is_intact(), "{audit:?}");
    let report = domain
        .store()
        .verify_projections(
            VerifyOptions {
                dispatch_twice: true,
            },
            &mut |_, _| {},
        )
        .await?;
    assert!(report.is_clean(), "drift: {:#?}", report.drift);
    db.close().await;
    Ok(())
}

backend_test!(
    sixty_four_writers_with_savepoints_keep_every_invariant,
    |t: TestDb| async move { under_load(&t, WriteMode::Savepoints).await }
);

backend_test!(
    sixty_four_writers_optimistically_keep_every_invariant,
    |t: TestDb| async move { under_load(&t, WriteMode::Optimistic).await }
);
