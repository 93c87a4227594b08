//! The integration probe and the alerts: the health of the chain, not only of its
//! parts.
//!
//! A probe is one synthetic transaction through everything a real request touches:
//! an HTTP command over this server's own listening socket (a token signed with the
//! process's own key, so it works whatever keys the server verifies others with), on
//! the probe's reserved tenant → its event in the log → its projection row → its
//! delivery to an internal realtime subscriber → a step of the probe workflow. Each
//! hop is timed, and the first that broke is named. `cairn serve` runs one on a
//! schedule; `GET /health/integration` runs one on demand (or answers with one at
//! most a few seconds old).
//!
//! Alerts are data: a failing probe, events that stay unprocessed, failed events and
//! stuck workflows, each with its count and what to do, in `/health/integration` and
//! as `cairn_alerts{alert=…}` in `/metrics`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use cairn_domain::probe::Ping;
use cairn_domain::reads::{self, SystemHealth};
use cairn_log::{SpanKind, SpanRecord};
use cairn_policy::{Action, Principal, Scope, authorize};
use cairn_realtime::{Message, Selector, SubscribeRequest};
use cairn_types::{CorrelationId, OrgId, StreamType};
use cairn_workflow::RunStatus;

use crate::AppState;

/// The hops of a probe, in order.
pub const HOPS: [&str; 5] = ["http", "event", "projection", "realtime", "workflow"];

/// How long each hop may take before it counts as broken.
const HOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One hop of a probe.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HopReport {
    /// `http`, `event`, `projection`, `realtime` or `workflow`.
    pub hop: String,
    pub ok: bool,
    /// Time from the probe's start until this hop was seen done.
    pub latency_ms: Option<f64>,
    /// What went wrong, when it did.
    pub error: Option<String>,
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ProbeReport {
    /// Whether every hop worked.
    pub ok: bool,
    pub at: DateTime<Utc>,
    /// The probe request's correlation id: `cairn trace` shows its timeline.
    pub correlation_id: CorrelationId,
    /// The first hop that broke.
    pub broken: Option<String>,
    pub hops: Vec<HopReport>,
    pub total_ms: f64,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Alert {
    /// `probe_failing`, `unprocessed_events`, `failed_events`, `stuck_workflows`,
    /// `paused_routes`, `paused_workflows` or `held_streams`.
    pub alert: String,
    pub active: bool,
    /// How many things it counts (1 or 0 for the probe).
    pub value: i64,
    /// What is wrong and what to do, for people.
    pub message: String,
}

/// Overall state: `ok`; `degraded` (the chain works, but an alert is active);
/// `failing` (the probe failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Failing,
}

/// The answer of `GET /health/integration`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct IntegrationHealth {
    pub status: HealthStatus,
    pub probe: ProbeReport,
    /// How old the probe result is.
    pub probe_age_ms: f64,
    pub alerts: Vec<Alert>,
    pub system: SystemHealth,
}

/// The probe's last result, and a lock so that only one probe runs at a time.
#[derive(Debug, Default)]
pub struct ProbeState {
    last: std::sync::Mutex<Option<(Instant, ProbeReport)>>,
    running: tokio::sync::Mutex<()>,
}

impl ProbeState {
    /// The last probe's result and its age.
    pub fn last(&self) -> Option<(Duration, ProbeReport)> {
        self.last
            .lock()
            .ok()?
            .as_ref()
            .map(|(at, report)| (at.elapsed(), report.clone()))
    }
}

/// The principal the probe acts as: its own service account, reserved to cairn.
fn principal() -> Principal {
    Principal::Service {
        name: "cairn-probe".to_owned(),
        scopes: [Scope::HealthProbe, Scope::EventsSubscribe]
            .into_iter()
            .collect(),
    }
}

/// A probe result at most `max_age` old: the last one, or a new one. Concurrent
/// callers share one run.
pub async fn probe(state: &AppState, max_age: Duration) -> (Duration, ProbeReport) {
    let _running = state.probe_state().running.lock().await;
    if let Some((age, report)) = state.probe_state().last()
        && age <= max_age
    {
        return (age, report);
    }
    let report = run(state).await;
    if let Ok(mut last) = state.probe_state().last.lock() {
        *last = Some((Instant::now(), report.clone()));
    }
    (Duration::ZERO, report)
}

struct Hops {
    started: Instant,
    at: DateTime<Utc>,
    correlation_id: CorrelationId,
    hops: Vec<HopReport>,
}

impl Hops {
    fn ok(&mut self, hop: &str) {
        self.hops.push(HopReport {
            hop: hop.to_owned(),
            ok: true,
            latency_ms: Some(self.started.elapsed().as_secs_f64() * 1_000.0),
            error: None,
        });
    }

