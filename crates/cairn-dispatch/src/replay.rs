//! Replay: rebuilding projections from the log, and checking them against it.
//!
//! Both rebuild every registered projection from the log into shadow copies: temporary
//! tables that hide the live ones from the handlers, on a session of their own, in
//! batches. [`EventStore::replay`] then replaces the live tables' contents with the
//! shadow copies in one transaction under the head lock: readers see the old
//! projections until the new ones are complete. [`EventStore::verify_projections`]
//! instead compares the shadow copies with the live tables row by row, in one snapshot.
//! A row that differs is a projection changed without an event: a dual write.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use cairn_log::quote_ident;
use cairn_log::{
    Backend, Conn, EventFilter, HoldCause, Outcome, ReadError, RecordedEvent, Session, StreamHold,
    args,
};
use cairn_types::{EventId, EventType, Position, StreamId};

use crate::dispatcher::Dispatcher;
use crate::operations::{HandlerRoute, PausedRoutes};
use crate::sequence::Ledger;

use crate::registry::ProjectionTable;
use crate::store::EventStore;

/// Why a replay or a verification could not finish. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("database error during replay")]
    Database(#[from] cairn_log::DbError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("projection table {table} does not exist in the database")]
    MissingTable { table: String },
    #[error(
        "replay would undo {} safety-net write(s) that no event backs: {}. Append the events they stand in for first (`cairn replay --verify` shows the rows), or replay with --discard-safety-net to rebuild from the events alone",
        writes.len(),
        writes.iter().map(|w| format!("{} {} ({})", w.projection, w.row_key, w.reason)).collect::<Vec<_>>().join("; ")
    )]
    WouldUndoSafetyNet { writes: Vec<SafetyNetWrite> },
}

/// A safety-net write (see [`crate::SafetyNet`]) that the events alone do not produce.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SafetyNetWrite {
    pub projection: String,
    pub row_key: Value,
    pub reason: String,
    pub correlation_id: cairn_types::CorrelationId,
}

/// How a replay treats what the events alone do not explain.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Rebuild from the events alone even where that undoes a safety-net write.
    pub discard_safety_net: bool,
}

/// An event whose outcome differs from the one stored with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeChange {
    pub position: Position,
    pub event_id: EventId,
    pub event_type: EventType,
    /// The outcome stored before.
    pub stored: Option<Outcome>,
    /// The outcome now.
    pub now: Outcome,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplayReport {
    pub n_events: u64,
    pub n_applied: u64,
    pub n_skipped: u64,
    pub n_failed: u64,
    /// Events stored and held behind an earlier event of their stream.
    pub n_held: u64,
    /// Events whose recorded outcome changed (and was recorded anew).
    pub changed: Vec<OutcomeChange>,
}

/// One projection row that differs between the live table and the rebuild.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    pub table: &'static str,
    /// The key columns of the row.
    pub key: Value,
    #[serde(flatten)]
    pub kind: DriftKind,
}

/// How a row differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "drift", rename_all = "snake_case")]
pub enum DriftKind {
    /// The live table has a row that no event produced.
    OnlyLive { live: Value },
    /// The events produce a row the live table lacks.
    OnlyRebuilt { rebuilt: Value },
    /// Both have the row, with different values.
    Differs { columns: Vec<ColumnDiff> },
}

/// One column of a row that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnDiff {
    pub column: String,
    pub live: Value,
    pub rebuilt: Value,
}

/// The row counts of one table, live and rebuilt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableSummary {
    pub table: &'static str,
    pub live_rows: u64,
    pub rebuilt_rows: u64,
}

/// What `replay --verify` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Events replayed into the shadow copies.
    pub n_events: u64,
    pub tables: Vec<TableSummary>,
    /// Every row that differs.
    pub drift: Vec<Drift>,
    /// Events that would have a different outcome now than the one stored.
    pub outcome_changes: Vec<OutcomeChange>,
}

impl VerifyReport {
    /// Whether the live projections are exactly what the log produces.
    pub fn is_clean(&self) -> bool {
        self.drift.is_empty()
    }
}

/// How to verify.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Dispatch every event twice into the shadow copies: a handler that is not
    /// idempotent then shows up as drift.
    pub dispatch_twice: bool,
}

/// Events per replay transaction: large enough that the per-transaction cost vanishes,
/// small enough that PostgreSQL's row version chains stay short.
const BATCH: u32 = 5_000;

/// The page of the log a replay applies next: up to [`BATCH`] events after `after`.
fn page_after(after: Position) -> EventFilter {
    EventFilter {
        after,
        limit: Some(BATCH),
        ..EventFilter::default()
    }
}

/// A page being read and upcast ahead of the one being applied.
struct ReadAhead {
    /// The position it reads after.
    after: Position,
    page: tokio::task::JoinHandle<Result<Vec<RecordedEvent>, ReadError>>,
}

