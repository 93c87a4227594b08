//! `cairn bench …`: measurements, never tests.
//!
//! Every benchmark runs in a place of its own on the given backend, removed afterwards:
//! a temporary SQLite file beside the configured one (same disk), or a temporary schema
//! in the configured PostgreSQL database.

mod append;
mod erase;
mod http;
mod import;
mod realtime;
mod workflow;

pub use append::append;
pub use erase::erase;
pub use http::http;
pub use import::import;
pub use realtime::realtime;
pub use workflow::workflow;

use anyhow::Context as _;

use cairn_log::{Backend, Db, DbOptions};

use crate::app;

/// The time each scenario runs, checked.
pub(super) fn scenario_duration(
    args: &crate::cli::BenchAppendArgs,
) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must be above 0 and at most 600, not {}",
        args.seconds
    );
    Ok(std::time::Duration::from_secs_f64(args.seconds))
}

/// The benchmark's title line, for people (nothing with `--json`).
pub(super) fn announce(name: &str, described: &str, duration: std::time::Duration, json: bool) {
    if !json {
        outln!(
            "{} {name} · {described} · {} per scenario",
            console::style("cairn bench").bold(),
            crate::ui::duration(duration)
        );
    }
}

/// Where the benchmark runs, and how to clean up after it.
pub(super) enum Place {
    Sqlite { dir: tempfile::TempDir },
    Postgres { url: String, schema: String },
}

impl Place {
    /// Opens a place of its own on the backend `url` names, its log writer in `mode`
    /// (the backend's default without one).
    pub(super) async fn open(
        url: &str,
        mode: Option<cairn_log::WriteMode>,
    ) -> anyhow::Result<(Place, Db, String)> {
        let writer = |backend| {
            mode.map(|mode| cairn_log::WriterConfig {
                mode,
                ..cairn_log::WriterConfig::for_backend(backend)
            })
        };
        let probe = Db::connect(url, &DbOptions::default()).await?;
        let backend = probe.backend();
        probe.close().await;
        match backend {
            Backend::Sqlite => {
                let configured = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let parent = std::path::Path::new(configured)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or_else(|| std::path::Path::new("."));
                let dir = tempfile::Builder::new()
                    .prefix("bench-")
                    .tempdir_in(parent)
                    .with_context(|| {
                        format!("creating a temporary directory in {}", parent.display())
                    })?;
                let bench_url = format!("sqlite://{}", dir.path().join("bench.db").display());
                let options = DbOptions {
                    writer: writer(Backend::Sqlite),
                    ..DbOptions::default()
                };
                let db = app::open_db(&bench_url, &options).await?;
                let described = format!("sqlite, a temporary database in {}", parent.display());
                Ok((Place::Sqlite { dir }, db, described))
            }
            Backend::Postgres => {
                let schema = format!(
                    "cairn_bench_{}",
                    &uuid::Uuid::now_v7().simple().to_string()[20..]
                );
                let options = DbOptions {
                    max_connections: 12,
                    schema: Some(schema.clone()),
                    writer: writer(Backend::Postgres),
                };
                let db = app::open_db(url, &options).await?;
                let described = format!(
                    "postgres, a temporary schema {schema} in {}",
                    cairn_log::redact_url(url)
                );
                Ok((
                    Place::Postgres {
                        url: url.to_owned(),
                        schema,
                    },
                    db,
                    described,
                ))
            }
        }
    }

    /// The database URL another process uses to work in this place.
    pub(super) fn url_for_process(&self) -> String {
        match self {
            Place::Sqlite { dir } => format!("sqlite://{}", dir.path().join("bench.db").display()),
            Place::Postgres { url, schema } => {
                // The schema travels as a startup option, as `search_path`.
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}options=-c%20search_path%3D{schema}")
            }
        }
    }

    pub(super) async fn remove(self) -> anyhow::Result<()> {
        match self {
            Place::Sqlite { dir } => dir.close().context("removing the benchmark database")?,
            Place::Postgres { url, schema } => {
                let db = Db::connect(&url, &DbOptions::default()).await?;
                db.drop_schema(&schema).await?;
                db.close().await;
            }
        }
        Ok(())
    }
}
