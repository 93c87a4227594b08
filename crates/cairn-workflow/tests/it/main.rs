//! The workflow engine's integration tests, on both backends: one binary, so that
//! helpers are shared rather than copied.

mod engine;
mod panics;
mod pauses;
mod support;
mod versions;
