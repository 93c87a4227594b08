//! The events, appends and reads the log's tests share.

use cairn_log::{
    AppendError, AppendRequest, AuditReport, Db, EventFilter, NewEvent, Prepared, Problem,
    RecordedEvent,
};
use cairn_types::{EventType, Metadata, Position, StreamId, StreamType};
use serde_json::json;

/// A `test.pinged` event carrying `n`.
pub fn ping(n: i64) -> NewEvent {
    NewEvent::new(
        EventType::parse("test.pinged").expect("valid name"),
        json!({ "n": n }),
        Metadata::new(),
    )
}

/// An append of `events` to the `test` stream `stream_id`.
pub fn request(stream_id: StreamId, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(
        StreamType::parse("test").expect("valid name"),
        stream_id,
        events,
    )
}

/// Appends without a dispatcher: the log alone.
pub async fn append(db: &Db, request: AppendRequest) -> Result<Vec<RecordedEvent>, AppendError> {
    let mut tx = db.begin().await?;
    let events = match tx.prepare_append(request).await? {
        Prepared::New(pending) => tx.write_append(pending).await?,
        Prepared::Repeat(events) => events,
    };
    tx.commit().await?;
    Ok(events)
}

/// Every event in the log, in order (up to 10,000).
pub async fn all_events(db: &Db) -> anyhow::Result<Vec<RecordedEvent>> {
    Ok(db
        .reader()
        .await?
        .conn()
        .read_events(&EventFilter {
            limit: Some(10_000),
            ..EventFilter::default()
        })
        .await?)
}

/// The audit found `problem`, first at `position`.
#[track_caller]
pub fn assert_breach(report: &AuditReport, position: i64, problem: Problem) {
    let breach = report.breach.as_ref().expect("a breach");
    assert_eq!(
        (breach.position, breach.problem),
        (Position::new(position), problem),
        "{breach:?}"
    );
}
