//! The live feed over real sockets, on both backends: Server-Sent Events and the
//! WebSocket, tenant isolation, resuming with `Last-Event-ID`, refusals as problems,
//! heartbeats and token expiry.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use cairn_policy::{Principal, Role, Scope};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::OrgId;
use serde_json::Value;

use crate::common::{
    self, SECRET, bootstrap_body, bootstrapped, platform_admin, server, service, token, user,
};

/// Serves the app on a loopback port.
async fn listen(app: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// One Server-Sent Event.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<i64>,
    data: Value,
}

/// A Server-Sent Events client over one response.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    async fn open(
        url: String,
        bearer: Option<&str>,
        last_event_id: Option<i64>,
    ) -> anyhow::Result<SseClient> {
        let mut request = reqwest::Client::new().get(url);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "{} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        anyhow::ensure!(
            response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
            "{:?}",
            response.headers()
        );
        Ok(SseClient {
            response,
            buffer: String::new(),
        })
    }

    /// The next event, `None` when the stream ended.
    async fn next(&mut self) -> anyhow::Result<Option<Sse>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse()?);
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Ok(Some(Sse {
                    event,
                    id,
                    data: serde_json::from_str(&data)?,
                }));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .context("no event within 10 s")??;
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }

    /// The next event that is not a heartbeat.
    async fn next_message(&mut self) -> anyhow::Result<Sse> {
        loop {
            let event = self.next().await?.context("the stream ended")?;
            if event.event != "heartbeat" {
                return Ok(event);
            }
        }
    }
}

fn admin_of(org: OrgId) -> Principal {
    user(org, Role::Admin)
}

async fn org_positions(s: &common::Server, org: OrgId) -> anyhow::Result<Vec<i64>> {
    let mut reader = s.t.db().reader().await?;
    Ok(reader
        .conn()
        .read_events(&cairn_log::EventFilter {
            org_id: Some(org),
            limit: Some(10_000),
            ..Default::default()
        })
        .await?
        .iter()
        .map(|e| e.position.get())
        .collect())
}

backend_test!(
    server_sent_events_deliver_a_tenants_events_with_views_and_resume_after_last_event_id,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org_a = bootstrapped(&s, "feed-a").await?;
        let address = listen(s.app.clone()).await?;
        let admin_a = token(&admin_of(org_a));
        let url = format!("http://{address}/v1/events/stream?after=0&heartbeat=1");
        let mut feed = SseClient::open(url.clone(), Some(&admin_a), None).await?;
        let subscribed = feed.next_message().await?;
        assert_eq!(subscribed.event, "subscribed");
        assert_eq!(subscribed.data["tenancy"], org_a.to_string());
        assert_eq!(subscribed.id, Some(0));

        // Another tenant appears while the subscription is open.
        let reply = common::call(axum::http::Method::POST, "/v1/organizations")
            .as_(&platform_admin())
            .json(bootstrap_body("feed-b"))
            .send(&s.app)
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
        s.domain.engine().run_until_idle().await?;

        let expected = org_positions(&s, org_a).await?;
        let mut received = Vec::new();
        while received.len() < expected.len() {
            let event = feed.next_message().await?;
            assert_eq!(event.event, "event", "{event:?}");
            assert_eq!(event.id, event.data["position"].as_i64());
            assert_eq!(
                event.data["event"]["event_metadata"]["org_id"],
                org_a.to_string(),
                "only organization A's events: {:?}",
                event.data
            );
            if event.data["event"]["stream_type"] == "organization" {
                assert_eq!(
                    event.data["views"]["organization"]["id"],
                    org_a.to_string(),
                    "the organization's view comes with its events"
                );
            }
            received.push(event.id.context("an id")?);
        }
        assert_eq!(received, expected, "every event of A, once, in order");
        // Nothing else arrives: B's events are not for A's admin.
        let quiet = feed.next().await?.context("open")?;
        assert_eq!(quiet.event, "heartbeat", "{quiet:?}");
        assert!(
            quiet.id >= expected.last().copied(),
            "a heartbeat carries how far the feed has read: {quiet:?}"
        );
        drop(feed);

        // A browser's EventSource reconnects with Last-Event-ID: the feed resumes
        // right after it.
        let resume_after = expected[expected.len() / 2];
        let mut resumed = SseClient::open(url, Some(&admin_a), Some(resume_after)).await?;
        assert_eq!(resumed.next_message().await?.data["after"], resume_after);
        let first = resumed.next_message().await?;
        let next_expected = expected.iter().copied().find(|p| *p > resume_after);
        assert_eq!(first.id, next_expected);
        Ok(())
    }
);

