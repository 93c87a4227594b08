//! The live feed on both backends: resuming without gaps or duplicates under load,
//! tenant isolation, refusals at subscribe time, token expiry, and wake-ups from
//! another connection pool (another process).

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_dispatch::{EventStore, Registry};
use cairn_log::{AppendRequest, NewEvent};
use cairn_policy::{Principal, Role, Scope};
use cairn_realtime::{EndReason, Feed, Message, Selector, SubscribeError, SubscribeRequest};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{
    CorrelationId, EventType, Metadata, OrgId, Position, StreamId, StreamType, UserId,
};
use serde_json::json;

fn registry() -> Registry {
    Registry::builder()
        .admin_routes()
        .build()
        .expect("a valid registry")
}

async fn store(t: &TestDb) -> anyhow::Result<EventStore> {
    t.migrate(cairn_dispatch::MIGRATIONS).await?;
    Ok(EventStore::new(t.db().clone(), registry()))
}

/// Appends one `test.pinged` event for `org`; returns its position.
async fn ping(store: &EventStore, org: Option<OrgId>, n: u64) -> anyhow::Result<Position> {
    let mut metadata = Metadata::with_correlation(CorrelationId::new_v7());
    metadata.org_id = org;
    let appended = store
        .append(AppendRequest::new(
            StreamType::parse("test")?,
            StreamId::new_v7(),
            vec![NewEvent::new(
                EventType::parse("test.pinged")?,
                json!({ "n": n }),
                metadata,
            )],
        ))
        .await?;
    Ok(appended.events[0].event.position)
}

fn service(scopes: &[Scope]) -> Principal {
    Principal::Service {
        name: "dashboard".into(),
        scopes: scopes.iter().copied().collect(),
    }
}

fn admin_of(org: OrgId) -> Principal {
    Principal::User {
        user_id: UserId::new_v7(),
        org_id: org,
        roles: BTreeSet::from([Role::Admin]),
    }
}

fn request(principal: Principal, after: Position) -> SubscribeRequest {
    SubscribeRequest {
        ends_on: &[],
        principal,
        expires_at: None,
        selector: Selector::default(),
        after: Some(after),
        heartbeat: Duration::from_millis(200),
        correlation_id: CorrelationId::new_v7(),
        transport: "internal",
    }
}

/// The next message, or an error after `within`. Every message is checked against
/// its contract on the way.
async fn next(
    subscription: &mut cairn_realtime::Subscription,
    within: Duration,
) -> anyhow::Result<Message> {
    let message = tokio::time::timeout(within, subscription.next())
        .await
        .map_err(|_| anyhow::anyhow!("no message within {within:?}"))?
        .ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
    assert_has_what_its_contract_requires(&message)?;
    Ok(message)
}

/// Every field the `Message` schema requires of this message's type, and of the
/// objects it names (a delivery's event), is in its JSON: a field the server may leave
/// out must not be promised.
fn assert_has_what_its_contract_requires(message: &Message) -> anyhow::Result<()> {
    let schema = serde_json::to_value(schemars::schema_for!(Message))?;
    let json = serde_json::to_value(message)?;
    let definition = |reference: &serde_json::Value| {
        let name = reference.as_str()?.rsplit('/').next()?;
        schema["$defs"].get(name)
    };
    let variant = schema["oneOf"]
        .as_array()
        .and_then(|variants| {
            variants
                .iter()
                .find(|v| v["properties"]["type"]["const"] == json["type"])
        })
        .ok_or_else(|| anyhow::anyhow!("no variant of the contract for {json}"))?;
    let mut objects = vec![(variant.clone(), json.clone())];
    if let Some(body) = definition(&variant["$ref"]) {
        objects.push((body.clone(), json.clone()));
        if let Some(event) = body["properties"]["event"].get("$ref").and_then(definition) {
            objects.push((event.clone(), json["event"].clone()));
        }
    }
    for (object, value) in objects {
        for field in object["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap_or_default();
            anyhow::ensure!(
                value.get(field).is_some(),
                "the contract requires `{field}` but the message has none: {json}"
            );
        }
    }
    Ok(())
}

/// Collects the positions of the next `n` events (skipping heartbeats).
async fn events(
    subscription: &mut cairn_realtime::Subscription,
    n: usize,
) -> anyhow::Result<Vec<(Position, Option<OrgId>)>> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match next(subscription, Duration::from_secs(10)).await? {
            Message::Event(delivery) => {
                seen.push((delivery.position, delivery.event.metadata.org_id))
            }
            Message::End(end) => anyhow::bail!("ended: {end:?}"),
            _ => {}
        }
    }
    Ok(seen)
}

