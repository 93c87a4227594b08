//! `cairn import`: the seed stack's event store brought into a fresh cairn database.
//!
//! What becomes of each seed event is decided in `cairn_domain::import`; this module
//! opens both ends, signs the checkpoints, writes the units of work one after another
//! (deciding the next page while the last one is written), and reports.
//!
//! The imported log starts with `import.started`, signed as a checkpoint before any
//! seed event is appended, so the log proves where it came from; each time an import
//! reaches the source's end it appends `import.completed` and signs the head again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use console::style;
use serde::Serialize;

use cairn_dispatch::EventStore;
use cairn_domain::import::{
    Cursor, ImportError, LeftOut, Mapper, Source, Standing, Start, Unit, ledger,
};
use cairn_log::{AuditKey, Db};
use cairn_types::Position;

use crate::app;
use crate::cli::ImportArgs;
use crate::cmd::audit::{self, Signed, Target, Walk};
use crate::ui;

pub async fn run(url: &str, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let key = audit::load_key(args.audit_key.as_deref(), "--audit-key")?;
    let source = Source::open(&args.from).await.context("--from")?;
    let store = app::open(url).await?;
    let progress = ui::Progress::new("importing");
    let ran = import(
        &store,
        &source,
        &key,
        &Target::Dir(args.checkpoint_dir.clone()),
        &Options {
            batch: args.batch,
            pause_after: args.fault_pause_after_imported,
        },
        &mut |done, total| progress.update(done, total),
    )
    .await;
    progress.finish();
    source.close().await;
    let report = Report::of(&store, ran?).await?;
    if args.json.json {
        ui::print_json(&report)?;
    } else {
        report.print();
    }
    Ok(if report.total.unmapped > 0 || report.missed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// How an import runs.
pub(crate) struct Options {
    /// Seed events per unit of work.
    pub(crate) batch: u32,
    /// Fault injection: stop after this many events were imported.
    pub(crate) pause_after: Option<u64>,
}

/// Seed events read, imported and left out.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Counts {
    pub(crate) read: i64,
    pub(crate) imported: i64,
    pub(crate) unmapped: i64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.read += other.read;
        self.imported += other.imported;
        self.unmapped += other.unmapped;
    }
}

/// A unit of work being written, and what it holds.
type Writing = (tokio::task::JoinHandle<Result<(), ImportError>>, Counts);

/// What one run of the import did.
pub(crate) struct Ran {
    pub(crate) standing: Standing,
    pub(crate) run: Counts,
    /// Checkpoints signed in this run.
    pub(crate) checkpoints: Vec<(Position, PathBuf)>,
    /// Source events at or before the cursor that the import never read: the source
    /// took writes behind the cursor while it was read.
    pub(crate) missed: i64,
    pub(crate) elapsed: Duration,
    /// Of `elapsed`, the time spent checking the chain and signing checkpoints.
    pub(crate) signing: Duration,
}

