//! `cairn bench erase`: how long erasing a person takes, for people mentioned by few
//! and by many events. Erasure destroys one key and empties one person's rows, so it
//! should not grow with the events that mention them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use console::style;
use serde::Serialize;
use serde_json::json;

use cairn_dispatch::{EventPayload as _, EventStore};
use cairn_domain::events::UserInvited;
use cairn_domain::{CommandContext, Domain, DomainConfig, InviteeRequest};
use cairn_log::{AppendRequest, Expected};
use cairn_policy::Principal;
use cairn_types::{Metadata, StreamType, UserId};
use cairn_workflow::{EngineConfig, SystemClock};

use crate::app;
use crate::cli::BenchEraseArgs;
use crate::ui;

#[derive(Debug, Serialize)]
struct Scenario {
    /// Events that carry the person's sealed name and address.
    mentions: u64,
    people: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    place: String,
    scenarios: Vec<Scenario>,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    Some(sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e3)
}

/// A person invited to `org`, then mentioned by `mentions - 1` more `user.invited`
/// events on their stream (each sealed under their key).
async fn person(
    domain: &Domain,
    ctx: &CommandContext,
    org: cairn_types::OrgId,
    label: &str,
    mentions: u64,
) -> anyhow::Result<UserId> {
    let invite = InviteeRequest {
        email: format!("{label}@bench.example.com"),
        name: format!("Bench Person {label}"),
        roles: vec!["viewer".to_owned()],
    };
    let started = domain.invite(ctx, org, &invite).await?;
    let invited = UserInvited {
        org_id: org,
        email: cairn_domain::model::Email::parse(&invite.email)
            .map_err(|e| anyhow::anyhow!(e))?
            .into(),
        name: cairn_domain::model::Name::parse(&invite.name)
            .map_err(|e| anyhow::anyhow!(e))?
            .into(),
        roles: vec![cairn_domain::model::Role::Viewer],
        invitation_id: started.invitation_id,
        invited_by: None,
    };
    let mut left = mentions.saturating_sub(1);
    while left > 0 {
        let n = left.min(500);
        let mut metadata = Metadata::new();
        metadata.org_id = Some(org);
        let events = (0..n).map(|_| invited.to_event(metadata.clone())).collect();
        domain
            .store()
            .append(
                AppendRequest::new(StreamType::parse("user")?, started.user_id.into(), events)
                    .expect(Expected::Any),
            )
            .await?;
        left -= n;
    }
    Ok(started.user_id)
}

pub async fn erase(url: &str, args: BenchEraseArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=1000).contains(&args.people),
        "--people must be 1 to 1000, not {}",
        args.people
    );
    anyhow::ensure!(
        args.mentions.iter().all(|m| (1..=1_000_000).contains(m)),
        "--mentions must each be 1 to 1,000,000"
    );
    let (place, db, described) = super::Place::open(url, None).await?;
    let backend = db.backend();
    if !args.json.json {
        outln!(
            "{} erase · {described} · {} people per scenario",
            style("cairn bench").bold(),
            args.people
        );
    }
    let outbox = tempfile::tempdir()?;
    let result = async {
        let domain = Domain::open(
            EventStore::new(db.clone(), app::registry()),
            Arc::new(cairn_mail::OutboxMailer::new(outbox.path())),
            Arc::new(SystemClock),
            DomainConfig::default(),
            EngineConfig::default(),
        )
        .await?;
        let ctx = CommandContext::new(Principal::Operator {
            name: "cairn-bench".to_owned(),
        });
        let request = serde_json::from_value(json!({
            "organization": {"name": "Erasure Bench", "slug": "erasure-bench", "sender_domain": "mail.bench.example.co.uk"},
            "admin": {"email": "admin@bench.example.com", "name": "Admin"},
        }))?;
        let org = domain.bootstrap(&ctx, &request).await?.org_id;
        domain.engine().run_until_idle().await?;
        let mut scenarios = Vec::new();
        for &mentions in &args.mentions {
            if !args.json.json {
                outln!(
                    "  {} people, each in {} events …",
                    args.people,
                    ui::count(mentions)
                );
            }
            let mut people = Vec::with_capacity(args.people);
            for index in 0..args.people {
                people.push(person(&domain, &ctx, org, &format!("m{mentions}-{index}"), mentions).await?);
            }
            domain.engine().run_until_idle().await?;
            let mut latencies = Vec::with_capacity(people.len());
            for user in people {
                let started = Instant::now();
                domain.erase_subject(&ctx, user, "benchmark").await?;
                latencies.push(started.elapsed());
            }
            latencies.sort();
            scenarios.push(Scenario {
                mentions,
                people: latencies.len(),
                p50_ms: percentile(&latencies, 0.5),
                p99_ms: percentile(&latencies, 0.99),
                max_ms: latencies.last().map(|d| d.as_secs_f64() * 1e3),
            });
        }
        anyhow::Ok(scenarios)
    }
    .await;
    db.close().await;
    place.remove().await?;
    let report = Report {
        backend: backend.as_str(),
        place: described,
        scenarios: result?,
    };
    if args.json.json {
        ui::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ms = |value: Option<f64>| {
        value.map_or("–".to_owned(), |v| {
            ui::duration(Duration::from_secs_f64(v / 1e3))
        })
    };
    let mut table = ui::table(&["EVENTS PER PERSON", "PEOPLE", "P50", "P99", "MAX"]);
    for scenario in &report.scenarios {
        table.add_row(vec![
            ui::count(scenario.mentions),
            scenario.people.to_string(),
            ms(scenario.p50_ms),
            ms(scenario.p99_ms),
            ms(scenario.max_ms),
        ]);
    }
    outln!("{table}");
    outln!(
        "{}",
        style("each erasure: the key destroyed, user.erased appended and the rows emptied in one commit, then the outbox swept").dim()
    );
    Ok(ExitCode::SUCCESS)
}
