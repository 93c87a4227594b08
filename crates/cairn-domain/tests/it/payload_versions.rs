//! Payload versions of the domain's events: `user.invited` v2 records who invited the
//! person, and every `user.invited` v1 a release before wrote reads as v2 with nobody
//! recorded, on every path, with the projections rebuilt as they are.

use cairn_dispatch::{EventPayload, Registry};
use cairn_domain::events::{UserInvited, UserInvitedV1};
use cairn_domain::model::{Email, Name, Role};
use cairn_domain::queries;
use cairn_domain::{BootstrapRequest, InviteeRequest};
use cairn_log::{AppendRequest, EventFilter, NewEvent, RecordedEvent};
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::{
    EventId, EventType, InvitationId, Metadata, OrgId, Position, StreamId, StreamType,
    StreamVersion, UserId,
};
use proptest::prelude::*;
use serde_json::json;

use crate::common::{admin_actor, assert_no_drift, registry, smtp_world};

fn request(slug: &str) -> BootstrapRequest {
    serde_json::from_value(json!({
        "organization": {
            "name": "Versioned Care",
            "slug": slug,
            "sender_domain": "mail.versioned.example.co.uk",
            "direct_care_settings": {"visit_verification": true, "client_assignment": false, "max_caseload": 12}
        },
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": []
    }))
    .expect("a well-formed request")
}

/// A stored `user.invited` event at `version`, as a release wrote it.
fn stored(version: u32, data: serde_json::Value) -> RecordedEvent {
    RecordedEvent {
        position: Position::new(7),
        event_id: EventId::new_v7(),
        stream_type: StreamType::parse("user").expect("a stream type"),
        stream_id: StreamId::new_v7(),
        stream_version: StreamVersion::new(1),
        event_type: UserInvited::event_type(),
        event_version: version,
        stored_version: version,
        data,
        metadata: Metadata::new(),
        created_at: chrono::Utc::now(),
        processed_at: None,
        processing_error: None,
        held_behind: None,
        hash: String::new(),
    }
}

fn v1() -> impl Strategy<Value = UserInvitedV1> {
    let email = ("[a-z][a-z0-9.]{0,12}", "[a-z]{1,10}", "(com|org|co\\.uk)")
        .prop_map(|(local, host, tld)| format!("{local}@{host}.{tld}"))
        .prop_filter_map("a valid email", |text| Email::parse(&text).ok());
    let name = "[A-Z][a-z]{0,10}( [A-Z][a-z]{0,10})?"
        .prop_filter_map("a valid name", |text| Name::parse(&text).ok());
    let roles = proptest::sample::subsequence(
        vec![
            Role::Admin,
            Role::Clinician,
            Role::Coordinator,
            Role::Viewer,
        ],
        0..=4,
    );
    (any::<u128>(), any::<u128>(), email, name, roles).prop_map(
        |(org, invitation, email, name, roles)| UserInvitedV1 {
            org_id: OrgId::from_uuid(uuid::Uuid::from_u128(org)),
            email,
            name,
            roles,
            invitation_id: InvitationId::from_uuid(uuid::Uuid::from_u128(invitation)),
        },
    )
}

