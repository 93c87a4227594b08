//! The invitation email's link, followed in a real browser (headless Chromium, driven
//! over WebDriver through chromedriver): the link opens a page and spends nothing; the
//! button accepts, once; a second try says why not.

use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{TestDb, backend_test};

use crate::common::browser::Browser;
use crate::common::server::Server;
use crate::common::{bootstrap_request, outbox, token};

backend_test!(
    an_invitation_link_opens_a_page_whose_button_accepts_once,
    |t: TestDb| async move {
        let (outbox, mail) = outbox()?;
        let mut server = Server::start(t.url(), &mail).await?;
        let base = server.base.clone();
        let token = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = server
            .bootstrap(&token, bootstrap_request("browser-care"))
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
            let page = server
                .get(&token, &format!("/v1/organizations/{org}/invitations"))
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
        server.child.kill().await?;
        Ok(())
    }
);
