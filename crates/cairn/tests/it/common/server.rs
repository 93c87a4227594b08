//! A `cairn serve` process for tests that talk to it over HTTP.

use std::time::Duration;

use serde_json::Value;

/// A `cairn serve` process on a free loopback port.
pub struct Server {
    pub child: tokio::process::Child,
    pub base: String,
    pub port: u16,
    pub http: reqwest::Client,
}

impl Server {
    /// Starts `cairn serve` on `url`, mailing to `mail_url`.
    pub async fn start(url: &str, mail_url: &str) -> anyhow::Result<Server> {
        Server::start_with(url, mail_url, &[]).await
    }

    /// Starts `cairn serve` with a short workflow lease, so that a killed server's runs
    /// are taken over soon; long enough that a busy server renews it in time (a lease
    /// lost mid-send would be a resend without a kill).
    pub async fn with_short_lease(url: &str, mail_url: &str) -> anyhow::Result<Server> {
        Server::start_with(url, mail_url, &["--workflow-lease-seconds", "3"]).await
    }

    /// Starts `cairn serve` with extra arguments for `serve`.
    pub async fn start_with(url: &str, mail_url: &str, extra: &[&str]) -> anyhow::Result<Server> {
        let command = crate::common::cairn_tokio();
        Server::start_command(command, url, mail_url, extra).await
    }

    /// Starts `cairn serve` with extra arguments for `serve`, in a process that may
    /// open at most `open_files` files (`ulimit -n`).
    pub async fn start_with_file_limit(
        url: &str,
        mail_url: &str,
        extra: &[&str],
        open_files: u32,
    ) -> anyhow::Result<Server> {
        let mut command = tokio::process::Command::new("sh");
        command
            .env("CAIRN_PII_KEY", cairn_testkit::TEST_PII_KEY)
            .arg("-c")
            .arg(format!("ulimit -n {open_files} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_cairn"));
        Server::start_command(command, url, mail_url, extra).await
    }

    /// Starts `command` (which runs `cairn` with the arguments it is given) as
    /// `cairn serve`.
    async fn start_command(
        mut command: tokio::process::Command,
        url: &str,
        mail_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        let port = super::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let child = command
            .args(["--database-url", url, "--mail-url", mail_url])
            .args(["--public-url", &base])
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--probe-interval", "0"])
            .args(extra)
            .env_remove("CAIRN_DATABASE_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        for _ in 0..300 {
            if let Ok(response) = http.get(format!("{base}/health/ready")).send().await
                && response.status() == 200
            {
                return Ok(Server {
                    child,
                    base,
                    port,
                    http,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("cairn serve did not get ready")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Bootstraps an organization through the API; its answer.
    pub async fn bootstrap(&self, token: &str, body: String) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.url("/v1/organizations"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "bootstrap: {}", response.status());
        Ok(response.json().await?)
    }

    /// The form token the console's pages carry for the session in the `Cookie`
    /// header `jar`.
    pub async fn form_token(&self, jar: &str) -> anyhow::Result<String> {
        const FIELD: &str = "name=\"csrf\" value=\"";
        let page = self
            .http
            .get(self.url("/console/events"))
            .header("cookie", jar)
            .send()
            .await?
            .text()
            .await?;
        let start = page
            .find(FIELD)
            .ok_or_else(|| anyhow::anyhow!("no form token on the page: {page}"))?
            + FIELD.len();
        page.get(start..start + 64)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("a cut form token: {page}"))
    }

    /// `GET` through the API; its JSON.
    pub async fn get(&self, token: &str, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?)
    }
}
