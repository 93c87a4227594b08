//! The bootstrap's two versions, on both backends: a run of version 1 (names and email
//! addresses in its input and step names), started as the release before versions
//! started it, finishes on version 1 while new runs use version 2, which holds ids
//! only; an engine without a version a run needs refuses to start, naming the run;
//! `check_runs` replays each unfinished run's history and reports the misfits.

use std::sync::Arc;

use cairn_dispatch::EventPayload as _;
use cairn_domain::bootstrap::{self, v1, v2};
use cairn_domain::events::BootstrapInitiated;
use cairn_domain::model::DirectCareSettings;
use cairn_domain::{BootstrapRequest, Domain};
use cairn_log::{AppendRequest, EventFilter, Expected, NewEvent, RecordedEvent};
use cairn_mail::SmtpMailer;
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::{
    Actor, CorrelationId, EventType, InvitationId, Metadata, OrgId, StreamId, StreamType, UserId,
    WorkflowId,
};
use cairn_workflow::events::StepCompleted;
use cairn_workflow::fit::Misfit;
use cairn_workflow::{
    Clock as _, Engine, EngineConfig, EngineError, ManualClock, RunStatus, RunWithSteps, Workflow,
};
use serde_json::{Value, json};

use crate::common::{self, World, admin_actor, assert_no_drift, person};

/// The personal data of the requests below.
const PERSONAL: [&str; 6] = [
    "ada@example.com",
    "grace@example.com",
    "alan@example.org",
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
];

fn request(slug: &str) -> anyhow::Result<BootstrapRequest> {
    Ok(serde_json::from_value(json!({
        "organization": {"name": "Sunrise Care", "slug": slug, "sender_domain": "mail.sunrise.example.co.uk"},
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]},
            {"email": "alan@example.org", "name": "Alan Turing", "roles": ["coordinator", "viewer"]}
        ]
    }))?)
}

/// A run of version 1 as the release before versions started it.
struct StartedV1 {
    org_id: OrgId,
    run_id: WorkflowId,
}

/// Starts a bootstrap of `slug` as the release before versions did: its
/// `organization.bootstrap.initiated` event, then a `workflow.started` with no
/// version, whose input is version 1's plan (names and email addresses included).
async fn start_v1(w: &World, slug: &str) -> anyhow::Result<StartedV1> {
    let org_id = OrgId::new_v7();
    let run_id = WorkflowId::new_v7();
    let initiated: BootstrapInitiated = serde_json::from_value(json!({
        "name": "Sunrise Care",
        "slug": slug,
        "sender_domain": "mail.sunrise.example.co.uk",
        "sender_address": "noreply@example.co.uk",
        "direct_care_settings": DirectCareSettings::default(),
        "admin": {
            "user_id": UserId::new_v7(),
            "invitation_id": InvitationId::new_v7(),
            "email": "ada@example.com",
            "name": "Ada Lovelace"
        },
        "invitees": [{
            "user_id": UserId::new_v7(),
            "invitation_id": InvitationId::new_v7(),
            "email": "grace@example.com",
            "name": "Grace Hopper",
            "roles": ["clinician"]
        }],
        "workflow_id": run_id,
    }))?;
    let plan = v1::BootstrapPlan {
        org_id,
        initiated: initiated.clone(),
        ttl_seconds: 7 * 86_400,
        accept_url: common::config().accept_url,
    };
    let mut metadata = Metadata::with_correlation(CorrelationId::new_v7());
    metadata.org_id = Some(org_id);
    metadata.actor = Some(Actor::service("console")?);
    let store = w.domain.store();
    let appended = store
        .append(
            AppendRequest::new(
                StreamType::parse("organization")?,
                org_id.into(),
                vec![initiated.to_event(metadata.clone())],
            )
            .expect(Expected::NoStream),
        )
        .await?;
    assert!(appended.events[0].outcome.error().is_none());
    let started = json!({
        "kind": bootstrap::KIND,
        "input": plan,
        "at": w.domain.engine().now(),
    });
    // Payload version 1 of workflow.started, without the definition's version.
    append_run_event_at(w, run_id, "workflow.started", started, &metadata, Some(1)).await?;
    Ok(StartedV1 { org_id, run_id })
}

/// Appends one event of a run's stream as it is given.
async fn append_run_event(
    w: &World,
    run_id: WorkflowId,
    event_type: &str,
    data: Value,
    metadata: &Metadata,
) -> anyhow::Result<()> {
    append_run_event_at(w, run_id, event_type, data, metadata, None).await
}

