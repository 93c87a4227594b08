//! `cairn demo`: bootstraps a sample organization end to end, in this process, and
//! shows what happened.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use console::style;
use serde::Serialize;
use serde_json::{Value, json};

use cairn_domain::queries::{self, Organization, Page, User};
use cairn_domain::{BootstrapRequest, CommandContext};
use cairn_log::{EventFilter, RecordedEvent};
use cairn_policy::Principal;
use cairn_workflow::{Run, RunFilter, RunWithSteps};

use crate::app;
use crate::cli::{JsonFlag, Runtime};
use crate::cmd::org::explain;
use crate::cmd::workflows::{status_mark, step_duration, step_line};
use crate::ui;

#[derive(Debug, Serialize)]
struct Email {
    to: String,
    subject: String,
    message_id: String,
    transport: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    database: String,
    mail: String,
    organization: Organization,
    users: Vec<User>,
    workflow: RunWithSteps,
    child_workflows: Vec<Run>,
    emails: Vec<Email>,
    events: Vec<RecordedEvent>,
    elapsed_ms: f64,
}

fn sample_request() -> anyhow::Result<BootstrapRequest> {
    let suffix = &cairn_types::OrgId::new_v7().to_string()[32..];
    Ok(serde_json::from_value(json!({
        "organization": {
            "name": "Sunrise Care",
            "slug": format!("sunrise-care-{suffix}"),
            "sender_domain": "mail.sunrise.example.co.uk",
            "direct_care_settings": {"visit_verification": true, "client_assignment": true, "max_caseload": 12}
        },
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]},
            {"email": "alan@example.org", "name": "Alan Turing", "roles": ["coordinator", "viewer"]}
        ]
    }))?)
}

