//! The health page: the integration probe's hops and the alerts, and the last ten
//! minutes of events per second and failed events, sampled in this process (and, for
//! the time before it started, read from the log); and what else the console keeps
//! between requests ([`Activity`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};

use cairn_domain::reads;
use cairn_policy::{Action, Principal};

use super::{Layout, Session, Time, millis, problem_page, render, time, time_text};
use crate::AppState;
use crate::routes::allow_principal;

/// How often the sampler reads the log's head.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How much history the chart shows.
const WINDOW: chrono::Duration = chrono::Duration::minutes(10);

/// One reading of the log's head.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: DateTime<Utc>,
    head: i64,
    failed: i64,
}

/// What the console keeps between requests: the last ten minutes of the log's head,
/// sampled by [`run_sampler`], and the attention banner as last read (see
/// [`super::attention`]).
#[derive(Debug, Default)]
pub struct Activity {
    samples: Mutex<VecDeque<Sample>>,
    attention: super::attention::Cache,
    /// The integration health the health page last read, and when (see
    /// [`integration_health`]).
    health: Mutex<Option<(std::time::Instant, crate::probe::IntegrationHealth)>>,
}

/// How long the health page reuses what it read, while the log's head has not moved.
const HEALTH_FRESH_FOR: Duration = Duration::from_secs(1);

/// The integration health for the health page: what it read less than a second ago
/// when the log's head has not moved since (a page refreshed live, or open in several
/// browsers, reads it once), else read again. What depends on the clock alone (a run
/// becoming overdue) is at most that second late.
async fn integration_health(
    state: &AppState,
) -> Result<crate::probe::IntegrationHealth, crate::problem::Problem> {
    let head = reads::log_head(state.db()).await.ok();
    if let Ok(kept) = state.activity().health.lock()
        && let Some((read_at, health)) = kept.as_ref()
        && read_at.elapsed() < HEALTH_FRESH_FOR
        && head == Some(health.system.head)
    {
        return Ok(health.clone());
    }
    let health = crate::routes::integration_health(state).await?;
    if let Ok(mut kept) = state.activity().health.lock() {
        *kept = Some((std::time::Instant::now(), health.clone()));
    }
    Ok(health)
}

impl Activity {
    pub(crate) fn attention(&self) -> &super::attention::Cache {
        &self.attention
    }

