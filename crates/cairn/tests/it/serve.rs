//! `cairn serve` as processes, on both backends: an event committed by one process
//! reaches the subscribers of another (LISTEN/NOTIFY on PostgreSQL, the head poll on
//! SQLite), `cairn health` checks a live server's whole chain, a shutdown ends
//! open subscriptions with a message instead of hanging, and spans reach an OTLP
//! collector as one trace per correlation id.

use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{TestDb, backend_test};
use tokio::io::AsyncBufReadExt as _;

use crate::common::{assert_exit, bootstrap_request, cairn_in, json_of, outbox, stdout, token};

/// A running `cairn serve`, killed when dropped.
struct Served {
    child: tokio::process::Child,
    base: String,
    /// What the server has written to stderr, kept to explain a failure.
    log: std::sync::Arc<std::sync::Mutex<String>>,
    _outbox: tempfile::TempDir,
}

impl Served {
    fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }
}

async fn serve(url: &str, worker: &str) -> anyhow::Result<Served> {
    serve_with(url, worker, &[], &[]).await
}

/// `cairn serve` with more global arguments and environment variables.
async fn serve_with(
    url: &str,
    worker: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<Served> {
    let (outbox, mail) = outbox()?;
    let mut command = crate::common::cairn_tokio();
    command
        .args([
            "--database-url",
            url,
            "--mail-url",
            &mail,
            "--worker-id",
            worker,
        ])
        .args(args)
        .args(["serve", "--addr", "127.0.0.1:0", "--probe-interval", "0"])
        .envs(envs.iter().copied());
    for variable in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        if !envs.iter().any(|(name, _)| *name == variable) {
            command.env_remove(variable);
        }
    }
    let mut child = command
        .env_remove("CAIRN_DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return anyhow::Ok(rest.trim().to_owned());
            }
        }
        anyhow::bail!("cairn serve exited before listening")
    })
    .await
    .context("cairn serve did not listen within 30 s")??;
    // Keep reading stderr so the process never blocks on a full pipe.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    tokio::spawn({
        let log = log.clone();
        async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut log) = log.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        }
    });
    Ok(Served {
        child,
        base,
        log,
        _outbox: outbox,
    })
}

