//! Assembling cairn: the migrations of every layer, the routing table, the database,
//! the mailer and the domain with its workflow engine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use cairn_dispatch::{EventStore, Registry};
use cairn_domain::{Domain, DomainConfig};
use std::path::{Path, PathBuf};

use cairn_log::{Db, DbOptions, Kek, Migration};
use cairn_workflow::{EngineConfig, SystemClock};

use crate::cli::Runtime;

/// Every migration, in layer order.
pub fn migrations() -> Vec<&'static [Migration]> {
    cairn_domain::all_migrations()
}

/// The routing table of this build.
pub fn registry() -> Registry {
    cairn_domain::registry()
}

/// Opens the database a URL names, brings its schema up to date, and gives it the
/// personal-data key.
pub async fn open_db(url: &str, options: &DbOptions) -> anyhow::Result<Db> {
    let db = Db::connect(url, options).await?;
    db.migrate(&migrations())
        .await
        .with_context(|| format!("migrating {}", db.describe()))?;
    install_pii_key(&db, url).await?;
    Ok(db)
}

static PII_KEY_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The key file `--pii-key` names, for every database this process opens.
pub fn set_pii_key_file(path: Option<PathBuf>) {
    if let Some(path) = path {
        let _ = PII_KEY_FILE.set(path);
    }
}

/// Where the key file is when `--pii-key` does not say: beside the SQLite database,
/// or `cairn-data/pii.key` with PostgreSQL.
fn default_key_file(url: &str) -> PathBuf {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .and_then(|path| Path::new(path).parent().map(|dir| dir.join("pii.key")))
        .unwrap_or_else(|| PathBuf::from("cairn-data/pii.key"))
}

/// Gives the database its personal-data key: `CAIRN_PII_KEY`, else the key file. A
/// database that has none yet gets a new key, written to a new key file; one whose
/// data is sealed under a key this process was not given is refused, naming it.
async fn install_pii_key(db: &Db, url: &str) -> anyhow::Result<()> {
    let from_env = std::env::var("CAIRN_PII_KEY")
        .ok()
        .filter(|text| !text.trim().is_empty());
    let kek = match from_env {
        Some(text) => Kek::parse(&text, "CAIRN_PII_KEY")?,
        None => {
            let path = PII_KEY_FILE
                .get()
                .cloned()
                .unwrap_or_else(|| default_key_file(url));
            if path.exists() {
                Kek::load(&path)?
            } else if let Some(current) = db.current_kek_id().await? {
                anyhow::bail!(
                    "this database's personal data is sealed under key {current}, and the key \
                     file {} does not exist: start with --pii-key FILE (or CAIRN_PII_KEY_FILE, \
                     or the key itself in CAIRN_PII_KEY) naming key {current}",
                    path.display()
                );
            } else {
                let kek = Kek::generate()?;
                kek.write_new(&path)?;
                tracing::warn!(
                    key_id = kek.id(),
                    path = %path.display(),
                    "made a new personal-data key: keep it safe and apart from the database's backups"
                );
                kek
            }
        }
    };
    db.install_kek(kek).await?;
    Ok(())
}

/// The key-encryption key `db` was given when it was opened.
pub fn current_kek(db: &Db) -> anyhow::Result<Kek> {
    db.keyring()
        .kek()
        .ok_or_else(|| anyhow::anyhow!("the database was opened without a personal-data key"))
}

/// Opens the database and the event store over it. A registry this build cannot
/// accept (a gap in an upcaster chain) is refused before the database is opened.
pub async fn open(url: &str) -> anyhow::Result<EventStore> {
    let registry = cairn_domain::try_registry()
        .context("this build's event contracts are inconsistent; it cannot start")?;
    let db = open_db(url, &DbOptions::default()).await?;
    Ok(EventStore::new(db, registry))
}

/// Who decides at the command line: `service:cairn-cli`, in a request of its own.
pub fn cli_operator() -> cairn_dispatch::Operator {
    cairn_dispatch::Operator {
        actor: cairn_types::Actor::Service("cairn-cli".to_owned()),
        correlation_id: cairn_types::CorrelationId::new_v7(),
    }
}

/// Opens the domain: the event store, the mailer, and the workflow engine.
pub async fn open_domain(url: &str, runtime: &Runtime) -> anyhow::Result<Domain> {
    open_domain_driving(url, runtime, EngineConfig::DEFAULT_CONCURRENCY).await
}

/// Opens the domain with an engine that drives at most `concurrency` runs at once.
pub async fn open_domain_driving(
    url: &str,
    runtime: &Runtime,
    concurrency: usize,
) -> anyhow::Result<Domain> {
    let store = open(url).await?;
    let mailer = cairn_mail::mailer_from_url(&runtime.mail_url).context("--mail-url")?;
    let config = DomainConfig {
        invitation_ttl: chrono::Duration::from_std(runtime.invitation_ttl.0)
            .context("--invitation-ttl is too long")?,
        accept_url: format!(
            "{}/invitations/accept",
            runtime.public_url.trim_end_matches('/')
        ),
        mail_retry_for: runtime.mail_retry_for.0,
    };
    let mut engine_config = EngineConfig {
        concurrency,
        pause_after_records: runtime.fault_pause_after_records,
        pause_after_effects: runtime.fault_pause_after_effects,
        ..EngineConfig::default()
    };
    if let Some(seconds) = runtime.workflow_lease_seconds {
        engine_config.lease = Duration::from_secs_f64(seconds.max(0.1));
    }
    if let Some(worker_id) = &runtime.worker_id {
        engine_config.worker_id = worker_id.clone();
    }
    Ok(Domain::open(store, mailer, Arc::new(SystemClock), config, engine_config).await?)
}

/// The login of the person at the command line: USER or LOGNAME, `unknown` when
/// neither is set.
pub fn cli_login() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|login| !login.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Who reads at the command line, for the access log: `operator:<login>`.
pub fn cli_reader() -> String {
    format!("operator:{}", cli_login())
}

/// Puts a command-line read of people's data on record, before it is shown: `subjects`
/// is `None` when what was read holds nobody's data, and nothing is recorded. A read
/// that cannot be recorded is not shown.
pub async fn record_read(
    db: &cairn_log::Db,
    resource: String,
    subjects: Option<Vec<cairn_types::UserId>>,
) -> anyhow::Result<()> {
    let Some(subjects) = subjects else {
        return Ok(());
    };
    let record = cairn_log::AccessRecord::now(
        cli_reader(),
        cairn_log::AccessVia::Cli,
        cairn_types::CorrelationId::new_v7(),
        resource,
        subjects,
    );
    db.write_access(vec![record])
        .await
        .context("recording this read of personal data in the access log (nothing was shown)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_is_valid() {
        let registry = super::registry();
        for stream_type in ["test", "workflow", "organization", "user", "invitation"] {
            let stream_type = cairn_types::StreamType::parse(stream_type).expect("name");
            assert!(registry.route(&stream_type).is_some(), "{stream_type}");
        }
    }
}
