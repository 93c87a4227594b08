//! The HTTP API's behaviour on both backends: problem documents, fields in the wrong
//! place, unknown fields, limits, correlation ids, idempotency keys, tokens, paging,
//! and the contracts it serves.

use axum::http::{Method, StatusCode};
use cairn_log::EventFilter;
use cairn_policy::{Principal, Role};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::CorrelationId;
use serde_json::{Value, json};

use crate::common::{
    self, assert_problem, bootstrap_body, bootstrapped, call, platform_admin, server, user,
};

backend_test!(
    a_bootstrap_through_the_api_runs_to_the_end,
    |t: TestDb| async move {
        let s = server(t).await?;
        let admin = platform_admin();
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(bootstrap_body("sunrise"))
            .send(&s.app)
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{:#}", reply.body);
        let correlation = reply.header("x-correlation-id").to_owned();
        assert_eq!(reply.body["correlation_id"], json!(correlation));
        let org_id = reply.body["org_id"].as_str().expect("an org id").to_owned();
        let workflow_id = reply.body["workflow_id"]
            .as_str()
            .expect("a workflow id")
            .to_owned();
        s.domain.engine().run_until_idle().await?;

        let workflow = call(Method::GET, format!("/v1/workflows/{workflow_id}"))
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(
            workflow.body["status"],
            json!("completed"),
            "{:#}",
            workflow.body
        );
        let org = call(Method::GET, format!("/v1/organizations/{org_id}"))
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(
            (org.body["status"].clone(), org.body["is_active"].clone()),
            (json!("active"), json!(true))
        );
        let events = call(
            Method::GET,
            format!("/v1/events?correlation_id={correlation}&limit=200"),
        )
        .as_(&admin)
        .send(&s.app)
        .await;
        let items = events.body["items"].as_array().expect("items");
        assert!(items.len() > 10);
        assert!(
            items
                .iter()
                .all(|e| e["event_metadata"]["correlation_id"] == json!(correlation))
        );
        Ok(())
    }
);

backend_test!(
    a_field_in_the_wrong_place_is_a_400_that_says_where_it_belongs,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org_id = bootstrapped(&s, "placement").await?;
        let admin = platform_admin();

        // The seed's incident, turned around: a body field sent in the query string.
        let reply = call(Method::POST, "/v1/invitations/accept?token=abc")
            .json(json!({}))
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "wrong_location");
        assert_eq!(
            reply.body["errors"],
            json!([{"field": "token", "location": "query", "expected_location": "body", "message": "token belongs in the body, not the query"}])
        );

        // A query parameter sent in the body.
        let reply = call(Method::GET, "/v1/events")
            .as_(&admin)
            .json(json!({"limit": 5}))
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "wrong_location");
        assert_eq!(reply.body["errors"][0]["expected_location"], json!("query"));

        // A path parameter sent in the body.
        let reply = call(Method::PUT, format!("/v1/organizations/{org_id}/direct-care-settings"))
        .as_(&admin)
        .json(json!({"org_id": org_id, "visit_verification": true, "client_assignment": true, "max_caseload": 3}))
        .send(&s.app)
        .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "wrong_location");
        assert_eq!(reply.body["errors"][0]["field"], json!("org_id"));
        assert_eq!(reply.body["errors"][0]["expected_location"], json!("path"));

        // A body field sent in the query of an operation with a body.
        let reply = call(
            Method::PUT,
            format!("/v1/organizations/{org_id}/direct-care-settings?max_caseload=3"),
        )
        .as_(&admin)
        .json(json!({"visit_verification": true, "client_assignment": true, "max_caseload": 3}))
        .send(&s.app)
        .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "wrong_location");
        Ok(())
    }
);