/// Reads Server-Sent Events until `wanted` returns true for one; returns the text read.
async fn read_until(
    response: &mut reqwest::Response,
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let mut text = String::new();
    tokio::time::timeout(within, async {
        while !wanted(&text) {
            match response.chunk().await? {
                Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                None => anyhow::bail!("the stream ended: {text}"),
            }
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("not seen within {within:?}; read so far:\n{text}"))??;
    Ok(text)
}

backend_test!(
    an_event_committed_by_one_server_reaches_the_subscribers_of_another,
    |t: TestDb| async move {
        let a = serve(t.url(), "server-a").await?;
        let b = serve(t.url(), "server-b").await?;
        let token = token(t.url(), &["--platform-admin", "ops"]).await?;
        let client = reqwest::Client::new();

        let mut feed = client
            .get(format!(
                "{}/v1/events/stream?views=false&heartbeat=1",
                a.base
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(feed.status(), 200);
        read_until(&mut feed, Duration::from_secs(10), |text| {
            text.contains("event: subscribed")
        })
        .await?;

        let accepted = client
            .post(format!("{}/v1/organizations", b.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(bootstrap_request("cross-process"))
            .send()
            .await?;
        assert_eq!(accepted.status(), 202, "{}", accepted.text().await?);
        let accepted: serde_json::Value = accepted.json().await?;
        let org_id = accepted["org_id"].as_str().context("org_id")?.to_owned();
        // Server B's engine (or A's) runs the bootstrap; A's subscriber sees it all.
        let seen = read_until(&mut feed, Duration::from_secs(20), |text| {
            text.contains("organization.bootstrap.completed")
        })
        .await?;
        assert!(seen.contains(&org_id), "the events of the new organization");
        // This one was committed by server B's request handler, not by any engine.
        assert!(seen.contains("organization.bootstrap.initiated"));
        assert!(seen.contains("organization.created"));

        // `cairn health` asks server A to test its own chain.
        let health = cairn_in(t.url(), &["health", "--url", &a.base], &[], None).await;
        let text = stdout(&health);
        assert_exit(&health, 0);
        for hop in ["http", "event", "projection", "realtime", "workflow"] {
            assert!(
                text.lines()
                    .any(|line| line.contains('✓') && line.contains(hop)),
                "{hop} in\n{text}"
            );
        }
        let json = cairn_in(t.url(), &["health", "--url", &b.base, "--json"], &[], None).await;
        assert_exit(&json, 0);
        assert_eq!(json_of(&json)["status"], "ok");
        let nobody = cairn_in(
            t.url(),
            &["health", "--url", "http://127.0.0.1:9"],
            &[],
            None,
        )
        .await;
        assert_exit(&nobody, 2);
        drop(b);
        drop(a);
        Ok(())
    }
);

backend_test!(
    stopping_a_server_ends_its_subscriptions_with_a_message,
    |t: TestDb| async move {
        // A short grace, so that the wait for the exit below is well past it.
        let mut a = serve_with(t.url(), "server-a", &[], &[("CAIRN_SHUTDOWN_GRACE", "2s")]).await?;
        let token = token(t.url(), &["--platform-admin", "ops"]).await?;
        let mut feed = reqwest::Client::new()
            .get(format!("{}/v1/events/stream", a.base))
            .bearer_auth(&token)
            .send()
            .await?;
        read_until(&mut feed, Duration::from_secs(10), |text| {
            text.contains("event: subscribed")
        })
        .await
        .with_context(|| format!("the server said:\n{}", a.log()))?;
        let pid = a.child.id().context("a pid")?;
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        assert!(killed.success());
        let text = read_until(&mut feed, Duration::from_secs(10), |text| {
            text.contains("server_shutdown")
        })
        .await
        .with_context(|| format!("the server said:\n{}", a.log()))?;
        assert!(text.contains("event: end"), "{text}");
        let status = tokio::time::timeout(Duration::from_secs(20), a.child.wait())
            .await
            .with_context(|| {
                format!(
                    "cairn serve did not stop within 20 s of SIGTERM; it said:\n{}",
                    a.log()
                )
            })??;
        assert!(status.success(), "{status}\n{}", a.log());
        Ok(())
    }
);

/// The spans an OTLP/HTTP collector on loopback has received.
#[derive(Clone, Default)]
struct Collector {
    spans: std::sync::Arc<
        std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>,
    >,
}

impl Collector {
    /// Listens on a loopback port; returns its base URL.
    async fn start(&self) -> anyhow::Result<String> {
        use prost::Message as _;
        let spans = self.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    let mut spans = spans.lock().expect("the collector's lock");
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(base)
    }

    fn spans_of(&self, trace: uuid::Uuid) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        self.spans
            .lock()
            .expect("the collector's lock")
            .iter()
            .filter(|(_, span)| span.trace_id == trace.as_bytes())
            .map(|(_, span)| span.clone())
            .collect()
    }
}

backend_test!(
    spans_reach_an_otlp_collector_as_one_trace_per_correlation_id,
    |t: TestDb| async move {
        let collector = Collector::default();
        let endpoint = collector.start().await?;
        let mut server = serve_with(
            t.url(),
            "server-a",
            &["--otlp-endpoint", &endpoint],
            &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        )
        .await?;
        let token = token(t.url(), &["--platform-admin", "ops"]).await?;
        let client = reqwest::Client::new();

        // A subscriber, so that deliveries are hops too.
        let mut feed = client
            .get(format!("{}/v1/events/stream?views=false", server.base))
            .bearer_auth(&token)
            .send()
            .await?;
        read_until(&mut feed, Duration::from_secs(10), |text| {
            text.contains("event: subscribed")
        })
        .await?;
        let reading = tokio::spawn(async move { while let Ok(Some(_)) = feed.chunk().await {} });

        // A bootstrap with a correlation id of the caller's: its request, the
        // handlers of its events, the saga's steps, its emails and the deliveries of
        // its events form one trace.
        let correlation = uuid::Uuid::now_v7();
        let accepted = client
            .post(format!("{}/v1/organizations", server.base))
            .bearer_auth(&token)
            .header("x-correlation-id", correlation.to_string())
            .header("content-type", "application/json")
            .body(bootstrap_request("traced"))
            .send()
            .await?;
        assert_eq!(accepted.status(), 202);
        let wanted = [
            "http.request",
            "cairn.handle",
            "cairn.workflow.step",
            "cairn.email",
            "cairn.delivery",
        ];
        let mut spans = Vec::new();
        for _ in 0..200 {
            spans = collector.spans_of(correlation);
            let emails = spans.iter().filter(|s| s.name == "cairn.email").count();
            if emails == 3
                && wanted
                    .iter()
                    .all(|name| spans.iter().any(|s| s.name == *name))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let names: std::collections::BTreeSet<&str> =
            spans.iter().map(|s| s.name.as_str()).collect();
        for name in wanted {
            assert!(names.contains(name), "no {name} span in {names:?}");
        }
        assert_eq!(
            spans.iter().filter(|s| s.name == "cairn.email").count(),
            3,
            "one span per email"
        );
        let request = spans
            .iter()
            .find(|s| s.name == "http.request")
            .context("the request's span")?;
        assert!(
            request.parent_span_id.is_empty(),
            "the request starts the trace"
        );
        // The command's handlers ran inside the request.
        assert!(
            spans
                .iter()
                .any(|s| s.name == "cairn.handle" && s.parent_span_id == request.span_id),
            "a handler span under the request's span"
        );
        let service = collector.spans.lock().expect("lock")[0].0.clone();
        assert!(service.contains("cairn"), "service.name: {service}");

        // A caller's traceparent: the request's span is a child of the caller's, and
        // the response names the request's span for the caller's next hop.
        let trace = uuid::Uuid::now_v7();
        let parent = "00f067aa0ba902b7";
        let response = client
            .get(format!("{}/v1/organizations", server.base))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{}-{parent}-01", trace.simple()))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        let answered = response
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .context("a traceparent in the response")?
            .to_owned();
        let mut child = None;
        for _ in 0..100 {
            child = collector
                .spans_of(trace)
                .into_iter()
                .find(|s| s.name == "http.request");
            if child.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let child = child.context("the traced request's span")?;
        assert_eq!(
            child.parent_span_id,
            u64::from_str_radix(parent, 16)?.to_be_bytes()
        );
        let span_id: String = child.span_id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(answered, format!("00-{}-{span_id}-01", trace.simple()));

        // A graceful stop exports what is still buffered: the span of a request
        // answered just before it is not lost.
        let last = uuid::Uuid::now_v7();
        let response = client
            .get(format!("{}/health/live", server.base))
            .header("x-correlation-id", last.to_string())
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        reading.abort();
        let pid = server.child.id().context("a pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait()).await??;
        assert!(status.success(), "{status}");
        assert!(
            collector
                .spans_of(last)
                .iter()
                .any(|s| s.name == "http.request"),
            "the last request's span reached the collector"
        );
        Ok(())
    }
);

#[tokio::test]
async fn a_bad_otlp_endpoint_is_refused_before_anything_runs() {
    let output = crate::common::cairn_tokio()
        .args(["--otlp-endpoint", "collector:4318", "status"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("cairn runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--otlp-endpoint") && stderr.contains("http:// or https://"),
        "{stderr}"
    );
}
