//! The attention banner: what is paused or held that the person may see, at the top of
//! the operations pages, each part leading to where to act on it.
//!
//! Every operations page shows it, so it must cost next to nothing. Whatever it shows
//! changes only by an event (a pause, a resume, a retry, a skip, an event that fails or
//! is held, a run the engine pauses), so it is kept per log head: a render reads the
//! head (one statement on a one-row table) and, while the head has not moved, uses
//! what was read for the same tenancy at that head. Only the first render after the
//! log moved reads the pauses and holds again.

use std::sync::Mutex;

use cairn_dispatch::RoutePause;
use cairn_domain::reads::{self, ReadsError};
use cairn_policy::{Action, Grant};
use cairn_types::Position;
use cairn_types::Tenancy;
use cairn_workflow::{KindPause, RunFilter};

use super::{Session, plural, time_text};
use crate::AppState;
use crate::routes::allow;

/// Held streams and paused runs are counted up to this many; beyond, the banner says
/// "more than".
const COUNT_UP_TO: usize = 100;

/// The banner: empty when nothing is paused or held.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attention {
    pub items: Vec<AttentionItem>,
}

/// One part of the banner: `lead` and `code` link to where to act; `rest` follows.
#[derive(Debug, Clone)]
pub(crate) struct AttentionItem {
    pub lead: String,
    pub code: String,
    pub rest: String,
    pub href: &'static str,
}

/// What the banner is made of, as one tenancy sees it.
#[derive(Debug, Clone, Default)]
struct Facts {
    routes: Vec<RoutePause>,
    kinds: Vec<KindPause>,
    /// Held streams, at most [`COUNT_UP_TO`], and whether there are more.
    held_streams: usize,
    held_events: u64,
    more_held: bool,
    /// Paused runs (on their own or by their kind), at most [`COUNT_UP_TO`].
    paused_runs: usize,
    more_paused: bool,
}

/// The tenancies a banner was read with: of the grant to list events and of the grant
/// to list workflow runs (`None` when the person has no such grant).
type Key = (Option<Tenancy>, Option<Tenancy>);

/// What the banner read at the last head, per tenancy.
#[derive(Debug, Default)]
pub struct Cache {
    last: Mutex<Option<Read>>,
}

/// What was read at one head.
#[derive(Debug)]
struct Read {
    head: Position,
    by_tenancy: Vec<(Key, Facts)>,
}

impl Cache {
    fn get(&self, head: Position, key: &Key) -> Option<Facts> {
        let last = self.last.lock().ok()?;
        let read = last.as_ref().filter(|read| read.head == head)?;
        read.by_tenancy
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, facts)| facts.clone())
    }

    fn put(&self, head: Position, key: Key, facts: Facts) {
        if let Ok(mut last) = self.last.lock() {
            match last.as_mut() {
                Some(read) if read.head == head => {
                    read.by_tenancy.retain(|(k, _)| *k != key);
                    read.by_tenancy.push((key, facts));
                }
                _ => {
                    *last = Some(Read {
                        head,
                        by_tenancy: vec![(key, facts)],
                    });
                }
            }
        }
    }
}

/// The banner for this person now. A read that fails leaves the banner out rather
/// than the page: the page itself says what it can.
pub(crate) async fn banner(state: &AppState, session: &Session) -> Attention {
    let events = allow(&session.ctx, Action::ListEvents).ok();
    let workflows = allow(&session.ctx, Action::ListWorkflows).ok();
    if events.is_none() && workflows.is_none() {
        return Attention::default();
    }
    let key = (
        events.as_ref().map(|g| *g.tenancy()),
        workflows.as_ref().map(|g| *g.tenancy()),
    );
    let cache = state.activity().attention();
    let head = match reads::log_head(state.db()).await {
        Ok(head) => head,
        Err(error) => {
            tracing::warn!(error = %error, "the attention banner could not read the log's head");
            return Attention::default();
        }
    };
    let facts = match cache.get(head, &key) {
        Some(facts) => facts,
        None => match read(state, events.as_ref(), workflows.as_ref()).await {
            Ok(facts) => {
                cache.put(head, key, facts.clone());
                facts
            }
            Err(error) => {
                tracing::warn!(error = %error, "the attention banner could not be read");
                return Attention::default();
            }
        },
    };
    items(&facts)
}

