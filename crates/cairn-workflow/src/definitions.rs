//! The workflow definitions an engine has, by kind and version, and the checks that
//! runs in the database can be finished by them.
//!
//! A run records the version of its kind's definition when it starts
//! (`workflow.started`), and only a definition of that kind at that version drives it:
//! an engine claims no run whose definition it lacks. So that no run is stranded, a
//! process that drives runs first asks [`Engine::check_definitions`], which refuses
//! while any unfinished run is of a version (or kind) the engine does not have.
//! [`Engine::check_runs`] goes further: it replays each unfinished run's recorded
//! steps through its definition ([`crate::fit`]) and reports those that no longer fit.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use cairn_log::{Conn, DbError, args};
use cairn_types::WorkflowId;

use crate::definition::Workflow;
use crate::engine::{Engine, EngineError};
use crate::fit::{self, Misfit};
use crate::state::{RunFilter, RunStatus};

/// An engine's workflows, by kind, then version.
#[derive(Default)]
pub(crate) struct Definitions {
    by_kind: BTreeMap<&'static str, BTreeMap<u32, Arc<dyn Workflow>>>,
}

impl Definitions {
    /// The definitions of `workflows`; of two with the same kind and version, the last.
    pub(crate) fn new(workflows: Vec<Arc<dyn Workflow>>) -> Self {
        let mut by_kind: BTreeMap<&'static str, BTreeMap<u32, Arc<dyn Workflow>>> = BTreeMap::new();
        for workflow in workflows {
            by_kind
                .entry(workflow.kind())
                .or_default()
                .insert(workflow.version(), workflow);
        }
        Self { by_kind }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }

    /// The definition of `kind` at `version`.
    pub(crate) fn get(&self, kind: &str, version: u32) -> Option<&Arc<dyn Workflow>> {
        self.by_kind.get(kind)?.get(&version)
    }

    /// The latest definition of `kind`: the one new runs start on.
    pub(crate) fn latest(&self, kind: &str) -> Option<&Arc<dyn Workflow>> {
        Some(self.by_kind.get(kind)?.last_key_value()?.1)
    }

    /// The version a new run of `kind` starts on: the latest this engine has, or 1 for
    /// a kind it does not run (another process may).
    pub(crate) fn start_version(&self, kind: &str) -> u32 {
        self.latest(kind).map_or(1, |workflow| workflow.version())
    }

    /// The versions of `kind` this engine has, oldest first.
    pub(crate) fn versions(&self, kind: &str) -> Vec<u32> {
        self.by_kind
            .get(kind)
            .map(|versions| versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The kinds, in order.
    pub(crate) fn kinds(&self) -> Vec<&'static str> {
        self.by_kind.keys().copied().collect()
    }

    /// Every kind with every version.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, u32)> {
        self.by_kind
            .iter()
            .flat_map(|(kind, versions)| versions.keys().map(move |version| (*kind, *version)))
            .collect()
    }
}

/// The versions an engine has of a kind, for people: "v1 and v2", or "no
/// organization_bootstrap" when it has none.
pub(crate) fn versions_text(kind: &str, versions: &[u32]) -> String {
    let names: Vec<String> = versions
        .iter()
        .map(|version| format!("v{version}"))
        .collect();
    match names.as_slice() {
        [] => format!("no {kind}"),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// An unfinished run that does not fit its definition, as `cairn workflows check`
/// reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunCheck {
    pub run_id: WorkflowId,
    pub kind: String,
    pub version: u32,
    pub status: RunStatus,
    /// Why the run's history no longer fits its definition.
    pub misfit: Misfit,
}

/// What [`Engine::check_runs`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Unfinished runs checked.
    pub checked: u64,
    /// The runs that do not fit, oldest first.
    pub misfits: Vec<RunCheck>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.misfits.is_empty()
    }
}

/// How many unfinished runs are of one kind at one version.
struct InFlight {
    kind: String,
    version: u32,
    n_runs: u64,
}

