//! One subscription: a cursor that catches up from the log, then follows the hub.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use cairn_dispatch::Registry;
use cairn_log::{Db, EventFilter, RecordedEvent, SpanKind, SpanRecord};
use cairn_policy::{Action, Grant, authorize};
use cairn_types::Position;
use cairn_types::Tenancy;

use crate::hub::{BATCH, Batch, WantsViews};
use crate::{
    Delivery, End, EndReason, Heartbeat, Message, SubscribeError, SubscribeRequest, Subscribed,
};

/// How long the log may stay unreadable before a subscription gives up.
const UNAVAILABLE_AFTER: Duration = Duration::from_secs(30);

/// Keeps the open-subscriptions gauge right.
#[derive(Debug)]
struct Open;

impl Open {
    fn new() -> Open {
        cairn_observe::metrics().realtime_subscribers.inc();
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        cairn_observe::metrics().realtime_subscribers.dec();
    }
}

/// A message waiting to be sent: one of its own, or an event of a live batch, which
/// every subscription that sends it shares (see [`Encoded`]).
#[derive(Debug)]
enum Queued {
    Message(Message),
    Live {
        batch: Arc<Batch>,
        index: usize,
        views: bool,
    },
}

/// A message ready to send: its type and position (for SSE's `event:` and `id:`), and
/// its JSON, encoded once for every subscription that sends the same message.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The message's `type`.
    pub kind: &'static str,
    /// The position a client resumes after, if the message carries one.
    pub position: Option<Position>,
    /// The message as JSON.
    pub json: Arc<str>,
    /// The `end` message's terms, when this is the last message.
    pub end: Option<End>,
}

/// An open subscription. [`Subscription::next`] yields its messages: `subscribed`
/// first, then events and heartbeats, and `end` last.
#[derive(Debug)]
pub struct Subscription {
    id: String,
    db: Db,
    registry: Arc<Registry>,
    grant: Grant,
    request: SubscribeRequest,
    live: broadcast::Receiver<Arc<Batch>>,
    closing: watch::Receiver<bool>,
    /// Every position up to here has been delivered or was not for this subscription.
    cursor: Position,
    caught_up: bool,
    queue: VecDeque<Queued>,
    ended: bool,
    last_sent: Instant,
    failing_since: Option<Instant>,
    /// Events of personal types taken from live batches and not yet on record in the
    /// access log: recorded, as one record, before the next message goes out.
    unrecorded: Vec<RecordedEvent>,
    _open: Open,
    _views: Option<WantsViews>,
}

impl Subscription {
    pub(crate) async fn open(
        db: Db,
        registry: Arc<Registry>,
        grant: Grant,
        request: SubscribeRequest,
        live: broadcast::Receiver<Arc<Batch>>,
        closing: watch::Receiver<bool>,
        views: Option<WantsViews>,
    ) -> Result<Subscription, SubscribeError> {
        let head = {
            let mut snapshot = db.scoped(grant.tenancy()).await?;
            snapshot.conn().head().await?.last_position
        };
        let id = uuid_v7();
        let tenancy = match grant.tenancy() {
            Tenancy::All => "all".to_owned(),
            Tenancy::Org(org) => org.to_string(),
            Tenancy::None => "none".to_owned(),
        };
        let after = request.after.unwrap_or(head);
        let subscribed = Subscribed {
            subscription_id: id.clone(),
            after,
            head,
            tenancy,
            heartbeat_seconds: request.heartbeat.as_secs_f64(),
            expires_at: request.expires_at,
        };
        tracing::info!(
            subscription = %id,
            principal = %request.principal.describe(),
            transport = request.transport,
            %after,
            "subscription opened"
        );
        Ok(Subscription {
            id,
            db,
            registry,
            grant,
            cursor: after,
            request,
            live,
            closing,
            caught_up: false,
            queue: VecDeque::from([Queued::Message(Message::Subscribed(subscribed))]),
            ended: false,
            last_sent: Instant::now(),
            failing_since: None,
            unrecorded: Vec::new(),
            _open: Open::new(),
            _views: views,
        })
    }

    /// The subscription's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long the subscription stays silent before it sends a heartbeat.
    pub fn heartbeat(&self) -> Duration {
        self.request.heartbeat
    }

