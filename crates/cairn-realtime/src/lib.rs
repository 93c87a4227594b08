//! The live event feed.
//!
//! A subscription is a cursor over the log: it first catches up by reading the log
//! after the position the client last saw (a second ago or a day ago, the same way),
//! then follows it live. The log is the only source of truth: a wake-up (this
//! process's own commits, PostgreSQL's NOTIFY from other processes, or a poll) only
//! says "look again", so a lost wake-up delays a delivery and loses nothing, and the
//! cursor never delivers a position twice.
//!
//! Live delivery is shared: one [`hub`] per feed reads each new batch of events once,
//! with the views of their streams, and hands it to every subscription; a subscription
//! that falls behind the hub goes back to reading the log itself.
//!
//! Authorization is the one policy's: `Subscribe` when the subscription opens (a
//! refusal is an error, never a subscription that silently receives nothing), then
//! `ReceiveEvent` for every event before it is sent. Reads run in the grant's tenancy
//! (row-level security on PostgreSQL). A subscription whose token expires ends with a
//! message that says so and where to resume.

mod hub;
mod subscription;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use cairn_dispatch::Registry;
use cairn_log::{Db, RecordedEvent};
use cairn_policy::{Action, Denial, Principal, authorize};
use cairn_types::{CorrelationId, EventType, OrgId, Position, StreamId, StreamType};

pub use subscription::{Encoded, Subscription};

/// Which events a subscription receives. Every condition narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub stream_type: Option<StreamType>,
    pub event_type: Option<EventType>,
    pub stream_id: Option<StreamId>,
    pub org_id: Option<OrgId>,
    /// Send each event with the views of its stream.
    pub views: bool,
}

impl Selector {
    fn matches(&self, event: &RecordedEvent) -> bool {
        self.stream_type
            .as_ref()
            .is_none_or(|t| *t == event.stream_type)
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| *t == event.event_type)
            && self.stream_id.is_none_or(|id| id == event.stream_id)
            && self
                .org_id
                .is_none_or(|org| event.metadata.org_id == Some(org))
            // The probe's synthetic tenant is only for whoever asks for it by name.
            && (self.org_id.is_some_and(|org| org.is_probe())
                || !event.metadata.org_id.is_some_and(|org| org.is_probe()))
    }
}

/// What a subscription asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub principal: Principal,
    /// When the principal's credentials expire: the subscription ends then.
    pub expires_at: Option<DateTime<Utc>>,
    /// Event types that, on the principal's own user stream, change what the
    /// principal may see (a deactivation, a change of roles): the subscription ends
    /// before them, to be opened again with the principal as they stand then.
    pub ends_on: &'static [&'static str],
    pub selector: Selector,
    /// Deliver events after this position (`Position::START`: from the beginning;
    /// `None`: from the log's head, only what is committed from now on).
    pub after: Option<Position>,
    /// How long the subscription may stay silent before it sends a heartbeat.
    pub heartbeat: Duration,
    /// The correlation id of the request that opened the subscription.
    pub correlation_id: CorrelationId,
    /// The transport, for spans and logs: `sse`, `websocket`, `internal`.
    pub transport: &'static str,
}

/// One message on a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The first message: the subscription is open, and on what terms.
    Subscribed(Subscribed),
    /// An event, with the views of its stream when asked for.
    Event(Box<Delivery>),
    /// Nothing to deliver for a while; the connection is alive. `position` is how far
    /// the subscription has read (events up to it that it did not deliver were not for
    /// it), so resuming from it is as good as from the last event.
    Heartbeat(Heartbeat),
    /// The last message: why the subscription ended and where to resume.
    End(End),
}

