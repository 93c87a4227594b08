//! The metrics every layer records, in one registry, rendered for Prometheus at
//! `GET /metrics`.
//!
//! Counters and histograms are recorded where things happen (an append commits, a
//! handler runs, a step is retried, an event reaches a subscriber, a request is
//! answered). Gauges that describe the database (unprocessed events, workflows by
//! status) are set when the metrics are scraped.
//!
//! [`otel`] makes the `tracing` spans of one correlation id one OpenTelemetry trace.
//!
//! This crate performs no IO and knows nothing about the rest of cairn.

pub mod otel;

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedLabels {
    pub event_type: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopLabels {
    pub hop: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub alert: String,
}

/// Every metric cairn exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events_appended: Family<EventLabels, Counter>,
    pub events_failed: Family<FailedLabels, Counter>,
    pub events_unprocessed: Gauge,
    pub events_failed_now: Gauge,
    pub dispatch_seconds: Histogram,
    pub handler_seconds: Family<EventLabels, Histogram>,
    pub workflows: Family<StatusLabels, Gauge>,
    pub workflow_steps: Family<WorkflowLabels, Counter>,
    pub workflow_step_retries: Family<WorkflowLabels, Counter>,
    pub workflow_steps_blocked: Family<WorkflowLabels, Counter>,
    pub held_streams: Gauge,
    pub held_events: Gauge,
    pub paused_routes: Gauge,
    pub paused_workflow_kinds: Gauge,
    pub paused_workflow_runs: Gauge,
    pub realtime_subscribers: Gauge,
    pub realtime_deliveries: Counter,
    pub realtime_delivery_seconds: Histogram,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_seconds: Family<RouteLabels, Histogram>,
    pub probe_ok: Gauge,
    pub probe_hop_seconds: Family<HopLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub alerts: Family<AlertLabels, Gauge>,
    pub spans_dropped: Counter,
    pub writer_batch_units: Histogram,
    pub writer_batch_seconds: Histogram,
    pub writer_queued: Gauge,
    pub writer_reruns: Counter,
    pub writer_stale_batches: Counter,
    pub writer_cut: Counter,
    pub writer_refused: Counter,
    pub http_connections: Gauge,
    pub http_connections_closed: Family<ReasonLabels, Counter>,
    pub spans_pruned: Counter,
    /// Access records (reads of personal data) written to the access log.
    pub access_records_written: Counter,
    /// Access records that could not be written after every retry: each is also logged
    /// as an error with what it recorded.
    pub access_records_failed: Counter,
    /// Access records deleted because they were older than the access log's retention.
    pub access_records_pruned: Counter,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        let events_appended = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_appended",
            "Events appended and committed, by event type",
            events_appended.clone(),
        );
        let events_failed = Family::<FailedLabels, Counter>::default();
        registry.register(
            "events_failed",
            "Events whose processing failed, by event type and error code",
            events_failed.clone(),
        );
        let events_unprocessed = Gauge::default();
        registry.register(
            "events_unprocessed",
            "Events stored but never processed (should stay at zero)",
            events_unprocessed.clone(),
        );
        let events_failed_now = Gauge::default();
        registry.register(
            "events_failed_current",
            "Events whose last processing failed",
            events_failed_now.clone(),
        );
        let dispatch_seconds = Histogram::new(latency_buckets());
        registry.register(
            "dispatch_seconds",
            "Time to dispatch the events of one append",
            dispatch_seconds.clone(),
        );
        let handler_seconds = Family::<EventLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "handler_seconds",
            "Time one handler took, by event type",
            handler_seconds.clone(),
        );
        let workflows = Family::<StatusLabels, Gauge>::default();
        registry.register("workflows", "Workflow runs by status", workflows.clone());
        let workflow_steps = Family::<WorkflowLabels, Counter>::default();
        registry.register(
            "workflow_steps",
            "Workflow steps completed, by workflow kind",
            workflow_steps.clone(),
        );
        let workflow_step_retries = Family::<WorkflowLabels, Counter>::default();
        registry.register(
            "workflow_step_retries",
            "Workflow step attempts that failed and will be retried, by workflow kind",
            workflow_step_retries.clone(),
        );
        let workflow_steps_blocked = Family::<WorkflowLabels, Counter>::default();
        registry.register(
            "workflow_steps_blocked",
            "Workflow step attempts that waited because their events would be held (a held stream or a paused route), by workflow kind",
            workflow_steps_blocked.clone(),
        );
        let held_streams = Gauge::default();
        registry.register(
            "held_streams",
            "Streams held behind a failed event or a paused handler route (at scrape time)",
            held_streams.clone(),
        );
        let held_events = Gauge::default();
        registry.register(
            "held_events",
            "Events stored and held, waiting to be applied (at scrape time)",
            held_events.clone(),
        );
        let paused_routes = Gauge::default();
        registry.register(
            "paused_routes",
            "Handler routes paused by an operator (at scrape time)",
            paused_routes.clone(),
        );
        let paused_workflow_kinds = Gauge::default();
        registry.register(
            "paused_workflow_kinds",
            "Workflow kinds paused (at scrape time)",
            paused_workflow_kinds.clone(),
        );
        let paused_workflow_runs = Gauge::default();
        registry.register(
            "paused_workflow_runs",
            "Workflow runs paused on their own, by an operator or when a step's attempts ran out (at scrape time)",
            paused_workflow_runs.clone(),
        );
        let realtime_subscribers = Gauge::default();
        registry.register(
            "realtime_subscribers",
            "Open realtime subscriptions",
            realtime_subscribers.clone(),
        );
        let realtime_deliveries = Counter::default();
        registry.register(
            "realtime_deliveries",
            "Events delivered to realtime subscribers",
            realtime_deliveries.clone(),
        );
        let realtime_delivery_seconds = Histogram::new(latency_buckets());
        registry.register(
            "realtime_delivery_seconds",
            "Time from an event's append to its delivery to a subscriber",
            realtime_delivery_seconds.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let http_request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "http_request_seconds",
            "HTTP request latency by route",
            http_request_seconds.clone(),
        );
        let probe_ok = Gauge::default();
        registry.register(
            "probe_ok",
            "1 when the last integration probe passed every hop, else 0",
            probe_ok.clone(),
        );
        let probe_hop_seconds =
            Family::<HopLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "probe_hop_seconds",
            "Latency of each hop in the last integration probe",
            probe_hop_seconds.clone(),
        );
        let alerts = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "alerts",
            "Active alerts by kind (1 active, 0 clear)",
            alerts.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "HTTP connections open now",
            http_connections.clone(),
        );
        let http_connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_connections_closed",
            "HTTP connections the server closed itself, by reason (header_timeout, body_timeout, idle_timeout, send_timeout, evicted, refused, shutdown)",
            http_connections_closed.clone(),
        );
        let spans_pruned = Counter::default();
        registry.register(
            "trace_spans_pruned",
            "Timeline spans deleted because they were older than the retention period",
            spans_pruned.clone(),
        );
        let access_records_written = Counter::default();
        registry.register(
            "access_records_written",
            "Access records (reads of personal data) written to the access log",
            access_records_written.clone(),
        );
        let access_records_failed = Counter::default();
        registry.register(
            "access_records_failed",
            "Access records that could not be written to the access log after every retry",
            access_records_failed.clone(),
        );
        let access_records_pruned = Counter::default();
        registry.register(
            "access_records_pruned",
            "Access records deleted because they were older than the access log's retention",
            access_records_pruned.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Timeline spans that could not be written (queue full or database error)",
            spans_dropped.clone(),
        );
        let writer_batch_units =
            Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        registry.register(
            "writer_batch_units",
            "Units of work the log writer committed together, per batch",
            writer_batch_units.clone(),
        );
        let writer_batch_seconds = Histogram::new(latency_buckets());
        registry.register(
            "writer_batch_seconds",
            "Time the log writer took for one batch, commit included",
            writer_batch_seconds.clone(),
        );
        let writer_queued = Gauge::default();
        registry.register(
            "writer_queued",
            "Units of work waiting for the log writer",
            writer_queued.clone(),
        );
        let writer_reruns = Counter::default();
        registry.register(
            "writer_reruns",
            "Batches the log writer ran again, unit by unit or with savepoints, after a failure",
            writer_reruns.clone(),
        );
        let writer_stale_batches = Counter::default();
        registry.register(
            "writer_stale_batches",
            "PostgreSQL batches that started from what the log writer knew of the log and found the head moved by another process: they ran again, reading it",
            writer_stale_batches.clone(),
        );
        let writer_cut = Counter::default();
        registry.register(
            "writer_batches_cut",
            "Batches of normal work the log writer committed early, putting their unrun units back, because urgent work arrived",
            writer_cut.clone(),
        );
        let writer_refused = Counter::default();
        registry.register(
            "writer_refused",
            "Units of work refused because the log writer's queue was full",
            writer_refused.clone(),
        );
        Metrics {
            registry,
            spans_dropped,
            http_connections,
            http_connections_closed,
            spans_pruned,
            access_records_written,
            access_records_failed,
            access_records_pruned,
            writer_batch_units,
            writer_batch_seconds,
            writer_queued,
            writer_reruns,
            writer_stale_batches,
            writer_cut,
            writer_refused,
            events_appended,
            events_failed,
            events_unprocessed,
            events_failed_now,
            dispatch_seconds,
            handler_seconds,
            workflows,
            workflow_steps,
            workflow_step_retries,
            workflow_steps_blocked,
            held_streams,
            held_events,
            paused_routes,
            paused_workflow_kinds,
            paused_workflow_runs,
            realtime_subscribers,
            realtime_deliveries,
            realtime_delivery_seconds,
            http_requests,
            http_request_seconds,
            probe_ok,
            probe_hop_seconds,
            alerts,
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Seconds, for histograms.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_metrics_render() {
        let m = metrics();
        m.events_appended
            .get_or_create(&EventLabels {
                event_type: "test.pinged".into(),
            })
            .inc();
        m.dispatch_seconds.observe(0.002);
        let text = m.render();
        assert!(
            text.contains("cairn_events_appended_total{event_type=\"test.pinged\"}"),
            "{text}"
        );
        assert!(text.contains("cairn_dispatch_seconds_bucket"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
