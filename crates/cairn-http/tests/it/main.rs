//! The HTTP API's integration tests, on both backends: the routes, the authorization
//! matrix, health, the realtime feed, tracing, row-level security, the contracts, the
//! parsing of input, and the server's connections over real sockets. One binary, so
//! that helpers are shared rather than copied.

mod common;

mod access;
mod api;
mod connections;
mod contracts;
mod health;
mod input_properties;
mod matrix;
mod realtime;
mod rls;
mod subjects;
mod tenant_keys;
mod trace;
