//! The health of the chain, on both backends: the integration probe passing, the probe
//! naming the hop that broke, the alerts, and the metrics.

use axum::http::{Method, StatusCode};
use cairn_policy::Role;
use cairn_testkit::{Backend, TestDb, backend_test};
use cairn_types::OrgId;
use serde_json::Value;

use crate::common::{self, bootstrapped, call, platform_admin, server, server_with, user};

fn hop<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["probe"]["hops"]
        .as_array()
        .and_then(|hops| hops.iter().find(|h| h["hop"] == name))
        .unwrap_or_else(|| panic!("no {name} hop in {health}"))
}

fn alert<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["alerts"]
        .as_array()
        .and_then(|alerts| alerts.iter().find(|a| a["alert"] == name))
        .unwrap_or_else(|| panic!("no {name} alert in {health}"))
}

async fn metrics(s: &common::Server) -> String {
    let reply = call(Method::GET, "/metrics").send(&s.app).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .starts_with("application/openmetrics-text")
    );
    reply.body.as_str().expect("text").to_owned()
}

backend_test!(
    the_probe_passes_every_hop_and_its_data_stays_out_of_tenant_reads,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org = bootstrapped(&s, "probed").await?;
        s.listen().await?;
        let _engine = s.run_engine();

        let health = call(Method::GET, "/health/integration").send(&s.app).await;
        assert_eq!(health.status, StatusCode::OK, "{}", health.body);
        let body = &health.body;
        assert_eq!(body["status"], "ok", "{body}");
        assert_eq!(body["probe"]["ok"], true);
        for name in ["http", "event", "projection", "realtime", "workflow"] {
            let hop = hop(body, name);
            assert_eq!(hop["ok"], true, "{hop}");
            assert!(
                hop["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
                "{hop}"
            );
        }
        assert!(
            body["alerts"]
                .as_array()
                .is_some_and(|alerts| alerts.iter().all(|a| a["active"] == false)),
            "{body}"
        );

        // The probe's request has a timeline like any other.
        let trace = call(
            Method::GET,
            format!(
                "/v1/traces/{}",
                body["probe"]["correlation_id"].as_str().unwrap_or_default()
            ),
        )
        .as_(&platform_admin())
        .send(&s.app)
        .await;
        assert_eq!(trace.status, StatusCode::OK, "{}", trace.body);
        let hops: Vec<&str> = trace.body["entries"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["hop"].as_str()).collect())
            .unwrap_or_default();
        for expected in ["http", "event", "step", "delivery", "probe"] {
            assert!(
                hops.contains(&expected),
                "no {expected} in the probe's timeline: {hops:?}"
            );
        }

        // Its synthetic data shows in no tenant's reads, nor in the platform's lists.
        for principal in [user(org, Role::Admin), platform_admin()] {
            let events = call(Method::GET, "/v1/events?limit=200")
                .as_(&principal)
                .send(&s.app)
                .await;
            assert!(
                events.body["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().all(|e| e["stream_type"] != "probe"
                        && e["event_metadata"]["org_id"] != OrgId::PROBE.to_string())),
                "{}",
                events.body
            );
            let workflows = call(Method::GET, "/v1/workflows?limit=200")
                .as_(&principal)
                .send(&s.app)
                .await;
            assert!(
                workflows.body["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().all(|w| w["kind"] != "probe")),
                "{}",
                workflows.body
            );
        }

        let text = metrics(&s).await;
        for expected in [
            "cairn_probe_ok 1",
            "cairn_events_appended_total{event_type=\"probe.pinged\"}",
            "cairn_http_requests_total{method=\"POST\",route=\"/v1/probe/pings\",status=\"202\"}",
            "cairn_handler_seconds_count{event_type=\"probe.pinged\"}",
            "cairn_workflows{status=\"completed\"}",
            "cairn_realtime_delivery_seconds_count",
            "cairn_alerts{alert=\"failed_events\"} 0",
            "cairn_probe_hop_seconds{hop=\"realtime\"}",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        Ok(())
    }
);