/// The (kind, version) pairs of the unfinished runs, with how many runs each has.
async fn in_flight(conn: &mut Conn<'_>) -> Result<Vec<InFlight>, DbError> {
    let rows = conn
        .fetch_all(
            "SELECT kind, definition_version, COUNT(*) AS n_runs FROM workflow_runs \
             WHERE status IN ('running', 'compensating') \
             GROUP BY kind, definition_version ORDER BY kind, definition_version",
            args![],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(InFlight {
                kind: row.get("kind")?,
                version: u32::try_from(row.get::<i64>("definition_version")?)
                    .map_err(|e| DbError::decode("definition_version", e.to_string()))?,
                n_runs: u64::try_from(row.get::<i64>("n_runs")?).unwrap_or(0),
            })
        })
        .collect()
}

impl Engine {
    /// Refuses, with [`EngineError::MissingDefinition`], while an unfinished run
    /// (running or compensating, paused or not) is of a kind and version this engine
    /// does not have: such a run would never be claimed, and so never finish. Call it
    /// before driving runs, so that a build that lost a version a run still needs says
    /// so at once instead of stranding the run.
    ///
    /// Every unfinished run counts, whatever its kind: a kind this engine does not run
    /// at all strands its runs just the same.
    pub async fn check_definitions(&self) -> Result<(), EngineError> {
        let mut reader = self.store().db().reader().await?;
        let mut conn = reader.conn();
        for group in in_flight(&mut conn).await? {
            let definitions = &self.inner.workflows;
            if definitions.get(&group.kind, group.version).is_some() {
                continue;
            }
            let row = conn
                .fetch_optional(
                    "SELECT id FROM workflow_runs WHERE kind = $1 AND definition_version = $2 \
                     AND status IN ('running', 'compensating') ORDER BY id LIMIT 1",
                    args![group.kind.as_str(), group.version],
                )
                .await?;
            let Some(row) = row else {
                // Finished since the count: look again.
                continue;
            };
            return Err(EngineError::MissingDefinition {
                run_id: row.get("id")?,
                have: definitions.versions(&group.kind),
                kind: group.kind,
                version: group.version,
                n_runs: group.n_runs,
            });
        }
        Ok(())
    }

    /// Replays the recorded steps of every unfinished run through its definition and
    /// reports the runs that no longer fit (see [`crate::fit::check_fit`]): a run of a
    /// version this engine lacks, a decision that names another step than the one
    /// recorded next, a decide that fails.
    pub async fn check_runs(&self) -> Result<CheckReport, EngineError> {
        let mut report = CheckReport::default();
        let mut reader = self.store().db().reader().await?;
        let mut conn = reader.conn();
        for status in [RunStatus::Running, RunStatus::Compensating] {
            let mut after = None;
            loop {
                let filter = RunFilter {
                    status: Some(status),
                    after,
                    limit: Some(500),
                    ..RunFilter::default()
                };
                let runs = crate::state::list(&mut conn, &filter).await?;
                let Some(last) = runs.last() else {
                    break;
                };
                after = Some(last.id);
                for run in runs {
                    report.checked += 1;
                    let fitted = match self.inner.workflows.get(&run.kind, run.definition_version) {
                        None => Err(Misfit::MissingDefinition {
                            kind: run.kind.clone(),
                            version: run.definition_version,
                            have: self.inner.workflows.versions(&run.kind),
                        }),
                        Some(workflow) => {
                            let history = crate::state::load_history(&mut conn, run.id).await?;
                            fit::check_fit(workflow.as_ref(), &run, &history)
                        }
                    };
                    if let Err(misfit) = fitted {
                        report.misfits.push(RunCheck {
                            run_id: run.id,
                            kind: run.kind,
                            version: run.definition_version,
                            status: run.status,
                            misfit,
                        });
                    }
                }
            }
        }
        report.misfits.sort_by_key(|check| check.run_id);
        Ok(report)
    }

    /// The versions of `kind` this engine has, oldest first.
    pub fn versions(&self, kind: &str) -> Vec<u32> {
        self.inner.workflows.versions(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::versions_text;

    #[test]
    fn versions_read_as_a_list() {
        let table: [(&[u32], &str); 4] = [
            (&[], "no kind"),
            (&[2], "v2"),
            (&[1, 2], "v1 and v2"),
            (&[1, 2, 3], "v1, v2 and v3"),
        ];
        for (versions, expect) in table {
            assert_eq!(versions_text("kind", versions), expect);
        }
    }
}
