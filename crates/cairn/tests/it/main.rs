//! The `cairn` binary's integration tests: the command line, `cairn serve`, the
//! console in a real browser, the README and the architecture, on both backends. One
//! binary, so that helpers are shared rather than copied.

mod common;

mod access;
mod architecture;
mod audit;
mod backup;
mod browser;
mod cli;
mod console;
mod console_trust;
mod hostile;
mod import;
mod mail_outage;
mod mail_stall;
mod mail_under_load;
mod personal_data;
mod readme;
mod serve;
mod settings;
mod upgrade;
mod workflows;