backend_test!(
    unknown_and_invalid_input_is_refused_with_its_path,
    |t: TestDb| async move {
        let s = server(t).await?;
        let admin = platform_admin();
        let mut body = bootstrap_body("unknown-fields");
        body["organization"]["colour"] = json!("red");
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(body)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "unknown_field");
        assert_eq!(
            reply.body["errors"][0]["field"],
            json!("organization.colour")
        );

        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(json!({"extra": 1}))
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "unknown_field");

        let mut body = bootstrap_body("missing");
        body["admin"]
            .as_object_mut()
            .expect("an object")
            .remove("email");
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(body)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(reply.body["errors"][0]["field"], json!("admin.email"));
        assert_eq!(reply.body["errors"][0]["message"], json!("is required"));

        let mut body = bootstrap_body("Bad Slug");
        body["invitees"][0]["roles"] = json!(["nurse"]);
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(body)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        let fields: Vec<&str> = reply.body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert_eq!(fields, ["organization.slug", "invitees[0].roles[0]"]);
        assert!(
            reply.body["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .all(|e| e["location"] == json!("body"))
        );

        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .raw(b"{\"organization\": ", "application/json")
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_json");
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .raw(b"name=x", "application/x-www-form-urlencoded")
            .send(&s.app)
            .await;
        assert_problem(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        let huge = format!("{{\"organization\": \"{}\"}}", "x".repeat(70 * 1024));
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .raw(huge.as_bytes(), "application/json")
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

        let reply = call(Method::GET, "/v1/organizations/not-an-id")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(reply.body["errors"][0]["field"], json!("org_id"));
        assert_eq!(reply.body["errors"][0]["location"], json!("path"));
        let reply = call(Method::GET, "/v1/organizations?limit=900")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(reply.body["errors"][0]["field"], json!("limit"));
        let reply = call(Method::GET, "/v1/events?after=abc")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(reply.body["errors"][0]["location"], json!("query"));

        let mut body = bootstrap_body("nul");
        body["invitees"][0]["name"] = json!("Grace\u{0}Hopper");
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(body)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(reply.body["errors"][0]["field"], json!("invitees[0].name"));
        assert!(
            reply.body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("NUL"))
        );
        let reply = call(Method::GET, "/v1/workflows?kind=Not%20A%20Kind")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(reply.body["errors"][0]["field"], json!("kind"));

        let reply = call(Method::GET, "/v1/nowhere").send(&s.app).await;
        assert_problem(&reply, StatusCode::NOT_FOUND, "not_found");
        let reply = call(Method::DELETE, "/v1/organizations")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

        let n_orgs =
            s.t.db()
                .reader()
                .await?
                .conn()
                .fetch_one(
                    "SELECT COUNT(*) AS n FROM organizations",
                    cairn_log::args![],
                )
                .await?
                .get::<i64>("n")?;
        assert_eq!(n_orgs, 0, "nothing was written");
        Ok(())
    }
);

backend_test!(
    every_request_has_a_correlation_id_that_reaches_its_events,
    |t: TestDb| async move {
        let s = server(t).await?;
        let admin = platform_admin();
        let mine = CorrelationId::new_v7();
        let reply = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .header("x-correlation-id", &mine.to_string())
            .json(bootstrap_body("correlated"))
            .send(&s.app)
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(reply.header("x-correlation-id"), mine.to_string());
        assert!(
            reply
                .header("traceparent")
                .starts_with(&format!("00-{}-", mine.as_uuid().simple()))
        );
        s.domain.engine().run_until_idle().await?;
        let filter = EventFilter {
            correlation_id: Some(mine),
            limit: Some(1_000),
            ..EventFilter::default()
        };
        let events = s.t.db().reader().await?.conn().read_events(&filter).await?;
        assert!(
            events.len() > 10,
            "the command and its workflow carry the header's correlation id"
        );

        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let reply = call(Method::GET, "/health/live")
            .header("traceparent", traceparent)
            .send(&s.app)
            .await;
        assert_eq!(
            reply.header("x-correlation-id"),
            "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
        );

        let reply = call(Method::GET, "/health/live").send(&s.app).await;
        assert!(
            CorrelationId::parse(reply.header("x-correlation-id")).is_ok(),
            "a new one when none is sent"
        );

        let reply = call(Method::GET, "/health/live")
            .header("x-correlation-id", "not-a-uuid")
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(reply.body["errors"][0]["location"], json!("header"));
        Ok(())
    }
);

