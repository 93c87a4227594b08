//! `cairn audit verify`: walking the hash chain, and holding it to signed checkpoints.
//!
//! The chain alone shows that the log is consistent with itself: an event edited,
//! deleted or moved without recomputing the hashes after it, a column that reads filter
//! on changed behind the hash, a row that no longer decodes. It cannot show that the log
//! is the one that was written: whoever can write the table can recompute every hash and
//! the head. A [`checkpoint`] signed outside the database fixes a head; a walk given its
//! [`Anchor`] proves the log still holds that hash at that position.

pub(crate) mod checkpoint;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use cairn_types::{
    CorrelationId, EventId, EventType, Metadata, OrgId, Position, StreamId, StreamType,
    StreamVersion,
};

use crate::args;
use crate::backend::Row;
use crate::db::Db;
use crate::error::DbError;
use crate::hash::{self, GENESIS, HashedColumns};
use crate::read::ReadError;
use crate::value::dialect;

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
    /// The row no longer decodes: a column holds what no event can (an id that is not a
    /// UUID, text that is not JSON, a time out of range, metadata that is not cairn's).
    Undecodable,
    /// A column that reads filter on (`org_id`, `correlation_id`) disagrees with the
    /// hashed metadata it was written from: the event is missing from its organization's
    /// reads or its request's timeline.
    ColumnMismatch,
    /// A signed checkpoint records another hash at this position: the log was rewritten
    /// at or before it, and the hashes recomputed.
    CheckpointMismatch,
    /// A signed checkpoint records a position past the end of the log: events were
    /// removed and the head rewritten to match.
    Truncated,
}

/// The first position at which the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Breach {
    pub position: Position,
    pub problem: Problem,
    pub detail: String,
}

/// A head recorded outside the database: the log must still hold this hash at this
/// position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Anchor {
    pub position: Position,
    pub hash: String,
}

/// What a walk found for one [`Anchor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorStatus {
    /// The log holds this hash at this position, and the chain from there on is intact
    /// up to the first breach, if any.
    Holds,
    /// The log holds another hash at this position.
    Contradicted,
    /// The log ends before this position.
    BeyondTheLog,
    /// The walk stopped at an earlier breach (or started after it).
    NotReached,
}

/// What to walk: from the first event, or from a trusted anchor, and which anchors the
/// log must still hold.
#[derive(Debug, Clone, Default)]
pub struct ChainCheck {
    /// Heads the log must still contain.
    pub anchors: Vec<Anchor>,
    /// Start at this anchor instead of the first event: the hash stored at its position
    /// must be its hash, and every event after it is rehashed. Events before it are not
    /// read.
    pub start: Option<Anchor>,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// Where the walk started: 0 for the first event, else the start anchor's position
    /// (events after it were rehashed).
    #[serde(skip)]
    pub from: Position,
    /// Events rehashed before the first breach (or all of them).
    pub n_checked: u64,
    /// The head position recorded in the log.
    pub head: Position,
    /// The head hash recorded in the log.
    pub head_hash: String,
    /// The first breach; `None` when the chain is intact.
    pub breach: Option<Breach>,
    /// One status for each of [`ChainCheck::anchors`], in the same order.
    #[serde(skip)]
    pub anchors: Vec<AnchorStatus>,
}

impl AuditReport {
    /// Whether the chain is intact (and holds every anchor it reached).
    pub fn is_intact(&self) -> bool {
        self.breach.is_none()
    }
}

const BATCH: i64 = 2_000;

/// The latest time PostgreSQL hands over as a time; later ones (its range runs past
/// chrono's) and infinities read as NULL and are reported.
const PG_CREATED_AT: &str = "CASE WHEN isfinite(created_at) \
     AND created_at < '200000-01-01 00:00:00+00'::timestamptz THEN created_at END AS created_at";

/// Why one row fails the check.
struct RowFault {
    problem: Problem,
    detail: String,
}

impl RowFault {
    fn undecodable(reason: impl std::fmt::Display) -> RowFault {
        RowFault {
            problem: Problem::Undecodable,
            detail: format!("the event no longer decodes: {reason}"),
        }
    }
}

fn decode<T>(result: Result<T, DbError>) -> Result<T, RowFault> {
    result.map_err(RowFault::undecodable)
}

fn describe_org(org: Option<OrgId>) -> String {
    org.map_or_else(
        || "empty (no organization)".to_owned(),
        |org| org.to_string(),
    )
}

