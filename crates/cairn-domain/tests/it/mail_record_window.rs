//! How long an email accepted by an SMTP server stays unrecorded while commands keep
//! the log writer busy, on both backends.
//!
//! Over SMTP a crash re-sends every email whose "sent" record has not committed yet, so
//! that time is the window in which a crash duplicates an email. Client tasks
//! bootstrap organizations (three emails each) in a loop while the engine sends them
//! to a real SMTP server; each email's window runs from the moment the server accepted
//! the message (stored it, just before its reply) to the commit of the step's record,
//! seen on the log's head watch. The test checks that every email was sent, recorded
//! and seen committed; the figures are printed (`--no-capture`) and are a measurement,
//! not a check: the bound itself (one unit and one commit) is the writer's, tested
//! deterministically by `urgent_work_cuts_a_batch_short_*` in cairn-log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_domain::{BootstrapRequest, CommandContext};
use cairn_log::EventFilter;
use cairn_policy::Principal;
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::Position;
use serde_json::json;

use crate::common;

/// Client tasks issuing commands.
const CLIENTS: usize = 4;
/// How long they do.
const LOAD: Duration = Duration::from_secs(6);

fn request(slug: &str) -> anyhow::Result<BootstrapRequest> {
    Ok(serde_json::from_value(json!({
        "organization": {"name": "Window Care", "slug": slug, "sender_domain": "mail.window.example.com"},
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]},
            {"email": "alan@example.com", "name": "Alan Turing", "roles": ["viewer"]}
        ]
    }))?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

backend_test!(
    the_record_of_an_accepted_email_does_not_wait_behind_commands,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let common::World { t, domain } = common::smtp_world(t, &sink).await?;

        // Every commit this process makes, as the head watch reports it.
        let commits: Arc<Mutex<Vec<(SystemTime, Position)>>> = Arc::default();
        let mut head = t.db().head_watch();
        let watcher = {
            let commits = commits.clone();
            tokio::spawn(async move {
                while head.changed().await.is_ok() {
                    let position = *head.borrow_and_update();
                    commits
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((SystemTime::now(), position));
                }
            })
        };

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let engine = {
            let engine = domain.engine().clone();
            tokio::spawn(async move {
                engine
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await;
            })
        };

        let until = Instant::now() + LOAD;
        let load_ends = SystemTime::now() + LOAD;
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..CLIENTS {
            let domain = domain.clone();
            clients.spawn(async move {
                let ctx = CommandContext::new(Principal::PlatformAdmin {
                    name: format!("client-{client}"),
                });
                let mut started = Vec::new();
                let mut index = 0;
                while Instant::now() < until {
                    let slug = format!("window-{client}-{index}");
                    index += 1;
                    let accepted = domain.bootstrap(&ctx, &request(&slug)?).await?;
                    started.push(accepted.workflow_id);
                }
                anyhow::Ok(started)
            });
        }
        let mut runs = Vec::new();
        while let Some(done) = clients.join_next().await {
            runs.extend(done??);
        }

        // Every run finishes.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut reader = t.db().reader().await?;
            let rows = reader
                .conn()
                .fetch_all(
                    "SELECT COUNT(*) AS n FROM workflow_runs \
                     WHERE kind = 'organization_bootstrap' AND status <> 'completed'",
                    cairn_log::args![],
                )
                .await?;
            let open = rows.first().map(|row| row.get::<i64>("n")).transpose()?;
            if open == Some(0) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{open:?} bootstraps unfinished after a minute"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop.send(());
        engine.await?;
        watcher.abort();

        let mut reader = t.db().reader().await?;
        let mut events = Vec::new();
        loop {
            let filter = EventFilter {
                after: events
                    .last()
                    .map_or(Position::START, |e: &cairn_log::RecordedEvent| e.position),
                event_type: Some(cairn_types::EventType::parse("workflow.step_completed")?),
                limit: Some(1_000),
                ..EventFilter::default()
            };
            let page = reader.conn().read_events(&filter).await?;
            if page.is_empty() {
                break;
            }
            events.extend(page);
        }
        let commits = commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // When the server accepted each message (stored it, just before its reply).
        let accepted: HashMap<String, SystemTime> = sink
            .accepted()
            .into_iter()
            .map(|(at, message)| (message.message_id, at))
            .collect();
        let mut windows = Vec::new();
        // Those accepted while the clients were still issuing commands.
        let mut loaded = Vec::new();
        for event in &events {
            let is_send = event.event_type.as_str() == "workflow.step_completed"
                && event.data["step"]
                    .as_str()
                    .is_some_and(|step| step.starts_with("send_invitation:"));
            if !is_send {
                continue;
            }
            let Some(message_id) = event.data["result"]["message_id"].as_str() else {
                anyhow::bail!("a send without a Message-ID: {}", event.data);
            };
            let Some(sent) = accepted.get(message_id) else {
                anyhow::bail!("{message_id} was recorded and never sent");
            };
            let Some((committed, _)) = commits
                .iter()
                .find(|(_, position)| *position >= event.position)
            else {
                anyhow::bail!("no commit seen for position {}", event.position);
            };
            let window = committed.duration_since(*sent).unwrap_or_default();
            if *sent < load_ends {
                loaded.push(window);
            }
            windows.push(window);
        }
        windows.sort();
        loaded.sort();
        let emails = windows.len();
        assert_eq!(emails, runs.len() * 3, "three emails per bootstrap");
        let (p50, p99, max) = (
            percentile(&windows, 0.5),
            percentile(&windows, 0.99),
            percentile(&windows, 1.0),
        );
        eprintln!(
            "{}: {} bootstraps by {CLIENTS} clients in {LOAD:?}, {emails} emails; \
             from acceptance to the record's commit: p50 {p50:?}, p99 {p99:?}, max {max:?}; \
             the {} accepted under load: p50 {:?}, p99 {:?}, max {:?}",
            t.backend(),
            runs.len(),
            loaded.len(),
            percentile(&loaded, 0.5),
            percentile(&loaded, 0.99),
            percentile(&loaded, 1.0),
        );
        sink.stop().await;
        Ok(())
    }
);
