//! A real browser for tests: headless Chromium, driven over WebDriver through
//! chromedriver.
//!
//! `Browser::launch` starts a chromedriver of its own on a free loopback port and opens
//! one session with a fresh profile; the helpers wrap the few WebDriver calls tests use.
//! `CAIRN_CHROMIUM` and `CAIRN_CHROMEDRIVER` name other binaries than the Debian
//! packages' (`chromium`, `chromium-driver`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long the polling helpers wait before giving up.
const PATIENCE: Duration = Duration::from_secs(15);

/// How often the polling helpers look again.
const POLL: Duration = Duration::from_millis(100);

/// What to do when a binary is missing.
const INSTALL_HINT: &str = "scripts/test installs it: apt-get install chromium chromium-driver";

/// Chromium, from `CAIRN_CHROMIUM` or the Debian package's path.
pub fn chromium() -> PathBuf {
    std::env::var_os("CAIRN_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// chromedriver, from `CAIRN_CHROMEDRIVER` or the Debian package's path.
pub fn chromedriver() -> PathBuf {
    std::env::var_os("CAIRN_CHROMEDRIVER")
        .map_or_else(|| "/usr/bin/chromedriver".into(), PathBuf::from)
}

/// A headless Chromium in one WebDriver session, with the chromedriver that runs it.
///
/// `close` ends the session in order. Dropping it instead (a test that failed midway)
/// kills chromedriver and the Chromium it started: they share a process group of their
/// own, since Chromium outlives a chromedriver that is merely killed.
pub struct Browser {
    /// The WebDriver session.
    client: Client,
    /// chromedriver, leader of the process group that Chromium joins.
    driver: tokio::process::Child,
    /// Chromium's profile and chromedriver's log; removed last.
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session in a headless
    /// Chromium with a fresh profile.
    pub async fn launch() -> anyhow::Result<Browser> {
        let chromium = chromium();
        anyhow::ensure!(
            chromium.is_file(),
            "no Chromium at {} ({INSTALL_HINT})",
            chromium.display()
        );
        let chromedriver = chromedriver();
        let dir = tempfile::tempdir().context("a directory for the browser profile")?;
        let log = dir.path().join("chromedriver.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({INSTALL_HINT})", chromedriver.display()))?;

        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = driver.try_wait()? {
                anyhow::bail!(
                    "chromedriver exited ({status}) before it answered; its log:\n{}",
                    read_log(&log)
                );
            }
            if let Ok(response) = http.get(format!("{base}/status")).send().await
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == json!(true)
            {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < PATIENCE,
                "chromedriver did not answer on {base} within {PATIENCE:?}; its log:\n{}",
                read_log(&log)
            );
            tokio::time::sleep(POLL).await;
        }

        let profile = dir.path().join("profile");
        let binary = chromium
            .to_str()
            .with_context(|| format!("the Chromium path {} is not UTF-8", chromium.display()))?;
        let options = json!({
            "binary": binary,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        let mut capabilities = fantoccini::wd::Capabilities::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&base)
            .await
            .with_context(|| {
                format!(
                    "opening a session in {} through chromedriver; its log:\n{}",
                    chromium.display(),
                    read_log(&log)
                )
            })?;
        Ok(Browser {
            client,
            driver,
            _dir: dir,
        })
    }

    /// The underlying WebDriver client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Loads `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("loading {url}"))
    }

    /// Waits until the loaded page's title contains `title`; the page's text.
    ///
    /// Errors while a page is being replaced count as "not yet".
    pub async fn wait_for_title(&self, title: &str) -> anyhow::Result<String> {
        let script = "return document.readyState === 'complete' ? document.title : ''";
        let started = Instant::now();
        loop {
            let seen = match self.client.execute(script, Vec::new()).await {
                Ok(Value::String(now)) if now.contains(title) => return self.text().await,
                Ok(now) => now.to_string(),
                Err(error) => format!("({error})"),
            };
            anyhow::ensure!(
                started.elapsed() < PATIENCE,
                "no page titled {title:?} within {PATIENCE:?}; the last title was {seen}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the page has made at least `count` requests of its own (`fetch`),
    /// and those have answered.
    pub async fn wait_for_fetches(&self, count: usize) -> anyhow::Result<()> {
        let script = "return performance.getEntriesByType('resource')\
                      .filter((entry) => entry.initiatorType === 'fetch').length";
        let started = Instant::now();
        loop {
            let seen = self.eval(script).await?.as_u64().unwrap_or_default();
            if seen >= count as u64 {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < PATIENCE,
                "the page made {seen} of {count} requests within {PATIENCE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The page's text, as a person sees it (`document.body.innerText`).
    pub async fn text(&self) -> anyhow::Result<String> {
        let text = self.eval("return document.body.innerText").await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// Clicks the first element that matches the CSS selector `css`.
    ///
    /// A live page may replace the element between finding and clicking it; then it
    /// is found again, as a person would click again.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.find(css).await?.click().await {
                Ok(()) => return Ok(()),
                Err(error) if tries < 5 && error.to_string().contains("stale element") => {
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => return Err(error).with_context(|| format!("clicking {css:?}")),
            }
        }
    }

    /// Clears the field that matches the CSS selector `css`, then types `value` into it.
    pub async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let field = self.find(css).await?;
        field
            .clear()
            .await
            .with_context(|| format!("clearing {css:?}"))?;
        field
            .send_keys(value)
            .await
            .with_context(|| format!("typing into {css:?}"))
    }

    /// Waits until an element that matches the CSS selector `css` has text containing
    /// `text`; that element's text.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let seen = match self.client.find(Locator::Css(css)).await {
                Ok(element) => match element.text().await {
                    Ok(now) if now.contains(text) => return Ok(now),
                    Ok(now) => format!("{now:?}"),
                    Err(error) => format!("({error})"),
                },
                Err(error) => format!("({error})"),
            };
            anyhow::ensure!(
                started.elapsed() < PATIENCE,
                "no {css:?} with {text:?} within {PATIENCE:?}; the last seen was {seen}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `script` as a function body in the page; the value it returns.
    ///
    /// As in WebDriver, the script must `return` what it means to give back.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .with_context(|| format!("running {script:?}"))
    }

    /// Resizes the browser window to `width` × `height` pixels.
    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.client
            .set_window_size(width, height)
            .await
            .with_context(|| format!("resizing the window to {width}×{height}"))
    }

    /// Writes a PNG of the visible page to `path`, creating its parent directories.
    pub async fn screenshot(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        let png = self.client.screenshot().await.context("a screenshot")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Sets a cookie for the current page's site.
    pub async fn add_cookie(
        &self,
        cookie: fantoccini::cookies::Cookie<'static>,
    ) -> anyhow::Result<()> {
        self.client
            .add_cookie(cookie)
            .await
            .context("setting a cookie")
    }

    /// The cookies visible to the current page.
    pub async fn cookies(&self) -> anyhow::Result<Vec<fantoccini::cookies::Cookie<'static>>> {
        self.client
            .get_all_cookies()
            .await
            .context("reading the cookies")
    }

    /// Ends the session, which quits Chromium; dropping `self` then stops chromedriver.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client
            .clone()
            .close()
            .await
            .context("ending the browser session")
    }

    /// The first element that matches the CSS selector `css`.
    async fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no element matches {css:?}"))
    }
}

impl Drop for Browser {
    /// Kills chromedriver's process group: chromedriver, and Chromium if a session is
    /// still open.
    fn drop(&mut self) {
        if let Some(group) = self.driver.id() {
            // Best effort: the child's own kill on drop still stops chromedriver.
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{group}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// chromedriver's log so far, for an error message.
fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| format!("({error})"))
}
