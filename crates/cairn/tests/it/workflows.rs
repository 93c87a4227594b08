//! Workflows through the command line, on both backends: the demo, bootstrap and
//! accept commands, a process killed mid-workflow and restarted, and two processes
//! sharing one database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_log::EventFilter;
use cairn_testkit::{SinkOptions, SmtpSink, TestDb, backend_test};
use expect_test::expect;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::common::{
    append, assert_exit, bootstrap_request, cairn, cairn_in, json_of, new_id, outbox, redact,
    stderr, stdout,
};

/// Starts bootstraps with the command only; no engine runs them yet.
async fn start_bootstraps(url: &str, n: usize, prefix: &str) -> Vec<Value> {
    let mut accepted = Vec::new();
    for index in 0..n {
        let request = bootstrap_request(&format!("{prefix}-{index}"));
        let output = cairn_in(
            url,
            &["org", "bootstrap", "--request", "-", "--json"],
            &[],
            Some(&request),
        )
        .await;
        assert_exit(&output, 0);
        accepted.push(json_of(&output));
    }
    accepted
}

async fn bootstrap_statuses(t: &TestDb) -> anyhow::Result<Vec<String>> {
    let mut reader = t.db().reader().await?;
    let rows = reader
        .conn()
        .fetch_all(
            "SELECT status FROM workflow_runs WHERE kind = 'organization_bootstrap' ORDER BY id",
            cairn_log::args![],
        )
        .await?;
    rows.iter()
        .map(|row| Ok(row.get::<String>("status")?))
        .collect()
}

