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

/// One run, as its projection holds it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Run {
    pub id: WorkflowId,
    pub kind: String,
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
}

/// A run with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RunWithSteps {
    #[serde(flatten)]
    pub run: Run,
    pub steps: Vec<StepRecord>,
}

const RUN_COLUMNS: &str = "id, kind, status, input, output, failure, correlation_id, org_id, actor, parent_id, \
     current_step, version, next_run_at, created_at, updated_at";

fn decode_error(column: &str, message: String) -> DbError {
    DbError::decode(column, message)
}

fn run_from_row(row: &Row) -> Result<Run, DbError> {
    let status: String = row.get("status")?;
    Ok(Run {
        id: row.get("id")?,
        kind: row.get("kind")?,
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
    pub limit: Option<u32>,
}

/// One run.
pub async fn load_run(conn: &mut Conn<'_>, id: WorkflowId) -> Result<Option<Run>, DbError> {
    let sql = Sql::built(format!(
        "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE id = $1"
    ));
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
    let mut sql = format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE 1 = 1");
    let mut args: Vec<Arg> = Vec::new();
    let mut condition = |clause: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&format!(" AND {clause} ${}", args.len()));
    };
    if let Some(status) = filter.status {
        condition("status =", status.as_str().into_arg());
    }
    if let Some(kind) = &filter.kind {
        condition("kind =", kind.clone().into_arg());
    }
    if let Some(org_id) = filter.org_id {
        condition("org_id =", org_id.into_arg());
    }
    if let Some(correlation_id) = filter.correlation_id {
        condition("correlation_id =", correlation_id.into_arg());
    }
    if let Some(after) = filter.after {
        condition("id >", after.into_arg());
    }
    if let Some(excluded) = filter.exclude_org {
        args.push(excluded.into_arg());
        sql.push_str(&format!(
            " AND (org_id IS NULL OR org_id <> ${})",
            args.len()
        ));
    }
    args.push(i64::from(filter.limit.unwrap_or(100)).into_arg());
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    let rows = conn.fetch_all(Sql::built(sql), args).await?;
    rows.iter().map(run_from_row).collect()
}