backend_test!(
    an_idempotency_key_repeats_the_first_response,
    |t: TestDb| async move {
        let s = server(t).await?;
        let admin = platform_admin();
        let first = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .header("idempotency-key", "bootstrap-42")
            .json(bootstrap_body("once"))
            .send(&s.app)
            .await;
        let again = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .header("idempotency-key", "bootstrap-42")
            .json(bootstrap_body("once"))
            .send(&s.app)
            .await;
        assert_eq!(
            (first.status, again.status),
            (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
        );
        assert_eq!(first.body, again.body);
        // The repeat names the request that ran the command, whose id its events and
        // its workflow carry, even when the retry came with an id of its own.
        assert_eq!(
            again.header("x-correlation-id"),
            first.header("x-correlation-id")
        );
        let retried = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .header("idempotency-key", "bootstrap-42")
            .header("x-correlation-id", "0195f0c1-1111-7000-8000-000000000042")
            .json(bootstrap_body("once"))
            .send(&s.app)
            .await;
        assert_eq!(retried.status, StatusCode::ACCEPTED);
        assert_eq!(
            retried.header("x-correlation-id"),
            first.header("x-correlation-id")
        );
        assert_eq!(
            first.body["correlation_id"].as_str(),
            Some(first.header("x-correlation-id"))
        );
        let other = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .header("idempotency-key", "bootstrap-42")
            .json(bootstrap_body("twice"))
            .send(&s.app)
            .await;
        assert_problem(&other, StatusCode::CONFLICT, "idempotency_key_reused");
        let bad = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .header("idempotency-key", "has space")
            .json(bootstrap_body("spaced"))
            .send(&s.app)
            .await;
        assert_problem(&bad, StatusCode::BAD_REQUEST, "invalid_field");
        // An operation that cannot honour a key refuses one instead of ignoring it.
        let retry = call(Method::POST, "/v1/events/retry-failed")
            .as_(&admin)
            .header("idempotency-key", "retry-1")
            .json(json!({}))
            .send(&s.app)
            .await;
        assert_problem(&retry, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(retry.body["errors"][0]["field"], "idempotency-key");
        assert_eq!(retry.body["errors"][0]["location"], "header");
        let listed = call(Method::GET, "/v1/organizations")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1));
        Ok(())
    }
);

backend_test!(
    bad_tokens_are_401_with_a_challenge,
    |t: TestDb| async move {
        let s = server(t).await?;
        let reply = call(Method::GET, "/v1/organizations").send(&s.app).await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
        assert_eq!(reply.header("www-authenticate"), "Bearer realm=\"cairn\"");
        let reply = call(Method::GET, "/v1/organizations")
            .bearer("not.a.jwt")
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "invalid_token");
        let forged = cairn_policy::mint(
            &platform_admin(),
            b"somebody else's secret, 32 bytes or more",
            std::time::Duration::from_secs(60),
        )?;
        let reply = call(Method::GET, "/v1/organizations")
            .bearer(&forged)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "invalid_token");
        let mut claims = cairn_policy::Claims::for_principal(
            &platform_admin(),
            std::time::Duration::from_secs(60),
        )?;
        claims.exp = chrono::Utc::now().timestamp() - 600;
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
        )?;
        let reply = call(Method::GET, "/v1/organizations")
            .bearer(&expired)
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "token_expired");
        Ok(())
    }
);