backend_test!(
    resuming_after_a_disconnect_misses_nothing_and_repeats_nothing_under_load,
    |t: TestDb| async move {
        const WRITERS: u64 = 3;
        const PER_WRITER: u64 = 150;
        let store = store(&t).await?;
        let feed = Feed::new(t.db().clone(), registry());
        let before = ping(&store, None, 0).await?;

        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for n in 0..PER_WRITER {
                    ping(&store, Some(OrgId::new_v7()), w * 1_000 + n).await?;
                    if n % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
                anyhow::Ok(())
            }));
        }

        // Read a while, drop the connection, come back with the last position seen
        // (from an event, or from a heartbeat), again and again while the writers
        // write.
        let mut delivered: Vec<Position> = Vec::new();
        let mut resume = before;
        let mut reconnects = 0;
        let total = (WRITERS * PER_WRITER) as usize;
        while delivered.len() < total {
            let mut subscription = feed
                .subscribe(request(service(&[Scope::EventsSubscribe]), resume))
                .await?;
            let take = 17 + reconnects * 13 % 41;
            let mut taken = 0;
            let mut progress = tokio::time::Instant::now();
            while taken < take && delivered.len() < total {
                anyhow::ensure!(
                    progress.elapsed() < Duration::from_secs(10),
                    "no event for 10 s after {} of {total}: {:?} (resuming after {resume})",
                    delivered.len(),
                    delivered.last()
                );
                match next(&mut subscription, Duration::from_secs(10)).await? {
                    Message::Event(delivery) => {
                        delivered.push(delivery.position);
                        resume = delivery.position;
                        taken += 1;
                        progress = tokio::time::Instant::now();
                    }
                    Message::Heartbeat(heartbeat) => resume = heartbeat.position,
                    Message::Subscribed(subscribed) => assert_eq!(subscribed.after, resume),
                    Message::End(end) => anyhow::bail!("ended: {end:?}"),
                }
            }
            drop(subscription);
            reconnects += 1;
            if reconnects % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for writer in writers {
            writer.await??;
        }
        let expected: Vec<Position> = (before.get() + 1..=before.get() + total as i64)
            .map(Position::new)
            .collect();
        assert!(reconnects > 10, "only {reconnects} reconnects");
        assert_eq!(
            delivered, expected,
            "every event once, in order, across {reconnects} reconnects"
        );
        Ok(())
    }
);

backend_test!(
    a_tenant_receives_only_its_own_events_and_refusals_come_at_subscribe_time,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let feed = Feed::new(t.db().clone(), registry());
        let (org_a, org_b) = (OrgId::new_v7(), OrgId::new_v7());
        let mut tenant = feed
            .subscribe(request(admin_of(org_a), Position::START))
            .await?;
        let mut platform = feed
            .subscribe(request(service(&[Scope::EventsSubscribe]), Position::START))
            .await?;
        let mut probe_watcher = feed
            .subscribe(SubscribeRequest {
                ends_on: &[],
                selector: Selector {
                    org_id: Some(OrgId::PROBE),
                    ..Selector::default()
                },
                ..request(service(&[Scope::EventsSubscribe]), Position::START)
            })
            .await?;
        for subscription in [&mut tenant, &mut platform, &mut probe_watcher] {
            let first = next(subscription, Duration::from_secs(5)).await?;
            assert!(matches!(first, Message::Subscribed(_)), "{first:?}");
        }
        let mut written = Vec::new();
        for (n, org) in [
            Some(org_a),
            Some(org_b),
            None,
            Some(OrgId::PROBE),
            Some(org_a),
        ]
        .into_iter()
        .enumerate()
        {
            written.push((ping(&store, org, n as u64).await?, org));
        }
        let mine = events(&mut tenant, 2).await?;
        assert_eq!(
            mine,
            [written[0], written[4]],
            "organization A's admin receives A's events only"
        );
        let all = events(&mut platform, 4).await?;
        assert_eq!(
            all,
            [written[0], written[1], written[2], written[4]],
            "the scoped service receives every tenant's, but not the probe's"
        );
        assert_eq!(events(&mut probe_watcher, 1).await?, [written[3]]);
        // Nothing else arrives for the tenant: only heartbeats, which carry the
        // position read so far.
        match next(&mut tenant, Duration::from_secs(5)).await? {
            Message::Heartbeat(heartbeat) => assert_eq!(heartbeat.position, written[4].0),
            other => panic!("expected a heartbeat, got {other:?}"),
        }

        // The seed's incident: a service account without the scope is refused loudly,
        // not left "subscribed" to silence.
        let refused = feed
            .subscribe(request(service(&[Scope::EventsRead]), Position::START))
            .await
            .expect_err("no events:subscribe scope");
        assert!(matches!(&refused, SubscribeError::Denied(_)), "{refused:?}");
        assert!(
            refused.to_string().contains("events:subscribe"),
            "{refused}"
        );
        let across = feed
            .subscribe(SubscribeRequest {
                ends_on: &[],
                selector: Selector {
                    org_id: Some(org_b),
                    ..Selector::default()
                },
                ..request(admin_of(org_a), Position::START)
            })
            .await
            .expect_err("another tenant's events");
        assert!(across.to_string().contains(&org_b.to_string()), "{across}");
        let anonymous = feed
            .subscribe(request(Principal::Anonymous, Position::START))
            .await
            .expect_err("no credentials");
        assert!(
            anonymous.to_string().contains("authentication required"),
            "{anonymous}"
        );
        Ok(())
    }
);