    fn record(&self, sample: Sample) {
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back(sample);
            while samples
                .front()
                .is_some_and(|s| sample.at - s.at > WINDOW + chrono::Duration::seconds(15))
            {
                samples.pop_front();
            }
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Reads the head now, for the chart.
async fn sample(state: &AppState) -> Option<Sample> {
    let grant = allow_principal(&Principal::Anonymous, Action::ReadPublic).ok()?;
    let system = reads::system_health(state.store(), &grant, state.options().thresholds)
        .await
        .ok()?;
    Some(Sample {
        at: Utc::now(),
        head: system.head.get(),
        failed: system.failed_events,
    })
}

/// The chart's history before this process started, read from the log: the head at
/// each [`SAMPLE_EVERY`] of the last [`WINDOW`], so that a restart (every deploy) does
/// not leave the chart empty.
async fn backfill(state: &AppState) {
    let Ok(grant) = allow_principal(&Principal::Anonymous, Action::ReadPublic) else {
        return;
    };
    let now = Utc::now();
    let every = chrono::Duration::from_std(SAMPLE_EVERY).unwrap_or(chrono::Duration::seconds(10));
    let steps = WINDOW.num_seconds() / every.num_seconds().max(1);
    let marks: Vec<DateTime<Utc>> = (1..=steps).rev().map(|n| now - every * n as i32).collect();
    match reads::log_history(state.db(), &grant, &marks).await {
        Ok(history) => {
            for (at, head, failed) in history {
                state.activity().record(Sample {
                    at,
                    head: head.get(),
                    failed,
                });
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the log's recent history for the health chart")
        }
    }
}

/// Samples the log's head every [`SAMPLE_EVERY`] until `stop` resolves, after reading
/// the last ten minutes' from the log.
pub async fn run_sampler(state: AppState, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    backfill(&state).await;
    loop {
        if let Some(sample) = sample(&state).await {
            state.activity().record(sample);
        }
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            () = &mut stop => return,
        }
    }
}

/// A hop of the last probe.
pub(crate) struct HopRow {
    pub hop: String,
    pub ok: bool,
    pub latency: String,
    pub error: Option<String>,
}

/// An alert.
pub(crate) struct AlertRow {
    /// The alert's name, as `/health/integration` and the metrics call it.
    pub alert: String,
    pub title: String,
    pub active: bool,
    /// An operator's pause, or what waits behind one or behind a failure: the system
    /// is degraded, not broken (a warning, not an error).
    pub paused: bool,
    pub value: i64,
    pub message: String,
    /// Where to act on it in the console, if this person may go there.
    pub act: Option<(&'static str, &'static str)>,
}

impl AlertRow {
    fn of(alert: &crate::probe::Alert, session: &Session) -> AlertRow {
        let (title, act, needs) = match alert.alert.as_str() {
            "probe_failing" => ("Integration probe", None, None),
            "unprocessed_events" => ("Unprocessed events", None, None),
            "newer_events" => ("Events from a newer build", None, None),
            "failed_events" => (
                "Failed events",
                Some(("/console/failures", "See the failures")),
                Some(Action::ListEvents),
            ),
            "stuck_workflows" => (
                "Stuck workflow runs",
                Some(("/console/workflows", "See the runs")),
                Some(Action::ListWorkflows),
            ),
            "paused_routes" => (
                "Paused handler routes",
                Some(("/console/handlers", "Resume them on the handlers page")),
                Some(Action::ListEvents),
            ),
            "paused_workflows" => (
                "Paused workflows",
                Some((
                    "/console/workflows?paused=1",
                    "See the paused runs and kinds",
                )),
                Some(Action::ListWorkflows),
            ),
            "held_streams" => (
                "Held streams",
                Some((
                    "/console/failures#held",
                    "Release them on the failures page",
                )),
                Some(Action::ListEvents),
            ),
            _ => ("", None, None),
        };
        AlertRow {
            alert: alert.alert.clone(),
            title: if title.is_empty() {
                alert.alert.replace('_', " ")
            } else {
                title.to_owned()
            },
            active: alert.active,
            paused: matches!(
                alert.alert.as_str(),
                "paused_routes" | "paused_workflows" | "held_streams"
            ),
            value: alert.value,
            message: console_message(&alert.alert, alert.value)
                .unwrap_or_else(|| alert.message.clone()),
            act: act.filter(|_| alert.active && needs.is_none_or(|action| session.may(&action))),
        }
    }
}

/// What an alert says on the console, where its link is the way to act (the API's
/// message names the command-line tools instead).
fn console_message(alert: &str, n: i64) -> Option<String> {
    let count = |one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    Some(match alert {
        "failed_events" => format!(
            "{} to apply: retry or skip each on the failures page.",
            count("event failed", "events failed")
        ),
        "stuck_workflows" => format!(
            "{} overdue, or could not compensate.",
            count("workflow run is", "workflow runs are")
        ),
        _ => return None,
    })
}

/// One bar of the chart.
pub(crate) struct Column {
    pub x: String,
    pub y: String,
    pub height: String,
    pub title: String,
}

/// A chart of one series over the window.
pub(crate) struct Chart {
    pub columns: Vec<Column>,
    pub peak: String,
    pub latest: String,
}

#[derive(Template)]
#[template(path = "console/health.html")]
struct HealthPage {
    layout: Layout,
    status: String,
    probe_at: Time,
    probe_age: String,
    probe_total: String,
    probe_correlation: String,
    hops: Vec<HopRow>,
    alerts: Vec<AlertRow>,
    head: i64,
    failed: i64,
    unprocessed: i64,
    /// Runs by status, the sleeping apart from those at work.
    runs: Vec<super::operations::CountLink>,
    /// Why the status is what it is, and where to act on the first active alert.
    reason: String,
    act: Option<(&'static str, &'static str)>,
    rate: Chart,
    failures: Chart,
    since: Option<Time>,
    may_trace: bool,
}

/// Chart height and width, in SVG units.
const HEIGHT: f64 = 60.0;
const WIDTH: f64 = 600.0;

/// A chart of `points` over the window; values shown with `decimals` decimals (counts
/// with none).
fn chart(
    points: &[(DateTime<Utc>, f64)],
    now: DateTime<Utc>,
    unit: &str,
    decimals: usize,
) -> Chart {
    let peak = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let scale = if peak > 0.0 { HEIGHT / peak } else { 0.0 };
    let window = WINDOW.num_milliseconds() as f64;
    let slot = WIDTH / (window / SAMPLE_EVERY.as_millis() as f64);
    let columns = points
        .iter()
        .filter_map(|(at, value)| {
            let age = (now - *at).num_milliseconds() as f64;
            (age <= window).then(|| {
                let x = WIDTH - age / window * WIDTH - slot;
                let height = (value * scale).max(if *value > 0.0 { 1.0 } else { 0.0 });
                Column {
                    x: format!("{:.1}", x.max(0.0)),
                    y: format!("{:.1}", HEIGHT - height),
                    height: format!("{height:.1}"),
                    title: format!("{} · {value:.decimals$} {unit}", time_text(at)),
                }
            })
        })
        .collect();
    Chart {
        columns,
        peak: format!("{peak:.decimals$} {unit}"),
        latest: points
            .last()
            .map_or_else(|| "–".to_owned(), |p| format!("{:.decimals$} {unit}", p.1)),
    }
}

/// `GET /console/health`: the probe, the alerts (active first, each leading to where to
/// act), and the last ten minutes.
pub(crate) async fn health(State(state): State<AppState>, session: Session) -> Response {
    // A member of an organization sees their organization's figures, not every
    // tenant's (nor the platform's alerts, which they could not act on).
    if let Some(org) = session.principal.org_id() {
        return tenant_health(&state, &session, org).await;
    }
    let health = match integration_health(&state).await {
        Ok(health) => health,
        Err(problem) => return problem_page(&session, &problem),
    };
    let now = Utc::now();
    let mut samples = state.activity().samples();
    // The system was read just now for the alerts: its head is the chart's latest
    // point, without reading it all again.
    samples.push(Sample {
        at: now,
        head: health.system.head.get(),
        failed: health.system.failed_events,
    });
    let rates: Vec<(DateTime<Utc>, f64)> = samples
        .windows(2)
        .filter_map(|pair| {
            let seconds = (pair[1].at - pair[0].at).num_milliseconds() as f64 / 1_000.0;
            (seconds > 0.5).then(|| {
                (
                    pair[1].at,
                    (pair[1].head - pair[0].head).max(0) as f64 / seconds,
                )
            })
        })
        .collect();
    let failures: Vec<(DateTime<Utc>, f64)> =
        samples.iter().map(|s| (s.at, s.failed as f64)).collect();
    let system = &health.system;
    let status = match health.status {
        crate::probe::HealthStatus::Ok => "ok",
        crate::probe::HealthStatus::Degraded => "degraded",
        crate::probe::HealthStatus::Failing => "failing",
    };
    let mut alerts: Vec<AlertRow> = health
        .alerts
        .iter()
        .map(|a| AlertRow::of(a, &session))
        .collect();
    alerts.sort_by_key(|a| !a.active);
    let active: Vec<&AlertRow> = alerts.iter().filter(|a| a.active).collect();
    let reason = match active.as_slice() {
        [] => "Every check passes.".to_owned(),
        [one] => format!("{}: {}", one.title, one.message),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more alert{} below)",
            first.title,
            first.message,
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    };
    let act = active.iter().find_map(|a| a.act);
    let runs = match crate::routes::allow(&session.ctx, Action::ListWorkflows) {
        Ok(grant) => reads::workflow_counts(state.db(), &grant, state.domain().engine().now())
            .await
            .map(|counts| super::operations::count_links(&counts, None, None))
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let page = HealthPage {
        layout: Layout::new(&session, "Health", "/health")
            .attention(super::attention::banner(&state, &session).await),
        status: status.to_owned(),
        probe_at: time(&health.probe.at),
        probe_age: millis(health.probe_age_ms),
        probe_total: millis(health.probe.total_ms),
        probe_correlation: health.probe.correlation_id.to_string(),
        hops: health
            .probe
            .hops
            .iter()
            .map(|h| HopRow {
                hop: h.hop.clone(),
                ok: h.ok,
                latency: h.latency_ms.map(millis).unwrap_or_default(),
                error: h.error.clone(),
            })
            .collect(),
        alerts,
        head: system.head.get(),
        failed: system.failed_events,
        unprocessed: system.unprocessed_events,
        runs,
        reason,
        act,
        rate: chart(&rates, now, "events/s", 1),
        failures: chart(&failures, now, "failed", 0),
        since: samples.first().map(|s| time(&s.at)),
        may_trace: session.may(&Action::ReadTrace),
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "console/health_tenant.html")]
struct TenantHealthPage {
    layout: Layout,
    org_id: String,
    org_name: String,
    /// `ok`, or `attention` while events of the organization have failed.
    status: &'static str,
    reason: String,
    /// Failed events by code, when the viewer may read events.
    failures: Option<Vec<(String, i64)>>,
    failed: i64,
    runs: Option<Vec<super::operations::CountLink>>,
}

/// The health page of one organization, for its members.
async fn tenant_health(state: &AppState, session: &Session, org: cairn_types::OrgId) -> Response {
    let failures = match crate::routes::allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => match reads::failures_by_code(state.db(), &grant).await {
            Ok(failures) => Some(
                failures
                    .into_iter()
                    .map(|f| (f.code, f.count))
                    .collect::<Vec<_>>(),
            ),
            Err(error) => return problem_page(session, &crate::routes::read_problem(error)),
        },
        Err(_) => None,
    };
    let runs = match crate::routes::allow(&session.ctx, Action::ListWorkflows) {
        Ok(grant) => {
            match reads::workflow_counts(state.db(), &grant, state.domain().engine().now()).await {
                Ok(counts) => Some(super::operations::count_links(&counts, None, None)),
                Err(error) => return problem_page(session, &crate::routes::read_problem(error)),
            }
        }
        Err(_) => None,
    };
    let failed: i64 = failures.iter().flatten().map(|(_, n)| n).sum();
    let org_name = session.org_name.clone().unwrap_or_else(|| org.to_string());
    let (status, reason) = match failed {
        0 => ("ok", "Nothing of this organization has failed.".to_owned()),
        1 => (
            "attention",
            "1 event of this organization failed to apply.".to_owned(),
        ),
        n => (
            "attention",
            format!("{n} events of this organization failed to apply."),
        ),
    };
    render(
        StatusCode::OK,
        &TenantHealthPage {
            layout: Layout::new(session, format!("Health of {org_name}"), "/health"),
            org_id: org.to_string(),
            org_name,
            status,
            reason,
            failures,
            failed,
            runs,
        },
    )
}
