//! A request's timeline, on both backends: a bootstrap over HTTP, followed by a live
//! subscriber, read back as one ordered timeline with every hop.

use std::time::Duration;

use anyhow::Context as _;
use axum::http::{Method, StatusCode};
use cairn_policy::{Role, Scope};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::CorrelationId;
use serde_json::Value;

use crate::common::{self, bootstrap_body, call, platform_admin, server, service, token, user};

backend_test!(
    the_timeline_of_a_bootstrap_has_every_hop_in_order,
    |t: TestDb| async move {
        let s = server(t).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = s.app.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });

        // A live subscriber, so that deliveries are hops too.
        let watcher = token(&service(&[Scope::EventsSubscribe]));
        let mut feed = reqwest::Client::new()
            .get(format!("http://{address}/v1/events/stream?views=false"))
            .bearer_auth(&watcher)
            .send()
            .await?;
        assert_eq!(feed.status(), 200);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = feed.chunk().await {
                let _ = seen_tx.send(String::from_utf8_lossy(&chunk).into_owned());
            }
        });

        let correlation_id = CorrelationId::new_v7();
        let accepted = call(Method::POST, "/v1/organizations")
            .as_(&platform_admin())
            .header("x-correlation-id", &correlation_id.to_string())
            .json(bootstrap_body("traced"))
            .send(&s.app)
            .await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED, "{:?}", accepted.body);
        s.domain.engine().run_until_idle().await?;
        // Wait until the subscriber has been sent the run's last event.
        let mut stream = String::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !stream.contains("workflow.completed") {
                stream.push_str(&seen_rx.recv().await.context("the feed ended")?);
            }
            anyhow::Ok(())
        })
        .await
        .context("the subscriber never saw the workflow complete")??;

        let trace = call(Method::GET, format!("/v1/traces/{correlation_id}"))
            .as_(&platform_admin())
            .send(&s.app)
            .await;
        assert_eq!(trace.status, StatusCode::OK, "{:?}", trace.body);
        let entries = trace.body["entries"].as_array().context("entries")?;
        let hops: Vec<&str> = entries.iter().filter_map(|e| e["hop"].as_str()).collect();
        for hop in ["http", "event", "workflow", "step", "email", "delivery"] {
            assert!(hops.contains(&hop), "no {hop} hop in {hops:?}");
        }
        assert_eq!(hops[0], "http", "the request comes first: {hops:?}");
        assert!(
            entries[0]["name"]
                .as_str()
                .is_some_and(|n| n.contains("POST /v1/organizations") && n.contains("202")),
            "{}",
            entries[0]
        );
        let offsets: Vec<f64> = entries
            .iter()
            .filter_map(|e| e["offset_ms"].as_f64())
            .collect();
        assert!(
            offsets.windows(2).all(|pair| pair[0] <= pair[1]),
            "in order: {offsets:?}"
        );
        let named =
            |hop: &str| -> Vec<&Value> { entries.iter().filter(|e| e["hop"] == hop).collect() };
        assert_eq!(
            named("email").len(),
            2,
            "the admin's and Grace's invitations"
        );
        for entry in named("email")
            .iter()
            .chain(named("step").iter())
            .chain(named("http").iter())
        {
            assert!(
                entry["duration_ms"].as_f64().is_some(),
                "a duration: {entry}"
            );
        }
        assert!(
            named("event")
                .iter()
                .all(|e| e["detail"]["handler"] == "applied" && e["at"].is_string()),
            "each event with its handler's outcome and when it ran"
        );
        let last_workflow = named("workflow")
            .last()
            .copied()
            .context("a workflow hop")?;
        assert!(
            last_workflow["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("completed")),
            "{last_workflow}"
        );
        assert_eq!(trace.body["errors"], 0);
        assert_eq!(trace.body["hops"], entries.len());

        // The organization's own admin sees its part of it, not the platform's request.
        let org_id: cairn_types::OrgId = serde_json::from_value(accepted.body["org_id"].clone())?;
        let own = call(Method::GET, format!("/v1/traces/{correlation_id}"))
            .as_(&user(org_id, Role::Admin))
            .send(&s.app)
            .await;
        assert_eq!(own.status, StatusCode::OK);
        let own_hops: Vec<&str> = own.body["entries"]
            .as_array()
            .context("entries")?
            .iter()
            .filter_map(|e| e["hop"].as_str())
            .collect();
        assert!(!own_hops.contains(&"http"), "{own_hops:?}");
        assert!(own_hops.contains(&"step"));
        let stranger = call(Method::GET, format!("/v1/traces/{correlation_id}"))
            .as_(&user(cairn_types::OrgId::new_v7(), Role::Admin))
            .send(&s.app)
            .await;
        assert_eq!(stranger.status, StatusCode::NOT_FOUND);
        Ok(())
    }
);

backend_test!(
    a_failed_command_shows_the_handler_that_failed_it,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org = common::bootstrapped(&s, "broken-settings").await?;
        // The organizations projection refuses settings changes, as a broken table would.
        let script = match s.t.backend() {
            cairn_testkit::Backend::Sqlite => {
                "CREATE TRIGGER refuse_settings BEFORE UPDATE OF direct_care_settings ON organizations
                 BEGIN SELECT RAISE(ABORT, 'the organizations table is broken'); END"
            }
            cairn_testkit::Backend::Postgres => {
                "CREATE FUNCTION refuse_settings() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'the organizations table is broken'; END $$;
                 CREATE TRIGGER refuse_settings BEFORE UPDATE OF direct_care_settings ON organizations
                 FOR EACH ROW EXECUTE FUNCTION refuse_settings();"
            }
        };
        let mut tx = s.t.db().begin().await?;
        tx.conn().execute_script(script).await?;
        tx.commit().await?;
        let failed = call(Method::PUT, format!("/v1/organizations/{org}/direct-care-settings"))
            .as_(&platform_admin())
            .json(serde_json::json!({"visit_verification": true, "client_assignment": true, "max_caseload": 12}))
            .send(&s.app)
            .await;
        assert_eq!(
            failed.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{:?}",
            failed.body
        );
        assert!(
            failed.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("the organizations table is broken")),
            "{}",
            failed.body
        );
        let correlation_id = failed.body["correlation_id"]
            .as_str()
            .context("a correlation id")?;
        let trace = call(Method::GET, format!("/v1/traces/{correlation_id}"))
            .as_(&platform_admin())
            .send(&s.app)
            .await;
        assert_eq!(trace.status, StatusCode::OK, "{:?}", trace.body);
        let entries = trace.body["entries"].as_array().context("entries")?;
        let handler = entries
            .iter()
            .find(|e| e["hop"] == "handler")
            .context("the failed handler is in the timeline")?;
        assert_eq!(handler["status"], "failed");
        assert!(
            handler["error"]
                .as_str()
                .is_some_and(|e| e.contains("the organizations table is broken")),
            "{handler}"
        );
        assert!(
            entries
                .iter()
                .any(|e| e["hop"] == "http" && e["status"] == "failed")
        );
        Ok(())
    }
);
