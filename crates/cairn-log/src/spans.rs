//! Spans: one row per hop of a request's path (an HTTP request, a handler, a workflow
//! step attempt, an email, a realtime delivery), keyed by correlation id, for the
//! request's timeline.
//!
//! Recording never waits and never fails the work it describes. A hop that runs inside
//! a write transaction (a handler) records its span on the transaction, and it is
//! written with it. Any other hop's span goes through a bounded channel to one task per
//! database, which hands spans to the log writer in batches, so they share its commits
//! instead of adding their own. A span the channel has no room for is counted
//! (`cairn_trace_spans_dropped_total`) rather than slowing the request down. The log is
//! the record of what happened; spans add how long each part took.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use cairn_types::{CorrelationId, OrgId};

use cairn_types::Tenancy;
use futures::future::BoxFuture;

use crate::args;
use crate::backend::{Conn, Row};
use crate::error::DbError;

/// What kind of hop a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// An HTTP request, from its arrival to its response.
    Http,
    /// One handler applying one event.
    Handler,
    /// One attempt of one workflow step.
    Step,
    /// One email handed to the mail server or the outbox.
    Email,
    /// One event delivered to one realtime subscriber.
    Delivery,
    /// One hop of the integration probe.
    Probe,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Http => "http",
            SpanKind::Handler => "handler",
            SpanKind::Step => "step",
            SpanKind::Email => "email",
            SpanKind::Delivery => "delivery",
            SpanKind::Probe => "probe",
        }
    }

    fn parse(text: &str) -> Option<SpanKind> {
        Some(match text {
            "http" => SpanKind::Http,
            "handler" => SpanKind::Handler,
            "step" => SpanKind::Step,
            "email" => SpanKind::Email,
            "delivery" => SpanKind::Delivery,
            "probe" => SpanKind::Probe,
            _ => return None,
        })
    }
}

/// One recorded hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub correlation_id: CorrelationId,
    pub kind: SpanKind,
    /// What happened, for people: `POST /v1/organizations`, `send_invitation`, …
    pub name: String,
    /// The tenant the hop acted for, if any: tenant-scoped trace reads see only their
    /// own tenant's spans.
    pub org_id: Option<OrgId>,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    /// Why the hop failed, if it did.
    pub error: Option<String>,
    /// Details: a status code, a position, a recipient, an attempt number.
    pub attributes: Value,
}

impl SpanRecord {
    /// A span that started at `started_at` and ends now.
    pub fn ending_now(
        correlation_id: CorrelationId,
        kind: SpanKind,
        name: impl Into<String>,
        started_at: DateTime<Utc>,
    ) -> SpanRecord {
        let duration = (Utc::now() - started_at).to_std().unwrap_or_default();
        SpanRecord {
            correlation_id,
            kind,
            name: name.into(),
            org_id: None,
            started_at,
            duration,
            error: None,
            attributes: Value::Object(serde_json::Map::new()),
        }
    }

    pub fn org(mut self, org_id: Option<OrgId>) -> Self {
        self.org_id = org_id;
        self
    }

    pub fn error(mut self, error: Option<String>) -> Self {
        self.error = error;
        self
    }

    pub fn attribute(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(map) = &mut self.attributes {
            map.insert(key.to_owned(), value.into());
        }
        self
    }
}

/// How many spans may wait before new ones are dropped.
const CAPACITY: usize = 16_384;
/// The most spans one unit of work carries to the log writer.
const BATCH: usize = 500;

/// How long the first span of a batch waits for others.
const LINGER: Duration = Duration::from_millis(20);

enum Message {
    Span(Box<SpanRecord>),
    Flush(oneshot::Sender<()>),
}

/// Every span sink this process started, for [`flush_all_spans`].
static SINKS: Mutex<Vec<(mpsc::WeakSender<Message>, tokio::task::JoinHandle<()>)>> =
    Mutex::new(Vec::new());

/// Writes the spans every database of this process has recorded so far: flushes the
/// sinks of databases still open, and waits for those of closed ones to finish
/// their last batch. Call it before the process exits, whose runtime would otherwise
/// cut that batch off.
pub async fn flush_all_spans() {
    let sinks = SINKS
        .lock()
        .map(|mut sinks| std::mem::take(&mut *sinks))
        .unwrap_or_default();
    for (sender, task) in sinks {
        match sender.upgrade() {
            Some(sender) => {
                let (done, wait) = oneshot::channel();
                if sender.send(Message::Flush(done)).await.is_ok() {
                    let _ = wait.await;
                }
            }
            // Every sender is gone: the sink drains what is queued, then ends.
            None => {
                let _ = task.await;
            }
        }
    }
}

/// Hands a batch of spans to the log writer, as one unit of work.
pub(crate) type WriteSpans =
    Arc<dyn Fn(Arc<Vec<SpanRecord>>) -> BoxFuture<'static, Result<(), DbError>> + Send + Sync>;

