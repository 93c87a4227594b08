//! Whether the process, the database and the whole chain work: the health checks, the
//! metrics, and the integration probe's synthetic command.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Serialize;

use cairn_domain::probe::Ping;
use cairn_domain::reads;
use cairn_policy::Action;
use cairn_types::CorrelationId;

use super::{allow, allow_principal, command_problem, database, read_problem};
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::{Problem, ProblemCode};

/// Whether the process is up, or ready to serve.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    pub status: String,
}

/// The health checks and the metrics.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(GET "/health/live", "live", "health", OK, public: true, command: false,
            "Is the process up", "Answers 200 as long as the process runs."),
        live,
    )
    .op(
        op!(GET "/health/ready", "ready", "health", OK, public: true, command: false,
            "Is the process ready", "Answers 200 when the database answers and this process's workflow engine (if it runs one) is alive, 503 otherwise."),
        ready,
    )
    .op(
        Op {
            unhealthy_503: true,
            ..op!(GET "/health/integration", "integrationHealth", "health", OK, public: true, command: false,
                "Is the whole chain working",
                "Runs the integration probe (or answers with a result at most a few seconds old): an HTTP command on the probe's reserved tenant, its event, its projection row, its delivery to an internal subscriber, a workflow step, each timed; plus the alerts (a failing probe, unprocessed events, failed events, stuck workflows). 200 when the probe passed (`status` ok, or degraded when an alert is active), 503 naming the hop that broke.")
        },
        integration,
    )
    .raw::<Empty, String, _, _>(
        op!(GET "/metrics", "metrics", "health", OK, public: true, command: false,
            "Metrics for Prometheus",
            "Events appended and failed by type, unprocessed and failed events now, dispatch and handler latency, workflows by status, step retries, realtime subscribers and delivery latency, HTTP requests by route and status, the probe's hops, and the alerts."),
        crate::api::Produces::OpenMetrics,
        metrics,
    )
}

/// The integration probe's synthetic command.
pub(super) fn probe_ops(api: Api) -> Api {
    api.op(
        op!(POST "/v1/probe/pings", "probePing", "health", ACCEPTED, public: false, command: true,
            "The integration probe's synthetic command",
            "Appends a `probe.pinged` event on the probe's reserved tenant and starts the one-step probe workflow, and answers with the event's processing outcome (it does not fail on it, so that the probe can tell a broken projection from a broken request). Scope `health:probe`; the probe signs its own requests."),
        probe_ping,
    )
}

/// `GET /health/live`: whether the process is up.
async fn live(
    _state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<Health>, Problem> {
    allow(&ctx, Action::ReadPublic)?;
    Ok(Reply::ok(Health {
        status: "live".into(),
    }))
}

/// `GET /health/ready`: whether the database answers and the workflow engine runs.
async fn ready(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<Health>, Problem> {
    let grant = allow(&ctx, Action::ReadPublic)?;
    state.database_ready().await.map_err(|e| database(&e))?;
    let engine = state.domain().engine().health();
    if !engine.ready() {
        tracing::error!(engine = ?engine, "the workflow engine is not running");
        return Err(Problem::new(
            ProblemCode::Unavailable,
            "the workflow engine is not running: workflow steps and the probe's workflow hop would not progress",
        ));
    }
    let newer = reads::newer_events(state.store(), &grant)
        .await
        .map_err(read_problem)?;
    if !newer.is_empty() {
        let types: Vec<String> = newer.iter().map(ToString::to_string).collect();
        tracing::error!(newer = ?types, "the log holds events of a newer build");
        return Err(Problem::new(
            ProblemCode::Unavailable,
            format!(
                "the log holds events a newer build wrote, which this build cannot read: {}; run the newer build",
                types.join(", ")
            ),
        ));
    }
    Ok(Reply::ok(Health {
        status: "ready".into(),
    }))
}

/// `GET /health/integration`: the probe's result and the alerts, 503 when the probe failed.
async fn integration(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<crate::probe::IntegrationHealth>, Problem> {
    allow(&ctx, Action::ReadPublic)?;
    let health = integration_health(&state).await?;
    let status = if health.status == crate::probe::HealthStatus::Failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok(Reply {
        status,
        body: health,
    })
}

/// `GET /metrics`: every metric, with the gauges brought up to date first.
async fn metrics(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _parts: axum::http::request::Parts,
) -> Result<axum::response::Response, Problem> {
    let grant = allow(&ctx, Action::ReadPublic)?;
    let system = reads::system_health(state.store(), &grant, state.options().thresholds)
        .await
        .map_err(read_problem)?;
    let alerts = match state.probe_state().last() {
        Some((_, report)) => crate::probe::alerts(&system, &report),
        None => crate::probe::alerts(
            &system,
            &crate::probe::ProbeReport {
                ok: true,
                at: chrono::Utc::now(),
                correlation_id: CorrelationId::new_v7(),
                broken: None,
                hops: Vec::new(),
                total_ms: 0.0,
            },
        ),
    };
    crate::probe::set_gauges(&system, &alerts);
    Ok(axum::response::IntoResponse::into_response((
        [(
            axum::http::header::CONTENT_TYPE,
            cairn_observe::CONTENT_TYPE,
        )],
        cairn_observe::metrics().render(),
    )))
}

/// `POST /v1/probe/pings`: appends the probe's event and starts its workflow.
async fn probe_ping(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<Ping>, Problem> {
    allow(&ctx, Action::RunProbe)?;
    let ping = state
        .domain()
        .ping(&ctx.command())
        .await
        .map_err(command_problem)?;
    Ok(Reply::accepted(ping))
}

/// The chain's health: a probe result and the alerts.
pub(crate) async fn integration_health(
    state: &AppState,
) -> Result<crate::probe::IntegrationHealth, Problem> {
    let grant = allow_principal(&cairn_policy::Principal::Anonymous, Action::ReadPublic)?;
    let (age, probe) = crate::probe::probe(state, state.options().probe_max_age).await;
    let system = reads::system_health(state.store(), &grant, state.options().thresholds)
        .await
        .map_err(read_problem)?;
    let alerts = crate::probe::alerts(&system, &probe);
    crate::probe::set_gauges(&system, &alerts);
    let status = if !probe.ok {
        crate::probe::HealthStatus::Failing
    } else if alerts.iter().any(|alert| alert.active) {
        crate::probe::HealthStatus::Degraded
    } else {
        crate::probe::HealthStatus::Ok
    };
    Ok(crate::probe::IntegrationHealth {
        status,
        probe,
        probe_age_ms: age.as_secs_f64() * 1_000.0,
        alerts,
        system,
    })
}
