//! Onboarding: organizations, their bootstrap, their people, invitations and settings.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use cairn_domain::model::DirectCareSettings;
use cairn_domain::reads::{self, Page as QueryPage};
use cairn_domain::{BootstrapRequest, InviteeRequest, OrganizationRequest, PersonRequest};
use cairn_policy::Action;
use cairn_types::{InvitationId, OrgId};

use super::{Form, Layout, Session, Time, not_found, problem_page, render, time, time_text};
use crate::AppState;
use crate::problem::Problem;
use crate::routes::{allow, command_problem, read_problem};

/// The roles a person can be given, in the order forms show them.
const ROLES: [&str; 4] = ["admin", "clinician", "coordinator", "viewer"];

/// How many invitee rows the bootstrap form offers.
const INVITEE_ROWS: usize = 3;

/// One input of a form, with what was typed and what was wrong with it.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub id: String,
    pub name: String,
    pub label: String,
    pub kind: &'static str,
    pub value: String,
    pub hint: Option<&'static str>,
    pub error: Option<String>,
    pub autocomplete: &'static str,
    /// The keyboard a phone shows (`numeric` for a number typed as text, so that
    /// what was typed comes back with its error rather than an empty value).
    pub inputmode: Option<&'static str>,
}

/// One line of a refused form's error summary: the field's label and what was wrong,
/// linking to the field.
pub(crate) struct FieldProblem {
    pub href: String,
    pub text: String,
}

impl FieldProblem {
    fn of(field: &Field, label: &str) -> Option<FieldProblem> {
        field.error.as_ref().map(|error| FieldProblem {
            href: format!("#{}", field.id),
            text: format!("{label}: {error}"),
        })
    }
}

impl Field {
    pub(super) fn new(name: &str, label: &str, kind: &'static str) -> Field {
        Field {
            id: name.replace(['.', '[', ']'], "-"),
            name: name.to_owned(),
            label: label.to_owned(),
            kind,
            value: String::new(),
            hint: None,
            error: None,
            autocomplete: "off",
            inputmode: None,
        }
    }

    /// A whole number, typed as text: see [`Field::inputmode`].
    fn numeric(mut self) -> Field {
        self.kind = "text";
        self.inputmode = Some("numeric");
        self
    }

    pub(super) fn hint(mut self, hint: &'static str) -> Field {
        self.hint = Some(hint);
        self
    }

    fn autocomplete(mut self, value: &'static str) -> Field {
        self.autocomplete = value;
        self
    }

    /// Fills in the submitted value and the error for this field, if any.
    pub(super) fn from(mut self, form: Option<&Form>, errors: &BTreeMap<String, String>) -> Field {
        if let Some(form) = form {
            self.value = form.text(&self.name);
        }
        self.error = errors.get(&self.name).cloned();
        self
    }

    fn value(mut self, value: impl Into<String>) -> Field {
        self.value = value.into();
        self
    }
}

/// A group of role checkboxes.
#[derive(Debug, Clone)]
pub(crate) struct RoleChoice {
    pub id: String,
    pub name: String,
    pub options: Vec<(String, bool)>,
    pub error: Option<String>,
}

impl RoleChoice {
    pub(super) fn new(
        name: &str,
        form: Option<&Form>,
        errors: &BTreeMap<String, String>,
    ) -> RoleChoice {
        let chosen: Vec<&str> = form.map(|f| f.all(name)).unwrap_or_default();
        RoleChoice {
            id: name.replace(['.', '[', ']'], "-"),
            name: name.to_owned(),
            options: ROLES
                .iter()
                .map(|role| ((*role).to_owned(), chosen.contains(role)))
                .collect(),
            error: errors.get(name).cloned(),
        }
    }
}

/// The field errors of a problem, by field path.
pub(super) fn field_errors(problem: &Problem) -> BTreeMap<String, String> {
    let mut errors = BTreeMap::new();
    for error in &problem.errors {
        errors
            .entry(error.field.clone())
            .or_insert_with(|| error.message.clone());
    }
    errors
}

/// A one-field confirmation form again (422), after its command was refused: the
/// field marked with the problem's error for it or, when the problem names no field,
/// with the problem's detail.
pub(super) fn form_again<T: Template>(
    problem: &Problem,
    form: &Form,
    field: Field,
    page: impl FnOnce(Field) -> T,
) -> Response {
    let mut field = field.from(Some(form), &field_errors(problem));
    if field.error.is_none() {
        field.error = Some(problem.detail.clone());
    }
    render(StatusCode::UNPROCESSABLE_ENTITY, &page(field))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    after: Option<String>,
    /// Part of a name or slug.
    q: Option<String>,
    status: Option<String>,
}

/// The statuses an organization can have, in the order the filter offers them.
const ORG_STATUSES: [&str; 3] = ["active", "bootstrapping", "failed"];

/// An organization in a list.
pub(crate) struct OrgRow {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub status: String,
    pub created_at: Time,
}

