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
pub mod invitations;
pub mod mailing;
pub mod model;
pub mod projections;
pub mod queries;
pub mod reads;
pub mod tokens;

use cairn_log::Migration;

pub use commands::{
    BootstrapAccepted, BootstrapRequest, CommandContext, CommandError, Domain, DomainConfig,
    FieldError, InvitationAcceptance, InvitationStarted, InviteeRequest, OrganizationRequest,
    PersonRequest,
};
pub use projections::routes;

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
];