    /// Every position up to this one has been delivered or was not for this
    /// subscription.
    pub fn position(&self) -> Position {
        self.cursor
    }

    /// The next message, encoded to send: a live event's JSON is encoded once and
    /// shared by every subscription that sends it. `None` after the `end` message.
    pub async fn next_encoded(&mut self) -> Option<Encoded> {
        match self.next_queued().await? {
            Queued::Message(message) => {
                let json = match serde_json::to_string(&message) {
                    Ok(json) => Arc::from(json),
                    Err(error) => {
                        tracing::error!(error = %error, "a realtime message could not be encoded");
                        return None;
                    }
                };
                Some(Encoded {
                    kind: message.kind(),
                    position: message.position(),
                    json,
                    end: match message {
                        Message::End(end) => Some(end),
                        _ => None,
                    },
                })
            }
            Queued::Live {
                batch,
                index,
                views,
            } => {
                let hub_event = &batch.events[index];
                Some(Encoded {
                    kind: "event",
                    position: Some(hub_event.event.position),
                    json: hub_event.encoded(views, batch.through),
                    end: None,
                })
            }
        }
    }

    /// The next message, waiting for one; `None` after the `end` message.
    pub async fn next(&mut self) -> Option<Message> {
        Some(match self.next_queued().await? {
            Queued::Message(message) => message,
            Queued::Live {
                batch,
                index,
                views,
            } => Message::Event(Box::new(batch.events[index].delivery(views, batch.through))),
        })
    }

    async fn next_queued(&mut self) -> Option<Queued> {
        loop {
            if !self.unrecorded.is_empty() {
                let events = std::mem::take(&mut self.unrecorded);
                self.record_access(&events).await;
            }
            if let Some(message) = self.queue.pop_front() {
                if matches!(message, Queued::Message(Message::End(_))) {
                    self.ended = true;
                    tracing::info!(subscription = %self.id, after = %self.cursor, "subscription ended");
                }
                self.last_sent = Instant::now();
                return Some(message);
            }
            if self.ended {
                return None;
            }
            if let Some(expires_at) = self.request.expires_at
                && Utc::now() >= expires_at
            {
                self.end(
                    EndReason::TokenExpired,
                    format!(
                        "the bearer token expired at {expires_at}; reconnect with a fresh token and Last-Event-ID: {} (or ?after={}) to miss nothing",
                        self.cursor, self.cursor
                    ),
                );
                continue;
            }
            if *self.closing.borrow() {
                self.end(
                    EndReason::ServerShutdown,
                    format!(
                        "the server is shutting down; reconnect with Last-Event-ID: {} (or ?after={}) to miss nothing",
                        self.cursor, self.cursor
                    ),
                );
                continue;
            }
            if !self.caught_up {
                // Boxed: reading the log is a large future, and an idle subscription
                // would otherwise carry its space all the time it waits.
                Box::pin(self.catch_up()).await;
                continue;
            }
            self.wait_live().await;
        }
    }

    fn end(&mut self, reason: EndReason, message: String) {
        self.queue.push_back(Queued::Message(Message::End(End {
            reason,
            message,
            resume_after: self.cursor,
        })));
    }

    /// Whether the subscription may receive this event: its filters, its tenancy, and
    /// the policy, asked again for this event.
    fn admits(&self, event: &RecordedEvent) -> bool {
        self.request.selector.matches(event)
            && self.grant.tenancy().sees(event.metadata.org_id)
            && authorize(
                &self.request.principal,
                &Action::ReceiveEvent(event.metadata.org_id),
            )
            .is_ok()
    }

    /// Reads one batch from the log, in the grant's tenancy.
    async fn catch_up(&mut self) {
        match self.read_log().await {
            Ok((deliveries, through, done)) => {
                self.failing_since = None;
                cairn_observe::metrics()
                    .realtime_deliveries
                    .inc_by(deliveries.len() as u64);
                for delivery in &deliveries {
                    self.record_delivery(&delivery.event, true);
                }
                let personal: Vec<RecordedEvent> = deliveries
                    .iter()
                    .filter(|d| cairn_log::is_personal(&d.event.event_type))
                    .map(|d| d.event.clone())
                    .collect();
                self.record_access(&personal).await;
                self.queue.extend(
                    deliveries
                        .into_iter()
                        .map(|d| Queued::Message(Message::Event(Box::new(d)))),
                );
                self.cursor = self.cursor.max(through);
                if done {
                    self.caught_up = true;
                    // Batches broadcast while the log was being read are covered by it.
                    self.drain_covered();
                }
            }
            Err(error) => self.failed(error).await,
        }
    }

