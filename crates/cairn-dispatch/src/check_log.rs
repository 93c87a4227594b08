//! Checking that every stored event still reads as its type's current version: the
//! gate to run against a copy of production before a deploy (`cairn contracts
//! check-log`).
//!
//! Each event goes through the one decoding path readers use ([`Registry::upcast`]'s
//! chain), then into the current payload type. Nothing is written.

use std::collections::BTreeMap;

use serde::Serialize;

use cairn_log::{EventFilter, ReadError};
use cairn_types::Position;

use crate::registry::{DecodeError, Registry};
use crate::store::EventStore;

/// Events read per query.
const PAGE: u32 = 10_000;
/// Failures kept in full in a report; the rest are counted.
const KEEP_FAILURES: usize = 100;

/// What a check of the log found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CheckLogReport {
    /// Events checked: the whole log up to its head when the check began.
    pub n_events: u64,
    /// Events stored at an older version, read through their chain.
    pub n_upcast: u64,
    /// Events of types with no contract in this build (their dispatch records
    /// `P9001` or `P9002`; there is nothing to decode them into).
    pub n_unregistered: u64,
    /// Events that do not read as the current version.
    pub n_failed: u64,
    /// Events by type and stored version.
    pub versions: Vec<VersionCount>,
    /// The first failures, in log order (at most 100).
    pub failures: Vec<LogFailure>,
}

impl CheckLogReport {
    /// Whether every event reads as its current version.
    pub fn is_clean(&self) -> bool {
        self.n_failed == 0
    }
}

/// How many events of a type are stored at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct VersionCount {
    pub event_type: String,
    pub stored_version: u32,
    /// The version this build reads them as; `None` for a type with no contract.
    pub current_version: Option<u32>,
    pub n_events: u64,
}

/// Where a stored event fails to read as its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureStage {
    /// Written by a newer build.
    Newer,
    /// A step of its upcaster chain failed.
    Upcast,
    /// Upcast (or stored at the current version), it does not fit the current type.
    Decode,
}

/// One event that does not read as its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LogFailure {
    pub position: i64,
    pub event_id: String,
    pub event_type: String,
    pub stored_version: u32,
    pub current_version: u32,
    pub stage: FailureStage,
    /// What failed, naming the field where there is one.
    pub message: String,
}

