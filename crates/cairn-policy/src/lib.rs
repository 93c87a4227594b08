//! Who may do what: principals, the one authorization policy, and bearer tokens.
//!
//! Every access in cairn goes through [`authorize`]: HTTP reads and commands, event
//! listing, retries, realtime subscriptions and each event delivered on them, and the
//! command line (as an [`Principal::Operator`]). It returns a [`Grant`] (the only
//! proof of a decision, which nothing else can construct) or a [`Denial`] that says
//! why. A grant carries the [`Tenancy`] its reads are confined to.
//!
//! Principals come in kinds designed in from the start: users (bound to one
//! organization, with roles), service accounts (with explicitly granted cross-tenant
//! scopes), platform administrators, and operators at the command line.
//!
//! This crate decides; it performs no IO and knows nothing about HTTP.

mod decide;
mod principal;
mod token;

pub use cairn_types::Tenancy;
pub use decide::{Action, Denial, Grant, authorize};
pub use principal::{Principal, Role, Scope, UnknownScope, reserved_service_name};
pub use token::{Authenticator, Claims, KeySource, TokenError, TokenKind, Verified, mint};