fn canonical(value: &serde_json::Value) -> String {
    let mut out = String::new();
    cairn_log::canonical_json(value, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn upcasting_a_generated_v1_equals_writing_v2_directly(old in v1()) {
        let registry: Registry = registry();
        let event = stored(1, serde_json::to_value(&old).expect("serializes"));
        let current = registry.upcast(&event).expect("v1 upcasts");
        prop_assert_eq!((current.stored_version, current.event_version), (1, 3));

        let direct = UserInvited {
            org_id: old.org_id,
            email: old.email.clone().into(),
            name: old.name.clone().into(),
            roles: old.roles.clone(),
            invitation_id: old.invitation_id,
            invited_by: None,
        };
        let written = serde_json::to_value(&direct).expect("serializes");
        prop_assert_eq!(canonical(&current.data), canonical(&written));
        let decoded: UserInvited =
            serde_json::from_value(current.data.clone()).expect("decodes as v2");
        prop_assert_eq!(decoded, direct);
        // The stored bytes are untouched.
        prop_assert_eq!(&event.data, &serde_json::to_value(&old).expect("serializes"));
    }
}

fn started_v1() -> impl Strategy<Value = cairn_workflow::events::WorkflowStartedV1> {
    let input = prop_oneof![
        Just(json!({})),
        ("[a-z]{1,8}", any::<i32>()).prop_map(|(key, n)| json!({ key: n })),
        "[ -~]{0,20}".prop_map(|text| json!({"note": text, "list": [1, 2]})),
    ];
    (
        "[a-z_]{1,20}",
        input,
        proptest::option::of(any::<u128>()),
        0_i64..4_000_000_000,
    )
        .prop_map(
            |(kind, input, parent, seconds)| cairn_workflow::events::WorkflowStartedV1 {
                kind,
                input,
                parent: parent
                    .map(|id| cairn_types::WorkflowId::from_uuid(uuid::Uuid::from_u128(id))),
                at: chrono::DateTime::from_timestamp(seconds, 0).expect("in range"),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn upcasting_a_generated_v1_workflow_started_equals_writing_v2_directly(old in started_v1()) {
        let registry = registry();
        let mut event = stored(1, serde_json::to_value(&old).expect("serializes"));
        event.event_type = cairn_workflow::events::WorkflowStarted::event_type();
        event.stream_type = StreamType::parse("workflow").expect("a stream type");
        let current = registry.upcast(&event).expect("v1 upcasts");
        let direct = cairn_workflow::events::WorkflowStarted {
            kind: old.kind.clone(),
            version: 1,
            input: old.input.clone(),
            parent: old.parent,
            at: old.at,
        };
        prop_assert_eq!(
            canonical(&current.data),
            canonical(&serde_json::to_value(&direct).expect("serializes"))
        );
    }
}

#[test]
fn a_v1_payload_that_already_names_an_inviter_does_not_upcast() {
    let registry = registry();
    let mut data = serde_json::to_value(UserInvitedV1 {
        org_id: OrgId::new_v7(),
        email: Email::parse("a@example.com").expect("valid"),
        name: Name::parse("A").expect("valid"),
        roles: vec![],
        invitation_id: InvitationId::new_v7(),
    })
    .expect("serializes");
    data["invited_by"] = json!("user:0190a0b0-0000-7000-8000-000000000001");
    let err = registry
        .upcast(&stored(1, data))
        .expect_err("a v1 payload has no inviter");
    assert!(
        err.to_string()
            .contains("from payload version 1 to 2: event_data.invited_by is already there"),
        "{err}"
    );
}

backend_test!(
    user_invited_v2_records_the_inviter_and_v1_events_read_as_v2,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let ctx = admin_actor();
        let accepted = w.domain.bootstrap(&ctx, &request("versioned-care")).await?;
        w.domain.engine().run_until_idle().await?;

        let invite = InviteeRequest {
            email: "katherine@example.com".into(),
            name: "Katherine Johnson".into(),
            roles: vec!["viewer".into()],
        };
        let invited = w.domain.invite(&ctx, accepted.org_id, &invite).await?;
        w.domain.engine().run_until_idle().await?;
        let mut reader = w.t.db().reader().await?;
        let katherine = queries::user(&mut reader.conn(), invited.user_id)
            .await?
            .expect("invited");
        assert_eq!(katherine.invited_by, Some(ctx.actor().to_string()));
        drop(reader);

        // A user.invited a release before wrote, at version 1.
        let legacy_user = UserId::new_v7();
        let legacy = UserInvitedV1 {
            org_id: accepted.org_id,
            email: Email::parse("grace@example.com").expect("valid"),
            name: Name::parse("Grace Hopper").expect("valid"),
            roles: vec![Role::Clinician],
            invitation_id: InvitationId::new_v7(),
        };
        let mut metadata = Metadata::new();
        metadata.org_id = Some(accepted.org_id);
        let append = AppendRequest::new(
            StreamType::parse("user")?,
            legacy_user.into(),
            vec![
                NewEvent::new(
                    EventType::parse("user.invited")?,
                    serde_json::to_value(&legacy)?,
                    metadata,
                )
                .at_version(1),
            ],
        );
        let written = cairn_testkit::written_by_a_release(w.t.db(), append).await?;
        let retried = w
            .domain
            .store()
            .retry(
                written[0].event_id,
                &cairn_dispatch::Operator {
                    actor: ctx.actor(),
                    correlation_id: cairn_types::CorrelationId::new_v7(),
                },
            )
            .await?;
        assert_eq!(retried.outcome, cairn_log::Outcome::Applied, "{retried:?}");
        let mut reader = w.t.db().reader().await?;
        let grace = queries::user(&mut reader.conn(), legacy_user)
            .await?
            .expect("applied through the chain");
        assert_eq!(
            (grace.name.as_str(), grace.invited_by),
            ("Grace Hopper", None)
        );
        drop(reader);

        // Reads serve the current version and say version 1 was stored; the bytes
        // stay v1.
        let filter = EventFilter {
            stream_id: Some(legacy_user.into()),
            ..EventFilter::default()
        };
        let grant = cairn_policy::authorize(
            &cairn_policy::Principal::PlatformAdmin {
                name: "test".into(),
            },
            &cairn_policy::Action::ListEvents,
        )
        .map_err(|denial| anyhow::anyhow!("{denial}"))?;
        let served = cairn_domain::reads::events(w.domain.store(), &grant, filter.clone()).await?;
        assert_eq!((served[0].stored_version, served[0].event_version), (1, 3));
        assert_eq!(served[0].data["invited_by"], json!(null));
        let raw = w.t.db().reader().await?.conn().read_events(&filter).await?;
        assert!(raw[0].data.get("invited_by").is_none(), "{:?}", raw[0].data);

        // Replay rebuilds both users as they are.
        assert_no_drift(&w).await?;
        Ok(())
    }
);
