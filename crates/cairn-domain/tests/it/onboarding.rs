//! Organization onboarding end to end, on both backends, with mail through a real SMTP
//! server on loopback: the bootstrap saga, its failure and compensation, the safety
//! net, retries, invitations (accept once, resend, revoke, expire), validation and
//! idempotency.

use std::sync::Arc;

use cairn_dispatch::{DriftKind, VerifyOptions};
use cairn_domain::queries::{self, Page};
use cairn_domain::{BootstrapRequest, CommandContext, CommandError, InviteeRequest};
use cairn_log::{AppendRequest, EventFilter, NewEvent, RecordedEvent, args};
use cairn_mail::SmtpMailer;
use cairn_policy::Principal;
use cairn_testkit::{Backend, SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::{CorrelationId, EventType, Metadata, OrgId, StreamId, StreamType};
use cairn_workflow::{ManualClock, RunStatus};
use serde_json::{Value, json};

use crate::common::{
    World, admin_actor, assert_no_drift, organization, person, registry, smtp_world, token_in,
    workflow_status, world,
};

fn request(slug: &str) -> BootstrapRequest {
    serde_json::from_value(json!({
        "organization": {
            "name": "Sunrise Care",
            "slug": slug,
            "sender_domain": "mail.sunrise.example.co.uk",
            "direct_care_settings": {"visit_verification": true, "client_assignment": false, "max_caseload": 12}
        },
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]},
            {"email": "alan@example.org", "name": "Alan Turing", "roles": ["coordinator", "viewer"]}
        ]
    }))
    .expect("a well-formed request")
}

async fn events_of(w: &World, correlation_id: CorrelationId) -> anyhow::Result<Vec<RecordedEvent>> {
    let filter = EventFilter {
        correlation_id: Some(correlation_id),
        ..EventFilter::default()
    };
    Ok(w.t.db().reader().await?.conn().read_events(&filter).await?)
}

fn domain_types(events: &[RecordedEvent]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e.event_type.as_str())
        .filter(|t| !t.starts_with("workflow."))
        .collect()
}

