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