/// [`append_run_event`] at a payload version an earlier release wrote.
async fn append_run_event_at(
    w: &World,
    run_id: WorkflowId,
    event_type: &str,
    data: Value,
    metadata: &Metadata,
    payload_version: Option<u32>,
) -> anyhow::Result<()> {
    let mut event = NewEvent::new(EventType::parse(event_type)?, data, metadata.clone());
    event.version = payload_version;
    let mut request = AppendRequest::new(
        StreamType::parse("workflow")?,
        StreamId::from_uuid(run_id.as_uuid()),
        vec![event],
    );
    request.importing = payload_version.is_some();
    let appended = w.domain.store().append(request).await?;
    assert!(appended.events[0].outcome.error().is_none());
    Ok(())
}

async fn run_of(w: &World, id: WorkflowId) -> anyhow::Result<RunWithSteps> {
    let mut reader = w.t.db().reader().await?;
    cairn_workflow::state::load(&mut reader.conn(), id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {id}"))
}

fn step_names(run: &RunWithSteps) -> Vec<String> {
    run.steps.iter().map(|step| step.name.clone()).collect()
}

/// Drives every run until each of `runs` has completed, moving the clock 5 s at a
/// time, for at most a minute of it.
async fn complete_all(w: &World, clock: &ManualClock, runs: &[WorkflowId]) -> anyhow::Result<()> {
    for _ in 0..12 {
        w.domain.engine().run_until_idle().await?;
        let mut done = true;
        for id in runs {
            done &= common::workflow_status(w, *id).await? == RunStatus::Completed;
        }
        if done {
            return Ok(());
        }
        clock.advance(chrono::Duration::seconds(5));
    }
    anyhow::bail!("not every run completed within a minute")
}

async fn smtp_world_on(
    t: TestDb,
    sink: &SmtpSink,
    clock: Arc<ManualClock>,
) -> anyhow::Result<World> {
    common::world(t, Arc::new(SmtpMailer::from_url(&sink.url())?), clock).await
}

backend_test!(
    v1_bootstrap_in_flight_finishes_on_v1_new_runs_use_v2,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        sink.set_outage(true)?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = smtp_world_on(t, &sink, clock.clone()).await?;

        // A run of version 1 gets as far as its first email, which waits for the mail
        // server to come back.
        let old = start_v1(&w, "old-care").await?;
        w.domain.engine().run_until_idle().await?;
        let run = run_of(&w, old.run_id).await?;
        assert_eq!(run.run.definition_version, 1);
        assert_eq!(run.run.status, RunStatus::Running);
        assert_eq!(
            step_names(&run),
            [
                "create_organization",
                "create_admin",
                "invite:grace@example.com",
                "send_invitation:ada@example.com",
            ]
        );

        // A bootstrap asked for now runs on version 2.
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("new-care")?)
            .await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            run_of(&w, accepted.workflow_id)
                .await?
                .run
                .definition_version,
            2
        );
        w.domain.engine().check_definitions().await?;
        let report = w.domain.engine().check_runs().await?;
        assert_eq!((report.checked, report.misfits.len()), (2, 0), "{report:?}");

        // The server is back: each finishes on its own version.
        sink.set_outage(false)?;
        complete_all(&w, &clock, &[old.run_id, accepted.workflow_id]).await?;
        let old_run = run_of(&w, old.run_id).await?;
        assert_eq!(old_run.run.definition_version, 1);
        assert_eq!(
            step_names(&old_run),
            [
                "create_organization",
                "create_admin",
                "invite:grace@example.com",
                "send_invitation:ada@example.com",
                "record_invitation:ada@example.com",
                "send_invitation:grace@example.com",
                "record_invitation:grace@example.com",
                "complete",
            ]
        );
        let new_run = run_of(&w, accepted.workflow_id).await?;
        let [ada, grace, alan] = [
            person(&w, accepted.org_id, "ada@example.com").await?,
            person(&w, accepted.org_id, "grace@example.com").await?,
            person(&w, accepted.org_id, "alan@example.org").await?,
        ];
        assert_eq!(
            step_names(&new_run),
            [
                "create_organization".to_owned(),
                "create_admin".to_owned(),
                grace.step("invite"),
                alan.step("invite"),
                ada.step("send_invitation"),
                ada.step("record_invitation"),
                grace.step("send_invitation"),
                grace.step("record_invitation"),
                alan.step("send_invitation"),
                alan.step("record_invitation"),
                "complete".to_owned(),
            ]
        );
        for org_id in [old.org_id, accepted.org_id] {
            let org = common::organization(&w, org_id).await?;
            assert_eq!((org.status.as_str(), org.is_active), ("active", true));
        }
        let mut to: Vec<String> = sink.messages().into_iter().map(|m| m.to).collect();
        to.sort();
        assert_eq!(
            to,
            [
                "\"Ada Lovelace\" <ada@example.com>",
                "\"Ada Lovelace\" <ada@example.com>",
                "\"Alan Turing\" <alan@example.org>",
                "\"Grace Hopper\" <grace@example.com>",
                "\"Grace Hopper\" <grace@example.com>",
            ],
            "each email once, on either version"
        );
        assert_no_drift(&w).await?;
        Ok(())
    }
);

