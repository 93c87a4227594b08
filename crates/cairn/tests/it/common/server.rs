//! A `cairn serve` process for tests that talk to it over HTTP.

use std::time::Duration;

use serde_json::Value;

/// A `cairn serve` process on a free loopback port.
pub struct Server {
    pub child: tokio::process::Child,
    pub base: String,
    pub port: u16,
    pub http: reqwest::Client,
    /// The database and mail URLs and the extra arguments it was started with, to
    /// start it again.
    started_with: (String, String, Vec<String>),
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
        let child = Server::spawn(&mut command, port, url, mail_url, extra)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            http,
            started_with: (
                url.to_owned(),
                mail_url.to_owned(),
                extra.iter().map(|arg| (*arg).to_owned()).collect(),
            ),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Stops the server as a deploy does: `SIGTERM`, then waits for it to exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the server has already exited"))?;
        let signalled = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(signalled.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("cairn serve was still running 30 s after SIGTERM"))??;
        Ok(())
    }

    /// Starts a stopped server again on the same port and database, with the same
    /// arguments (a file limit it was started under is not kept).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let (url, mail_url, extra) = self.started_with.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.child = Server::spawn(
            &mut crate::common::cairn_tokio(),
            self.port,
            &url,
            &mail_url,
            &extra,
        )?;
        self.wait_ready().await
    }

    fn spawn(
        command: &mut tokio::process::Command,
        port: u16,
        url: &str,
        mail_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<tokio::process::Child> {
        let base = format!("http://127.0.0.1:{port}");
        Ok(command
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
            .spawn()?)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        for _ in 0..300 {
            if let Ok(response) = self.http.get(self.url("/health/ready")).send().await
                && response.status() == 200
            {
                return Ok(());
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

    /// Invites `name` at `email` into `org` as a viewer, through the API.
    pub async fn invite(
        &self,
        token: &str,
        org: &str,
        name: &str,
        email: &str,
    ) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.url(&format!("/v1/organizations/{org}/invitations")))
            .bearer_auth(token)
            .json(&serde_json::json!({"name": name, "email": email, "roles": ["viewer"]}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "invite: {}", response.status());
        Ok(response.json().await?)
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
