//! `cairn events …`

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use console::style;
use serde_json::Value;

use cairn_dispatch::{Dispatched, EventStore, RetrySelection};
use cairn_log::{AppendRequest, EventFilter, Expected, IdempotencyKey, NewEvent, RecordedEvent};
use cairn_types::{Actor, Metadata, Position, StreamVersion};

use crate::app;
use crate::cli::{AppendArgs, EventRef, EventsCommand, ListArgs, RetryArgs, ShowArgs, SkipArgs};
use crate::ui;

pub async fn run(url: &str, command: EventsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::Append(args) => append(url, args).await,
        EventsCommand::List(args) => list(url, args).await,
        EventsCommand::Show(args) => show(url, args).await,
        EventsCommand::Retry(args) => retry(url, args).await,
        EventsCommand::Skip(args) => skip(url, args).await,
    }
}

/// Reads `--data`: inline JSON, @FILE, or - for standard input.
fn read_json_arg(flag: &str, value: &str) -> anyhow::Result<Value> {
    let text = if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("reading {flag} from standard input"))?;
        text
    } else if let Some(path) = value.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading {flag} from {path}"))?
    } else {
        value.to_owned()
    };
    serde_json::from_str(&text).with_context(|| format!("{flag} is not valid JSON"))
}

async fn append(url: &str, args: AppendArgs) -> anyhow::Result<ExitCode> {
    let data = read_json_arg("--data", &args.data)?;
    let mut metadata = match &args.metadata {
        Some(text) => {
            let value: Value =
                serde_json::from_str(text).context("--metadata is not valid JSON")?;
            Metadata::from_json(value).context("--metadata")?
        }
        None => Metadata::new(),
    };
    if metadata.actor.is_none() {
        metadata.actor = Some(Actor::Service("cairn-cli".to_owned()));
    }
    let expected = match args.expected_version {
        None => Expected::Any,
        Some(version) if version < 0 => {
            bail!("--expected-version must be 0 or more, not {version}")
        }
        Some(0) => Expected::NoStream,
        Some(version) => Expected::Exact(StreamVersion::new(version)),
    };
    let mut request = AppendRequest::new(
        args.stream_type,
        args.stream_id,
        vec![NewEvent::new(args.event_type, data, metadata)],
    )
    .expect(expected);
    if let Some(key) = &args.idempotency_key {
        request = request.idempotency_key(IdempotencyKey::parse(key)?);
    }
    let store = app::open(url).await?;
    let appended = store.append(request).await?;
    if appended.repeated {
        ui::warn(
            "this idempotency key was used before with the same request: nothing was written, the first result follows",
        );
    }
    for dispatched in &appended.events {
        if let Some(error) = &dispatched.event.processing_error {
            ui::warn(&format!(
                "event {} was stored but not applied: {} {}",
                dispatched.event.position, error.code, error.message
            ));
        }
    }
    // The events as stored hold personal fields sealed: they are shown as every read
    // shows them, opened (and the first request's, when repeated, is a read on record).
    let (stored, outcomes): (Vec<_>, Vec<_>) = appended
        .events
        .into_iter()
        .map(|dispatched| (dispatched.event, dispatched.outcome))
        .unzip();
    let events =
        cairn_dispatch::current_events(store.db(), store.dispatcher().registry(), stored).await?;
    if appended.repeated {
        app::record_read(
            store.db(),
            "events".to_owned(),
            cairn_log::personal_subjects(&events),
        )
        .await?;
    }
    let shown: Vec<Dispatched> = events
        .into_iter()
        .zip(outcomes)
        .map(|(event, outcome)| Dispatched { event, outcome })
        .collect();
    ui::print_json(&shown)?;
    Ok(ExitCode::SUCCESS)
}

fn status_text(event: &RecordedEvent) -> String {
    if let Some(behind) = event.held_behind {
        return format!("held behind {behind}");
    }
    match (&event.processing_error, event.processed_at) {
        (Some(error), _) => format!("failed {}", error.code),
        (None, Some(_)) => "processed".to_owned(),
        (None, None) => "pending".to_owned(),
    }
}

