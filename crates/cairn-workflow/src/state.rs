//! Reading workflow state: a run, its steps, lists of runs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use cairn_log::{Arg, Conn, DbError, IntoArg, Row, Sql, args};
use cairn_types::{CorrelationId, OrgId, WorkflowId};

use crate::definition::{History, StepKind, StepRecord, StepStatus};

/// Where a run stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Compensating,
    Completed,
    /// Failed, and every compensation ran.
    Failed,
    /// A compensation failed: an operator must look.
    CompensationFailed,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Running,
        RunStatus::Compensating,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::CompensationFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Compensating => "compensating",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::CompensationFailed => "compensation_failed",
        }
    }

    /// Parses a status name.
    pub fn parse(text: &str) -> Result<Self, String> {
        RunStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "{text:?} is not a workflow status; the statuses are {}",
                    names.join(", ")
                )
            })
    }

    /// Whether the run will do nothing more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::CompensationFailed
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a paused run's pause covers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PauseScope {
    /// This run.
    Run,
    /// Every run of its kind.
    Kind,
}

/// Why a run does not move: who paused it (or its kind), why, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Pause {
    pub scope: PauseScope,
    /// The actor of the pause (`user:…`, `service:…`; `service:workflow-engine` when a
    /// step's attempts ran out).
    pub paused_by: String,
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// One run, as its projection holds it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Run {
    pub id: WorkflowId,
    pub kind: String,
    /// The version of its kind's definition the run started on, and finishes on.
    pub definition_version: u32,
    pub status: RunStatus,
    pub input: Value,
    pub output: Option<Value>,
    pub failure: Option<String>,
    pub correlation_id: CorrelationId,
    pub org_id: Option<OrgId>,
    pub actor: Option<String>,
    pub parent_id: Option<WorkflowId>,
    pub current_step: Option<String>,
    /// The version of the run's event stream.
    pub version: i64,
    /// When the engine should look at it next; `None` once finished.
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set while the run, or its kind, is paused: the engine runs none of its steps
    /// (its timers stay due) until it is resumed.
    pub paused: Option<Pause>,
}

impl Run {
    /// Whether the engine may work on it now.
    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }
}

/// A run with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RunWithSteps {
    #[serde(flatten)]
    pub run: Run,
    pub steps: Vec<StepRecord>,
}

/// A run with its own pause and its kind's.
const RUN_SELECT: &str = "SELECT r.id, r.kind, r.definition_version, r.status, r.input, r.output, r.failure, \
     r.correlation_id, r.org_id, r.actor, r.parent_id, r.current_step, r.version, r.next_run_at, \
     r.created_at, r.updated_at, r.paused_at, r.paused_by, r.pause_reason, \
     k.since AS kind_paused_at, k.paused_by AS kind_paused_by, k.reason AS kind_pause_reason \
     FROM workflow_runs r LEFT JOIN workflow_kind_pauses k ON k.kind = r.kind";

fn decode_error(column: &str, message: String) -> DbError {
    DbError::decode(column, message)
}

fn run_from_row(row: &Row) -> Result<Run, DbError> {
    let status: String = row.get("status")?;
    Ok(Run {
        id: row.get("id")?,
        kind: row.get("kind")?,
        definition_version: u32::try_from(row.get::<i64>("definition_version")?)
            .map_err(|e| decode_error("definition_version", e.to_string()))?,
        status: RunStatus::parse(&status).map_err(|e| decode_error("status", e))?,
        input: row.get_json("input")?,
        output: row.get_json_opt("output")?,
        failure: row.get("failure")?,
        correlation_id: row.get("correlation_id")?,
        org_id: row.get("org_id")?,
        actor: row.get("actor")?,
        parent_id: row.get("parent_id")?,
        current_step: row.get("current_step")?,
        version: row.get("version")?,
        next_run_at: row.get("next_run_at")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
        paused: pause_from_row(row)?,
    })
}