    async fn failed(&mut self, error: cairn_log::ReadError) {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        tracing::warn!(subscription = %self.id, error = %error, "realtime: cannot read the log");
        if since.elapsed() >= UNAVAILABLE_AFTER {
            self.end(
                EndReason::Unavailable,
                format!(
                    "the log could not be read for {} s ({error}); reconnect later with Last-Event-ID: {}",
                    UNAVAILABLE_AFTER.as_secs(),
                    self.cursor
                ),
            );
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn read_log(&self) -> Result<(Vec<Delivery>, Position, bool), cairn_log::ReadError> {
        let selector = &self.request.selector;
        let filter = EventFilter {
            after: self.cursor,
            limit: Some(BATCH),
            stream_id: selector.stream_id,
            stream_type: selector.stream_type.clone(),
            event_type: selector.event_type.clone(),
            org_id: selector.org_id.or(self.grant.tenancy().org()),
            ..EventFilter::default()
        };
        let mut snapshot = self.db.scoped(self.grant.tenancy()).await?;
        let mut conn = snapshot.conn();
        let events = conn.read_events(&filter).await?;
        let head = conn.head().await?.last_position;
        let done = events.len() < BATCH as usize;
        let through = if done {
            head
        } else {
            events.last().map_or(head, |e| e.position)
        };
        let admitted: Vec<_> = events
            .into_iter()
            .filter(|event| self.admits(event))
            .collect();
        let admitted = cairn_dispatch::current_events(&self.db, &self.registry, admitted).await?;
        let mut deliveries = Vec::new();
        for event in admitted {
            let (views, views_as_of) = if selector.views {
                (
                    crate::views_of(&mut conn, &self.registry, &event).await?,
                    Some(head),
                )
            } else {
                (serde_json::Map::new(), None)
            };
            deliveries.push(Delivery {
                position: event.position,
                event,
                views,
                views_as_of,
            });
        }
        Ok((deliveries, through, done))
    }

    /// Drops the broadcast batches the log read already covered.
    fn drain_covered(&mut self) {
        loop {
            match self.live.try_recv() {
                Ok(batch) if batch.through <= self.cursor => continue,
                Ok(batch) => {
                    self.take(&batch);
                    return;
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.caught_up = false;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Takes the events of a live batch that follow the cursor; a batch that starts
    /// past the cursor would leave a gap, so the log is read instead.
    /// Whether `event` changes what this subscription's own principal may see.
    fn changes_own_access(&self, event: &cairn_log::RecordedEvent) -> bool {
        self.request
            .principal
            .user_id()
            .is_some_and(|user| user.as_uuid() == event.stream_id.as_uuid())
            && self.request.ends_on.contains(&event.event_type.as_str())
    }

    fn take(&mut self, batch: &Arc<Batch>) {
        if batch.through <= self.cursor {
            return;
        }
        if batch.after > self.cursor {
            self.caught_up = false;
            return;
        }
        let metrics = cairn_observe::metrics();
        let now = Utc::now();
        for (index, hub_event) in batch.events.iter().enumerate() {
            let event = &hub_event.event;
            if event.position <= self.cursor {
                continue;
            }
            if self.changes_own_access(event) {
                self.cursor = Position::new(event.position.get() - 1);
                self.end(
                    EndReason::AccessChanged,
                    format!(
                        "your access changed ({}); reconnect with a token that works, with Last-Event-ID: {} (or ?after={}), to miss nothing you may still see",
                        event.event_type, self.cursor, self.cursor
                    ),
                );
                return;
            }
            if !self.admits(event) {
                continue;
            }
            let latency = (now - event.created_at).to_std().unwrap_or_default();
            metrics.realtime_deliveries.inc();
            metrics
                .realtime_delivery_seconds
                .observe(latency.as_secs_f64());
            self.record_delivery(event, false);
            if cairn_log::is_personal(&event.event_type) {
                self.unrecorded.push(event.clone());
            }
            self.queue.push_back(Queued::Live {
                batch: batch.clone(),
                index,
                views: self.request.selector.views,
            });
        }
        self.cursor = batch.through;
    }

    /// Puts a batch of deliveries that carry people's data on record in the access log:
    /// one record per batch (a catch-up read, or the events taken from one live
    /// batch), not one per event, naming the people and the positions.
    async fn record_access(&self, events: &[RecordedEvent]) {
        let Some(subjects) = cairn_log::personal_subjects(events) else {
            return;
        };
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let positions = if first.position == last.position {
            format!("event {}", first.position)
        } else {
            format!("events {} to {}", first.position, last.position)
        };
        let record = cairn_log::AccessRecord::now(
            self.request.principal.who(),
            cairn_log::AccessVia::Feed,
            self.request.correlation_id,
            format!(
                "{} subscription {}: {positions}",
                self.request.transport, self.id
            ),
            subjects,
        )
        .org(self.grant.tenancy().org());
        self.db.record_access(record).await;
    }

    /// Records a delivery as a hop of the event's request. A catch-up delivery of an
    /// old event is not a hop of anything recent and is not recorded, so that a client
    /// reading a day of the log back does not write a day of spans.
    fn record_delivery(&self, event: &RecordedEvent, catch_up: bool) {
        if catch_up && Utc::now() - event.created_at > chrono::Duration::minutes(5) {
            return;
        }
        // The `tracing` span of the hop, in the event's trace: it marks the moment of
        // delivery and carries the time since the commit.
        let since_commit = (Utc::now() - event.created_at).to_std().unwrap_or_default();
        let span = tracing::info_span!(
            "cairn.delivery",
            event_type = %event.event_type,
            position = event.position.get(),
            subscription = %self.id,
            transport = %self.request.transport,
            catch_up,
            since_commit_ms = since_commit.as_secs_f64() * 1e3,
            correlation_id = %event.metadata.correlation_id,
        );
        cairn_observe::otel::join_trace(&span, event.metadata.correlation_id.as_uuid(), None);
        drop(span);
        self.db.record_span(
            SpanRecord::ending_now(
                event.metadata.correlation_id,
                SpanKind::Delivery,
                format!(
                    "{} delivered to a {} subscriber ({})",
                    event.event_type,
                    self.request.transport,
                    self.request.principal.kind()
                ),
                event.created_at,
            )
            .org(event.metadata.org_id)
            .attribute("subscription", self.id.as_str())
            .attribute("position", event.position.get())
            .attribute("catch_up", catch_up)
            .attribute("principal", self.request.principal.describe()),
        );
    }

    /// Waits for a live batch, a heartbeat, the token's expiry or the shutdown.
    async fn wait_live(&mut self) {
        let heartbeat_at = self.last_sent + self.request.heartbeat;
        let expiry = self.request.expires_at.map(|at| {
            let left = (at - Utc::now()).to_std().unwrap_or_default();
            Instant::now() + left
        });
        let expired = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = self.live.recv() => match received {
                Ok(batch) => self.take(&batch),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(subscription = %self.id, missed, "realtime: fell behind the live batches; reading the log");
                    self.caught_up = false;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.end(
                        EndReason::ServerShutdown,
                        format!("the feed stopped; reconnect with Last-Event-ID: {}", self.cursor),
                    );
                }
            },
            () = tokio::time::sleep_until(heartbeat_at) => {
                self.queue.push_back(Queued::Message(Message::Heartbeat(Heartbeat {
                    position: self.cursor,
                    at: Utc::now(),
                })));
            }
            () = expired => {}
            changed = self.closing.changed() => {
                if changed.is_err() {
                    self.end(
                        EndReason::ServerShutdown,
                        format!("the feed was closed; reconnect with Last-Event-ID: {}", self.cursor),
                    );
                }
            }
        }
    }
}

fn uuid_v7() -> String {
    cairn_types::CorrelationId::new_v7().to_string()
}