/// `cairn workflows run` in a process of its own, named `worker`, driving at most
/// `concurrency` runs at once.
fn spawn_engine(
    t: &TestDb,
    sink: &SmtpSink,
    worker: &str,
    concurrency: usize,
) -> std::io::Result<tokio::process::Child> {
    crate::common::cairn_tokio()
        .args([
            "--database-url",
            t.url(),
            "--mail-url",
            &sink.url(),
            "--worker-id",
            worker,
            "workflows",
            "run",
            "--concurrency",
            &concurrency.to_string(),
        ])
        .env_remove("CAIRN_DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// Waits until every bootstrap run has completed (at most 90 s).
async fn wait_for_bootstraps(t: &TestDb) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !bootstrap_statuses(t)
        .await?
        .iter()
        .all(|s| s == "completed")
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not every bootstrap completed in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[test]
fn the_demo_runs_on_the_embedded_default() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let run = |json: bool| {
        let mut command = crate::common::cairn_std();
        command
            .arg("demo")
            .current_dir(dir.path())
            .env_remove("CAIRN_DATABASE_URL")
            .env_remove("CAIRN_MAIL_URL");
        if json {
            command.arg("--json");
        } else {
            command.env("NO_COLOR", "1");
        }
        command.output().expect("cairn runs")
    };
    let human = run(false);
    assert_exit(&human, 0);
    expect![[r#"
        cairn demo · bootstrapping a sample organization on sqlite://cairn-data/cairn.db

          Sunrise Care (sunrise-care-[suffix])  ✓ active
            organization [uuid]
            sender       noreply@example.co.uk  (the registrable domain of mail.sunrise.example.co.uk)
            people       Ada Lovelace <ada@example.com>, active: admin
                         Grace Hopper <grace@example.com>, invited: roles granted when the invitation is accepted
                         Alan Turing <alan@example.org>, invited: roles granted when the invitation is accepted

          Workflow organization_bootstrap [uuid]  ✓ completed in [duration]
            ✓ create_organization                           1 attempt [duration]
            ✓ create_admin                                  1 attempt [duration]
            ✓ invite:[uuid]   1 attempt [duration]
            ✓ invite:[uuid]   1 attempt [duration]
            ✓ send_invitation:[uuid]  1 attempt [duration]
            ✓ record_invitation:[uuid]  1 attempt [duration]
            ✓ send_invitation:[uuid]  1 attempt [duration]
            ✓ record_invitation:[uuid]  1 attempt [duration]
            ✓ send_invitation:[uuid]  1 attempt [duration]
            ✓ record_invitation:[uuid]  1 attempt [duration]
            ✓ complete                                      1 attempt [duration]
            slowest step: [step] ([duration])

          Emails (outbox:cairn-data/outbox)
            ✉ ada@example.com        You're invited to join Sunrise Care on cairn
              cairn-data/outbox/invitation-[uuid]-1@example.co.uk.eml
            ✉ grace@example.com      You're invited to join Sunrise Care on cairn
              cairn-data/outbox/invitation-[uuid]-1@example.co.uk.eml
            ✉ alan@example.org       You're invited to join Sunrise Care on cairn
              cairn-data/outbox/invitation-[uuid]-1@example.co.uk.eml

          Events of correlation [uuid] (35, in order)
             POS   TIME (UTC)     EVENT TYPE                         STREAM                       STATUS
            ──────────────────────────────────────────────────────────────────────────────────────────────
             1     [time]         organization.bootstrap.initiated   organization …[id]           applied
             2     [time]         workflow.started                   workflow …[id]               applied
             3     [time]         organization.created               organization …[id]           applied
             4     [time]         workflow.step_completed            workflow …[id]               applied
             5     [time]         user.created                       user …[id]                   applied
             6     [time]         user.role_assigned                 user …[id]                   applied
             7     [time]         workflow.step_completed            workflow …[id]               applied
             8     [time]         user.invited                       user …[id]                   applied
             9     [time]         workflow.step_completed            workflow …[id]               applied
             10    [time]         user.invited                       user …[id]                   applied
             11    [time]         workflow.step_completed            workflow …[id]               applied
             12    [time]         workflow.step_started              workflow …[id]               applied
             13    [time]         workflow.step_completed            workflow …[id]               applied
             14    [time]         invitation.sent                    invitation …[id]             applied
             15    [time]         workflow.started                   workflow …[id]               applied
             16    [time]         workflow.step_completed            workflow …[id]               applied
             17    [time]         workflow.step_started              workflow …[id]               applied
             18    [time]         workflow.step_completed            workflow …[id]               applied
             19    [time]         invitation.sent                    invitation …[id]             applied
             20    [time]         workflow.started                   workflow …[id]               applied
             21    [time]         workflow.step_completed            workflow …[id]               applied
             22    [time]         workflow.step_started              workflow …[id]               applied
             23    [time]         workflow.step_completed            workflow …[id]               applied
             24    [time]         invitation.sent                    invitation …[id]             applied
             25    [time]         workflow.started                   workflow …[id]               applied
             26    [time]         workflow.step_completed            workflow …[id]               applied
             27    [time]         organization.bootstrap.completed   organization …[id]           applied
             28    [time]         workflow.step_completed            workflow …[id]               applied
             29    [time]         workflow.completed                 workflow …[id]               applied
             30    [time]         workflow.step_completed            workflow …[id]               applied
             31    [time]         workflow.timer_started             workflow …[id]               applied
             32    [time]         workflow.step_completed            workflow …[id]               applied
             33    [time]         workflow.timer_started             workflow …[id]               applied
             34    [time]         workflow.step_completed            workflow …[id]               applied
             35    [time]         workflow.timer_started             workflow …[id]               applied

          3 invitation expiry workflows sleep on durable timers until [time].
          Done in [duration]. Next: cairn trace [uuid]  ·  cairn workflows show [uuid]  ·  cairn replay --verify
    "#]].assert_eq(&redact(&stdout(&human)));

    let report = json_of(&run(true));
    assert_eq!(report["organization"]["status"], json!("active"));
    assert_eq!(
        report["organization"]["sender_address"],
        json!("noreply@example.co.uk")
    );
    assert_eq!(report["workflow"]["status"], json!("completed"));
    let emails = report["emails"].as_array().expect("emails");
    assert_eq!(emails.len(), 3);
    for email in emails {
        let path = dir.path().join(email["detail"].as_str().expect("a path"));
        let message =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            message.contains("Subject: You're invited to join Sunrise Care on cairn"),
            "{message}"
        );
    }
    let events = report["events"].as_array().expect("events");
    assert!(events.len() > 25, "{}", events.len());
    assert!(events.iter().all(|e| e["processing_error"].is_null()));
    assert_eq!(report["child_workflows"].as_array().map(Vec::len), Some(3));
}

backend_test!(
    bootstrap_accept_and_inspect_from_the_command_line,
    |t: TestDb| async move {
        let (outbox, mail) = outbox()?;
        let request = bootstrap_request("sunrise-cli");
        let output = cairn_in(
            t.url(),
            &[
                "--mail-url",
                &mail,
                "org",
                "bootstrap",
                "--request",
                "-",
                "--wait",
                "--json",
            ],
            &[],
            Some(&request),
        )
        .await;
        assert_exit(&output, 0);
        let accepted = json_of(&output);
        let workflow_id = accepted["workflow_id"].as_str().expect("an id").to_owned();

        let shown = cairn(t.url(), &["workflows", "show", &workflow_id, "--json"]).await;
        assert_exit(&shown, 0);
        let run = json_of(&shown);
        assert_eq!(run["status"], json!("completed"));
        assert_eq!(run["steps"].as_array().map(Vec::len), Some(11));
        let human = stdout(&cairn(t.url(), &["workflows", "show", &workflow_id]).await);
        assert!(
            human.contains("✓ send_invitation:") && human.contains("✓ completed"),
            "{human}"
        );
        assert!(!human.contains('@'), "no email address in a run: {human}");

        let listed = json_of(
            &cairn(
                t.url(),
                &["workflows", "list", "--status", "completed", "--json"],
            )
            .await,
        );
        assert_eq!(listed.as_array().map(Vec::len), Some(1));
        let all = json_of(&cairn(t.url(), &["workflows", "list", "--json"]).await);
        assert_eq!(
            all.as_array().map(Vec::len),
            Some(4),
            "the bootstrap and three expiry runs"
        );
        let bad = cairn(t.url(), &["workflows", "list", "--status", "done"]).await;
        assert_exit(&bad, 2);
        assert!(
            stderr(&bad).contains(
                "\"done\" is not a workflow status; the statuses are running, compensating"
            ),
            "{}",
            stderr(&bad)
        );

        let grace = std::fs::read_dir(outbox.path())?
            .filter_map(Result::ok)
            .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
            .map(|raw| cairn_testkit::smtp_parse(&raw))
            .find(|message| message.to.contains("grace@"))
            .expect("grace was mailed");
        let start = grace.body.find("token=").expect("a link") + 6;
        let token = &grace.body[start..start + 64];
        let accepted = cairn(t.url(), &["invitations", "accept", token, "--json"]).await;
        assert_exit(&accepted, 0);
        assert!(json_of(&accepted)["user_id"].is_string());
        let again = cairn(t.url(), &["invitations", "accept", token]).await;
        assert_exit(&again, 2);
        assert!(
            stderr(&again).contains("already accepted"),
            "{}",
            stderr(&again)
        );

        let bad_request = r#"{"organization": {"name": "", "slug": "X", "sender_domain": "co.uk"}, "admin": {"email": "nope", "name": "A"}}"#;
        let refused = cairn_in(
            t.url(),
            &["org", "bootstrap", "--request", "-"],
            &[],
            Some(bad_request),
        )
        .await;
        assert_exit(&refused, 2);
        let message = stderr(&refused);
        for field in [
            "organization.name:",
            "organization.slug:",
            "organization.sender_domain:",
            "admin.email:",
        ] {
            assert!(message.contains(field), "missing {field} in {message}");
        }
        let verified = cairn(t.url(), &["replay", "--verify"]).await;
        assert_exit(&verified, 0);
        Ok(())
    }
);

/// Spawns `cairn workflows run --until-idle` that pauses after `pause_after` records,
/// and kills it with SIGKILL there. Returns whether it was killed (false: it finished).
async fn run_and_kill_at(url: &str, mail: &str, pause_after: u64) -> anyhow::Result<bool> {
    run_and_kill(url, mail, "CAIRN_FAULT_PAUSE_AFTER_RECORDS", pause_after).await
}

/// Spawns `cairn workflows run --until-idle` with a fault hook (`hook` set to `n`) and
/// kills it with SIGKILL where the hook pauses it. Returns whether it was killed.
async fn run_and_kill(url: &str, mail: &str, hook: &str, n: u64) -> anyhow::Result<bool> {
    let mut child = crate::common::cairn_tokio()
        .args([
            "--database-url",
            url,
            "--mail-url",
            mail,
            "workflows",
            "run",
            "--until-idle",
        ])
        .env(hook, n.to_string())
        .env("CAIRN_WORKFLOW_LEASE", "0.2")
        .env_remove("CAIRN_DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let paused = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("paused after") {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await??;
    if paused {
        child.kill().await?;
        return Ok(true);
    }
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "the engine process failed: {status}");
    Ok(false)
}

// Kills land at record boundaries: after a step's start, its outcome, a timer. A kill
// between an SMTP server accepting a message and the step's record is the in-doubt
// window; the tests after this one cover it.
backend_test!(
    a_process_killed_at_every_record_boundary_resumes_and_mails_each_invitation_once,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            delay: Duration::from_millis(5),
            ..SinkOptions::default()
        })
        .await?;
        let accepted = start_bootstraps(t.url(), 3, "crash").await;
        let mut kills = 0;
        let mut pause_after = 1;
        for _ in 0..300 {
            if run_and_kill_at(t.url(), &sink.url(), pause_after).await? {
                kills += 1;
                pause_after = pause_after % 4 + 1;
            }
            if bootstrap_statuses(&t)
                .await?
                .iter()
                .all(|s| s == "completed")
            {
                break;
            }
            // Let the killed process's leases lapse.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(bootstrap_statuses(&t).await?, ["completed"; 3]);
        assert!(kills >= 10, "the engine was killed only {kills} times");

        let messages = sink.messages();
        let ids: BTreeSet<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(
            messages.len(),
            9,
            "3 organizations × 3 invitations, each sent once: {:#?}",
            messages
                .iter()
                .map(|m| (&m.to, &m.message_id))
                .collect::<Vec<_>>()
        );
        assert_eq!(ids.len(), 9);

        // Some kills landed inside an email step, after its start was recorded.
        let events = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&EventFilter {
                limit: Some(10_000),
                ..EventFilter::default()
            })
            .await?;
        let mut started: BTreeMap<(String, String), u32> = BTreeMap::new();
        for event in events
            .iter()
            .filter(|e| e.event_type.as_str() == "workflow.step_started")
        {
            *started
                .entry((
                    event.stream_id.to_string(),
                    event.data["step"].as_str().unwrap_or_default().to_owned(),
                ))
                .or_default() += 1;
        }
        assert!(
            started.values().any(|n| *n > 1),
            "no email step was interrupted and resumed in doubt: {kills} kills"
        );
        for org in &accepted {
            assert!(org["org_id"].is_string());
        }
        assert_exit(&cairn(t.url(), &["replay", "--verify"]).await, 0);
        assert_exit(&cairn(t.url(), &["audit", "verify"]).await, 0);
        Ok(())
    }
);