impl EventStore {
    /// Reads every event up to the head, in pages on one snapshot, through its
    /// upcaster chain into its current payload type. `progress` is called with
    /// (done, total).
    pub async fn check_log(
        &self,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<CheckLogReport, ReadError> {
        let registry = self.dispatcher().registry();
        let mut snapshot = self.db().snapshot().await?;
        let mut conn = snapshot.conn();
        let head = conn.head().await?.last_position;
        let total = u64::try_from(head.get()).unwrap_or(0);
        let mut check = Check::default();
        let mut filter = EventFilter {
            after: Position::new(0),
            limit: Some(PAGE),
            ..EventFilter::default()
        };
        loop {
            let page = conn.read_events(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after = last.position;
            for event in page {
                check.event(registry, event);
            }
            progress(check.report.n_events, total);
            if filter.after >= head {
                break;
            }
        }
        Ok(check.finish())
    }
}

#[derive(Default)]
struct Check {
    report: CheckLogReport,
    /// By type, then stored version: (current version, events).
    versions: BTreeMap<String, BTreeMap<u32, (Option<u32>, u64)>>,
}

impl Check {
    fn event(&mut self, registry: &Registry, mut event: cairn_log::RecordedEvent) {
        self.report.n_events += 1;
        let spec = registry.spec(&event.event_type);
        let current = spec.map(|spec| spec.version);
        // A type's name is copied only the first time it is met.
        let by_version = match self.versions.get_mut(event.event_type.as_str()) {
            Some(by_version) => by_version,
            None => self
                .versions
                .entry(event.event_type.to_string())
                .or_default(),
        };
        by_version
            .entry(event.stored_version)
            .or_insert((current, 0))
            .1 += 1;
        let Some(spec) = spec else {
            self.report.n_unregistered += 1;
            return;
        };
        let stored = event.stored_version;
        if stored != spec.version {
            self.report.n_upcast += u64::from(stored < spec.version);
            if let Err(error) = registry.upcast_in_place(&mut event) {
                let stage = match error {
                    DecodeError::Newer { .. } => FailureStage::Newer,
                    DecodeError::Upcast { .. } => FailureStage::Upcast,
                };
                self.fail(&event, spec.version, stage, error.to_string());
                return;
            }
        }
        if !spec.decodes(&event.data) {
            let message = spec
                .validate(&event.data)
                .err()
                .unwrap_or_else(|| "event_data does not decode".to_owned());
            self.fail(&event, spec.version, FailureStage::Decode, message);
        }
    }

    fn fail(
        &mut self,
        event: &cairn_log::RecordedEvent,
        current_version: u32,
        stage: FailureStage,
        message: String,
    ) {
        self.report.n_failed += 1;
        if self.report.failures.len() < KEEP_FAILURES {
            self.report.failures.push(LogFailure {
                position: event.position.get(),
                event_id: event.event_id.to_string(),
                event_type: event.event_type.to_string(),
                stored_version: event.stored_version,
                current_version,
                stage,
                message,
            });
        }
    }

    fn finish(mut self) -> CheckLogReport {
        self.report.versions =
            self.versions
                .into_iter()
                .flat_map(|(event_type, by_version)| {
                    by_version.into_iter().map(
                        move |(stored_version, (current_version, n_events))| VersionCount {
                            event_type: event_type.clone(),
                            stored_version,
                            current_version,
                            n_events,
                        },
                    )
                })
                .collect();
        self.report
    }
}

/// Events of a type stored at a version newer than this build's: written by a newer
/// build that ran against this log. This build never applies them (`P9006`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct NewerEvents {
    pub event_type: String,
    /// The newest version stored.
    pub stored_version: u32,
    /// The version this build reads.
    pub current_version: u32,
}

impl std::fmt::Display for NewerEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} v{} (this build reads v{})",
            self.event_type, self.stored_version, self.current_version
        )
    }
}

/// The registered types with events stored at a newer version than this build's. One
/// query, one index probe per type (on the index of events not at version 1), so it
/// is cheap enough for every health check.
pub async fn newer_events(
    conn: &mut cairn_log::Conn<'_>,
    registry: &Registry,
) -> Result<Vec<NewerEvents>, cairn_log::DbError> {
    let specs: Vec<_> = registry.specs().collect();
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = Vec::with_capacity(specs.len() * 2);
    let probes: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            args.push(cairn_log::IntoArg::into_arg(spec.event_type.as_str()));
            args.push(cairn_log::IntoArg::into_arg(spec.version));
            let (t, v) = (2 * index + 1, 2 * index + 2);
            format!(
                "SELECT ${t} AS event_type, (SELECT MAX(event_version) FROM domain_events \
                 WHERE event_type = ${t} AND event_version <> 1 AND event_version > ${v}) AS newest"
            )
        })
        .collect();
    let sql = format!(
        "SELECT event_type, newest FROM ({}) AS probes WHERE newest IS NOT NULL",
        probes.join(" UNION ALL ")
    );
    let rows = conn.fetch_all(cairn_log::Sql::built(sql), args).await?;
    let mut newer = Vec::new();
    for row in &rows {
        let event_type: String = row.get("event_type")?;
        let newest: i64 = row.get("newest")?;
        if let Some(spec) = specs
            .iter()
            .find(|spec| spec.event_type.as_str() == event_type)
        {
            newer.push(NewerEvents {
                event_type,
                stored_version: u32::try_from(newest).unwrap_or(u32::MAX),
                current_version: spec.version,
            });
        }
    }
    Ok(newer)
}
