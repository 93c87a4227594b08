//! Email under load and crashes, on both backends: client tasks bootstrap organizations
//! (and invite people into them) through `cairn serve` over HTTP while the test kills
//! the server with SIGKILL a few times and starts it again, mail going to a real SMTP
//! server.
//!
//! Afterwards every bootstrap has completed, every email the log recorded reached the
//! server at least once, and the copies sent twice (a kill between the server's
//! acceptance and the commit of the send's record) stay within what the README
//! promises: at most [`DUPLICATES_PER_KILL`] per kill, each first copy accepted within
//! [`WINDOW_MS`] of a kill. The test prints the duplicates and how long before each kill
//! their first copy was accepted: the in-doubt window under load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cairn_log::EventFilter;
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::Position;
use tokio::sync::RwLock;

use crate::common::server::Server;
use crate::common::token;

/// Duplicates allowed per kill, as the README's "Guarantees" states them.
const DUPLICATES_PER_KILL: usize = 8;
/// How long before a kill a duplicate's first copy may have been accepted, as the
/// README states it.
const WINDOW_MS: i128 = 500;

/// The load and the kills.
#[derive(Debug, Clone, Copy)]
struct Workload {
    /// Client tasks bootstrapping at once.
    clients: usize,
    /// Invitees per bootstrap, besides its admin.
    invitees: usize,
    /// Whether each client also invites someone into an organization it bootstrapped,
    /// after each bootstrap.
    invites: bool,
    /// Kills of the server.
    kills: usize,
    /// When each kill lands after the restarted server is ready and the clients' burst
    /// begins: from the first to the second, spread over the rounds.
    kill_after: (Duration, Duration),
}

/// A `cairn serve` with a short workflow lease: its process and base URL.
async fn serve(url: &str, mail: &str) -> anyhow::Result<(tokio::process::Child, String)> {
    let server = Server::with_short_lease(url, mail).await?;
    Ok((server.child, server.base))
}

fn bootstrap_body(slug: &str, invitees: usize) -> String {
    let invitees: Vec<serde_json::Value> = (0..invitees)
        .map(|k| {
            serde_json::json!({"email": format!("i{k}.{slug}@example.org"), "name": format!("Invitee {k}"), "roles": ["clinician"]})
        })
        .collect();
    serde_json::json!({
        "organization": {"name": "Sunrise Care", "slug": slug, "sender_domain": "mail.sunrise.example.co.uk"},
        "admin": {"email": format!("admin.{slug}@example.com"), "name": "Ada Lovelace"},
        "invitees": invitees,
    })
    .to_string()
}