/// Checks one row against the chain before it; returns its stored hash.
fn check_row(row: &Row, previous: &str) -> Result<String, RowFault> {
    let stored: String = decode(row.get("hash"))?;
    let stream_type: String = decode(row.get("stream_type"))?;
    let stream_type = StreamType::parse(&stream_type)
        .map_err(|e| RowFault::undecodable(format!("column stream_type: {e}")))?;
    let event_type: String = decode(row.get("event_type"))?;
    let event_type = EventType::parse(&event_type)
        .map_err(|e| RowFault::undecodable(format!("column event_type: {e}")))?;
    let event_version: i64 = decode(row.get("event_version"))?;
    let event_version = u32::try_from(event_version).map_err(|_| {
        RowFault::undecodable(format!(
            "column event_version: {event_version} is not a version"
        ))
    })?;
    let data = decode(row.get_json("event_data"))?;
    let metadata = decode(row.get_json("event_metadata"))?;
    let created_at: DateTime<Utc> = decode(row.get::<Option<DateTime<Utc>>>("created_at"))?
        .ok_or_else(|| {
            RowFault::undecodable("column created_at: not a time (infinite, or out of range)")
        })?;
    let columns = HashedColumns {
        position: Position::new(decode(row.get("position"))?),
        event_id: decode(row.get::<EventId>("event_id"))?,
        stream_type: &stream_type,
        stream_id: decode(row.get::<StreamId>("stream_id"))?,
        stream_version: StreamVersion::new(decode(row.get("stream_version"))?),
        event_type: &event_type,
        event_version,
        data: &data,
        metadata: &metadata,
        created_at,
    };
    let computed = hash::event_hash(previous, &columns);
    if computed != stored {
        return Err(RowFault {
            problem: Problem::HashMismatch,
            detail: format!(
                "stored hash {stored} but the event and the chain before it hash to \
                 {computed}: the event was edited or moved"
            ),
        });
    }
    // The columns reads filter on must say what the hashed metadata says.
    let metadata: Metadata = serde_json::from_value(metadata)
        .map_err(|e| RowFault::undecodable(format!("column event_metadata: {e}")))?;
    let correlation_id: CorrelationId = decode(row.get("correlation_id"))?;
    if correlation_id != metadata.correlation_id {
        return Err(RowFault {
            problem: Problem::ColumnMismatch,
            detail: format!(
                "column correlation_id is {correlation_id} but the hashed metadata says {}: \
                 the event is missing from its request's timeline",
                metadata.correlation_id
            ),
        });
    }
    let org_id: Option<OrgId> = decode(row.get("org_id"))?;
    if org_id != metadata.org_id {
        return Err(RowFault {
            problem: Problem::ColumnMismatch,
            detail: format!(
                "column org_id is {} but the hashed metadata says {}: the event is missing \
                 from its organization's reads",
                describe_org(org_id),
                describe_org(metadata.org_id)
            ),
        });
    }
    Ok(stored)
}

/// Anchors by position, with their statuses.
struct Anchors<'a> {
    anchors: &'a [Anchor],
    statuses: Vec<AnchorStatus>,
    by_position: BTreeMap<Position, Vec<usize>>,
}

impl<'a> Anchors<'a> {
    fn new(anchors: &'a [Anchor]) -> Self {
        let mut by_position: BTreeMap<Position, Vec<usize>> = BTreeMap::new();
        for (index, anchor) in anchors.iter().enumerate() {
            by_position.entry(anchor.position).or_default().push(index);
        }
        Anchors {
            anchors,
            statuses: vec![AnchorStatus::NotReached; anchors.len()],
            by_position,
        }
    }

    /// Holds the anchors at `position` to the hash the log has there; the first
    /// contradiction as a breach.
    fn check(&mut self, position: Position, hash: &str) -> Option<Breach> {
        let mut breach = None;
        for &index in self
            .by_position
            .get(&position)
            .map_or(&[][..], Vec::as_slice)
        {
            let anchor = &self.anchors[index];
            if anchor.hash == hash {
                self.statuses[index] = AnchorStatus::Holds;
            } else {
                self.statuses[index] = AnchorStatus::Contradicted;
                breach.get_or_insert_with(|| Breach {
                    position,
                    problem: Problem::CheckpointMismatch,
                    detail: format!(
                        "a signed checkpoint records hash {} here but the log holds {hash}: \
                         the log was rewritten at or before position {position}",
                        anchor.hash
                    ),
                });
            }
        }
        breach
    }

    /// Marks the anchors past `last` as beyond the log; the first as a breach.
    fn past_the_end(&mut self, last: Position) -> Option<Breach> {
        let mut breach = None;
        for (&position, indices) in self.by_position.range(last.next()..) {
            for &index in indices {
                self.statuses[index] = AnchorStatus::BeyondTheLog;
                breach.get_or_insert_with(|| Breach {
                    position: last.next(),
                    problem: Problem::Truncated,
                    detail: format!(
                        "a signed checkpoint records an event at position {position} (hash {}) \
                         but the log ends at position {last}: events were removed and the head \
                         rewritten to match",
                        self.anchors[index].hash
                    ),
                });
            }
        }
        breach
    }
}