async fn list(url: &str, args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let filter = EventFilter {
        after: Position::new(args.after),
        limit: Some(args.limit),
        stream_id: args.stream_id,
        stream_type: args.stream_type,
        event_type: args.event_type,
        correlation_id: args.correlation_id,
        org_id: None,
        exclude_org: (!args.probe).then_some(cairn_types::OrgId::PROBE),
        failed: args.failed,
        error_code: args.code,
        ..EventFilter::default()
    };
    let registry = store.dispatcher().registry();
    let stored = store
        .db()
        .reader()
        .await?
        .conn()
        .read_events(&filter)
        .await?;
    let events: Vec<RecordedEvent> =
        cairn_dispatch::current_events(store.db(), registry, stored).await?;
    app::record_read(
        store.db(),
        "events".to_owned(),
        cairn_log::personal_subjects(&events),
    )
    .await?;
    if args.json.json {
        ui::print_json(&events)?;
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        outln!("{}", style("no events match").dim());
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&[
        "POS",
        "CREATED (UTC)",
        "STREAM",
        "VER",
        "EVENT TYPE",
        "STATUS",
    ]);
    for event in &events {
        table.add_row(vec![
            event.position.to_string(),
            event.created_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            format!("{} {}", event.stream_type, ui::short_id(&event.stream_id)),
            event.stream_version.to_string(),
            event.event_type.to_string(),
            status_text(event),
        ]);
    }
    outln!("{table}");
    let n_failed = events.iter().filter(|e| e.is_failed()).count() as u64;
    let mut footer = ui::plural(events.len() as u64, "event", "events");
    if n_failed > 0 {
        footer.push_str(&format!(
            ", {} (see `cairn events show POS`, retry with `cairn events retry POS`)",
            style(format!("{} failed", ui::count(n_failed))).red()
        ));
    }
    if events.len() as u64 == u64::from(args.limit)
        && let Some(last) = events.last()
    {
        footer.push_str(&format!("; more may follow: --after {}", last.position));
    }
    outln!("{footer}");
    Ok(ExitCode::SUCCESS)
}

async fn find(store: &EventStore, event: EventRef) -> anyhow::Result<RecordedEvent> {
    let mut reader = store.db().reader().await?;
    let found = match event {
        EventRef::Id(id) => reader.conn().event_by_id(id).await?,
        EventRef::Position(position) => reader.conn().event_at(position).await?,
    };
    found.with_context(|| match event {
        EventRef::Id(id) => format!("there is no event {id}"),
        EventRef::Position(position) => format!("there is no event at position {position}"),
    })
}