backend_test!(
    a_bootstrap_completes_with_every_event_and_projection_row,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let ctx = admin_actor();
        let accepted = w.domain.bootstrap(&ctx, &request("sunrise-care")).await?;
        assert_eq!(accepted.correlation_id, ctx.correlation_id);
        w.domain.engine().run_until_idle().await?;

        assert_eq!(
            workflow_status(&w, accepted.workflow_id).await?,
            RunStatus::Completed
        );
        let org = organization(&w, accepted.org_id).await?;
        assert_eq!((org.status.as_str(), org.is_active), ("active", true));
        assert_eq!(
            org.sender_address, "noreply@example.co.uk",
            "the registrable domain, not co.uk"
        );
        assert_eq!(org.direct_care_settings.max_caseload, 12);

        let mut reader = w.t.db().reader().await?;
        let users = queries::users(&mut reader.conn(), accepted.org_id, Page::default()).await?;
        let summary: Vec<(&str, &str, Vec<String>)> = users
            .iter()
            .map(|u| {
                (
                    u.email.as_str(),
                    u.status.as_str(),
                    u.roles.iter().map(ToString::to_string).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("ada@example.com", "active", vec!["admin".to_owned()]),
                ("grace@example.com", "invited", vec![]),
                ("alan@example.org", "invited", vec![]),
            ]
        );
        let invitations =
            queries::invitations(&mut reader.conn(), accepted.org_id, Page::default()).await?;
        assert_eq!(invitations.len(), 3);
        assert!(
            invitations
                .iter()
                .all(|i| i.status == "pending" && i.send_count == 1)
        );
        let ttl = invitations[0].expires_at - invitations[0].last_sent_at;
        assert!(
            (ttl - chrono::Duration::days(7)).num_seconds().abs() < 5,
            "{ttl:?}"
        );
        drop(reader);

        let events = events_of(&w, ctx.correlation_id).await?;
        assert!(
            events.iter().all(|e| e.processing_error.is_none()),
            "every event applied"
        );
        assert!(
            events
                .iter()
                .all(|e| e.metadata.org_id == Some(accepted.org_id)),
            "every event names the tenant"
        );
        assert_eq!(
            domain_types(&events),
            [
                "organization.bootstrap.initiated",
                "organization.created",
                "user.created",
                "user.role_assigned",
                "user.invited",
                "user.invited",
                "invitation.sent",
                "invitation.sent",
                "invitation.sent",
                "organization.bootstrap.completed",
            ]
        );
        assert!(
            events
                .iter()
                .any(|e| e.event_type.as_str() == "workflow.completed")
        );

        let received = sink.messages();
        let mut recipients: Vec<&str> = received.iter().map(|m| m.to.as_str()).collect();
        recipients.sort();
        assert_eq!(recipients.len(), 3);
        assert!(recipients.iter().any(|r| r.contains("ada@example.com")));
        for message in &received {
            assert!(
                message.from.contains("noreply@example.co.uk"),
                "{}",
                message.from
            );
            assert_eq!(
                message.subject,
                "You're invited to join Sunrise Care on cairn"
            );
            assert!(
                message
                    .body
                    .contains("https://app.example.test/invitations/accept?token="),
                "{}",
                message.body
            );
            assert!(message.message_id.ends_with("@example.co.uk"));
        }
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    an_smtp_permanent_failure_ends_in_failure_compensation_and_deactivation,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            refuse: Some("550 5.7.1 Sender domain example.co.uk is not verified".into()),
            ..SinkOptions::default()
        })
        .await?;
        let w = smtp_world(t, &sink).await?;
        let ctx = admin_actor();
        let accepted = w
            .domain
            .bootstrap(&ctx, &request("sunrise-failing"))
            .await?;
        w.domain.engine().run_until_idle().await?;

        assert_eq!(
            workflow_status(&w, accepted.workflow_id).await?,
            RunStatus::Failed
        );
        let org = organization(&w, accepted.org_id).await?;
        assert_eq!((org.status.as_str(), org.is_active), ("failed", false));
        assert!(org.deactivated_at.is_some());
        let reason = org.failure_reason.unwrap_or_default();
        let ada = person(&w, accepted.org_id, "ada@example.com").await?;
        assert!(
            reason.contains(&ada.step("send_invitation")) && reason.contains("not verified"),
            "{reason}"
        );

        let events = events_of(&w, ctx.correlation_id).await?;
        let types = domain_types(&events);
        assert_eq!(
            &types[types.len() - 2..],
            ["organization.bootstrap.failed", "organization.deactivated"],
            "{types:?}"
        );
        let failed_step = events
            .iter()
            .find(|e| e.event_type.as_str() == "workflow.step_failed")
            .expect("the failed step is recorded");
        assert_eq!(
            failed_step.data["attempt"],
            json!(1),
            "a 5xx is not retried"
        );
        assert_eq!(failed_step.data["permanent"], json!(true));
        assert!(sink.messages().is_empty());
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    compensation_revokes_the_invitations_already_sent,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            refuse: Some("550 5.1.1 Mailbox unavailable".into()),
            refuse_to: Some("alan@".into()),
            ..SinkOptions::default()
        })
        .await?;
        let w = smtp_world(t, &sink).await?;
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-partial"))
            .await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, accepted.workflow_id).await?,
            RunStatus::Failed
        );
        let mut reader = w.t.db().reader().await?;
        let invitations =
            queries::invitations(&mut reader.conn(), accepted.org_id, Page::default()).await?;
        let statuses: Vec<(&str, &str)> = invitations
            .iter()
            .map(|i| (i.email.as_str(), i.status.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("ada@example.com", "revoked"),
                ("grace@example.com", "revoked")
            ]
        );
        let run = cairn_workflow::state::load(&mut reader.conn(), accepted.workflow_id)
            .await?
            .expect("the run");
        let compensations: Vec<&str> = run
            .steps
            .iter()
            .filter(|s| s.name.starts_with("compensate:"))
            .map(|s| s.name.as_str())
            .collect();
        drop(reader);
        let ada = person(&w, accepted.org_id, "ada@example.com").await?;
        let grace = person(&w, accepted.org_id, "grace@example.com").await?;
        assert_eq!(
            compensations,
            [
                format!("compensate:{}", grace.step("record_invitation")),
                format!("compensate:{}", ada.step("record_invitation")),
                "compensate:create_organization".to_owned(),
            ],
            "newest first"
        );
        assert_eq!(sink.messages().len(), 2);
        assert_no_drift(&w).await?;
        Ok(())
    }
);

/// Makes the log refuse `organization.deactivated` events, as a broken database would.
async fn refuse_deactivation_events(t: &TestDb) -> anyhow::Result<()> {
    refuse_events(t, "refuse_deactivation", "organization.deactivated").await
}

/// Makes the log refuse events of one type (a trigger named `name`).
async fn refuse_events(t: &TestDb, name: &str, event_type: &str) -> anyhow::Result<()> {
    let script = match t.backend() {
        Backend::Sqlite => format!(
            "CREATE TRIGGER {name} BEFORE INSERT ON domain_events
             WHEN NEW.event_type = '{event_type}'
             BEGIN SELECT RAISE(ABORT, 'the disk is on fire'); END"
        ),
        Backend::Postgres => format!(
            "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'the disk is on fire'; END $$;
             CREATE TRIGGER {name} BEFORE INSERT ON domain_events FOR EACH ROW
             WHEN (NEW.event_type = '{event_type}') EXECUTE FUNCTION {name}();"
        ),
    };
    let mut tx = t.db().begin().await?;
    tx.conn()
        .execute_script(cairn_log::Sql::built(script))
        .await?;
    tx.commit().await?;
    Ok(())
}

