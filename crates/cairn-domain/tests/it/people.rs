//! A person's life after they joined: roles changed, access withdrawn and given back,
//! with an organization that always keeps an active admin, on both backends.

use std::collections::BTreeSet;

use cairn_domain::queries::{self, Page};
use cairn_domain::{BootstrapRequest, CommandContext, CommandError, RolesRequest};
use cairn_policy::{Principal, Role};
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::{OrgId, UserId};
use cairn_workflow::RunStatus;
use serde_json::json;

use crate::common::{World, admin_actor, assert_no_drift, smtp_world, token_in, workflow_status};

fn request(slug: &str) -> BootstrapRequest {
    serde_json::from_value(json!({
        "organization": {"name": "Sunrise Care", "slug": slug, "sender_domain": "mail.sunrise.example.co.uk"},
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]},
            {"email": "alan@example.org", "name": "Alan Turing", "roles": ["coordinator", "viewer"]}
        ]
    }))
    .expect("a well-formed request")
}

fn roles(names: &[&str]) -> RolesRequest {
    RolesRequest {
        roles: names.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// An organization whose admin Ada is active and whose Grace accepted; Alan is still
/// invited. Returns the organization and the three people's ids.
async fn joined(w: &World, sink: &SmtpSink, slug: &str) -> anyhow::Result<(OrgId, [UserId; 3])> {
    let accepted = w.domain.bootstrap(&admin_actor(), &request(slug)).await?;
    w.domain.engine().run_until_idle().await?;
    assert_eq!(
        workflow_status(w, accepted.workflow_id).await?,
        RunStatus::Completed
    );
    let message = sink
        .messages()
        .into_iter()
        .find(|m| m.to.contains("grace@"))
        .expect("grace's invitation");
    w.domain
        .accept_invitation(
            &CommandContext::new(Principal::Anonymous),
            &token_in(&message),
        )
        .await?;
    let mut reader = w.t.db().reader().await?;
    let users = queries::users(&mut reader.conn(), accepted.org_id, Page::default()).await?;
    let id = |email: &str| {
        users
            .iter()
            .find(|u| u.email == email)
            .map(|u| u.id)
            .expect("a person of the bootstrap")
    };
    Ok((
        accepted.org_id,
        [
            id("ada@example.com"),
            id("grace@example.com"),
            id("alan@example.org"),
        ],
    ))
}

async fn user(w: &World, id: UserId) -> anyhow::Result<queries::User> {
    let mut reader = w.t.db().reader().await?;
    Ok(queries::user(&mut reader.conn(), id)
        .await?
        .expect("the person"))
}

fn conflict_says(err: &CommandError, text: &str) -> bool {
    matches!(err, CommandError::Conflict(field) if field.message.contains(text))
}

backend_test!(
    roles_change_and_access_is_withdrawn_and_given_back_while_an_admin_remains,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let (org_id, [ada, grace, alan]) = joined(&w, &sink, "sunrise-people").await?;
        let ops = admin_actor();

        // Roles: the whole new set, for someone who joined.
        let standing = w
            .domain
            .change_roles(&ops, grace, &roles(&["viewer", "clinician"]))
            .await?;
        assert_eq!(
            (standing.status.as_str(), standing.roles.clone()),
            ("active", vec![Role::Clinician, Role::Viewer])
        );
        assert_eq!(
            user(&w, grace).await?.roles,
            vec![Role::Clinician, Role::Viewer]
        );
        // The same set again changes nothing: no event.
        let before = w.t.db().reader().await?.conn().head().await?.last_position;
        w.domain
            .change_roles(&ops, grace, &roles(&["clinician", "viewer"]))
            .await?;
        let after = w.t.db().reader().await?.conn().head().await?.last_position;
        assert_eq!(before, after, "nothing to record");

        let err = w
            .domain
            .change_roles(&ops, alan, &roles(&["viewer"]))
            .await
            .expect_err("invited");
        assert!(
            err.to_string()
                .contains("has not accepted their invitation yet"),
            "{err}"
        );
        let err = w
            .domain
            .change_roles(&ops, grace, &roles(&["owner"]))
            .await
            .expect_err("no such role");
        assert!(
            matches!(&err, CommandError::Invalid(fields) if fields.iter().any(|f| f.field.starts_with("roles"))),
            "{err:?}"
        );
        let err = w
            .domain
            .change_roles(&ops, grace, &roles(&[]))
            .await
            .expect_err("no role");
        assert!(matches!(&err, CommandError::Invalid(_)), "{err:?}");

        // The only admin keeps the role, and cannot be deactivated.
        let err = w
            .domain
            .change_roles(&ops, ada, &roles(&["viewer"]))
            .await
            .expect_err("the only admin");
        assert!(conflict_says(&err, "only active admin"), "{err:?}");
        let err = w
            .domain
            .deactivate_user(&ops, ada, "left the company")
            .await
            .expect_err("the only admin");
        assert!(conflict_says(&err, "only active admin"), "{err:?}");

        // With Grace an admin too, Ada may step down; Grace may not deactivate herself.
        w.domain
            .change_roles(&ops, grace, &roles(&["admin", "clinician"]))
            .await?;
        w.domain
            .change_roles(&ops, ada, &roles(&["viewer"]))
            .await?;
        let as_grace = CommandContext::new(Principal::User {
            user_id: grace,
            org_id,
            roles: BTreeSet::from([Role::Admin]),
        });
        let err = w
            .domain
            .deactivate_user(&as_grace, grace, "testing")
            .await
            .expect_err("herself");
        assert!(conflict_says(&err, "cannot deactivate yourself"), "{err:?}");

        // Deactivated, with the reason kept; again, nothing new; then reactivated.
        let err = w
            .domain
            .deactivate_user(&as_grace, ada, "  ")
            .await
            .expect_err("no reason");
        assert!(matches!(&err, CommandError::Invalid(_)), "{err:?}");
        let standing = w
            .domain
            .deactivate_user(&as_grace, ada, "on leave until March")
            .await?;
        assert_eq!(standing.status, "deactivated");
        let row = user(&w, ada).await?;
        assert!(row.deactivated_at.is_some());
        assert_eq!(
            row.deactivation_reason.as_deref(),
            Some("on leave until March")
        );
        let before = w.t.db().reader().await?.conn().head().await?.last_position;
        let again = w
            .domain
            .deactivate_user(&as_grace, ada, "on leave until March")
            .await?;
        assert_eq!(again.status, "deactivated");
        let after = w.t.db().reader().await?.conn().head().await?.last_position;
        assert_eq!(before, after, "deactivated already");
        // Grace is now the only active admin: her admin role stays.
        let err = w
            .domain
            .change_roles(&ops, grace, &roles(&["clinician"]))
            .await
            .expect_err("the only active admin");
        assert!(conflict_says(&err, "only active admin"), "{err:?}");
        let standing = w.domain.reactivate_user(&as_grace, ada).await?;
        assert_eq!(standing.status, "active");
        let row = user(&w, ada).await?;
        assert_eq!((row.deactivated_at, row.deactivation_reason), (None, None));

        // Another organization's admin finds nobody.
        let stranger = CommandContext::new(Principal::User {
            user_id: UserId::new_v7(),
            org_id: OrgId::new_v7(),
            roles: BTreeSet::from([Role::Admin]),
        });
        for err in [
            w.domain
                .deactivate_user(&stranger, grace, "no")
                .await
                .expect_err("another tenant"),
            w.domain
                .change_roles(&stranger, grace, &roles(&["viewer"]))
                .await
                .expect_err("another tenant"),
            w.domain
                .reactivate_user(&stranger, grace)
                .await
                .expect_err("another tenant"),
        ] {
            assert!(
                matches!(&err, CommandError::NotFound { what: "user", .. }),
                "{err:?}"
            );
        }
        // A clinician of the organization may not manage its people.
        let clinician = CommandContext::new(Principal::User {
            user_id: grace,
            org_id,
            roles: BTreeSet::from([Role::Clinician]),
        });
        let err = w
            .domain
            .deactivate_user(&clinician, ada, "no")
            .await
            .expect_err("not an admin");
        assert!(matches!(&err, CommandError::Denied(_)), "{err:?}");

        // Rebuilt from the log, the projections are the same.
        assert_no_drift(&w).await?;
        Ok(())
    }
);