/// Runs the engine, killing it each time it has handed over a new email and not yet
/// recorded it, until the bootstraps complete. Returns how many kills it took.
async fn kill_in_the_in_doubt_window(t: &TestDb, mail: &str) -> anyhow::Result<u32> {
    let mut kills = 0;
    for _ in 0..50 {
        // After a kill, the next process's first effect settles the email in doubt;
        // its second is a new email, and the kill lands there.
        let nth = if kills == 0 { 1 } else { 2 };
        if run_and_kill(t.url(), mail, "CAIRN_FAULT_PAUSE_AFTER_EFFECTS", nth).await? {
            kills += 1;
        }
        if bootstrap_statuses(t)
            .await?
            .iter()
            .all(|s| s == "completed")
        {
            return Ok(kills);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!(
        "the bootstraps did not complete: {:?}",
        bootstrap_statuses(t).await?
    )
}

backend_test!(
    a_kill_after_an_email_reached_the_outbox_settles_it_without_sending_again,
    |t: TestDb| async move {
        let (outbox, mail) = outbox()?;
        start_bootstraps(t.url(), 1, "doubt-outbox").await;
        let kills = kill_in_the_in_doubt_window(&t, &mail).await?;
        assert!(
            kills >= 3,
            "each of the three emails was interrupted: {kills} kills"
        );
        let messages = std::fs::read_dir(outbox.path())?
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".eml"))
            .count();
        assert_eq!(
            messages, 3,
            "each email exactly once, though every send was in doubt"
        );
        assert_exit(&cairn(t.url(), &["replay", "--verify"]).await, 0);
        Ok(())
    }
);

