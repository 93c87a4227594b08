//! Running `cairn` as a process in tests.

#![allow(dead_code)]

pub mod browser;
pub mod server;

use std::process::Output;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// Runs `cairn --database-url URL ARGS…` with no standard input.
pub async fn cairn(url: &str, args: &[&str]) -> Output {
    cairn_in(url, args, &[], None).await
}

/// Runs `cairn` with extra environment variables and, optionally, standard input.
pub async fn cairn_in(
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Output {
    use tokio::io::AsyncWriteExt as _;
    let mut command = cairn_tokio();
    command
        .arg("--database-url")
        .arg(url)
        .args(args)
        .env_remove("CAIRN_DATABASE_URL")
        .env_remove("CAIRN_MAIL_URL")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("cairn runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .await
            .expect("stdin takes the input");
        drop(pipe);
    }
    child.wait_with_output().await.expect("cairn finishes")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit status; stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

#[track_caller]
pub fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(output),
            stderr(output)
        )
    })
}

/// A bootstrap request with a unique slug.
pub fn bootstrap_request(slug: &str) -> String {
    serde_json::json!({
        "organization": {"name": "Sunrise Care", "slug": slug, "sender_domain": "mail.sunrise.example.co.uk"},
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]},
            {"email": "alan@example.org", "name": "Alan Turing", "roles": ["coordinator", "viewer"]}
        ]
    })
    .to_string()
}

/// A fresh id (a UUIDv7), for streams, organizations and correlation ids.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A bearer token from `cairn token ARGS…`.
pub async fn token(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let output = cairn(url, &all).await;
    assert_exit(&output, 0);
    Ok(stdout(&output).trim().to_owned())
}

/// `cairn events append` of one event with `data`, which the command line accepts
/// (exit 0: an event whose handler fails is stored all the same).
pub async fn append(
    url: &str,
    stream_type: &str,
    stream_id: &str,
    event_type: &str,
    data: &str,
) -> Output {
    let output = cairn(
        url,
        &[
            "events",
            "append",
            "--stream-type",
            stream_type,
            "--stream-id",
            stream_id,
            "--type",
            event_type,
            "--data",
            data,
        ],
    )
    .await;
    assert_exit(&output, 0);
    output
}

/// A file outbox in a fresh temporary directory: the directory (removed when it is
/// dropped) and the mail URL that writes to it.
pub fn outbox() -> anyhow::Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let url = format!("outbox:{}", dir.path().display());
    Ok((dir, url))
}

/// A free port on loopback, for a server whose address must be known before it
/// starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on loopback")
        .port()
}

/// What changes from one run to the next in the output of a command, what stands for
/// it in snapshots, and whether the stand-in keeps the width of what it replaces when
/// a column follows (in tables).
static VARYING: LazyLock<Vec<(Regex, &'static str, bool)>> = LazyLock::new(|| {
    [
        // A test database: a file in a temporary directory, or a PostgreSQL database
        // of its own (the demo's relative default stays as it is).
        (r"sqlite:///\S+|postgres(?:ql)?://\S+", "[database]", false),
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[uuid]",
            false,
        ),
        // The tail of an id, as tables (twelve digits) and timelines (six) show it.
        (r"…[0-9a-f]{12}\b", "…[id]", true),
        (r"…[0-9a-f]{6}\b", "…[id]", false),
        (r"\b[0-9a-f]{12,64}\b", "[hash]", false),
        (
            r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?: UTC|Z|[+-]\d{2}:\d{2})?",
            "[time]",
            false,
        ),
        (r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b", "[time]", true),
        (r"\b[\d,]+(?:\.\d+)? (\w+)/s\b", "[rate] $1/s", false),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[port]", false),
        // The demo's organization gets a slug of its own on every run, and which of
        // its steps is the slowest is a matter of chance.
        (
            r"\bsunrise-care-[0-9a-f]{4}\b",
            "sunrise-care-[suffix]",
            false,
        ),
        (r"slowest step: \S+", "slowest step: [step]", false),
    ]
    .into_iter()
    .map(|(pattern, replacement, keep_width)| {
        (
            Regex::new(pattern).expect("a valid pattern"),
            replacement,
            keep_width,
        )
    })
    .collect()
});

/// A path in the temporary directory, where tests keep their files.
static TEMPORARY: LazyLock<Regex> = LazyLock::new(|| {
    let dir = std::env::temp_dir();
    let dir = dir.to_string_lossy();
    Regex::new(&format!(
        r#"{}/?[^\s:,;)'"]*"#,
        regex::escape(dir.trim_end_matches('/'))
    ))
    .expect("a valid pattern")
});

/// A duration for people (`850µs`, `+12.3ms`, `4.56s`), with the spaces that pad it
/// to a column's width: its width varies, so it takes one space, or none.
static DURATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"( *)(\+?)\b\d+(?:\.\d+)?(?:µs|ms|s)\b").expect("a valid pattern")
});

/// An event's row in a timeline (`cairn trace`) shows its handler's time only when
/// the handler took a millisecond or more: by chance, on a busy machine.
static EVENT_HANDLER_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(\+\[duration\]) \[duration\](  event )").expect("a valid pattern")
});

/// The output of a command as a snapshot holds it: ids, hashes, times, durations,
/// rates, paths, ports and database URLs replaced by placeholders (`[uuid]`, `…[id]`,
/// `[hash]`, `[time]`, `[duration]`, `[rate]`, `[path]`, `[port]`, `[database]`), and
/// no spaces at the ends of lines.
///
/// The snapshots are `expect![[…]]` literals; `UPDATE_EXPECT=1 cargo test -p cairn
/// --test it` rewrites them in one process (under nextest, the two backends' copies of
/// a test would be two processes rewriting the same file).
pub fn redact(text: &str) -> String {
    let mut text = text.to_owned();
    for (pattern, replacement, keep_width) in VARYING.iter() {
        let before = text;
        text = pattern
            .replace_all(&before, |c: &Captures<'_>| {
                let mut stand_in = String::new();
                c.expand(replacement, &mut stand_in);
                let whole = c.get(0).expect("the whole match");
                let width = whole.as_str().chars().count();
                if *keep_width && before[whole.end()..].starts_with(' ') {
                    while stand_in.chars().count() < width {
                        stand_in.push(' ');
                    }
                }
                stand_in
            })
            .into_owned();
    }
    text = TEMPORARY.replace_all(&text, "[path]").into_owned();
    text = DURATION
        .replace_all(&text, |c: &Captures<'_>| {
            let space = if c[1].is_empty() { "" } else { " " };
            format!("{space}{}[duration]", &c[2])
        })
        .into_owned();
    text = EVENT_HANDLER_TIME
        .replace_all(&text, "$1          $2")
        .into_owned();
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    while lines.last() == Some(&"") {
        lines.pop();
    }
    lines.join("\n") + "\n"
}

/// The `cairn` binary, given the personal-data key every test database has, and run
/// in the tests' scratch directory: what it writes by default (the outbox, a key)
/// stays out of the source tree.
pub fn cairn_tokio() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    command
        .env("CAIRN_PII_KEY", cairn_testkit::TEST_PII_KEY)
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    command
}

/// [`cairn_tokio`], blocking.
pub fn cairn_std() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    command
        .env("CAIRN_PII_KEY", cairn_testkit::TEST_PII_KEY)
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    command
}
