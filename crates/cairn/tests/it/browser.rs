//! The invitation email's link, followed in a real browser (headless Chromium, driven
//! over WebDriver through chromedriver): the link opens a page and spends nothing; the
//! button accepts, once; a second try says why not.

use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{TestDb, backend_test};
use serde_json::Value;

use crate::common::browser::Browser;
use crate::common::{bootstrap_request, cairn, stdout};

/// A free port on loopback, for a server whose public URL must be known before it
/// starts.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

backend_test!(
    an_invitation_link_opens_a_page_whose_button_accepts_once,
    |t: TestDb| async move {
        let outbox = tempfile::tempdir()?;
        let base = format!("http://127.0.0.1:{}", free_port()?);
        let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["--database-url", t.url()])
            .arg("--mail-url")
            .arg(format!("outbox:{}", outbox.path().display()))
            .args(["--public-url", &base])
            .args(["serve", "--addr", base.trim_start_matches("http://")])
            .args(["--probe-interval", "0"])
            .env_remove("CAIRN_DATABASE_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let client = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..300 {
            if let Ok(response) = client.get(format!("{base}/health/ready")).send().await
                && response.status() == 200
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(ready, "cairn serve did not get ready");
        let token = stdout(&cairn(t.url(), &["token", "--platform-admin", "ops"]).await)
            .trim()
            .to_owned();
        let accepted: Value = client
            .post(format!("{base}/v1/organizations"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(bootstrap_request("browser-care"))
            .send()
            .await?
            .json()
            .await?;
        let org = accepted["org_id"].as_str().context("org_id")?.to_owned();

        // Grace's email, from the outbox, and the link in it.
        let mut link = None;
        for _ in 0..300 {
            for entry in std::fs::read_dir(outbox.path())?.filter_map(Result::ok) {
                let raw = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let message = cairn_testkit::smtp_parse(&raw);
                if message.to.contains("grace@example.com") {
                    link = message
                        .body
                        .split_whitespace()
                        .find(|word| word.starts_with(&format!("{base}/invitations/accept?token=")))
                        .map(str::to_owned);
                }
            }
            if link.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let link = link.context("no invitation email to grace with a link")?;
        let statuses = || async {
            let page: Value = client
                .get(format!("{base}/v1/organizations/{org}/invitations"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            let grace = page["items"]
                .as_array()
                .and_then(|items| items.iter().find(|i| i["email"] == "grace@example.com"))
                .context("grace's invitation")?;
            anyhow::Ok(grace["status"].as_str().unwrap_or_default().to_owned())
        };

        let browser = Browser::launch().await?;
        browser.goto(&link).await?;
        let text = browser.wait_for_title("Accept your invitation").await?;
        assert!(
            text.contains("Nothing happens until you press the button"),
            "{text}"
        );
        assert_ne!(
            statuses().await?,
            "accepted",
            "opening the link accepts nothing"
        );

        browser.click("button[type=submit]").await?;
        let text = browser.wait_for_title("Welcome aboard").await?;
        assert!(text.contains("Your invitation is accepted"), "{text}");
        assert_eq!(statuses().await?, "accepted");

        // The link works once: the same link, the same button, a clear refusal.
        browser.goto(&link).await?;
        browser.wait_for_title("Accept your invitation").await?;
        browser.click("button[type=submit]").await?;
        let text = browser
            .wait_for_title("The invitation could not be accepted")
            .await?;
        assert!(text.contains("already accepted"), "{text}");
        assert!(text.contains("Reference:"), "{text}");

        // A link cut short says so instead of failing somewhere later.
        browser.goto(&format!("{base}/invitations/accept")).await?;
        let text = browser.wait_for_title("This link is incomplete").await?;
        assert!(text.contains("has no token"), "{text}");
        browser.close().await?;
        server.kill().await?;
        Ok(())
    }
);
