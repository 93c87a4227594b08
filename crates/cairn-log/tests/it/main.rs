//! The event log's integration tests, on both backends: appends, the hash chain and
//! its audit, the writer. One binary, so that helpers are shared rather than copied.

mod common;

mod access;
mod audit;
mod hash_properties;
mod log;
mod scrub;
mod writer;
