//! How many live subscriptions the server holds: at most so many in all, and at most
//! so many for one organization.
//!
//! A live subscription (Server-Sent Events or a WebSocket) holds its connection for as
//! long as it lasts, and the server never evicts it to make room. Bounding them below
//! the connection cap keeps connections for ordinary requests, whatever subscribers
//! do; bounding each organization keeps one tenant's subscribers from taking every
//! seat. Principals of no organization (platform administrators, operators, services)
//! share one such bound. Each principal's own allowance is kept apart
//! ([`crate::stream::Subscriptions`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_policy::Principal;
use cairn_types::OrgId;

use crate::problem::{Problem, ProblemCode};

/// The most live subscriptions open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// In all, on this server.
    pub total: usize,
    /// For one organization (or for all principals of no organization together).
    pub per_organization: usize,
}

impl Bounds {
    /// The bounds for a server that takes `max_connections`: a quarter of the
    /// connections (at least one) stay for ordinary requests, and one organization
    /// may hold a quarter of the subscriptions (at least one).
    ///
    /// ```
    /// use cairn_http::capacity::Bounds;
    ///
    /// assert_eq!(Bounds::for_connections(64), Bounds { total: 48, per_organization: 12 });
    /// assert_eq!(Bounds::for_connections(2), Bounds { total: 1, per_organization: 1 });
    /// ```
    pub fn for_connections(max_connections: usize) -> Bounds {
        Bounds::for_total(max_connections.saturating_sub((max_connections / 4).max(1)))
    }

    /// The bounds for `total` subscriptions in all: one organization may hold a
    /// quarter of them (at least one).
    pub fn for_total(total: usize) -> Bounds {
        Bounds {
            total,
            per_organization: (total / 4).max(1),
        }
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::for_connections(crate::server::default_max_connections())
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_organization: HashMap<Option<OrgId>, usize>,
}

/// The live subscriptions open, in all and by organization.
#[derive(Debug, Default)]
pub struct Capacity {
    counts: Arc<Mutex<Counts>>,
}

impl Capacity {
    /// Takes a seat for a subscription of `principal`, or says why there is none: its
    /// organization holds as many as it may (`429`), or the server does (`503`).
    pub(crate) fn seat(&self, principal: &Principal, bounds: Bounds) -> Result<Seat, Problem> {
        let organization = principal.org_id();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let held = counts
            .by_organization
            .get(&organization)
            .copied()
            .unwrap_or(0);
        if held >= bounds.per_organization {
            let whose = match organization {
                Some(org_id) => format!("organization {org_id}"),
                None => "principals of no organization".to_owned(),
            };
            return Err(Problem::new(
                ProblemCode::TooManyOrganizationSubscriptions,
                format!(
                    "{whose} already holds {} live subscriptions, the most one organization \
                     may hold on this server; close one, or follow several streams with one \
                     subscription",
                    bounds.per_organization
                ),
            ));
        }
        if counts.total >= bounds.total {
            return Err(Problem::new(
                ProblemCode::SubscriptionsAtCapacity,
                format!(
                    "the server holds {} live subscriptions, the most it takes (the rest of \
                     its connections are kept for requests); try again shortly",
                    bounds.total
                ),
            ));
        }
        counts.total += 1;
        *counts.by_organization.entry(organization).or_insert(0) += 1;
        Ok(Seat {
            counts: self.counts.clone(),
            organization,
        })
    }
}

/// A live subscription's seat, counted until it ends.
pub struct Seat {
    counts: Arc<Mutex<Counts>>,
    organization: Option<OrgId>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.by_organization.get_mut(&self.organization) {
            *held -= 1;
            if *held == 0 {
                counts.by_organization.remove(&self.organization);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn admin_of(org_id: OrgId) -> Principal {
        Principal::User {
            user_id: cairn_types::UserId::new_v7(),
            org_id,
            roles: BTreeSet::from([cairn_policy::Role::Admin]),
        }
    }

    #[test]
    fn seats_are_bounded_per_organization_and_in_all_and_given_back() {
        let capacity = Capacity::default();
        let bounds = Bounds {
            total: 3,
            per_organization: 2,
        };
        let (a, b, c) = (OrgId::new_v7(), OrgId::new_v7(), OrgId::new_v7());
        let first = capacity.seat(&admin_of(a), bounds).unwrap();
        let _second = capacity.seat(&admin_of(a), bounds).unwrap();
        let refused = capacity.seat(&admin_of(a), bounds).err().unwrap();
        assert_eq!(refused.code, ProblemCode::TooManyOrganizationSubscriptions);
        let _third = capacity.seat(&admin_of(b), bounds).unwrap();
        let refused = capacity.seat(&admin_of(c), bounds).err().unwrap();
        assert_eq!(refused.code, ProblemCode::SubscriptionsAtCapacity);
        drop(first);
        capacity.seat(&admin_of(c), bounds).unwrap();
    }
}
