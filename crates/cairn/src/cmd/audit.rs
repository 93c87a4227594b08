//! `cairn audit verify`, `cairn audit checkpoint` and `cairn audit keygen`, and the
//! checkpoints `cairn serve` writes on a schedule.
//!
//! The hash chain shows the log is consistent with itself. A checkpoint, the head
//! signed with an Ed25519 key that is not in the database and written to a file the
//! database cannot rewrite, shows the log still holds what it held when signed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use console::style;
use serde::Serialize;

use cairn_log::Db;
use cairn_log::{
    AccessAnchorStatus, AccessAuditReport, AccessMark, Anchor, AnchorStatus, AuditReport, Breach,
    ChainCheck,
};
use cairn_log::{AuditKey, BackupMark, Checkpoint, CheckpointError, PublicKey};
use cairn_types::Position;

use crate::app;
use crate::cli::{
    AuditAccessArgs, AuditCheckpointArgs, AuditCommand, AuditKeygenArgs, AuditScheduleArgs,
    AuditVerifyArgs,
};
use crate::ui;

/// The environment variable that holds a signing key (the key file's contents).
const KEY_VARIABLE: &str = "CAIRN_AUDIT_KEY";

pub async fn run(url: &str, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify(args) => verify(url, args).await,
        AuditCommand::Checkpoint(args) => checkpoint(url, args).await,
        AuditCommand::Keygen(args) => keygen(args),
        AuditCommand::Access(args) => access(url, args).await,
    }
}

// The access log.

