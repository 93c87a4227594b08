//! The authorization matrix: every operation × every kind of principal, with the
//! decision asserted, on both backends. One policy decides them all; this proves the
//! routes ask it, and that a tenant never sees another tenant's rows.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use cairn_domain::queries::{self, Page};
use cairn_domain::{CommandContext, InviteeRequest};
use cairn_policy::{Principal, Role, Scope};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{InvitationId, OrgId};
use serde_json::{Value, json};

use crate::common::{self, bootstrapped, call, platform_admin, server, service, user};

/// The kinds of principal, in the order of each row's expectations.
const KINDS: [&str; 7] = [
    "anonymous",
    "user of A",
    "admin of A",
    "admin of B",
    "service with the scope",
    "service without it",
    "platform admin",
];

const OK: u16 = 200;
const ACCEPTED: u16 = 202;
const UNAUTH: u16 = 401;
const FORBID: u16 = 403;
const MISSING: u16 = 404;
const CONFLICT: u16 = 409;
const UPGRADE: u16 = 426;
const UNAVAILABLE: u16 = 503;

/// One operation: method, path, body, the scope a service needs, and the expected
/// status for each kind of principal.
type Row = (Method, String, Option<Value>, Option<Scope>, [u16; 7]);

struct Fixture {
    org_a: OrgId,
    admin_a_user: String,
    invitation_a: String,
    workflow_a: String,
    event_a: String,
    correlation_a: String,
}

async fn fresh_invitation(s: &common::Server, org: OrgId, n: &str) -> anyhow::Result<InvitationId> {
    let ctx = CommandContext::new(platform_admin());
    let request = InviteeRequest {
        email: format!("invitee-{n}@example.com"),
        name: format!("Invitee {n}"),
        roles: vec!["viewer".into()],
    };
    let started = s.domain.invite(&ctx, org, &request).await?;
    s.domain.engine().run_until_idle().await?;
    Ok(started.invitation_id)
}

