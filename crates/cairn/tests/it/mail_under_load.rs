//! Email under load and crashes, on both backends: client tasks bootstrap organizations
//! through `cairn serve` over HTTP while the test kills the server with SIGKILL a few
//! times and starts it again, mail going to a real SMTP server.
//!
//! Afterwards every bootstrap has completed, every email it recorded reached the server
//! at least once, and the copies sent twice (a kill between the server's acceptance and
//! the commit of the send's record) are few, each pair under one Message-ID. The test
//! prints the duplicates and how long before each kill their first copy was accepted:
//! the in-doubt window under load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cairn_log::EventFilter;
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::Position;
use tokio::sync::RwLock;

use crate::common::server::Server;
use crate::common::{bootstrap_request, token};

/// Client tasks bootstrapping at once.
const CLIENTS: usize = 3;
/// Kills of the server.
const KILLS: usize = 4;
/// How long the server runs between kills, at least (a random part is added).
const RUNNING: Duration = Duration::from_millis(1_500);
/// Duplicates allowed per kill: the sends whose record had not committed when the kill
/// landed (up to the engine's concurrency could be in flight at once).
const DUPLICATES_PER_KILL: usize = 12;
/// How far from a kill the first copy of a duplicate may have been accepted: the
/// in-doubt window under load, with room for a slow test machine.
const WINDOW_MS: i128 = 500;

/// A `cairn serve` with a short workflow lease: its process and base URL.
async fn serve(url: &str, mail: &str) -> anyhow::Result<(tokio::process::Child, String)> {
    let server = Server::with_short_lease(url, mail).await?;
    Ok((server.child, server.base))
}