backend_test!(
    a_feed_that_cannot_be_had_is_refused_with_a_problem_not_silence,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org_a = bootstrapped(&s, "refusals").await?;
        let address = listen(s.app.clone()).await?;
        let client = reqwest::Client::new();
        let url = format!("http://{address}/v1/events/stream");

        // The seed's incident: a service account without the scope.
        let reporting = token(&service(&[Scope::EventsRead]));
        let refused = client.get(&url).bearer_auth(&reporting).send().await?;
        assert_eq!(refused.status(), 403);
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = refused.json().await?;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("events:subscribe")),
            "{problem}"
        );

        // Another tenant's feed, by name.
        let other = token(&admin_of(OrgId::new_v7()));
        let refused = client
            .get(format!("{url}?org_id={org_a}"))
            .bearer_auth(&other)
            .send()
            .await?;
        assert_eq!(refused.status(), 403);

        // A resume point that is not a position says so, and where.
        let admin_a = token(&admin_of(org_a));
        let refused = client
            .get(&url)
            .bearer_auth(&admin_a)
            .header("last-event-id", "yesterday")
            .send()
            .await?;
        assert_eq!(refused.status(), 400);
        let problem: Value = refused.json().await?;
        assert_eq!(problem["errors"][0]["field"], "Last-Event-ID");
        assert_eq!(problem["errors"][0]["location"], "header");

        // The token in the query, for an EventSource; not in two places at once.
        let both = client
            .get(format!("{url}?access_token={admin_a}"))
            .bearer_auth(&admin_a)
            .send()
            .await?;
        assert_eq!(both.status(), 400);
        let mut by_query =
            SseClient::open(format!("{url}?access_token={admin_a}"), None, None).await?;
        assert_eq!(by_query.next_message().await?.event, "subscribed");
        Ok(())
    }
);

backend_test!(
    a_token_that_expires_ends_the_stream_with_a_clear_message,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org_a = bootstrapped(&s, "expiry").await?;
        let address = listen(s.app.clone()).await?;
        let short = cairn_policy::mint(&admin_of(org_a), SECRET, Duration::from_secs(2))?;
        let mut feed = SseClient::open(
            format!("http://{address}/v1/events/stream?views=false"),
            Some(&short),
            None,
        )
        .await?;
        let subscribed = feed.next_message().await?;
        let head = subscribed.data["head"].as_i64().context("head")?;
        assert!(subscribed.data["expires_at"].is_string());
        let end = feed.next_message().await?;
        assert_eq!(end.event, "end", "{end:?}");
        assert_eq!(end.data["reason"], "token_expired");
        assert_eq!(end.data["resume_after"], head);
        assert!(
            end.data["message"]
                .as_str()
                .is_some_and(|m| m.contains("expired") && m.contains("Last-Event-ID")),
            "{}",
            end.data
        );
        assert!(feed.next().await?.is_none(), "the stream is closed");
        Ok(())
    }
);

backend_test!(
    the_websocket_carries_the_same_feed_and_closes_when_the_token_expires,
    |t: TestDb| async move {
        use futures::StreamExt as _;
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
        let s = server(t).await?;
        let org_a = bootstrapped(&s, "socket").await?;
        let address = listen(s.app.clone()).await?;
        let short = cairn_policy::mint(&admin_of(org_a), SECRET, Duration::from_secs(6))?;
        let mut request =
            format!("ws://{address}/v1/events/ws?after=0&heartbeat=1").into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {short}").parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
        let mut messages = Vec::new();
        let mut pings = 0;
        let close = loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .context("no frame within 10 s")?
                .context("the socket ended without a close frame")??;
            match frame {
                tungstenite::Message::Text(text) => {
                    messages.push(serde_json::from_str::<Value>(&text)?)
                }
                tungstenite::Message::Close(close) => break close,
                tungstenite::Message::Ping(_) => pings += 1,
                _ => {}
            }
        };
        let types: Vec<&str> = messages.iter().filter_map(|m| m["type"].as_str()).collect();
        assert_eq!(types.first(), Some(&"subscribed"));
        let events = messages.iter().filter(|m| m["type"] == "event").count();
        assert_eq!(events, org_positions(&s, org_a).await?.len());
        assert!(types.contains(&"heartbeat"), "{types:?}");
        assert_eq!(types.last(), Some(&"end"));
        assert!(pings >= 1, "the server pings, so a dead client is noticed");
        let close = close.context("a close frame with a code")?;
        assert_eq!(u16::from(close.code), 4001, "token expired");
        Ok(())
    }
);