#[derive(Template)]
#[template(path = "console/organizations.html")]
struct OrganizationsPage {
    layout: Layout,
    rows: Vec<OrgRow>,
    may_bootstrap: bool,
    next: Option<String>,
    q: String,
    statuses: Vec<(&'static str, bool)>,
    filtered: bool,
}

const PAGE: u32 = 50;

/// `GET /console/organizations`.
pub(crate) async fn organizations(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<ListQuery>,
) -> Response {
    let grant = match allow(&session.ctx, Action::ListOrganizations) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(&session, &problem),
    };
    let after = query.after.as_deref().and_then(|a| OrgId::parse(a).ok());
    let status = query
        .status
        .as_deref()
        .and_then(|s| ORG_STATUSES.iter().find(|known| **known == s).copied());
    let q = query.q.clone().unwrap_or_default();
    let filter = reads::OrgFilter {
        text: Some(q.trim().to_owned()).filter(|t| !t.is_empty()),
        status: status.map(str::to_owned),
    };
    let orgs = match reads::organizations_matching(
        state.db(),
        &grant,
        &filter,
        QueryPage { after, limit: PAGE },
    )
    .await
    {
        Ok(orgs) => orgs,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let mut kept = String::new();
    if let Some(text) = &filter.text {
        kept.push_str(&format!("&q={}", super::query_value(text)));
    }
    if let Some(status) = status {
        kept.push_str(&format!("&status={status}"));
    }
    let next = (orgs.len() as u32 == PAGE)
        .then(|| {
            orgs.last()
                .map(|o| format!("/console/organizations?after={}{kept}", o.id))
        })
        .flatten();
    let rows = orgs
        .into_iter()
        .map(|o| OrgRow {
            id: o.id.to_string(),
            name: o.name,
            slug: o.slug,
            status: o.status,
            created_at: time(&o.created_at),
        })
        .collect();
    render(
        StatusCode::OK,
        &OrganizationsPage {
            layout: Layout::new(&session, "Organizations", "/organizations"),
            rows,
            may_bootstrap: session.may(&Action::BootstrapOrganization),
            next,
            filtered: filter != Default::default(),
            q,
            statuses: ORG_STATUSES
                .iter()
                .map(|s| (*s, Some(*s) == status))
                .collect(),
        },
    )
}

/// One invitee row of the bootstrap form.
pub(crate) struct InviteeRow {
    pub email: Field,
    pub name: Field,
    pub roles: RoleChoice,
}

#[derive(Template)]
#[template(path = "console/organization_new.html")]
struct NewOrganizationPage {
    layout: Layout,
    organization: Vec<Field>,
    visit_verification: bool,
    client_assignment: bool,
    max_caseload: Field,
    admin: Vec<Field>,
    invitees: Vec<InviteeRow>,
    idempotency_key: String,
    error: Option<String>,
    /// Each field that was refused, in the form's order.
    problems: Vec<FieldProblem>,
    /// Filled in again from a failed bootstrap.
    again: bool,
}

fn new_organization_page(
    session: &Session,
    form: Option<&Form>,
    errors: &BTreeMap<String, String>,
    error: Option<String>,
) -> NewOrganizationPage {
    let defaults = DirectCareSettings::default();
    let organization = vec![
        Field::new("organization.name", "Name", "text")
            .hint("Shown to the people you invite, and in their emails.")
            .from(form, errors),
        Field::new("organization.slug", "Slug", "text")
            .hint("Lower-case words joined by hyphens, unique: sunrise-care.")
            .from(form, errors),
        Field::new("organization.sender_domain", "Sender domain", "text")
            .hint("The host invitations are sent for, e.g. mail.sunrise.example.co.uk.")
            .from(form, errors),
    ];
    let max_caseload = Field::new(
        "organization.direct_care_settings.max_caseload",
        "Maximum caseload",
        "number",
    )
    .numeric()
    .hint("The most clients one staff member may have, 1 to 500.")
    .value(defaults.max_caseload.to_string());
    let max_caseload = match form {
        Some(_) => max_caseload.from(form, errors),
        None => max_caseload,
    };
    let admin = vec![
        Field::new("admin.name", "Administrator's name", "text")
            .autocomplete("name")
            .from(form, errors),
        Field::new("admin.email", "Administrator's email", "email")
            .autocomplete("email")
            .from(form, errors),
    ];
    let invitees: Vec<InviteeRow> = (0..INVITEE_ROWS)
        .map(|i| InviteeRow {
            email: Field::new(&format!("invitees[{i}].email"), "Email", "email").from(form, errors),
            name: Field::new(&format!("invitees[{i}].name"), "Name", "text").from(form, errors),
            roles: RoleChoice::new(&format!("invitees[{i}].roles"), form, errors),
        })
        .collect();
    let (visit_verification, client_assignment) = match form {
        Some(form) => (
            form.checked("organization.direct_care_settings.visit_verification"),
            form.checked("organization.direct_care_settings.client_assignment"),
        ),
        None => (defaults.visit_verification, defaults.client_assignment),
    };
    let mut problems: Vec<FieldProblem> = organization
        .iter()
        .chain([&max_caseload])
        .chain(&admin)
        .filter_map(|field| FieldProblem::of(field, &field.label))
        .collect();
    for (n, row) in invitees.iter().enumerate() {
        let person = format!("Person {} to invite", n + 1);
        problems.extend(FieldProblem::of(&row.name, &format!("{person}, name")));
        problems.extend(FieldProblem::of(&row.email, &format!("{person}, email")));
        if let Some(error) = &row.roles.error {
            problems.push(FieldProblem {
                href: format!("#{}", row.roles.id),
                text: format!("{person}, roles: {error}"),
            });
        }
    }
    NewOrganizationPage {
        layout: Layout::new(session, "Bootstrap an organization", "/organizations"),
        organization,
        visit_verification,
        client_assignment,
        max_caseload,
        admin,
        invitees,
        again: false,
        idempotency_key: form
            .and_then(|f| f.get("idempotency_key"))
            .filter(|k| super::valid_token(k))
            .map_or_else(super::new_token, str::to_owned),
        error,
        problems,
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NewOrganizationQuery {
    /// A failed bootstrap run whose details fill the form in again.
    again: Option<String>,
}

/// `GET /console/organizations/new`: the bootstrap form; with `?again=RUN`, filled in
/// with what the failed bootstrap `RUN` asked for.
pub(crate) async fn new_organization(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<NewOrganizationQuery>,
) -> Response {
    if let Err(problem) = allow(&session.ctx, Action::BootstrapOrganization) {
        return problem_page(&session, &problem);
    }
    let Some(again) = query.again.as_deref().filter(|again| !again.is_empty()) else {
        return render(
            StatusCode::OK,
            &new_organization_page(&session, None, &BTreeMap::new(), None),
        );
    };
    let form = match asked_before(&state, &session, again).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let mut page = new_organization_page(&session, Some(&form), &BTreeMap::new(), None);
    page.again = true;
    render(StatusCode::OK, &page)
}

/// What the bootstrap run `run_id` asked for, as the bootstrap form's fields: its
/// organization's `organization.bootstrap.initiated`, read (and its people's names and
/// addresses opened) through the policy. A run this person does not see is a 404.
async fn asked_before(state: &AppState, session: &Session, run_id: &str) -> Result<Form, Response> {
    let missing = || not_found(session, "bootstrap run");
    let run_id = cairn_types::WorkflowId::parse(run_id).map_err(|_| missing())?;
    let grant = allow(&session.ctx, Action::ListWorkflows).map_err(|_| missing())?;
    let run = match reads::workflow(state.db(), &grant, run_id).await {
        Ok(Some(run)) => run.run,
        Ok(None) => return Err(missing()),
        Err(error) => return Err(problem_page(session, &read_problem(error))),
    };
    let Some(org_id) = run.org_id.filter(|_| run.kind == "organization_bootstrap") else {
        return Err(missing());
    };
    let grant = allow(&session.ctx, Action::ListEvents).map_err(|_| missing())?;
    let initiated = match reads::bootstrap_asked(state.store(), &grant, org_id).await {
        Ok(Some(initiated)) => initiated,
        Ok(None) => return Err(missing()),
        Err(error) => return Err(problem_page(session, &read_problem(error))),
    };
    let mut people = vec![initiated.admin.user_id];
    people.extend(initiated.invitees.iter().map(|i| i.user_id));
    crate::access::record(
        state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("bootstrap run {run_id} (bootstrap again)"),
        Some(org_id),
        Some(people),
    )
    .await;
    let known = |value: Option<String>| value.unwrap_or_default();
    let settings = &initiated.direct_care_settings;
    let mut fields = vec![
        ("organization.name".to_owned(), initiated.name.to_string()),
        ("organization.slug".to_owned(), initiated.slug.to_string()),
        (
            "organization.sender_domain".to_owned(),
            initiated.sender_domain.clone(),
        ),
        (
            "organization.direct_care_settings.max_caseload".to_owned(),
            settings.max_caseload.to_string(),
        ),
        (
            "admin.name".to_owned(),
            known(initiated.admin.name.known().map(ToString::to_string)),
        ),
        (
            "admin.email".to_owned(),
            known(initiated.admin.email.known().map(ToString::to_string)),
        ),
    ];
    for (flag, on) in [
        ("visit_verification", settings.visit_verification),
        ("client_assignment", settings.client_assignment),
    ] {
        if on {
            fields.push((
                format!("organization.direct_care_settings.{flag}"),
                "true".to_owned(),
            ));
        }
    }
    for (i, invitee) in initiated.invitees.iter().take(INVITEE_ROWS).enumerate() {
        fields.push((
            format!("invitees[{i}].name"),
            known(invitee.name.known().map(ToString::to_string)),
        ));
        fields.push((
            format!("invitees[{i}].email"),
            known(invitee.email.known().map(ToString::to_string)),
        ));
        for role in &invitee.roles {
            fields.push((format!("invitees[{i}].roles"), role.as_str().to_owned()));
        }
    }
    Ok(Form::filled(fields))
}

/// A whole number typed into a form, or the error to show at its field.
fn whole_number(text: &str) -> Result<u32, String> {
    text.trim()
        .parse::<u32>()
        .map_err(|_| format!("must be a whole number, not {:?}", text.trim()))
}

/// `POST /console/organizations`: bootstraps from the form, then shows its progress.
pub(crate) async fn bootstrap(
    State(state): State<AppState>,
    session: Session,
    request: Request,
) -> Response {
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let caseload_field = "organization.direct_care_settings.max_caseload";
    // A caseload that is not a number is sent as 0, which the domain always refuses,
    // so that every other field is still checked; its message is this one.
    let (max_caseload, caseload_error) = match whole_number(&form.text(caseload_field)) {
        Ok(n) => (n, None),
        Err(message) => (0, Some(message)),
    };
    // Rows left empty are not invitees; the domain numbers the rest from 0, so its
    // errors are mapped back to the rows they came from.
    let mut rows = Vec::new();
    let mut invitees = Vec::new();
    for i in 0..INVITEE_ROWS {
        let email = form.text(&format!("invitees[{i}].email"));
        let name = form.text(&format!("invitees[{i}].name"));
        let roles: Vec<String> = form
            .all(&format!("invitees[{i}].roles"))
            .into_iter()
            .map(str::to_owned)
            .collect();
        if email.trim().is_empty() && name.trim().is_empty() && roles.is_empty() {
            continue;
        }
        rows.push(i);
        invitees.push(InviteeRequest { email, name, roles });
    }
    let request = BootstrapRequest {
        organization: OrganizationRequest {
            name: form.text("organization.name"),
            slug: form.text("organization.slug"),
            sender_domain: form.text("organization.sender_domain"),
            direct_care_settings: Some(DirectCareSettings {
                visit_verification: form
                    .checked("organization.direct_care_settings.visit_verification"),
                client_assignment: form
                    .checked("organization.direct_care_settings.client_assignment"),
                max_caseload,
            }),
        },
        admin: PersonRequest {
            email: form.text("admin.email"),
            name: form.text("admin.name"),
        },
        invitees,
    };
    let refused = |errors: BTreeMap<String, String>, error: Option<String>| {
        render(
            StatusCode::UNPROCESSABLE_ENTITY,
            &new_organization_page(&session, Some(&form), &errors, error),
        )
    };
    let key = form
        .get("idempotency_key")
        .filter(|k| super::valid_token(k))
        .map(str::to_owned);
    match state
        .domain()
        .bootstrap(&session.command_with_key(key), &request)
        .await
    {
        Ok(accepted) => {
            Redirect::to(&format!("/console/workflows/{}", accepted.workflow_id)).into_response()
        }
        Err(error) => {
            let problem = command_problem(error);
            if problem.status >= 500 || problem.status == 401 || problem.status == 403 {
                return problem_page(&session, &problem);
            }
            let mut errors = BTreeMap::new();
            for (field, message) in field_errors(&problem) {
                let field = match field
                    .strip_prefix("invitees[")
                    .and_then(|r| r.split_once(']'))
                {
                    Some((index, rest)) => {
                        match index.parse::<usize>().ok().and_then(|i| rows.get(i)) {
                            Some(row) => format!("invitees[{row}]{rest}"),
                            None => field,
                        }
                    }
                    None => field,
                };
                errors.insert(field, message);
            }
            if let Some(message) = caseload_error {
                errors.insert(caseload_field.to_owned(), message);
            }
            let summary = if errors.is_empty() {
                problem.detail.clone()
            } else {
                "Nothing was created: correct the fields marked below.".to_owned()
            };
            refused(errors, Some(summary))
        }
    }
}

/// A person of an organization.
pub(crate) struct PersonRow {
    pub id: String,
    pub name: String,
    pub email: String,
    pub status: String,
    pub roles: String,
    /// Why no name or address is shown: `erased` at their request, or `restricted`
    /// until their erasure.
    pub withheld: Option<&'static str>,
    /// The invitation of theirs the mail server refused, if one was.
    pub refused_invitation: Option<String>,
    /// Why they were deactivated, while they are.
    pub deactivated: Option<String>,
    /// They accepted their invitation: their roles and access can be managed.
    pub joined: bool,
}

/// An invitation, with its delivery state.
pub(crate) struct InvitationRow {
    pub id: String,
    pub email: String,
    /// Why the address is not shown: `erased` or `restricted`.
    pub withheld: Option<&'static str>,
    pub roles: String,
    pub status: String,
    pub sends: i64,
    pub last_sent_at: Time,
    pub expires_at: Time,
    pub pending: bool,
    pub resendable: bool,
    /// Pending, expired or refused: it may go to a corrected address.
    pub correctable: bool,
    /// What the mail server said when it refused the last email for good.
    pub refused: Option<String>,
    pub refused_at: Time,
    pub note: Option<String>,
}

#[derive(Template)]
#[template(path = "console/organization.html")]
struct OrganizationPage {
    layout: Layout,
    org_id: String,
    name: String,
    slug: String,
    status: String,
    sender_address: String,
    created_at: Time,
    failure_reason: Option<String>,
    workflow_id: Option<String>,
    people: Vec<PersonRow>,
    invitations: Vec<InvitationRow>,
    visit_verification: bool,
    client_assignment: bool,
    max_caseload: Field,
    settings_error: Option<String>,
    may_edit: bool,
    may_invite: bool,
    may_resend: bool,
    may_revoke: bool,
    may_erase: bool,
    may_disclose: bool,
    may_manage: bool,
    may_see_events: bool,
    invite_email: Field,
    invite_name: Field,
    invite_roles: RoleChoice,
    invite_error: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct OrgQuery {
    notice: Option<String>,
    /// `csv` or `json`: the organization's people as a file.
    format: Option<String>,
}

/// Why a person's name and address are not shown, if they are not.
fn withheld(
    erased_at: Option<&chrono::DateTime<chrono::Utc>>,
    restricted_at: Option<&chrono::DateTime<chrono::Utc>>,
) -> Option<&'static str> {
    match (erased_at, restricted_at) {
        (Some(_), _) => Some("erased"),
        (None, Some(_)) => Some("restricted"),
        (None, None) => None,
    }
}

fn notice_text(notice: Option<&str>) -> Option<String> {
    Some(
        match notice? {
            "settings" => "The direct-care settings are saved.",
            "invited" => "The invitation is on its way.",
            "resent" => {
                "The invitation was sent again, with a new link; the old link no longer works."
            }
            "revoked" => "The invitation is revoked; its link no longer works.",
            "corrected" => "The invitation is on its way to the corrected address, with a new link.",
            "roles" => "The roles are changed. A role taken away stopped working at once.",
            "deactivated" => "The person is deactivated: their tokens no longer work.",
            "reactivated" => "The person is reactivated: their tokens work again.",
            "erased" => {
                "The person is erased: their data key is destroyed, and no name or address of theirs is left."
            }
            _ => return None,
        }
        .to_owned(),
    )
}

/// What the organization page shows besides its data: a failed form's values and
/// errors.
#[derive(Default)]
struct OrgForms<'a> {
    settings: Option<(&'a Form, BTreeMap<String, String>, String)>,
    invite: Option<(&'a Form, BTreeMap<String, String>, String)>,
    notice: Option<String>,
}

async fn organization_page(
    state: &AppState,
    session: &Session,
    org_id: OrgId,
    forms: OrgForms<'_>,
    status: StatusCode,
) -> Response {
    let grant = match allow(&session.ctx, Action::ReadOrganization(org_id)) {
        Ok(grant) => grant,
        Err(_) => return not_found(session, "organization"),
    };
    let org = match reads::organization(state.db(), &grant, org_id).await {
        Ok(Some(org)) => org,
        Ok(None) => return not_found(session, "organization"),
        Err(error) => return problem_page(session, &read_problem(error)),
    };
    let people = match allow(&session.ctx, Action::ReadUsers(org_id)) {
        Ok(grant) => reads::users(
            state.db(),
            &grant,
            org_id,
            QueryPage {
                after: None,
                limit: 200,
            },
        )
        .await
        .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let invitations = match allow(&session.ctx, Action::ReadInvitations(org_id)) {
        Ok(grant) => reads::invitations(
            state.db(),
            &grant,
            org_id,
            QueryPage {
                after: None,
                limit: 200,
            },
        )
        .await
        .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    // One record for the page, naming everyone it shows.
    let mut shown: Vec<cairn_types::UserId> = people.iter().map(|u| u.id).collect();
    shown.extend(invitations.iter().map(|i| i.user_id));
    shown.sort();
    shown.dedup();
    crate::access::record(
        state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("organization {org_id} members"),
        Some(org_id),
        (!shown.is_empty()).then_some(shown),
    )
    .await;
    let join = |roles: &[cairn_policy::Role]| {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let refused_invitation = |user_id| {
        invitations
            .iter()
            .find(|i| i.user_id == user_id && i.status == "refused")
            .map(|i| i.id.to_string())
    };
    // Someone invited has no roles yet: they are shown the roles their open invitation
    // gives them when they accept.
    let roles_of = |u: &reads::User| {
        if !u.roles.is_empty() {
            return join(&u.roles);
        }
        invitations
            .iter()
            .rev()
            .find(|i| {
                i.user_id == u.id && matches!(i.status.as_str(), "pending" | "expired" | "refused")
            })
            .map(|i| format!("{} (once they accept)", join(&i.roles)))
            .unwrap_or_default()
    };
    let people: Vec<PersonRow> = people
        .into_iter()
        .map(|u| PersonRow {
            refused_invitation: refused_invitation(u.id),
            roles: roles_of(&u),
            deactivated: u.deactivated_at.map(|_| {
                u.deactivation_reason
                    .clone()
                    .unwrap_or_else(|| "no reason kept".to_owned())
            }),
            joined: u.status == "active",
            id: u.id.to_string(),
            withheld: withheld(u.erased_at.as_ref(), u.restricted_at.as_ref()),
            name: u.name,
            email: u.email,
            status: u.status,
        })
        .collect();
    // An invitation of someone already active (the first admin, created with the
    // organization) says so, rather than contradict their person's row.
    let active: std::collections::BTreeSet<&str> = people
        .iter()
        .filter(|p| p.status == "active" && p.deactivated.is_none())
        .map(|p| p.id.as_str())
        .collect();
    let invitations = invitations
        .into_iter()
        .map(|i| {
            let note = match i.status.as_str() {
                "pending" if active.contains(i.user_id.to_string().as_str()) => Some(
                    "their account is already active: accepting confirms their address".to_owned(),
                ),
                "accepted" => i
                    .accepted_at
                    .as_ref()
                    .map(|at| format!("accepted {}", time_text(at))),
                "revoked" => Some(format!(
                    "revoked{}{}",
                    i.revoked_at
                        .as_ref()
                        .map(|at| format!(" {}", time_text(at)))
                        .unwrap_or_default(),
                    i.revoke_reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )),
                _ => None,
            };
            InvitationRow {
                id: i.id.to_string(),
                withheld: withheld(i.erased_at.as_ref(), i.restricted_at.as_ref()),
                roles: join(&i.roles),
                pending: i.status == "pending",
                resendable: i.status == "pending" || i.status == "expired",
                correctable: matches!(i.status.as_str(), "pending" | "expired" | "refused")
                    && i.erased_at.is_none()
                    && i.restricted_at.is_none(),
                refused: (i.status == "refused").then(|| {
                    i.delivery_reply
                        .clone()
                        .unwrap_or_else(|| "no reply kept".to_owned())
                }),
                refused_at: time(i.refused_at.as_ref().unwrap_or(&i.last_sent_at)),
                sends: i.send_count,
                last_sent_at: time(&i.last_sent_at),
                expires_at: time(&i.expires_at),
                email: i.email,
                status: i.status,
                note,
            }
        })
        .collect();
    let settings = &org.direct_care_settings;
    let (max_caseload, visit_verification, client_assignment, settings_error) =
        match &forms.settings {
            Some((form, errors, summary)) => (
                Field::new("max_caseload", "Maximum caseload", "number")
                    .numeric()
                    .from(Some(form), errors),
                form.checked("visit_verification"),
                form.checked("client_assignment"),
                Some(summary.clone()),
            ),
            None => (
                Field::new("max_caseload", "Maximum caseload", "number")
                    .numeric()
                    .value(settings.max_caseload.to_string()),
                settings.visit_verification,
                settings.client_assignment,
                None,
            ),
        };
    let (invite_form, invite_errors, invite_error) = match &forms.invite {
        Some((form, errors, summary)) => (Some(*form), errors.clone(), Some(summary.clone())),
        None => (None, BTreeMap::new(), None),
    };
    let page = OrganizationPage {
        layout: Layout::new(session, org.name.clone(), "/organizations").live(
            format!("views=false&org_id={org_id}"),
            format!("/console/organizations/{org_id}"),
        ),
        org_id: org_id.to_string(),
        slug: org.slug,
        status: org.status,
        sender_address: org.sender_address,
        created_at: time(&org.created_at),
        failure_reason: org.failure_reason,
        workflow_id: org.workflow_id.map(|w| w.to_string()),
        people,
        invitations,
        visit_verification,
        client_assignment,
        max_caseload: max_caseload.hint("1 to 500"),
        settings_error,
        may_edit: session.may(&Action::UpdateDirectCareSettings(org_id)),
        may_invite: session.may(&Action::Invite(org_id)),
        may_resend: session.may(&Action::ResendInvitation(org_id)),
        may_revoke: session.may(&Action::RevokeInvitation(org_id)),
        may_erase: session.may(&Action::EraseSubject(org_id)),
        may_disclose: session.may(&Action::DiscloseSubject(org_id)),
        may_manage: session.may(&Action::ManagePeople(org_id)),
        may_see_events: session.may(&Action::ListEvents),
        invite_email: Field::new("email", "Email", "email").from(invite_form, &invite_errors),
        invite_name: Field::new("name", "Name", "text").from(invite_form, &invite_errors),
        invite_roles: RoleChoice::new("roles", invite_form, &invite_errors),
        invite_error,
        notice: forms.notice,
        name: org.name,
    };
    render(status, &page)
}

/// `GET /console/organizations/{org_id}`.
pub(crate) async fn organization(
    State(state): State<AppState>,
    session: Session,
    Path(org_id): Path<String>,
    Query(query): Query<OrgQuery>,
) -> Response {
    let Ok(org_id) = OrgId::parse(&org_id) else {
        return not_found(&session, "organization");
    };
    match super::export::Format::asked(query.format.as_deref()) {
        Ok(Some(format)) => return export_people(&state, &session, org_id, format).await,
        Ok(None) => {}
        Err(error) => {
            return problem_page(
                &session,
                &crate::problem::Problem::new(crate::problem::ProblemCode::InvalidField, error),
            );
        }
    }
    let notice = notice_text(query.notice.as_deref());
    organization_page(
        &state,
        &session,
        org_id,
        OrgForms {
            notice,
            ..OrgForms::default()
        },
        StatusCode::OK,
    )
    .await
}

/// An organization's people, as a file: a read of each one's data, on record.
async fn export_people(
    state: &AppState,
    session: &Session,
    org_id: OrgId,
    format: super::export::Format,
) -> Response {
    let grant = match allow(&session.ctx, Action::ReadUsers(org_id)) {
        Ok(grant) => grant,
        Err(_) => return not_found(session, "organization"),
    };
    let page = QueryPage {
        after: None,
        limit: super::export::MOST_ROWS,
    };
    let people = match reads::users(state.db(), &grant, org_id, page).await {
        Ok(people) => people,
        Err(error) => return problem_page(session, &read_problem(error)),
    };
    let subjects: Vec<cairn_types::UserId> = people.iter().map(|p| p.id).collect();
    crate::access::record(
        state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("organization {org_id} members export"),
        Some(org_id),
        (!subjects.is_empty()).then_some(subjects),
    )
    .await;
    let rows = people
        .iter()
        .map(|p| {
            let why = withheld(p.erased_at.as_ref(), p.restricted_at.as_ref());
            let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            vec![
                p.id.to_string(),
                if why.is_some() {
                    String::new()
                } else {
                    p.name.clone()
                },
                if why.is_some() {
                    String::new()
                } else {
                    p.email.clone()
                },
                roles.join(" "),
                p.status.clone(),
                why.unwrap_or_default().to_owned(),
            ]
        })
        .collect();
    super::export::file(
        format,
        "people",
        &["user_id", "name", "email", "roles", "status", "withheld"],
        rows,
    )
}

/// `POST /console/organizations/{org_id}/settings`.
pub(crate) async fn update_settings(
    State(state): State<AppState>,
    session: Session,
    Path(org_id): Path<String>,
    request: Request,
) -> Response {
    let Ok(org_id) = OrgId::parse(&org_id) else {
        return not_found(&session, "organization");
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let settings =
        whole_number(&form.text("max_caseload")).map(|max_caseload| DirectCareSettings {
            visit_verification: form.checked("visit_verification"),
            client_assignment: form.checked("client_assignment"),
            max_caseload,
        });
    let result = match settings {
        Err(message) => Err((BTreeMap::from([("max_caseload".to_owned(), message)]), None)),
        Ok(settings) => state
            .domain()
            .update_direct_care_settings(&session.ctx.command(), org_id, &settings)
            .await
            .map_err(|error| {
                let problem = command_problem(error);
                (field_errors(&problem), Some(problem))
            }),
    };
    match result {
        Ok(()) => Redirect::to(&format!("/console/organizations/{org_id}?notice=settings"))
            .into_response(),
        Err((_, Some(problem))) if problem.status == 404 || problem.status == 403 => {
            not_found(&session, "organization")
        }
        Err((_, Some(problem))) if problem.status >= 500 => problem_page(&session, &problem),
        Err((errors, problem)) => {
            // A refusal that is not about a field (a paused or held stream: 409) keeps
            // its status, so that the page answers as the API would.
            let status = match &problem {
                Some(problem) if errors.is_empty() && problem.status == 409 => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let summary = problem.filter(|_| errors.is_empty()).map_or_else(
                || "Not saved: correct the fields marked below.".to_owned(),
                |p| p.detail,
            );
            organization_page(
                &state,
                &session,
                org_id,
                OrgForms {
                    settings: Some((&form, errors, summary)),
                    ..OrgForms::default()
                },
                status,
            )
            .await
        }
    }
}

/// `POST /console/organizations/{org_id}/invitations`.
pub(crate) async fn invite(
    State(state): State<AppState>,
    session: Session,
    Path(org_id): Path<String>,
    request: Request,
) -> Response {
    let Ok(org_id) = OrgId::parse(&org_id) else {
        return not_found(&session, "organization");
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let invitee = InviteeRequest {
        email: form.text("email"),
        name: form.text("name"),
        roles: form.all("roles").into_iter().map(str::to_owned).collect(),
    };
    match state
        .domain()
        .invite(&session.ctx.command(), org_id, &invitee)
        .await
    {
        Ok(_) => {
            Redirect::to(&format!("/console/organizations/{org_id}?notice=invited")).into_response()
        }
        Err(error) => {
            let problem = command_problem(error);
            if problem.status == 404 || problem.status == 403 {
                return not_found(&session, "organization");
            }
            if problem.status >= 500 {
                return problem_page(&session, &problem);
            }
            let errors = field_errors(&problem);
            let summary = if errors.is_empty() {
                problem.detail.clone()
            } else {
                "Nobody was invited: correct the fields marked below.".to_owned()
            };
            organization_page(
                &state,
                &session,
                org_id,
                OrgForms {
                    invite: Some((&form, errors, summary)),
                    ..OrgForms::default()
                },
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}

/// The invitation `id` if this person sees it.
async fn visible_invitation(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<reads::Invitation, Response> {
    let Ok(id) = InvitationId::parse(id) else {
        return Err(not_found(session, "invitation"));
    };
    let grant = allow(&session.ctx, Action::FindInvitation)
        .map_err(|_| not_found(session, "invitation"))?;
    match reads::invitation(state.db(), &grant, id).await {
        Ok(Some(invitation)) => Ok(invitation),
        Ok(None) => Err(not_found(session, "invitation")),
        Err(error) => Err(problem_page(session, &read_problem(error))),
    }
}

/// The invitation a confirmation page acts on: one this person sees and may act on
/// with `action`; the page shows its address, so the read is on record.
async fn invitation_to_act_on(
    state: &AppState,
    session: &Session,
    invitation_id: &str,
    action: fn(OrgId) -> Action,
) -> Result<reads::Invitation, Response> {
    let invitation = visible_invitation(state, session, invitation_id).await?;
    if let Err(problem) = allow(&session.ctx, action(invitation.org_id)) {
        return Err(problem_page(session, &problem));
    }
    crate::access::record(
        state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("invitation {}", invitation.id),
        Some(invitation.org_id),
        Some(vec![invitation.user_id]),
    )
    .await;
    Ok(invitation)
}

/// `POST /console/invitations/{invitation_id}/resend`.
pub(crate) async fn resend(
    State(state): State<AppState>,
    session: Session,
    Path(invitation_id): Path<String>,
    request: Request,
) -> Response {
    let invitation = match visible_invitation(&state, &session, &invitation_id).await {
        Ok(invitation) => invitation,
        Err(response) => return response,
    };
    if let Err(refused) = Form::read(request).await {
        return refused;
    }
    match state
        .domain()
        .resend_invitation(&session.ctx.command(), invitation.id)
        .await
    {
        Ok(_) => Redirect::to(&format!(
            "/console/organizations/{}?notice=resent",
            invitation.org_id
        ))
        .into_response(),
        Err(error) => problem_page(&session, &command_problem(error)),
    }
}

#[derive(Template)]
#[template(path = "console/email.html")]
struct EmailPage {
    layout: Layout,
    invitation_id: String,
    org_id: String,
    send: String,
    from: String,
    to: String,
    subject: String,
    text: String,
}

/// `GET /console/invitations/{invitation_id}/email`: the email of the invitation's last
/// send, its token left out.
pub(crate) async fn email(
    State(state): State<AppState>,
    session: Session,
    Path(invitation_id): Path<String>,
) -> Response {
    let invitation = match visible_invitation(&state, &session, &invitation_id).await {
        Ok(invitation) => invitation,
        Err(response) => return response,
    };
    let grant = match allow(&session.ctx, Action::FindInvitation) {
        Ok(grant) => grant,
        Err(_) => return not_found(&session, "invitation"),
    };
    let preview = match reads::invitation_email(state.domain(), &grant, invitation.id).await {
        Ok(Some(preview)) => preview,
        Ok(None) => return not_found(&session, "invitation email"),
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    crate::access::record(
        &state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("invitation {} email", invitation.id),
        Some(invitation.org_id),
        Some(vec![invitation.user_id]),
    )
    .await;
    render(
        StatusCode::OK,
        &EmailPage {
            layout: Layout::new(&session, "Invitation email", "/organizations"),
            invitation_id: invitation.id.to_string(),
            org_id: invitation.org_id.to_string(),
            send: match preview.send_number {
                1 => "the first email".to_owned(),
                n => format!("email {n}"),
            },
            from: preview.from,
            to: preview.to,
            subject: preview.subject,
            text: preview.text,
        },
    )
}

#[derive(Template)]
#[template(path = "console/revoke.html")]
struct RevokePage {
    layout: Layout,
    invitation_id: String,
    org_id: String,
    email: String,
    /// The mail server refused its email: there is no link to stop.
    refused: bool,
    reason: Field,
}

fn revoke_page_for(session: &Session, invitation: &reads::Invitation, reason: Field) -> RevokePage {
    RevokePage {
        refused: invitation.status == "refused",
        layout: Layout::new(session, "Revoke an invitation", "/organizations"),
        invitation_id: invitation.id.to_string(),
        org_id: invitation.org_id.to_string(),
        email: invitation.email.clone(),
        reason,
    }
}

/// `GET /console/invitations/{invitation_id}/revoke`: asks for a reason and a
/// confirmation.
pub(crate) async fn revoke_page(
    State(state): State<AppState>,
    session: Session,
    Path(invitation_id): Path<String>,
) -> Response {
    let invitation = match invitation_to_act_on(
        &state,
        &session,
        &invitation_id,
        Action::RevokeInvitation,
    )
    .await
    {
        Ok(invitation) => invitation,
        Err(response) => return response,
    };
    let reason = Field::new("reason", "Why is it withdrawn?", "text")
        .hint("Kept with the invitation's history.");
    render(
        StatusCode::OK,
        &revoke_page_for(&session, &invitation, reason),
    )
}

/// `POST /console/invitations/{invitation_id}/revoke`.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    session: Session,
    Path(invitation_id): Path<String>,
    request: Request,
) -> Response {
    let invitation = match visible_invitation(&state, &session, &invitation_id).await {
        Ok(invitation) => invitation,
        Err(response) => return response,
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let reason = form.text("reason");
    match state
        .domain()
        .revoke_invitation(&session.ctx.command(), invitation.id, &reason)
        .await
    {
        Ok(()) => Redirect::to(&format!(
            "/console/organizations/{}?notice=revoked",
            invitation.org_id
        ))
        .into_response(),
        Err(error) => {
            let problem = command_problem(error);
            if problem.status >= 500 || problem.errors.is_empty() {
                return problem_page(&session, &problem);
            }
            form_again(
                &problem,
                &form,
                Field::new("reason", "Why is it withdrawn?", "text"),
                |field| revoke_page_for(&session, &invitation, field),
            )
        }
    }
}

#[derive(Template)]
#[template(path = "console/address.html")]
struct AddressPage {
    layout: Layout,
    invitation_id: String,
    org_id: String,
    current: String,
    refused: Option<String>,
    email: Field,
}

fn address_page_for(
    session: &Session,
    invitation: &reads::Invitation,
    email: Field,
) -> AddressPage {
    AddressPage {
        layout: Layout::new(session, "Send to a corrected address", "/organizations"),
        invitation_id: invitation.id.to_string(),
        org_id: invitation.org_id.to_string(),
        current: invitation.email.clone(),
        refused: (invitation.status == "refused").then(|| {
            invitation
                .delivery_reply
                .clone()
                .unwrap_or_else(|| "no reply kept".to_owned())
        }),
        email,
    }
}

fn address_field() -> Field {
    Field::new("email", "Corrected email address", "email")
        .hint("The invitation goes to this address; the person's record keeps it.")
}

/// `GET /console/invitations/{invitation_id}/address`: asks for the corrected address,
/// showing what the mail server said.
pub(crate) async fn address_page(
    State(state): State<AppState>,
    session: Session,
    Path(invitation_id): Path<String>,
) -> Response {
    let invitation = match invitation_to_act_on(
        &state,
        &session,
        &invitation_id,
        Action::ResendInvitation,
    )
    .await
    {
        Ok(invitation) => invitation,
        Err(response) => return response,
    };
    let email = address_field().value(invitation.email.clone());
    render(
        StatusCode::OK,
        &address_page_for(&session, &invitation, email),
    )
}

/// `POST /console/invitations/{invitation_id}/address`.
pub(crate) async fn correct_address(
    State(state): State<AppState>,
    session: Session,
    Path(invitation_id): Path<String>,
    request: Request,
) -> Response {
    let invitation = match visible_invitation(&state, &session, &invitation_id).await {
        Ok(invitation) => invitation,
        Err(response) => return response,
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let correction = cairn_domain::AddressCorrection {
        email: form.text("email"),
    };
    match state
        .domain()
        .correct_invitation_address(&session.ctx.command(), invitation.id, &correction)
        .await
    {
        Ok(_) => Redirect::to(&format!(
            "/console/organizations/{}?notice=corrected",
            invitation.org_id
        ))
        .into_response(),
        Err(error) => {
            let problem = command_problem(error);
            if problem.status >= 500 || (problem.errors.is_empty() && problem.status != 409) {
                return problem_page(&session, &problem);
            }
            form_again(&problem, &form, address_field(), |field| {
                address_page_for(&session, &invitation, field)
            })
        }
    }
}

#[derive(Template)]
#[template(path = "console/erase.html")]
struct ErasePage {
    layout: Layout,
    org_id: String,
    user_id: String,
    name: String,
    email: String,
    /// Restricted until a later erasure: their name and address are not shown.
    restricted: bool,
    reason: Field,
}

fn erase_page_for(session: &Session, user: &reads::User, reason: Field) -> ErasePage {
    ErasePage {
        layout: Layout::new(session, "Erase a person", "/organizations"),
        org_id: user.org_id.to_string(),
        user_id: user.id.to_string(),
        name: user.name.clone(),
        email: user.email.clone(),
        restricted: user.restricted_at.is_some(),
        reason,
    }
}

fn erase_reason() -> Field {
    Field::new("reason", "Why are they erased?", "text")
        .hint("Kept with the erasure, so write the request's reference, never their own details.")
}

/// A person the session may erase (see [`super::people::person_for`]).
async fn erasable_person(
    state: &AppState,
    session: &Session,
    org_id: &str,
    user_id: &str,
) -> Result<reads::User, Response> {
    super::people::person_for(state, session, (org_id, user_id), Action::EraseSubject).await
}

/// `GET /console/organizations/{org_id}/people/{user_id}/erase`: asks for a reason
/// and a confirmation.
pub(crate) async fn erase_page(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
) -> Response {
    let user = match erasable_person(&state, &session, &org_id, &user_id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    // The page shows their name and address: a read of their data.
    crate::access::record(
        &state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("person {} (erasure)", user.id),
        Some(user.org_id),
        Some(vec![user.id]),
    )
    .await;
    render(
        StatusCode::OK,
        &erase_page_for(&session, &user, erase_reason()),
    )
}

/// `POST /console/organizations/{org_id}/people/{user_id}/erase`.
pub(crate) async fn erase(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let user = match erasable_person(&state, &session, &org_id, &user_id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let reason = form.text("reason");
    match state
        .domain()
        .erase_subject(&session.ctx.command(), user.id, &reason)
        .await
    {
        Ok(_) => Redirect::to(&format!(
            "/console/organizations/{}?notice=erased",
            user.org_id
        ))
        .into_response(),
        Err(error) => {
            let problem = command_problem(error);
            if problem.status >= 500 || problem.errors.is_empty() {
                return problem_page(&session, &problem);
            }
            form_again(&problem, &form, erase_reason(), |field| {
                erase_page_for(&session, &user, field)
            })
        }
    }
}
