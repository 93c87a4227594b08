//! A real SMTP server on loopback for tests: `scripts/smtp_sink.py` (aiosmtpd), which
//! `scripts/test` installs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt as _;

/// How the server behaves.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// Refuse every recipient with this reply, e.g. "550 5.7.1 Sender domain is not verified".
    pub refuse: Option<String>,
    /// With `refuse`: refuse only recipients whose address contains this text.
    pub refuse_to: Option<String>,
    /// Refuse the first N messages with "451 4.3.0 Try again later".
    pub transient_first: u32,
    /// Wait this long before accepting each message.
    pub delay: Duration,
    /// Hold messages to recipients containing this text until [`SmtpSink::release`]
    /// lets them through.
    pub hold_to: Option<String>,
}

/// A running SMTP server that stores what it accepts. Killed when dropped.
#[derive(Debug)]
pub struct SmtpSink {
    child: tokio::process::Child,
    port: u16,
    dir: PathBuf,
    _tempdir: tempfile::TempDir,
}

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// The Message-ID, without angle brackets.
    pub message_id: String,
    pub to: String,
    pub from: String,
    pub subject: String,
    pub body: String,
    pub raw: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/smtp_sink.py")
}

impl SmtpSink {
    /// Starts a server on a free loopback port.
    pub async fn start(options: SinkOptions) -> anyhow::Result<SmtpSink> {
        let tempdir = tempfile::Builder::new().prefix("cairn-smtp-").tempdir()?;
        let dir = tempdir.path().join("received");
        let mut command = tokio::process::Command::new("python3");
        command
            .arg(script())
            .arg("--dir")
            .arg(&dir)
            .arg("--transient-first")
            .arg(options.transient_first.to_string())
            .arg("--delay")
            .arg(options.delay.as_secs_f64().to_string())
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(refuse) = &options.refuse {
            command.arg("--refuse").arg(refuse);
        }
        if let Some(refuse_to) = &options.refuse_to {
            command.arg("--refuse-to").arg(refuse_to);
        }
        if let Some(hold_to) = &options.hold_to {
            command.arg("--hold-to").arg(hold_to);
        }
        let mut child = command.spawn().context(
            "starting scripts/smtp_sink.py (python3 with aiosmtpd; scripts/test installs it)",
        )?;
        let stdout = child.stdout.take().context("the sink's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("the SMTP sink did not start within 20 s")??
            .context(
                "the SMTP sink exited before listening (is aiosmtpd installed? run scripts/test)",
            )?;
        let port = line
            .rsplit(':')
            .next()
            .and_then(|port| port.trim().parse().ok())
            .with_context(|| format!("unexpected first line from the SMTP sink: {line}"))?;
        Ok(SmtpSink {
            child,
            port,
            dir,
            _tempdir: tempdir,
        })
    }

    /// The server's URL, for `--mail-url`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|raw| parse(&raw))
            .collect()
    }

    /// Every message accepted so far with the time the server accepted it (stored it,
    /// just before its reply), oldest first.
    pub fn accepted(&self) -> Vec<(std::time::SystemTime, Received)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
            .filter_map(|path| {
                let nanos = path
                    .file_stem()?
                    .to_str()?
                    .split('-')
                    .next()?
                    .parse()
                    .ok()?;
                Some((nanos, path))
            })
            .collect();
        found.sort();
        found
            .iter()
            .filter_map(|(nanos, path)| {
                let raw = std::fs::read_to_string(path).ok()?;
                Some((
                    std::time::UNIX_EPOCH + Duration::from_nanos(*nanos),
                    parse(&raw),
                ))
            })
            .collect()
    }

    /// How many messages the server has held so far (see [`SinkOptions::hold_to`]).
    pub fn held(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(".held-"))
                .count()
        })
    }

    /// Waits until the server holds `count` messages, for at most `within`.
    pub async fn wait_held(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.held() < count {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the SMTP sink held {} messages within {within:?}, not {count}",
                self.held()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Lets the first `count` held messages (counting those released before) through.
    pub fn release(&self, count: usize) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let temporary = self.dir.join(".release.tmp");
        std::fs::write(&temporary, count.to_string())?;
        std::fs::rename(temporary, self.dir.join("release"))?;
        Ok(())
    }

    /// Starts or ends an outage: while it lasts, the server refuses every recipient
    /// with "451 4.3.2 System not accepting network messages".
    pub fn set_outage(&self, on: bool) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let marker = self.dir.join("outage");
        if on {
            std::fs::write(&marker, b"")?;
        } else if marker.exists() {
            std::fs::remove_file(&marker)?;
        }
        Ok(())
    }

    /// How many recipients the server refused during outages.
    pub fn refused_in_outages(&self) -> usize {
        std::fs::read_to_string(self.dir.join(".outage")).map_or(0, |text| text.lines().count())
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Reads the headers a test cares about from a raw RFC 5322 message.
pub fn parse(raw: &str) -> Received {
    let normalized = raw.replace("\r\n", "\n");
    let (head, body) = normalized
        .split_once("\n\n")
        .unwrap_or((normalized.as_str(), ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let body = if header("content-transfer-encoding").eq_ignore_ascii_case("quoted-printable") {
        decode_quoted_printable(body)
    } else {
        body.to_owned()
    };
    Received {
        message_id: header("message-id").trim_matches(['<', '>']).to_owned(),
        to: header("to"),
        from: header("from"),
        subject: header("subject"),
        body,
        raw: raw.to_owned(),
    }
}

/// The headers of a raw message as a mail client shows them: decoded from RFC 2047 by
/// Python's `email` package (the sink's own runtime), one `name: value` line each, in
/// order, with any line break inside a value kept as `\r`/`\n`.
pub fn decoded_headers(raw: &str) -> anyhow::Result<Vec<(String, String)>> {
    use std::io::Write as _;
    let program = "import email, email.policy, json, sys\n\
        m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)\n\
        print(json.dumps([[k, str(v)] for k, v in m.items()]))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3 to decode a message")?;
    child
        .stdin
        .take()
        .context("python3's standard input")?
        .write_all(raw.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "python3 could not decode the message: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pairs: Vec<(String, String)> = serde_json::from_slice(&output.stdout)?;
    Ok(pairs)
}

/// Undoes quoted-printable encoding (RFC 2045): soft line breaks and `=XX` escapes.
pub fn decode_quoted_printable(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'='
            && let Some(hex) = joined.get(index + 1..index + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