backend_test!(
    the_feed_and_the_api_serve_an_older_event_at_its_current_version,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org = bootstrapped(&s, "feed-versions").await?;
        // A user.invited a release before wrote: payload version 1, without invited_by.
        let user = cairn_types::StreamId::new_v7();
        let v1 = serde_json::json!({
            "org_id": org,
            "email": "grace@example.com",
            "name": "Grace Hopper",
            "roles": ["clinician"],
            "invitation_id": cairn_types::InvitationId::new_v7(),
        });
        let written = cairn_testkit::written_by_a_release(
            s.domain.store().db(),
            cairn_log::AppendRequest::new(
                cairn_types::StreamType::parse("user")?,
                user,
                vec![
                    cairn_log::NewEvent::new(
                        cairn_types::EventType::parse("user.invited")?,
                        v1,
                        cairn_types::Metadata::new().org(org),
                    )
                    .at_version(1),
                ],
            ),
        )
        .await?;
        let stored = &written[0];

        let check = |event: &Value| {
            assert_eq!(event["stored_version"], 1, "{event}");
            assert_eq!(event["event_version"], 3, "{event}");
            assert_eq!(event["event_data"]["invited_by"], Value::Null, "{event}");
            assert_eq!(event["event_data"]["name"], "Grace Hopper", "{event}");
        };
        let one = common::call(
            axum::http::Method::GET,
            format!("/v1/events/{}", stored.event_id),
        )
        .as_(&admin_of(org))
        .send(&s.app)
        .await;
        assert_eq!(one.status, 200, "{:?}", one.body);
        check(&one.body);

        let address = listen(s.app.clone()).await?;
        let after = stored.position.get() - 1;
        let url = format!("http://{address}/v1/events/stream?after={after}&heartbeat=1");
        let mut feed = SseClient::open(url, Some(&token(&admin_of(org))), None).await?;
        assert_eq!(feed.next_message().await?.event, "subscribed");
        let delivered = feed.next_message().await?;
        assert_eq!(delivered.id, Some(stored.position.get()));
        check(&delivered.data["event"]);
        Ok(())
    }
);

backend_test!(
    a_change_to_the_subscribers_own_access_ends_their_stream_and_no_one_elses,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org = bootstrapped(&s, "access").await?;
        let mut reader = s.t.db().reader().await?;
        let ada = cairn_domain::queries::users(
            &mut reader.conn(),
            org,
            cairn_domain::queries::Page::default(),
        )
        .await?
        .into_iter()
        .find(|u| u.status == "active")
        .context("the active admin")?
        .id;
        drop(reader);
        let address = listen(s.app.clone()).await?;
        let url = format!("http://{address}/v1/events/stream?views=false");
        let as_ada = token(&Principal::User {
            user_id: ada,
            org_id: org,
            roles: std::collections::BTreeSet::from([Role::Admin]),
        });
        let mut hers = SseClient::open(url.clone(), Some(&as_ada), None).await?;
        let head = hers.next_message().await?.data["head"]
            .as_i64()
            .context("head")?;
        let mut others =
            SseClient::open(url.clone(), Some(&token(&platform_admin())), None).await?;
        assert_eq!(others.next_message().await?.event, "subscribed");

        s.domain
            .change_roles(
                &cairn_domain::CommandContext::new(platform_admin()),
                ada,
                &cairn_domain::RolesRequest {
                    roles: vec!["admin".into(), "viewer".into()],
                },
            )
            .await?;
        let end = hers.next_message().await?;
        assert_eq!(end.event, "end", "{end:?}");
        assert_eq!(end.data["reason"], "access_changed");
        assert_eq!(end.data["resume_after"], head, "nothing after it was sent");
        assert!(hers.next().await?.is_none(), "her stream is closed");
        let theirs = others.next_message().await?;
        assert_eq!(
            (
                theirs.event.as_str(),
                theirs.data["event"]["event_type"].as_str()
            ),
            ("event", Some("user.roles_changed")),
            "{theirs:?}"
        );
        // She still stands: she subscribes again, from where she was.
        let mut again = SseClient::open(url, Some(&as_ada), Some(head)).await?;
        assert_eq!(again.next_message().await?.event, "subscribed");
        Ok(())
    }
);