backend_test!(
    bootstraps_under_load_through_kills_mail_everyone_with_few_duplicates,
    |t: TestDb| async move {
        let began = Instant::now();
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let mail = sink.url();
        let (mut server, base) = serve(t.url(), &mail).await?;
        let token = token(t.url(), &["--platform-admin", "ops"]).await?;

        // The clients bootstrap through whichever server is up; a request the kill cut
        // off, or one the server refused, is simply not counted.
        let base = Arc::new(RwLock::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..CLIENTS {
            let (base, stop, accepted, token) =
                (base.clone(), stop.clone(), accepted.clone(), token.clone());
            clients.spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()?;
                let mut index = 0;
                while !stop.load(Ordering::SeqCst) {
                    let url = format!("{}/v1/organizations", base.read().await);
                    let slug = format!("load-{client}-{index}");
                    index += 1;
                    let sent = http
                        .post(url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(bootstrap_request(&slug))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 202 => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                anyhow::Ok(())
            });
        }

        let mut kills = Vec::new();
        for round in 0..KILLS {
            let jitter = Duration::from_millis(((round * 337) % 700) as u64);
            tokio::time::sleep(RUNNING + jitter).await;
            server.kill().await?;
            kills.push(SystemTime::now());
            let (next, next_base) = serve(t.url(), &mail).await?;
            server = next;
            *base.write().await = next_base;
        }
        tokio::time::sleep(RUNNING).await;
        stop.store(true, Ordering::SeqCst);
        while let Some(done) = clients.join_next().await {
            done??;
        }
        let loaded = began.elapsed();

        // The last server finishes every bootstrap.
        let deadline = Instant::now() + Duration::from_secs(60);
        let open = loop {
            let mut reader = t.db().reader().await?;
            let rows = reader
                .conn()
                .fetch_all(
                    "SELECT status, COUNT(*) AS n FROM workflow_runs \
                     WHERE kind = 'organization_bootstrap' GROUP BY status",
                    cairn_log::args![],
                )
                .await?;
            let mut statuses = BTreeMap::new();
            for row in &rows {
                statuses.insert(row.get::<String>("status")?, row.get::<i64>("n")?);
            }
            let open: i64 = statuses
                .iter()
                .filter(|(status, _)| status.as_str() != "completed")
                .map(|(_, n)| n)
                .sum();
            if open == 0 || Instant::now() > deadline {
                break statuses;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        server.kill().await?;
        assert!(
            open.keys().all(|status| status == "completed"),
            "every bootstrap completes: {open:?}"
        );
        let completed = open.get("completed").copied().unwrap_or(0);
        let accepted = accepted.load(Ordering::SeqCst);
        assert!(
            usize::try_from(completed)? >= accepted,
            "{completed} bootstraps completed, {accepted} were accepted"
        );

        // What the log says was sent.
        let mut reader = t.db().reader().await?;
        let mut recorded = BTreeSet::new();
        let mut after = Position::START;
        loop {
            let filter = EventFilter {
                after,
                event_type: Some(cairn_types::EventType::parse("invitation.sent")?),
                limit: Some(1_000),
                ..EventFilter::default()
            };
            let page = reader.conn().read_events(&filter).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for event in &page {
                let id = event.data["message_id"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("no message_id in {}", event.data))?;
                recorded.insert(id.to_owned());
            }
        }
        assert_eq!(
            recorded.len(),
            usize::try_from(completed)? * 3,
            "three invitations per bootstrap"
        );

        // What the server received.
        let received = sink.accepted();
        let mut copies: BTreeMap<&str, Vec<SystemTime>> = BTreeMap::new();
        let mut links: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        for (at, message) in &received {
            copies.entry(&message.message_id).or_default().push(*at);
            // A resend is the same invitation under the same Message-ID: the same link
            // (its expiry, counted from the attempt, may read a minute later).
            let link = message.body.lines().find(|line| line.contains("?token="));
            assert!(link.is_some(), "no link in {}", message.body);
            let first = links.entry(&message.message_id).or_insert(link);
            assert_eq!(*first, link, "{} changed its link", message.message_id);
        }
        let missing: Vec<&String> = recorded
            .iter()
            .filter(|id| !copies.contains_key(id.as_str()))
            .collect();
        assert!(missing.is_empty(), "never delivered: {missing:?}");
        let unknown: Vec<&&str> = copies
            .keys()
            .filter(|id| !recorded.contains(**id))
            .collect();
        assert!(unknown.is_empty(), "delivered, never recorded: {unknown:?}");

        // Each duplicate's first copy against the kill nearest to it: positive when it
        // was accepted before the kill, negative when the server stored it only after
        // (the whole message had gone out before the kill; the reply never came back).
        let mut gaps: Vec<i128> = Vec::new();
        for times in copies.values().filter(|times| times.len() > 1) {
            let first = times[0];
            let gap = kills
                .iter()
                .map(|kill| match kill.duration_since(first) {
                    Ok(before) => i128::try_from(before.as_millis()).unwrap_or(i128::MAX),
                    Err(after) => {
                        -i128::try_from(after.duration().as_millis()).unwrap_or(i128::MAX)
                    }
                })
                .min_by_key(|gap| gap.abs());
            gaps.push(gap.unwrap_or(i128::MAX));
        }
        gaps.sort();
        let duplicates = received.len() - copies.len();
        eprintln!(
            "{}: {} bootstraps ({accepted} accepted over HTTP by {CLIENTS} clients in {:?}), \
             {KILLS} kills, {} emails delivered, {} distinct, {duplicates} sent twice; \
             their first copies were accepted {gaps:?} ms before the nearest kill",
            t.backend(),
            completed,
            loaded,
            received.len(),
            copies.len(),
        );
        assert!(
            gaps.iter().all(|gap| gap.abs() <= WINDOW_MS),
            "an email was sent twice though its first copy was accepted more than \
             {WINDOW_MS} ms away from any kill: {gaps:?}"
        );
        assert!(
            duplicates <= KILLS * DUPLICATES_PER_KILL,
            "{duplicates} emails sent twice in {KILLS} kills: {gaps:?}"
        );
        sink.stop().await;
        Ok(())
    }
);