backend_test!(
    a_subscription_ends_when_its_token_expires_and_says_where_to_resume,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let feed = Feed::new(t.db().clone(), registry());
        let org = OrgId::new_v7();
        let position = ping(&store, Some(org), 1).await?;
        let mut subscription = feed
            .subscribe(SubscribeRequest {
                ends_on: &[],
                expires_at: Some(chrono::Utc::now() + chrono::Duration::milliseconds(700)),
                ..request(admin_of(org), Position::START)
            })
            .await?;
        // The event is delivered unless the token ran out first (a slow machine);
        // either way the end says to resume after what was delivered.
        let mut delivered = Vec::new();
        let end = loop {
            match next(&mut subscription, Duration::from_secs(5)).await? {
                Message::End(end) => break end,
                Message::Event(delivery) => {
                    delivered.push((delivery.position, delivery.event.metadata.org_id))
                }
                Message::Heartbeat(_) | Message::Subscribed(_) => {}
            }
        };
        assert!(
            delivered.is_empty() || delivered == [(position, Some(org))],
            "{delivered:?}"
        );
        assert_eq!(end.reason, EndReason::TokenExpired);
        let last = delivered.last().map_or(Position::START, |(at, _)| *at);
        assert_eq!(end.resume_after, last);
        assert!(end.message.contains("expired"), "{}", end.message);
        assert!(subscription.next().await.is_none(), "nothing after the end");
        Ok(())
    }
);

backend_test!(
    an_event_from_another_connection_pool_is_delivered_live,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let feed = Feed::new(t.db().clone(), registry());
        let mut subscription = feed
            .subscribe(request(service(&[Scope::EventsSubscribe]), Position::START))
            .await?;
        assert!(matches!(
            next(&mut subscription, Duration::from_secs(5)).await?,
            Message::Subscribed(_)
        ));
        // Another pool, as another process: on PostgreSQL its NOTIFY wakes the feed,
        // on SQLite the head poll does.
        let elsewhere = EventStore::new(t.connect_again().await?, registry());
        let position = ping(&elsewhere, None, 7).await?;
        assert_eq!(events(&mut subscription, 1).await?, [(position, None)]);
        drop(store);
        Ok(())
    }
);

backend_test!(
    closing_the_feed_ends_every_subscription,
    |t: TestDb| async move {
        let _store = store(&t).await?;
        let feed = Feed::new(t.db().clone(), registry());
        let mut subscription = feed
            .subscribe(request(service(&[Scope::EventsSubscribe]), Position::START))
            .await?;
        assert!(matches!(
            next(&mut subscription, Duration::from_secs(5)).await?,
            Message::Subscribed(_)
        ));
        feed.close();
        loop {
            match next(&mut subscription, Duration::from_secs(5)).await? {
                Message::End(end) => {
                    assert_eq!(end.reason, EndReason::ServerShutdown);
                    break;
                }
                Message::Heartbeat(_) => {}
                other => panic!("{other:?}"),
            }
        }
        Ok(())
    }
);
