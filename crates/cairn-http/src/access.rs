//! Reads of people's data, put on record in the access log (see
//! [`cairn_log::AccessRecord`]): one record per response, console page or feed batch
//! that returned people's names or email addresses, naming what was read and the
//! people's user ids. A list is one record, however long. Recording waits only for
//! room in the access log's queue, never for a commit.

use cairn_log::{AccessRecord, AccessVia};
use cairn_policy::Principal;
use cairn_types::{CorrelationId, OrgId, UserId};

use crate::AppState;
use crate::context::Ctx;

/// Puts a read on record when it returned someone's data: `subjects` is `None` when
/// it returned nobody's.
pub(crate) async fn record(
    state: &AppState,
    principal: &Principal,
    correlation_id: CorrelationId,
    via: AccessVia,
    resource: String,
    org_id: Option<OrgId>,
    subjects: Option<Vec<UserId>>,
) {
    let Some(subjects) = subjects else {
        return;
    };
    let record =
        AccessRecord::now(principal.who(), via, correlation_id, resource, subjects).org(org_id);
    state.db().record_access(record).await;
}

/// Puts an API response on record (see [`record`]).
pub(crate) async fn record_api(
    state: &AppState,
    ctx: &Ctx,
    resource: String,
    org_id: Option<OrgId>,
    subjects: Option<Vec<UserId>>,
) {
    record(
        state,
        &ctx.principal,
        ctx.correlation_id,
        AccessVia::Api,
        resource,
        org_id,
        subjects,
    )
    .await;
}

/// The subjects of a list: `None` when it is empty.
pub(crate) fn of_list<T>(items: &[T], id: impl Fn(&T) -> UserId) -> Option<Vec<UserId>> {
    (!items.is_empty()).then(|| items.iter().map(id).collect())
}