backend_test!(lists_page_with_cursors, |t: TestDb| async move {
    let s = server(t).await?;
    for slug in ["page-one", "page-two", "page-three"] {
        bootstrapped(&s, slug).await?;
    }
    let admin = platform_admin();
    let first = call(Method::GET, "/v1/organizations?limit=2")
        .as_(&admin)
        .send(&s.app)
        .await;
    let slugs = |reply: &common::Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|o| o["slug"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(slugs(&first), ["page-one", "page-two"]);
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    let second = call(
        Method::GET,
        format!("/v1/organizations?limit=2&after={cursor}"),
    )
    .as_(&admin)
    .send(&s.app)
    .await;
    assert_eq!(slugs(&second), ["page-three"]);
    assert_eq!(second.body["next_cursor"], Value::Null);

    let events = call(Method::GET, "/v1/events?limit=5")
        .as_(&admin)
        .send(&s.app)
        .await;
    let next = events.body["next_cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    assert_eq!(next, "5");
    let more = call(Method::GET, format!("/v1/events?limit=5&after={next}"))
        .as_(&admin)
        .send(&s.app)
        .await;
    assert_eq!(more.body["items"][0]["position"], json!(6));
    Ok(())
});

backend_test!(the_contracts_are_served, |t: TestDb| async move {
    let s = server(t).await?;
    let openapi = call(Method::GET, "/v1/openapi.json").send(&s.app).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert_eq!(openapi.body["openapi"], json!("3.1.0"));
    let accept = &openapi.body["paths"]["/v1/invitations/accept"]["post"];
    assert_eq!(
        accept["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        json!("#/components/schemas/AcceptRequest")
    );
    assert!(
        accept["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .all(|p| p["name"] != json!("token")),
        "token is a body field, never a parameter"
    );
    let events = &openapi.body["paths"]["/v1/events"]["get"]["parameters"];
    let after = events
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == json!("after"))
        .expect("after");
    assert_eq!(after["in"], json!("query"));
    let org = &openapi.body["paths"]["/v1/organizations/{org_id}"]["get"];
    assert_eq!(org["parameters"][0]["in"], json!("path"));
    for status in ["400", "401", "403", "404", "500", "503", "default"] {
        assert!(
            org["responses"][status]["content"]["application/problem+json"].is_object(),
            "{status}"
        );
    }
    assert!(
        org["responses"]["403"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("forbidden"))
    );

    let asyncapi = call(Method::GET, "/v1/asyncapi.json").send(&s.app).await;
    assert_eq!(asyncapi.body["asyncapi"], json!("3.0.0"));
    let message =
        &asyncapi.body["components"]["messages"]["organization.direct_care_settings_updated"];
    assert_eq!(
        message["payload"]["properties"]["event_data"]["$ref"],
        json!("#/components/schemas/DirectCareSettingsUpdated")
    );
    assert!(
        asyncapi.body["components"]["schemas"]["DirectCareSettings"]["properties"]["max_caseload"]
            .is_object()
    );
    assert!(
        asyncapi.body["components"]["schemas"]["Metadata"]["properties"]["correlation_id"]
            .is_object()
    );
    assert!(
        asyncapi.body["channels"]["organization"]["messages"]["organization.created"].is_object()
    );
    Ok(())
});

backend_test!(readiness_checks_the_database, |t: TestDb| async move {
    let s = server(t).await?;
    let reply = call(Method::GET, "/health/ready").send(&s.app).await;
    assert_eq!(
        (reply.status, reply.body.clone()),
        (StatusCode::OK, json!({"status": "ready"}))
    );
    s.t.db().close().await;
    let reply = call(Method::GET, "/health/ready").send(&s.app).await;
    assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let live = call(Method::GET, "/health/live").send(&s.app).await;
    assert_eq!(live.status, StatusCode::OK, "the process is still up");
    Ok(())
});

#[test]
fn a_user_principal_is_what_its_token_says() {
    let org = cairn_types::OrgId::new_v7();
    let principal = user(org, Role::Viewer);
    let auth =
        cairn_policy::Authenticator::new(&cairn_policy::KeySource::Secret(common::SECRET.to_vec()))
            .expect("a key");
    assert_eq!(
        auth.authenticate(&common::token(&principal))
            .expect("valid"),
        principal
    );
    assert_ne!(principal, Principal::Anonymous);
}

/// Appends one event of `event_type` to a stream, as a raw append (no command): its
/// handler may fail it, and then it is stored failed.
async fn raw_append(
    s: &common::Server,
    org: cairn_types::OrgId,
    stream_type: &str,
    stream: cairn_types::StreamId,
    event_type: &str,
    data: Value,
) -> anyhow::Result<cairn_dispatch::Dispatched> {
    let appended = s
        .domain
        .store()
        .append(cairn_log::AppendRequest::new(
            cairn_types::StreamType::parse(stream_type)?,
            stream,
            vec![cairn_log::NewEvent::new(
                cairn_types::EventType::parse(event_type)?,
                data,
                cairn_types::Metadata::new().org(org),
            )],
        ))
        .await?;
    Ok(appended.events.into_iter().next().expect("one event"))
}

// Issue "Through outages and mistakes": retries, skips and held streams through the API.
backend_test!(
    held_streams_retries_and_skips_answer_plainly,
    |t: TestDb| async move {
        let s = server(t).await?;
        let admin = platform_admin();
        let org = bootstrapped(&s, "held").await?;
        let person = cairn_types::StreamId::new_v7();
        // A user event before the user exists fails, and holds the user's stream.
        let early = raw_append(
            &s,
            org,
            "user",
            person,
            "user.activated",
            json!({"org_id": org, "invitation_id": cairn_types::InvitationId::new_v7()}),
        )
        .await?;
        assert!(early.event.is_failed());
        let created = raw_append(
            &s,
            org,
            "user",
            person,
            "user.created",
            json!({"org_id": org, "email": "late@example.com", "name": "Late Comer"}),
        )
        .await?;
        assert!(created.event.is_held());

        let held = call(Method::GET, "/v1/streams/held")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(held.status, StatusCode::OK, "{:#}", held.body);
        let items = held.body["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{:#}", held.body);
        assert_eq!(items[0]["stream_id"], json!(person));
        assert_eq!(items[0]["cause"], json!("failed"));
        assert_eq!(items[0]["n_held"], json!(1));
        assert_eq!(items[0]["behind"]["event_id"], json!(early.event.event_id));
        assert_eq!(items[0]["behind"]["error"]["code"], json!("P9003"));
        // The organization's admin sees its own held streams; another tenant's, none.
        let own = call(Method::GET, "/v1/streams/held")
            .as_(&user(org, Role::Admin))
            .send(&s.app)
            .await;
        assert_eq!(
            own.body["items"].as_array().map(Vec::len),
            Some(1),
            "{:#}",
            own.body
        );
        let other = bootstrapped(&s, "other").await?;
        let theirs = call(Method::GET, "/v1/streams/held")
            .as_(&user(other, Role::Admin))
            .send(&s.app)
            .await;
        assert_eq!(theirs.body["items"], json!([]), "{:#}", theirs.body);

        // A held event cannot be retried directly: 409, naming what it waits behind.
        let reply = call(
            Method::POST,
            format!("/v1/events/{}/retry", created.event.event_id),
        )
        .as_(&admin)
        .send(&s.app)
        .await;
        assert_problem(&reply, StatusCode::CONFLICT, "held");
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&early.event.event_id.to_string())),
            "{:#}",
            reply.body
        );

        // A skip needs a reason.
        let skip = format!("/v1/events/{}/skip", early.event.event_id);
        for body in [
            json!({}),
            json!({"reason": "   "}),
            json!({"reason": "a\u{7}b"}),
        ] {
            let reply = call(Method::POST, skip.clone())
                .as_(&admin)
                .json(body.clone())
                .send(&s.app)
                .await;
            assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
            assert_eq!(reply.body["errors"][0]["field"], json!("reason"), "{body}");
        }
        let reply = call(Method::POST, skip.clone())
            .as_(&admin)
            .json(json!({"reason": "activated before it existed"}))
            .send(&s.app)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:#}", reply.body);
        assert_eq!(reply.body["processing_error"], Value::Null);
        // The held event applied behind it.
        let after = call(
            Method::GET,
            format!("/v1/events/{}", created.event.event_id),
        )
        .as_(&admin)
        .send(&s.app)
        .await;
        assert_eq!(after.body["held_behind"], Value::Null, "{:#}", after.body);
        assert!(after.body["processed_at"].is_string());
        let held = call(Method::GET, "/v1/streams/held")
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(held.body["items"], json!([]));
        let again = call(Method::POST, skip)
            .as_(&admin)
            .json(json!({"reason": "twice"}))
            .send(&s.app)
            .await;
        assert_problem(&again, StatusCode::CONFLICT, "conflict");
        Ok(())
    }
);

