//! `cairn bench http`: `cairn serve` processes under load over loopback.
//!
//! Each server is a child process, started on a place of its own as a user would start
//! it, so that its memory is its own. Clients are real HTTP/1.1 connections with
//! keep-alive, each sending its next request as soon as the last one is answered:
//! an authenticated read (`GET /v1/organizations/{id}`) with 16 connections, an
//! authenticated read of people (`GET /v1/organizations/{id}/users`, which leaves a
//! record in the access log) with as many, and a command (`PUT /v1/organizations/{id}/direct-care-settings`, one event through the
//! log writer) with 64. With `--processes 1,2,4`, each count of processes shares one
//! database and the connections are spread over them: how throughput scales when
//! several processes share the log (on PostgreSQL, as in production).

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use console::style;
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

use cairn_dispatch::EventStore;
use cairn_domain::{CommandContext, Domain, DomainConfig};
use cairn_policy::Principal;
use cairn_workflow::{EngineConfig, SystemClock};

use crate::app;
use crate::cli::BenchHttpArgs;
use crate::ui;

#[derive(Debug, Serialize)]
struct Scenario {
    name: &'static str,
    /// `cairn serve` processes sharing the database.
    processes: usize,
    connections: usize,
    requests: u64,
    requests_per_second: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Answers other than the expected status (503 overloaded among them).
    errors: u64,
    overloaded: u64,
    /// The largest server's resident memory at the end of the scenario, in MiB.
    server_rss_mib: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    place: String,
    scenarios: Vec<Scenario>,
    /// The most resident memory any server process ever had, in MiB.
    server_peak_rss_mib: f64,
}

/// A line of `/proc/<pid>/status`, in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    Some(sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e3)
}

/// Creates the organization the load reads and changes, in this process, before the
/// server starts.
async fn prepare(db: &cairn_log::Db) -> anyhow::Result<cairn_types::OrgId> {
    let outbox = tempfile::tempdir()?;
    let domain = Domain::open(
        EventStore::new(db.clone(), app::registry()),
        Arc::new(cairn_mail::OutboxMailer::new(outbox.path())),
        Arc::new(SystemClock),
        DomainConfig::default(),
        EngineConfig::default(),
    )
    .await?;
    let operator = CommandContext::new(Principal::Operator {
        name: "cairn-bench".to_owned(),
    });
    let request = serde_json::from_value(json!({
        "organization": {"name": "Bench Care", "slug": "bench-care", "sender_domain": "mail.bench.example.co.uk"},
        "admin": {"email": "admin@example.com", "name": "Admin"},
    }))?;
    let org_id = domain.bootstrap(&operator, &request).await?.org_id;
    domain.engine().run_until_idle().await?;
    Ok(org_id)
}

/// A `cairn serve` child process, stopped when dropped.
struct Server {
    child: tokio::process::Child,
    base: String,
    _outbox: tempfile::TempDir,
}