/// Reads what is paused and held with the person's grants.
async fn read(
    state: &AppState,
    events: Option<&Grant>,
    workflows: Option<&Grant>,
) -> Result<Facts, ReadsError> {
    let mut facts = Facts::default();
    let limit = u32::try_from(COUNT_UP_TO + 1).unwrap_or(u32::MAX);
    if let Some(grant) = events {
        facts.routes = reads::paused_routes(state.db(), grant).await?;
        let held = reads::held_streams(state.db(), grant, Position::START, limit).await?;
        facts.more_held = held.len() > COUNT_UP_TO;
        facts.held_streams = held.len().min(COUNT_UP_TO);
        facts.held_events = held.iter().take(COUNT_UP_TO).map(|h| h.n_held).sum();
    }
    if let Some(grant) = workflows {
        facts.kinds = reads::paused_kinds(state.db(), grant).await?;
        let filter = RunFilter {
            paused: true,
            limit: Some(limit),
            ..RunFilter::default()
        };
        let runs = reads::workflows(state.db(), grant, filter).await?;
        facts.more_paused = runs.len() > COUNT_UP_TO;
        facts.paused_runs = runs.len().min(COUNT_UP_TO);
    }
    Ok(facts)
}

/// `paused by … since …: why`.
fn paused_by(by: &str, since: &chrono::DateTime<chrono::Utc>, reason: &str) -> String {
    format!("paused by {by} since {}: {reason}", time_text(since))
}

/// The banner's parts, in the order an operator acts on them: what an operator paused,
/// then what waits because of a failure or a pause.
fn items(facts: &Facts) -> Attention {
    let mut items = Vec::new();
    for pause in &facts.routes {
        items.push(AttentionItem {
            lead: "Handler route".to_owned(),
            code: pause.route.to_string(),
            rest: paused_by(&pause.paused_by, &pause.since, &pause.reason),
            href: "/console/handlers",
        });
    }
    for pause in &facts.kinds {
        items.push(AttentionItem {
            lead: "Workflow kind".to_owned(),
            code: pause.kind.clone(),
            rest: paused_by(&pause.paused_by, &pause.since, &pause.reason),
            href: "/console/workflows#kinds",
        });
    }
    if facts.held_streams > 0 {
        let more = if facts.more_held { "more than " } else { "" };
        items.push(AttentionItem {
            lead: format!(
                "{more}{}",
                plural(facts.held_streams as u64, "stream held", "streams held")
            ),
            code: String::new(),
            rest: format!("({} waiting)", plural(facts.held_events, "event", "events")),
            href: "/console/failures#held",
        });
    }
    if facts.paused_runs > 0 {
        let more = if facts.more_paused { "more than " } else { "" };
        items.push(AttentionItem {
            lead: format!(
                "{more}{}",
                plural(
                    facts.paused_runs as u64,
                    "workflow run paused",
                    "workflow runs paused"
                )
            ),
            code: String::new(),
            rest: String::new(),
            href: "/console/workflows?paused=1",
        });
    }
    Attention { items }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_entry_holds_only_at_its_head_and_for_its_tenancy() {
        let cache = Cache::default();
        let key = (Some(Tenancy::All), None);
        let facts = Facts {
            held_streams: 2,
            ..Facts::default()
        };
        cache.put(Position::new(7), key, facts);
        assert_eq!(
            cache.get(Position::new(7), &key).map(|f| f.held_streams),
            Some(2)
        );
        assert!(cache.get(Position::new(8), &key).is_none(), "the log moved");
        assert!(
            cache
                .get(Position::new(7), &(Some(Tenancy::None), None))
                .is_none(),
            "another tenancy"
        );
        cache.put(Position::new(8), key, Facts::default());
        assert!(cache.get(Position::new(7), &key).is_none(), "replaced");
    }

    #[test]
    fn nothing_paused_or_held_is_no_banner() {
        assert!(items(&Facts::default()).items.is_empty());
        let banner = items(&Facts {
            held_streams: 2,
            held_events: 3,
            paused_runs: 1,
            ..Facts::default()
        });
        let text: Vec<String> = banner
            .items
            .iter()
            .map(|i| format!("{} {} {}", i.lead, i.code, i.rest))
            .collect();
        assert_eq!(
            text,
            [
                "2 streams held  (3 events waiting)",
                "1 workflow run paused  "
            ]
        );
    }
}
