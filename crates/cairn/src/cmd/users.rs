//! `cairn users` and `cairn invitations address`: a person's roles, their access
//! withdrawn and given back, and an invitation sent to a corrected address.

use std::process::ExitCode;

use console::style;

use cairn_domain::{AddressCorrection, CommandContext, PersonStanding, RolesRequest};
use cairn_policy::Principal;

use crate::app;
use crate::cli::{AddressArgs, Runtime, UsersCommand};
use crate::cmd::org::explain;
use crate::ui;

fn operator() -> CommandContext {
    CommandContext::new(Principal::Operator {
        name: "cairn-cli".to_owned(),
    })
}

pub async fn run(url: &str, runtime: &Runtime, command: UsersCommand) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let (standing, json, done) = match command {
        UsersCommand::Roles(args) => {
            let request = RolesRequest { roles: args.roles };
            let standing = domain
                .change_roles(&operator(), args.id, &request)
                .await
                .map_err(explain)?;
            (standing, args.json.json, "has the roles")
        }
        UsersCommand::Deactivate(args) => {
            let standing = domain
                .deactivate_user(&operator(), args.id, &args.reason)
                .await
                .map_err(explain)?;
            (
                standing,
                args.json.json,
                "is deactivated: their tokens do not work; roles",
            )
        }
        UsersCommand::Reactivate(args) => {
            let standing = domain
                .reactivate_user(&operator(), args.id)
                .await
                .map_err(explain)?;
            (standing, args.json.json, "is active again, with the roles")
        }
    };
    print_standing(&standing, json, done)
}

fn print_standing(standing: &PersonStanding, json: bool, done: &str) -> anyhow::Result<ExitCode> {
    if json {
        ui::print_json(standing)?;
        return Ok(ExitCode::SUCCESS);
    }
    let roles: Vec<&str> = standing.roles.iter().map(|role| role.as_str()).collect();
    outln!(
        "{} user {} {done} {}",
        style("✓").green().bold(),
        standing.user_id,
        if roles.is_empty() {
            "(none)".to_owned()
        } else {
            roles.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn address(url: &str, runtime: &Runtime, args: AddressArgs) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let started = domain
        .correct_invitation_address(
            &operator(),
            args.id,
            &AddressCorrection { email: args.email },
        )
        .await
        .map_err(explain)?;
    if args.json.json {
        ui::print_json(&started)?;
    } else {
        outln!(
            "{} invitation {} is on its way to the corrected address (workflow {}); \
             `cairn workflows run` sends it if no server is running",
            style("✓").green().bold(),
            started.invitation_id,
            started.workflow_id
        );
    }
    Ok(ExitCode::SUCCESS)
}
