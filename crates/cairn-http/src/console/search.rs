//! `GET /console/search`: one box that finds an organization, a person, an invitation,
//! a workflow run, an event or a request by what an operator has (an email address, a
//! slug, a name, any id). One match opens its page; several are listed; the policy
//! decides what each person may find.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use cairn_domain::reads;
use cairn_domain::search::{Hit, HitKind, Term};
use cairn_log::AccessVia;
use cairn_policy::Action;

use super::session::Session;
use super::{Layout, problem_page, render};
use crate::AppState;
use crate::routes::{allow, read_problem};

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SearchQuery {
    q: Option<String>,
}

/// One match, as the page lists it.
pub(crate) struct HitRow {
    pub kind: &'static str,
    pub href: String,
    pub label: String,
    pub detail: String,
    pub org: String,
}

#[derive(Template)]
#[template(path = "console/search.html")]
struct SearchPage {
    layout: Layout,
    q: String,
    error: Option<String>,
    hits: Vec<HitRow>,
    /// Whether the list stops at the most a search shows.
    more: bool,
}

/// The console page a match opens.
fn href(hit: &Hit) -> String {
    let org = hit.org_id.map(|org| org.to_string()).unwrap_or_default();
    match hit.kind {
        HitKind::Organization => format!("/console/organizations/{}", hit.id),
        HitKind::Person => format!("/console/organizations/{org}#person-{}", hit.id),
        HitKind::Invitation => format!("/console/organizations/{org}#invitation-{}", hit.id),
        HitKind::Run => format!("/console/workflows/{}", hit.id),
        HitKind::Event => format!("/console/events/{}", hit.id),
        HitKind::Request => format!("/console/traces/{}", hit.id),
    }
}

pub(crate) async fn search(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<SearchQuery>,
) -> Response {
    let grant = match allow(&session.ctx, Action::Search) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(&session, &problem),
    };
    let q = query.q.unwrap_or_default();
    let page = |status, error, hits: Vec<HitRow>, more| {
        let mut layout = Layout::new(&session, "Search", "");
        layout.search = q.clone();
        render(
            status,
            &SearchPage {
                layout,
                q: q.clone(),
                error,
                hits,
                more,
            },
        )
    };
    let term = match Term::parse(&q) {
        Ok(term) => term,
        Err(error) => return page(StatusCode::BAD_REQUEST, Some(error), Vec::new(), false),
    };
    let hits = match reads::search(state.db(), &grant, &term).await {
        Ok(hits) => hits,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    if let [one] = hits.as_slice() {
        // The page it opens puts what it shows on record.
        return Redirect::to(&href(one)).into_response();
    }
    // The names and addresses the list shows are reads of those people's data (the
    // text searched for is not kept: it may be an address).
    let mut subjects: Vec<_> = hits.iter().filter_map(|hit| hit.subject).collect();
    subjects.sort();
    subjects.dedup();
    crate::access::record(
        &state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        AccessVia::Console,
        "search results".to_owned(),
        session.ctx.principal.org_id(),
        (!subjects.is_empty()).then_some(subjects),
    )
    .await;
    let more = hits.len() >= cairn_domain::search::MOST_HITS;
    let rows = hits
        .iter()
        .map(|hit| HitRow {
            kind: hit.kind.label(),
            href: href(hit),
            label: hit.label.clone(),
            detail: hit.detail.clone(),
            org: hit.org_name.clone().unwrap_or_default(),
        })
        .collect();
    page(StatusCode::OK, None, rows, more)
}