backend_test!(
    a_revocation_that_cannot_be_recorded_does_not_stop_the_deactivation,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            refuse: Some("550 5.1.1 Mailbox unavailable".into()),
            refuse_to: Some("alan@".into()),
            ..SinkOptions::default()
        })
        .await?;
        refuse_events(&t, "refuse_revocation", "invitation.revoked").await?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = world(
            t,
            Arc::new(SmtpMailer::from_url(&sink.url())?),
            clock.clone(),
        )
        .await?;
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-stuck-undo"))
            .await?;
        // Ten attempts each, with backoff.
        for _ in 0..30 {
            w.domain.engine().run_until_idle().await?;
            clock.advance(chrono::Duration::hours(2));
        }
        assert_eq!(
            workflow_status(&w, accepted.workflow_id).await?,
            RunStatus::CompensationFailed,
            "the revocations failed for good and need an operator"
        );
        let org = organization(&w, accepted.org_id).await?;
        assert_eq!(
            (org.status.as_str(), org.is_active),
            ("failed", false),
            "the organization was deactivated all the same"
        );
        let mut reader = w.t.db().reader().await?;
        let run = cairn_workflow::state::load(&mut reader.conn(), accepted.workflow_id)
            .await?
            .expect("the run");
        let failure = run.run.failure.clone().unwrap_or_default();
        let ada = person(&w, accepted.org_id, "ada@example.com").await?;
        let grace = person(&w, accepted.org_id, "grace@example.com").await?;
        assert!(
            failure.contains(&format!("undoing {}", ada.step("record_invitation")))
                && failure.contains(&format!("undoing {}", grace.step("record_invitation"))),
            "{failure}"
        );
        drop(reader);
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    the_safety_net_deactivates_when_emitting_the_event_fails,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            refuse: Some("550 5.7.1 Sender domain is not verified".into()),
            ..SinkOptions::default()
        })
        .await?;
        refuse_deactivation_events(&t).await?;
        let w = smtp_world(t, &sink).await?;
        let ctx = admin_actor();
        let accepted = w
            .domain
            .bootstrap(&ctx, &request("sunrise-safety-net"))
            .await?;
        w.domain.engine().run_until_idle().await?;

        assert_eq!(
            workflow_status(&w, accepted.workflow_id).await?,
            RunStatus::Failed
        );
        let org = organization(&w, accepted.org_id).await?;
        assert_eq!(
            (org.status.as_str(), org.is_active),
            ("failed", false),
            "deactivated all the same"
        );
        let events = events_of(&w, ctx.correlation_id).await?;
        assert!(
            !events
                .iter()
                .any(|e| e.event_type.as_str() == "organization.deactivated")
        );

        let mut reader = w.t.db().reader().await?;
        let audit = reader
            .conn()
            .fetch_all(
                "SELECT projection, row_key, reason, correlation_id FROM safety_net_writes",
                args![],
            )
            .await?;
        assert_eq!(audit.len(), 1, "the direct write left an audit record");
        assert_eq!(audit[0].get::<String>("projection")?, "organizations");
        assert_eq!(
            audit[0].get_json("row_key")?,
            json!({"id": accepted.org_id})
        );
        assert!(
            audit[0]
                .get::<String>("reason")?
                .contains("the disk is on fire")
        );
        assert_eq!(
            audit[0].get::<CorrelationId>("correlation_id")?,
            ctx.correlation_id
        );
        drop(reader);

        // The write without an event is exactly what replay --verify reports.
        let report = w
            .domain
            .store()
            .verify_projections(VerifyOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(report.drift.len(), 1, "{:#?}", report.drift);
        assert_eq!(report.drift[0].table, "organizations");
        match &report.drift[0].kind {
            DriftKind::Differs { columns } => {
                assert!(
                    columns.iter().any(|c| c.column == "is_active"),
                    "{columns:?}"
                );
            }
            other => panic!("{other:?}"),
        }

        // Replay does not silently undo the safety net: it stops and names the row.
        let err = w
            .domain
            .store()
            .replay(cairn_dispatch::ReplayOptions::default(), &mut |_, _| {})
            .await
            .expect_err("replay would undo the safety net");
        assert!(
            matches!(&err, cairn_dispatch::ReplayError::WouldUndoSafetyNet { writes } if writes.len() == 1),
            "{err:?}"
        );
        assert!(err.to_string().contains("--discard-safety-net"), "{err}");
        assert!(!organization(&w, accepted.org_id).await?.is_active);

        // The operator's fix: once the log takes it, append the event the safety net
        // stood in for. Then the log explains the row and replay goes ahead.
        let mut tx = w.t.db().begin().await?;
        tx.conn()
            .execute_script(match w.t.backend() {
                Backend::Sqlite => "DROP TRIGGER refuse_deactivation",
                Backend::Postgres => "DROP TRIGGER refuse_deactivation ON domain_events",
            })
            .await?;
        tx.commit().await?;
        let mut metadata = Metadata::with_correlation(ctx.correlation_id);
        metadata.org_id = Some(accepted.org_id);
        w.domain
            .store()
            .append(AppendRequest::new(
                StreamType::parse("organization")?,
                accepted.org_id.into(),
                vec![NewEvent::new(
                    EventType::parse("organization.deactivated")?,
                    json!({"reason": "bootstrap failed (appended by an operator)"}),
                    metadata,
                )],
            ))
            .await?;
        w.domain
            .store()
            .replay(cairn_dispatch::ReplayOptions::default(), &mut |_, _| {})
            .await?;
        let org = organization(&w, accepted.org_id).await?;
        assert_eq!((org.status.as_str(), org.is_active), ("failed", false));
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    transient_mail_failures_are_retried_with_backoff,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            transient_first: 2,
            ..SinkOptions::default()
        })
        .await?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = world(
            t,
            Arc::new(SmtpMailer::from_url(&sink.url())?),
            clock.clone(),
        )
        .await?;
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-retry"))
            .await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, accepted.workflow_id).await?,
            RunStatus::Running
        );
        for _ in 0..4 {
            clock.advance(chrono::Duration::seconds(10));
            w.domain.engine().run_until_idle().await?;
        }
        assert_eq!(
            workflow_status(&w, accepted.workflow_id).await?,
            RunStatus::Completed
        );
        let mut reader = w.t.db().reader().await?;
        let run = cairn_workflow::state::load(&mut reader.conn(), accepted.workflow_id)
            .await?
            .expect("run");
        let ada = person(&w, accepted.org_id, "ada@example.com").await?;
        let first_send = run
            .steps
            .iter()
            .find(|s| s.name == ada.step("send_invitation"))
            .expect("step");
        assert_eq!(first_send.attempts, 3, "two 451 replies, then accepted");
        assert_eq!(sink.messages().len(), 3, "each email exactly once");
        Ok(())
    }
);