impl Message {
    /// The message's type, as its `type` field names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Subscribed(_) => "subscribed",
            Message::Event(_) => "event",
            Message::Heartbeat(_) => "heartbeat",
            Message::End(_) => "end",
        }
    }

    /// The position a client resumes after, if the message carries one.
    pub fn position(&self) -> Option<Position> {
        match self {
            Message::Subscribed(s) => Some(s.after),
            Message::Event(d) => Some(d.position),
            Message::Heartbeat(h) => Some(h.position),
            Message::End(e) => Some(e.resume_after),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Subscribed {
    pub subscription_id: String,
    /// Events after this position follow.
    pub after: Position,
    /// The log's head when the subscription opened.
    pub head: Position,
    /// The tenants the subscription sees: `all` or one organization id.
    pub tenancy: String,
    pub heartbeat_seconds: f64,
    /// When the subscription ends because the token expires.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Delivery {
    /// The event's global position: resume after it with `Last-Event-ID` or `?after=`.
    pub position: Position,
    pub event: RecordedEvent,
    /// The current views of the event's stream (`organization`, `user`, `invitation`,
    /// `workflow_run`, …), when the subscription asked for them; absent when it did not,
    /// or when the stream has none (an operator's decision, a workflow control).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schemars(with = "std::collections::BTreeMap<String, Value>")]
    pub views: serde_json::Map<String, Value>,
    /// The log position the views were read at (at or after `position`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub views_as_of: Option<Position>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Heartbeat {
    pub position: Position,
    pub at: DateTime<Utc>,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The bearer token expired: reconnect with a fresh one.
    TokenExpired,
    /// The server is shutting down: reconnect (to another process, or later).
    ServerShutdown,
    /// The log could not be read for too long.
    Unavailable,
    /// The subscriber's own access changed (they were deactivated, or their roles
    /// changed): reconnect, and the feed follows them as they stand now.
    AccessChanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct End {
    pub reason: EndReason,
    /// What happened and what to do, for people.
    pub message: String,
    /// Resume after this position, and nothing is missed.
    pub resume_after: Position,
}

/// Why a subscription could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error("the log cannot be read")]
    Database(#[from] cairn_log::DbError),
}

struct FeedInner {
    db: Db,
    registry: Arc<Registry>,
    hub: OnceLock<hub::Hub>,
    closing: tokio::sync::watch::Sender<bool>,
}

/// The live feed of one database: opens subscriptions.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<FeedInner>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("db", &self.inner.db)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// A feed over `db`, sending views from `registry`.
    pub fn new(db: Db, registry: Registry) -> Feed {
        Feed {
            inner: Arc::new(FeedInner {
                db,
                registry: Arc::new(registry),
                hub: OnceLock::new(),
                closing: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    fn hub(&self) -> &hub::Hub {
        self.inner.hub.get_or_init(|| {
            hub::Hub::start(
                self.inner.db.clone(),
                self.inner.registry.clone(),
                self.inner.closing.subscribe(),
            )
        })
    }

    /// Opens a subscription, if the policy allows it.
    pub async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Subscription, SubscribeError> {
        let grant = authorize(&request.principal, &Action::Subscribe)?;
        if let Some(org) = request.selector.org_id {
            // Asking for another tenant's events is refused now, not answered with
            // silence later.
            authorize(&request.principal, &Action::ReceiveEvent(Some(org)))?;
        }
        let hub = self.hub();
        let views = request.selector.views.then(|| hub.wants_views());
        // Listening starts before the log is read, so nothing committed in between is
        // missed; what both cover is delivered once, by position.
        let live = hub.subscribe();
        Subscription::open(
            self.inner.db.clone(),
            self.inner.registry.clone(),
            grant,
            request,
            live,
            self.inner.closing.subscribe(),
            views,
        )
        .await
    }

    /// Ends every subscription with [`EndReason::ServerShutdown`]: call it before a
    /// graceful shutdown waits for open connections.
    pub fn close(&self) {
        let _ = self.inner.closing.send(true);
    }
}

/// The views of one stream, read through `conn`.
pub(crate) async fn views_of(
    conn: &mut cairn_log::Conn<'_>,
    registry: &Registry,
    event: &RecordedEvent,
) -> Result<serde_json::Map<String, Value>, cairn_log::DbError> {
    let mut views = serde_json::Map::new();
    for view in registry.views(&event.stream_type) {
        if let Some(value) = view.read(conn, event.stream_id).await? {
            views.insert(view.name().to_owned(), value);
        }
    }
    Ok(views)
}