backend_test!(
    a_paused_route_refuses_commands_until_it_is_resumed,
    |t: TestDb| async move {
        let s = server(t).await?;
        let admin = platform_admin();
        let org = bootstrapped(&s, "paused").await?;
        let pause = |body: Value| {
            call(Method::POST, "/v1/handlers/pause")
                .as_(&admin)
                .json(body)
        };
        let reply = pause(json!({"stream_type": "organization"}))
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(
            reply.body["errors"][0]["field"],
            json!("reason"),
            "{:#}",
            reply.body
        );
        // No handler for the route: 404; a route that cannot be paused (the engine's
        // own records, the probe's): 409, saying why.
        for (body, status, code, says) in [
            (
                json!({"stream_type": "nothing", "reason": "x"}),
                StatusCode::NOT_FOUND,
                "not_found",
                "no handler route for stream type \"nothing\"",
            ),
            (
                json!({"stream_type": "organization", "event_type": "organization.sold", "reason": "x"}),
                StatusCode::NOT_FOUND,
                "not_found",
                "no handler for event type \"organization.sold\"",
            ),
            (
                json!({"stream_type": "workflow", "reason": "x"}),
                StatusCode::CONFLICT,
                "conflict",
                "cannot be paused",
            ),
            (
                json!({"stream_type": "probe", "reason": "x"}),
                StatusCode::CONFLICT,
                "conflict",
                "cannot be paused",
            ),
        ] {
            let reply = pause(body.clone()).send(&s.app).await;
            assert_problem(&reply, status, code);
            assert!(
                reply.body["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(says)),
                "{body}: {:#}",
                reply.body
            );
        }
        let reply = pause(json!({"stream_type": "organization", "reason": "settings handler fix"}))
            .send(&s.app)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:#}", reply.body);
        assert_eq!(reply.body["paused_by"], json!("service:platform-admin-ops"));
        let again = pause(json!({"stream_type": "organization", "reason": "twice"}))
            .send(&s.app)
            .await;
        assert_problem(&again, StatusCode::CONFLICT, "conflict");

        let settings =
            json!({"visit_verification": true, "client_assignment": false, "max_caseload": 9});
        let refused = call(
            Method::PUT,
            format!("/v1/organizations/{org}/direct-care-settings"),
        )
        .as_(&admin)
        .json(settings.clone())
        .send(&s.app)
        .await;
        assert_problem(&refused, StatusCode::CONFLICT, "paused");
        assert!(
            refused.body["detail"].as_str().is_some_and(
                |d| d.contains("settings handler fix") && d.contains("platform-admin-ops")
            ),
            "{:#}",
            refused.body
        );
        let routes = call(Method::GET, "/v1/handlers")
            .as_(&admin)
            .send(&s.app)
            .await;
        let organization = routes.body.as_array().and_then(|routes| {
            routes
                .iter()
                .find(|r| r["stream_type"] == json!("organization"))
        });
        assert_eq!(
            organization.map(|r| r["paused"][0]["reason"].clone()),
            Some(json!("settings handler fix")),
            "{:#}",
            routes.body
        );
        let health = call(Method::GET, "/health/integration").send(&s.app).await;
        let alert = health.body["alerts"]
            .as_array()
            .and_then(|alerts| alerts.iter().find(|a| a["alert"] == json!("paused_routes")))
            .cloned()
            .unwrap_or_default();
        assert_eq!(alert["active"], json!(true), "{:#}", health.body);

        let resume = call(Method::POST, "/v1/handlers/resume")
            .as_(&admin)
            .json(json!({"stream_type": "organization", "reason": "fixed"}))
            .send(&s.app)
            .await;
        assert_eq!(resume.status, StatusCode::OK, "{:#}", resume.body);
        let accepted = call(
            Method::PUT,
            format!("/v1/organizations/{org}/direct-care-settings"),
        )
        .as_(&admin)
        .json(settings)
        .send(&s.app)
        .await;
        assert_eq!(accepted.status, StatusCode::OK, "{:#}", accepted.body);
        let resume = call(Method::POST, "/v1/handlers/resume")
            .as_(&admin)
            .json(json!({"stream_type": "organization", "reason": "again"}))
            .send(&s.app)
            .await;
        assert_problem(&resume, StatusCode::CONFLICT, "conflict");
        Ok(())
    }
);

backend_test!(
    runs_and_kinds_pause_and_resume_through_the_api,
    |t: TestDb| async move {
        let s = server(t).await?;
        let admin = platform_admin();
        let org = bootstrapped(&s, "first").await?;
        // A bootstrap whose run has not started yet.
        let started = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(bootstrap_body("second"))
            .send(&s.app)
            .await;
        let run = started.body["workflow_id"]
            .as_str()
            .expect("a run")
            .to_owned();
        let new_org: cairn_types::OrgId = serde_json::from_value(started.body["org_id"].clone())?;
        let path = |verb: &str| format!("/v1/workflows/{run}/{verb}");

        // Its organization's admin may pause it; another's is told there is no such run.
        let reply = call(Method::POST, path("pause"))
            .as_(&user(org, Role::Admin))
            .json(json!({"reason": "not yours"}))
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::NOT_FOUND, "not_found");
        let reply = call(Method::POST, path("pause"))
            .as_(&user(new_org, Role::Admin))
            .json(json!({}))
            .send(&s.app)
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_field");
        let reply = call(Method::POST, path("pause"))
            .as_(&user(new_org, Role::Admin))
            .json(json!({"reason": "checking the invitees first"}))
            .send(&s.app)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:#}", reply.body);
        assert_eq!(reply.body["paused"]["scope"], json!("run"));
        assert_eq!(
            reply.body["paused"]["reason"],
            json!("checking the invitees first")
        );
        s.domain.engine().run_until_idle().await?;
        let state = call(Method::GET, format!("/v1/workflows/{run}"))
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(
            state.body["status"],
            json!("running"),
            "nothing ran while paused"
        );
        assert!(state.body["steps"].as_array().is_some_and(Vec::is_empty));
        let again = call(Method::POST, path("pause"))
            .as_(&admin)
            .json(json!({"reason": "twice"}))
            .send(&s.app)
            .await;
        assert_problem(&again, StatusCode::CONFLICT, "conflict");
        let unknown = call(
            Method::POST,
            format!("/v1/workflows/{}/pause", cairn_types::WorkflowId::new_v7()),
        )
        .as_(&admin)
        .json(json!({"reason": "x"}))
        .send(&s.app)
        .await;
        assert_problem(&unknown, StatusCode::NOT_FOUND, "not_found");

        let reply = call(Method::POST, path("resume"))
            .as_(&admin)
            .json(json!({"reason": "invitees checked"}))
            .send(&s.app)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:#}", reply.body);
        s.domain.engine().run_until_idle().await?;
        let state = call(Method::GET, format!("/v1/workflows/{run}"))
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(state.body["status"], json!("completed"), "{:#}", state.body);
        let finished = call(Method::POST, path("pause"))
            .as_(&admin)
            .json(json!({"reason": "too late"}))
            .send(&s.app)
            .await;
        assert_problem(&finished, StatusCode::CONFLICT, "conflict");

        let unknown_kind = call(Method::POST, "/v1/workflow-kinds/nothing_here/pause")
            .as_(&admin)
            .json(json!({"reason": "x"}))
            .send(&s.app)
            .await;
        assert_problem(&unknown_kind, StatusCode::NOT_FOUND, "not_found");
        let probe = call(Method::POST, "/v1/workflow-kinds/probe/pause")
            .as_(&admin)
            .json(json!({"reason": "x"}))
            .send(&s.app)
            .await;
        assert_problem(&probe, StatusCode::CONFLICT, "conflict");
        assert!(
            probe.body["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("workflow kind probe cannot be paused")),
            "{:#}",
            probe.body
        );
        let kind = call(
            Method::POST,
            "/v1/workflow-kinds/organization_bootstrap/pause",
        )
        .as_(&admin)
        .json(json!({"reason": "mail provider maintenance"}))
        .send(&s.app)
        .await;
        assert_eq!(kind.status, StatusCode::OK, "{:#}", kind.body);
        let kinds = call(Method::GET, "/v1/workflow-kinds")
            .as_(&admin)
            .send(&s.app)
            .await;
        let bootstrap = kinds.body.as_array().and_then(|kinds| {
            kinds
                .iter()
                .find(|k| k["kind"] == json!("organization_bootstrap"))
        });
        assert_eq!(
            bootstrap.map(|k| k["paused"]["reason"].clone()),
            Some(json!("mail provider maintenance"))
        );
        let probe = kinds
            .body
            .as_array()
            .and_then(|kinds| kinds.iter().find(|k| k["kind"] == json!("probe")));
        assert!(
            probe.is_some_and(|k| k["not_pausable"].is_string() && k["paused"].is_null()),
            "{:#}",
            kinds.body
        );
        // A bootstrap is still accepted while its kind is paused: it waits.
        let waiting = call(Method::POST, "/v1/organizations")
            .as_(&admin)
            .json(bootstrap_body("third"))
            .send(&s.app)
            .await;
        assert_eq!(waiting.status, StatusCode::ACCEPTED, "{:#}", waiting.body);
        let resumed = call(
            Method::POST,
            "/v1/workflow-kinds/organization_bootstrap/resume",
        )
        .as_(&admin)
        .json(json!({"reason": "maintenance over"}))
        .send(&s.app)
        .await;
        assert_eq!(resumed.status, StatusCode::OK, "{:#}", resumed.body);
        Ok(())
    }
);
