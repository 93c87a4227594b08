//! The domain's integration tests, on both backends: onboarding, the commands at the
//! door, group commit, invitations' lifetimes, mail outages and mail servers that stall, and the bootstrap's versions. One binary, so that
//! helpers are shared rather than copied.

mod common;

mod at_the_door;
mod erasure;
mod group_commit;
mod invitation_ttl;
mod mail_outage;
mod mail_record_window;
mod mail_stall;
mod onboarding;
mod payload_versions;
mod people;
mod workflow_versions;
