//! `cairn bench realtime`: the time from a command's HTTP request to the arrival of
//! its event at Server-Sent Events subscribers, with 1 and with 100 subscribers (or the
//! counts `--subscribers` names, e.g. 1,100,1000).
//!
//! The server runs in this process on a loopback port, as `cairn serve` would; the
//! subscribers and the commands are real HTTP clients over real sockets. A command is
//! `PUT /v1/organizations/{id}/direct-care-settings` (one event), sent one after
//! another; each subscriber follows `GET /v1/events/stream` (with views, the default)
//! and notes when each command's event arrives, by its correlation id.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use console::style;
use serde::Serialize;
use serde_json::json;

use cairn_dispatch::EventStore;
use cairn_domain::{CommandContext, Domain, DomainConfig};
use cairn_policy::{Authenticator, KeySource, Principal, Scope};
use cairn_types::{CorrelationId, OrgId};
use cairn_workflow::{EngineConfig, SystemClock};

use crate::app;
use crate::cli::BenchRealtimeArgs;
use crate::ui;

/// When each command was sent, by correlation id.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

#[derive(Debug, Serialize)]
struct Scenario {
    subscribers: usize,
    commands: u64,
    deliveries: u64,
    /// Deliveries expected and not seen within the wait after the last command.
    missing: u64,
    /// Events a subscriber received more than once (never expected).
    duplicates: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Round trip of the command's own HTTP request.
    command_p50_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    place: String,
    scenarios: Vec<Scenario>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// What a subscriber reads of a delivery: its correlation id. The bench's clients
/// share the machine with the server they measure, so they read no more than that.
#[derive(serde::Deserialize)]
struct Arrival<'a> {
    #[serde(borrow)]
    event: ArrivedEvent<'a>,
}

#[derive(serde::Deserialize)]
struct ArrivedEvent<'a> {
    #[serde(borrow)]
    event_metadata: ArrivedMetadata<'a>,
}

#[derive(serde::Deserialize)]
struct ArrivedMetadata<'a> {
    #[serde(borrow, default)]
    correlation_id: Option<std::borrow::Cow<'a, str>>,
}

/// One Server-Sent Events message's `event:` name and `data:` text.
fn sse_fields(block: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let mut kind = None;
    let mut data = None;
    for line in block.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"event:") {
            kind = Some(rest.trim_ascii());
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            data = Some(rest.trim_ascii());
        }
    }
    (kind, data)
}

/// Follows the stream and records each settings event's delay since its command.
async fn subscribe(
    base: String,
    token: String,
    sent: Sent,
    latencies: Arc<Mutex<Vec<f64>>>,
    duplicates: Arc<std::sync::atomic::AtomicU64>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut response = reqwest::Client::new()
        .get(format!(
            "{base}/v1/events/stream?event_type=organization.direct_care_settings_updated"
        ))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "subscribing: {}",
        response.status()
    );
    let mut buffer: Vec<u8> = Vec::new();
    let mut announced = false;
    while let Some(chunk) = response.chunk().await? {
        let arrived = Instant::now();
        // A message may end in this chunk though it began in an earlier one.
        let mut from = buffer.len().saturating_sub(1);
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(at) = buffer[from..].windows(2).position(|w| w == b"\n\n") {
            let end = from + at;
            let (kind, data) = sse_fields(&buffer[start..end]);
            start = end + 2;
            from = start;
            match (kind, data) {
                (Some(b"subscribed"), _) if !announced => {
                    announced = true;
                    let _ = ready.send(()).await;
                }
                (Some(b"event"), Some(data)) => {
                    let arrival: Arrival<'_> = serde_json::from_slice(data)?;
                    let Some(correlation) = arrival.event.event_metadata.correlation_id else {
                        continue;
                    };
                    if !seen.insert(correlation.clone().into_owned()) {
                        duplicates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    let started = sent
                        .lock()
                        .ok()
                        .and_then(|s| s.get(correlation.as_ref()).copied());
                    if let (Some(started), Ok(mut latencies)) = (started, latencies.lock()) {
                        latencies.push((arrived - started).as_secs_f64() * 1e3);
                    }
                }
                _ => {}
            }
        }
        buffer.drain(..start);
    }
    Ok(())
}