backend_test!(
    an_invitation_is_accepted_once_and_revoked_or_expired_ones_are_refused,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = world(
            t,
            Arc::new(SmtpMailer::from_url(&sink.url())?),
            clock.clone(),
        )
        .await?;
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-accept"))
            .await?;
        w.domain.engine().run_until_idle().await?;
        let messages = sink.messages();
        let token_for = |email: &str| {
            token_in(
                messages
                    .iter()
                    .find(|m| m.to.contains(email))
                    .expect("mailed"),
            )
        };

        let anonymous = CommandContext::new(Principal::Anonymous);
        let acceptance = w
            .domain
            .accept_invitation(&anonymous, &token_for("grace@"))
            .await?;
        let mut reader = w.t.db().reader().await?;
        let grace = queries::user(&mut reader.conn(), acceptance.user_id)
            .await?
            .expect("grace");
        assert_eq!((grace.status.as_str(), grace.roles.len()), ("active", 1));
        drop(reader);
        let again = w
            .domain
            .accept_invitation(&anonymous, &token_for("grace@"))
            .await
            .expect_err("works once");
        assert!(again.to_string().contains("already accepted"), "{again}");

        let err = w
            .domain
            .accept_invitation(&anonymous, &"0".repeat(64))
            .await
            .expect_err("no such token");
        assert!(matches!(err, CommandError::NotFound { .. }), "{err:?}");
        let err = w
            .domain
            .accept_invitation(&anonymous, "short")
            .await
            .expect_err("malformed");
        assert!(
            err.to_string()
                .contains("token: an invitation token is 64 hexadecimal characters"),
            "{err}"
        );

        let mut reader = w.t.db().reader().await?;
        let invitations =
            queries::invitations(&mut reader.conn(), accepted.org_id, Page::default()).await?;
        drop(reader);
        let alan = invitations
            .iter()
            .find(|i| i.email == "alan@example.org")
            .expect("alan")
            .clone();
        w.domain
            .revoke_invitation(&admin_actor(), alan.id, "hired elsewhere")
            .await?;
        let err = w
            .domain
            .accept_invitation(&anonymous, &token_for("alan@"))
            .await
            .expect_err("revoked");
        assert!(err.to_string().contains("revoked"), "{err}");
        let err = w
            .domain
            .revoke_invitation(&admin_actor(), alan.id, "again")
            .await
            .expect_err("not pending");
        assert!(
            err.to_string()
                .contains("only a pending or refused invitation can be revoked"),
            "{err}"
        );

        // Ada's invitation expires through the durable timer after seven days.
        clock.advance(chrono::Duration::days(7) + chrono::Duration::minutes(1));
        w.domain.engine().run_until_idle().await?;
        let ada = invitations
            .iter()
            .find(|i| i.email == "ada@example.com")
            .expect("ada")
            .clone();
        let mut reader = w.t.db().reader().await?;
        let expired = queries::invitation(&mut reader.conn(), ada.id)
            .await?
            .expect("ada");
        drop(reader);
        assert_eq!(expired.status, "expired");
        let err = w
            .domain
            .accept_invitation(&anonymous, &token_for("ada@"))
            .await
            .expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");

        // Sent again: a new token works, the old one does not.
        w.domain.resend_invitation(&admin_actor(), ada.id).await?;
        w.domain.engine().run_until_idle().await?;
        let resent = sink
            .messages()
            .into_iter()
            .filter(|m| m.to.contains("ada@"))
            .collect::<Vec<_>>();
        assert_eq!(resent.len(), 2);
        let new_token = token_in(&resent[1]);
        assert_ne!(new_token, token_for("ada@"));
        let err = w
            .domain
            .accept_invitation(&anonymous, &token_for("ada@"))
            .await
            .expect_err("replaced");
        assert!(matches!(err, CommandError::NotFound { .. }), "{err:?}");
        w.domain.accept_invitation(&anonymous, &new_token).await?;
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    a_resend_in_flight_never_reopens_an_invitation_revoked_meanwhile,
    |t: TestDb| async move {
        // The server holds Ada's mail until told, so that the revoke lands exactly
        // between the email going out and the resend being recorded.
        let sink = SmtpSink::start(SinkOptions {
            hold_to: Some("ada@".into()),
            ..SinkOptions::default()
        })
        .await?;
        let w = smtp_world(t, &sink).await?;
        let org = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-race"))
            .await?;
        let engine = w.domain.engine().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            engine
                .run(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        let wait_for = |id| {
            let w = &w;
            async move {
                tokio::time::timeout(std::time::Duration::from_secs(30), async {
                    loop {
                        let status = workflow_status(w, id).await?;
                        if status != RunStatus::Running {
                            return anyhow::Ok(status);
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                })
                .await?
            }
        };
        let within = std::time::Duration::from_secs(20);
        sink.wait_held(1, within).await?;
        sink.release(1)?;
        assert_eq!(wait_for(org.workflow_id).await?, RunStatus::Completed);
        let mut reader = w.t.db().reader().await?;
        let ada = queries::invitations(&mut reader.conn(), org.org_id, Page::default())
            .await?
            .into_iter()
            .find(|i| i.email == "ada@example.com")
            .expect("ada's invitation");
        drop(reader);

        let resend = w.domain.resend_invitation(&admin_actor(), ada.id).await?;
        // A second resend while the first is on its way is refused, not sent twice.
        let twice = w
            .domain
            .resend_invitation(&admin_actor(), ada.id)
            .await
            .expect_err("one delivery at a time");
        assert!(
            twice.to_string().contains("is being sent already"),
            "{twice}"
        );

        // The email is in the server's hands; the admin revokes now.
        sink.wait_held(2, within).await?;
        w.domain
            .revoke_invitation(&admin_actor(), ada.id, "changed our mind")
            .await?;
        sink.release(2)?;
        assert_eq!(wait_for(resend.workflow_id).await?, RunStatus::Completed);
        let _ = stop.send(());
        worker.await?;

        let mut reader = w.t.db().reader().await?;
        let after = queries::invitation(&mut reader.conn(), ada.id)
            .await?
            .expect("ada's invitation");
        drop(reader);
        assert_eq!(after.status, "revoked", "the resend did not reopen it");
        let resent_events = events_of(&w, resend.correlation_id)
            .await?
            .into_iter()
            .filter(|e| e.event_type.as_str() == "invitation.resent")
            .count();
        assert_eq!(resent_events, 0, "nothing recorded the superseded email");
        let mails = sink
            .messages()
            .into_iter()
            .filter(|m| m.to.contains("ada@"))
            .collect::<Vec<_>>();
        assert_eq!(
            mails.len(),
            2,
            "the first invitation and the superseded resend"
        );
        let err = w
            .domain
            .accept_invitation(
                &CommandContext::new(Principal::Anonymous),
                &token_in(&mails[1]),
            )
            .await
            .expect_err("the superseded email's link does not work");
        assert!(matches!(err, CommandError::NotFound { .. }), "{err:?}");
        let err = w
            .domain
            .accept_invitation(
                &CommandContext::new(Principal::Anonymous),
                &token_in(&mails[0]),
            )
            .await
            .expect_err("nor does the first one");
        assert!(err.to_string().contains("revoked"), "{err}");
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    a_command_whose_event_cannot_be_applied_writes_nothing_and_says_so,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let org = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-broken-projection"))
            .await?;
        w.domain.engine().run_until_idle().await?;
        let grace = sink
            .messages()
            .into_iter()
            .find(|m| m.to.contains("grace@"))
            .expect("grace's invitation");
        // The invitations projection refuses acceptances, as a broken table would.
        let script = match w.t.backend() {
            Backend::Sqlite => {
                "CREATE TRIGGER refuse_acceptance BEFORE UPDATE ON invitations
                 WHEN NEW.status = 'accepted'
                 BEGIN SELECT RAISE(ABORT, 'the invitations table is broken'); END"
            }
            Backend::Postgres => {
                "CREATE FUNCTION refuse_acceptance() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'the invitations table is broken'; END $$;
                 CREATE TRIGGER refuse_acceptance BEFORE UPDATE ON invitations FOR EACH ROW
                 WHEN (NEW.status = 'accepted') EXECUTE FUNCTION refuse_acceptance();"
            }
        };
        let mut tx = w.t.db().begin().await?;
        tx.conn().execute_script(script).await?;
        tx.commit().await?;
        let before = w.t.db().reader().await?.conn().head().await?;

        let anonymous = CommandContext::new(Principal::Anonymous);
        let err = w
            .domain
            .accept_invitation(&anonymous, &token_in(&grace))
            .await
            .expect_err("the projection refused");
        assert!(
            matches!(&err, CommandError::NotApplied { event_type, .. } if event_type == "invitation.accepted"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("the invitations table is broken"),
            "{err}"
        );
        let after = w.t.db().reader().await?.conn().head().await?;
        assert_eq!(
            after.last_position, before.last_position,
            "nothing was written"
        );
        let mut reader = w.t.db().reader().await?;
        let invitation = queries::invitations(&mut reader.conn(), org.org_id, Page::default())
            .await?
            .into_iter()
            .find(|i| i.email == "grace@example.com")
            .expect("grace's invitation");
        assert_eq!(invitation.status, "pending");
        drop(reader);

        // Once the table is mended, the same link works.
        let mut tx = w.t.db().begin().await?;
        tx.conn()
            .execute_script(match w.t.backend() {
                Backend::Sqlite => "DROP TRIGGER refuse_acceptance",
                Backend::Postgres => "DROP TRIGGER refuse_acceptance ON invitations",
            })
            .await?;
        tx.commit().await?;
        w.domain
            .accept_invitation(&anonymous, &token_in(&grace))
            .await?;
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    a_resent_invitation_pushes_its_expiry_out,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = world(
            t,
            Arc::new(SmtpMailer::from_url(&sink.url())?),
            clock.clone(),
        )
        .await?;
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-extend"))
            .await?;
        w.domain.engine().run_until_idle().await?;
        let mut reader = w.t.db().reader().await?;
        let grace = queries::invitations(&mut reader.conn(), accepted.org_id, Page::default())
            .await?
            .into_iter()
            .find(|i| i.email == "grace@example.com")
            .expect("grace");
        drop(reader);
        clock.advance(chrono::Duration::days(5));
        w.domain.resend_invitation(&admin_actor(), grace.id).await?;
        w.domain.engine().run_until_idle().await?;
        clock.advance(chrono::Duration::days(3));
        w.domain.engine().run_until_idle().await?;
        let mut reader = w.t.db().reader().await?;
        let status = queries::invitation(&mut reader.conn(), grace.id)
            .await?
            .expect("grace")
            .status;
        assert_eq!(
            status, "pending",
            "day 8, but the resend on day 5 moved the expiry to day 12"
        );
        drop(reader);
        clock.advance(chrono::Duration::days(5));
        w.domain.engine().run_until_idle().await?;
        let mut reader = w.t.db().reader().await?;
        let status = queries::invitation(&mut reader.conn(), grace.id)
            .await?
            .expect("grace")
            .status;
        assert_eq!(status, "expired");
        Ok(())
    }
);

backend_test!(
    bad_commands_name_the_field_and_change_nothing,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let bad: BootstrapRequest = serde_json::from_value(json!({
            "organization": {"name": " ", "slug": "Sunrise Care", "sender_domain": "co.uk",
                             "direct_care_settings": {"visit_verification": true, "client_assignment": true, "max_caseload": 0}},
            "admin": {"email": "ada", "name": "Ada"},
            "invitees": [
                {"email": "grace@example.com", "name": "Grace", "roles": ["nurse"]},
                {"email": "grace@example.com", "name": "Grace again", "roles": []}
            ]
        }))?;
        let err = w
            .domain
            .bootstrap(&admin_actor(), &bad)
            .await
            .expect_err("invalid");
        let CommandError::Invalid(fields) = err else {
            panic!("{err:?}")
        };
        let named: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            named,
            [
                "organization.name",
                "organization.slug",
                "organization.sender_domain",
                "organization.direct_care_settings.max_caseload",
                "admin.email",
                "invitees[0].roles[0]",
                "invitees[1].roles",
                "invitees[1].email",
            ],
            "{fields:#?}"
        );
        assert!(
            fields[2].message.contains("itself a public suffix"),
            "{}",
            fields[2].message
        );
        assert!(
            fields[5].message.contains("\"nurse\" is not a role"),
            "{}",
            fields[5].message
        );

        let unknown_field = serde_json::from_value::<BootstrapRequest>(json!({
        "organization": {"name": "x", "slug": "xyz", "sender_domain": "example.com", "colour": "red"},
        "admin": {"email": "a@example.com", "name": "A"}
    }))
    .expect_err("unknown fields are refused");
        assert!(
            unknown_field.to_string().contains("unknown field `colour`"),
            "{unknown_field}"
        );

        w.domain
            .bootstrap(&admin_actor(), &request("sunrise-taken"))
            .await?;
        let err = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-taken"))
            .await
            .expect_err("taken");
        assert!(
            matches!(&err, CommandError::Conflict(field) if field.field == "organization.slug"),
            "{err:?}"
        );

        let n_orgs =
            w.t.db()
                .reader()
                .await?
                .conn()
                .fetch_one("SELECT COUNT(*) AS n FROM organizations", args![])
                .await?
                .get::<i64>("n")?;
        assert_eq!(n_orgs, 1, "only the valid bootstrap wrote anything");
        Ok(())
    }
);

backend_test!(
    append_refuses_a_payload_that_does_not_fit_its_type,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let event = NewEvent::new(
            EventType::parse("organization.created")?,
            json!({"name": "Sunrise", "slug": "sunrise", "sender_domain": "example.com", "sender_address": "not-an-email",
               "direct_care_settings": {"visit_verification": true, "client_assignment": true, "max_caseload": 3}}),
            Metadata::new(),
        );
        let err = w
            .domain
            .store()
            .append(AppendRequest::new(
                StreamType::parse("organization")?,
                StreamId::new_v7(),
                vec![event.clone()],
            ))
            .await
            .expect_err("bad payload");
        assert!(
            err.to_string().contains(
                "event_data.sender_address: \"not-an-email\" is not a valid email address"
            ),
            "{err}"
        );
        let err = w
            .domain
            .store()
            .append(AppendRequest::new(
                StreamType::parse("user")?,
                StreamId::new_v7(),
                vec![event],
            ))
            .await
            .expect_err("wrong stream type");
        assert!(
            err.to_string()
                .contains("belongs to stream type \"organization\", not \"user\""),
            "{err}"
        );
        let missing = NewEvent::new(
            EventType::parse("user.role_assigned")?,
            json!({"org_id": OrgId::new_v7()}),
            Metadata::new(),
        );
        let err = w
            .domain
            .store()
            .append(AppendRequest::new(
                StreamType::parse("user")?,
                StreamId::new_v7(),
                vec![missing],
            ))
            .await
            .expect_err("missing field");
        assert!(err.to_string().contains("missing field `role`"), "{err}");
        assert!(
            w.t.db()
                .reader()
                .await?
                .conn()
                .read_events(&EventFilter::default())
                .await?
                .is_empty()
        );
        Ok(())
    }
);

backend_test!(
    a_repeated_idempotency_key_returns_the_first_response,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let mut ctx = admin_actor();
        ctx.idempotency_key = Some("bootstrap-sunrise-1".into());
        let first = w.domain.bootstrap(&ctx, &request("sunrise-once")).await?;
        let mut retry = admin_actor();
        retry.idempotency_key = ctx.idempotency_key.clone();
        let second = w.domain.bootstrap(&retry, &request("sunrise-once")).await?;
        assert_eq!(first, second);
        let err = w
            .domain
            .bootstrap(&retry, &request("sunrise-other"))
            .await
            .expect_err("different request");
        assert!(matches!(err, CommandError::KeyReused { .. }), "{err:?}");
        let n_orgs =
            w.t.db()
                .reader()
                .await?
                .conn()
                .fetch_one("SELECT COUNT(*) AS n FROM organizations", args![])
                .await?
                .get::<i64>("n")?;
        assert_eq!(n_orgs, 1);
        Ok(())
    }
);