fn indented_json(value: &Value) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_default()
        .lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn show(url: &str, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let event = find(&store, args.event).await?;
    let current = store
        .dispatcher()
        .registry()
        .spec(&event.event_type)
        .map(|spec| spec.version);
    let event =
        cairn_dispatch::current_event(store.db(), store.dispatcher().registry(), event).await?;
    app::record_read(
        store.db(),
        format!("event {}", event.event_id),
        cairn_log::personal_subjects([&event]),
    )
    .await?;
    if args.json.json {
        ui::print_json(&event)?;
        return Ok(ExitCode::SUCCESS);
    }
    let label = |text: &str| style(format!("  {text:<13}")).dim().to_string();
    outln!(
        "{} {}  {}",
        style("event").bold(),
        style(event.event_id).bold(),
        style(format!("position {}", event.position)).cyan()
    );
    outln!("{}{}", label("type"), event.event_type);
    outln!(
        "{}{} {} (version {})",
        label("stream"),
        event.stream_type,
        event.stream_id,
        event.stream_version
    );
    outln!(
        "{}{}",
        label("created"),
        event.created_at.format("%Y-%m-%d %H:%M:%S%.6f UTC")
    );
    let status = match (&event.processing_error, event.processed_at) {
        _ if event.held_behind.is_some() => style(format!(
            "held behind position {} (applied once that event is retried, skipped or its route resumed; cairn streams held)",
            event.held_behind.map(|p| p.get()).unwrap_or_default()
        ))
        .yellow()
        .to_string(),
        (Some(error), Some(at)) => format!(
            "{} at {}\n{}{}",
            style(format!("failed {} ({})", error.code, error.code.title())).red(),
            at.format("%Y-%m-%d %H:%M:%S%.3f"),
            label(""),
            error.message
        ),
        (Some(error), None) => format!("failed {}: {}", error.code, error.message),
        (None, Some(at)) => format!(
            "{} at {}",
            style("processed").green(),
            at.format("%Y-%m-%d %H:%M:%S%.3f")
        ),
        (None, None) => style("not processed yet").yellow().to_string(),
    };
    outln!("{}{}", label("status"), status);
    outln!("{}{}", label("correlation"), event.metadata.correlation_id);
    if let Some(causation) = event.metadata.causation_id {
        outln!("{}{}", label("causation"), causation);
    }
    if let Some(actor) = &event.metadata.actor {
        outln!("{}{}", label("actor"), actor);
    }
    if let Some(org) = event.metadata.org_id {
        outln!("{}{}", label("organization"), org);
    }
    outln!("{}{}", label("hash"), event.hash);
    let version = match (event.stored_version, current) {
        (stored, Some(_)) if stored != event.event_version => format!(
            "version {}, upcast from version {stored} as stored",
            event.event_version
        ),
        (stored, Some(current)) if stored != current => {
            style(format!(
                "version {stored} as stored; this build reads version {current} (it could not be upcast)"
            ))
            .red()
            .to_string()
        }
        (stored, _) => format!("version {stored}"),
    };
    outln!("{}{}", label("payload"), version);
    outln!("{}\n{}", label("data"), indented_json(&event.data));
    if !event.metadata.extra.is_empty() {
        outln!(
            "{}\n{}",
            label("extras"),
            indented_json(&Value::Object(event.metadata.extra.clone()))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_retried(dispatched: &Dispatched) {
    match &dispatched.event.processing_error {
        None => outln!(
            "{} event {} ({}) is now processed",
            style("✓").green().bold(),
            dispatched.event.position,
            dispatched.event.event_type
        ),
        Some(error) => outln!(
            "{} event {} ({}) failed again: {} {}",
            style("✗").red().bold(),
            dispatched.event.position,
            dispatched.event.event_type,
            error.code,
            error.message
        ),
    }
}

async fn retry(url: &str, args: RetryArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    if let Some(event) = args.event {
        let event = find(&store, event).await?;
        let dispatched = store.retry(event.event_id, &app::cli_operator()).await?;
        if args.json.json {
            ui::print_json(&dispatched)?;
        } else {
            print_retried(&dispatched);
        }
        return Ok(if dispatched.event.is_failed() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let selection = RetrySelection {
        code: args.code,
        stream_type: args.stream_type,
    };
    let progress = ui::Progress::new("retrying");
    let report = store
        .retry_failed(&selection, &app::cli_operator(), &mut |done, total| {
            progress.update(done, total)
        })
        .await;
    progress.finish();
    let report = report?;
    if args.json.json {
        ui::print_json(&report)?;
    } else if report.n_retried == 0 {
        outln!("{}", style("no failed events match").dim());
    } else {
        for dispatched in &report.still_failed {
            print_retried(dispatched);
        }
        outln!(
            "retried {}: {} now processed, {} still failed",
            ui::plural(report.n_retried, "event", "events"),
            ui::count(report.n_fixed),
            ui::count(report.still_failed.len() as u64)
        );
    }
    Ok(if report.still_failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn skip(url: &str, args: SkipArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let event = find(&store, args.event).await?;
    let skipped = store
        .skip(event.event_id, &app::cli_operator(), args.reason)
        .await?;
    if args.json.json {
        ui::print_json(&skipped)?;
    } else {
        outln!(
            "{} event {} ({}) is skipped: it will not be applied, and replay skips it too",
            style("✓").green().bold(),
            skipped.event.position,
            skipped.event.event_type
        );
    }
    Ok(ExitCode::SUCCESS)
}
