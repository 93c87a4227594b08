//! The access log: every read that returned people's data, on record.
//!
//! One record per read, not per person: an API response, a console page, a batch of
//! events delivered to one feed subscriber, a command-line listing. A record names who
//! read (`user:<id>`, `service:<name>`, `operator:<name>`, …), through what
//! ([`AccessVia`]), in which request (its correlation id), what was read (a resource:
//! `user <id>`, `organization <id> users`, `events`), and the ids of the people whose
//! data it returned (its subjects). A list of 200 users is one record naming the list
//! and its 200 ids, not 200 records.
//!
//! The records have a hash chain of their own (`access_head`, `access_log`), in the
//! style of the event log's ([`crate::hash`]): each record's hash covers the previous
//! record's hash and every field of the record, so an edited, deleted or reordered
//! record is named by [`Db::verify_access_chain`]. The table is append-only (triggers
//! on both backends); records are removed only by [`Db::prune_access`], from the
//! oldest end and only past the retention period, and the head keeps the hash of the
//! last record pruned as the anchor the rest of the chain starts from. Pruning spans
//! never touches it.
//!
//! Recording never makes a read wait for a commit: [`Db::record_access`] queues the
//! record for a task that hands records to the log writer in batches, as one unit of
//! work each, so they share its commits. The queue is bounded; a read whose record
//! finds it full waits for room rather than dropping the record. A batch the database
//! refuses is tried again; one that still fails after every try is counted
//! (`cairn_access_records_failed_total`) and each of its records is logged as an error
//! with everything it recorded, so no record is lost without a trace. The command line
//! writes its records at once ([`Db::write_access`]) and fails when it cannot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use cairn_types::{CorrelationId, EventType, OrgId, UserId};

use crate::args;
use crate::audit::Problem;
use crate::audit::checkpoint::AccessMark;
use crate::backend::{Conn, Row};
use crate::db::Db;
use crate::error::DbError;
use crate::event::RecordedEvent;
use crate::hash::{self, AccessColumns, GENESIS};
use crate::read::ReadError;
use crate::tx::Tx;
use crate::value::dialect;
use crate::writer::WriteOptions;

/// The event types whose payloads carry people's names and email addresses: reading
/// one of them is a read of personal data.
pub const PERSONAL_EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.invited",
    "invitation.sent",
    "organization.bootstrap.initiated",
];

/// Whether events of this type carry people's data.
pub fn is_personal(event_type: &EventType) -> bool {
    PERSONAL_EVENT_TYPES.contains(&event_type.as_str())
}

/// The people whose data `events` carry, or `None` when none of them is of a
/// [personal type](PERSONAL_EVENT_TYPES). A person is named by their user id: the
/// stream's id for a `user` stream, and every `user_id` the payload holds (a bootstrap
/// names its administrator and invitees; an invitation its invitee).
pub fn personal_subjects<'a>(
    events: impl IntoIterator<Item = &'a RecordedEvent>,
) -> Option<Vec<UserId>> {
    let mut found = false;
    let mut subjects = Vec::new();
    for event in events {
        if !is_personal(&event.event_type) {
            continue;
        }
        found = true;
        if event.stream_type.as_str() == "user" {
            subjects.push(UserId::from_uuid(event.stream_id.as_uuid()));
        }
        collect_user_ids(&event.data, &mut subjects);
    }
    found.then(|| {
        subjects.sort();
        subjects.dedup();
        subjects
    })
}

/// Every `user_id` in a payload, at any depth.
fn collect_user_ids(value: &serde_json::Value, out: &mut Vec<UserId>) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, item) in object {
                match (key.as_str(), item.as_str()) {
                    ("user_id", Some(text)) => out.extend(UserId::parse(text).ok()),
                    _ => collect_user_ids(item, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_user_ids(item, out);
            }
        }
        _ => {}
    }
}

/// Through what people's data was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessVia {
    /// An HTTP API response.
    Api,
    /// A page of the console.
    Console,
    /// Events delivered to a live feed subscriber (SSE or WebSocket).
    Feed,
    /// A command-line read.
    Cli,
}