backend_test!(
    every_operation_asks_the_one_policy,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org_a = bootstrapped(&s, "tenant-a").await?;
        let org_b = bootstrapped(&s, "tenant-b").await?;
        let fixture = {
            let mut reader = s.t.db().reader().await?;
            let mut conn = reader.conn();
            let users = queries::users(&mut conn, org_a, Page::default()).await?;
            let invitations = queries::invitations(&mut conn, org_a, Page::default()).await?;
            let org = queries::organization(&mut conn, org_a)
                .await?
                .expect("org A");
            let events = conn
                .read_events(&cairn_log::EventFilter {
                    org_id: Some(org_a),
                    limit: Some(1),
                    ..Default::default()
                })
                .await?;
            Fixture {
                org_a,
                admin_a_user: users[0].id.to_string(),
                invitation_a: invitations[0].id.to_string(),
                workflow_a: org.workflow_id.expect("a workflow").to_string(),
                event_a: events[0].event_id.to_string(),
                correlation_a: events[0].metadata.correlation_id.to_string(),
            }
        };
        let all_scopes: Vec<Scope> = Scope::ALL.to_vec();
        let principals: [Principal; 7] = [
            Principal::Anonymous,
            user(org_a, Role::Clinician),
            user(org_a, Role::Admin),
            user(org_b, Role::Admin),
            service(&all_scopes),
            service(&[]),
            platform_admin(),
        ];
        let f = &fixture;
        let a = f.org_a;
        // (method, path, body, the scope a service account needs, expected status per
        // principal kind). "Service with the scope" holds exactly that scope; "service
        // without it" holds every other one, so a wrong scope mapping fails a row.
        let rows: Vec<Row> = vec![
            (Method::GET, "/health/live".into(), None, None, [OK; 7]),
            (Method::GET, "/v1/openapi.json".into(), None, None, [OK; 7]),
            (Method::GET, "/v1/asyncapi.json".into(), None, None, [OK; 7]),
            (
                Method::POST,
                "/v1/organizations".into(),
                Some(json!("bootstrap")),
                Some(Scope::OrganizationsBootstrap),
                [UNAUTH, FORBID, FORBID, FORBID, ACCEPTED, FORBID, ACCEPTED],
            ),
            (
                Method::GET,
                "/v1/organizations".into(),
                None,
                Some(Scope::OrganizationsRead),
                [UNAUTH, OK, OK, OK, OK, FORBID, OK],
            ),
            (
                Method::GET,
                format!("/v1/organizations/{a}"),
                None,
                Some(Scope::OrganizationsRead),
                [UNAUTH, OK, OK, FORBID, OK, FORBID, OK],
            ),
            (
                Method::PUT,
                format!("/v1/organizations/{a}/direct-care-settings"),
                Some(
                    json!({"visit_verification": true, "client_assignment": false, "max_caseload": 9}),
                ),
                Some(Scope::OrganizationsWrite),
                [UNAUTH, FORBID, OK, FORBID, OK, FORBID, OK],
            ),
            (
                Method::GET,
                format!("/v1/organizations/{a}/users"),
                None,
                Some(Scope::OrganizationsRead),
                [UNAUTH, OK, OK, FORBID, OK, FORBID, OK],
            ),
            (
                Method::GET,
                format!("/v1/organizations/{a}/users/{}", f.admin_a_user),
                None,
                Some(Scope::OrganizationsRead),
                [UNAUTH, OK, OK, FORBID, OK, FORBID, OK],
            ),
            (
                Method::GET,
                format!("/v1/organizations/{a}/invitations"),
                None,
                Some(Scope::OrganizationsRead),
                [UNAUTH, FORBID, OK, FORBID, OK, FORBID, OK],
            ),
            (
                Method::POST,
                format!("/v1/organizations/{a}/invitations"),
                Some(json!("invite")),
                Some(Scope::OrganizationsWrite),
                [UNAUTH, FORBID, ACCEPTED, FORBID, ACCEPTED, FORBID, ACCEPTED],
            ),
            (
                Method::GET,
                format!("/v1/invitations/{}", f.invitation_a),
                None,
                Some(Scope::OrganizationsRead),
                [UNAUTH, FORBID, OK, MISSING, OK, FORBID, OK],
            ),
            (
                Method::POST,
                "resend".into(),
                None,
                Some(Scope::OrganizationsWrite),
                [
                    UNAUTH, FORBID, ACCEPTED, MISSING, ACCEPTED, FORBID, ACCEPTED,
                ],
            ),
            (
                Method::POST,
                "revoke".into(),
                Some(json!({"reason": "changed our minds"})),
                Some(Scope::OrganizationsWrite),
                [UNAUTH, FORBID, OK, MISSING, OK, FORBID, OK],
            ),
            (
                Method::POST,
                "/v1/invitations/accept".into(),
                Some(json!({"token": "0".repeat(64)})),
                None,
                [MISSING; 7],
            ),
            (
                Method::GET,
                "/v1/workflows".into(),
                None,
                Some(Scope::WorkflowsRead),
                [UNAUTH, FORBID, OK, OK, OK, FORBID, OK],
            ),
            (
                Method::GET,
                format!("/v1/workflows/{}", f.workflow_a),
                None,
                Some(Scope::WorkflowsRead),
                [UNAUTH, FORBID, OK, MISSING, OK, FORBID, OK],
            ),
            (
                Method::GET,
                "/v1/events".into(),
                None,
                Some(Scope::EventsRead),
                [UNAUTH, FORBID, OK, OK, OK, FORBID, OK],
            ),
            (
                Method::GET,
                "/v1/events/failed".into(),
                None,
                Some(Scope::EventsRead),
                [UNAUTH, FORBID, OK, OK, OK, FORBID, OK],
            ),
            (
                Method::GET,
                "/v1/events/stream?heartbeat=1".into(),
                None,
                Some(Scope::EventsSubscribe),
                [UNAUTH, FORBID, OK, OK, OK, FORBID, OK],
            ),
            (
                Method::GET,
                format!("/v1/events/stream?org_id={a}"),
                None,
                Some(Scope::EventsSubscribe),
                [UNAUTH, FORBID, OK, FORBID, OK, FORBID, OK],
            ),
            (
                // Not an upgrade: the policy answers first, then the missing upgrade.
                Method::GET,
                "/v1/events/ws".into(),
                None,
                Some(Scope::EventsSubscribe),
                [UNAUTH, FORBID, UPGRADE, UPGRADE, UPGRADE, FORBID, UPGRADE],
            ),
            (
                Method::GET,
                format!("/v1/traces/{}", f.correlation_a),
                None,
                Some(Scope::EventsRead),
                [UNAUTH, FORBID, OK, MISSING, OK, FORBID, OK],
            ),
            (
                Method::POST,
                "/v1/probe/pings".into(),
                None,
                Some(Scope::HealthProbe),
                [UNAUTH, FORBID, FORBID, FORBID, ACCEPTED, FORBID, ACCEPTED],
            ),
            (Method::GET, "/metrics".into(), None, None, [OK; 7]),
            (
                // Public; here the server does not listen, so the probe's first hop
                // breaks, for everyone alike.
                Method::GET,
                "/health/integration".into(),
                None,
                None,
                [UNAVAILABLE; 7],
            ),
            (
                Method::GET,
                format!("/v1/events/{}", f.event_a),
                None,
                Some(Scope::EventsRead),
                [UNAUTH, FORBID, OK, MISSING, OK, FORBID, OK],
            ),
            (
                Method::POST,
                format!("/v1/events/{}/retry", f.event_a),
                None,
                Some(Scope::EventsRetry),
                [UNAUTH, FORBID, FORBID, FORBID, CONFLICT, FORBID, CONFLICT],
            ),
            (
                Method::POST,
                "/v1/events/retry-failed".into(),
                Some(json!({})),
                Some(Scope::EventsRetry),
                [UNAUTH, FORBID, FORBID, FORBID, OK, FORBID, OK],
            ),
            (
                // Applied, not failed: those allowed are told so.
                Method::POST,
                format!("/v1/events/{}/skip", f.event_a),
                Some(json!({"reason": "matrix"})),
                Some(Scope::EventsRetry),
                [UNAUTH, FORBID, FORBID, FORBID, CONFLICT, FORBID, CONFLICT],
            ),
            (
                Method::GET,
                "/v1/streams/held".into(),
                None,
                Some(Scope::EventsRead),
                [UNAUTH, FORBID, OK, OK, OK, FORBID, OK],
            ),
            (
                Method::GET,
                "/v1/handlers".into(),
                None,
                Some(Scope::EventsRead),
                [UNAUTH, FORBID, OK, OK, OK, FORBID, OK],
            ),
            (
                // The first allowed pauses it; the second finds it paused.
                Method::POST,
                "/v1/handlers/pause".into(),
                Some(
                    json!({"stream_type": "invitation", "event_type": "invitation.expired", "reason": "matrix"}),
                ),
                Some(Scope::HandlersPause),
                [UNAUTH, FORBID, FORBID, FORBID, OK, FORBID, CONFLICT],
            ),
            (
                Method::POST,
                "/v1/handlers/resume".into(),
                Some(
                    json!({"stream_type": "invitation", "event_type": "invitation.expired", "reason": "matrix"}),
                ),
                Some(Scope::HandlersPause),
                [UNAUTH, FORBID, FORBID, FORBID, OK, FORBID, CONFLICT],
            ),
            (
                Method::GET,
                "/v1/workflow-kinds".into(),
                None,
                Some(Scope::WorkflowsRead),
                [UNAUTH, FORBID, OK, OK, OK, FORBID, OK],
            ),
            (
                Method::POST,
                "/v1/workflow-kinds/invitation_expiry/pause".into(),
                Some(json!({"reason": "matrix"})),
                Some(Scope::WorkflowsPause),
                [UNAUTH, FORBID, FORBID, FORBID, OK, FORBID, CONFLICT],
            ),
            (
                Method::POST,
                "/v1/workflow-kinds/invitation_expiry/resume".into(),
                Some(json!({"reason": "matrix"})),
                Some(Scope::WorkflowsPause),
                [UNAUTH, FORBID, FORBID, FORBID, OK, FORBID, CONFLICT],
            ),
            (
                // The bootstrap finished: those allowed are told so; another tenant's
                // admin is told there is no such run.
                Method::POST,
                format!("/v1/workflows/{}/pause", f.workflow_a),
                Some(json!({"reason": "matrix"})),
                Some(Scope::WorkflowsPause),
                [
                    UNAUTH, FORBID, CONFLICT, MISSING, CONFLICT, FORBID, CONFLICT,
                ],
            ),
            (
                Method::POST,
                format!("/v1/workflows/{}/resume", f.workflow_a),
                Some(json!({"reason": "matrix"})),
                Some(Scope::WorkflowsPause),
                [
                    UNAUTH, FORBID, CONFLICT, MISSING, CONFLICT, FORBID, CONFLICT,
                ],
            ),
        ];
        let mut failures = Vec::new();
        let mut n = 0;
        for (method, path, body, scope, expected) in &rows {
            let others: Vec<Scope> = Scope::ALL
                .iter()
                .copied()
                .filter(|other| Some(*other) != *scope)
                .collect();
            let mut principals = principals.clone();
            principals[4] = service(&scope.map(|scope| vec![scope]).unwrap_or_default());
            principals[5] = service(if scope.is_some() { &others } else { &[] });
            for (index, principal) in principals.iter().enumerate() {
                n += 1;
                let mut path = path.clone();
                let body = match body {
                    Some(Value::String(kind)) if kind == "bootstrap" => {
                        Some(common::bootstrap_body(&format!("matrix-{n}")))
                    }
                    Some(Value::String(kind)) if kind == "invite" => Some(json!({
                        "email": format!("matrix-{n}@example.com"), "name": "Matrix", "roles": ["viewer"]
                    })),
                    other => other.clone(),
                };
                if path == "revoke" || path == "resend" {
                    let invitation = fresh_invitation(&s, org_a, &n.to_string()).await?;
                    path = format!("/v1/invitations/{invitation}/{path}");
                }
                let mut request = call(method.clone(), path.clone()).as_(principal);
                if let Some(body) = body {
                    request = request.json(body);
                }
                let reply = request.send(&s.app).await;
                if reply.status.as_u16() != expected[index] {
                    failures.push(format!(
                        "{method} {path} as {}: expected {}, got {} {}",
                        KINDS[index], expected[index], reply.status, reply.body
                    ));
                }
                if reply.status == StatusCode::FORBIDDEN || reply.status == StatusCode::UNAUTHORIZED
                {
                    assert_eq!(reply.header("content-type"), "application/problem+json");
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {n} decisions were wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );

        // What each tenant sees in lists: its own rows, never another's.
        let visible = |reply: &common::Reply, key: &str| -> BTreeSet<String> {
            reply.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|item| item[key].as_str().map(str::to_owned))
                .collect()
        };
        let admin_b = &principals[3];
        let orgs = call(Method::GET, "/v1/organizations")
            .as_(admin_b)
            .send(&s.app)
            .await;
        assert_eq!(visible(&orgs, "id"), BTreeSet::from([org_b.to_string()]));
        let orgs = call(Method::GET, "/v1/organizations")
            .as_(&principals[4])
            .send(&s.app)
            .await;
        assert_eq!(
            visible(&orgs, "id").len(),
            2 + 2,
            "the service sees every tenant: the two fixtures and the two bootstraps the matrix allowed"
        );
        for principal in [&principals[2], admin_b] {
            let own = principal.org_id().expect("a user").to_string();
            let events = call(Method::GET, "/v1/events?limit=200")
                .as_(principal)
                .send(&s.app)
                .await;
            let orgs_seen: BTreeSet<String> = events.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|e| {
                    e["event_metadata"]["org_id"]
                        .as_str()
                        .unwrap_or("none")
                        .to_owned()
                })
                .collect();
            assert_eq!(orgs_seen, BTreeSet::from([own.clone()]), "events of {own}");
            let workflows = call(Method::GET, "/v1/workflows?limit=200")
                .as_(principal)
                .send(&s.app)
                .await;
            assert!(
                workflows.body["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .all(|w| w["org_id"] == json!(own))
            );
        }
        Ok(())
    }
);
