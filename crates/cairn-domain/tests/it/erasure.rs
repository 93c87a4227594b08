//! Personal data is sealed in the log and erased by destroying one key: after an
//! erasure the chain (with a checkpoint signed before it) verifies, replay rebuilds
//! the same projections, reads show the erased marker, and neither the database nor
//! the outbox holds one byte of the person's name or address.

use std::sync::Arc;

use cairn_dispatch::current_events;
use cairn_domain::queries;
use cairn_domain::{
    BootstrapAccepted, BootstrapRequest, CommandContext, CommandError, InviteeRequest,
};
use cairn_log::{Anchor, AnchorStatus, AuditKey, Backend, ChainCheck, EventFilter, args};
use cairn_mail::{OutboxMailer, SmtpMailer};
use cairn_testkit::{SinkOptions, SmtpSink};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::UserId;
use cairn_workflow::state::RunWithSteps;
use cairn_workflow::{Clock, ManualClock, RunStatus, SystemClock};
use serde_json::json;

use crate::common::{World, admin_actor, assert_no_drift, world};

const EMAIL: &str = "rosalind.franklin@example.co.uk";
const NAME: &str = "Rosalind Franklin";

fn request() -> BootstrapRequest {
    serde_json::from_value(json!({
        "organization": {
            "name": "Sealed Care",
            "slug": "sealed-care",
            "sender_domain": "mail.sealed.example.co.uk",
            "direct_care_settings": {"visit_verification": true, "client_assignment": false, "max_caseload": 12}
        },
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [{"email": EMAIL, "name": NAME, "roles": ["clinician"]}]
    }))
    .expect("a well-formed request")
}

/// Every byte the database holds that a dump would show: on SQLite the database file
/// and its write-ahead log after a checkpoint, on PostgreSQL every row of every table
/// of the test's schema, as text.
async fn dump(t: &TestDb) -> anyhow::Result<Vec<u8>> {
    let db = t.db();
    match t.backend() {
        Backend::Sqlite => {
            db.compact_wal().await?;
            let path = t
                .url()
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .to_owned();
            let mut bytes = std::fs::read(&path)?;
            if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
                bytes.extend(wal);
            }
            Ok(bytes)
        }
        Backend::Postgres => {
            let mut reader = db.reader().await?;
            let mut conn = reader.conn();
            let tables = conn
                .fetch_all(
                    "SELECT table_name::text AS name FROM information_schema.tables \
                     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                    args![],
                )
                .await?;
            let mut bytes = Vec::new();
            for table in tables {
                let name: String = table.get("name")?;
                let rows = conn
                    .fetch_all(
                        cairn_log::Sql::built(format!(
                            "SELECT row_to_json(t)::text AS row FROM {} t",
                            cairn_log::quote_ident(&name)
                        )),
                        args![],
                    )
                    .await?;
                for row in rows {
                    bytes.extend(row.get::<String>("row")?.into_bytes());
                }
            }
            Ok(bytes)
        }
    }
}

/// The erasure or restriction already rebuilt the tables that held the person's data
/// in the clear, so that no copy is left in their pages' unused space (SQLite; nothing
/// is rebuilt on PostgreSQL).
async fn assert_rebuilt(w: &World) -> anyhow::Result<()> {
    let again = w.t.db().scrub_erased(&["users", "invitations"]).await?;
    assert!(
        !again,
        "the tables were not rebuilt after the erasure or restriction"
    );
    Ok(())
}

fn count(haystack: &[u8], needle: &str) -> usize {
    let needle = needle.as_bytes();
    haystack
        .windows(needle.len())
        .filter(|window| window.eq_ignore_ascii_case(needle))
        .count()
}

fn files_under(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            bytes.extend(std::fs::read(entry.path())?);
        }
    }
    Ok(bytes)
}

/// The chain verifies whole, and still holds `hash` at `position` (a head signed
/// before what the test did).
async fn assert_chain_holds(
    w: &World,
    position: cairn_types::Position,
    hash: &str,
) -> anyhow::Result<()> {
    let audit =
        w.t.db()
            .verify_chain_with(
                &ChainCheck {
                    anchors: vec![Anchor {
                        position,
                        hash: hash.to_owned(),
                    }],
                    start: None,
                },
                &mut |_, _| {},
            )
            .await?;
    assert!(audit.is_intact(), "{audit:?}");
    assert_eq!(audit.anchors, vec![AnchorStatus::Holds]);
    Ok(())
}

/// The domain on `t`, mailing into an outbox of its own, kept while the test runs.
async fn world_with_outbox(t: TestDb) -> anyhow::Result<(World, tempfile::TempDir)> {
    let outbox = tempfile::tempdir()?;
    let mailer = Arc::new(OutboxMailer::new(outbox.path()));
    Ok((world(t, mailer, Arc::new(SystemClock)).await?, outbox))
}

/// Bootstraps the organization of `request()` and runs its workflows; returns it and
/// the invitee's user id.
async fn bootstrapped_invitee(
    w: &World,
    ctx: &CommandContext,
) -> anyhow::Result<(BootstrapAccepted, UserId)> {
    let accepted = w.domain.bootstrap(ctx, &request()).await?;
    w.domain.engine().run_until_idle().await?;
    let rosalind = invitee(w, accepted.org_id).await?;
    Ok((accepted, rosalind))
}