impl Db {
    /// Walks the hash chain from the first event to the head, in one snapshot, and
    /// reports the first position at fault. `progress` is called with (checked, total)
    /// after each batch.
    pub async fn verify_chain(
        &self,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<AuditReport, ReadError> {
        self.verify_chain_with(&ChainCheck::default(), progress)
            .await
    }

    /// Walks the hash chain as `check` says, in one snapshot: every event is rehashed,
    /// its filter columns checked against its hashed metadata, and the hash at each
    /// anchor's position compared with the anchor's. Reports the first position at fault
    /// and what became of each anchor.
    pub async fn verify_chain_with(
        &self,
        check: &ChainCheck,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<AuditReport, ReadError> {
        let mut snapshot = self.snapshot().await?;
        let mut conn = snapshot.conn();
        let head = conn.head().await?;
        let mut anchors = Anchors::new(&check.anchors);
        let from = check
            .start
            .as_ref()
            .map_or(Position::START, |start| start.position);
        let total = u64::try_from(head.last_position.get() - from.get()).unwrap_or(0);
        let mut n_checked = 0_u64;
        let finish = |n_checked, breach, anchors: Anchors<'_>| AuditReport {
            from,
            n_checked,
            head: head.last_position,
            head_hash: head.last_hash.clone(),
            breach,
            anchors: anchors.statuses,
        };

        // Where the chain is taken up: the genesis hash, or a trusted anchor's.
        let mut previous = GENESIS.to_owned();
        if let Some(start) = &check.start
            && start.position == Position::START
            && start.hash != GENESIS
        {
            let breach = Breach {
                position: Position::START,
                problem: Problem::CheckpointMismatch,
                detail: format!(
                    "the checkpoint this check starts from records hash {} before the first \
                     event, where the chain starts from {GENESIS}",
                    start.hash
                ),
            };
            return Ok(finish(0, Some(breach), anchors));
        }
        if let Some(start) = &check.start
            && start.position > Position::START
        {
            let row = conn
                .fetch_optional(
                    "SELECT hash FROM domain_events WHERE position = $1",
                    args![start.position],
                )
                .await?;
            let stored = match row.as_ref().map(|row| row.get::<String>("hash")) {
                None => {
                    let breach = Breach {
                        position: start.position,
                        problem: Problem::Truncated,
                        detail: format!(
                            "the checkpoint this check starts from records an event at position \
                             {} but there is none (the head is at {})",
                            start.position, head.last_position
                        ),
                    };
                    return Ok(finish(0, Some(breach), anchors));
                }
                Some(Err(e)) => {
                    let breach = Breach {
                        position: start.position,
                        problem: Problem::Undecodable,
                        detail: RowFault::undecodable(e).detail,
                    };
                    return Ok(finish(0, Some(breach), anchors));
                }
                Some(Ok(stored)) => stored,
            };
            if stored != start.hash {
                let breach = Breach {
                    position: start.position,
                    problem: Problem::CheckpointMismatch,
                    detail: format!(
                        "the checkpoint this check starts from records hash {} here but the log \
                         holds {stored}: the log was rewritten at or before position {}",
                        start.hash, start.position
                    ),
                };
                return Ok(finish(0, Some(breach), anchors));
            }
            previous = stored;
        }
        if let Some(breach) = anchors.check(Position::START, GENESIS) {
            return Ok(finish(0, Some(breach), anchors));
        }

        let created_at = dialect(conn.backend(), "created_at", PG_CREATED_AT);
        let sql = crate::value::Sql::built(format!(
            "SELECT position, event_id, stream_type, stream_id, stream_version, event_type, \
             event_version, event_data, event_metadata, correlation_id, org_id, {created_at}, hash \
             FROM domain_events WHERE position >= $1 ORDER BY position LIMIT {BATCH}"
        ));
        let mut expected = from.next();
        loop {
            let rows = conn.fetch_all(sql.clone(), args![expected]).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let position = Position::new(row.get("position")?);
                if position != expected {
                    let breach = Breach {
                        position: expected,
                        problem: Problem::Missing,
                        detail: format!(
                            "no event at position {expected}; the next event is at {position}"
                        ),
                    };
                    return Ok(finish(n_checked, Some(breach), anchors));
                }
                let stored = match check_row(row, &previous) {
                    Ok(stored) => stored,
                    Err(fault) => {
                        let breach = Breach {
                            position,
                            problem: fault.problem,
                            detail: fault.detail,
                        };
                        return Ok(finish(n_checked, Some(breach), anchors));
                    }
                };
                if let Some(breach) = anchors.check(position, &stored) {
                    return Ok(finish(n_checked, Some(breach), anchors));
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
        let beyond = anchors.past_the_end(last_present);
        progress(n_checked, total.max(n_checked));
        Ok(finish(n_checked, breach.or(beyond), anchors))
    }
}
