//! `GET /v1/subjects/{id}`, `POST /v1/subjects/{id}/erasure`, `…/restriction` and
//! `…/disclosure`: who may erase, restrict or disclose whom, what bad input gets, and
//! that a second erasure or restriction returns the first receipt.

use std::collections::BTreeSet;

use anyhow::Context as _;
use axum::http::{Method, StatusCode};
use cairn_policy::{Principal, Role};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{OrgId, UserId};
use serde_json::json;

use crate::common::{bootstrapped, call, platform_admin, server};

fn admin_of(org_id: OrgId) -> Principal {
    Principal::User {
        user_id: UserId::new_v7(),
        org_id,
        roles: BTreeSet::from([Role::Admin]),
    }
}

fn viewer_of(org_id: OrgId) -> Principal {
    Principal::User {
        user_id: UserId::new_v7(),
        org_id,
        roles: BTreeSet::from([Role::Viewer]),
    }
}

/// A server with two organizations bootstrapped (their workflows run), and the first
/// user of the first.
async fn two_tenants(
    t: TestDb,
    slug_a: &str,
    slug_b: &str,
) -> anyhow::Result<(crate::common::Server, OrgId, OrgId, String)> {
    let s = server(t).await?;
    let org_a = bootstrapped(&s, slug_a).await?;
    let org_b = bootstrapped(&s, slug_b).await?;
    s.domain.engine().run_until_idle().await?;
    let person = first_user(&s, org_a).await?;
    Ok((s, org_a, org_b, person))
}

/// The first user of `org_id`, as a platform administrator lists them.
async fn first_user(s: &crate::common::Server, org_id: OrgId) -> anyhow::Result<String> {
    let users = call(Method::GET, format!("/v1/organizations/{org_id}/users"))
        .as_(&platform_admin())
        .send(&s.app)
        .await;
    Ok(users.body["items"]
        .as_array()
        .and_then(|items| items.first())
        .and_then(|u| u["id"].as_str())
        .context("a user of the organization")?
        .to_owned())
}

backend_test!(
    a_person_is_erased_once_by_their_organizations_admin_and_hidden_from_others,
    |t: TestDb| async move {
        let (s, org_a, org_b, person) = two_tenants(t, "subjects-a", "subjects-b").await?;
        let erase = format!("/v1/subjects/{person}/erasure");
        let status_path = format!("/v1/subjects/{person}");

        let active = call(Method::GET, status_path.as_str())
            .as_(&admin_of(org_a))
            .send(&s.app)
            .await;
        assert_eq!(active.status, StatusCode::OK, "{:?}", active.body);
        assert_eq!(active.body["state"], "active");

        // Another tenant's admin: the same 404 as nobody at all.
        let other = call(Method::GET, status_path.as_str())
            .as_(&admin_of(org_b))
            .send(&s.app)
            .await;
        assert_eq!(other.status, StatusCode::NOT_FOUND, "{:?}", other.body);
        let other = call(Method::POST, erase.as_str())
            .as_(&admin_of(org_b))
            .json(json!({"reason": "not theirs"}))
            .send(&s.app)
            .await;
        assert_eq!(other.status, StatusCode::NOT_FOUND, "{:?}", other.body);
        let nobody = call(
            Method::POST,
            format!("/v1/subjects/{}/erasure", UserId::new_v7()),
        )
        .as_(&admin_of(org_a))
        .json(json!({"reason": "nobody"}))
        .send(&s.app)
        .await;
        assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{:?}", nobody.body);
        // A viewer of the organization may not.
        let viewer = call(Method::POST, erase.as_str())
            .as_(&viewer_of(org_a))
            .json(json!({"reason": "a viewer"}))
            .send(&s.app)
            .await;
        assert_eq!(viewer.status, StatusCode::FORBIDDEN, "{:?}", viewer.body);
        // No reason, or an empty one: 400, nothing erased.
        for body in [json!({}), json!({"reason": "   "})] {
            let refused = call(Method::POST, erase.as_str())
                .as_(&admin_of(org_a))
                .json(body.clone())
                .send(&s.app)
                .await;
            assert_eq!(
                refused.status,
                StatusCode::BAD_REQUEST,
                "{body}: {:?}",
                refused.body
            );
        }
        let still = call(Method::GET, status_path.as_str())
            .as_(&platform_admin())
            .send(&s.app)
            .await;
        assert_eq!(still.body["state"], "active");

        let first = call(Method::POST, erase.as_str())
            .as_(&admin_of(org_a))
            .json(json!({"reason": "request 17"}))
            .send(&s.app)
            .await;
        assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
        assert_eq!(first.body["repeated"], false);
        let again = call(Method::POST, erase.as_str())
            .as_(&platform_admin())
            .json(json!({"reason": "request 18"}))
            .send(&s.app)
            .await;
        assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
        assert_eq!(again.body["repeated"], true);
        assert_eq!(again.body["reason"], "request 17");
        assert_eq!(again.body["erased_at"], first.body["erased_at"]);
        let erased = call(Method::GET, status_path.as_str())
            .as_(&admin_of(org_a))
            .send(&s.app)
            .await;
        assert_eq!(erased.body["state"], "erased");
        assert_eq!(erased.body["erasure"]["reason"], "request 17");
        let user = call(
            Method::GET,
            format!("/v1/organizations/{org_a}/users/{person}"),
        )
        .as_(&platform_admin())
        .send(&s.app)
        .await;
        assert_eq!(user.status, StatusCode::OK, "{:?}", user.body);
        assert_eq!(user.body["email"], "");
        assert!(user.body["erased_at"].is_string(), "{:?}", user.body);
        Ok(())
    }
);