/// Where a database's spans go: a channel to a task that gathers them into batches
/// and hands each batch to the log writer as one unit of work. The task starts with
/// the first span.
#[derive(Default)]
pub(crate) struct SpanSink {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    /// The writer to hand batches to, set when the database opens.
    writer: Mutex<Option<WriteSpans>>,
}

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanSink")
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Span(span) => f.debug_tuple("Span").field(span).finish(),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl SpanSink {
    /// Gives the sink the writer to hand its batches to. The sink's task holds a
    /// handle of its own only while it has spans to write, so that it never keeps the
    /// writer from stopping when the database is dropped.
    pub(crate) fn connect(&self, writer: WriteSpans) {
        if let Ok(mut slot) = self.writer.lock() {
            *slot = Some(writer);
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Message>> {
        let mut slot = self.sender.lock().ok()?;
        if slot.is_none() {
            // Outside a runtime there is nowhere to write from: such spans are dropped.
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let writer = self.writer.lock().ok()?.clone()?;
            let (sender, receiver) = mpsc::channel(CAPACITY);
            let task = runtime.spawn(write_spans(writer, receiver));
            if let Ok(mut sinks) = SINKS.lock() {
                sinks.push((sender.downgrade(), task));
            }
            *slot = Some(sender);
        }
        slot.clone()
    }

    pub(crate) fn record(&self, span: SpanRecord) {
        let sent = self
            .sender()
            .is_some_and(|sender| sender.try_send(Message::Span(Box::new(span))).is_ok());
        if !sent {
            cairn_observe::metrics().spans_dropped.inc();
        }
    }

    pub(crate) async fn flush(&self) {
        let sender = self.sender.lock().ok().and_then(|slot| slot.clone());
        if let Some(sender) = sender {
            let (done, wait) = oneshot::channel();
            if sender.send(Message::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// Forgets the writer and the channel, so that the task ends once it has written
    /// what is queued (the database is closing).
    pub(crate) fn disconnect(&self) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = None;
        }
        if let Ok(mut slot) = self.writer.lock() {
            *slot = None;
        }
    }
}

/// The sink's task: batches what is waiting and hands it to the log writer, until
/// every sender is gone.
async fn write_spans(writer: WriteSpans, mut receiver: mpsc::Receiver<Message>) {
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = receiver.recv().await {
        // Spans come one per hop. They wait a little for company, unless a reader
        // asked for them (a flush): the writer's batches are cheap, not free.
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Span(span) => batch.push(*span),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH && flushes.is_empty() {
                next = tokio::time::timeout_at(deadline, receiver.recv())
                    .await
                    .ok()
                    .flatten();
            }
        }
        if !batch.is_empty() {
            let spans = Arc::new(std::mem::take(&mut batch));
            let n_spans = spans.len();
            let written = writer(spans).await;
            if let Err(error) = written {
                cairn_observe::metrics()
                    .spans_dropped
                    .inc_by(n_spans as u64);
                tracing::warn!(error = %error, spans = n_spans, "could not write trace spans");
                // A database that is down would otherwise be retried in a hot loop.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn span_from_row(row: &Row) -> Result<SpanRecord, DbError> {
    let kind: String = row.get("kind")?;
    let duration_us: i64 = row.get("duration_us")?;
    Ok(SpanRecord {
        correlation_id: row.get("correlation_id")?,
        kind: SpanKind::parse(&kind)
            .ok_or_else(|| DbError::decode("kind", format!("unknown span kind {kind:?}")))?,
        name: row.get("name")?,
        org_id: row.get("org_id")?,
        started_at: row.get("started_at")?,
        duration: Duration::from_micros(u64::try_from(duration_us).unwrap_or(0)),
        error: row.get("error")?,
        attributes: row.get_json("attributes")?,
    })
}

impl Conn<'_> {
    /// The spans of one correlation id that a tenancy sees, oldest first.
    pub async fn read_spans(
        &mut self,
        correlation_id: CorrelationId,
        tenancy: &Tenancy,
    ) -> Result<Vec<SpanRecord>, DbError> {
        let rows = match tenancy {
            Tenancy::None => return Ok(Vec::new()),
            Tenancy::All => {
                self.fetch_all(
                    "SELECT correlation_id, kind, name, org_id, started_at, duration_us, error, attributes \
                     FROM trace_spans WHERE correlation_id = $1 ORDER BY started_at, id",
                    args![correlation_id],
                )
                .await?
            }
            Tenancy::Org(org) => {
                self.fetch_all(
                    "SELECT correlation_id, kind, name, org_id, started_at, duration_us, error, attributes \
                     FROM trace_spans WHERE correlation_id = $1 AND org_id = $2 ORDER BY started_at, id",
                    args![correlation_id, *org],
                )
                .await?
            }
        };
        rows.iter().map(span_from_row).collect()
    }
}
