//! One reader of new events per feed, shared by every live subscription.
//!
//! The hub wakes on the log's head watch, reads what was committed since it last
//! looked (with the views of those events' streams, when a subscription wants them),
//! and broadcasts the batch. Each batch says which positions it covers, so a
//! subscription can tell a batch it has already read from one that leaves a gap; on
//! a gap, or when it falls behind the broadcast buffer, it reads the log itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use cairn_dispatch::Registry;
use cairn_log::{Db, EventFilter, RecordedEvent};
use cairn_types::{Position, StreamId};

/// Events per read.
pub(crate) const BATCH: u32 = 500;
/// Batches a slow subscription may fall behind before it reads the log itself.
const BUFFER: usize = 256;

/// The events committed in `(after, through]`, all of them, in position order.
#[derive(Debug)]
pub(crate) struct Batch {
    pub after: Position,
    pub through: Position,
    pub events: Vec<HubEvent>,
}

#[derive(Debug)]
pub(crate) struct HubEvent {
    pub event: RecordedEvent,
    /// The views of the event's stream as of `through`; empty when no subscription
    /// asked for views.
    pub views: serde_json::Map<String, Value>,
    /// The event's `Message` as JSON, without and with the views: encoded by the first
    /// subscription that sends it, for all of them.
    encoded: [std::sync::OnceLock<Arc<str>>; 2],
}

impl HubEvent {
    pub(crate) fn new(event: RecordedEvent, views: serde_json::Map<String, Value>) -> HubEvent {
        HubEvent {
            event,
            views,
            encoded: Default::default(),
        }
    }

    /// The delivery of this event, in a batch read through `through`.
    pub(crate) fn delivery(&self, views: bool, through: Position) -> crate::Delivery {
        crate::Delivery {
            position: self.event.position,
            event: self.event.clone(),
            views: if views {
                self.views.clone()
            } else {
                serde_json::Map::new()
            },
            views_as_of: views.then_some(through),
        }
    }

    /// The delivery's `Message` as JSON, encoded once.
    pub(crate) fn encoded(&self, views: bool, through: Position) -> Arc<str> {
        self.encoded[usize::from(views)]
            .get_or_init(|| {
                let message = crate::Message::Event(Box::new(self.delivery(views, through)));
                match serde_json::to_string(&message) {
                    Ok(json) => Arc::from(json),
                    Err(error) => {
                        tracing::error!(error = %error, position = %self.event.position, "a realtime delivery could not be encoded");
                        Arc::from(
                            serde_json::json!({
                                "type": "error",
                                "message": format!("the event at position {} could not be encoded: {error}", self.event.position),
                            })
                            .to_string(),
                        )
                    }
                }
            })
            .clone()
    }
}

pub(crate) struct Hub {
    sender: broadcast::Sender<Arc<Batch>>,
    wants_views: Arc<AtomicUsize>,
}

/// Counts a subscription that wants views while it lives.
#[derive(Debug)]
pub(crate) struct WantsViews(Arc<AtomicUsize>);

impl Drop for WantsViews {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hub {
    pub(crate) fn start(db: Db, registry: Arc<Registry>, closing: watch::Receiver<bool>) -> Hub {
        let (sender, _) = broadcast::channel(BUFFER);
        let wants_views = Arc::new(AtomicUsize::new(0));
        tokio::spawn(follow(
            db,
            registry,
            sender.clone(),
            wants_views.clone(),
            closing,
        ));
        Hub {
            sender,
            wants_views,
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.sender.subscribe()
    }

    pub(crate) fn wants_views(&self) -> WantsViews {
        self.wants_views.fetch_add(1, Ordering::SeqCst);
        WantsViews(self.wants_views.clone())
    }
}

async fn follow(
    db: Db,
    registry: Arc<Registry>,
    sender: broadcast::Sender<Arc<Batch>>,
    wants_views: Arc<AtomicUsize>,
    mut closing: watch::Receiver<bool>,
) {
    let mut heads = db.head_watch();
    let mut cursor = loop {
        match db.reader().await {
            Ok(mut reader) => match reader.conn().head().await {
                Ok(head) => break head.last_position,
                Err(error) => tracing::warn!(error = %error, "realtime: cannot read the log head"),
            },
            Err(error) => tracing::warn!(error = %error, "realtime: cannot read the log head"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = closing.changed() => return,
        }
    };
    let mut retry = false;
    loop {
        if !retry {
            tokio::select! {
                changed = heads.changed() => if changed.is_err() { return },
                _ = closing.changed() => return,
            }
        }
        retry = false;
        if *closing.borrow() {
            return;
        }
        if sender.receiver_count() == 0 {
            // Nobody listens: nothing to read. A subscription that arrives later
            // catches up from the log before it listens to batches.
            cursor = cursor.max(*heads.borrow_and_update());
            continue;
        }
        loop {
            let views = wants_views.load(Ordering::SeqCst) > 0;
            match read_batch(&db, &registry, cursor, views).await {
                Ok(batch) => {
                    let full = batch.events.len() == BATCH as usize;
                    if batch.through > cursor {
                        cursor = batch.through;
                        // No receiver left is not an error: the next one catches up.
                        let _ = sender.send(Arc::new(batch));
                    }
                    if !full {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, after = %cursor, "realtime: cannot read new events; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = closing.changed() => return,
                    }
                    retry = true;
                    break;
                }
            }
        }
    }
}

async fn read_batch(
    db: &Db,
    registry: &Registry,
    after: Position,
    with_views: bool,
) -> Result<Batch, cairn_log::ReadError> {
    let mut snapshot = db.snapshot().await?;
    let mut conn = snapshot.conn();
    let events = conn
        .read_events(&EventFilter {
            after,
            limit: Some(BATCH),
            ..EventFilter::default()
        })
        .await?;
    let head = conn.head().await?.last_position;
    let through = if events.len() == BATCH as usize {
        events.last().map_or(head, |e| e.position)
    } else {
        head
    };
    // Decoded once for every subscriber: current versions, personal fields opened.
    let events = cairn_dispatch::current_events(db, registry, events).await?;
    let mut cache: BTreeMap<StreamId, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let views = if with_views {
            match cache.get(&event.stream_id) {
                Some(views) => views.clone(),
                None => {
                    let views = crate::views_of(&mut conn, registry, &event).await?;
                    cache.insert(event.stream_id, views.clone());
                    views
                }
            }
        } else {
            serde_json::Map::new()
        };
        out.push(HubEvent::new(event, views));
    }
    Ok(Batch {
        after,
        through,
        events: out,
    })
}