fn pause_from_row(row: &Row) -> Result<Option<Pause>, DbError> {
    let own = (
        row.get::<Option<DateTime<Utc>>>("paused_at")?,
        row.get::<Option<String>>("paused_by")?,
        row.get::<Option<String>>("pause_reason")?,
    );
    if let (Some(since), Some(paused_by), Some(reason)) = own {
        return Ok(Some(Pause {
            scope: PauseScope::Run,
            paused_by,
            reason,
            since,
        }));
    }
    let kind = (
        row.get::<Option<DateTime<Utc>>>("kind_paused_at")?,
        row.get::<Option<String>>("kind_paused_by")?,
        row.get::<Option<String>>("kind_pause_reason")?,
    );
    Ok(match kind {
        (Some(since), Some(paused_by), Some(reason)) => Some(Pause {
            scope: PauseScope::Kind,
            paused_by,
            reason,
            since,
        }),
        _ => None,
    })
}

fn step_from_row(row: &Row) -> Result<StepRecord, DbError> {
    let kind: String = row.get("kind")?;
    let status: String = row.get("status")?;
    let kind: StepKind = serde_json::from_value(Value::String(kind))
        .map_err(|e| decode_error("kind", e.to_string()))?;
    let status: StepStatus = serde_json::from_value(Value::String(status))
        .map_err(|e| decode_error("status", e.to_string()))?;
    Ok(StepRecord {
        name: row.get("name")?,
        seq: row.get("seq")?,
        kind,
        status,
        attempts: u32::try_from(row.get::<i64>("attempts")?).unwrap_or(u32::MAX),
        result: row.get_json_opt("result")?,
        last_error: row.get("last_error")?,
        compensable: row.get("compensable")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
        wake_at: row.get("wake_at")?,
    })
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub kind: Option<String>,
    pub org_id: Option<OrgId>,
    /// Leave out the runs of this organization (the probe's, in cross-tenant lists).
    pub exclude_org: Option<OrgId>,
    pub correlation_id: Option<CorrelationId>,
    /// Only runs whose id sorts after this one (ids are time-ordered): a cursor.
    pub after: Option<WorkflowId>,
    /// Only runs that are paused (on their own or by their kind).
    pub paused: bool,
    /// Only running runs asleep until later than this time (`Some((true, now))`: on
    /// a timer or waiting to try a step again), or only those due by then
    /// (`Some((false, now))`: work in progress).
    pub asleep: Option<(bool, DateTime<Utc>)>,
    /// Newest first: `before` pages on to older runs, `after` back to newer ones.
    pub newest_first: bool,
    /// Only runs whose id sorts before this one: the cursor of newest-first pages.
    pub before: Option<WorkflowId>,
    pub limit: Option<u32>,
}

/// How many runs a list would hold, by status, with the running ones split into those
/// asleep (on a timer, or waiting to try a step again) and those at work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RunCounts {
    /// Each status with its count, in [`RunStatus::ALL`]'s order, those with none
    /// left out.
    pub by_status: Vec<(String, i64)>,
    /// Of the running runs, those asleep until later.
    pub asleep: i64,
}

/// How many runs of `org_id` (or of every organization but `exclude_org`) there are,
/// by status; running ones asleep at `now` counted apart.
pub async fn counts(
    conn: &mut Conn<'_>,
    org_id: Option<OrgId>,
    exclude_org: Option<OrgId>,
    now: DateTime<Utc>,
) -> Result<RunCounts, DbError> {
    let mut args: Vec<Arg> = vec![now.into_arg()];
    let mut sql = "SELECT status, COUNT(*) AS n, \
         SUM(CASE WHEN next_run_at IS NOT NULL AND next_run_at > $1 THEN 1 ELSE 0 END) AS asleep \
         FROM workflow_runs WHERE 1 = 1"
        .to_owned();
    if let Some(org) = org_id {
        args.push(org.into_arg());
        sql.push_str(&format!(" AND org_id = ${}", args.len()));
    }
    if let Some(excluded) = exclude_org {
        args.push(excluded.into_arg());
        sql.push_str(&format!(
            " AND (org_id IS NULL OR org_id <> ${})",
            args.len()
        ));
    }
    sql.push_str(" GROUP BY status");
    let rows = conn.fetch_all(Sql::built(sql), args).await?;
    let mut counts = RunCounts::default();
    let mut found = Vec::new();
    for row in rows {
        let status: String = row.get("status")?;
        if status == RunStatus::Running.as_str() {
            counts.asleep = row.get("asleep")?;
        }
        found.push((status, row.get::<i64>("n")?));
    }
    for status in RunStatus::ALL {
        if let Some(at) = found.iter().position(|(s, _)| s == status.as_str()) {
            counts.by_status.push(found.swap_remove(at));
        }
    }
    Ok(counts)
}