async fn scenario(
    base: &str,
    admin: &str,
    watcher: &str,
    org: OrgId,
    subscribers: usize,
    duration: Duration,
    progress: &ui::Progress,
) -> anyhow::Result<Scenario> {
    let sent: Sent = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let duplicates: Arc<std::sync::atomic::AtomicU64> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers.max(1));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        tasks.push(tokio::spawn(subscribe(
            base.to_owned(),
            watcher.to_owned(),
            sent.clone(),
            latencies.clone(),
            duplicates.clone(),
            ready_tx.clone(),
        )));
    }
    for _ in 0..subscribers {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .context("the subscribers did not all open within 30 s")?;
    }
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/organizations/{org}/direct-care-settings");
    let started = Instant::now();
    let mut commands = 0_u64;
    let mut round_trips = Vec::new();
    while started.elapsed() < duration {
        let correlation = CorrelationId::new_v7().to_string();
        let body = json!({
            "visit_verification": commands.is_multiple_of(2),
            "client_assignment": true,
            "max_caseload": commands % 40 + 1,
        });
        let sent_at = Instant::now();
        if let Ok(mut sent) = sent.lock() {
            sent.insert(correlation.clone(), sent_at);
        }
        let response = client
            .put(&url)
            .bearer_auth(admin)
            .header("x-correlation-id", &correlation)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "the command failed: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        round_trips.push(sent_at.elapsed().as_secs_f64() * 1e3);
        commands += 1;
        progress.update(
            started.elapsed().as_millis() as u64,
            duration.as_millis() as u64,
        );
    }
    let expected = commands * subscribers as u64;
    let waited = Instant::now();
    while latencies.lock().map_or(0, |l| l.len() as u64) < expected
        && waited.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for task in tasks {
        task.abort();
    }
    let mut all = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    all.sort_by(f64::total_cmp);
    round_trips.sort_by(f64::total_cmp);
    Ok(Scenario {
        subscribers,
        commands,
        deliveries: all.len() as u64,
        missing: expected.saturating_sub(all.len() as u64),
        duplicates: duplicates.load(std::sync::atomic::Ordering::Relaxed),
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
        command_p50_ms: percentile(&round_trips, 50.0),
    })
}

pub async fn realtime(url: &str, args: BenchRealtimeArgs) -> anyhow::Result<ExitCode> {
    if let Some(bad) = args.subscribers.iter().find(|n| !(1..=5_000).contains(*n)) {
        anyhow::bail!("--subscribers: each count must be 1 to 5,000, not {bad}");
    }
    let counts = args.subscribers.clone();
    let args = args.common;
    let duration = super::scenario_duration(&args)?;
    let (place, db, described) = super::Place::open(url, None).await?;
    let backend = db.backend();
    super::announce("realtime", &described, duration, args.json.json);
    let result = async {
        let store = EventStore::new(db.clone(), app::registry());
        let outbox = tempfile::tempdir()?;
        let domain = Domain::open(
            store,
            Arc::new(cairn_mail::OutboxMailer::new(outbox.path())),
            Arc::new(SystemClock),
            DomainConfig::default(),
            EngineConfig::default(),
        )
        .await?;
        // A secret of this run's own.
        let mut secret = vec![0_u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let auth = Authenticator::new(&KeySource::Secret(secret.clone()))?;
        let built = cairn_http::build(domain.clone(), auth, cairn_http::Options::default())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        built.state.set_base_url(base.clone());
        let server = tokio::spawn(cairn_http::serve(listener, built.router, cairn_http::server::ServeOptions::default(), std::future::pending()));

        let operator = CommandContext::new(Principal::Operator {
            name: "cairn-bench".to_owned(),
        });
        let request = serde_json::from_value(json!({
            "organization": {"name": "Bench Care", "slug": "bench-care", "sender_domain": "mail.bench.example.co.uk"},
            "admin": {"email": "admin@example.com", "name": "Admin"},
        }))?;
        let org = domain.bootstrap(&operator, &request).await?.org_id;
        domain.engine().run_until_idle().await?;
        let ttl = Duration::from_secs(3_600);
        let admin = cairn_policy::mint(&Principal::PlatformAdmin { name: "bench".to_owned() }, &secret, ttl)?;
        let watcher = cairn_policy::mint(
            &Principal::Service {
                name: "bench-watcher".to_owned(),
                scopes: [Scope::EventsSubscribe].into_iter().collect(),
            },
            &secret,
            ttl,
        )?;
        let mut scenarios = Vec::new();
        for subscribers in counts {
            let label = if subscribers == 1 {
                "1 sub".to_owned()
            } else {
                format!("{subscribers} subs")
            };
            let progress = ui::Progress::new(label);
            let outcome =
                scenario(&base, &admin, &watcher, org, subscribers, duration, &progress).await;
            progress.finish();
            scenarios.push(outcome?);
        }
        built.state.feed().close();
        server.abort();
        anyhow::Ok(scenarios)
    }
    .await;
    db.close().await;
    place.remove().await?;
    let report = Report {
        backend: backend.as_str(),
        place: described,
        scenarios: result?,
    };
    let code = if report
        .scenarios
        .iter()
        .any(|s| s.missing > 0 || s.duplicates > 0)
    {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if args.json.json {
        ui::print_json(&report)?;
        return Ok(code);
    }
    let mut table = ui::table(&[
        "SUBSCRIBERS",
        "COMMANDS",
        "DELIVERIES",
        "MISSING",
        "DUPLICATES",
        "P50",
        "P99",
        "MAX",
        "COMMAND P50",
    ]);
    let ms = |value: f64| ui::duration(Duration::from_secs_f64(value.max(0.0) / 1e3));
    for s in &report.scenarios {
        table.add_row(vec![
            ui::count(s.subscribers as u64),
            ui::count(s.commands),
            ui::count(s.deliveries),
            ui::count(s.missing),
            ui::count(s.duplicates),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
            ms(s.command_p50_ms),
        ]);
    }
    outln!("{table}");
    outln!(
        "{}",
        style("from sending a command's HTTP request to its event arriving at each SSE subscriber, over loopback, server and clients in this process").dim()
    );
    Ok(code)
}