fn roles_text(user: &User) -> String {
    if user.roles.is_empty() {
        return "roles granted when the invitation is accepted".to_owned();
    }
    user.roles
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(url: &str, runtime: &Runtime, args: JsonFlag) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let domain = app::open_domain(url, runtime).await?;
    domain.engine().check_definitions().await?;
    let request = sample_request()?;
    let ctx = CommandContext::new(Principal::Operator {
        name: "cairn-demo".to_owned(),
    });
    let accepted = domain.bootstrap(&ctx, &request).await.map_err(explain)?;
    domain.engine().run_until_idle().await?;
    let elapsed = started.elapsed();

    let mut reader = domain.store().db().reader().await?;
    let mut conn = reader.conn();
    let organization = queries::organization(&mut conn, accepted.org_id)
        .await?
        .context("the organization is missing after its bootstrap")?;
    let users = queries::users(&mut conn, accepted.org_id, Page::default()).await?;
    // Each send step names its invitation, whose email address is the recipient.
    let recipients: std::collections::BTreeMap<String, String> =
        queries::invitations(&mut conn, accepted.org_id, Page::default())
            .await?
            .into_iter()
            .map(|invitation| (invitation.id.to_string(), invitation.email))
            .collect();
    let workflow = cairn_workflow::state::load(&mut conn, accepted.workflow_id)
        .await?
        .context("the bootstrap workflow is missing")?;
    let children = cairn_workflow::state::list(
        &mut conn,
        &RunFilter {
            correlation_id: Some(accepted.correlation_id),
            kind: Some("invitation_expiry".to_owned()),
            ..RunFilter::default()
        },
    )
    .await?;
    let events = conn
        .read_events(&EventFilter {
            correlation_id: Some(accepted.correlation_id),
            ..EventFilter::default()
        })
        .await?;
    drop(reader);
    let subject = format!("You're invited to join {} on cairn", organization.name);
    let emails: Vec<Email> = workflow
        .steps
        .iter()
        .filter_map(|step| {
            let invitation = step.name.strip_prefix("send_invitation:")?;
            let to = recipients.get(invitation)?;
            let result = step.result.as_ref()?;
            let text = |key: &str| {
                result
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(Email {
                to: to.to_owned(),
                subject: subject.clone(),
                message_id: text("message_id"),
                transport: text("transport"),
                detail: text("detail"),
            })
        })
        .collect();
    let report = DemoReport {
        database: domain.store().db().describe(),
        mail: runtime.mail_display(),
        organization,
        users,
        workflow,
        child_workflows: children,
        emails,
        events,
        elapsed_ms: elapsed.as_secs_f64() * 1e3,
    };
    if args.json {
        ui::print_json(&report)?;
    } else {
        print_report(&report, &request);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &DemoReport, request: &BootstrapRequest) {
    let org = &report.organization;
    let label = |text: &str| style(format!("    {text:<13}")).dim().to_string();
    outln!(
        "{} · bootstrapping a sample organization on {}\n",
        style("cairn demo").bold(),
        report.database
    );
    let status = if org.is_active && org.status == "active" {
        style("✓ active").green().to_string()
    } else {
        style(format!("✗ {}", org.status)).red().to_string()
    };
    outln!("  {} ({})  {status}", style(&org.name).bold(), org.slug);
    outln!("{}{}", label("organization"), org.id);
    outln!(
        "{}{}  (the registrable domain of {})",
        label("sender"),
        org.sender_address,
        request.organization.sender_domain
    );
    for (index, user) in report.users.iter().enumerate() {
        let heading = if index == 0 { "people" } else { "" };
        outln!(
            "{}{} <{}>, {}: {}",
            label(heading),
            user.name,
            user.email,
            user.status,
            roles_text(user)
        );
    }

    let run = &report.workflow.run;
    let total = report
        .workflow
        .steps
        .iter()
        .filter_map(|s| s.started_at.zip(s.finished_at))
        .fold(
            None,
            |span: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
             (a, b)| { Some(span.map_or((a, b), |(lo, hi)| (lo.min(a), hi.max(b)))) },
        )
        .and_then(|(lo, hi)| (hi - lo).to_std().ok());
    outln!(
        "\n  {} {} {}  {}{}",
        style("Workflow").bold(),
        run.kind,
        style(run.id).dim(),
        status_mark(run.status),
        total
            .map(|t| format!(" in {}", ui::duration(t)))
            .unwrap_or_default()
    );
    for step in &report.workflow.steps {
        outln!("    {}", step_line(step));
    }
    let slowest = report
        .workflow
        .steps
        .iter()
        .filter_map(|s| step_duration(s).map(|d| (d, s.name.as_str())))
        .max();
    if let Some((duration, name)) = slowest {
        outln!(
            "    {}",
            style(format!("slowest step: {name} ({})", ui::duration(duration))).dim()
        );
    }

    outln!("\n  {} ({})", style("Emails").bold(), report.mail);
    for email in &report.emails {
        outln!("    ✉ {:<22} {}", email.to, email.subject);
        outln!("      {}", style(&email.detail).dim());
    }

    outln!(
        "\n  {} of correlation {} ({}, in order)",
        style("Events").bold(),
        run.correlation_id,
        report.events.len()
    );
    let mut table = ui::table(&["POS", "TIME (UTC)", "EVENT TYPE", "STREAM", "STATUS"]);
    for event in &report.events {
        table.add_row(vec![
            event.position.to_string(),
            event.created_at.format("%H:%M:%S%.3f").to_string(),
            event.event_type.to_string(),
            format!("{} {}", event.stream_type, ui::short_id(&event.stream_id)),
            match &event.processing_error {
                Some(error) => format!("failed {}", error.code),
                None => "applied".to_owned(),
            },
        ]);
    }
    for line in table.to_string().lines() {
        outln!("    {line}");
    }

    if let Some(first) = report.child_workflows.first() {
        outln!(
            "\n  {} invitation expiry workflows sleep on durable timers until {}.",
            report.child_workflows.len(),
            first.next_run_at.map_or("later".to_owned(), |at| at
                .format("%Y-%m-%d %H:%M UTC")
                .to_string())
        );
    }
    outln!(
        "  Done in {}. Next: {}",
        ui::duration(std::time::Duration::from_secs_f64(report.elapsed_ms / 1e3)),
        style(format!(
            "cairn trace {}  ·  cairn workflows show {}  ·  cairn replay --verify",
            run.correlation_id, run.id
        ))
        .cyan()
    );
}