impl Server {
    async fn start(url: &str, secret: &str) -> anyhow::Result<Server> {
        let outbox = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "--database-url",
                url,
                "--mail-url",
                &format!("outbox:{}", outbox.path().display()),
                "serve",
                "--addr",
                "127.0.0.1:0",
            ])
            .env("CAIRN_JWT_SECRET", secret)
            .env_remove("CAIRN_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting cairn serve")?;
        let stdout = child.stdout.take().context("the server's output")?;
        let stderr = child.stderr.take().context("the server's log")?;
        let find = async {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut log = tokio::io::BufReader::new(stderr).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line? {
                        Some(line) => {
                            if let Some(rest) = line.split("listening on ").nth(1) {
                                let base = rest.split_whitespace().next().unwrap_or_default().to_owned();
                                // Keep draining the server's output so it never blocks on it.
                                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                                tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
                                return anyhow::Ok(base);
                            }
                        }
                        None => anyhow::bail!("cairn serve stopped before it listened"),
                    },
                    line = log.next_line() => {
                        if let Some(line) = line? && let Some(rest) = line.split("listening on ").nth(1) {
                            let base = rest.split_whitespace().next().unwrap_or_default().to_owned();
                            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                            tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
                            return anyhow::Ok(base);
                        }
                    }
                }
            }
        };
        let base = tokio::time::timeout(Duration::from_secs(60), find)
            .await
            .context("cairn serve did not start listening within a minute")??;
        anyhow::ensure!(
            base.starts_with("http://"),
            "cairn serve said it listens on {base:?}"
        );
        Ok(Server {
            child,
            base,
            _outbox: outbox,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // Stopped as a user stops it: SIGTERM, then it drains.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}

/// How one request of a scenario is made.
#[derive(Clone)]
enum Call {
    Read { path: String },
    Command { path: String },
}

async fn run(
    servers: &[Server],
    token: &str,
    name: &'static str,
    call: Call,
    connections: usize,
    duration: Duration,
    progress: &ui::Progress,
) -> anyhow::Result<Scenario> {
    let started = Instant::now();
    let deadline = started + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for connection in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let base = servers[connection % servers.len()].base.clone();
        let token = token.to_owned();
        let call = call.clone();
        let errors = errors.clone();
        let overloaded = overloaded.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                n += 1;
                let begun = Instant::now();
                let (request, expected) = match &call {
                    Call::Read { path } => (client.get(format!("{base}{path}")), 200),
                    Call::Command { path } => (
                        client.put(format!("{base}{path}")).json(&json!({
                            "visit_verification": true,
                            "client_assignment": n.is_multiple_of(2),
                            "max_caseload": 1 + (connection as u64 + n) % 40,
                        })),
                        200,
                    ),
                };
                match request.bearer_auth(&token).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        if status == expected {
                            latencies.push(begun.elapsed());
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if status == 503 {
                                overloaded.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let ticker = async {
        while Instant::now() < deadline {
            progress.update(
                started.elapsed().as_millis() as u64,
                duration.as_millis() as u64,
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let joined = async {
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await?);
        }
        anyhow::Ok(latencies)
    };
    let (latencies, ()) = tokio::join!(joined, ticker);
    let mut latencies = latencies?;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(Scenario {
        name,
        processes: servers.len(),
        connections,
        requests: latencies.len() as u64,
        requests_per_second: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        errors: errors.load(Ordering::Relaxed),
        overloaded: overloaded.load(Ordering::Relaxed),
        server_rss_mib: servers
            .iter()
            .filter_map(|server| server.pid().and_then(|pid| proc_status_mib(pid, "VmRSS:")))
            .fold(f64::NAN, f64::max),
    })
}

pub async fn http(url: &str, args: BenchHttpArgs) -> anyhow::Result<ExitCode> {
    let duration = super::scenario_duration(&args.common)?;
    for (flag, n) in [
        ("--read-connections", args.read_connections),
        ("--command-connections", args.command_connections),
    ] {
        anyhow::ensure!(
            (1..=1024).contains(&n),
            "{flag} takes 1 to 1024 connections, not {n}"
        );
    }
    anyhow::ensure!(
        !args.processes.is_empty(),
        "--processes needs at least one count"
    );
    for &n in &args.processes {
        anyhow::ensure!(
            (1..=16).contains(&n),
            "--processes takes counts from 1 to 16, not {n}"
        );
    }
    let (place, db, described) = super::Place::open(url, None).await?;
    let backend = db.backend();
    super::announce("http", &described, duration, args.common.json.json);
    let result = async {
        let org_id = prepare(&db).await?;
        db.close().await;
        let mut secret = [0_u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let secret = cairn_log::hex(&secret);
        let token = cairn_policy::mint(
            &Principal::PlatformAdmin {
                name: "bench".to_owned(),
            },
            secret.as_bytes(),
            Duration::from_secs(3_600),
        )?;
        let mut scenarios = Vec::new();
        let mut peak = f64::NAN;
        for &processes in &args.processes {
            let mut servers = Vec::with_capacity(processes);
            for _ in 0..processes {
                servers.push(Server::start(&place.url_for_process(), &secret).await?);
            }
            let plan = [
                (
                    "authenticated read",
                    Call::Read {
                        path: format!("/v1/organizations/{org_id}"),
                    },
                    args.read_connections,
                ),
                (
                    "authenticated read of people (users)",
                    Call::Read {
                        path: format!("/v1/organizations/{org_id}/users"),
                    },
                    args.read_connections,
                ),
                (
                    "command (direct-care settings)",
                    Call::Command {
                        path: format!("/v1/organizations/{org_id}/direct-care-settings"),
                    },
                    args.command_connections,
                ),
            ];
            for (name, call, connections) in plan {
                let progress = ui::Progress::new("running");
                let scenario = run(
                    &servers,
                    &token,
                    name,
                    call,
                    connections,
                    duration,
                    &progress,
                )
                .await;
                progress.finish();
                scenarios.push(scenario?);
            }
            for server in servers {
                if let Some(mib) = server.pid().and_then(|pid| proc_status_mib(pid, "VmHWM:")) {
                    peak = peak.max(mib);
                }
                server.stop().await;
            }
        }
        anyhow::Ok((scenarios, peak))
    }
    .await;
    place.remove().await?;
    let (scenarios, peak) = result?;
    let report = Report {
        backend: backend.as_str(),
        place: described,
        scenarios,
        server_peak_rss_mib: peak,
    };
    if args.common.json.json {
        ui::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&[
        "SCENARIO",
        "PROCESSES",
        "CONNECTIONS",
        "REQUESTS",
        "REQ/S",
        "P50",
        "P99",
        "ERRORS",
        "SERVER RSS",
    ]);
    let ms = |value: Option<f64>| {
        value.map_or("–".to_owned(), |v| {
            ui::duration(Duration::from_secs_f64(v / 1e3))
        })
    };
    for s in &report.scenarios {
        table.add_row(vec![
            s.name.to_owned(),
            ui::count(s.processes as u64),
            ui::count(s.connections as u64),
            ui::count(s.requests),
            ui::count(s.requests_per_second.round() as u64),
            ms(s.p50_ms),
            ms(s.p99_ms),
            if s.overloaded > 0 {
                format!(
                    "{} ({} overloaded)",
                    ui::count(s.errors),
                    ui::count(s.overloaded)
                )
            } else {
                ui::count(s.errors)
            },
            format!("{:.0} MiB", s.server_rss_mib),
        ]);
    }
    outln!("{table}");
    outln!(
        "{}",
        style(format!(
            "cairn serve processes over loopback, clients in this process; the largest server's peak resident memory: {:.0} MiB",
            report.server_peak_rss_mib
        ))
        .dim()
    );
    Ok(ExitCode::SUCCESS)
}
