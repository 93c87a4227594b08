//! Organization onboarding: organizations, users, invitations and roles, the commands
//! that change them, and the bootstrap saga.
//!
//! Commands ([`Domain`]) validate their input and check the current state under the
//! log's head lock, then only append events and start workflows, in one transaction.
//! Handlers ([`projections`]) are the only writers of the `organizations`, `users`,
//! `role_assignments` and `invitations` projections, with one explicit, audited
//! exception: the bootstrap's safety net deactivates an organization directly when
//! emitting the deactivation event has itself failed.
//!
//! Mail goes out from noreply@ the organization's registrable domain (by the Public
//! Suffix List). Invitation links carry a single-use token derived from a key in the
//! database; only the token's hash is ever stored.
//!
//! This crate knows nothing about HTTP.

pub mod bootstrap;
mod commands;
pub mod events;
pub mod import;
pub mod invitations;
pub mod mailing;
pub mod model;
pub mod probe;
pub mod projections;
pub mod queries;
pub mod reads;
pub mod search;
pub mod tokens;

use cairn_log::Migration;

pub use commands::{
    AddressCorrection, BootstrapAccepted, BootstrapRequest, CommandContext, CommandError,
    Disclosure, Domain, DomainConfig, ErasureReceipt, FieldError, FirstRun, InvitationAcceptance,
    InvitationStarted, InviteeRequest, OrganizationRequest, PersonRequest, PersonStanding,
    RETENTION_WORKFLOW, RestrictionReceipt, RolesRequest, SubjectStatus,
};

/// Every migration cairn needs up to this layer, in order: the log, the dispatcher,
/// the workflow engine, the domain.
pub fn all_migrations() -> Vec<&'static [Migration]> {
    vec![
        cairn_log::MIGRATIONS,
        cairn_dispatch::MIGRATIONS,
        cairn_workflow::MIGRATIONS,
        MIGRATIONS,
    ]
}

/// Registers the domain's routers, projections and views, and the probe's.
pub fn routes(builder: cairn_dispatch::RegistryBuilder) -> cairn_dispatch::RegistryBuilder {
    probe::routes(projections::routes(builder))
}

/// The full routing table: the administrative no-op routes, the workflow engine's
/// router, and the domain's routers.
pub fn registry() -> cairn_dispatch::Registry {
    try_registry().expect("the built-in registry is checked by the full_registry_is_valid test")
}

/// [`registry`], or the registration it refuses (a gap in an upcaster chain, say), for
/// start-up to report.
pub fn try_registry() -> Result<cairn_dispatch::Registry, cairn_dispatch::RegistryError> {
    let builder = cairn_dispatch::Registry::builder().admin_routes();
    routes(cairn_workflow::routes(builder)).build()
}

/// The domain's tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "domain/0001_onboarding",
        sqlite: include_str!("schema/sqlite/0001_onboarding.sql"),
        postgres: include_str!("schema/postgres/0001_onboarding.sql"),
    },
    Migration {
        id: "domain/0002_tenant_reads",
        sqlite: include_str!("schema/sqlite/0002_tenant_reads.sql"),
        postgres: include_str!("schema/postgres/0002_tenant_reads.sql"),
    },
    Migration {
        id: "domain/0003_probe",
        sqlite: include_str!("schema/sqlite/0003_probe.sql"),
        postgres: include_str!("schema/postgres/0003_probe.sql"),
    },
    Migration {
        id: "domain/0004_released_slugs",
        sqlite: include_str!("schema/sqlite/0004_released_slugs.sql"),
        postgres: include_str!("schema/postgres/0004_released_slugs.sql"),
    },
    Migration {
        id: "domain/0005_first_run",
        sqlite: include_str!("schema/sqlite/0005_first_run.sql"),
        postgres: include_str!("schema/postgres/0005_first_run.sql"),
    },
    Migration {
        id: "domain/0006_invited_by",
        sqlite: include_str!("schema/sqlite/0006_invited_by.sql"),
        postgres: include_str!("schema/postgres/0006_invited_by.sql"),
    },
    Migration {
        id: "domain/0007_import",
        sqlite: include_str!("schema/sqlite/0007_import.sql"),
        postgres: include_str!("schema/postgres/0007_import.sql"),
    },
    Migration {
        id: "domain/0008_erasure",
        sqlite: include_str!("schema/sqlite/0008_erasure.sql"),
        postgres: include_str!("schema/postgres/0008_erasure.sql"),
    },
    Migration {
        id: "domain/0009_restriction",
        sqlite: include_str!("schema/sqlite/0009_restriction.sql"),
        postgres: include_str!("schema/postgres/0009_restriction.sql"),
    },
    Migration {
        id: "domain/0010_search",
        sqlite: include_str!("schema/sqlite/0010_search.sql"),
        postgres: include_str!("schema/postgres/0010_search.sql"),
    },
    Migration {
        id: "domain/0011_refused",
        sqlite: include_str!("schema/sqlite/0011_refused.sql"),
        postgres: include_str!("schema/postgres/0011_refused.sql"),
    },
    Migration {
        id: "domain/0012_deactivation",
        sqlite: include_str!("schema/sqlite/0012_deactivation.sql"),
        postgres: include_str!("schema/postgres/0012_deactivation.sql"),
    },
    Migration {
        id: "domain/0013_users_by_org",
        sqlite: include_str!("schema/sqlite/0013_users_by_org.sql"),
        postgres: include_str!("schema/postgres/0013_users_by_org.sql"),
    },
];

#[cfg(test)]
mod tests {
    #[test]
    fn full_registry_is_valid() {
        let registry = super::registry();
        assert!(registry.specs().count() > 20);
    }
}