backend_test!(
    settings_and_invitations_after_the_bootstrap,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-later"))
            .await?;
        w.domain.engine().run_until_idle().await?;

        let ctx = admin_actor();
        let settings = cairn_domain::model::DirectCareSettings {
            visit_verification: false,
            client_assignment: true,
            max_caseload: 40,
        };
        w.domain
            .update_direct_care_settings(&ctx, accepted.org_id, &settings)
            .await?;
        assert_eq!(
            organization(&w, accepted.org_id)
                .await?
                .direct_care_settings,
            settings
        );
        let bad = cairn_domain::model::DirectCareSettings {
            max_caseload: 900,
            ..settings
        };
        let err = w
            .domain
            .update_direct_care_settings(&ctx, accepted.org_id, &bad)
            .await
            .expect_err("too many");
        assert!(
            err.to_string()
                .contains("max_caseload: must be 1 to 500, not 900"),
            "{err}"
        );

        let invite = InviteeRequest {
            email: "Katherine@Example.com".into(),
            name: "Katherine Johnson".into(),
            roles: vec!["viewer".into()],
        };
        let started = w.domain.invite(&ctx, accepted.org_id, &invite).await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, started.workflow_id).await?,
            RunStatus::Completed
        );
        let mut reader = w.t.db().reader().await?;
        let invitation = queries::invitation(&mut reader.conn(), started.invitation_id)
            .await?
            .expect("sent");
        assert_eq!(
            (invitation.email.as_str(), invitation.status.as_str()),
            ("katherine@example.com", "pending")
        );
        drop(reader);
        assert_eq!(sink.messages().len(), 4);
        let err = w
            .domain
            .invite(&ctx, accepted.org_id, &invite)
            .await
            .expect_err("twice");
        assert!(
            err.to_string().contains("has already been invited"),
            "{err}"
        );
        let err = w
            .domain
            .invite(&ctx, OrgId::new_v7(), &invite)
            .await
            .expect_err("no such org");
        assert!(
            matches!(
                err,
                CommandError::NotFound {
                    what: "organization",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_no_drift(&w).await?;
        Ok(())
    }
);

#[test]
fn the_registry_has_a_contract_for_every_domain_event() {
    let registry = registry();
    for event_type in [
        "organization.bootstrap.initiated",
        "organization.created",
        "organization.direct_care_settings_updated",
        "organization.bootstrap.completed",
        "organization.bootstrap.failed",
        "organization.deactivated",
        "user.created",
        "user.invited",
        "user.role_assigned",
        "invitation.sent",
        "invitation.resent",
        "invitation.accepted",
        "invitation.revoked",
        "invitation.expired",
    ] {
        let spec = registry
            .spec(&EventType::parse(event_type).expect("valid"))
            .unwrap_or_else(|| panic!("no contract for {event_type}"));
        assert_eq!(spec.schema["type"], json!("object"), "{event_type}");
        let _: &Value = &spec.schema;
    }
}

backend_test!(every_command_asks_the_policy, |t: TestDb| async move {
    let sink = SmtpSink::start(SinkOptions::default()).await?;
    let w = smtp_world(t, &sink).await?;
    let accepted = w
        .domain
        .bootstrap(&admin_actor(), &request("sunrise-policy"))
        .await?;
    w.domain.engine().run_until_idle().await?;
    let org_a = accepted.org_id;
    let member = |org: OrgId, role: cairn_policy::Role| {
        CommandContext::new(Principal::User {
            user_id: cairn_types::UserId::new_v7(),
            org_id: org,
            roles: std::collections::BTreeSet::from([role]),
        })
    };
    let denied = |result: Result<_, CommandError>| matches!(result, Err(CommandError::Denied(_)));

    assert!(denied(
        w.domain
            .bootstrap(
                &CommandContext::new(Principal::Anonymous),
                &request("sunrise-anon")
            )
            .await
            .map(drop)
    ));
    assert!(denied(
        w.domain
            .bootstrap(
                &member(org_a, cairn_policy::Role::Admin),
                &request("sunrise-member")
            )
            .await
            .map(drop)
    ));
    let settings = cairn_domain::model::DirectCareSettings::default();
    assert!(denied(
        w.domain
            .update_direct_care_settings(
                &member(org_a, cairn_policy::Role::Viewer),
                org_a,
                &settings
            )
            .await
    ));
    assert!(denied(
        w.domain
            .update_direct_care_settings(
                &member(OrgId::new_v7(), cairn_policy::Role::Admin),
                org_a,
                &settings
            )
            .await
    ));
    w.domain
        .update_direct_care_settings(&member(org_a, cairn_policy::Role::Admin), org_a, &settings)
        .await?;
    let invitee = InviteeRequest {
        email: "x@example.com".into(),
        name: "X".into(),
        roles: vec!["viewer".into()],
    };
    assert!(denied(
        w.domain
            .invite(
                &member(org_a, cairn_policy::Role::Clinician),
                org_a,
                &invitee
            )
            .await
            .map(drop)
    ));

    let mut reader = w.t.db().reader().await?;
    let invitation = queries::invitations(&mut reader.conn(), org_a, Page::default())
        .await?
        .remove(0);
    drop(reader);
    let other_tenant = w
        .domain
        .revoke_invitation(
            &member(OrgId::new_v7(), cairn_policy::Role::Admin),
            invitation.id,
            "x",
        )
        .await;
    assert!(
        matches!(other_tenant, Err(CommandError::NotFound { .. })),
        "another tenant's invitation reads as missing: {other_tenant:?}"
    );
    assert!(denied(
        w.domain
            .revoke_invitation(
                &member(org_a, cairn_policy::Role::Viewer),
                invitation.id,
                "x"
            )
            .await
    ));
    let anonymous_accept = w
        .domain
        .accept_invitation(&CommandContext::new(Principal::Anonymous), &"0".repeat(64))
        .await;
    assert!(
        matches!(anonymous_accept, Err(CommandError::NotFound { .. })),
        "anyone may try a token"
    );
    Ok(())
});

/// A conflicting write is no reason for the safety net: the deactivation fails as an
/// attempt, runs again, and is recorded by its event. (A trigger refuses the first two
/// writes of `organization.deactivated` with SQLSTATE 40001: the writer's first run of
/// the batch and its second, with savepoints.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivation_that_meets_a_conflict_is_tried_again_not_written_by_the_safety_net()
-> cairn_testkit::TestResult {
    cairn_testkit::run(
        Backend::Postgres,
        "onboarding::a_deactivation_that_meets_a_conflict",
        |t: TestDb| async move {
            let sink = SmtpSink::start(SinkOptions {
                refuse: Some("550 5.7.1 Sender domain is not verified".into()),
                ..SinkOptions::default()
            })
            .await?;
            t.conflict_on(
                "domain_events",
                "INSERT",
                "NEW.event_type = 'organization.deactivated'",
                2,
            )
            .await?;
            let w = smtp_world(t, &sink).await?;
            let ctx = admin_actor();
            let accepted = w
                .domain
                .bootstrap(&ctx, &request("sunrise-conflict"))
                .await?;
            // The deactivation's second attempt waits out its retry pause.
            let mut status = RunStatus::Running;
            for _ in 0..300 {
                w.domain.engine().run_until_idle().await?;
                status = workflow_status(&w, accepted.workflow_id).await?;
                if status == RunStatus::Failed {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(
                status,
                RunStatus::Failed,
                "the bootstrap failed and compensated"
            );
            let org = organization(&w, accepted.org_id).await?;
            assert_eq!((org.status.as_str(), org.is_active), ("failed", false));
            let events = events_of(&w, ctx.correlation_id).await?;
            assert!(
                events
                    .iter()
                    .any(|e| e.event_type.as_str() == "organization.deactivated"),
                "deactivated by its event: {:?}",
                domain_types(&events)
            );
            let audit =
                w.t.db()
                    .reader()
                    .await?
                    .conn()
                    .fetch_all("SELECT reason FROM safety_net_writes", args![])
                    .await?;
            assert!(audit.is_empty(), "the safety net wrote nothing");
            assert_no_drift(&w).await?;
            Ok(())
        },
    )
    .await
}