/// Imports the source into `store` (a fresh database, or one an earlier run of the
/// same import left), to the source's end.
pub(crate) async fn import(
    store: &EventStore,
    source: &Source,
    key: &AuditKey,
    target: &Target,
    options: &Options,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> anyhow::Result<Ran> {
    let started = Instant::now();
    let db = store.db();
    let mut standing = match ledger::standing(db).await? {
        Some(standing) => {
            let first_id = source.first_id().await?;
            anyhow::ensure!(
                standing.source_database == source.database()
                    && first_id == Some(standing.source_first_id),
                "{} holds an import of {} (database {}, whose first event is {}), and {} is \
                 another seed log: import it into a fresh database",
                db.describe(),
                standing.source,
                standing.source_database,
                standing.source_first_id,
                source.describe(),
            );
            standing
        }
        None => begin(store, source).await?,
    };
    let mut checkpoints = Vec::new();
    let mut signing = Duration::ZERO;
    if standing.signed_position.is_none() {
        // Nothing of the seed is appended before the start is signed.
        let signing_started = Instant::now();
        let signed = sign(db, key, target, Walk::Whole)
            .await
            .context("signing the import's start")?;
        signing += signing_started.elapsed();
        ledger::signed(db, signed.0).await?;
        checkpoints.push(signed);
    }

    let mapper = Mapper::new(store.dispatcher().registry(), source.database());
    let mut streams = ledger::streams(db).await?;
    let mut cursor = Cursor::parse(&standing.read_through)?;
    let (n_source, _) = source.totals().await?;
    let mut read_number = standing.n_read + 1;
    let mut run = Counts::default();
    let mut writing: Option<Writing> = None;
    let done_before = standing.n_read;
    let mut settle = async |writing: Option<Writing>, run: &mut Counts| -> anyhow::Result<()> {
        let Some((handle, counts)) = writing else {
            return Ok(());
        };
        let written: Result<(), ImportError> =
            handle.await.context("the import's writer stopped")?;
        written.context("writing a unit of the import")?;
        *run += counts;
        progress(
            u64::try_from(done_before + run.read).unwrap_or(0),
            u64::try_from(n_source).unwrap_or(0),
        );
        if let Some(limit) = options.pause_after
            && u64::try_from(run.imported).unwrap_or(0) >= limit
        {
            eprintln!(
                "cairn: import paused after {} events (fault injection)",
                run.imported
            );
            std::future::pending::<()>().await;
        }
        Ok(())
    };
    loop {
        let page = source.read_after(&cursor, options.batch).await?;
        if page.is_empty() {
            break;
        }
        let unit = Unit::plan(
            &mapper,
            &mut streams,
            source.order(),
            cursor.clone(),
            read_number,
            &page,
        );
        cursor = unit.to.clone();
        read_number += unit.n_read;
        let counts = Counts {
            read: unit.n_read,
            imported: unit.n_imported,
            unmapped: unit.left_out.len() as i64,
        };
        // The page before this one is written while this one was read and decided.
        settle(writing.take(), &mut run).await?;
        let store = store.clone();
        writing = Some((
            tokio::spawn(async move { unit.write(&store).await }),
            counts,
        ));
    }
    settle(writing.take(), &mut run).await?;

    standing = ledger::standing(db)
        .await?
        .context("the import's cursor is gone")?;
    let through = source.count_through(&cursor).await?;
    let missed = (through - standing.n_read).max(0);
    if standing.completed_through.as_deref() != Some(standing.read_through.as_str()) {
        ledger::complete(store, &standing).await?;
        standing = ledger::standing(db)
            .await?
            .context("the import's cursor is gone")?;
    }
    let head = db.reader().await?.conn().head().await?.last_position;
    if standing.signed_position != Some(head) {
        let signing_started = Instant::now();
        let signed = sign(db, key, target, Walk::SinceLast)
            .await
            .context("signing the imported log's head")?;
        signing += signing_started.elapsed();
        ledger::signed(db, signed.0).await?;
        standing.signed_position = Some(signed.0);
        checkpoints.push(signed);
    }
    Ok(Ran {
        standing,
        run,
        checkpoints,
        missed,
        elapsed: started.elapsed(),
        signing,
    })
}

/// Starts an import in a fresh database.
async fn begin(store: &EventStore, source: &Source) -> anyhow::Result<Standing> {
    let db = store.db();
    let head = db.reader().await?.conn().head().await?;
    anyhow::ensure!(
        head.last_position == Position::START,
        "the log of {} already holds {}: an import starts a log, so give it a fresh database",
        db.describe(),
        ui::plural(
            u64::try_from(head.last_position.get()).unwrap_or(0),
            "event",
            "events"
        ),
    );
    let first_id = source.first_id().await?.with_context(|| {
        format!(
            "the source {} holds no events: there is nothing to import",
            source.describe()
        )
    })?;
    let (n_source_events, source_last_position) = source.totals().await?;
    Ok(ledger::start(
        store,
        Start {
            source: source.describe(),
            source_database: source.database().to_owned(),
            source_first_id: first_id,
            order: source.order(),
            n_source_events,
            source_last_position,
        },
    )
    .await?)
}

/// Signs the head after checking the chain as `walk` says.
async fn sign(
    db: &Db,
    key: &AuditKey,
    target: &Target,
    walk: Walk,
) -> anyhow::Result<(Position, PathBuf)> {
    match audit::sign_head(db, key, target, walk, false, &mut |_, _| {}).await? {
        Signed::Written {
            file, checkpoint, ..
        } => Ok((checkpoint.log_position(), file)),
        Signed::Refused { report, .. } => match report.breach {
            Some(breach) => anyhow::bail!(
                "the hash chain is broken at position {}: {}",
                breach.position,
                breach.detail
            ),
            None => anyhow::bail!(
                "the log no longer holds the last checkpoint in the checkpoint directory"
            ),
        },
        Signed::Unchanged => anyhow::bail!("the head is already signed"),
    }
}

#[derive(Debug, Serialize)]
struct Totals {
    read: i64,
    imported: i64,
    unmapped: i64,
    /// Imported events cairn's handlers failed to apply (`cairn events list --failed`).
    failed: i64,
    /// Imported events waiting behind a failed one of their stream.
    held: i64,
}

#[derive(Debug, Serialize)]
struct TypeCount {
    event_type: String,
    /// The seed's name for it, where it differs or the rules give one.
    seed_event_type: Option<&'static str>,
    n: i64,
}

#[derive(Debug, Serialize)]
struct UnmappedEvent {
    source_id: String,
    source_position: Option<i64>,
    stream_type: String,
    stream_id: String,
    event_type: String,
    kind: cairn_domain::import::UnmappedKind,
    reason: String,
}

impl From<LeftOut> for UnmappedEvent {
    fn from(row: LeftOut) -> Self {
        Self {
            source_id: row.source_id.to_string(),
            source_position: row.source_position,
            stream_type: row.stream_type,
            stream_id: row.stream_id.to_string(),
            event_type: row.event_type,
            kind: row.kind,
            reason: row.reason,
        }
    }
}

#[derive(Debug, Serialize)]
struct CheckpointWritten {
    position: Position,
    file: PathBuf,
}

/// What `cairn import` prints.
#[derive(Debug, Serialize)]
struct Report {
    source: String,
    source_database: String,
    target: String,
    order: &'static str,
    started_position: Position,
    /// This run.
    run: Counts,
    /// Every run of this import.
    total: Totals,
    /// Source events behind the cursor that were never read (written to the source
    /// while it was imported).
    missed: i64,
    imported: Vec<TypeCount>,
    unmapped: Vec<UnmappedEvent>,
    checkpoints: Vec<CheckpointWritten>,
    seconds: f64,
    /// Seed events read per second in this run.
    events_per_second: f64,
}

/// At most this many unmapped events are listed for people; --json lists them all.
const LISTED: usize = 50;

impl Report {
    async fn of(store: &EventStore, ran: Ran) -> anyhow::Result<Report> {
        let db = store.db();
        let imported = ledger::imported(db, &ran.standing).await?;
        let unmapped: Vec<UnmappedEvent> = ledger::left_out(db)
            .await?
            .into_iter()
            .map(UnmappedEvent::from)
            .collect();
        let seconds = ran.elapsed.as_secs_f64();
        Ok(Report {
            source: ran.standing.source.clone(),
            source_database: ran.standing.source_database.clone(),
            target: db.describe(),
            order: ran.standing.order.as_str(),
            started_position: ran.standing.started_position,
            run: ran.run,
            total: Totals {
                read: ran.standing.n_read,
                imported: ran.standing.n_imported,
                unmapped: ran.standing.n_unmapped,
                failed: imported.n_failed,
                held: imported.n_held,
            },
            missed: ran.missed,
            imported: imported
                .by_type
                .into_iter()
                .map(|(event_type, n)| TypeCount {
                    seed_event_type: cairn_domain::import::map::seed_type_of(&event_type),
                    event_type,
                    n,
                })
                .collect(),
            unmapped,
            checkpoints: ran
                .checkpoints
                .into_iter()
                .map(|(position, file)| CheckpointWritten { position, file })
                .collect(),
            seconds,
            events_per_second: ran.run.read as f64 / seconds.max(1e-9),
        })
    }

    fn print(&self) {
        let n = |value: i64| u64::try_from(value).unwrap_or(0);
        let mark = if self.total.unmapped > 0 || self.missed > 0 {
            style("✗").red().bold()
        } else {
            style("✓").green().bold()
        };
        if self.run.read == 0 {
            outln!(
                "{mark} nothing new in {}: the import has read all {}",
                self.source,
                ui::plural(n(self.total.read), "seed event", "seed events"),
            );
        } else {
            outln!(
                "{mark} imported {} of {} from {} into {}",
                ui::count(n(self.total.imported)),
                ui::plural(n(self.total.read), "seed event", "seed events"),
                self.source,
                self.target,
            );
            outln!(
                "  this run: {} read, {} imported, {} left out",
                ui::count(n(self.run.read)),
                ui::count(n(self.run.imported)),
                ui::count(n(self.run.unmapped)),
            );
        }
        if !self.imported.is_empty() {
            let mut table = ui::table(&["cairn event type", "seed event type", "events"]);
            for row in &self.imported {
                table.add_row(vec![
                    row.event_type.clone(),
                    row.seed_event_type.unwrap_or(&row.event_type).to_owned(),
                    ui::count(n(row.n)),
                ]);
            }
            outln!("{table}");
        }
        if self.total.failed > 0 || self.total.held > 0 {
            outln!(
                "  {} failed in cairn's handlers and {} held behind a failure (cairn events \
                 list --failed, cairn streams held)",
                ui::plural(n(self.total.failed), "imported event", "imported events"),
                ui::count(n(self.total.held)),
            );
        }
        if self.missed > 0 {
            outln!(
                "{} {} were written to the source behind the import's cursor while it read \
                 (stop the seed stack's writes, then import into a fresh database)",
                style("✗").red().bold(),
                ui::plural(n(self.missed), "seed event", "seed events"),
            );
        }
        if !self.unmapped.is_empty() {
            outln!(
                "{} {} could not be mapped:",
                style("✗").red().bold(),
                ui::plural(n(self.total.unmapped), "seed event", "seed events"),
            );
            for row in self.unmapped.iter().take(LISTED) {
                let place = match row.source_position {
                    Some(position) => format!("seed position {position}"),
                    None => format!("seed event {}", row.source_id),
                };
                outln!(
                    "  {place} · {} on {} {} · {}\n    {}",
                    row.event_type,
                    row.stream_type,
                    ui::short_id(&row.stream_id),
                    row.kind.as_str(),
                    row.reason,
                );
            }
            if self.unmapped.len() > LISTED {
                outln!(
                    "  … and {} more (--json lists every one)",
                    ui::count((self.unmapped.len() - LISTED) as u64)
                );
            }
        }
        for checkpoint in &self.checkpoints {
            let what = if checkpoint.position == self.started_position {
                " (the import's start)"
            } else {
                ""
            };
            outln!(
                "  signed a checkpoint at position {}{what}: {}",
                checkpoint.position,
                checkpoint.file.display()
            );
        }
    }
}