/// Every event of a correlation, in the order of the log.
async fn events_of(w: &World, correlation_id: CorrelationId) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut reader = w.t.db().reader().await?;
    Ok(reader
        .conn()
        .read_events(&EventFilter {
            correlation_id: Some(correlation_id),
            ..EventFilter::default()
        })
        .await?)
}

backend_test!(
    v2_input_and_step_names_hold_no_email,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = smtp_world_on(t, &sink, clock.clone()).await?;
        let accepted = w
            .domain
            .bootstrap(&admin_actor(), &request("private-care")?)
            .await?;
        complete_all(&w, &clock, &[accepted.workflow_id]).await?;
        assert_eq!(sink.messages().len(), 3);

        let run = run_of(&w, accepted.workflow_id).await?;
        assert_eq!(run.run.definition_version, v2::VERSION);
        // The input is ids, the people's as the command drew them.
        let plan: v2::BootstrapPlan = serde_json::from_value(run.run.input.clone())?;
        let ada = person(&w, accepted.org_id, "ada@example.com").await?;
        let grace = person(&w, accepted.org_id, "grace@example.com").await?;
        let alan = person(&w, accepted.org_id, "alan@example.org").await?;
        assert_eq!(plan.org_id, accepted.org_id);
        assert_eq!(
            (plan.admin.user_id, plan.admin.invitation_id),
            (ada.user_id, ada.invitation_id)
        );
        let invitees: Vec<(UserId, InvitationId)> = plan
            .invitees
            .iter()
            .map(|party| (party.user_id, party.invitation_id))
            .collect();
        assert_eq!(
            invitees,
            [
                (grace.user_id, grace.invitation_id),
                (alan.user_id, alan.invitation_id)
            ]
        );
        let input = run.run.input.to_string();
        for step in &run.steps {
            assert!(!step.name.contains('@'), "step {}", step.name);
        }

        // Nothing personal in the history of the run or its children, nor in the
        // metadata of what their steps wrote.
        let events = events_of(&w, accepted.correlation_id).await?;
        assert!(
            events
                .iter()
                .any(|e| e.event_type.as_str() == "user.invited")
        );
        for personal in PERSONAL {
            assert!(!input.contains(personal), "{personal} in the input {input}");
            for event in &events {
                let metadata = serde_json::to_string(&event.metadata)?;
                assert!(
                    !metadata.contains(personal),
                    "{personal} in the metadata of {} at {}: {metadata}",
                    event.event_type,
                    event.position
                );
                if event.stream_type.as_str() == "workflow" {
                    assert!(
                        !event.data.to_string().contains(personal),
                        "{personal} in {} at {}: {}",
                        event.event_type,
                        event.position,
                        event.data
                    );
                }
            }
        }
        // The people are in the request's event, sealed, where a step reads them.
        let initiated = events
            .iter()
            .find(|e| e.event_type.as_str() == "organization.bootstrap.initiated")
            .ok_or_else(|| anyhow::anyhow!("no initiated event"))?;
        assert!(!initiated.data.to_string().contains("grace@example.com"));
        let opened = cairn_dispatch::current_event(
            w.t.db(),
            w.domain.store().dispatcher().registry(),
            initiated.clone(),
        )
        .await?;
        assert!(opened.data.to_string().contains("grace@example.com"));
        let mut to: Vec<String> = sink.messages().into_iter().map(|m| m.to).collect();
        to.sort();
        assert_eq!(
            to,
            [
                "\"Ada Lovelace\" <ada@example.com>",
                "\"Alan Turing\" <alan@example.org>",
                "\"Grace Hopper\" <grace@example.com>",
            ]
        );
        assert_no_drift(&w).await?;
        Ok(())
    }
);

/// An engine with only the domain's version 2 of the bootstrap.
async fn v2_only(domain: &Domain) -> anyhow::Result<Engine> {
    let workflows: Vec<Arc<dyn Workflow>> = Domain::workflows(
        Arc::new(cairn_mail::OutboxMailer::new(std::env::temp_dir())),
        cairn_domain::tokens::TokenKey::load_or_create(domain.store().db()).await?,
        &common::config(),
    )
    .into_iter()
    .filter(|workflow| workflow.kind() != bootstrap::KIND || workflow.version() == 2)
    .collect();
    Ok(Engine::new(
        domain.store().clone(),
        workflows,
        Arc::new(cairn_workflow::SystemClock),
        EngineConfig::default(),
    ))
}