impl AccessVia {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessVia::Api => "api",
            AccessVia::Console => "console",
            AccessVia::Feed => "feed",
            AccessVia::Cli => "cli",
        }
    }

    fn parse(text: &str) -> Option<AccessVia> {
        Some(match text {
            "api" => AccessVia::Api,
            "console" => AccessVia::Console,
            "feed" => AccessVia::Feed,
            "cli" => AccessVia::Cli,
            _ => return None,
        })
    }
}

/// One read of people's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// When the data was read (microseconds).
    pub recorded_at: DateTime<Utc>,
    /// Who read: `user:<id>`, `service:<name>`, `platform-admin:<name>`,
    /// `operator:<name>`, `anonymous`.
    pub who: String,
    pub via: AccessVia,
    /// The request (or command) that read.
    pub correlation_id: CorrelationId,
    /// The organization whose data was read, when there is one.
    pub org_id: Option<OrgId>,
    /// What was read: `user <id>`, `organization <id> users`, `events`, …
    pub resource: String,
    /// The people whose data was returned.
    pub subjects: Vec<UserId>,
}

impl AccessRecord {
    /// A read made now.
    pub fn now(
        who: impl Into<String>,
        via: AccessVia,
        correlation_id: CorrelationId,
        resource: impl Into<String>,
        subjects: Vec<UserId>,
    ) -> AccessRecord {
        AccessRecord {
            recorded_at: cairn_types::now_micros(),
            who: who.into(),
            via,
            correlation_id,
            org_id: None,
            resource: resource.into(),
            subjects,
        }
    }

    /// The organization whose data was read.
    pub fn org(mut self, org_id: Option<OrgId>) -> Self {
        self.org_id = org_id;
        self
    }

    fn subjects_text(&self) -> String {
        join_subjects(&self.subjects)
    }
}

fn join_subjects(subjects: &[UserId]) -> String {
    let mut text = String::with_capacity(subjects.len() * 37);
    for (index, subject) in subjects.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&subject.to_string());
    }
    text
}

/// An access record as stored: its place in the chain and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredAccess {
    /// Its sequence number in the access log, from 1, gapless.
    pub seq: i64,
    #[serde(flatten)]
    pub record: AccessRecord,
    pub hash: String,
}

// Writing.

/// Appends `records` to the access chain in `tx`, in order.
pub(crate) async fn append(tx: &mut Tx, records: &[AccessRecord]) -> Result<(), DbError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut conn = tx.conn();
    // PostgreSQL: processes sharing the database take turns at the head.
    let head = conn
        .fetch_one(
            dialect(
                conn.backend(),
                "SELECT last_seq, last_hash FROM access_head WHERE id = 1",
                "SELECT last_seq, last_hash FROM access_head WHERE id = 1 FOR UPDATE",
            ),
            args![],
        )
        .await?;
    let mut seq: i64 = head.get("last_seq")?;
    let mut previous: String = head.get("last_hash")?;
    // PostgreSQL: the batch's records as one statement (a statement per record cost
    // the server more than the rows themselves); SQLite runs in-process, a row each.
    let postgres = conn.backend() == crate::Backend::Postgres;
    let mut rows = Vec::with_capacity(if postgres { records.len() } else { 0 });
    for record in records {
        seq += 1;
        let subjects = record.subjects_text();
        let correlation_id = record.correlation_id.to_string();
        let org_id = record.org_id.map(|org| org.to_string()).unwrap_or_default();
        let hash = hash::access_hash(
            &previous,
            &AccessColumns {
                seq,
                recorded_at: record.recorded_at,
                who: &record.who,
                via: record.via.as_str(),
                correlation_id: &correlation_id,
                org_id: &org_id,
                resource: &record.resource,
                subjects: &subjects,
            },
        );
        if postgres {
            rows.push(serde_json::json!({
                "seq": seq,
                "recorded_at": record
                    .recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "who": record.who,
                "via": record.via.as_str(),
                "correlation_id": record.correlation_id,
                "org_id": record.org_id,
                "resource": record.resource,
                "subjects": subjects,
                "hash": hash,
            }));
        } else {
            conn.execute(
                "INSERT INTO access_log (seq, recorded_at, who, via, correlation_id, org_id, \
                 resource, subjects, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                args![
                    seq,
                    record.recorded_at,
                    record.who.as_str(),
                    record.via.as_str(),
                    record.correlation_id,
                    record.org_id,
                    record.resource.as_str(),
                    subjects,
                    hash.as_str()
                ],
            )
            .await?;
        }
        previous = hash;
    }
    if postgres {
        let n = rows.len() as u64;
        conn.execute_changing(
            "INSERT INTO access_log (seq, recorded_at, who, via, correlation_id, org_id, \
             resource, subjects, hash) SELECT seq, recorded_at, who, via, correlation_id, \
             org_id, resource, subjects, hash FROM jsonb_to_recordset($1) AS r(seq bigint, \
             recorded_at timestamptz, who text, via text, correlation_id uuid, org_id uuid, \
             resource text, subjects text, hash text)",
            args![serde_json::Value::Array(rows)],
            n,
        )
        .await?;
    }
    conn.execute(
        "UPDATE access_head SET last_seq = $1, last_hash = $2 WHERE id = 1",
        args![seq, previous],
    )
    .await?;
    Ok(())
}