fn same_outcome(stored: Option<&Outcome>, now: &Outcome) -> bool {
    match (stored, now) {
        (Some(Outcome::Failed(a)), Outcome::Failed(b)) => a == b,
        (Some(Outcome::Held { behind: a }), Outcome::Held { behind: b }) => a == b,
        (Some(Outcome::Failed(_) | Outcome::Held { .. }), _)
        | (_, Outcome::Failed(_) | Outcome::Held { .. }) => false,
        (Some(_), _) => true,
        (None, _) => false,
    }
}

fn change(event: &RecordedEvent, now: &Outcome) -> Option<OutcomeChange> {
    let stored = event.last_outcome();
    (!same_outcome(stored.as_ref(), now)).then(|| OutcomeChange {
        position: event.position,
        event_id: event.event_id,
        event_type: event.event_type.clone(),
        stored,
        now: now.clone(),
    })
}

/// An event that failed or was held when its turn came: a later record (a retry, a
/// skip, a release) may change its outcome, so it is compared with the stored one at
/// the end.
#[derive(Clone)]
struct Unsettled {
    /// The event as stored (with its stored outcome).
    event: RecordedEvent,
    now: Outcome,
}

/// Where a rebuild stands: the last event dispatched into the shadow copies, what
/// happened to the events, the holds and pauses of the log so far, and the outcomes
/// that changed.
#[derive(Default, Clone)]
struct Rebuild {
    after: Position,
    n_events: u64,
    n_applied: u64,
    n_skipped: u64,
    /// Applied or skipped at their turn, with another outcome stored.
    changed: Vec<(RecordedEvent, Outcome)>,
    unsettled: BTreeMap<Position, Unsettled>,
    holds: HashMap<StreamId, StreamHold>,
    /// The paused routes, once read from the rebuilt copy; `None` after a change.
    paused: Option<Arc<PausedRoutes>>,
}

impl Rebuild {
    /// Every event whose outcome now differs from the stored one, in position order.
    fn changes(&self) -> Vec<(RecordedEvent, Outcome)> {
        let mut changes: Vec<(RecordedEvent, Outcome)> = self
            .changed
            .iter()
            .cloned()
            .chain(
                self.unsettled
                    .values()
                    .filter(|u| change(&u.event, &u.now).is_some())
                    .map(|u| (u.event.clone(), u.now.clone())),
            )
            .collect();
        changes.sort_by_key(|(event, _)| event.position);
        changes
    }

    /// How many events end with each outcome: (applied, skipped, failed, held).
    fn counts(&self) -> (u64, u64, u64, u64) {
        let (mut applied, mut skipped, mut failed, mut held) =
            (self.n_applied, self.n_skipped, 0, 0);
        for unsettled in self.unsettled.values() {
            match unsettled.now {
                Outcome::Applied => applied += 1,
                Outcome::Skipped => skipped += 1,
                Outcome::Failed(_) => failed += 1,
                Outcome::Held { .. } => held += 1,
            }
        }
        (applied, skipped, failed, held)
    }

    /// A stored event with the outcome the rebuild has for it now.
    fn current(&self, mut event: RecordedEvent) -> RecordedEvent {
        let at = event.processed_at.unwrap_or(event.created_at);
        match self.unsettled.get(&event.position) {
            Some(unsettled) => event.set_outcome(&unsettled.now, at),
            None => event.set_outcome(&Outcome::Applied, at),
        }
        event
    }
}

/// A replay's rebuild as the sequence's ledger: handlers write the shadow copies on
/// the replay's session, and outcomes are kept in memory.
struct ReplayLedger<'a, 'c> {
    conn: &'a mut Conn<'c>,
    rebuild: &'a mut Rebuild,
    isolate: bool,
    dispatch_twice: bool,
    /// A handler failed without a savepoint: the batch must run again with them.
    rerun: bool,
}

impl Ledger for ReplayLedger<'_, '_> {
    async fn dispatch(
        &mut self,
        dispatcher: &Dispatcher,
        event: &RecordedEvent,
    ) -> Result<Outcome, ReadError> {
        let mut outcome = dispatcher.dispatch(self.conn, event, self.isolate).await?;
        if self.dispatch_twice && outcome == Outcome::Applied {
            outcome = dispatcher.dispatch(self.conn, event, self.isolate).await?;
        }
        if !self.isolate && outcome.error().is_some() {
            self.rerun = true;
            return Err(ReadError::Database(cairn_log::DbError::decode(
                "(replay)",
                "a handler failed without a savepoint; the batch runs again with them",
            )));
        }
        Ok(outcome)
    }

    fn fails_unit(&self, _event: &RecordedEvent) -> bool {
        false
    }

