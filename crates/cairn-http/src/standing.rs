//! Whether the person behind a token may still use it: a token is honoured only while
//! its person is neither deactivated, restricted nor erased, and only for the roles
//! they still hold (a role taken away stops working at once; a role given works with
//! their next token). A token for someone cairn does not hold (a person of an identity
//! provider who was never onboarded here) is honoured as it is.
//!
//! A person's standing is read at most once a second per process: a change made in
//! another process takes effect here within that second, one made through this
//! process at once ([`Standings::forget`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_domain::reads::{self, Standing};
use cairn_policy::Principal;
use cairn_types::UserId;

use crate::AppState;
use crate::problem::{Problem, ProblemCode};

/// How long a person's standing is kept before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// The most people whose standing is kept at once; past it, the cache starts again.
const MOST_KEPT: usize = 10_000;

/// The standings this process read lately.
#[derive(Debug, Default)]
pub(crate) struct Standings {
    kept: Mutex<HashMap<UserId, (Instant, Option<Standing>)>>,
}

impl Standings {
    /// Forgets what was read of `user_id`: their next request reads it again.
    pub(crate) fn forget(&self, user_id: UserId) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.remove(&user_id);
        }
    }

    fn fresh(&self, user_id: UserId) -> Option<Option<Standing>> {
        let kept = self.kept.lock().ok()?;
        kept.get(&user_id)
            .filter(|(read_at, _)| read_at.elapsed() < FRESH_FOR)
            .map(|(_, standing)| standing.clone())
    }

    fn keep(&self, user_id: UserId, standing: Option<Standing>) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= MOST_KEPT {
                kept.clear();
            }
            kept.insert(user_id, (Instant::now(), standing));
        }
    }
}

/// `principal` as far as it is honoured now, or why its token no longer works.
pub(crate) async fn honoured(state: &AppState, principal: Principal) -> Result<Principal, Problem> {
    let Principal::User {
        user_id,
        org_id,
        roles,
    } = principal
    else {
        return Ok(principal);
    };
    let standing =
        match state.standings().fresh(user_id) {
            Some(standing) => standing,
            None => {
                let standing = reads::standing(state.db(), user_id).await.map_err(|error| {
                tracing::error!(%error, %user_id, "cannot read where a token's person stands");
                Problem::new(
                    ProblemCode::Unavailable,
                    "cannot check the token's person now; try again",
                )
            })?;
                state.standings().keep(user_id, standing.clone());
                standing
            }
        };
    let Some(standing) = standing else {
        return Ok(Principal::User {
            user_id,
            org_id,
            roles,
        });
    };
    if standing.org_id != org_id {
        return Err(Problem::new(
            ProblemCode::InvalidToken,
            format!("the token names user {user_id} in an organization they do not belong to"),
        ));
    }
    if let Some(why) = standing.withdrawn {
        let until = if why == "deactivated" {
            " until they are reactivated"
        } else {
            ""
        };
        return Err(Problem::new(
            ProblemCode::InvalidToken,
            format!("user {user_id} is {why}: their tokens do not work{until}"),
        ));
    }
    let roles = if standing.joined {
        roles
            .into_iter()
            .filter(|role| standing.roles.contains(role))
            .collect()
    } else {
        roles
    };
    Ok(Principal::User {
        user_id,
        org_id,
        roles,
    })
}