/// How many records may wait before a read waits for room.
const CAPACITY: usize = 16_384;
/// The most records one unit of work carries to the log writer.
const BATCH: usize = 500;
/// How long the first record of a batch waits for others.
const LINGER: Duration = Duration::from_millis(10);
/// How many times a batch the database refused is tried again.
const RETRIES: u32 = 5;

enum Message {
    Record(Box<AccessRecord>),
    Flush(oneshot::Sender<()>),
}

/// Hands a batch of records to the log writer, as one unit of work.
pub(crate) type WriteAccess =
    Arc<dyn Fn(Arc<Vec<AccessRecord>>) -> BoxFuture<'static, Result<(), DbError>> + Send + Sync>;

/// Where a database's access records go: a channel to a task that gathers them into
/// batches for the log writer (see the module's documentation). The task starts with
/// the first record.
#[derive(Default)]
pub(crate) struct AccessSink {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    writer: Mutex<Option<WriteAccess>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessSink")
    }
}

impl AccessSink {
    /// Gives the sink the writer to hand its batches to.
    pub(crate) fn connect(&self, writer: WriteAccess) {
        if let Ok(mut slot) = self.writer.lock() {
            *slot = Some(writer);
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Message>> {
        let mut slot = self.sender.lock().ok()?;
        if slot.is_none() {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let writer = self.writer.lock().ok()?.clone()?;
            let (sender, receiver) = mpsc::channel(CAPACITY);
            let task = runtime.spawn(write_records(writer, receiver));
            if let Ok(mut slot) = self.task.lock() {
                *slot = Some(task);
            }
            *slot = Some(sender);
        }
        slot.clone()
    }

    /// Queues a record, waiting for room when the queue is full.
    pub(crate) async fn record(&self, record: AccessRecord) {
        let Some(sender) = self.sender() else {
            lost(&[record], "the database is closed");
            return;
        };
        if let Err(mpsc::error::SendError(Message::Record(record))) =
            sender.send(Message::Record(Box::new(record))).await
        {
            lost(&[*record], "the access log's writer has stopped");
        }
    }

    /// Waits until every record queued so far is written (or reported lost).
    pub(crate) async fn flush(&self) {
        let sender = self.sender.lock().ok().and_then(|slot| slot.clone());
        if let Some(sender) = sender {
            let (done, wait) = oneshot::channel();
            if sender.send(Message::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// Forgets the writer and the channel, and waits for the task to write what is
    /// queued (the database is closing).
    pub(crate) async fn disconnect(&self) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = None;
        }
        if let Ok(mut slot) = self.writer.lock() {
            *slot = None;
        }
        let task = self.task.lock().ok().and_then(|mut slot| slot.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Reports records that could not be written: counted, and each logged as an error
/// with what it recorded, so that the read stays on record in the process's log.
fn lost(records: &[AccessRecord], why: &str) {
    cairn_observe::metrics()
        .access_records_failed
        .inc_by(records.len() as u64);
    for record in records {
        tracing::error!(
            why,
            who = %record.who,
            via = record.via.as_str(),
            correlation_id = %record.correlation_id,
            resource = %record.resource,
            subjects = %record.subjects_text(),
            recorded_at = %record.recorded_at,
            "an access record could not be written to the access log"
        );
    }
}

/// The sink's task: batches what is waiting and hands it to the log writer, until
/// every sender is gone.
async fn write_records(writer: WriteAccess, mut receiver: mpsc::Receiver<Message>) {
    let mut batch: Vec<AccessRecord> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = receiver.recv().await {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => batch.push(*record),
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
            let records = Arc::new(std::mem::take(&mut batch));
            write_with_retries(&writer, records).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes one batch, trying again with growing waits while the database refuses.
async fn write_with_retries(writer: &WriteAccess, records: Arc<Vec<AccessRecord>>) {
    let mut wait = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        match writer(records.clone()).await {
            Ok(()) => {
                cairn_observe::metrics()
                    .access_records_written
                    .inc_by(records.len() as u64);
                return;
            }
            Err(error) if attempt < RETRIES => {
                tracing::warn!(error = %error, records = records.len(), attempt, "could not write access records; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(error) => {
                lost(&records, &error.to_string());
                return;
            }
        }
    }
}

impl Db {
    /// Writes `records` to the access log now, in one unit of work, and returns once
    /// they are committed: for reads that must not go on unrecorded (the command line).
    pub async fn write_access(&self, records: Vec<AccessRecord>) -> Result<(), DbError> {
        let records = Arc::new(records);
        let n = records.len() as u64;
        self.write(WriteOptions::default(), move |tx| {
            let records = records.clone();
            Box::pin(async move { append(tx, &records).await })
        })
        .await?;
        cairn_observe::metrics().access_records_written.inc_by(n);
        Ok(())
    }

    /// The access records that name `subject`, recorded at or after `since` if given,
    /// oldest first (at most `limit`).
    pub async fn read_access(
        &self,
        subject: UserId,
        since: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<StoredAccess>, ReadError> {
        let pattern = format!("%{subject}%");
        let mut reader = self.reader().await?;
        let mut conn = reader.conn();
        let rows = match since {
            Some(since) => {
                conn.fetch_all(
                    "SELECT seq, recorded_at, who, via, correlation_id, org_id, resource, \
                     subjects, hash FROM access_log WHERE subjects LIKE $1 AND recorded_at >= $2 \
                     ORDER BY seq LIMIT $3",
                    args![pattern, since, i64::from(limit)],
                )
                .await?
            }
            None => {
                conn.fetch_all(
                    "SELECT seq, recorded_at, who, via, correlation_id, org_id, resource, \
                     subjects, hash FROM access_log WHERE subjects LIKE $1 ORDER BY seq LIMIT $2",
                    args![pattern, i64::from(limit)],
                )
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get("seq")?;
                stored_from_row(row).map_err(|reason| ReadError::Corrupt {
                    position: seq,
                    reason: format!("access record {seq}: {reason}"),
                })
            })
            .collect()
    }

    /// Deletes the access records recorded before `cutoff`, from the oldest end only,
    /// a batch per transaction, moving the head's anchor to the last one deleted so
    /// that the rest of the chain still verifies. Stops at the first record recorded
    /// at or after `cutoff`, even if later ones are older. How many were deleted.
    pub async fn prune_access(&self, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
        let mut deleted = 0;
        loop {
            let batch: u64 = self
                .write(WriteOptions::default(), move |tx| {
                    Box::pin(async move { prune_batch(&mut tx.conn(), cutoff).await })
                })
                .await?;
            deleted += batch;
            if batch < PRUNE_BATCH as u64 {
                cairn_observe::metrics()
                    .access_records_pruned
                    .inc_by(deleted);
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// How many records one pruning transaction deletes at most.
const PRUNE_BATCH: i64 = 2_000;

async fn prune_batch(conn: &mut Conn<'_>, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
    let head = conn
        .fetch_one(
            dialect(
                conn.backend(),
                "SELECT pruned_seq FROM access_head WHERE id = 1",
                "SELECT pruned_seq FROM access_head WHERE id = 1 FOR UPDATE",
            ),
            args![],
        )
        .await?;
    let pruned: i64 = head.get("pruned_seq")?;
    let rows = conn
        .fetch_all(
            "SELECT seq, recorded_at, hash FROM access_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            args![pruned, PRUNE_BATCH],
        )
        .await?;
    let mut last: Option<(i64, String)> = None;
    for row in &rows {
        let recorded_at: DateTime<Utc> = row.get("recorded_at")?;
        if recorded_at >= cutoff {
            break;
        }
        last = Some((row.get("seq")?, row.get("hash")?));
    }
    let Some((seq, hash)) = last else {
        return Ok(0);
    };
    // The anchor moves first: the triggers let a record go only once it is past it.
    conn.execute(
        "UPDATE access_head SET pruned_seq = $1, pruned_hash = $2 WHERE id = 1",
        args![seq, hash.as_str()],
    )
    .await?;
    conn.execute(
        "DELETE FROM access_log WHERE seq > $1 AND seq <= $2",
        args![pruned, seq],
    )
    .await
}

// Reading and verifying.

/// Decodes a stored record, or says which column does not decode.
fn stored_from_row(row: &Row) -> Result<StoredAccess, String> {
    let column = |name: &str, e: DbError| format!("column {name}: {e}");
    let via: String = row.get("via").map_err(|e| column("via", e))?;
    let via = AccessVia::parse(&via).ok_or_else(|| format!("column via: unknown {via:?}"))?;
    let subjects: String = row.get("subjects").map_err(|e| column("subjects", e))?;
    let subjects = split_subjects(&subjects)?;
    let recorded_at: Option<DateTime<Utc>> = row
        .get("recorded_at")
        .map_err(|e| column("recorded_at", e))?;
    Ok(StoredAccess {
        seq: row.get("seq").map_err(|e| column("seq", e))?,
        record: AccessRecord {
            recorded_at: recorded_at.ok_or_else(|| {
                "column recorded_at: not a time (infinite, or out of range)".to_owned()
            })?,
            who: row.get("who").map_err(|e| column("who", e))?,
            via,
            correlation_id: row
                .get("correlation_id")
                .map_err(|e| column("correlation_id", e))?,
            org_id: row.get("org_id").map_err(|e| column("org_id", e))?,
            resource: row.get("resource").map_err(|e| column("resource", e))?,
            subjects,
        },
        hash: row.get("hash").map_err(|e| column("hash", e))?,
    })
}

fn split_subjects(text: &str) -> Result<Vec<UserId>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|id| {
            UserId::parse(id).map_err(|e| format!("column subjects: {id:?} is not a user id: {e}"))
        })
        .collect()
}

/// The first record at which the access chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessBreach {
    /// The record's sequence number.
    pub seq: i64,
    pub problem: Problem,
    pub detail: String,
}

/// The result of walking the access chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessAuditReport {
    /// The last record pruned (0 when none was): the walk starts after it, from the
    /// hash the head keeps of it.
    pub pruned_through: i64,
    /// Records rehashed before the first breach (or all of them).
    pub n_checked: u64,
    /// The last sequence number the head records.
    pub head: i64,
    /// The last hash the head records.
    pub head_hash: String,
    /// The first breach; `None` when the chain is intact.
    pub breach: Option<AccessBreach>,
    /// What became of each head a signed checkpoint holds, in the order given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anchors: Vec<AccessAnchorStatus>,
}

impl AccessAuditReport {
    /// Whether the access chain is intact.
    pub fn is_intact(&self) -> bool {
        self.breach.is_none()
    }
}

/// What became of an access log head a signed checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessAnchorStatus {
    /// The record is there with the hash the checkpoint signed.
    Holds,
    /// The record is there with another hash: the access log was rewritten.
    Contradicted,
    /// The access log ends before the record: records were deleted from its end.
    BeyondTheLog,
    /// The walk broke before the record.
    NotReached,
    /// The record was pruned past its retention period: nothing is left to hold it to.
    Pruned,
}

impl AccessAnchorStatus {
    /// Whether this says the access log no longer is what was signed.
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            AccessAnchorStatus::Contradicted | AccessAnchorStatus::BeyondTheLog
        )
    }
}

/// The latest time PostgreSQL hands over as a time (see the event chain's walk).
const PG_RECORDED_AT: &str = "CASE WHEN isfinite(recorded_at) \
     AND recorded_at < '200000-01-01 00:00:00+00'::timestamptz THEN recorded_at END AS recorded_at";

fn held(same: bool) -> AccessAnchorStatus {
    if same {
        AccessAnchorStatus::Holds
    } else {
        AccessAnchorStatus::Contradicted
    }
}

/// Checks one row against the chain before it; returns its stored hash.
fn check_access_row(row: &Row, previous: &str) -> Result<String, (Problem, String)> {
    let undecodable = |reason: String| {
        (
            Problem::Undecodable,
            format!("the access record no longer decodes: {reason}"),
        )
    };
    let stored = stored_from_row(row).map_err(undecodable)?;
    let record = &stored.record;
    let computed = hash::access_hash(
        previous,
        &AccessColumns {
            seq: stored.seq,
            recorded_at: record.recorded_at,
            who: &record.who,
            via: record.via.as_str(),
            correlation_id: &record.correlation_id.to_string(),
            org_id: &record.org_id.map(|o| o.to_string()).unwrap_or_default(),
            resource: &record.resource,
            subjects: &record.subjects_text(),
        },
    );
    if computed != stored.hash {
        return Err((
            Problem::HashMismatch,
            format!(
                "stored hash {} but the record and the chain before it hash to {computed}: \
                 the record was edited or moved",
                stored.hash
            ),
        ));
    }
    Ok(stored.hash)
}

impl Db {
    /// Walks the access log's hash chain from the pruning anchor to its head, in one
    /// snapshot, and reports the first record at fault.
    pub async fn verify_access_chain(&self) -> Result<AccessAuditReport, ReadError> {
        self.verify_access_chain_with(&[]).await
    }

    /// [`Db::verify_access_chain`], holding the chain to the heads signed checkpoints
    /// hold: each record named must be there with the hash signed.
    pub async fn verify_access_chain_with(
        &self,
        anchors: &[AccessMark],
    ) -> Result<AccessAuditReport, ReadError> {
        let mut snapshot = self.snapshot().await?;
        let mut conn = snapshot.conn();
        let head = conn
            .fetch_one(
                "SELECT last_seq, last_hash, pruned_seq, pruned_hash FROM access_head WHERE id = 1",
                args![],
            )
            .await?;
        let last_seq: i64 = head.get("last_seq")?;
        let last_hash: String = head.get("last_hash")?;
        let pruned_seq: i64 = head.get("pruned_seq")?;
        let mut previous: String = head.get("pruned_hash")?;
        let mut n_checked = 0_u64;
        // What each anchor found, as the walk reaches it.
        let mut found: Vec<Option<AccessAnchorStatus>> = anchors
            .iter()
            .map(|anchor| {
                let seq = i64::try_from(anchor.seq).unwrap_or(i64::MAX);
                if seq == 0 {
                    Some(held(anchor.hash == GENESIS))
                } else if seq == pruned_seq {
                    Some(held(anchor.hash == previous))
                } else if seq < pruned_seq {
                    Some(AccessAnchorStatus::Pruned)
                } else {
                    None
                }
            })
            .collect();
        let finish = |n_checked, breach: Option<AccessBreach>, found: Vec<Option<_>>| {
            let unreached = if breach.is_some() {
                AccessAnchorStatus::NotReached
            } else {
                AccessAnchorStatus::BeyondTheLog
            };
            AccessAuditReport {
                pruned_through: pruned_seq,
                n_checked,
                head: last_seq,
                head_hash: last_hash.clone(),
                breach,
                anchors: found
                    .into_iter()
                    .map(|status| status.unwrap_or(unreached))
                    .collect(),
            }
        };
        if pruned_seq == 0 && previous != GENESIS {
            let breach = AccessBreach {
                seq: 0,
                problem: Problem::HeadMismatch,
                detail: format!(
                    "nothing was pruned but the head's anchor is {previous}, not the chain's \
                     start {GENESIS}"
                ),
            };
            return Ok(finish(0, Some(breach), found));
        }
        let recorded_at = dialect(conn.backend(), "recorded_at", PG_RECORDED_AT);
        let sql = crate::value::Sql::built(format!(
            "SELECT seq, {recorded_at}, who, via, correlation_id, org_id, resource, subjects, \
             hash FROM access_log WHERE seq >= $1 ORDER BY seq LIMIT {}",
            VERIFY_BATCH
        ));
        let mut expected = pruned_seq + 1;
        loop {
            let rows = conn.fetch_all(sql.clone(), args![expected]).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let seq: i64 = row.get("seq")?;
                if seq != expected {
                    let breach = AccessBreach {
                        seq: expected,
                        problem: Problem::Missing,
                        detail: format!(
                            "no access record {expected}; the next one is {seq}: a record was deleted"
                        ),
                    };
                    return Ok(finish(n_checked, Some(breach), found));
                }
                match check_access_row(row, &previous) {
                    Ok(stored) => {
                        for (anchor, status) in anchors.iter().zip(found.iter_mut()) {
                            if i64::try_from(anchor.seq) == Ok(seq) {
                                *status = Some(held(anchor.hash == stored));
                            }
                        }
                        previous = stored;
                    }
                    Err((problem, detail)) => {
                        let breach = AccessBreach {
                            seq,
                            problem,
                            detail,
                        };
                        return Ok(finish(n_checked, Some(breach), found));
                    }
                }
                n_checked += 1;
                expected += 1;
            }
        }
        let last_present = expected - 1;
        let breach = if last_present < last_seq {
            Some(AccessBreach {
                seq: expected,
                problem: Problem::Missing,
                detail: format!(
                    "the access log ends at record {last_present} but its head records {last_seq}"
                ),
            })
        } else if last_present > last_seq {
            Some(AccessBreach {
                seq: last_seq + 1,
                problem: Problem::HeadMismatch,
                detail: format!(
                    "access records run to {last_present} but the head records {last_seq}"
                ),
            })
        } else if previous != last_hash {
            Some(AccessBreach {
                seq: last_present,
                problem: Problem::HeadMismatch,
                detail: format!(
                    "the last access record's hash is {previous} but the head records {last_hash}"
                ),
            })
        } else {
            None
        };
        Ok(finish(n_checked, breach, found))
    }
}

/// How many records the walk reads at a time.
const VERIFY_BATCH: i64 = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_through_their_text() {
        let a = UserId::new_v7();
        let b = UserId::new_v7();
        let text = join_subjects(&[a, b]);
        assert_eq!(split_subjects(&text).unwrap(), vec![a, b]);
        assert_eq!(split_subjects("").unwrap(), Vec::<UserId>::new());
        assert!(
            split_subjects("nope")
                .unwrap_err()
                .contains("\"nope\" is not a user id")
        );
    }

    #[test]
    fn via_names_round_trip() {
        for via in [
            AccessVia::Api,
            AccessVia::Console,
            AccessVia::Feed,
            AccessVia::Cli,
        ] {
            assert_eq!(AccessVia::parse(via.as_str()), Some(via));
        }
    }
}