backend_test!(
    engine_missing_a_runs_version_refuses_to_start,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        sink.set_outage(true)?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = smtp_world_on(t, &sink, clock.clone()).await?;
        let old = start_v1(&w, "old-care").await?;
        w.domain.engine().check_definitions().await?;

        // A build that dropped version 1 while a run of it is in flight.
        let engine = v2_only(&w.domain).await?;
        let error = engine
            .check_definitions()
            .await
            .expect_err("a v1 run is in flight");
        assert!(
            matches!(&error, EngineError::MissingDefinition { run_id, version: 1, have, .. }
                if *run_id == old.run_id && have == &[2]),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "run {} is organization_bootstrap v1, which this build does not have (it has \
                 v2); finish it with a build that has organization_bootstrap v1",
                old.run_id
            )
        );
        // Nor does it touch the run meanwhile.
        assert_eq!(engine.run_until_idle().await?.runs_driven, 0);
        assert!(run_of(&w, old.run_id).await?.steps.is_empty());

        // A run of a version newer than this build's.
        let newer = WorkflowId::new_v7();
        let metadata = Metadata::with_correlation(CorrelationId::new_v7());
        append_run_event(
            &w,
            newer,
            "workflow.started",
            json!({"kind": bootstrap::KIND, "version": 3, "input": {}, "at": clock.now()}),
            &metadata,
        )
        .await?;
        let error = w
            .domain
            .engine()
            .check_definitions()
            .await
            .expect_err("a v3 run is in flight");
        assert_eq!(
            error.to_string(),
            format!(
                "run {newer} is organization_bootstrap v3, which this build does not have (it has \
                 v1 and v2); finish it with a build that has organization_bootstrap v3"
            )
        );
        Ok(())
    }
);

backend_test!(workflows_check_reports_a_misfit, |t: TestDb| async move {
    let sink = SmtpSink::start(SinkOptions::default()).await?;
    sink.set_outage(true)?;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let w = smtp_world_on(t, &sink, clock.clone()).await?;
    let engine = w.domain.engine();
    // Healthy runs of both versions, in flight.
    start_v1(&w, "old-care").await?;
    w.domain
        .bootstrap(&admin_actor(), &request("new-care")?)
        .await?;
    engine.run_until_idle().await?;
    let report = engine.check_runs().await?;
    assert_eq!((report.checked, report.misfits.len()), (2, 0), "{report:?}");

    // A run of version 2 whose first recorded step is not the definition's first.
    let skipped = WorkflowId::new_v7();
    let metadata = Metadata::with_correlation(CorrelationId::new_v7());
    let plan = json!({
        "org_id": OrgId::new_v7(),
        "admin": {"user_id": UserId::new_v7(), "invitation_id": InvitationId::new_v7()},
        "invitees": [],
        "ttl_seconds": 3600,
        "accept_url": "https://app.example.test/invitations/accept",
    });
    append_run_event(
        &w,
        skipped,
        "workflow.started",
        json!({"kind": bootstrap::KIND, "version": 2, "input": plan, "at": clock.now()}),
        &metadata,
    )
    .await?;
    let completed = StepCompleted {
        step: "create_admin".to_owned(),
        attempt: 1,
        result: json!({}),
        compensable: false,
        compensation: false,
        started_at: clock.now(),
        finished_at: clock.now(),
    };
    append_run_event(
        &w,
        skipped,
        "workflow.step_completed",
        serde_json::to_value(&completed)?,
        &metadata,
    )
    .await?;
    // And one of a version this build does not have.
    let newer = WorkflowId::new_v7();
    append_run_event(
        &w,
        newer,
        "workflow.started",
        json!({"kind": bootstrap::KIND, "version": 3, "input": {}, "at": clock.now()}),
        &metadata,
    )
    .await?;

    let report = engine.check_runs().await?;
    assert_eq!(report.checked, 4);
    let misfits: Vec<(WorkflowId, u32, Misfit)> = report
        .misfits
        .iter()
        .map(|check| (check.run_id, check.version, check.misfit.clone()))
        .collect();
    assert_eq!(
        misfits,
        [
            (
                skipped,
                2,
                Misfit::Diverges {
                    at: 0,
                    recorded: "step create_admin".to_owned(),
                    decided: "step create_organization".to_owned(),
                }
            ),
            (
                newer,
                3,
                Misfit::MissingDefinition {
                    kind: bootstrap::KIND.to_owned(),
                    version: 3,
                    have: vec![1, 2],
                }
            ),
        ]
    );
    Ok(())
});
