//! The integration probe's own small domain: a `probe.pinged` event on the reserved
//! probe tenant ([`OrgId::PROBE`]), its handler and projection (`probe_pings`), and a
//! one-step workflow. The probe (in the HTTP layer) sends the command through the
//! real router and checks each hop: the request, the event, the projection, the
//! realtime delivery, the workflow step.
//!
//! The command reports its event's processing outcome instead of failing on it (every
//! other command rolls back when a handler fails): the probe must tell a broken
//! projection apart from a broken request.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use cairn_dispatch::{
    EventPayload, Handler, HandlerError, ProjectionTable, Projections, RegistryBuilder, payload,
};
use cairn_log::{Conn, Outcome, RecordedEvent, args};
use cairn_types::{CorrelationId, Position, StreamId, WorkflowId};
use cairn_workflow::{Decision, History, StepCall, StepContext, StepError, Workflow};

/// The probe's stream type.
pub const STREAM_TYPE: &str = "probe";

/// Why neither the probe's handlers nor its workflow can be paused: a paused hop
/// would make the probe report the chain broken when it is not.
const NOT_PAUSABLE: &str = "the integration probe checks that the chain works, and a paused hop of its own would report a break that is not there";
/// The probe's workflow kind.
pub const WORKFLOW: &str = "probe";

/// The probe sent its synthetic command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbePinged {
    pub sent_at: DateTime<Utc>,
}

impl EventPayload for ProbePinged {
    const EVENT_TYPE: &'static str = "probe.pinged";
    const DESCRIPTION: &'static str =
        "The integration probe's synthetic command, on the probe's reserved tenant.";
}

struct OnPinged;

#[async_trait]
impl Handler for OnPinged {
    async fn handle(
        &self,
        event: &RecordedEvent,
        projections: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let pinged: ProbePinged = payload(event)?;
        projections
            .execute(
                "INSERT INTO probe_pings (id, sent_at, recorded_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET sent_at = excluded.sent_at, recorded_at = excluded.recorded_at",
                args![event.stream_id, pinged.sent_at, event.created_at],
            )
            .await?;
        Ok(())
    }
}

/// Registers the probe's router and projection.
pub fn routes(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .router(STREAM_TYPE, |r| {
            r.event::<ProbePinged>(OnPinged).not_pausable(NOT_PAUSABLE)
        })
        .projection(ProjectionTable {
            name: "probe_pings",
            key: &["id"],
        })
}

/// When the projection recorded a ping, if it did.
pub async fn recorded(
    conn: &mut Conn<'_>,
    ping_id: StreamId,
) -> Result<Option<DateTime<Utc>>, cairn_log::DbError> {
    let row = conn
        .fetch_optional(
            "SELECT recorded_at FROM probe_pings WHERE id = $1",
            args![ping_id],
        )
        .await?;
    row.map(|row| row.get::<DateTime<Utc>>("recorded_at"))
        .transpose()
}

/// What the probe's command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Ping {
    pub ping_id: StreamId,
    /// The `probe.pinged` event's position.
    pub position: Position,
    /// The probe workflow the command started.
    pub workflow_id: WorkflowId,
    pub correlation_id: CorrelationId,
    /// What the handler did with the event.
    pub outcome: Outcome,
}

/// The probe's workflow: one step, which only answers.
pub struct Echo;

#[async_trait]
impl Workflow for Echo {
    fn kind(&self) -> &'static str {
        WORKFLOW
    }

    fn not_pausable(&self) -> Option<&'static str> {
        Some(NOT_PAUSABLE)
    }

    fn decide(&self, _input: &Value, history: &History) -> Result<Decision, String> {
        if let Some(failed) = history.failure() {
            return Ok(Decision::Fail(format!("step {} failed", failed.name)));
        }
        Ok(match history.result("echo") {
            Some(result) => Decision::Complete(result.clone()),
            None => Decision::Run(StepCall::new("echo")),
        })
    }

    async fn perform(
        &self,
        input: &Value,
        _call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        Ok(json!({ "ping_id": input["ping_id"], "echoed_at": ctx.now() }))
    }
}