backend_test!(
    a_person_is_restricted_until_their_erasure_and_bad_requests_say_what_was_wrong,
    |t: TestDb| async move {
        let (s, org_a, org_b, person) = two_tenants(t, "restrict-a", "restrict-b").await?;
        let restrict = format!("/v1/subjects/{person}/restriction");
        let status_path = format!("/v1/subjects/{person}");

        // Another tenant's admin, or nobody: 404; a viewer: 403.
        let other = call(Method::POST, restrict.as_str())
            .as_(&admin_of(org_b))
            .json(json!({"reason": "not theirs", "retain_days": 365}))
            .send(&s.app)
            .await;
        assert_eq!(other.status, StatusCode::NOT_FOUND, "{:?}", other.body);
        let viewer = call(Method::POST, restrict.as_str())
            .as_(&viewer_of(org_a))
            .json(json!({"reason": "a viewer", "retain_days": 365}))
            .send(&s.app)
            .await;
        assert_eq!(viewer.status, StatusCode::FORBIDDEN, "{:?}", viewer.body);
        // Bad bodies: 400 naming the field, and nothing restricted.
        for (body, field) in [
            (json!({"retain_days": 365}), "reason"),
            (json!({"reason": "  ", "retain_days": 365}), "reason"),
            (json!({"reason": "kept"}), "retain_days"),
            (
                json!({"reason": "kept", "retain_days": "a year"}),
                "retain_days",
            ),
            (json!({"reason": "kept", "retain_days": 0}), "retain_days"),
            (json!({"reason": "kept", "retain_days": -1}), "retain_days"),
            (
                json!({"reason": "kept", "retain_days": 11_000}),
                "retain_days",
            ),
            (
                json!({"reason": "kept", "erase_at": "2032-01-01T00:00:00Z"}),
                "erase_at",
            ),
        ] {
            let refused = call(Method::POST, restrict.as_str())
                .as_(&admin_of(org_a))
                .json(body.clone())
                .send(&s.app)
                .await;
            assert_eq!(
                refused.status,
                StatusCode::BAD_REQUEST,
                "{body}: {:?}",
                refused.body
            );
            assert!(
                refused.body.to_string().contains(field),
                "{body}: {:?}",
                refused.body
            );
        }
        let still = call(Method::GET, status_path.as_str())
            .as_(&platform_admin())
            .send(&s.app)
            .await;
        assert_eq!(still.body["state"], "active");

        // JSON Schema counts 365.0 as an integer, and so does cairn.
        let first = call(Method::POST, restrict.as_str())
            .as_(&admin_of(org_a))
            .json(json!({"reason": "kept for the audit", "retain_days": 365.0}))
            .send(&s.app)
            .await;
        assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
        assert_eq!(first.body["repeated"], false);
        let erase_at = first.body["erase_at"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .context("erase_at")?;
        let days = (erase_at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_days();
        assert!((364..=365).contains(&days), "{days} days: {:?}", first.body);
        let again = call(Method::POST, restrict.as_str())
            .as_(&platform_admin())
            .json(json!({"reason": "again", "retain_days": 365}))
            .send(&s.app)
            .await;
        assert_eq!(again.body["repeated"], true, "{:?}", again.body);
        assert_eq!(again.body["restricted_at"], first.body["restricted_at"]);
        let restricted = call(Method::GET, status_path.as_str())
            .as_(&admin_of(org_a))
            .send(&s.app)
            .await;
        assert_eq!(restricted.body["state"], "restricted");
        assert_eq!(
            restricted.body["restriction"]["workflow_id"],
            first.body["workflow_id"]
        );
        let user = call(
            Method::GET,
            format!("/v1/organizations/{org_a}/users/{person}"),
        )
        .as_(&platform_admin())
        .send(&s.app)
        .await;
        assert_eq!(user.body["email"], "");
        assert!(user.body["restricted_at"].is_string(), "{:?}", user.body);
        let run = call(
            Method::GET,
            format!(
                "/v1/workflows/{}",
                first.body["workflow_id"].as_str().unwrap_or_default()
            ),
        )
        .as_(&platform_admin())
        .send(&s.app)
        .await;
        assert_eq!(run.status, StatusCode::OK, "{:?}", run.body);
        assert_eq!(run.body["kind"], "retention_erasure");

        // Erased sooner, on request: then a restriction is refused.
        let erased = call(Method::POST, format!("/v1/subjects/{person}/erasure"))
            .as_(&admin_of(org_a))
            .json(json!({"reason": "asked again"}))
            .send(&s.app)
            .await;
        assert_eq!(erased.status, StatusCode::OK, "{:?}", erased.body);
        let late = call(Method::POST, restrict.as_str())
            .as_(&admin_of(org_a))
            .json(json!({"reason": "too late", "retain_days": 365}))
            .send(&s.app)
            .await;
        assert_eq!(late.status, StatusCode::CONFLICT, "{:?}", late.body);
        let status = call(Method::GET, status_path.as_str())
            .as_(&admin_of(org_a))
            .send(&s.app)
            .await;
        assert_eq!(status.body["state"], "erased");
        assert_eq!(status.body["restriction"]["reason"], "kept for the audit");
        Ok(())
    }
);

backend_test!(
    a_restricted_persons_data_is_disclosed_for_a_legal_claim_only_to_their_admin_and_on_record,
    |t: TestDb| async move {
        let (s, org_a, org_b, person) = two_tenants(t, "disclose-a", "disclose-b").await?;
        let subject: UserId = person.parse()?;
        let disclose = format!("/v1/subjects/{person}/disclosure");
        let restricted = call(Method::POST, format!("/v1/subjects/{person}/restriction"))
            .as_(&admin_of(org_a))
            .json(json!({"reason": "kept for an inquiry", "retain_days": 365}))
            .send(&s.app)
            .await;
        assert_eq!(restricted.status, StatusCode::OK, "{:?}", restricted.body);
        let claim = json!({"reason": "claim 2026-114"});

        // Another tenant's admin, or nobody: 404; a viewer: 403; no token: 401.
        let other = call(Method::POST, disclose.as_str())
            .as_(&admin_of(org_b))
            .json(claim.clone())
            .send(&s.app)
            .await;
        assert_eq!(other.status, StatusCode::NOT_FOUND, "{:?}", other.body);
        let nobody = call(
            Method::POST,
            format!("/v1/subjects/{}/disclosure", UserId::new_v7()),
        )
        .as_(&admin_of(org_a))
        .json(claim.clone())
        .send(&s.app)
        .await;
        assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{:?}", nobody.body);
        let viewer = call(Method::POST, disclose.as_str())
            .as_(&viewer_of(org_a))
            .json(claim.clone())
            .send(&s.app)
            .await;
        assert_eq!(viewer.status, StatusCode::FORBIDDEN, "{:?}", viewer.body);
        // A service sees every tenant: it may not, whatever its scopes.
        let service = Principal::Service {
            name: "etl".to_owned(),
            scopes: BTreeSet::from([
                cairn_policy::Scope::OrganizationsRead,
                cairn_policy::Scope::OrganizationsWrite,
            ]),
        };
        let refused = call(Method::POST, disclose.as_str())
            .as_(&service)
            .json(claim.clone())
            .send(&s.app)
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
        let anonymous = call(Method::POST, disclose.as_str())
            .json(claim.clone())
            .send(&s.app)
            .await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{:?}",
            anonymous.body
        );
        // Bad bodies: 400 naming the field.
        for (body, field) in [
            (json!({}), "reason"),
            (json!({"reason": "   "}), "reason"),
            (json!({"reason": 7}), "reason"),
            (json!({"reason": "claim", "fields": ["/email"]}), "fields"),
        ] {
            let refused = call(Method::POST, disclose.as_str())
                .as_(&admin_of(org_a))
                .json(body.clone())
                .send(&s.app)
                .await;
            assert_eq!(
                refused.status,
                StatusCode::BAD_REQUEST,
                "{body}: {:?}",
                refused.body
            );
            assert!(
                refused.body.to_string().contains(field),
                "{body}: {:?}",
                refused.body
            );
        }
        // Its answer holds personal data: it is never stored to be repeated.
        let keyed = call(Method::POST, disclose.as_str())
            .as_(&admin_of(org_a))
            .header("Idempotency-Key", "claim-2026-114")
            .json(claim.clone())
            .send(&s.app)
            .await;
        assert_eq!(keyed.status, StatusCode::BAD_REQUEST, "{:?}", keyed.body);
        // Nothing refused was put on record as a disclosure.
        let records = s.t.db().read_access(subject, None, 100).await?;
        assert!(
            records
                .iter()
                .all(|r| !r.record.resource.contains("claim 2026-114")),
            "{records:?}"
        );

        // Her admin: every field of hers, opened, while every other read withholds her.
        let disclosed = call(Method::POST, disclose.as_str())
            .as_(&admin_of(org_a))
            .json(claim.clone())
            .send(&s.app)
            .await;
        assert_eq!(disclosed.status, StatusCode::OK, "{:?}", disclosed.body);
        assert_eq!(disclosed.body["state"], "restricted");
        let fields = disclosed.body["fields"].as_array().context("fields")?;
        let addresses: Vec<&str> = fields
            .iter()
            .filter_map(|f| f["value"].as_str())
            .filter(|v| v.contains('@'))
            .collect();
        assert!(!addresses.is_empty(), "{:?}", disclosed.body);
        assert!(
            fields.iter().all(|f| f["value"].is_string()),
            "{:?}",
            disclosed.body
        );
        let user = call(
            Method::GET,
            format!("/v1/organizations/{org_a}/users/{person}"),
        )
        .as_(&platform_admin())
        .send(&s.app)
        .await;
        assert_eq!(user.body["email"], "", "{:?}", user.body);

        // On record: one API read naming her, the request and the claim.
        let records = s.t.db().read_access(subject, None, 100).await?;
        let record = records
            .iter()
            .find(|r| json!(r.record.correlation_id) == disclosed.body["correlation_id"])
            .context("the disclosure is on record")?;
        assert_eq!(record.record.via, cairn_log::AccessVia::Api);
        assert!(
            record.record.resource.contains("claim 2026-114"),
            "{record:?}"
        );
        assert_eq!(record.record.subjects, vec![subject]);

        // Once erased: 409.
        let erased = call(Method::POST, format!("/v1/subjects/{person}/erasure"))
            .as_(&admin_of(org_a))
            .json(json!({"reason": "the inquiry closed"}))
            .send(&s.app)
            .await;
        assert_eq!(erased.status, StatusCode::OK, "{:?}", erased.body);
        let late = call(Method::POST, disclose.as_str())
            .as_(&platform_admin())
            .json(claim)
            .send(&s.app)
            .await;
        assert_eq!(late.status, StatusCode::CONFLICT, "{:?}", late.body);
        Ok(())
    }
);