    fn failed(&mut self, hop: &str, error: String) {
        self.hops.push(HopReport {
            hop: hop.to_owned(),
            ok: false,
            latency_ms: None,
            error: Some(error),
        });
    }

    fn not_reached(&mut self, after: &str) {
        for hop in HOPS.iter().skip(self.hops.len()) {
            self.failed(hop, format!("not reached: the {after} hop broke"));
        }
    }
}

/// Runs one probe.
pub async fn run(state: &AppState) -> ProbeReport {
    let mut hops = Hops {
        started: Instant::now(),
        at: Utc::now(),
        correlation_id: CorrelationId::new_v7(),
        hops: Vec::new(),
    };
    run_hops(state, &mut hops).await;
    let broken = hops
        .hops
        .iter()
        .find(|hop| !hop.ok)
        .map(|hop| hop.hop.clone());
    let report = ProbeReport {
        ok: broken.is_none(),
        at: hops.at,
        correlation_id: hops.correlation_id,
        broken,
        hops: hops.hops,
        total_ms: hops.started.elapsed().as_secs_f64() * 1_000.0,
    };
    record(state, &report);
    report
}

/// Metrics, spans and logs for a probe's result.
fn record(state: &AppState, report: &ProbeReport) {
    let metrics = cairn_observe::metrics();
    metrics.probe_ok.set(i64::from(report.ok));
    for hop in &report.hops {
        metrics
            .probe_hop_seconds
            .get_or_create(&cairn_observe::HopLabels {
                hop: hop.hop.clone(),
            })
            .set(hop.latency_ms.map_or(f64::NAN, |ms| ms / 1_000.0));
        let mut span = SpanRecord::ending_now(
            report.correlation_id,
            SpanKind::Probe,
            format!("probe hop {}", hop.hop),
            report.at,
        )
        .org(Some(OrgId::PROBE))
        .error(hop.error.clone());
        span.duration = Duration::from_secs_f64(hop.latency_ms.unwrap_or(0.0).max(0.0) / 1_000.0);
        state.db().record_span(span);
    }
    match &report.broken {
        None => tracing::debug!(total_ms = report.total_ms, "integration probe passed"),
        Some(hop) => tracing::warn!(
            hop = %hop,
            error = ?report.hops.iter().find(|h| !h.ok).and_then(|h| h.error.clone()),
            correlation_id = %report.correlation_id,
            "integration probe failed"
        ),
    }
}

