//! `cairn serve` as processes, on both backends: an event committed by one process
//! reaches the subscribers of another (LISTEN/NOTIFY on PostgreSQL, the head poll on
//! SQLite), `cairn health` checks a live server's whole chain, and a shutdown ends
//! open subscriptions with a message instead of hanging.

mod common;

use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{TestDb, backend_test};
use common::{assert_exit, bootstrap_request, cairn, cairn_in, stdout};
use tokio::io::AsyncBufReadExt as _;

/// A running `cairn serve`, killed when dropped.
struct Served {
    child: tokio::process::Child,
    base: String,
    _outbox: tempfile::TempDir,
}

async fn serve(url: &str, worker: &str) -> anyhow::Result<Served> {
    let outbox = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "--database-url",
            url,
            "--mail-url",
            &format!("outbox:{}", outbox.path().display()),
            "--worker-id",
            worker,
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--probe-interval",
            "0",
        ])
        .env_remove("CAIRN_DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return anyhow::Ok(rest.trim().to_owned());
            }
        }
        anyhow::bail!("cairn serve exited before listening")
    })
    .await
    .context("cairn serve did not listen within 30 s")??;
    // Keep reading stderr so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Served {
        child,
        base,
        _outbox: outbox,
    })
}

/// Reads Server-Sent Events until `wanted` returns true for one; returns the text read.
async fn read_until(
    response: &mut reqwest::Response,
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let mut text = String::new();
    tokio::time::timeout(within, async {
        while !wanted(&text) {
            match response.chunk().await? {
                Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                None => anyhow::bail!("the stream ended: {text}"),
            }
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("not seen within {within:?}; read so far:\n{text}"))??;
    Ok(text)
}

backend_test!(
    an_event_committed_by_one_server_reaches_the_subscribers_of_another,
    |t: TestDb| async move {
        let a = serve(t.url(), "server-a").await?;
        let b = serve(t.url(), "server-b").await?;
        let token = cairn(t.url(), &["token", "--platform-admin", "ops"]).await;
        assert_exit(&token, 0);
        let token = stdout(&token).trim().to_owned();
        let client = reqwest::Client::new();

        let mut feed = client
            .get(format!(
                "{}/v1/events/stream?views=false&heartbeat=1",
                a.base
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(feed.status(), 200);
        read_until(&mut feed, Duration::from_secs(10), |text| {
            text.contains("event: subscribed")
        })
        .await?;

        let accepted = client
            .post(format!("{}/v1/organizations", b.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(bootstrap_request("cross-process"))
            .send()
            .await?;
        assert_eq!(accepted.status(), 202, "{}", accepted.text().await?);
        let accepted: serde_json::Value = accepted.json().await?;
        let org_id = accepted["org_id"].as_str().context("org_id")?.to_owned();
        // Server B's engine (or A's) runs the bootstrap; A's subscriber sees it all.
        let seen = read_until(&mut feed, Duration::from_secs(20), |text| {
            text.contains("organization.bootstrap.completed")
        })
        .await?;
        assert!(seen.contains(&org_id), "the events of the new organization");
        // This one was committed by server B's request handler, not by any engine.
        assert!(seen.contains("organization.bootstrap.initiated"));
        assert!(seen.contains("organization.created"));

        // `cairn health` asks server A to test its own chain.
        let health = cairn_in(t.url(), &["health", "--url", &a.base], &[], None).await;
        let text = stdout(&health);
        assert_exit(&health, 0);
        for hop in ["http", "event", "projection", "realtime", "workflow"] {
            assert!(
                text.lines()
                    .any(|line| line.contains('✓') && line.contains(hop)),
                "{hop} in\n{text}"
            );
        }
        let json = cairn_in(t.url(), &["health", "--url", &b.base, "--json"], &[], None).await;
        assert_exit(&json, 0);
        assert_eq!(common::json_of(&json)["status"], "ok");
        let nobody = cairn_in(
            t.url(),
            &["health", "--url", "http://127.0.0.1:9"],
            &[],
            None,
        )
        .await;
        assert_exit(&nobody, 2);
        drop(b);
        drop(a);
        Ok(())
    }
);

backend_test!(
    stopping_a_server_ends_its_subscriptions_with_a_message,
    |t: TestDb| async move {
        let mut a = serve(t.url(), "server-a").await?;
        let token = cairn(t.url(), &["token", "--platform-admin", "ops"]).await;
        let token = stdout(&token).trim().to_owned();
        let mut feed = reqwest::Client::new()
            .get(format!("{}/v1/events/stream", a.base))
            .bearer_auth(&token)
            .send()
            .await?;
        read_until(&mut feed, Duration::from_secs(10), |text| {
            text.contains("event: subscribed")
        })
        .await?;
        let pid = a.child.id().context("a pid")?;
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        assert!(killed.success());
        let text = read_until(&mut feed, Duration::from_secs(10), |text| {
            text.contains("server_shutdown")
        })
        .await?;
        assert!(text.contains("event: end"), "{text}");
        let status = tokio::time::timeout(Duration::from_secs(15), a.child.wait())
            .await
            .context("cairn serve did not stop within 15 s of SIGTERM")??;
        assert!(status.success(), "{status}");
        Ok(())
    }
);