/// One run.
pub async fn load_run(conn: &mut Conn<'_>, id: WorkflowId) -> Result<Option<Run>, DbError> {
    let sql = Sql::built(format!("{RUN_SELECT} WHERE r.id = $1"));
    conn.fetch_optional(sql, args![id])
        .await?
        .as_ref()
        .map(run_from_row)
        .transpose()
}

/// A run's steps, in the order they first appeared.
pub async fn load_history(conn: &mut Conn<'_>, id: WorkflowId) -> Result<History, DbError> {
    let rows = conn
            .fetch_all(
                "SELECT name, seq, kind, status, attempts, result, last_error, compensable, started_at, \
                 finished_at, wake_at FROM workflow_steps WHERE run_id = $1 ORDER BY seq",
                args![id],
            )
            .await?;
    Ok(History {
        steps: rows.iter().map(step_from_row).collect::<Result<_, _>>()?,
    })
}

/// A run with its steps.
pub async fn load(conn: &mut Conn<'_>, id: WorkflowId) -> Result<Option<RunWithSteps>, DbError> {
    let Some(run) = load_run(conn, id).await? else {
        return Ok(None);
    };
    let steps = load_history(conn, id).await?.steps;
    Ok(Some(RunWithSteps { run, steps }))
}

/// Runs matching a filter, oldest first.
pub async fn list(conn: &mut Conn<'_>, filter: &RunFilter) -> Result<Vec<Run>, DbError> {
    let mut sql = format!("{RUN_SELECT} WHERE 1 = 1");
    let mut args: Vec<Arg> = Vec::new();
    let mut condition = |clause: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&format!(" AND {clause} ${}", args.len()));
    };
    if let Some(status) = filter.status {
        condition("r.status =", status.as_str().into_arg());
    }
    if let Some(kind) = &filter.kind {
        condition("r.kind =", kind.clone().into_arg());
    }
    if let Some(org_id) = filter.org_id {
        condition("r.org_id =", org_id.into_arg());
    }
    if let Some(correlation_id) = filter.correlation_id {
        condition("r.correlation_id =", correlation_id.into_arg());
    }
    if let Some(after) = filter.after {
        condition("r.id >", after.into_arg());
    }
    if let Some(before) = filter.before {
        condition("r.id <", before.into_arg());
    }
    if let Some((asleep, now)) = filter.asleep {
        args_push_asleep(&mut sql, &mut args, asleep, now);
    }
    if let Some(excluded) = filter.exclude_org {
        args.push(excluded.into_arg());
        sql.push_str(&format!(
            " AND (r.org_id IS NULL OR r.org_id <> ${})",
            args.len()
        ));
    }
    if filter.paused {
        sql.push_str(" AND (r.paused_at IS NOT NULL OR k.kind IS NOT NULL)");
    }
    args.push(i64::from(filter.limit.unwrap_or(100)).into_arg());
    // Newest first, except on the way back to newer runs (`after`), which reads the
    // nearest ones in ascending order and turns them round.
    let descending = filter.newest_first && filter.after.is_none();
    let order = if descending { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY r.id {order} LIMIT ${}", args.len()));
    let rows = conn.fetch_all(Sql::built(sql), args).await?;
    let mut runs = rows
        .iter()
        .map(run_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if filter.newest_first && !descending {
        runs.reverse();
    }
    Ok(runs)
}

/// `AND` the running runs asleep at `now` (or, with `asleep` false, those due).
fn args_push_asleep(sql: &mut String, args: &mut Vec<Arg>, asleep: bool, now: DateTime<Utc>) {
    args.push(now.into_arg());
    let n = args.len();
    sql.push_str(&format!(
        " AND r.status = '{}'",
        RunStatus::Running.as_str()
    ));
    if asleep {
        sql.push_str(&format!(
            " AND r.next_run_at IS NOT NULL AND r.next_run_at > ${n}"
        ));
    } else {
        sql.push_str(&format!(
            " AND (r.next_run_at IS NULL OR r.next_run_at <= ${n})"
        ));
    }
}
