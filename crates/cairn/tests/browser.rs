//! The invitation email's link, followed in a real browser (headless Chromium, driven
//! over the DevTools protocol): the link opens a page and spends nothing; the button
//! accepts, once; a second try says why not.

mod common;

use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{TestDb, backend_test};
use common::{bootstrap_request, cairn, stdout};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio_tungstenite::tungstenite::Message;

/// Chromium, from `CAIRN_CHROMIUM` or the Debian package's path.
fn chromium() -> String {
    std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// A headless Chromium and a DevTools session on one page.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    async fn launch() -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/test installs it: apt-get install chromium)",
                    chromium()
                )
            })?;
        let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return anyhow::Ok(url.trim().to_owned());
                }
            }
            anyhow::bail!("chromium exited before listening")
        })
        .await
        .context("chromium did not start within 30 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str()).await?;
        let mut browser = Browser {
            _child: child,
            _profile: profile,
            socket,
            next_id: 0,
            session: None,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .context("a target id")?
            .to_owned();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        browser.session = Some(
            attached["sessionId"]
                .as_str()
                .context("a session id")?
                .to_owned(),
        );
        Ok(browser)
    }

    /// Sends one DevTools command and waits for its answer.
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket.send(Message::text(message.to_string())).await?;
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(frame) = self.socket.next().await {
                let Message::Text(text) = frame? else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str())?;
                if value["id"] == json!(id) {
                    return anyhow::Ok(value);
                }
            }
            anyhow::bail!("the DevTools connection closed")
        })
        .await
        .with_context(|| format!("{method} had no answer within 30 s"))??;
        if let Some(error) = answer.get("error") {
            anyhow::bail!("{method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// Evaluates an expression in the page; its value.
    async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        Ok(result["result"]["value"].clone())
    }

    /// Waits until the loaded page's title contains `title`; its text.
    async fn wait_for_title(&mut self, title: &str) -> anyhow::Result<String> {
        let mut seen = Value::Null;
        for _ in 0..100 {
            seen = self
                .eval("document.readyState === 'complete' ? document.title : ''")
                .await?;
            if seen.as_str().is_some_and(|t| t.contains(title)) {
                let text = self.eval("document.body.innerText").await?;
                return Ok(text.as_str().unwrap_or_default().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("no page titled {title:?}; the last title was {seen}")
    }
}

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

        let mut browser = Browser::launch().await?;
        browser.call("Page.navigate", json!({"url": link})).await?;
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

        browser
            .eval("document.querySelector('button[type=submit]').click()")
            .await?;
        let text = browser.wait_for_title("Welcome aboard").await?;
        assert!(text.contains("Your invitation is accepted"), "{text}");
        assert_eq!(statuses().await?, "accepted");

        // The link works once: the same link, the same button, a clear refusal.
        browser.call("Page.navigate", json!({"url": link})).await?;
        browser.wait_for_title("Accept your invitation").await?;
        browser
            .eval("document.querySelector('button[type=submit]').click()")
            .await?;
        let text = browser
            .wait_for_title("The invitation could not be accepted")
            .await?;
        assert!(text.contains("already accepted"), "{text}");
        assert!(text.contains("Reference:"), "{text}");

        // A link cut short says so instead of failing somewhere later.
        browser
            .call(
                "Page.navigate",
                json!({"url": format!("{base}/invitations/accept")}),
            )
            .await?;
        let text = browser.wait_for_title("This link is incomplete").await?;
        assert!(text.contains("has no token"), "{text}");
        server.kill().await?;
        Ok(())
    }
);
