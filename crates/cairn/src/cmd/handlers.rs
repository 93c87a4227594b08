//! `cairn handlers …` and `cairn streams held`

use std::process::ExitCode;

use console::style;

use cairn_dispatch::{HandlerRoute, Route};
use cairn_log::HoldCause;
use cairn_types::Position;

use crate::app;
use crate::cli::{HandlersCommand, HeldArgs, JsonFlag, RouteArgs, StreamsCommand};
use crate::ui;

pub async fn run(url: &str, command: HandlersCommand) -> anyhow::Result<ExitCode> {
    match command {
        HandlersCommand::List(args) => list(url, args).await,
        HandlersCommand::Pause(args) => pause(url, args).await,
        HandlersCommand::Resume(args) => resume(url, args).await,
    }
}

pub async fn streams(url: &str, command: StreamsCommand) -> anyhow::Result<ExitCode> {
    match command {
        StreamsCommand::Held(args) => held(url, args).await,
    }
}

/// `who, since when: why`.
fn who_why(by: &str, since: chrono::DateTime<chrono::Utc>, reason: &str) -> String {
    format!(
        "by {by} since {}: {reason}",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

async fn list(url: &str, args: JsonFlag) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let paused = store.paused_routes().await?;
    let registry = store.dispatcher().registry();
    let routes: Vec<serde_json::Value> = registry
        .routes()
        .filter_map(|(stream_type, route)| match route {
            Route::NoOp { .. } => None,
            Route::Router(router) => Some(serde_json::json!({
                "stream_type": stream_type,
                "event_types": router.event_types().collect::<Vec<_>>(),
                "holds_streams": router.holds(),
                "not_pausable": router.not_pausable(),
                "paused": paused.iter().filter(|p| p.route.stream_type == *stream_type).collect::<Vec<_>>(),
            })),
        })
        .collect();
    if args.json {
        ui::print_json(&routes)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&["STREAM TYPE", "EVENT TYPES", "ON FAILURE", "STATE"]);
    for (stream_type, route) in registry.routes() {
        let Route::Router(router) = route else {
            continue;
        };
        let pauses: Vec<String> = paused
            .iter()
            .filter(|p| p.route.stream_type == *stream_type)
            .map(|p| {
                let what = p
                    .route
                    .event_type
                    .as_ref()
                    .map_or_else(|| "paused".to_owned(), |t| format!("{t} paused"));
                format!("{what} {}", who_why(&p.paused_by, p.since, &p.reason))
            })
            .collect();
        let state = if pauses.is_empty() {
            style("applying").green().to_string()
        } else {
            style(pauses.join("\n")).yellow().to_string()
        };
        table.add_row(vec![
            stream_type.to_string(),
            router.event_types().count().to_string(),
            if router.holds() {
                "holds its stream".to_owned()
            } else {
                "fails alone".to_owned()
            },
            state,
        ]);
    }
    outln!("{table}");
    Ok(ExitCode::SUCCESS)
}

fn route_of(args: &RouteArgs) -> HandlerRoute {
    HandlerRoute {
        stream_type: args.stream_type.clone(),
        event_type: args.event_type.clone(),
    }
}

async fn pause(url: &str, args: RouteArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let pause = store
        .pause_route(route_of(&args), &app::cli_operator(), args.reason.clone())
        .await?;
    if args.json.json {
        ui::print_json(&pause)?;
    } else {
        outln!(
            "{} handler route {} is paused (position {}): its events are stored and held until `cairn handlers resume {}`",
            style("⏸").yellow().bold(),
            pause.route,
            pause.position,
            args.stream_type
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn resume(url: &str, args: RouteArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let resumed = store
        .resume_route(route_of(&args), &app::cli_operator(), args.reason.clone())
        .await?;
    if args.json.json {
        ui::print_json(&resumed)?;
    } else {
        outln!(
            "{} handler route {} is resumed: {} released",
            style("▶").green().bold(),
            resumed.route,
            ui::plural(resumed.n_streams_released, "stream", "streams")
        );
        if resumed.n_streams_still_held > 0 {
            outln!(
                "  {} still held behind an event that failed as it was released: cairn streams held",
                ui::plural(resumed.n_streams_still_held, "stream", "streams")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn held(url: &str, args: HeldArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let mut reader = store.db().reader().await?;
    let held =
        cairn_dispatch::held_streams(&mut reader.conn(), Position::START, args.limit).await?;
    let paused = store.paused_routes().await?;
    if args.json.json {
        ui::print_json(&held)?;
        return Ok(ExitCode::SUCCESS);
    }
    if held.is_empty() {
        outln!("{}", style("no stream is held").green());
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&["STREAM", "WAITS BEHIND", "WHY", "HELD", "SINCE (UTC)"]);
    for stream in &held {
        let why = match (&stream.cause, &stream.behind.error) {
            (HoldCause::Failed, Some(error)) => format!("failed {}: {}", error.code, error.message),
            (HoldCause::Failed, None) => "failed".to_owned(),
            (HoldCause::Paused, _) => {
                let event = cairn_dispatch::HandlerRoute {
                    stream_type: stream.stream_type.clone(),
                    event_type: Some(stream.behind.event_type.clone()),
                };
                match paused
                    .get(&event)
                    .or_else(|| paused.get(&HandlerRoute::stream_type(stream.stream_type.clone())))
                {
                    Some(pause) => format!(
                        "route {} paused {}",
                        pause.route,
                        who_why(&pause.paused_by, pause.since, &pause.reason)
                    ),
                    None => "its route was paused".to_owned(),
                }
            }
        };
        table.add_row(vec![
            format!("{} {}", stream.stream_type, ui::short_id(&stream.stream_id)),
            format!("{} {}", stream.behind.position, stream.behind.event_type),
            why,
            stream.n_held.to_string(),
            stream.since.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]);
    }
    outln!("{table}");
    outln!(
        "{}: retry or skip the event they wait behind (cairn events retry|skip POS), or resume its route (cairn handlers resume)",
        ui::plural(held.len() as u64, "held stream", "held streams")
    );
    Ok(ExitCode::SUCCESS)
}
