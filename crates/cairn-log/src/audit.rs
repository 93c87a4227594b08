//! `cairn audit verify`: walking the hash chain.

use chrono::{DateTime, Utc};

use cairn_types::{EventId, EventType, Position, StreamId, StreamType, StreamVersion};

use crate::args;
use crate::db::Db;
use crate::hash::{self, GENESIS, HashedColumns};
use crate::read::ReadError;
use crate::sql::Row;

/// What is wrong at the first bad position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The stored hash does not match the event's columns and the chain before it: the
    /// event was edited, or moved from another position.
    HashMismatch,
    /// There is no event at this position, but there are events after it or the head
    /// counts it: an event was deleted.
    Missing,
    /// There are more events than the head records, or the last hash differs from the
    /// head's.
    HeadMismatch,
}

/// The first position at which the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Breach {
    pub position: Position,
    pub problem: Problem,
    pub detail: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// Events checked before the first breach (or all of them).
    pub n_checked: u64,
    /// The head position recorded in the log.
    pub head: Position,
    /// The first breach; `None` when the chain is intact.
    pub breach: Option<Breach>,
}

impl AuditReport {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.breach.is_none()
    }
}

const BATCH: i64 = 2_000;

fn recompute(row: &Row, previous: &str) -> Result<Result<String, String>, ReadError> {
    let stream_type: String = row.get("stream_type")?;
    let event_type: String = row.get("event_type")?;
    let (stream_type, event_type) = match (
        StreamType::parse(&stream_type),
        EventType::parse(&event_type),
    ) {
        (Ok(stream_type), Ok(event_type)) => (stream_type, event_type),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(format!("a name no longer parses: {e}"))),
    };
    let data = row.get_json("event_data")?;
    let metadata = row.get_json("event_metadata")?;
    let columns = HashedColumns {
        position: Position::new(row.get("position")?),
        event_id: row.get::<EventId>("event_id")?,
        stream_type: &stream_type,
        stream_id: row.get::<StreamId>("stream_id")?,
        stream_version: StreamVersion::new(row.get("stream_version")?),
        event_type: &event_type,
        data: &data,
        metadata: &metadata,
        created_at: row.get::<DateTime<Utc>>("created_at")?,
    };
    Ok(Ok(hash::event_hash(previous, &columns)))
}

impl Db {
    /// Walks the hash chain from the first event to the head, in one snapshot, and
    /// reports the first position at fault. `progress` is called with (checked, total)
    /// after each batch.
    pub async fn verify_chain(
        &self,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<AuditReport, ReadError> {
        let mut snapshot = self.snapshot().await?;
        let mut conn = snapshot.conn();
        let head = conn.head().await?;
        let total = u64::try_from(head.last_position.get()).unwrap_or(0);
        let mut expected = Position::START.next();
        let mut previous = GENESIS.to_owned();
        let mut n_checked = 0_u64;
        let report = |n_checked, breach| AuditReport {
            n_checked,
            head: head.last_position,
            breach,
        };
        loop {
            let sql = crate::sql::Sql::built(format!(
                "SELECT position, event_id, stream_type, stream_id, stream_version, event_type, \
                 event_data, event_metadata, created_at, hash FROM domain_events \
                 WHERE position >= $1 ORDER BY position LIMIT {BATCH}"
            ));
            let rows = conn.fetch_all(sql, args![expected]).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let position = Position::new(row.get("position")?);
                if position != expected {
                    return Ok(report(
                        n_checked,
                        Some(Breach {
                            position: expected,
                            problem: Problem::Missing,
                            detail: format!(
                                "no event at position {expected}; the next event is at {position}"
                            ),
                        }),
                    ));
                }
                let stored: String = row.get("hash")?;
                match recompute(row, &previous)? {
                    Ok(computed) if computed == stored => {}
                    Ok(computed) => {
                        return Ok(report(
                            n_checked,
                            Some(Breach {
                                position,
                                problem: Problem::HashMismatch,
                                detail: format!(
                                    "stored hash {stored} but the event and the chain before it hash to \
                                     {computed}: the event was edited or moved"
                                ),
                            }),
                        ));
                    }
                    Err(reason) => {
                        return Ok(report(
                            n_checked,
                            Some(Breach {
                                position,
                                problem: Problem::HashMismatch,
                                detail: reason,
                            }),
                        ));
                    }
                }
                previous = stored;
                n_checked += 1;
                expected = expected.next();
            }
            progress(n_checked, total.max(n_checked));
        }
        let last_present = Position::new(expected.get() - 1);
        let breach = if last_present < head.last_position {
            Some(Breach {
                position: expected,
                problem: Problem::Missing,
                detail: format!(
                    "the log ends at position {last_present} but the head records {}",
                    head.last_position
                ),
            })
        } else if last_present > head.last_position {
            Some(Breach {
                position: head.last_position.next(),
                problem: Problem::HeadMismatch,
                detail: format!(
                    "events run to position {last_present} but the head records {}",
                    head.last_position
                ),
            })
        } else if previous != head.last_hash {
            Some(Breach {
                position: last_present,
                problem: Problem::HeadMismatch,
                detail: format!(
                    "the last event's hash is {previous} but the head records {}",
                    head.last_hash
                ),
            })
        } else {
            None
        };
        progress(n_checked, total.max(n_checked));
        Ok(report(n_checked, breach))
    }
}