backend_test!(the_probe_names_the_hop_that_broke, |t: TestDb| async move {
    let s = server(t).await?;
    s.listen().await?;
    // The probe's projection refuses its rows, as a broken table would.
    let script = match s.t.backend() {
        Backend::Sqlite => {
            "CREATE TRIGGER break_probe BEFORE INSERT ON probe_pings
                 BEGIN SELECT RAISE(ABORT, 'probe_pings is broken'); END"
        }
        Backend::Postgres => {
            "CREATE FUNCTION break_probe() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'probe_pings is broken'; END $$;
                 CREATE TRIGGER break_probe BEFORE INSERT ON probe_pings FOR EACH ROW
                 EXECUTE FUNCTION break_probe();"
        }
    };
    let mut tx = s.t.db().begin().await?;
    tx.conn().execute_script(script).await?;
    tx.commit().await?;
    let _engine = s.run_engine();

    let health = call(Method::GET, "/health/integration").send(&s.app).await;
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        health.body
    );
    let body = &health.body;
    assert_eq!(body["status"], "failing");
    assert_eq!(body["probe"]["broken"], "projection", "{body}");
    let projection = hop(body, "projection");
    assert!(
        projection["error"]
            .as_str()
            .is_some_and(|e| e.contains("probe_pings is broken") && e.contains("P9003")),
        "{projection}"
    );
    for working in ["http", "event", "realtime", "workflow"] {
        assert_eq!(hop(body, working)["ok"], true, "{working}: {body}");
    }
    assert_eq!(alert(body, "probe_failing")["active"], true);
    assert!(
        alert(body, "probe_failing")["message"]
            .as_str()
            .is_some_and(|m| m.contains("projection")),
        "{body}"
    );
    assert_eq!(alert(body, "failed_events")["value"], 1);
    let text = metrics(&s).await;
    for expected in [
        "cairn_probe_ok 0",
        "cairn_alerts{alert=\"probe_failing\"} 1",
        "cairn_alerts{alert=\"failed_events\"} 1",
        "cairn_events_failed_total{event_type=\"probe.pinged\",code=\"P9003\"}",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    Ok(())
});

backend_test!(
    without_a_workflow_engine_the_probe_says_so,
    |t: TestDb| async move {
        let s = server_with(
            t,
            cairn_http::Options {
                thresholds: cairn_domain::reads::Thresholds {
                    stuck_after: chrono::Duration::zero(),
                    unprocessed_after: chrono::Duration::zero(),
                },
                ..cairn_http::Options::default()
            },
        )
        .await?;
        s.listen().await?;
        // No engine runs: the probe's workflow never moves, nor does a bootstrap.
        let accepted = call(Method::POST, "/v1/organizations")
            .as_(&platform_admin())
            .json(common::bootstrap_body("unattended"))
            .send(&s.app)
            .await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED);
        // And an event stored without going through the dispatcher has no outcome.
        let mut tx = s.t.db().begin().await?;
        if let cairn_log::Prepared::New(pending) = tx
            .prepare_append(cairn_log::AppendRequest::new(
                cairn_types::StreamType::parse("test")?,
                cairn_types::StreamId::new_v7(),
                vec![cairn_log::NewEvent::new(
                    cairn_types::EventType::parse("test.pinged")?,
                    serde_json::json!({}),
                    cairn_types::Metadata::new(),
                )],
            ))
            .await?
        {
            tx.write_append(pending).await?;
        }
        tx.commit().await?;

        let health = call(Method::GET, "/health/integration").send(&s.app).await;
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = &health.body;
        assert_eq!(body["probe"]["broken"], "workflow", "{body}");
        assert!(
            hop(body, "workflow")["error"]
                .as_str()
                .is_some_and(|e| e.contains("is a workflow engine running")),
            "{body}"
        );
        assert_eq!(alert(body, "stuck_workflows")["active"], true, "{body}");
        assert!(alert(body, "stuck_workflows")["value"].as_i64() >= Some(1));
        assert_eq!(alert(body, "unprocessed_events")["value"], 1, "{body}");
        let text = metrics(&s).await;
        assert!(
            text.contains("cairn_alerts{alert=\"stuck_workflows\"} 1"),
            "{text}"
        );
        assert!(text.contains("cairn_events_unprocessed 1"), "{text}");
        Ok(())
    }
);

backend_test!(
    events_a_newer_build_wrote_make_the_server_unready_and_raise_an_alert,
    |t: TestDb| async move {
        let s = server(t).await?;
        let ready = call(Method::GET, "/health/ready").send(&s.app).await;
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

        // A newer build's user.invited, at a version this build does not read: written
        // under the dispatcher, as that build's own append would have been.
        let mut tx = s.t.db().begin().await?;
        let request = cairn_log::AppendRequest::new(
            cairn_types::StreamType::parse("user")?,
            cairn_types::StreamId::new_v7(),
            vec![
                cairn_log::NewEvent::new(
                    cairn_types::EventType::parse("user.invited")?,
                    serde_json::json!({"shape": "of a later release"}),
                    cairn_types::Metadata::new(),
                )
                .at_version(9),
            ],
        );
        if let cairn_log::Prepared::New(mut pending) = tx.prepare_append(request).await? {
            pending.record(0, &cairn_log::Outcome::Applied, chrono::Utc::now());
            tx.write_append(pending).await?;
        }
        tx.commit().await?;

        let ready = call(Method::GET, "/health/ready").send(&s.app).await;
        assert_eq!(
            ready.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            ready.body
        );
        let detail = ready.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("user.invited v9 (this build reads v3)"),
            "{}",
            ready.body
        );
        let health = call(Method::GET, "/health/integration").send(&s.app).await;
        let newer = alert(&health.body, "newer_events");
        assert_eq!(
            (newer["active"].as_bool(), newer["value"].as_i64()),
            (Some(true), Some(1))
        );
        assert!(
            newer["message"]
                .as_str()
                .unwrap_or_default()
                .contains("user.invited v9"),
            "{newer}"
        );
        Ok(())
    }
);