/// Runs the workload against a fresh server and checks the README's bound on the
/// duplicates it leaves.
async fn check(t: &TestDb, workload: Workload) -> anyhow::Result<()> {
    let began = Instant::now();
    let sink = SmtpSink::start(SinkOptions::default()).await?;
    let mail = sink.url();
    let (mut server, base) = serve(t.url(), &mail).await?;
    let token = token(t.url(), &["--platform-admin", "ops"]).await?;

    // The clients send while `bursting` is set, through whichever server is up; a
    // request the kill cut off, or one the server refused, is simply not counted.
    let base = Arc::new(RwLock::new(base));
    let bursting = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let invited = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..workload.clients {
        let (base, bursting, stop, accepted, invited, token) = (
            base.clone(),
            bursting.clone(),
            stop.clone(),
            accepted.clone(),
            invited.clone(),
            token.clone(),
        );
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?;
            let mut orgs: Vec<String> = Vec::new();
            let mut index = 0;
            while !stop.load(Ordering::SeqCst) {
                if !bursting.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let base = base.read().await.clone();
                let slug = format!("load-{client}-{index}");
                index += 1;
                let sent = http
                    .post(format!("{base}/v1/organizations"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(bootstrap_body(&slug, workload.invitees))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 202 => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let answer: serde_json::Value = response.json().await.unwrap_or_default();
                        if let Some(org) = answer["org_id"].as_str() {
                            orgs.push(org.to_owned());
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                // An invitation into an organization bootstrapped a while ago (its
                // bootstrap has likely completed).
                if workload.invites && orgs.len() > 2 {
                    let org = &orgs[index % (orgs.len() - 2)];
                    let invite = serde_json::json!({
                        "email": format!("v{index}.{client}@example.org"), "name": "Invited", "roles": ["viewer"]
                    });
                    if let Ok(response) = http
                        .post(format!("{base}/v1/organizations/{org}/invitations"))
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(invite.to_string())
                        .send()
                        .await
                        && response.status() == 202
                    {
                        invited.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            anyhow::Ok(())
        });
    }

    let mut kills = Vec::new();
    let (earliest, latest) = workload.kill_after;
    for round in 0..workload.kills {
        let share = if workload.kills > 1 {
            // Spread evenly, in a shuffled order.
            ((round * 5) % workload.kills) as f64 / (workload.kills - 1) as f64
        } else {
            0.5
        };
        let after = earliest + (latest - earliest).mul_f64(share);
        bursting.store(true, Ordering::SeqCst);
        tokio::time::sleep(after).await;
        server.kill().await?;
        kills.push(SystemTime::now());
        bursting.store(false, Ordering::SeqCst);
        let (next, next_base) = serve(t.url(), &mail).await?;
        server = next;
        *base.write().await = next_base;
    }
    bursting.store(true, Ordering::SeqCst);
    tokio::time::sleep(latest).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = clients.join_next().await {
        done??;
    }
    let loaded = began.elapsed();

    // The last server finishes every bootstrap and every invitation.
    let deadline = Instant::now() + Duration::from_secs(120);
    let open = loop {
        let mut reader = t.db().reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT kind, status, COUNT(*) AS n FROM workflow_runs \
                 WHERE kind <> 'invitation_expiry' GROUP BY kind, status",
                cairn_log::args![],
            )
            .await?;
        let mut statuses = BTreeMap::new();
        for row in &rows {
            statuses.insert(
                (row.get::<String>("kind")?, row.get::<String>("status")?),
                row.get::<i64>("n")?,
            );
        }
        let open: i64 = statuses
            .iter()
            .filter(|((_, status), _)| status.as_str() != "completed")
            .map(|(_, n)| n)
            .sum();
        if open == 0 || Instant::now() > deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.kill().await?;
    assert!(
        open.keys().all(|(_, status)| status == "completed"),
        "every bootstrap and invitation completes: {open:?}"
    );
    let completed = open
        .get(&("organization_bootstrap".to_owned(), "completed".to_owned()))
        .copied()
        .unwrap_or(0);
    let accepted = accepted.load(Ordering::SeqCst);
    assert!(
        usize::try_from(completed)? >= accepted,
        "{completed} bootstraps completed, {accepted} were accepted"
    );

    // What the log says was sent.
    let mut recorded = BTreeSet::new();
    for event in &events_of(t, "invitation.sent").await? {
        let id = event.data["message_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no message_id in {}", event.data))?;
        recorded.insert(id.to_owned());
    }
    let invited = invited.load(Ordering::SeqCst);
    assert!(
        recorded.len() >= usize::try_from(completed)? * (workload.invitees + 1) + invited,
        "{} invitations sent for {completed} bootstraps of {} and {invited} invites",
        recorded.len(),
        workload.invitees + 1
    );

    // What the server received.
    let received = sink.accepted();

    // How long each email the log recorded as sent waited, from the server's
    // acceptance of its first copy to the run of its record's unit: a measurement
    // (printed), for the checks on duplicates below.
    // The last copy of each: the one whose send the log recorded.
    let last_accepted: BTreeMap<&str, SystemTime> = received
        .iter()
        .map(|(at, message)| (message.message_id.as_str(), *at))
        .collect();
    let mut lags: Vec<i64> = Vec::new();
    for event in &events_of(t, "workflow.step_completed").await? {
        if let Some(message_id) = event.data["result"]["message_id"].as_str()
            && let Some(accepted) = last_accepted.get(message_id)
        {
            let accepted = chrono::DateTime::<chrono::Utc>::from(*accepted);
            lags.push((event.created_at - accepted).num_milliseconds());
        }
    }
    lags.sort();
    let at = |p: f64| {
        lags.get(((lags.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "{}: from the acceptance of its last copy to the record's unit, {} sends: p50 {} ms, p99 {} ms, max {} ms, {} over {WINDOW_MS} ms",
        t.backend(),
        lags.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        lags.iter()
            .filter(|lag| i128::from(**lag) > WINDOW_MS)
            .count()
    );
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

    // Each copy but the last was followed by another: it was in doubt at a kill, which
    // is the one nearest to it. The gap is positive when the copy was accepted before
    // the kill, negative when the server stored it only after (the whole message had
    // gone out before the kill; the reply never came back). A message sent three
    // times was in doubt at two kills, once at each.
    let mut gaps: Vec<i128> = Vec::new();
    let mut per_kill = vec![0usize; kills.len()];
    for times in copies.values().filter(|times| times.len() > 1) {
        for &sent in &times[..times.len() - 1] {
            let nearest = kills
                .iter()
                .enumerate()
                .map(|(index, kill)| match kill.duration_since(sent) {
                    Ok(before) => (
                        index,
                        i128::try_from(before.as_millis()).unwrap_or(i128::MAX),
                    ),
                    Err(after) => (
                        index,
                        -i128::try_from(after.duration().as_millis()).unwrap_or(i128::MAX),
                    ),
                })
                .min_by_key(|(_, gap)| gap.abs());
            if let Some((index, gap)) = nearest {
                per_kill[index] += 1;
                gaps.push(gap);
            } else {
                gaps.push(i128::MAX);
            }
        }
    }
    gaps.sort();
    let duplicates = received.len() - copies.len();
    eprintln!(
        "{}: {completed} bootstraps of {} emails ({accepted} accepted over HTTP by {} clients \
         in {loaded:?}), {invited} invites, {} kills, {} emails delivered, {} distinct, \
         {duplicates} sent again ({per_kill:?} per kill); each copy that had to be sent again \
         was accepted {gaps:?} ms before the nearest kill",
        t.backend(),
        workload.invitees + 1,
        workload.clients,
        workload.kills,
        received.len(),
        copies.len(),
    );
    assert!(
        gaps.iter().all(|gap| gap.abs() <= WINDOW_MS),
        "an email was sent again though its earlier copy was accepted more than \
         {WINDOW_MS} ms away from any kill: {gaps:?}"
    );
    assert!(
        per_kill.iter().all(|n| *n <= DUPLICATES_PER_KILL),
        "more than {DUPLICATES_PER_KILL} emails sent twice at a kill: {per_kill:?}"
    );
    sink.stop().await;
    Ok(())
}

backend_test!(
    bootstraps_under_load_through_kills_mail_everyone_with_few_duplicates,
    |t: TestDb| async move {
        check(
            &t,
            Workload {
                clients: 3,
                invitees: 2,
                invites: false,
                kills: 4,
                kill_after: (Duration::from_millis(1_500), Duration::from_millis(2_200)),
            },
        )
        .await
    }
);

// Issue 20, point 5: three clients bootstrapping with 8 invitees and inviting, kills
// 0.4 to 1.6 s into a burst, left more duplicates than the README allows, some first
// accepted over a second before the kill.
backend_test!(
    issue_20_bursts_of_large_bootstraps_through_kills_stay_within_the_readme_bound,
    |t: TestDb| async move {
        check(
            &t,
            Workload {
                clients: 3,
                invitees: 8,
                invites: true,
                kills: 6,
                kill_after: (Duration::from_millis(400), Duration::from_millis(1_600)),
            },
        )
        .await
    }
);

/// Every event of one type in the log, read a page at a time.
async fn events_of(t: &TestDb, event_type: &str) -> anyhow::Result<Vec<cairn_log::RecordedEvent>> {
    let mut reader = t.db().reader().await?;
    let mut events = Vec::new();
    let mut after = Position::START;
    loop {
        let filter = EventFilter {
            after,
            event_type: Some(cairn_types::EventType::parse(event_type)?),
            limit: Some(1_000),
            ..EventFilter::default()
        };
        let page = reader.conn().read_events(&filter).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        events.extend(page);
    }
    Ok(events)
}
