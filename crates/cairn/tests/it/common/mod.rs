//! Running `cairn` as a process in tests.

#![allow(dead_code)]

pub mod browser;
pub mod server;

use std::process::Output;

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
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
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