async fn run_hops(state: &AppState, hops: &mut Hops) {
    let principal = principal();
    // The internal subscriber listens before the command is sent.
    let subscription = state
        .feed()
        .subscribe(SubscribeRequest {
            ends_on: &[],
            principal: principal.clone(),
            expires_at: None,
            selector: Selector {
                stream_type: StreamType::parse(cairn_domain::probe::STREAM_TYPE).ok(),
                org_id: Some(OrgId::PROBE),
                ..Selector::default()
            },
            after: None,
            heartbeat: Duration::from_secs(1),
            correlation_id: hops.correlation_id,
            transport: "internal",
        })
        .await;

    // http: the command, over this server's own socket.
    let ping = match send_command(state, &principal, hops.correlation_id).await {
        Ok(ping) => {
            hops.ok("http");
            ping
        }
        Err(error) => {
            hops.failed("http", error);
            hops.not_reached("http");
            return;
        }
    };
    let Ok(grant) = authorize(&principal, &Action::RunProbe) else {
        hops.failed(
            "event",
            "the policy refused the probe its own reads".to_owned(),
        );
        hops.not_reached("event");
        return;
    };

    // event and projection: the log and the projection row.
    match reads::probe_facts(state.db(), &grant, &ping).await {
        Ok(facts) => match facts.event {
            None => {
                hops.failed("event", format!("no event at position {}", ping.position));
                hops.failed("projection", "not reached: the event hop broke".to_owned());
            }
            Some(event) => {
                hops.ok("event");
                match (&event.processing_error, facts.recorded_at) {
                    (Some(error), _) => hops.failed(
                        "projection",
                        format!(
                            "{} was not applied: {} {}",
                            event.event_type, error.code, error.message
                        ),
                    ),
                    (None, None) => hops.failed(
                        "projection",
                        format!("no probe_pings row for ping {}", ping.ping_id),
                    ),
                    (None, Some(_)) => hops.ok("projection"),
                }
            }
        },
        Err(error) => {
            hops.failed("event", format!("the log cannot be read: {error}"));
            hops.failed("projection", "not reached: the event hop broke".to_owned());
        }
    }

    // realtime: the internal subscriber receives the event.
    match subscription {
        Err(error) => hops.failed("realtime", format!("the subscription was refused: {error}")),
        Ok(mut subscription) => {
            let delivered = tokio::time::timeout(HOP_TIMEOUT, async {
                while let Some(message) = subscription.next().await {
                    match message {
                        Message::Event(delivery) if delivery.position == ping.position => {
                            return Ok(());
                        }
                        Message::End(end) => {
                            return Err(format!("the subscription ended: {}", end.message));
                        }
                        _ => {}
                    }
                }
                Err("the subscription ended".to_owned())
            })
            .await;
            match delivered {
                Ok(Ok(())) => hops.ok("realtime"),
                Ok(Err(error)) => hops.failed("realtime", error),
                Err(_) => hops.failed(
                    "realtime",
                    format!(
                        "event {} was not delivered within {} s",
                        ping.position,
                        HOP_TIMEOUT.as_secs()
                    ),
                ),
            }
        }
    }

    // workflow: the probe workflow's step ran and the run completed.
    let finished = tokio::time::timeout(HOP_TIMEOUT, async {
        loop {
            match reads::probe_facts(state.db(), &grant, &ping).await {
                Ok(facts) => match facts.run.map(|run| (run.status, run.failure)) {
                    Some((RunStatus::Completed, _)) => return Ok(()),
                    Some((RunStatus::Failed | RunStatus::CompensationFailed, failure)) => {
                        return Err(format!(
                            "the probe workflow failed: {}",
                            failure.unwrap_or_default()
                        ));
                    }
                    _ => {}
                },
                Err(error) => return Err(format!("the workflow cannot be read: {error}")),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    match finished {
        Ok(Ok(())) => hops.ok("workflow"),
        Ok(Err(error)) => hops.failed("workflow", error),
        Err(_) => hops.failed(
            "workflow",
            format!(
                "the probe workflow {} did not complete within {} s: is a workflow engine running?",
                ping.workflow_id,
                HOP_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Sends the probe's command to this server over its own socket.
async fn send_command(
    state: &AppState,
    principal: &Principal,
    correlation_id: CorrelationId,
) -> Result<Ping, String> {
    let base = state
        .base_url()
        .ok_or_else(|| "the server is not listening yet".to_owned())?;
    let token = state
        .auth()
        .mint_for_process(principal, Duration::from_secs(60))
        .map_err(|e| format!("cannot sign the probe's token: {e}"))?;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/probe/pings"))
        .bearer_auth(token)
        .header(
            crate::context::CORRELATION_HEADER,
            correlation_id.to_string(),
        )
        .timeout(HOP_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            format!(
                "POST {base}/v1/probe/pings: {}",
                cairn_types::error_chain(&e)
            )
        })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if status != reqwest::StatusCode::ACCEPTED {
        return Err(format!("POST /v1/probe/pings answered {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("the answer is not a ping ({e}): {body}"))
}

/// The alerts, from the system's state and the last probe.
pub fn alerts(system: &SystemHealth, probe: &ProbeReport) -> Vec<Alert> {
    let broken = probe.hops.iter().find(|hop| !hop.ok);
    vec![
        Alert {
            alert: "probe_failing".to_owned(),
            active: !probe.ok,
            value: i64::from(!probe.ok),
            message: match broken {
                None => "the integration probe passed every hop".to_owned(),
                Some(hop) => format!(
                    "the {} hop broke: {} (cairn trace {})",
                    hop.hop,
                    hop.error.as_deref().unwrap_or("no message"),
                    probe.correlation_id
                ),
            },
        },
        counted(
            "unprocessed_events",
            system.unprocessed_events,
            |n| {
                format!(
                    "{n} events were stored without being processed; retrying failed events does not cover them: run cairn replay"
                )
            },
            "every event was processed",
        ),
        counted(
            "failed_events",
            system.failed_events,
            |n| {
                format!(
                    "{n} events failed to apply: cairn events list --failed shows why, cairn events retry --all-failed retries them"
                )
            },
            "no failed events",
        ),
        counted(
            "stuck_workflows",
            system.stuck_workflows,
            |n| {
                let runs: Vec<String> = system
                    .stuck
                    .iter()
                    .map(|run| format!("{} ({} {})", run.id, run.kind, run.status))
                    .collect();
                format!(
                    "{n} workflow runs are overdue or need an operator: {}",
                    runs.join(", ")
                )
            },
            "no stuck workflows",
        ),
        counted(
            "newer_events",
            i64::try_from(system.newer_events.len()).unwrap_or(i64::MAX),
            |_| {
                let types: Vec<String> = system
                    .newer_events
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                format!(
                    "a newer build wrote events this build cannot read and never applies (P9006): {}; run the newer build, then retry them",
                    types.join(", ")
                )
            },
            "no events from a newer build",
        ),
        paused_routes_alert(&system.paused),
        paused_workflows_alert(&system.paused),
        held_streams_alert(&system.paused),
    ]
}

/// `who since when: why`, for a pause.
fn who_why(by: &str, since: DateTime<Utc>, reason: &str) -> String {
    format!(
        "by {by} since {}: {reason}",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

fn paused_routes_alert(paused: &reads::Paused) -> Alert {
    counted(
        "paused_routes",
        i64::try_from(paused.routes.len()).unwrap_or(i64::MAX),
        |n| {
            let routes: Vec<String> = paused
                .routes
                .iter()
                .map(|pause| {
                    format!(
                        "{} ({})",
                        pause.route,
                        who_why(&pause.paused_by, pause.since, &pause.reason)
                    )
                })
                .collect();
            format!(
                "{} paused: {}; their events are stored and held until the route is resumed (cairn handlers resume)",
                plural(n, "handler route is", "handler routes are"),
                routes.join("; ")
            )
        },
        "no handler route is paused",
    )
}

fn paused_workflows_alert(paused: &reads::Paused) -> Alert {
    let n_kinds = i64::try_from(paused.workflow_kinds.len()).unwrap_or(i64::MAX);
    counted(
        "paused_workflows",
        n_kinds.saturating_add(paused.workflow_runs),
        |_| {
            let mut parts: Vec<String> = paused
                .workflow_kinds
                .iter()
                .map(|kind| {
                    format!(
                        "every {} run ({})",
                        kind.kind,
                        who_why(&kind.paused_by, kind.since, &kind.reason)
                    )
                })
                .collect();
            parts.extend(paused.runs.iter().map(|run| {
                let by = if run.paused_by == format!("service:{}", cairn_workflow::ENGINE_ACTOR) {
                    "by the engine: a step's attempts ran out".to_owned()
                } else {
                    format!("by {}", run.paused_by)
                };
                format!(
                    "run {} of {} ({by} since {})",
                    run.id,
                    run.kind,
                    run.since.format("%Y-%m-%d %H:%M:%S UTC")
                )
            }));
            if paused.workflow_runs > i64::try_from(paused.runs.len()).unwrap_or(i64::MAX) {
                parts.push(format!(
                    "{} more runs",
                    paused.workflow_runs - i64::try_from(paused.runs.len()).unwrap_or(0)
                ));
            }
            format!(
                "paused workflows: {}; they run nothing until resumed (cairn workflows resume)",
                parts.join("; ")
            )
        },
        "no workflow is paused",
    )
}

fn held_streams_alert(paused: &reads::Paused) -> Alert {
    counted(
        "held_streams",
        paused.held_streams,
        |n| {
            let first: Vec<String> = paused
                .held
                .iter()
                .take(3)
                .map(|held| {
                    let why = match held.cause {
                        cairn_log::HoldCause::Failed => "failed",
                        cairn_log::HoldCause::Paused => "has its route paused",
                    };
                    format!(
                        "{} {} behind position {} ({} {why})",
                        held.stream_type, held.stream_id, held.behind, held.behind_event_type
                    )
                })
                .collect();
            format!(
                "{} behind an event that failed or whose route is paused, {} held: {}; retry or skip the event, or resume the route (cairn streams held)",
                plural(n, "stream waits", "streams wait"),
                plural(paused.held_events, "event", "events"),
                first.join("; ")
            )
        },
        "no stream is held",
    )
}

/// `1 thing`, `2 things`.
fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An alert that is active while a count is above zero.
fn counted(alert: &str, value: i64, active: impl FnOnce(i64) -> String, quiet: &str) -> Alert {
    Alert {
        alert: alert.to_owned(),
        active: value > 0,
        value,
        message: if value > 0 {
            active(value)
        } else {
            quiet.to_owned()
        },
    }
}

/// Sets the gauges that describe the system, for a scrape.
pub fn set_gauges(system: &SystemHealth, alerts: &[Alert]) {
    let metrics = cairn_observe::metrics();
    metrics.events_unprocessed.set(system.unprocessed_events);
    metrics.events_failed_now.set(system.failed_events);
    let paused = &system.paused;
    metrics.held_streams.set(paused.held_streams);
    metrics.held_events.set(paused.held_events);
    metrics
        .paused_routes
        .set(i64::try_from(paused.routes.len()).unwrap_or(i64::MAX));
    metrics
        .paused_workflow_kinds
        .set(i64::try_from(paused.workflow_kinds.len()).unwrap_or(i64::MAX));
    metrics.paused_workflow_runs.set(paused.workflow_runs);
    for status in RunStatus::ALL {
        metrics
            .workflows
            .get_or_create(&cairn_observe::StatusLabels {
                status: status.as_str().to_owned(),
            })
            .set(system.workflows.get(status.as_str()).copied().unwrap_or(0));
    }
    for alert in alerts {
        metrics
            .alerts
            .get_or_create(&cairn_observe::AlertLabels {
                alert: alert.alert.clone(),
            })
            .set(i64::from(alert.active));
    }
}
