//! What cairn keeps per principal is the tenant's own: answers stored under an
//! idempotency key and the allowance of live subscriptions are keyed by organization
//! and user, and a stored answer goes only to someone the policy lets run the command
//! now (issue 20, point 9).

use std::collections::BTreeSet;

use anyhow::Context as _;
use axum::http::{Method, StatusCode};
use cairn_policy::{Principal, Role};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::UserId;
use serde_json::json;

use crate::common::{self, bootstrapped, call, platform_admin, server, server_with};

/// A token of organization `org_id` whose subject is `user_id`, a user of another
/// tenant: what a tenant's own identity provider could issue.
fn admin_as(user_id: UserId, org_id: cairn_types::OrgId) -> Principal {
    Principal::User {
        user_id,
        org_id,
        roles: BTreeSet::from([Role::Admin]),
    }
}

backend_test!(
    another_tenants_token_naming_a_user_gets_none_of_their_stored_answers,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org_a = bootstrapped(&s, "tenant-a").await?;
        let org_b = bootstrapped(&s, "tenant-b").await?;
        let b_admin = admin_as(UserId::new_v7(), org_b);
        let invitations = call(
            Method::GET,
            format!("/v1/organizations/{org_b}/invitations"),
        )
        .as_(&platform_admin())
        .send(&s.app)
        .await;
        assert_eq!(invitations.status, StatusCode::OK, "{:?}", invitations.body);
        let invitation = invitations.body["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["status"] == "pending"))
            .and_then(|i| i["id"].as_str())
            .context("a pending invitation of B")?
            .to_owned();

        let resend = format!("/v1/invitations/{invitation}/resend");
        let first = call(Method::POST, resend.as_str())
            .as_(&b_admin)
            .header("idempotency-key", "resend-1")
            .json(json!({}))
            .send(&s.app)
            .await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
        s.domain.engine().run_until_idle().await?;
        let revoke = format!("/v1/invitations/{invitation}/revoke");
        let revoked = call(Method::POST, revoke.as_str())
            .as_(&b_admin)
            .header("idempotency-key", "revoke-1")
            .json(json!({"reason": "left the practice"}))
            .send(&s.app)
            .await;
        assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);

        // A's token with B's admin's user id, repeating B's requests with B's keys:
        // before, it was handed B's stored answers (B's ids, B's correlation id).
        let forged = admin_as(
            match &b_admin {
                Principal::User { user_id, .. } => *user_id,
                _ => unreachable!("b_admin is a user"),
            },
            org_a,
        );
        for (path, key, body) in [
            (resend.as_str(), "resend-1", json!({})),
            (
                revoke.as_str(),
                "revoke-1",
                json!({"reason": "left the practice"}),
            ),
        ] {
            let reply = call(Method::POST, path)
                .as_(&forged)
                .header("idempotency-key", key)
                .json(body)
                .send(&s.app)
                .await;
            common::assert_problem(&reply, StatusCode::NOT_FOUND, "not_found");
            assert!(
                !reply.body.to_string().contains(&org_b.to_string()),
                "{:?}",
                reply.body
            );
            assert_ne!(
                reply.header("x-correlation-id"),
                first.header("x-correlation-id"),
                "{path}"
            );
        }
        // B's admin still gets B's answer.
        let again = call(Method::POST, resend.as_str())
            .as_(&b_admin)
            .header("idempotency-key", "resend-1")
            .json(json!({}))
            .send(&s.app)
            .await;
        assert_eq!(again.status, StatusCode::ACCEPTED);
        assert_eq!(again.body, first.body);
        Ok(())
    }
);

backend_test!(
    another_tenants_token_naming_a_user_does_not_use_up_their_subscriptions,
    |t: TestDb| async move {
        let s = server_with(
            t,
            cairn_http::Options {
                max_subscriptions: 1,
                ..cairn_http::Options::default()
            },
        )
        .await?;
        let base = s.listen().await?;
        let org_a = bootstrapped(&s, "tenant-a").await?;
        let org_b = bootstrapped(&s, "tenant-b").await?;
        let user_id = UserId::new_v7();
        let http = reqwest::Client::new();
        let open = |principal: Principal| {
            let http = http.clone();
            let url = format!("{base}/v1/events/stream");
            async move {
                http.get(url)
                    .bearer_auth(common::token(&principal))
                    .send()
                    .await
            }
        };
        let forged = open(admin_as(user_id, org_a)).await?;
        assert_eq!(forged.status(), StatusCode::OK);
        // B's admin has their one subscription still.
        let own = open(admin_as(user_id, org_b)).await?;
        assert_eq!(own.status(), StatusCode::OK);
        let second = open(admin_as(user_id, org_b)).await?;
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
        drop((forged, own));
        Ok(())
    }
);