    async fn hold(&mut self, stream_id: StreamId) -> Result<Option<StreamHold>, ReadError> {
        Ok(self.rebuild.holds.get(&stream_id).copied())
    }

    async fn set_hold(
        &mut self,
        behind: &RecordedEvent,
        cause: HoldCause,
    ) -> Result<(), ReadError> {
        self.conn.write_hold(behind, Some(cause)).await?;
        self.rebuild.holds.insert(
            behind.stream_id,
            StreamHold {
                behind: behind.position,
                cause,
            },
        );
        Ok(())
    }

    async fn lift_hold(&mut self, event: &RecordedEvent) -> Result<(), ReadError> {
        if self.rebuild.holds.remove(&event.stream_id).is_some() {
            self.conn.write_hold(event, None).await?;
        }
        Ok(())
    }

    async fn paused_routes(&mut self) -> Result<Arc<PausedRoutes>, ReadError> {
        if let Some(paused) = &self.rebuild.paused {
            return Ok(paused.clone());
        }
        let paused = Arc::new(PausedRoutes::load(self.conn).await?);
        self.rebuild.paused = Some(paused.clone());
        Ok(paused)
    }

    async fn routes_changed(&mut self, _record: &RecordedEvent) -> Result<(), ReadError> {
        self.rebuild.paused = None;
        Ok(())
    }

    async fn stored(&mut self, position: Position) -> Result<Option<RecordedEvent>, ReadError> {
        let event = self.conn.event_at(position).await?;
        Ok(event.map(|event| self.rebuild.current(event)))
    }