/// The user id of the invitee of `request()` in `org_id`.
async fn invitee(w: &World, org_id: cairn_types::OrgId) -> anyhow::Result<UserId> {
    let mut reader = w.t.db().reader().await?;
    let users = queries::users(
        &mut reader.conn(),
        org_id,
        queries::Page {
            after: None,
            limit: 10,
        },
    )
    .await?;
    let rosalind = users
        .iter()
        .find(|user| user.email == EMAIL)
        .ok_or_else(|| anyhow::anyhow!("the invitee is not a user of {org_id}"))?;
    Ok(rosalind.id)
}

backend_test!(
    an_erased_person_leaves_no_byte_behind_and_the_chain_and_replay_still_verify,
    |t: TestDb| async move {
        let (w, outbox) = world_with_outbox(t).await?;
        let ctx = admin_actor();
        let (_, rosalind) = bootstrapped_invitee(&w, &ctx).await?;

        // Sealed in the log from the start: the projections and the outbox have it,
        // the events do not.
        let stored = {
            let mut reader = w.t.db().reader().await?;
            reader.conn().read_events(&EventFilter::default()).await?
        };
        let raw = serde_json::to_string(&stored.iter().map(|e| &e.data).collect::<Vec<_>>())?;
        assert_eq!(count(raw.as_bytes(), EMAIL), 0, "{raw}");
        assert_eq!(count(raw.as_bytes(), NAME), 0, "{raw}");
        assert!(raw.contains("$sealed"));
        assert!(
            count(&files_under(outbox.path())?, EMAIL) > 0,
            "the invitation was written"
        );
        let opened =
            current_events(w.t.db(), w.domain.store().dispatcher().registry(), stored).await?;
        let opened_text =
            serde_json::to_string(&opened.iter().map(|e| &e.data).collect::<Vec<_>>())?;
        assert!(opened_text.contains(EMAIL) && opened_text.contains(NAME));

        // A checkpoint signed before the erasure.
        let head = {
            let mut reader = w.t.db().reader().await?;
            reader.conn().head().await?
        };
        let key = AuditKey::from_seed([9; 32]);
        let checkpoint = key.sign(head.last_position, &head.last_hash, chrono::Utc::now());

        let receipt = w
            .domain
            .erase_subject(&ctx, rosalind, "asked on 2026-12-07")
            .await?;
        assert!(!receipt.repeated);
        let again = w
            .domain
            .erase_subject(&ctx, rosalind, "asked twice")
            .await?;
        assert!(again.repeated, "the first receipt comes back");
        assert_eq!(again.erased_at, receipt.erased_at);
        assert_eq!(again.reason, "asked on 2026-12-07");

        // Reads show the marker, never ciphertext.
        let stored = {
            let mut reader = w.t.db().reader().await?;
            reader.conn().read_events(&EventFilter::default()).await?
        };
        let opened =
            current_events(w.t.db(), w.domain.store().dispatcher().registry(), stored).await?;
        let opened_text =
            serde_json::to_string(&opened.iter().map(|e| &e.data).collect::<Vec<_>>())?;
        assert!(!opened_text.contains(EMAIL) && !opened_text.contains(NAME));
        assert!(opened_text.contains(r#"{"withheld":"erased"}"#));
        assert!(
            opened_text.contains("ada@example.com"),
            "others are untouched"
        );
        let status = w.domain.subject_status(&ctx, rosalind).await?;
        assert_eq!(status.state, "erased");

        assert_rebuilt(&w).await?;
        // Not one byte of them anywhere.
        let bytes = dump(&w.t).await?;
        assert_eq!(
            count(&bytes, EMAIL),
            0,
            "the address is still in the database"
        );
        assert_eq!(count(&bytes, NAME), 0, "the name is still in the database");
        assert!(
            count(&bytes, "ada@example.com") > 0,
            "the dump reads the database"
        );
        let files = files_under(outbox.path())?;
        assert_eq!(
            count(&files, EMAIL),
            0,
            "the outbox still holds their invitation"
        );
        assert!(count(&files, "ada@example.com") > 0);

        // The chain still verifies, the checkpoint signed before included; replay
        // rebuilds the same tombstones.
        assert_chain_holds(&w, checkpoint.log_position(), &head.last_hash).await?;
        assert_no_drift(&w).await?;

        // Nothing about them can be recorded again.
        let mut reader = w.t.db().reader().await?;
        let invitations = queries::invitations_of_user(&mut reader.conn(), rosalind).await?;
        drop(reader);
        let resend = w.domain.resend_invitation(&ctx, invitations[0].id).await;
        assert!(
            matches!(&resend, Err(CommandError::InvalidState { message }) if message.contains("erased")),
            "{resend:?}"
        );
        // And a person of another tenant, or nobody, is not found.
        let nobody = w
            .domain
            .erase_subject(&ctx, UserId::new_v7(), "no one")
            .await;
        assert!(
            matches!(nobody, Err(CommandError::NotFound { .. })),
            "{nobody:?}"
        );
        let no_reason = w.domain.erase_subject(&ctx, rosalind, "  ").await;
        assert!(
            matches!(no_reason, Err(CommandError::Invalid(_))),
            "{no_reason:?}"
        );
        Ok(())
    }
);

backend_test!(
    a_tampered_seal_is_named_by_its_failure_and_read_as_unreadable_never_as_ciphertext,
    |t: TestDb| async move {
        let (w, _outbox) = world_with_outbox(t).await?;
        let ctx = admin_actor();
        w.domain.bootstrap(&ctx, &request()).await?;
        w.domain.engine().run_until_idle().await?;

        // An administrator edits one sealed byte of a user.created and rehashes the
        // chain to hide it: the seal no longer opens.
        let (position, data) = {
            let mut reader = w.t.db().reader().await?;
            let events = reader.conn().read_events(&EventFilter::default()).await?;
            let event = events
                .into_iter()
                .find(|e| e.event_type.as_str() == "user.created")
                .expect("the admin was created");
            (event.position, event.data)
        };
        let mut tampered = data.clone();
        let envelope = tampered["name"]["$sealed"]
            .as_str()
            .expect("the name is sealed")
            .to_owned();
        let (person, sealed, field) =
            cairn_types::SealedField::compact_parts(&envelope).map_err(anyhow::Error::msg)?;
        let last = if sealed.ends_with('A') { 'B' } else { 'A' };
        tampered["name"]["$sealed"] = json!(cairn_types::SealedField::compact_envelope(
            person.parse()?,
            &format!("{}{last}", &sealed[..sealed.len() - 1]),
            field
        ));
        let text = serde_json::to_string(&tampered)?.replace('\'', "''");
        let cast = match w.t.backend() {
            Backend::Sqlite => format!("'{text}'"),
            Backend::Postgres => format!("'{text}'::jsonb"),
        };
        cairn_testkit::tamper(
            w.t.db(),
            &format!(
                "UPDATE domain_events SET event_data = {cast} WHERE position = {}",
                position.get()
            ),
            true,
        )
        .await?;

        // Reads: a marker, never the envelope.
        let stored = {
            let mut reader = w.t.db().reader().await?;
            reader.conn().read_events(&EventFilter::default()).await?
        };
        let opened =
            current_events(w.t.db(), w.domain.store().dispatcher().registry(), stored).await?;
        let event = opened
            .iter()
            .find(|e| e.position == position)
            .expect("still there");
        assert_eq!(event.data["name"], json!({"withheld": "unreadable"}));
        assert_eq!(
            event.data["email"], "ada@example.com",
            "the other field opens"
        );

        // Replay: the event fails with P9007, naming the field and the person.
        let report = w
            .domain
            .store()
            .verify_projections(cairn_dispatch::VerifyOptions::default(), &mut |_, _| {})
            .await?;
        let change = report
            .outcome_changes
            .iter()
            .find(|c| c.position == position)
            .expect("its outcome changes");
        match &change.now {
            cairn_log::Outcome::Failed(error) => {
                assert_eq!(error.code, cairn_types::ErrorCode::SealUnreadable);
                assert!(error.message.contains("/name"), "{}", error.message);
                assert!(
                    error.message.contains("does not match"),
                    "{}",
                    error.message
                );
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }
);

/// An invitation of `subject` into `org_id`, whose name and email are sealed for them.
fn invited(org_id: cairn_types::OrgId, subject: UserId) -> cairn_log::AppendRequest {
    let invited = cairn_domain::events::UserInvited {
        org_id,
        email: cairn_domain::model::Email::parse(EMAIL)
            .expect("valid")
            .into(),
        name: cairn_domain::model::Name::parse(NAME)
            .expect("valid")
            .into(),
        roles: vec![cairn_domain::model::Role::Viewer],
        invitation_id: cairn_types::InvitationId::new_v7(),
        invited_by: None,
    };
    let mut metadata = cairn_types::Metadata::new();
    metadata.org_id = Some(org_id);
    cairn_log::AppendRequest::new(
        cairn_types::StreamType::parse("user").expect("a stream type"),
        subject.into(),
        vec![cairn_dispatch::EventPayload::to_event(&invited, metadata)],
    )
}

fn assert_refused_as_erased<T: std::fmt::Debug>(result: &Result<T, cairn_log::AppendError>) {
    assert_seal_refused(result, |error| {
        matches!(error, cairn_log::SealError::Erased { .. })
    });
}

fn assert_refused_as_restricted<T: std::fmt::Debug>(result: &Result<T, cairn_log::AppendError>) {
    assert_seal_refused(result, |error| {
        matches!(error, cairn_log::SealError::Restricted { .. })
    });
}

/// The append was refused at the seal, for the reason `expected` recognises.
fn assert_seal_refused<T: std::fmt::Debug>(
    result: &Result<T, cairn_log::AppendError>,
    expected: fn(&cairn_log::SealError) -> bool,
) {
    assert!(
        matches!(result, Err(cairn_log::AppendError::Seal { error, .. }) if expected(error)),
        "{result:?}"
    );
}

/// The invitee of a bootstrapped organization, and another process that sealed for
/// her, so that it holds her key.
struct HerKeyElsewhere {
    w: World,
    _outbox: tempfile::TempDir,
    ctx: CommandContext,
    accepted: BootstrapAccepted,
    rosalind: UserId,
    other: cairn_dispatch::EventStore,
}

async fn her_key_held_by_another_process(t: TestDb) -> anyhow::Result<HerKeyElsewhere> {
    let (w, outbox) = world_with_outbox(t).await?;
    let ctx = admin_actor();
    let (accepted, rosalind) = bootstrapped_invitee(&w, &ctx).await?;
    let other =
        cairn_dispatch::EventStore::new(w.t.connect_again().await?, crate::common::registry());
    other.append(invited(accepted.org_id, rosalind)).await?;
    Ok(HerKeyElsewhere {
        w,
        _outbox: outbox,
        ctx,
        accepted,
        rosalind,
        other,
    })
}

/// Another process seals for a person, so it holds her key; she is erased; after
/// `wait`, that process is asked to seal for her again, and refuses.
async fn another_process_refuses_to_seal_after(
    t: TestDb,
    wait: std::time::Duration,
) -> anyhow::Result<()> {
    let HerKeyElsewhere {
        w,
        ctx,
        accepted,
        rosalind,
        other,
        ..
    } = her_key_held_by_another_process(t).await?;
    w.domain.erase_subject(&ctx, rosalind, "asked").await?;
    tokio::time::sleep(wait).await;
    assert_refused_as_erased(&other.append(invited(accepted.org_id, rosalind)).await);
    Ok(())
}

backend_test!(
    another_process_learns_of_an_erasure_and_refuses_to_seal_for_that_person_again,
    |t: TestDb| async move {
        // It hears of the new head and forgets her key.
        another_process_refuses_to_seal_after(t, std::time::Duration::from_millis(1500)).await
    }
);

backend_test!(
    a_process_that_has_not_heard_of_an_erasure_yet_refuses_to_seal_for_that_person,
    |t: TestDb| async move {
        // Its cache still holds her key: the seal reads her state in its transaction.
        another_process_refuses_to_seal_after(t, std::time::Duration::ZERO).await
    }
);

backend_test!(
    a_cached_key_is_not_sealed_with_after_an_erasure_its_process_never_heard_of,
    |t: TestDb| async move {
        let HerKeyElsewhere {
            w,
            accepted,
            rosalind,
            other,
            ..
        } = her_key_held_by_another_process(t).await?;

        // Her key destroyed in a transaction that appends nothing: no new head, so no
        // process is told of it. Only the count of erasures says so.
        let db = w.t.db();
        let mut tx = db.begin().await?;
        db.keyring()
            .erase_in(&mut tx, rosalind, json!({"reason": "asked"}))
            .await?;
        tx.commit().await?;

        assert_eq!(other.db().keyring().erasures_learnt(), 0);
        assert_refused_as_erased(&other.append(invited(accepted.org_id, rosalind)).await);
        Ok(())
    }
);

backend_test!(
    a_process_learns_each_erasure_by_its_number_and_goes_on_sealing_for_everyone_else,
    |t: TestDb| async move {
        let HerKeyElsewhere {
            w,
            ctx,
            accepted,
            rosalind,
            other,
            ..
        } = her_key_held_by_another_process(t).await?;

        // Another process holds the keys of two people.
        let keyring = other.db().keyring();
        let someone_else = UserId::new_v7();
        other.append(invited(accepted.org_id, someone_else)).await?;
        assert_eq!(keyring.erasures_learnt(), 0);

        w.domain.erase_subject(&ctx, rosalind, "asked").await?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while keyring.erasures_learnt() < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the other process did not learn of the erasure in 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(keyring.erasures_learnt(), 1);

        // Having learnt of it, it refuses her from its cache, and seals for the other
        // person with the key it holds.
        assert_refused_as_erased(&other.append(invited(accepted.org_id, rosalind)).await);
        other.append(invited(accepted.org_id, someone_else)).await?;
        // The erasure is counted once, however often it is asked for.
        w.domain
            .erase_subject(&ctx, rosalind, "asked again")
            .await?;
        let mut reader = w.t.db().reader().await?;
        assert_eq!(reader.conn().head().await?.erasures, 1);
        Ok(())
    }
);

backend_test!(
    a_seal_after_an_erasure_in_the_same_transaction_is_refused_though_an_earlier_seal_found_the_key,
    |t: TestDb| async move {
        let (w, _outbox) = world_with_outbox(t).await?;
        let ctx = admin_actor();
        let (_, rosalind) = bootstrapped_invitee(&w, &ctx).await?;
        let db = w.t.db();
        let keyring = db.keyring();

        // One transaction, as one batch of the writer holds units one after another: a
        // seal for her with the key this process holds, her erasure, a seal for her.
        let mut tx = db.begin().await?;
        let place = cairn_log::SealPlace {
            event_type: "user.renamed",
            stream_id: rosalind.into(),
        };
        let fields = [cairn_log::PersonalField {
            pointer: "/name".to_owned(),
            subject: rosalind,
        }];
        let mut before = json!({"name": NAME});
        keyring
            .seal_in(&mut tx, place, &mut before, &fields, None)
            .await?;
        assert!(before["name"]["$sealed"].is_string(), "{before}");
        let erased = keyring
            .erase_in(&mut tx, rosalind, json!({"reason": "asked"}))
            .await?;
        assert!(matches!(erased, cairn_log::Erasure::Erased { .. }));
        let mut after = json!({"name": NAME});
        let sealed = keyring
            .seal_in(&mut tx, place, &mut after, &fields, None)
            .await;
        assert!(
            matches!(sealed, Err(cairn_log::SealError::Erased { .. })),
            "{sealed:?}"
        );
        assert_eq!(after, json!({"name": NAME}), "nothing was sealed");
        tx.rollback().await?;
        Ok(())
    }
);

/// The opened payloads of every event in the log, as one text.
async fn opened_log(w: &World) -> anyhow::Result<String> {
    let stored = {
        let mut reader = w.t.db().reader().await?;
        reader.conn().read_events(&EventFilter::default()).await?
    };
    let opened = current_events(w.t.db(), w.domain.store().dispatcher().registry(), stored).await?;
    Ok(serde_json::to_string(
        &opened.iter().map(|e| &e.data).collect::<Vec<_>>(),
    )?)
}

backend_test!(
    a_restricted_person_is_shown_to_no_one_and_erased_on_a_durable_timer_when_the_retention_period_ends,
    |t: TestDb| async move {
        let outbox = tempfile::tempdir()?;
        let mailer = Arc::new(OutboxMailer::new(outbox.path()));
        let clock = Arc::new(cairn_workflow::ManualClock::new(chrono::Utc::now()));
        let w = world(t, mailer, clock.clone()).await?;
        let ctx = admin_actor();
        let (accepted, rosalind) = bootstrapped_invitee(&w, &ctx).await?;
        let head = {
            let mut reader = w.t.db().reader().await?;
            reader.conn().head().await?
        };

        // Bad requests change nothing.
        let now = cairn_workflow::Clock::now(clock.as_ref());
        let past = w
            .domain
            .restrict_subject(&ctx, rosalind, "kept for audit", now)
            .await;
        assert!(
            matches!(&past, Err(CommandError::Invalid(errors)) if errors[0].field == "erase_at"),
            "{past:?}"
        );
        let no_reason = w
            .domain
            .restrict_subject(&ctx, rosalind, " ", now + chrono::Duration::days(1))
            .await;
        assert!(
            matches!(no_reason, Err(CommandError::Invalid(_))),
            "{no_reason:?}"
        );
        let nobody = w
            .domain
            .restrict_subject(
                &ctx,
                UserId::new_v7(),
                "no one",
                now + chrono::Duration::days(1),
            )
            .await;
        assert!(
            matches!(nobody, Err(CommandError::NotFound { .. })),
            "{nobody:?}"
        );
        assert_eq!(w.domain.subject_status(&ctx, rosalind).await?.state, "active");

        // Restricted for 30 days.
        let erase_at = now + chrono::Duration::days(30);
        let receipt = w
            .domain
            .restrict_subject(&ctx, rosalind, "records kept 30 days", erase_at)
            .await?;
        assert!(!receipt.repeated);
        assert_eq!(receipt.erase_at, erase_at);
        assert_rebuilt(&w).await?;
        let again = w
            .domain
            .restrict_subject(&ctx, rosalind, "again", erase_at + chrono::Duration::days(1))
            .await?;
        assert!(again.repeated, "the first receipt comes back");
        assert_eq!(again.erase_at, erase_at);
        assert_eq!(again.workflow_id, receipt.workflow_id);
        let status = w.domain.subject_status(&ctx, rosalind).await?;
        assert_eq!(status.state, "restricted");
        assert_eq!(status.restriction.as_ref().map(|r| r.erase_at), Some(erase_at));

        // Every read withholds her; nobody else is touched.
        let opened = opened_log(&w).await?;
        assert!(!opened.contains(EMAIL) && !opened.contains(NAME), "{opened}");
        assert!(opened.contains(r#"{"withheld":"restricted"}"#));
        assert!(opened.contains("ada@example.com"));
        let user = {
            let mut reader = w.t.db().reader().await?;
            queries::user(&mut reader.conn(), rosalind).await?
        }
        .expect("her row stays");
        assert_eq!((user.email.as_str(), user.name.as_str()), ("", ""));
        assert!(user.restricted_at.is_some() && user.erased_at.is_none());
        // The database shows her to no one: sealed in the log, empty in the rows.
        let bytes = dump(&w.t).await?;
        assert_eq!(count(&bytes, EMAIL), 0);
        assert_eq!(count(&bytes, NAME), 0);
        assert_no_drift(&w).await?;

        // Nothing new about her is recorded, and no mail goes to her.
        let refused = w.domain.store().append(invited(accepted.org_id, rosalind)).await;
        assert_refused_as_restricted(&refused);
        let invitations = {
            let mut reader = w.t.db().reader().await?;
            queries::invitations_of_user(&mut reader.conn(), rosalind).await?
        };
        let resend = w.domain.resend_invitation(&ctx, invitations[0].id).await;
        assert!(
            matches!(&resend, Err(CommandError::InvalidState { message }) if message.contains("restricted")),
            "{resend:?}"
        );

        // The run sleeps until the period ends, through any number of passes.
        w.domain.engine().run_until_idle().await?;
        clock.advance(chrono::Duration::days(29));
        w.domain.engine().run_until_idle().await?;
        assert_eq!(w.domain.subject_status(&ctx, rosalind).await?.state, "restricted");
        assert!(count(&files_under(outbox.path())?, EMAIL) > 0, "kept until her erasure");

        // Then she is erased, by the engine, with the restriction's reason.
        clock.advance(chrono::Duration::days(1) + chrono::Duration::seconds(1));
        w.domain.engine().run_until_idle().await?;
        let status = w.domain.subject_status(&ctx, rosalind).await?;
        assert_eq!(status.state, "erased");
        let erasure = status.erasure.expect("the erasure's receipt");
        assert!(erasure.erased_by.starts_with("service:"), "{erasure:?}");
        assert!(erasure.reason.contains("records kept 30 days"), "{erasure:?}");
        assert_eq!(erasure.correlation_id, receipt.correlation_id);
        assert_eq!(
            status.restriction.map(|r| r.workflow_id),
            Some(receipt.workflow_id),
            "the restriction's receipt is kept"
        );
        let run = crate::common::workflow_status(&w, receipt.workflow_id).await?;
        assert_eq!(run, cairn_workflow::RunStatus::Completed);
        let opened = opened_log(&w).await?;
        assert!(opened.contains(r#"{"withheld":"erased"}"#));
        assert!(!opened.contains(r#"{"withheld":"restricted"}"#));
        assert_eq!(count(&files_under(outbox.path())?, EMAIL), 0, "the outbox is swept");
        let bytes = dump(&w.t).await?;
        assert_eq!(count(&bytes, EMAIL), 0);

        // The chain still holds its earlier head; replay rebuilds the same rows.
        assert_chain_holds(&w, head.last_position, &head.last_hash).await?;
        assert_no_drift(&w).await?;

        // An erased person cannot be restricted.
        let late = w
            .domain
            .restrict_subject(&ctx, rosalind, "too late", cairn_workflow::Clock::now(clock.as_ref()) + chrono::Duration::days(1))
            .await;
        assert!(
            matches!(&late, Err(CommandError::InvalidState { message }) if message.contains("erased")),
            "{late:?}"
        );
        Ok(())
    }
);

backend_test!(
    a_restricted_persons_data_is_disclosed_for_a_legal_claim_on_record_and_to_no_one_else,
    |t: TestDb| async move {
        let (w, _outbox) = world_with_outbox(t).await?;
        let ctx = admin_actor();
        let (accepted, rosalind) = bootstrapped_invitee(&w, &ctx).await?;
        w.domain
            .restrict_subject_for(
                &ctx,
                rosalind,
                "kept for an inquiry",
                chrono::Duration::days(30),
            )
            .await?;
        let via = cairn_log::AccessVia::Cli;
        let claim = "claim 2026-114 before the employment tribunal";

        // Who may not, and bad requests: nothing is disclosed, nothing recorded.
        let member = |org_id, role| {
            CommandContext::new(cairn_policy::Principal::User {
                user_id: UserId::new_v7(),
                org_id,
                roles: std::collections::BTreeSet::from([role]),
            })
        };
        let other_admin = member(cairn_types::OrgId::new_v7(), cairn_policy::Role::Admin);
        let refused = w
            .domain
            .disclose_subject(&other_admin, rosalind, claim, via)
            .await;
        assert!(
            matches!(refused, Err(CommandError::NotFound { .. })),
            "{refused:?}"
        );
        let viewer = member(accepted.org_id, cairn_policy::Role::Viewer);
        let refused = w
            .domain
            .disclose_subject(&viewer, rosalind, claim, via)
            .await;
        assert!(
            matches!(refused, Err(CommandError::Denied(_))),
            "{refused:?}"
        );
        let refused = w.domain.disclose_subject(&ctx, rosalind, " \t", via).await;
        assert!(
            matches!(&refused, Err(CommandError::Invalid(errors)) if errors[0].field == "reason"),
            "{refused:?}"
        );
        let refused = w
            .domain
            .disclose_subject(&ctx, UserId::new_v7(), claim, via)
            .await;
        assert!(
            matches!(refused, Err(CommandError::NotFound { .. })),
            "{refused:?}"
        );
        assert!(
            w.t.db()
                .read_access(rosalind, None, 100)
                .await?
                .iter()
                .all(|r| !r.record.resource.contains(claim))
        );

        // Her admin sees every field of hers the log holds, opened, and no one else's.
        let disclosure = w
            .domain
            .disclose_subject(&ctx, rosalind, claim, via)
            .await?;
        assert_eq!(disclosure.state, "restricted");
        assert_eq!(disclosure.org_id, accepted.org_id);
        let values: Vec<&serde_json::Value> = disclosure.fields.iter().map(|f| &f.value).collect();
        assert!(values.contains(&&json!(EMAIL)), "{values:?}");
        assert!(values.contains(&&json!(NAME)), "{values:?}");
        assert!(
            values.iter().all(|v| v.as_str().is_some()),
            "every seal opened: {values:?}"
        );
        let shown = serde_json::to_string(&disclosure)?;
        assert!(
            !shown.contains("ada@example.com") && !shown.contains("Ada Lovelace"),
            "{shown}"
        );
        assert!(
            disclosure
                .fields
                .windows(2)
                .all(|w| w[0].position <= w[1].position)
        );

        // On record, with its reason, before it was shown.
        let records = w.t.db().read_access(rosalind, None, 100).await?;
        let record = records
            .iter()
            .find(|r| r.record.correlation_id == disclosure.correlation_id)
            .expect("the disclosure is on record");
        assert!(record.record.resource.contains(claim), "{record:?}");
        assert_eq!(record.record.subjects, vec![rosalind]);
        assert_eq!(record.record.via, via);
        assert_eq!(record.record.who, disclosure.disclosed_to);
        assert!(w.t.db().verify_access_chain().await?.is_intact());

        // Every other read still withholds her, and the database holds no copy.
        let opened = opened_log(&w).await?;
        assert!(
            !opened.contains(EMAIL) && !opened.contains(NAME),
            "{opened}"
        );
        // In a process that knew nothing of her before its disclosure, too: the key it
        // read for it is not kept.
        let fresh = w.t.connect_again().await?;
        let keys = fresh.keyring().disclosure_keys(&fresh, rosalind).await?;
        drop(keys);
        let stored = {
            let mut reader = fresh.reader().await?;
            reader.conn().read_events(&EventFilter::default()).await?
        };
        let opened =
            current_events(&fresh, w.domain.store().dispatcher().registry(), stored).await?;
        let opened = serde_json::to_string(&opened.iter().map(|e| &e.data).collect::<Vec<_>>())?;
        assert!(
            !opened.contains(EMAIL) && !opened.contains(NAME),
            "{opened}"
        );
        // A claim that names her would outlive her erasure in the access log: refused.
        let named = w
            .domain
            .disclose_subject(&ctx, rosalind, &format!("Franklin claim: {NAME}"), via)
            .await;
        assert!(
            matches!(&named, Err(CommandError::Invalid(errors)) if errors[0].field == "reason"),
            "{named:?}"
        );
        let records = w.t.db().read_access(rosalind, None, 100).await?;
        assert!(
            records.iter().all(|r| !r.record.resource.contains(NAME)),
            "{records:?}"
        );
        let bytes = dump(&w.t).await?;
        assert_eq!(count(&bytes, EMAIL), 0);
        assert_eq!(count(&bytes, NAME), 0);

        // Once erased, there is nothing left to disclose.
        w.domain
            .erase_subject(&ctx, rosalind, "the inquiry closed")
            .await?;
        let late = w.domain.disclose_subject(&ctx, rosalind, claim, via).await;
        assert!(
            matches!(&late, Err(CommandError::InvalidState { message }) if message.contains("erased")),
            "{late:?}"
        );
        Ok(())
    }
);

backend_test!(
    another_process_holding_her_key_refuses_to_seal_for_a_restricted_person_and_learns_to_withhold_her,
    |t: TestDb| async move {
        let HerKeyElsewhere {
            w,
            ctx,
            accepted,
            rosalind,
            other,
            ..
        } = her_key_held_by_another_process(t).await?;
        let erase_at = chrono::Utc::now() + chrono::Duration::days(30);
        w.domain
            .restrict_subject(&ctx, rosalind, "records kept", erase_at)
            .await?;

        // Before it has heard of the restriction: the count of erasures says its
        // cached key may be stale, and her row says restricted.
        let refused = other.append(invited(accepted.org_id, rosalind)).await;
        assert_refused_as_restricted(&refused);

        // Once it has: it opens nothing of hers.
        let started = tokio::time::Instant::now();
        while other.db().keyring().erasures_learnt() == 0 {
            anyhow::ensure!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the other process never learnt of the restriction"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let stored = {
            let mut reader = other.db().reader().await?;
            reader.conn().read_events(&EventFilter::default()).await?
        };
        let opened = current_events(other.db(), other.dispatcher().registry(), stored).await?;
        let text = serde_json::to_string(&opened.iter().map(|e| &e.data).collect::<Vec<_>>())?;
        assert!(!text.contains(EMAIL), "{text}");
        assert!(text.contains(r#"{"withheld":"restricted"}"#));
        Ok(())
    }
);

/// The run `id`, with its steps.
async fn run_of(w: &World, id: cairn_types::WorkflowId) -> anyhow::Result<RunWithSteps> {
    let mut reader = w.t.db().reader().await?;
    cairn_workflow::state::load(&mut reader.conn(), id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {id}"))
}

/// What step `name` of `run` returned.
fn step_result(run: &RunWithSteps, name: &str) -> anyhow::Result<serde_json::Value> {
    run.steps
        .iter()
        .find(|step| step.name == name)
        .and_then(|step| step.result.clone())
        .ok_or_else(|| anyhow::anyhow!("step {name} of {} has no result: {run:#?}", run.run.id))
}

/// Runs the engine, a minute of its clock at a time, until `runs` have all ended.
async fn run_until_ended(
    w: &World,
    clock: &ManualClock,
    runs: &[cairn_types::WorkflowId],
) -> anyhow::Result<()> {
    let began = clock.now();
    loop {
        w.domain.engine().run_until_idle().await?;
        let mut running = Vec::new();
        for id in runs {
            let run = run_of(w, *id).await?.run;
            if run.status == RunStatus::Running {
                running.push(run.kind);
            }
        }
        if running.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            clock.now() - began < chrono::Duration::minutes(10),
            "still running after ten minutes: {running:?}"
        );
        clock.advance(chrono::Duration::minutes(1));
    }
}

backend_test!(
    an_invitation_to_someone_erased_or_withdrawn_before_it_went_out_is_skipped_not_failed,
    |t: TestDb| async move {
        // The mail server refuses everything while the bootstrap runs: its first send
        // (the admin's) waits to be tried again, after the invitee exists.
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        sink.set_outage(true)?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = world(
            t,
            Arc::new(SmtpMailer::from_url(&sink.url())?),
            clock.clone(),
        )
        .await?;
        let ctx = admin_actor();
        let accepted = w.domain.bootstrap(&ctx, &request()).await?;
        w.domain.engine().run_until_idle().await?;
        let rosalind = invitee(&w, accepted.org_id).await?;
        let person = |email: &str, name: &str| InviteeRequest {
            email: email.to_owned(),
            name: name.to_owned(),
            roles: vec!["viewer".to_owned()],
        };
        // And a person invited later, whose delivery waits too.
        let grace = w
            .domain
            .invite(
                &ctx,
                accepted.org_id,
                &person("grace.hopper@example.com", "Grace Hopper"),
            )
            .await?;
        w.domain.engine().run_until_idle().await?;

        // Both are erased at their request before anything went to them.
        w.domain
            .erase_subject(&ctx, rosalind, "asked before her invitation went out")
            .await?;
        w.domain
            .erase_subject(&ctx, grace.user_id, "asked before her invitation went out")
            .await?;
        sink.set_outage(false)?;
        run_until_ended(&w, &clock, &[accepted.workflow_id, grace.workflow_id]).await?;

        // The bootstrap completed: the admin was invited, the erased invitee skipped,
        // and nothing was undone.
        let bootstrap = run_of(&w, accepted.workflow_id).await?;
        assert_eq!(bootstrap.run.status, RunStatus::Completed, "{bootstrap:#?}");
        let sends: Vec<_> = bootstrap
            .steps
            .iter()
            .filter(|step| step.name.starts_with("send_invitation:"))
            .filter_map(|step| step.result.clone())
            .collect();
        let [admin, skipped] = sends.as_slice() else {
            anyhow::bail!("two sends in the bootstrap: {bootstrap:#?}");
        };
        assert!(admin.get("message_id").is_some(), "{admin}");
        let why = skipped["skipped"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!("user {rosalind} was erased")),
            "{skipped}"
        );
        let organization = {
            let mut reader = w.t.db().reader().await?;
            queries::organization(&mut reader.conn(), accepted.org_id).await?
        };
        assert!(
            organization.is_some_and(|org| org.is_active),
            "the organization stays active"
        );
        // Grace's delivery completed, with nothing sent, saying why.
        let delivery = run_of(&w, grace.workflow_id).await?;
        assert_eq!(delivery.run.status, RunStatus::Completed, "{delivery:#?}");
        let skipped = step_result(&delivery, "send")?;
        assert!(
            skipped["skipped"]
                .as_str()
                .unwrap_or_default()
                .contains("was erased"),
            "{skipped}"
        );
        assert_eq!(delivery.run.output.as_ref(), Some(&skipped));
        let mailed = |sink: &SmtpSink| {
            sink.messages()
                .into_iter()
                .map(|m| m.to)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            mailed(&sink),
            vec!["\"Ada Lovelace\" <ada@example.com>"],
            "only the admin was mailed"
        );

        // An invitation sent, sent again, and revoked before the second email went out.
        let katherine = w
            .domain
            .invite(
                &ctx,
                accepted.org_id,
                &person("katherine.johnson@example.com", "Katherine Johnson"),
            )
            .await?;
        run_until_ended(&w, &clock, &[katherine.workflow_id]).await?;
        sink.set_outage(true)?;
        let again = w
            .domain
            .resend_invitation(&ctx, katherine.invitation_id)
            .await?;
        w.domain.engine().run_until_idle().await?;
        w.domain
            .revoke_invitation(&ctx, katherine.invitation_id, "invited by mistake")
            .await?;
        sink.set_outage(false)?;
        run_until_ended(&w, &clock, &[again.workflow_id]).await?;
        let delivery = run_of(&w, again.workflow_id).await?;
        assert_eq!(delivery.run.status, RunStatus::Completed, "{delivery:#?}");
        assert_eq!(
            step_result(&delivery, "send")?["skipped"],
            "the invitation is revoked: nothing to send"
        );
        assert_eq!(
            mailed(&sink),
            vec![
                "\"Ada Lovelace\" <ada@example.com>",
                "\"Katherine Johnson\" <katherine.johnson@example.com>"
            ],
            "the resend went nowhere"
        );
        Ok(())
    }
);