backend_test!(
    over_smtp_a_kill_in_the_in_doubt_window_resends_with_the_same_message_id,
    |t: TestDb| async move {
        // SMTP cannot say whether a message was accepted before the crash, so the
        // resumed step sends it again, under the same Message-ID, for the receiving
        // side to recognise. This is the window the outbox closes and SMTP cannot.
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        start_bootstraps(t.url(), 1, "doubt-smtp").await;
        let kills = kill_in_the_in_doubt_window(&t, &sink.url()).await?;
        assert!(kills >= 3, "{kills} kills");
        let messages = sink.messages();
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        for message in &messages {
            *by_id.entry(message.message_id.clone()).or_default() += 1;
        }
        assert_eq!(by_id.len(), 3, "three distinct emails: {by_id:?}");
        assert!(
            by_id.values().all(|n| *n == 2),
            "each interrupted send went out twice, with one Message-ID: {by_id:?}"
        );
        Ok(())
    }
);

backend_test!(
    random_kills_never_lose_or_repeat_an_outbox_email,
    |t: TestDb| async move {
        let (outbox, mail) = outbox()?;
        start_bootstraps(t.url(), 3, "random").await;
        let mut delays = [7_u64, 23, 3, 41, 13, 61, 29, 5, 37, 17]
            .into_iter()
            .cycle();
        let engine = || {
            crate::common::cairn_tokio()
                .args([
                    "--database-url",
                    t.url(),
                    "--mail-url",
                    &mail,
                    "workflows",
                    "run",
                    "--until-idle",
                ])
                .env("CAIRN_WORKFLOW_LEASE", "0.2")
                .env_remove("CAIRN_DATABASE_URL")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
        };
        let mut kills = 0;
        for _ in 0..60 {
            let mut child = engine()?;
            let delay = Duration::from_millis(delays.next().unwrap_or(10));
            if tokio::time::timeout(delay, child.wait()).await.is_err() {
                child.kill().await?;
                kills += 1;
            }
            if bootstrap_statuses(&t)
                .await?
                .iter()
                .all(|s| s == "completed")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(kills > 0, "no engine was killed");
        // On a loaded machine a process may rarely get past start-up inside its short
        // window; whatever the kills left behind, runs left alone finish it (a step
        // may be waiting out a retry's backoff, so more than one run may be needed).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !bootstrap_statuses(&t)
            .await?
            .iter()
            .all(|s| s == "completed")
            && tokio::time::Instant::now() < deadline
        {
            let status = tokio::time::timeout_at(deadline, engine()?.wait()).await??;
            assert!(
                status.success(),
                "an engine run left alone failed: {status}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(bootstrap_statuses(&t).await?, ["completed"; 3]);
        let files: Vec<String> = std::fs::read_dir(outbox.path())?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        let messages: Vec<&String> = files.iter().filter(|f| f.ends_with(".eml")).collect();
        assert_eq!(messages.len(), 9, "{files:?}");
        for name in messages {
            let raw = std::fs::read_to_string(outbox.path().join(name))?;
            let message = cairn_testkit::smtp_parse(&raw);
            assert!(
                message.body.contains("-- Sunrise Care, via cairn"),
                "{name} is complete:\n{raw}"
            );
        }
        // A process killed mid-write leaves at most a hidden, incomplete `.sending-…` file,
        // which no mail client reads as a message.
        assert!(
            files
                .iter()
                .all(|f| f.ends_with(".eml") || f.starts_with(".sending-")),
            "{files:?}"
        );
        assert_exit(&cairn(t.url(), &["replay", "--verify"]).await, 0);
        Ok(())
    }
);

backend_test!(
    the_engine_drives_no_more_runs_at_once_than_asked,
    |t: TestDb| async move {
        // Every email takes the sink a while, so that an engine driving more runs than
        // it was asked to would have several emails in flight at once.
        let sink = SmtpSink::start(SinkOptions {
            delay: Duration::from_millis(200),
            ..SinkOptions::default()
        })
        .await?;
        start_bootstraps(t.url(), 4, "one-at-a-time").await;
        let mut engine = spawn_engine(&t, &sink, "worker-a", 1)?;
        wait_for_bootstraps(&t).await?;
        engine.kill().await?;
        assert_eq!(sink.messages().len(), 12, "every email was sent");

        // In log order, an email step is in flight from its start to its completion.
        let events = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&EventFilter {
                limit: Some(10_000),
                ..EventFilter::default()
            })
            .await?;
        let mut in_flight = BTreeSet::new();
        let mut most = 0;
        for event in &events {
            let key = (event.stream_id.to_string(), event.data["step"].to_string());
            match event.event_type.as_str() {
                "workflow.step_started" => {
                    in_flight.insert(key);
                }
                "workflow.step_completed" => {
                    in_flight.remove(&key);
                }
                _ => continue,
            }
            most = most.max(in_flight.len());
        }
        assert_eq!(most, 1, "emails in flight at once with --concurrency 1");
        Ok(())
    }
);

backend_test!(
    two_processes_share_the_work_and_no_step_runs_twice,
    |t: TestDb| async move {
        // Each email takes a while, so that neither process can finish all the work
        // before the other has started, even on a busy machine where starting a
        // process takes seconds (one process alone needs 30 × 1 s / 2 = 15 s; the two
        // together about half that).
        let sink = SmtpSink::start(SinkOptions {
            delay: Duration::from_millis(1_000),
            ..SinkOptions::default()
        })
        .await?;
        start_bootstraps(t.url(), 10, "shared").await;
        let mut a = spawn_engine(&t, &sink, "worker-a", 2)?;
        let mut b = spawn_engine(&t, &sink, "worker-b", 2)?;
        wait_for_bootstraps(&t).await?;
        a.kill().await?;
        b.kill().await?;

        let messages = sink.messages();
        let ids: BTreeSet<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(
            (messages.len(), ids.len()),
            (30, 30),
            "every email exactly once"
        );

        let events = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&EventFilter {
                limit: Some(10_000),
                ..EventFilter::default()
            })
            .await?;
        let mut completions: BTreeMap<(String, String), u32> = BTreeMap::new();
        let mut starts: BTreeMap<(String, String), u32> = BTreeMap::new();
        let mut workers = BTreeSet::new();
        for event in &events {
            let key = (
                event.stream_id.to_string(),
                event.data["step"].as_str().unwrap_or_default().to_owned(),
            );
            match event.event_type.as_str() {
                "workflow.step_completed" => *completions.entry(key).or_default() += 1,
                "workflow.step_started" => *starts.entry(key).or_default() += 1,
                _ => continue,
            }
            if let Some(worker) = event.metadata.extra.get("worker").and_then(Value::as_str) {
                workers.insert(worker.to_owned());
            }
        }
        assert!(
            completions.values().all(|n| *n == 1),
            "a step was recorded twice"
        );
        assert!(
            starts.values().all(|n| *n == 1),
            "an email step was started twice"
        );
        assert_eq!(
            workers,
            BTreeSet::from(["worker-a".to_owned(), "worker-b".to_owned()]),
            "both processes took work"
        );
        assert_exit(&cairn(t.url(), &["replay", "--verify"]).await, 0);
        Ok(())
    }
);

backend_test!(
    bench_workflow_reports_every_scenario,
    |t: TestDb| async move {
        let output = cairn(
            t.url(),
            &["bench", "workflow", "--seconds", "0.3", "--json"],
        )
        .await;
        assert_exit(&output, 0);
        let report = json_of(&output);
        let scenarios = report["scenarios"].as_array().expect("scenarios");
        assert_eq!(scenarios.len(), 4);
        for scenario in scenarios {
            assert!(scenario["runs"].as_u64() > Some(0), "{scenario}");
            assert!(scenario["ms_per_step"].as_f64() > Some(0.0), "{scenario}");
        }
        let resume = &scenarios[3]["resume_ms"];
        assert!(
            resume[0].as_f64() > Some(0.0) && resume[1].as_f64() >= resume[0].as_f64(),
            "p50 and p99 from a resume to the first step: {resume}"
        );
        Ok(())
    }
);

/// Appends a `workflow.started` of the bootstrap's kind at `version`, with `input`, as
/// another build could have: returns the run's id.
async fn start_run_of_version(url: &str, version: u32, input: Value) -> String {
    let run_id = new_id();
    let started = json!({
        "kind": "organization_bootstrap",
        "version": version,
        "input": input,
        "at": "2026-12-01T10:00:00Z",
    });
    append(
        url,
        "workflow",
        &run_id,
        "workflow.started",
        &started.to_string(),
    )
    .await;
    run_id
}

backend_test!(
    workflows_check_is_clean_on_healthy_runs_and_reports_a_misfit,
    |t: TestDb| async move {
        // A bootstrap recorded and not yet driven: in flight, on version 2.
        let request = bootstrap_request("sunrise-check");
        let output = cairn_in(
            t.url(),
            &["org", "bootstrap", "--request", "-"],
            &[],
            Some(&request),
        )
        .await;
        assert_exit(&output, 0);
        let clean = cairn(t.url(), &["workflows", "check"]).await;
        assert_exit(&clean, 0);
        expect![[r#"
            ✓ 1 unfinished run checked: each fits its definition
        "#]]
        .assert_eq(&redact(&stdout(&clean)));
        let clean = json_of(&cairn(t.url(), &["workflows", "check", "--json"]).await);
        assert_eq!(clean, json!({"checked": 1, "misfits": []}));
        let kinds = json_of(&cairn(t.url(), &["workflows", "kinds", "--json"]).await);
        let bootstrap = kinds
            .as_array()
            .and_then(|kinds| kinds.iter().find(|k| k["kind"] == "organization_bootstrap"))
            .expect("the bootstrap's kind");
        assert_eq!(bootstrap["versions"], json!([1, 2]));

        // A run of version 2 whose first recorded step is not the definition's first,
        // and a run of a version this build does not have.
        let plan = json!({
            "org_id": new_id(),
            "admin": {"user_id": new_id(), "invitation_id": new_id()},
            "invitees": [],
            "ttl_seconds": 3600,
            "accept_url": "https://app.example.test/invitations/accept",
        });
        let skipped = start_run_of_version(t.url(), 2, plan).await;
        let completed = json!({
            "step": "create_admin",
            "attempt": 1,
            "result": {},
            "compensable": false,
            "compensation": false,
            "started_at": "2026-12-01T10:00:01Z",
            "finished_at": "2026-12-01T10:00:02Z",
        });
        append(
            t.url(),
            "workflow",
            &skipped,
            "workflow.step_completed",
            &completed.to_string(),
        )
        .await;
        let newer = start_run_of_version(t.url(), 9, json!({})).await;

        let misfit = cairn(t.url(), &["workflows", "check"]).await;
        assert_exit(&misfit, 1);
        expect![[r#"
             RUN                                    KIND                     VERSION   STATUS    MISFIT
            ────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
             [uuid]   organization_bootstrap   v2        running   after 0 steps the definition asks for step create_organization, but the run recorded step create_admin
             [uuid]   organization_bootstrap   v9        running   this build does not have organization_bootstrap v9 (it has v1 and v2)
            ✗ 2 of 3 unfinished runs no longer fit their definitions
        "#]]
        .assert_eq(&redact(&stdout(&misfit)));

        let misfit = cairn(t.url(), &["workflows", "check", "--json"]).await;
        assert_exit(&misfit, 1);
        let report = json_of(&misfit);
        assert_eq!(report["checked"], json!(3));
        let misfits = report["misfits"].as_array().expect("misfits");
        assert_eq!(misfits.len(), 2);
        assert_eq!(misfits[0]["run_id"], json!(skipped));
        assert_eq!(misfits[0]["kind"], json!("organization_bootstrap"));
        assert_eq!(misfits[0]["version"], json!(2));
        assert_eq!(misfits[0]["status"], json!("running"));
        assert_eq!(
            misfits[0]["misfit"],
            json!({
                "misfit": "diverges",
                "at": 0,
                "recorded": "step create_admin",
                "decided": "step create_organization",
            })
        );
        assert_eq!(misfits[1]["run_id"], json!(newer));
        assert_eq!(
            misfits[1]["misfit"],
            json!({
                "misfit": "missing_definition",
                "kind": "organization_bootstrap",
                "version": 9,
                "have": [1, 2],
            })
        );
        Ok(())
    }
);

backend_test!(
    a_build_without_a_runs_version_refuses_to_drive_runs,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let newer = start_run_of_version(t.url(), 9, json!({})).await;
        let refusal = format!(
            "run {newer} is organization_bootstrap v9, which this build does not have (it has \
             v1 and v2); finish it with a build that has organization_bootstrap v9"
        );
        let request = bootstrap_request("sunrise-refused");
        for args in [
            &["workflows", "run", "--until-idle"][..],
            &["demo"][..],
            &["org", "bootstrap", "--request", "-", "--wait"][..],
            &["serve", "--addr", "127.0.0.1:0", "--probe-interval", "0"][..],
        ] {
            let mut all = vec!["--mail-url", mail.as_str()];
            all.extend_from_slice(args);
            let output = tokio::time::timeout(
                Duration::from_secs(60),
                cairn_in(t.url(), &all, &[], Some(&request)),
            )
            .await
            .unwrap_or_else(|_| panic!("`cairn {}` did not refuse", args.join(" ")));
            assert_exit(&output, 2);
            assert!(
                stderr(&output).contains(&refusal),
                "`cairn {}`: {}",
                args.join(" "),
                stderr(&output)
            );
        }
        // Nothing was started meanwhile, and the run was left as it was.
        let runs = json_of(&cairn(t.url(), &["workflows", "list", "--json"]).await);
        assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
        assert_eq!(runs[0]["id"], json!(newer));
        assert_eq!(runs[0]["definition_version"], json!(9));
        assert_eq!(runs[0]["status"], json!("running"));
        // Recording a bootstrap, which drives nothing, is still allowed.
        let output = cairn_in(
            t.url(),
            &["org", "bootstrap", "--request", "-"],
            &[],
            Some(&request),
        )
        .await;
        assert_exit(&output, 0);
        Ok(())
    }
);