    async fn stream_events(
        &mut self,
        stream_id: StreamId,
        after: Position,
        before: Position,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = Vec::new();
        let mut filter = EventFilter {
            after,
            before: Some(before),
            stream_id: Some(stream_id),
            ..EventFilter::default()
        };
        loop {
            let page = self.conn.read_events(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after = last.position;
            events.extend(page.into_iter().map(|event| self.rebuild.current(event)));
        }
        Ok(events)
    }

    async fn set_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
    ) -> Result<(), ReadError> {
        match self.rebuild.unsettled.get_mut(&event.position) {
            Some(unsettled) => unsettled.now = outcome.clone(),
            None => {
                // Only events that failed or were held at their turn change later;
                // read the stored one to compare with all the same.
                let stored = self.conn.event_at(event.position).await?;
                if let Some(stored) = stored {
                    self.rebuild.unsettled.insert(
                        event.position,
                        Unsettled {
                            event: stored,
                            now: outcome.clone(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn held_by_pause(&mut self, route: &HandlerRoute) -> Result<Vec<Position>, ReadError> {
        Ok(crate::store::held_by_pause(self.conn, route).await?)
    }
}

async fn live_schema(conn: &mut Conn<'_>) -> Result<String, ReplayError> {
    Ok(match conn.backend() {
        Backend::Sqlite => "main".to_owned(),
        Backend::Postgres => conn
            .fetch_one("SELECT current_schema() AS schema", args![])
            .await?
            .get::<String>("schema")?,
    })
}

fn shadow_schema(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "temp",
        Backend::Postgres => "pg_temp",
    }
}

impl EventStore {
    /// Dispatches the next batch of events into the shadow copies. Returns how many,
    /// or `None` when a handler failed without `isolate` (its writes are still in the
    /// transaction, which must be rolled back and the batch run again isolated).
    /// Brings a page's payloads to their current versions in place, so that the
    /// dispatcher copies none of them. An event that does not upcast is read again as
    /// stored: its dispatch fails it with the reason.
    async fn upcast_page(
        &self,
        conn: &mut Conn<'_>,
        events: &mut [RecordedEvent],
    ) -> Result<(), ReadError> {
        self.upcast_only(conn, events).await?;
        self.open_page(conn, events).await
    }

    async fn upcast_only(
        &self,
        conn: &mut Conn<'_>,
        events: &mut [RecordedEvent],
    ) -> Result<(), ReadError> {
        let registry = self.dispatcher().registry();
        for event in events.iter_mut() {
            if registry.upcast_in_place(event).is_err()
                && let Some(stored) = conn.event_at(event.position).await?
            {
                *event = stored;
            }
        }
        Ok(())
    }

    async fn open_page(
        &self,
        conn: &mut Conn<'_>,
        events: &mut [RecordedEvent],
    ) -> Result<(), ReadError> {
        let registry = self.dispatcher().registry();
        // Opened here, a page at a time with its keys read once, so that the dispatcher
        // copies nothing; a seal that does not open is left for the dispatcher to fail.
        for index in crate::personal::open_page(self.db(), registry, events).await? {
            if let Some(mut stored) = conn.event_at(events[index].position).await? {
                // Upcast as the rest of the page was (a failure is the dispatcher's).
                let _ = registry.upcast_in_place(&mut stored);
                events[index] = stored;
            }
        }
        Ok(())
    }

    /// Reads and upcasts the page after `after` on a task of its own, through the
    /// readers: while one page is applied, the next is read on another core. Its
    /// sealed fields are opened where it is applied: opened on this task too, replay of
    /// sealed events on SQLite measured slower, not faster.
    fn read_ahead(&self, after: Position) -> ReadAhead {
        let store = self.clone();
        let page = tokio::spawn(async move {
            let mut reader = store.db().reader().await?;
            let mut conn = reader.conn();
            let mut events = conn.read_events(&page_after(after)).await?;
            store.upcast_only(&mut conn, &mut events).await?;
            Ok(events)
        });
        ReadAhead { after, page }
    }

    /// The page after `rebuild.after`: the one read ahead when it is that page, else
    /// read here. With `ahead`, the page after it starts being read ahead.
    async fn next_page(
        &self,
        conn: &mut Conn<'_>,
        after: Position,
        ahead: Option<&mut Option<ReadAhead>>,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let Some(ahead) = ahead else {
            return self.read_page(conn, after).await;
        };
        let events = match ahead.take() {
            Some(read) if read.after == after => match read.page.await {
                Ok(page) => {
                    let mut events = page?;
                    self.open_page(conn, &mut events).await?;
                    events
                }
                // The task panicked or was cancelled: read the page here instead.
                Err(_) => self.read_page(conn, after).await?,
            },
            stale => {
                if let Some(stale) = stale {
                    stale.page.abort();
                }
                self.read_page(conn, after).await?
            }
        };
        if events.len() == BATCH as usize
            && let Some(last) = events.last()
        {
            *ahead = Some(self.read_ahead(last.position));
        }
        Ok(events)
    }

    async fn read_page(
        &self,
        conn: &mut Conn<'_>,
        after: Position,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = conn.read_events(&page_after(after)).await?;
        self.upcast_page(conn, &mut events).await?;
        Ok(events)
    }

    async fn rebuild_batch(
        &self,
        conn: &mut Conn<'_>,
        rebuild: &mut Rebuild,
        dispatch_twice: bool,
        isolate: bool,
        ahead: Option<&mut Option<ReadAhead>>,
    ) -> Result<Option<usize>, ReplayError> {
        let events = self.next_page(conn, rebuild.after, ahead).await?;
        for event in &events {
            let mut ledger = ReplayLedger {
                conn: &mut *conn,
                rebuild: &mut *rebuild,
                isolate,
                dispatch_twice,
                rerun: false,
            };
            let processed = crate::sequence::process(self.dispatcher(), &mut ledger, event).await;
            if ledger.rerun {
                return Ok(None);
            }
            let outcome = processed.map_err(|error| match error {
                ReadError::Database(error) => ReplayError::Database(error),
                other => ReplayError::Read(other),
            })?;
            match &outcome {
                Outcome::Applied | Outcome::Skipped => {
                    if matches!(outcome, Outcome::Applied) {
                        rebuild.n_applied += 1;
                    } else {
                        rebuild.n_skipped += 1;
                    }
                    if change(event, &outcome).is_some() {
                        rebuild.changed.push((event.clone(), outcome));
                    }
                }
                Outcome::Failed(_) | Outcome::Held { .. } => {
                    rebuild.unsettled.insert(
                        event.position,
                        Unsettled {
                            event: event.clone(),
                            now: outcome,
                        },
                    );
                }
            }
            rebuild.n_events += 1;
            rebuild.after = event.position;
        }
        Ok(Some(events.len()))
    }

    /// Dispatches the next batch in a transaction of its own: first without a
    /// savepoint per handler and, on PostgreSQL, with the handlers' writes sent
    /// together; only if a handler fails (or a write was not what it seemed), again
    /// with a savepoint each and every write answered as it runs.
    async fn rebuild_batch_in_own_transaction(
        &self,
        session: &mut Session,
        rebuild: &mut Rebuild,
        dispatch_twice: bool,
        ahead: &mut Option<ReadAhead>,
    ) -> Result<usize, ReplayError> {
        let before = rebuild.clone();
        session.queue_writes(true);
        session.begin_read_only().await?;
        let fast = self
            .rebuild_batch(
                &mut session.conn(),
                rebuild,
                dispatch_twice,
                false,
                Some(&mut *ahead),
            )
            .await;
        let fast = match fast {
            Ok(Some(n)) => session
                .commit()
                .await
                .map(|()| Some(n))
                .map_err(ReplayError::from),
            other => other,
        };
        session.queue_writes(false);
        match fast {
            Ok(Some(n)) => return Ok(n),
            Ok(None) => session.rollback().await?,
            Err(error) => {
                if session.rollback().await.is_err() {
                    return Err(error);
                }
            }
        }
        *rebuild = before;
        session.begin_read_only().await?;
        let careful = self
            .rebuild_batch(
                &mut session.conn(),
                rebuild,
                dispatch_twice,
                true,
                Some(&mut *ahead),
            )
            .await;
        match careful {
            Ok(n) => {
                session.commit().await?;
                Ok(n.unwrap_or(0))
            }
            Err(error) => {
                let _ = session.rollback().await;
                Err(error)
            }
        }
    }

    /// Rebuilds the shadow copies from the whole log in batches, each its own
    /// transaction that writes nothing but the shadow copies (temporary tables, which
    /// hide the live tables from the handlers). Committing every batch keeps each
    /// rebuilt row's version history short: one long transaction updating the same
    /// row thousands of times makes PostgreSQL walk an ever longer chain of versions.
    async fn rebuild_shadows(
        &self,
        session: &mut Session,
        options: VerifyOptions,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(String, Rebuild), ReplayError> {
        let tables = self.dispatcher().registry().projections();
        let live = live_schema(&mut session.conn()).await?;
        for table in tables {
            create_shadow(&mut session.conn(), &live, table).await?;
        }
        let total = {
            let head = session.conn().head().await?;
            u64::try_from(head.last_position.get()).unwrap_or(0)
        };
        let mut rebuild = Rebuild::default();
        let mut ahead = None;
        loop {
            let n = self
                .rebuild_batch_in_own_transaction(
                    session,
                    &mut rebuild,
                    options.dispatch_twice,
                    &mut ahead,
                )
                .await;
            let n = match n {
                Ok(n) => n,
                Err(error) => {
                    if let Some(ahead) = ahead.take() {
                        ahead.page.abort();
                    }
                    return Err(error);
                }
            };
            progress(rebuild.n_events, total.max(rebuild.n_events));
            if n == 0 {
                return Ok((live, rebuild));
            }
            // Rebuilding runs in the caller's thread on SQLite; let others run.
            tokio::task::yield_now().await;
        }
    }

    /// Rebuilds every projection from the log and replaces the live tables with the
    /// result in one final transaction: readers see the old projections until it
    /// commits, then the new ones. Events whose outcome changes get the new outcome
    /// recorded. `progress` is called with (done, total).
    ///
    /// A row a safety-net write left that the rebuild would change is not silently
    /// undone: the replay stops with [`ReplayError::WouldUndoSafetyNet`] unless
    /// `options.discard_safety_net` says to.
    pub async fn replay(
        &self,
        options: ReplayOptions,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<ReplayReport, ReplayError> {
        let mut session = self.db().writing_session().await?;
        let backend = self.db().backend();
        let (live, mut rebuild) = self
            .rebuild_shadows(&mut session, VerifyOptions::default(), progress)
            .await?;

        // The final transaction holds the head lock: it catches up with the events
        // appended meanwhile, then swaps the contents in. On SQLite the writer waits
        // meanwhile, rather than meet a locked database.
        let _pause = self.db().pause_writer().await?;
        session.begin().await?;
        let mut conn = session.conn();
        conn.lock_head().await?;
        while self
            .rebuild_batch(&mut conn, &mut rebuild, false, true, None)
            .await?
            .is_some_and(|n| n > 0)
        {}
        let tables = self.dispatcher().registry().projections();
        if !options.discard_safety_net {
            let undone = undone_safety_net_writes(&mut conn, &live, tables).await?;
            if !undone.is_empty() {
                return Err(ReplayError::WouldUndoSafetyNet { writes: undone });
            }
        }
        for table in tables.iter().rev() {
            let sql = format!(
                "DELETE FROM {}.{}",
                quote_ident(&live),
                quote_ident(table.name)
            );
            conn.execute(cairn_log::Sql::built(sql), args![]).await?;
        }
        for table in tables {
            let sql = format!(
                "INSERT INTO {live}.{name} SELECT * FROM {shadow}.{name}",
                live = quote_ident(&live),
                shadow = shadow_schema(backend),
                name = quote_ident(table.name),
            );
            conn.execute(cairn_log::Sql::built(sql), args![]).await?;
        }
        let processed_at = cairn_types::now_micros();
        let (n_applied, n_skipped, n_failed, n_held) = rebuild.counts();
        let mut report = ReplayReport {
            n_events: rebuild.n_events,
            n_applied,
            n_skipped,
            n_failed,
            n_held,
            changed: Vec::new(),
        };
        for (event, outcome) in &rebuild.changes() {
            // The stored outcome may have moved since the batch read it (a retry).
            let Some(current) = conn.event_at(event.position).await? else {
                continue;
            };
            if let Some(changed) = change(&current, outcome) {
                conn.record_outcome(&current, outcome, processed_at).await?;
                report.changed.push(changed);
            }
        }
        session.commit().await?;
        progress(report.n_events, report.n_events);
        Ok(report)
    }

    /// Rebuilds every projection into a shadow copy from the log and compares it with
    /// the live tables. Changes nothing and blocks no writer: the rebuild runs in
    /// read-only transactions on a session of its own, and the final catch-up and
    /// comparison happen in one snapshot, where the live projections match the log's
    /// head exactly. `progress` is called with (done, total).
    pub async fn verify_projections(
        &self,
        options: VerifyOptions,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<VerifyReport, ReplayError> {
        let mut session = self.db().reading_session().await?;
        let backend = self.db().backend();
        let (live, mut rebuild) = self
            .rebuild_shadows(&mut session, options, progress)
            .await?;
        session.begin_read_only().await?;
        let mut conn = session.conn();
        while self
            .rebuild_batch(&mut conn, &mut rebuild, options.dispatch_twice, true, None)
            .await?
            .is_some_and(|n| n > 0)
        {}
        let mut report = VerifyReport {
            n_events: rebuild.n_events,
            ..VerifyReport::default()
        };
        for (event, outcome) in &rebuild.changes() {
            if let Some(changed) = change(event, outcome) {
                report.outcome_changes.push(changed);
            }
        }
        for table in self.dispatcher().registry().projections() {
            let shadow = shadow_schema(backend);
            report.tables.push(TableSummary {
                table: table.name,
                live_rows: count_rows(&mut conn, &live, table).await?,
                rebuilt_rows: count_rows(&mut conn, shadow, table).await?,
            });
            // The database compares the rows; only those that differ come back here.
            let (live_rows, rebuilt) = differing_rows(&mut conn, (&live, shadow), table).await?;
            diff(table, live_rows, rebuilt, &mut report.drift);
        }
        session.commit().await?;
        progress(report.n_events, report.n_events);
        Ok(report)
    }
}

/// The safety-net writes whose rows the rebuilt shadow copies would change.
async fn undone_safety_net_writes(
    conn: &mut Conn<'_>,
    live: &str,
    tables: &[ProjectionTable],
) -> Result<Vec<SafetyNetWrite>, ReplayError> {
    let rows = conn
        .fetch_all(
            "SELECT projection, row_key, reason, correlation_id FROM safety_net_writes ORDER BY at",
            args![],
        )
        .await?;
    let mut by_table: BTreeMap<String, Vec<SafetyNetWrite>> = BTreeMap::new();
    for row in rows {
        let write = SafetyNetWrite {
            projection: row.get("projection")?,
            row_key: row.get_json("row_key")?,
            reason: row.get("reason")?,
            correlation_id: row.get("correlation_id")?,
        };
        by_table
            .entry(write.projection.clone())
            .or_default()
            .push(write);
    }
    let mut undone = Vec::new();
    for (name, writes) in by_table {
        let Some(table) = tables.iter().find(|t| t.name == name) else {
            continue;
        };
        let live_rows = read_rows(conn, live, table).await?;
        let rebuilt = read_rows(conn, shadow_schema(conn.backend()), table).await?;
        for write in writes {
            let key = write.row_key.to_string();
            let now = live_rows.get(&key).map(|(_, row)| row);
            let then = rebuilt.get(&key).map(|(_, row)| row);
            if now != then && !undone.contains(&write) {
                undone.push(write);
            }
        }
    }
    Ok(undone)
}

async fn create_shadow(
    conn: &mut Conn<'_>,
    live_schema: &str,
    table: &ProjectionTable,
) -> Result<(), ReplayError> {
    match conn.backend() {
        Backend::Postgres => {
            let exists = conn
                .fetch_optional(
                    "SELECT 1 AS one FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
                    args![live_schema, table.name],
                )
                .await?;
            if exists.is_none() {
                return Err(ReplayError::MissingTable {
                    table: table.name.to_owned(),
                });
            }
            let sql = format!(
                "CREATE TEMP TABLE {name} (LIKE {schema}.{name} INCLUDING ALL)",
                name = quote_ident(table.name),
                schema = quote_ident(live_schema),
            );
            conn.execute_script(cairn_log::Sql::built(sql)).await?;
        }
        Backend::Sqlite => {
            let rows = conn
                .fetch_all(
                    "SELECT type, sql FROM main.sqlite_master WHERE tbl_name = $1 \
                     AND type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type DESC",
                    args![table.name],
                )
                .await?;
            if rows.is_empty() {
                return Err(ReplayError::MissingTable {
                    table: table.name.to_owned(),
                });
            }
            for row in rows {
                let kind: String = row.get("type")?;
                let sql: String = row.get("sql")?;
                let shadow =
                    sqlite_shadow_sql(&kind, &sql).ok_or_else(|| ReplayError::MissingTable {
                        table: format!("{} (cannot copy its definition: {sql})", table.name),
                    })?;
                conn.execute_script(cairn_log::Sql::built(shadow)).await?;
            }
        }
    }
    Ok(())
}

/// Rewrites a `CREATE TABLE` or `CREATE [UNIQUE] INDEX` statement from `sqlite_master`
/// so that it creates the object in the temp schema.
fn sqlite_shadow_sql(kind: &str, sql: &str) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    let (prefix, temp_prefix) = match kind {
        "table" => ("CREATE TABLE ", "CREATE TEMP TABLE "),
        "index" if upper.starts_with("CREATE UNIQUE INDEX ") => {
            ("CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX temp.")
        }
        "index" => ("CREATE INDEX ", "CREATE INDEX temp."),
        _ => return None,
    };
    if !upper.starts_with(prefix) {
        return None;
    }
    let mut rest = &sql[prefix.len()..];
    if rest.to_ascii_uppercase().starts_with("IF NOT EXISTS ") {
        rest = &rest["IF NOT EXISTS ".len()..];
    }
    Some(format!("{temp_prefix}{rest}"))
}

/// A `SELECT` of every row of `schema.table` as one JSON object per row, in a column
/// named `row`.
pub(crate) async fn row_json_select(
    conn: &mut Conn<'_>,
    schema: Option<&str>,
    table: &str,
) -> Result<String, cairn_log::DbError> {
    let qualified = match schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(table),
    };
    Ok(match conn.backend() {
        Backend::Postgres => format!("SELECT to_jsonb(t) AS row FROM {qualified} AS t"),
        Backend::Sqlite => {
            let pragma = format!(
                "SELECT name FROM pragma_table_info($1, '{}') ORDER BY cid",
                schema.unwrap_or("main")
            );
            let columns = conn
                .fetch_all(cairn_log::Sql::built(pragma), args![table])
                .await?;
            let mut pairs = Vec::with_capacity(columns.len());
            for column in columns {
                let name: String = column.get("name")?;
                pairs.push(format!(
                    "'{}', {}",
                    name.replace('\'', "''"),
                    quote_ident(&name)
                ));
            }
            format!(
                "SELECT json_object({}) AS row FROM {qualified} AS t",
                pairs.join(", ")
            )
        }
    })
}

async fn read_rows(
    conn: &mut Conn<'_>,
    schema: &str,
    table: &ProjectionTable,
) -> Result<RowsByKey, ReplayError> {
    let sql = row_json_select(conn, Some(schema), table.name).await?;
    let rows = conn.fetch_all(cairn_log::Sql::built(sql), args![]).await?;
    let mut by_key = RowsByKey::new();
    for row in rows {
        let value = row.get_json("row")?;
        let key = key_of(table, &value);
        by_key.insert(key.to_string(), (key, value));
    }
    Ok(by_key)
}

/// The rows of `table` that differ between the live schema and the shadow one, each
/// side's by key: a row only one side has, or whose values differ. The database joins
/// the two copies on the key and compares them column by column, so rows that agree
/// never leave it.
async fn differing_rows(
    conn: &mut Conn<'_>,
    (live, shadow): (&str, &str),
    table: &ProjectionTable,
) -> Result<(RowsByKey, RowsByKey), ReplayError> {
    let backend = conn.backend();
    let qualified = |schema: &str| format!("{}.{}", quote_ident(schema), quote_ident(table.name));
    let columns: Vec<String> = match backend {
        Backend::Postgres => {
            conn.fetch_all(
                "SELECT attname::text AS name FROM pg_attribute \
                 WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped \
                 ORDER BY attnum",
                args![qualified(live)],
            )
            .await?
        }
        Backend::Sqlite => {
            conn.fetch_all(
                "SELECT name FROM pragma_table_info($1, 'main') ORDER BY cid",
                args![table.name],
            )
            .await?
        }
    }
    .iter()
    .map(|row| row.get::<String>("name"))
    .collect::<Result<_, _>>()?;
    let (Some(first_key), false) = (table.key.first(), columns.is_empty()) else {
        return Err(ReplayError::MissingTable {
            table: table.name.to_owned(),
        });
    };
    let first_key = quote_ident(first_key);
    let row_json = |side: &str| match backend {
        Backend::Postgres => {
            format!("CASE WHEN {side}.{first_key} IS NULL THEN NULL ELSE to_jsonb({side}) END")
        }
        Backend::Sqlite => {
            let pairs: Vec<String> = columns
                .iter()
                .map(|c| format!("'{}', {side}.{}", c.replace('\'', "''"), quote_ident(c)))
                .collect();
            format!(
                "CASE WHEN {side}.{first_key} IS NULL THEN NULL ELSE json_object({}) END",
                pairs.join(", ")
            )
        }
    };
    let distinct = match backend {
        Backend::Postgres => "IS DISTINCT FROM",
        Backend::Sqlite => "IS NOT",
    };
    let on: Vec<String> = table
        .key
        .iter()
        .map(|k| format!("l.{k} = s.{k}", k = quote_ident(k)))
        .collect();
    let differs: Vec<String> = columns
        .iter()
        .map(|c| format!("l.{c} {distinct} s.{c}", c = quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {} AS live, {} AS rebuilt FROM {} AS l FULL JOIN {} AS s ON {} WHERE {}",
        row_json("l"),
        row_json("s"),
        qualified(live),
        qualified(shadow),
        on.join(" AND "),
        differs.join(" OR "),
    );
    let (mut live_rows, mut rebuilt) = (RowsByKey::new(), RowsByKey::new());
    for row in conn.fetch_all(cairn_log::Sql::built(sql), args![]).await? {
        for (column, rows) in [("live", &mut live_rows), ("rebuilt", &mut rebuilt)] {
            if let Some(value) = row.get_json_opt(column)? {
                let key = key_of(table, &value);
                rows.insert(key.to_string(), (key, value));
            }
        }
    }
    Ok((live_rows, rebuilt))
}

async fn count_rows(
    conn: &mut Conn<'_>,
    schema: &str,
    table: &ProjectionTable,
) -> Result<u64, ReplayError> {
    let sql = format!(
        "SELECT count(*) AS n FROM {}.{}",
        quote_ident(schema),
        quote_ident(table.name)
    );
    let n: i64 = conn
        .fetch_one(cairn_log::Sql::built(sql), args![])
        .await?
        .get("n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Rows of a table as JSON objects, by their key (as text).
type RowsByKey = BTreeMap<String, (Value, Value)>;

/// The key columns of `row`, as an object.
fn key_of(table: &ProjectionTable, row: &Value) -> Value {
    Value::Object(
        table
            .key
            .iter()
            .map(|column| {
                (
                    (*column).to_owned(),
                    row.get(*column).cloned().unwrap_or(Value::Null),
                )
            })
            .collect(),
    )
}

fn diff(table: &ProjectionTable, mut live: RowsByKey, rebuilt: RowsByKey, drift: &mut Vec<Drift>) {
    for (id, (key, rebuilt_row)) in rebuilt {
        match live.remove(&id) {
            None => drift.push(Drift {
                table: table.name,
                key,
                kind: DriftKind::OnlyRebuilt {
                    rebuilt: rebuilt_row,
                },
            }),
            Some((_, live_row)) if live_row != rebuilt_row => {
                let empty = serde_json::Map::new();
                let live_columns = live_row.as_object().unwrap_or(&empty);
                let rebuilt_columns = rebuilt_row.as_object().unwrap_or(&empty);
                let mut names: Vec<&String> =
                    live_columns.keys().chain(rebuilt_columns.keys()).collect();
                names.sort();
                names.dedup();
                let columns = names
                    .into_iter()
                    .filter_map(|name| {
                        let live = live_columns.get(name).cloned().unwrap_or(Value::Null);
                        let rebuilt = rebuilt_columns.get(name).cloned().unwrap_or(Value::Null);
                        (live != rebuilt).then(|| ColumnDiff {
                            column: name.clone(),
                            live,
                            rebuilt,
                        })
                    })
                    .collect();
                drift.push(Drift {
                    table: table.name,
                    key,
                    kind: DriftKind::Differs { columns },
                });
            }
            Some(_) => {}
        }
    }
    for (_, (key, live_row)) in live {
        drift.push(Drift {
            table: table.name,
            key,
            kind: DriftKind::OnlyLive { live: live_row },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_shadow_sql;

    #[test]
    fn sqlite_definitions_move_to_the_temp_schema() {
        let cases = [
            (
                "table",
                "CREATE TABLE widgets (id TEXT PRIMARY KEY)",
                Some("CREATE TEMP TABLE widgets (id TEXT PRIMARY KEY)"),
            ),
            (
                "table",
                "create table IF NOT EXISTS widgets (id TEXT)",
                Some("CREATE TEMP TABLE widgets (id TEXT)"),
            ),
            (
                "index",
                "CREATE UNIQUE INDEX widgets_by_name ON widgets (name)",
                Some("CREATE UNIQUE INDEX temp.widgets_by_name ON widgets (name)"),
            ),
            (
                "index",
                "CREATE INDEX widgets_by_org ON widgets (org_id)",
                Some("CREATE INDEX temp.widgets_by_org ON widgets (org_id)"),
            ),
            ("view", "CREATE VIEW v AS SELECT 1", None),
        ];
        for (kind, sql, expect) in cases {
            assert_eq!(sqlite_shadow_sql(kind, sql).as_deref(), expect, "{sql}");
        }
    }
}
