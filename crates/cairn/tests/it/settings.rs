//! Settings whose arithmetic cannot hold are refused when `cairn` starts, on both
//! backends: a clear message naming the setting and exit status 2, instead of a server
//! that starts and then panics (or fails) on every use of the setting.

use std::time::Duration;

use cairn_testkit::{TestDb, backend_test};

use crate::common::stderr;

/// Runs `cairn … serve …` and waits at most 20 s for it to exit.
async fn start(url: &str, global: &[&str], serve: &[&str]) -> anyhow::Result<std::process::Output> {
    let dir = tempfile::tempdir()?;
    let mail = format!("outbox:{}", dir.path().join("outbox").display());
    let child = crate::common::cairn_tokio()
        .current_dir(dir.path())
        .args(["--database-url", url, "--mail-url", &mail])
        .args(global)
        .args(["serve", "--addr", "127.0.0.1:0", "--probe-interval", "0"])
        .args(serve)
        .env_remove("CAIRN_DATABASE_URL")
        .env_remove("CAIRN_INVITATION_TTL")
        .env_remove("CAIRN_WORKFLOW_LEASE")
        .env_remove("CAIRN_STUCK_AFTER")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    match tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await {
        Ok(output) => Ok(output?),
        Err(_) => anyhow::bail!(
            "cairn {global:?} serve {serve:?} started (and ran for 20 s) instead of refusing"
        ),
    }
}

backend_test!(
    settings_whose_arithmetic_cannot_hold_are_refused_at_start_up,
    |t: TestDb| async move {
        let cases: [(&[&str], &[&str], &str); 7] = [
            // 300,000,000 days from now is past any date chrono can count: every
            // invitation email would fail.
            (&["--invitation-ttl", "300000000d"], &[], "--invitation-ttl"),
            // Past the year 9999 a date cannot be stored as text.
            (&["--invitation-ttl", "3000000d"], &[], "--invitation-ttl"),
            // More seconds than a number can hold.
            (
                &["--invitation-ttl", "999999999999999999d"],
                &[],
                "--invitation-ttl",
            ),
            (
                &["--workflow-lease-seconds", "inf"],
                &[],
                "--workflow-lease-seconds",
            ),
            (
                &["--workflow-lease-seconds", "1e300"],
                &[],
                "--workflow-lease-seconds",
            ),
            (&[], &["--stuck-after", "300000000d"], "--stuck-after"),
            // Subscriptions hold their connections: as many as the cap would leave
            // none for requests.
            (
                &[],
                &["--max-connections", "64", "--max-subscriptions-total", "64"],
                "--max-subscriptions-total",
            ),
        ];
        for (global, serve, flag) in cases {
            let output = start(t.url(), global, serve).await?;
            let said = stderr(&output);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{global:?} {serve:?}: exit status; stderr:\n{said}"
            );
            assert!(
                said.contains(flag) && !said.contains("panicked"),
                "{global:?} {serve:?}: the message names {flag}:\n{said}"
            );
        }

        // A long but sane TTL is accepted: parsing goes on to the next setting, which
        // is what stops it here.
        let output = start(
            t.url(),
            &["--invitation-ttl", "3650d", "--workflow-lease-seconds", "x"],
            &[],
        )
        .await?;
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{said}");
        assert!(
            said.contains("--workflow-lease-seconds") && !said.contains("--invitation-ttl"),
            "{said}"
        );
        Ok(())
    }
);