async fn access(url: &str, args: AuditAccessArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let records = store
        .db()
        .read_access(args.subject, args.since, args.limit)
        .await?;
    if args.json.json {
        ui::print_json(&records)?;
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        outln!(
            "{}",
            style(format!(
                "no read of {}'s data is on record{}",
                args.subject,
                args.since
                    .map(|since| format!(" since {}", since.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default()
            ))
            .dim()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&[
        "SEQ",
        "READ AT (UTC)",
        "WHO",
        "VIA",
        "WHAT",
        "PEOPLE",
        "REQUEST",
    ]);
    for stored in &records {
        let record = &stored.record;
        table.add_row(vec![
            stored.seq.to_string(),
            record
                .recorded_at
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string(),
            record.who.clone(),
            record.via.as_str().to_owned(),
            record.resource.clone(),
            record.subjects.len().to_string(),
            record.correlation_id.to_string(),
        ]);
    }
    outln!("{table}");
    let mut footer = ui::plural(records.len() as u64, "read", "reads");
    if records.len() as u64 == u64::from(args.limit) {
        footer.push_str(&format!(
            "; more may follow: raise --limit (it is {})",
            args.limit
        ));
    }
    outln!("{footer}");
    Ok(ExitCode::SUCCESS)
}

// Keys.

/// Reads the signing key from `file`, or else from CAIRN_AUDIT_KEY; `flag` names the
/// option in messages.
pub(crate) fn load_key(file: Option<&Path>, flag: &str) -> anyhow::Result<AuditKey> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the signing key {}", file.display()))?;
        let key = AuditKey::parse(&text).with_context(|| format!("{flag} {}", file.display()))?;
        warn_if_readable_by_others(file);
        return Ok(key);
    }
    match std::env::var(KEY_VARIABLE) {
        Ok(text) if !text.trim().is_empty() => {
            AuditKey::parse(&text).with_context(|| format!("the {KEY_VARIABLE} variable"))
        }
        _ => anyhow::bail!(
            "no signing key: give {flag} FILE (from `cairn audit keygen --out FILE`) or set \
             {KEY_VARIABLE} to the key file's contents"
        ),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = std::fs::metadata(file)
        && metadata.permissions().mode() & 0o077 != 0
    {
        ui::warn(&format!(
            "the signing key {} can be read by other users (chmod 600 it)",
            file.display()
        ));
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &Path) {}

/// FILE.pub for FILE.
fn public_key_file(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

#[derive(Serialize)]
struct KeygenOutput<'a> {
    key_file: &'a Path,
    public_key_file: &'a Path,
    public_key: String,
}

fn keygen(args: AuditKeygenArgs) -> anyhow::Result<ExitCode> {
    let mut seed = [0_u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("the system's random number generator failed: {e}"))?;
    let key = AuditKey::from_seed(seed);
    seed.fill(0);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&args.out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists: a key is never overwritten (remove it first, or choose \
                 another --out)",
                args.out.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating {}", args.out.display()))
        }
    })?;
    file.write_all(key.to_text().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", args.out.display()))?;
    let public = key.public_key();
    let public_file = public_key_file(&args.out);
    std::fs::write(&public_file, public.to_text())
        .with_context(|| format!("writing {}", public_file.display()))?;
    if args.json.json {
        ui::print_json(&KeygenOutput {
            key_file: &args.out,
            public_key_file: &public_file,
            public_key: public.to_hex(),
        })?;
    } else {
        outln!(
            "{} wrote the signing key {} (readable by you only) and its public key {}\n  \
             public key {}\n  keep the signing key out of the database's reach; give the public \
             key to whoever verifies (cairn audit verify --public-key {})",
            style("✓").green().bold(),
            args.out.display(),
            public_file.display(),
            public,
            public_file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

// Checkpoint files.

/// Reads a checkpoint file; a file that cannot be read is an error, one that is not a
/// checkpoint is reported as such.
fn read_checkpoint(file: &Path) -> anyhow::Result<Result<Checkpoint, CheckpointError>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the checkpoint {}", file.display()))?;
    Ok(Checkpoint::parse(&text))
}

/// The checkpoint files (*.json) in `dir`, by name.
fn checkpoint_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the checkpoint directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading the checkpoint directory {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Where a new checkpoint goes.
pub(crate) enum Target {
    /// This file, replaced whole.
    File(PathBuf),
    /// A new file in this directory.
    Dir(PathBuf),
}

impl Target {
    /// The newest checkpoint already there that `key` signed: the chain is checked
    /// from it.
    fn last_checkpoint(&self, key: &PublicKey) -> anyhow::Result<Option<Checkpoint>> {
        let files = match self {
            Target::File(file) if file.exists() => vec![file.clone()],
            Target::Dir(dir) if dir.exists() => checkpoint_files(dir)?,
            Target::File(_) | Target::Dir(_) => Vec::new(),
        };
        let mut newest: Option<Checkpoint> = None;
        for file in files {
            let Ok(checkpoint) = read_checkpoint(&file)? else {
                continue;
            };
            if checkpoint.verify(Some(key)).is_err() {
                continue;
            }
            if newest
                .as_ref()
                .is_none_or(|n| (checkpoint.position, checkpoint.time) > (n.position, n.time))
            {
                newest = Some(checkpoint);
            }
        }
        Ok(newest)
    }

    /// Writes `checkpoint` whole (through a temporary file, so that a reader never sees
    /// half of one); returns the file.
    fn write(&self, checkpoint: &Checkpoint) -> anyhow::Result<PathBuf> {
        let (dir, file) = match self {
            Target::File(file) => {
                let dir = match file.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                    _ => PathBuf::from("."),
                };
                (dir, file.clone())
            }
            Target::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the directory {}", dir.display()))?;
                let name = format!(
                    "checkpoint-{:012}-{}.json",
                    checkpoint.position,
                    checkpoint.time.format("%Y%m%dT%H%M%S%.6fZ")
                );
                (dir.clone(), dir.join(name))
            }
        };
        let mut temporary = tempfile::Builder::new()
            .prefix(".checkpoint-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        temporary
            .write_all(checkpoint.to_json().as_bytes())
            .and_then(|()| temporary.as_file().sync_all())
            .with_context(|| format!("writing a checkpoint in {}", dir.display()))?;
        match self {
            Target::File(_) => temporary.persist(&file).map(drop),
            Target::Dir(_) => temporary.persist_noclobber(&file).map(drop),
        }
        .map_err(|e| anyhow::Error::new(e.error))
        .with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }
}

/// What became of a request for a checkpoint.
pub(crate) enum Signed {
    /// Signed and written.
    Written {
        file: PathBuf,
        checkpoint: Box<Checkpoint>,
        report: AuditReport,
    },
    /// The head is the last checkpoint's: nothing written.
    Unchanged,
    /// The chain is broken, or no longer holds the last checkpoint: nothing signed.
    Refused {
        report: AuditReport,
        /// What became of the last checkpoint, when the whole chain was walked.
        last_checkpoint: Option<(Position, AnchorStatus)>,
    },
}

/// How much of the chain is rehashed before a head is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Every event from the first, and the last checkpoint must still hold: an edit
    /// anywhere in the log refuses the signature.
    Whole,
    /// Only the events after the last checkpoint (whose hash must still be at its
    /// position). Cheaper on a long log, but an edit made before that checkpoint is
    /// found only by `audit verify`, not here.
    SinceLast,
}

/// Checks the chain (see [`Walk`]) and, if it is intact and still holds the last
/// checkpoint at `target`, signs the head it ends at and writes it to `target`.
pub(crate) async fn sign_head(
    db: &Db,
    key: &AuditKey,
    target: &Target,
    walk: Walk,
    skip_unchanged: bool,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> anyhow::Result<Signed> {
    let last = target.last_checkpoint(&key.public_key())?;
    let last_anchor = last.as_ref().map(|last| Anchor {
        position: last.log_position(),
        hash: last.hash.clone(),
    });
    let check = match walk {
        Walk::Whole => ChainCheck {
            anchors: last_anchor.clone().into_iter().collect(),
            start: None,
        },
        Walk::SinceLast => ChainCheck {
            anchors: Vec::new(),
            start: last_anchor.clone(),
        },
    };
    let report = db.verify_chain_with(&check, progress).await?;
    let last_checkpoint = last_anchor
        .as_ref()
        .zip(report.anchors.first())
        .map(|(anchor, status)| (anchor.position, *status));
    let last_holds = last_checkpoint.is_none_or(|(_, status)| status == AnchorStatus::Holds);
    if !report.is_intact() || !last_holds {
        return Ok(Signed::Refused {
            report,
            last_checkpoint,
        });
    }
    if skip_unchanged
        && last
            .as_ref()
            .is_some_and(|last| last.log_position() == report.head)
    {
        return Ok(Signed::Unchanged);
    }
    // The access log's head is signed too, once its chain is intact and still holds
    // the head the last checkpoint signed.
    let access = db
        .verify_access_chain_with(
            &last
                .as_ref()
                .and_then(|last| last.access.clone())
                .into_iter()
                .collect::<Vec<_>>(),
        )
        .await?;
    if let Some(breach) = &access.breach {
        anyhow::bail!(
            "the access log is broken at record {}: {}; no checkpoint was signed",
            breach.seq,
            breach.detail
        );
    }
    if let Some(status) = access.anchors.first().filter(|status| status.is_problem()) {
        anyhow::bail!(
            "the access log no longer holds the head the last checkpoint signed ({}); no \
             checkpoint was signed",
            describe_access_anchor(*status)
        );
    }
    let access = AccessMark {
        seq: u64::try_from(access.head).unwrap_or(0),
        hash: access.head_hash,
    };
    let checkpoint = key.sign_with_access(
        report.head,
        &report.head_hash,
        Some(access),
        chrono::Utc::now(),
    );
    let file = target.write(&checkpoint)?;
    Ok(Signed::Written {
        file,
        checkpoint: Box::new(checkpoint),
        report,
    })
}

fn checked_from(from: Position) -> String {
    if from == Position::START {
        "from the first event".to_owned()
    } else {
        format!("from the checkpoint at position {from}")
    }
}

#[derive(Serialize)]
struct CheckpointOutput<'a> {
    signed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<&'a Checkpoint>,
    checked_from: Position,
    n_checked: u64,
    breach: Option<&'a Breach>,
    /// What became of the last checkpoint there, when the whole chain was walked and it
    /// did not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_checkpoint: Option<AnchorStatus>,
}

async fn checkpoint(url: &str, args: AuditCheckpointArgs) -> anyhow::Result<ExitCode> {
    let key = load_key(args.key.as_deref(), "--key")?;
    let target = match (args.out, args.dir) {
        (Some(file), _) => Target::File(file),
        (None, Some(dir)) => Target::Dir(dir),
        (None, None) => anyhow::bail!("give --out FILE or --dir DIR"),
    };
    let store = app::open(url).await?;
    let progress = ui::Progress::new("checking");
    let walk = if args.since_last {
        Walk::SinceLast
    } else {
        Walk::Whole
    };
    let signed = sign_head(
        store.db(),
        &key,
        &target,
        walk,
        false,
        &mut |done, total| progress.update(done, total),
    )
    .await;
    progress.finish();
    match signed? {
        Signed::Written {
            file,
            checkpoint,
            report,
        } => {
            if args.json.json {
                ui::print_json(&CheckpointOutput {
                    signed: true,
                    file: Some(&file),
                    checkpoint: Some(&checkpoint),
                    checked_from: report.from,
                    n_checked: report.n_checked,
                    breach: None,
                    last_checkpoint: None,
                })?;
            } else {
                outln!(
                    "{} signed the head at position {} (hash {}) and wrote {}\n  the chain \
                     checks out {}: {} rehashed",
                    style("✓").green().bold(),
                    checkpoint.position,
                    checkpoint.hash,
                    file.display(),
                    checked_from(report.from),
                    ui::plural(report.n_checked, "event", "events"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Signed::Refused {
            report,
            last_checkpoint,
        } => {
            let lost = last_checkpoint.filter(|(_, status)| *status != AnchorStatus::Holds);
            if args.json.json {
                ui::print_json(&CheckpointOutput {
                    signed: false,
                    file: None,
                    checkpoint: None,
                    checked_from: report.from,
                    n_checked: report.n_checked,
                    breach: report.breach.as_ref(),
                    last_checkpoint: lost.map(|(_, status)| status),
                })?;
            } else if let Some((position, status)) = lost
                && report.breach.is_none()
            {
                let why = match status {
                    AnchorStatus::Contradicted => "the log holds another hash there",
                    AnchorStatus::BeyondTheLog => "the log ends before it: events were removed",
                    AnchorStatus::Holds | AnchorStatus::NotReached => "it was not reached",
                };
                outln!(
                    "{} not signed: the log no longer holds the last checkpoint, at position {}: \
                     {why}\n  run cairn audit verify with your checkpoints to see more",
                    style("✗").red().bold(),
                    style(position).bold(),
                );
            } else if let Some(breach) = &report.breach {
                outln!(
                    "{} not signed: the hash chain is broken at position {}: {}\n  checked {}; \
                     run cairn audit verify with your checkpoints to see more",
                    style("✗").red().bold(),
                    style(breach.position).bold(),
                    breach.detail,
                    checked_from(report.from),
                );
            }
            Ok(ExitCode::from(1))
        }
        Signed::Unchanged => Ok(ExitCode::SUCCESS),
    }
}

// Verification.

/// What became of one checkpoint given to `audit verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum CheckpointStatus {
    /// The log still holds its head, and the chain from there is intact.
    Holds,
    /// The log holds another hash at its position.
    Contradicted,
    /// The log ends before its position.
    BeyondTheLog,
    /// Signed after the backup this database was restored from, past its head: not
    /// checked, since the restored log does not hold what was appended after it.
    BeyondTheRestoredLog,
    /// The walk stopped at an earlier breach.
    NotReached,
    /// Its signature does not verify.
    BadSignature,
    /// Signed by another key than the pinned one.
    UnknownKey,
    /// Not a checkpoint.
    Unreadable,
}

impl CheckpointStatus {
    fn is_problem(self) -> bool {
        !matches!(
            self,
            CheckpointStatus::Holds
                | CheckpointStatus::NotReached
                | CheckpointStatus::BeyondTheRestoredLog
        )
    }

    fn describe(self) -> &'static str {
        match self {
            CheckpointStatus::Holds => "holds",
            CheckpointStatus::Contradicted => "contradicted: the log holds another hash there",
            CheckpointStatus::BeyondTheLog => "beyond the end of the log: events were removed",
            CheckpointStatus::BeyondTheRestoredLog => {
                "beyond the restored log: signed after the backup it was restored from"
            }
            CheckpointStatus::NotReached => "not reached: the chain breaks before it",
            CheckpointStatus::BadSignature => "the signature does not verify",
            CheckpointStatus::UnknownKey => "signed by another key than the pinned one",
            CheckpointStatus::Unreadable => "not a checkpoint",
        }
    }
}

#[derive(Debug, Serialize)]
struct CheckpointResult {
    file: PathBuf,
    status: CheckpointStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    /// Why the checkpoint proves nothing, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// The access log's record the checkpoint signed (format 2), and what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    access_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access: Option<AccessAnchorStatus>,
}

#[derive(Serialize)]
struct VerifyOutput<'a> {
    #[serde(flatten)]
    report: &'a AuditReport,
    checkpoints: &'a [CheckpointResult],
    /// The backups this database was restored from, oldest first.
    restores: &'a [BackupMark],
    /// The access log's own chain.
    access: &'a AccessAuditReport,
}

async fn verify(url: &str, args: AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    let pinned = match &args.public_key {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the public key {}", file.display()))?;
            Some(
                PublicKey::parse(&text)
                    .with_context(|| format!("--public-key {}", file.display()))?,
            )
        }
        None => None,
    };
    let mut files = args.checkpoints.clone();
    let mut empty_dir = None;
    if let Some(dir) = &args.checkpoint_dir {
        let found = checkpoint_files(dir)?;
        if found.is_empty() {
            empty_dir = Some(dir.clone());
        }
        files.extend(found);
    }
    // The backup's own checkpoint is one the restored log must hold; those signed
    // after it, past its head, describe a log the backup never held.
    let backup = match &args.backup_checkpoint {
        Some(file) => {
            let checkpoint = read_checkpoint(file)?
                .with_context(|| format!("--backup-checkpoint {}", file.display()))?;
            checkpoint
                .verify(pinned.as_ref())
                .with_context(|| format!("--backup-checkpoint {}", file.display()))?;
            let same = |f: &PathBuf| {
                f.canonicalize()
                    .ok()
                    .is_some_and(|f| Some(f) == file.canonicalize().ok())
            };
            if !files.iter().any(same) {
                files.insert(0, file.clone());
            }
            Some(checkpoint)
        }
        None => None,
    };

    // The backups this database was restored from: a checkpoint signed after one was
    // taken and before it was restored, past its head, describes events the restored
    // log never held.
    let store = app::open(url).await?;
    let restores = store.db().restores().await?;

    // Each checkpoint whose signature verifies becomes an anchor the log must hold.
    let mut results = Vec::with_capacity(files.len());
    let mut anchors = Vec::new();
    let mut anchor_of = Vec::new();
    let mut access_anchors = Vec::new();
    let mut access_anchor_of = Vec::new();
    for file in files {
        let mut result = CheckpointResult {
            file,
            status: CheckpointStatus::NotReached,
            position: None,
            hash: None,
            time: None,
            public_key: None,
            detail: None,
            access_seq: None,
            access: None,
        };
        match read_checkpoint(&result.file)? {
            Err(e) => {
                result.status = CheckpointStatus::Unreadable;
                result.detail = Some(e.to_string());
            }
            Ok(checkpoint) => {
                let after_backup = backup
                    .as_ref()
                    .filter(|backup| {
                        checkpoint.position > backup.position && checkpoint.time > backup.time
                    })
                    .map(|backup| {
                        format!(
                            "beyond the restored log: signed after the backup, whose head is \
                             at position {}",
                            backup.position
                        )
                    })
                    .or_else(|| {
                        let position = Position::new(i64::try_from(checkpoint.position).ok()?);
                        restores
                            .iter()
                            .rfind(|restore| restore.outlived_by(position, checkpoint.time))
                            .map(|restore| {
                                format!(
                                    "beyond the restored log: signed after {}",
                                    describe_restore(restore)
                                )
                            })
                    });
                match checkpoint.verify(pinned.as_ref()) {
                    Ok(_) if after_backup.is_some() => {
                        result.status = CheckpointStatus::BeyondTheRestoredLog;
                        result.detail = after_backup;
                    }
                    Ok(anchor) => {
                        anchor_of.push(results.len());
                        anchors.push(anchor);
                        if let Some(access) = &checkpoint.access {
                            access_anchor_of.push(results.len());
                            access_anchors.push(access.clone());
                        }
                    }
                    Err(e) => {
                        result.status = match e {
                            CheckpointError::BadSignature => CheckpointStatus::BadSignature,
                            CheckpointError::UnknownKey { .. } => CheckpointStatus::UnknownKey,
                            CheckpointError::Malformed(_) => CheckpointStatus::Unreadable,
                        };
                        result.detail = Some(e.to_string());
                    }
                }
                result.position = Some(checkpoint.position);
                result.hash = Some(checkpoint.hash);
                result.time = Some(checkpoint.time);
                result.public_key = Some(checkpoint.public_key);
                result.access_seq = checkpoint.access.as_ref().map(|access| access.seq);
            }
        }
        results.push(result);
    }

    let progress = ui::Progress::new("verifying");
    let report = store
        .db()
        .verify_chain_with(
            &ChainCheck {
                anchors,
                start: None,
            },
            &mut |done, total| progress.update(done, total),
        )
        .await;
    progress.finish();
    let report = report?;
    let access = store.db().verify_access_chain_with(&access_anchors).await?;
    for (&index, status) in access_anchor_of.iter().zip(&access.anchors) {
        results[index].access = Some(*status);
    }
    for (&index, status) in anchor_of.iter().zip(&report.anchors) {
        results[index].status = match status {
            AnchorStatus::Holds => CheckpointStatus::Holds,
            AnchorStatus::Contradicted => CheckpointStatus::Contradicted,
            AnchorStatus::BeyondTheLog => CheckpointStatus::BeyondTheLog,
            AnchorStatus::NotReached => CheckpointStatus::NotReached,
        };
    }
    let checkpoints_fail = results
        .iter()
        .any(|r| r.status.is_problem() || r.access.is_some_and(AccessAnchorStatus::is_problem));

    if args.json.json {
        ui::print_json(&VerifyOutput {
            report: &report,
            checkpoints: &results,
            restores: &restores,
            access: &access,
        })?;
    } else {
        for restore in &restores {
            outln!(
                "{} restored: {}",
                style("↺").cyan().bold(),
                describe_restore(restore)
            );
        }
        print_verification(&report, &results, pinned.is_some());
        print_access_verification(&access, &results);
    }
    // Asked to check against checkpoints and given none (a directory emptied or
    // mounted wrong): that proves nothing, so a scheduled check must not pass.
    if let Some(dir) = &empty_dir {
        eprintln!(
            "{} no checkpoints (*.json) in {}: nothing was checked against signed heads",
            style("error:").red().bold(),
            dir.display()
        );
    }
    Ok(
        if report.is_intact() && access.is_intact() && !checkpoints_fail && empty_dir.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// A backup this database was restored from, for people: when it was taken, the head
/// it held, and when and from what it was restored.
fn describe_restore(restore: &BackupMark) -> String {
    let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(
            || "at a time it did not record".to_owned(),
            |at| format!("at {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
        )
    };
    format!(
        "the backup taken {} (head at position {}), restored from {} {}",
        when(restore.taken_at),
        restore.head_position,
        restore.restored_from.as_deref().unwrap_or("a backup"),
        when(restore.restored_at),
    )
}

fn describe_access_anchor(status: AccessAnchorStatus) -> &'static str {
    match status {
        AccessAnchorStatus::Holds => "holds",
        AccessAnchorStatus::Contradicted => {
            "contradicted: the access log holds another hash there (it was rewritten)"
        }
        AccessAnchorStatus::BeyondTheLog => {
            "beyond the end of the access log: records were removed"
        }
        AccessAnchorStatus::NotReached => "not reached: the access chain breaks before it",
        AccessAnchorStatus::Pruned => "pruned past its retention period: nothing left to check",
    }
}

fn print_access_verification(report: &AccessAuditReport, results: &[CheckpointResult]) {
    let pruned = if report.pruned_through > 0 {
        format!(
            " (records up to {} pruned past their retention)",
            report.pruned_through
        )
    } else {
        String::new()
    };
    match &report.breach {
        None => outln!(
            "{} access log intact: {}, head at record {}{pruned}",
            style("✓").green().bold(),
            ui::plural(report.n_checked, "record", "records"),
            report.head
        ),
        Some(breach) => outln!(
            "{} access log broken at record {}: {}\n  {} before it {}",
            style("✗").red().bold(),
            style(breach.seq).bold(),
            breach.detail,
            ui::plural(report.n_checked, "record", "records"),
            if report.n_checked == 1 {
                "checks out"
            } else {
                "check out"
            }
        ),
    }
    let signed: Vec<(&CheckpointResult, u64, AccessAnchorStatus)> = results
        .iter()
        .filter_map(|r| Some((r, r.access_seq?, r.access?)))
        .collect();
    if signed.is_empty() {
        return;
    }
    if signed
        .iter()
        .all(|(_, _, status)| *status == AccessAnchorStatus::Holds)
    {
        let mut records: Vec<u64> = signed.iter().map(|(_, seq, _)| *seq).collect();
        records.sort_unstable();
        records.dedup();
        let records: Vec<String> = records.iter().map(u64::to_string).collect();
        outln!(
            "{} the access log still holds the signed {} at {} {}",
            style("✓").green().bold(),
            if records.len() == 1 { "head" } else { "heads" },
            if records.len() == 1 {
                "record"
            } else {
                "records"
            },
            records.join(", ")
        );
        return;
    }
    for (result, seq, status) in signed {
        let mark = if status.is_problem() {
            style("✗").red().bold()
        } else if status == AccessAnchorStatus::Holds {
            style("✓").green().bold()
        } else {
            style("·").dim()
        };
        outln!(
            "{mark} checkpoint {} (access record {seq}): {}",
            result.file.display(),
            describe_access_anchor(status)
        );
    }
}

fn print_verification(report: &AuditReport, results: &[CheckpointResult], pinned: bool) {
    match &report.breach {
        None => outln!(
            "{} hash chain intact: {}, head at position {}",
            style("✓").green().bold(),
            ui::plural(report.n_checked, "event", "events"),
            report.head
        ),
        Some(breach) => outln!(
            "{} hash chain broken at position {}: {}\n  {} before it {}",
            style("✗").red().bold(),
            style(breach.position).bold(),
            breach.detail,
            ui::plural(report.n_checked, "event", "events"),
            if report.n_checked == 1 {
                "checks out"
            } else {
                "check out"
            }
        ),
    }
    if results.is_empty() {
        if report.is_intact() {
            outln!(
                "  {}",
                style(
                    "the chain is consistent with itself; only a signed checkpoint (--checkpoint) \
                     shows it was not rewritten with every hash recomputed"
                )
                .dim()
            );
        }
        return;
    }
    if results.iter().all(|r| r.status == CheckpointStatus::Holds) {
        let mut positions: Vec<u64> = results.iter().filter_map(|r| r.position).collect();
        positions.sort_unstable();
        positions.dedup();
        let positions: Vec<String> = positions.iter().map(u64::to_string).collect();
        outln!(
            "{} {}: the log still holds the signed {} at {} {}",
            style("✓").green().bold(),
            if results.len() == 1 {
                "checkpoint holds".to_owned()
            } else {
                format!("{} checkpoints hold", ui::count(results.len() as u64))
            },
            if results.len() == 1 { "head" } else { "heads" },
            if positions.len() == 1 {
                "position"
            } else {
                "positions"
            },
            positions.join(", ")
        );
        if !pinned {
            let mut keys: Vec<&str> = results
                .iter()
                .filter_map(|r| r.public_key.as_deref())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            outln!(
                "  {}",
                style(format!(
                    "signed by {} {}; --public-key pins the key you expect",
                    if keys.len() == 1 { "key" } else { "keys" },
                    keys.join(", ")
                ))
                .dim()
            );
        }
        return;
    }
    for result in results {
        let mark = if result.status.is_problem() {
            style("✗").red().bold()
        } else if result.status == CheckpointStatus::Holds {
            style("✓").green().bold()
        } else {
            style("·").dim()
        };
        let position = result
            .position
            .map_or_else(String::new, |p| format!(" (position {p})"));
        let detail = match (&result.detail, result.status) {
            (Some(detail), _) => detail.clone(),
            (None, status) => status.describe().to_owned(),
        };
        outln!(
            "{mark} checkpoint {}{position}: {detail}",
            result.file.display()
        );
    }
}

// The schedule in `cairn serve`.

/// "1h", "90m", "45s": a period as written on the command line.
fn period(every: Duration) -> String {
    let secs = every.as_secs();
    match secs {
        0 => ui::duration(every),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Starts writing a signed checkpoint of the head to the checkpoint directory every
/// period, when `cairn serve` was asked to; the key and the directory are checked now.
/// A checkpoint is written only when the head has moved, and only when the chain from
/// the last one is intact; otherwise a warning says why not.
pub fn schedule(
    db: &Db,
    args: &AuditScheduleArgs,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(every) = args.audit_checkpoint_every else {
        return Ok(None);
    };
    anyhow::ensure!(
        !every.0.is_zero(),
        "--audit-checkpoint-every must be longer than 0"
    );
    let dir = args
        .audit_checkpoint_dir
        .clone()
        .context("--audit-checkpoint-every needs --audit-checkpoint-dir")?;
    let key = load_key(args.audit_key.as_deref(), "--audit-key")?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the checkpoint directory {}", dir.display()))?;
    eprintln!(
        "{} a signed checkpoint of the log's head every {} in {} (public key {})",
        style("audit:").bold(),
        period(every.0),
        dir.display(),
        key.public_key()
    );
    let db = db.clone();
    let target = Target::Dir(dir);
    Ok(Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every.0).await;
            // Each period rehashes only what was appended since the last checkpoint,
            // so its cost does not grow with the log; `audit verify` (and `audit
            // checkpoint` at the command line) walk the whole chain.
            match sign_head(&db, &key, &target, Walk::SinceLast, true, &mut |_, _| {}).await {
                Ok(Signed::Written {
                    file, checkpoint, ..
                }) => tracing::info!(
                    position = checkpoint.position,
                    file = %file.display(),
                    "audit checkpoint written"
                ),
                Ok(Signed::Unchanged) => {}
                Ok(Signed::Refused { report, .. }) => {
                    if let Some(breach) = &report.breach {
                        ui::warn(&format!(
                            "audit checkpoint not signed: the hash chain is broken at position \
                             {}: {}",
                            breach.position, breach.detail
                        ));
                    }
                }
                Err(e) => ui::warn(&format!("audit checkpoint failed: {e:#}")),
            }
        }
    })))
}
