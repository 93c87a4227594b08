//! Finding things by what an operator has: an email address, a slug, a name, or any
//! id (organization, person, invitation, workflow run, event, request). What the text
//! is decides where to look ([`Term::parse`], pure); [`find`] looks there, confined to
//! one tenant or to all.

use cairn_log::{Conn, DbError, IntoArg, args};
use cairn_types::{OrgId, UserId};
use serde::Serialize;
use uuid::Uuid;

/// The most matches one search lists.
pub const MOST_HITS: usize = 50;

/// The longest text a search takes.
const LONGEST: usize = 200;

/// What a search's text is, and so where it looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// An id: of an organization, a person, an invitation, a run, an event or a
    /// request (correlation id).
    Id(Uuid),
    /// An email address (lower-cased, as addresses are stored): a person or an
    /// invitation.
    Email(String),
    /// A slug (exactly) or part of a name: organizations and people.
    Text(String),
}

impl Term {
    /// Reads what was typed; an error says what to type instead.
    pub fn parse(input: &str) -> Result<Term, String> {
        let text = input.trim();
        if text.is_empty() {
            return Err("type an email address, a slug, a name or an id".to_owned());
        }
        if text.chars().count() > LONGEST {
            return Err(format!(
                "a search is at most {LONGEST} characters; this one is {}",
                text.chars().count()
            ));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(format!(
                "a search cannot contain the control character {c:?}"
            ));
        }
        if let Ok(id) = Uuid::parse_str(text) {
            return Ok(Term::Id(id));
        }
        if text.contains('@') {
            return Ok(Term::Email(text.to_lowercase()));
        }
        Ok(Term::Text(text.to_owned()))
    }
}

/// What a match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    Organization,
    Person,
    Invitation,
    Run,
    Event,
    Request,
}

impl HitKind {
    /// How a person calls it.
    pub fn label(self) -> &'static str {
        match self {
            HitKind::Organization => "organization",
            HitKind::Person => "person",
            HitKind::Invitation => "invitation",
            HitKind::Run => "workflow run",
            HitKind::Event => "event",
            HitKind::Request => "request",
        }
    }
}

/// One match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    pub kind: HitKind,
    /// The id it is found by on its own page: an organization, user, invitation, run
    /// or event id, or a correlation id.
    pub id: String,
    /// The organization it belongs to, and that organization's name.
    pub org_id: Option<OrgId>,
    pub org_name: Option<String>,
    /// What it is called: a name, an address, a slug, a run's kind, an event's type.
    pub label: String,
    /// A few more words: a status, an address, how many events.
    pub detail: String,
    /// The person whose data the match shows (a name or an address), for the access
    /// log.
    pub subject: Option<UserId>,
}

/// The matches of `term` among the rows of `only` (or of every organization).
pub async fn find(
    conn: &mut Conn<'_>,
    only: Option<OrgId>,
    term: &Term,
) -> Result<Vec<Hit>, DbError> {
    let mut hits = match term {
        Term::Id(id) => by_id(conn, only, *id).await?,
        Term::Email(email) => by_email(conn, only, email).await?,
        Term::Text(text) => by_text(conn, only, text).await?,
    };
    hits.truncate(MOST_HITS);
    Ok(hits)
}

const PERSON: &str = "SELECT u.id, u.org_id, u.name, u.email, u.status, u.erased_at, \
     u.restricted_at, o.name AS org_name FROM users u JOIN organizations o ON o.id = u.org_id";

fn person(row: &cairn_log::Row) -> Result<Hit, DbError> {
    let erased: Option<String> = row
        .get::<Option<chrono::DateTime<chrono::Utc>>>("erased_at")?
        .map(|_| "erased".to_owned());
    let restricted = row
        .get::<Option<chrono::DateTime<chrono::Utc>>>("restricted_at")?
        .map(|_| "restricted".to_owned());
    let user: UserId = row.get("id")?;
    let withheld = erased.or(restricted);
    let (label, detail, subject) = match &withheld {
        Some(why) => (why.clone(), why.clone(), None),
        None => (
            row.get::<String>("name")?,
            format!(
                "{} · {}",
                row.get::<String>("email")?,
                row.get::<String>("status")?
            ),
            Some(user),
        ),
    };
    Ok(Hit {
        kind: HitKind::Person,
        id: user.to_string(),
        org_id: Some(row.get("org_id")?),
        org_name: Some(row.get("org_name")?),
        label,
        detail,
        subject,
    })
}

const INVITATION: &str = "SELECT i.id, i.org_id, i.user_id, i.email, i.status, i.erased_at, \
     i.restricted_at, o.name AS org_name FROM invitations i \
     JOIN organizations o ON o.id = i.org_id";

fn invitation(row: &cairn_log::Row) -> Result<Hit, DbError> {
    let withheld = row
        .get::<Option<chrono::DateTime<chrono::Utc>>>("erased_at")?
        .map(|_| "erased")
        .or(row
            .get::<Option<chrono::DateTime<chrono::Utc>>>("restricted_at")?
            .map(|_| "restricted"));
    let user: UserId = row.get("user_id")?;
    let (label, subject) = match withheld {
        Some(why) => (why.to_owned(), None),
        None => (row.get::<String>("email")?, Some(user)),
    };
    Ok(Hit {
        kind: HitKind::Invitation,
        id: row.get::<cairn_types::InvitationId>("id")?.to_string(),
        org_id: Some(row.get("org_id")?),
        org_name: Some(row.get("org_name")?),
        label,
        detail: row.get("status")?,
        subject,
    })
}

fn organization(row: &cairn_log::Row) -> Result<Hit, DbError> {
    let id: OrgId = row.get("id")?;
    let name: String = row.get("name")?;
    Ok(Hit {
        kind: HitKind::Organization,
        id: id.to_string(),
        org_id: Some(id),
        org_name: Some(name.clone()),
        label: name,
        detail: format!(
            "{} · {}",
            row.get::<String>("slug")?,
            row.get::<String>("status")?
        ),
        subject: None,
    })
}

/// `AND <column> = $n`, when the search is confined to one organization.
fn confined(column: &str, only: Option<OrgId>, n: usize) -> String {
    match only {
        Some(_) => format!(" AND {column} = ${n}"),
        None => String::new(),
    }
}

fn with_org(mut args: Vec<cairn_log::Arg>, only: Option<OrgId>) -> Vec<cairn_log::Arg> {
    if let Some(org) = only {
        args.push(org.into_arg());
    }
    args
}

async fn by_id(conn: &mut Conn<'_>, only: Option<OrgId>, id: Uuid) -> Result<Vec<Hit>, DbError> {
    let mut hits = Vec::new();
    let sql = |base: &str, key: &str, org: &str| {
        cairn_log::Sql::built(format!("{base} WHERE {key} = $1{}", confined(org, only, 2)))
    };
    for row in conn
        .fetch_all(
            sql(
                "SELECT id, name, slug, status FROM organizations",
                "id",
                "id",
            ),
            with_org(args![id], only),
        )
        .await?
    {
        hits.push(organization(&row)?);
    }
    for row in conn
        .fetch_all(sql(PERSON, "u.id", "u.org_id"), with_org(args![id], only))
        .await?
    {
        hits.push(person(&row)?);
    }
    for row in conn
        .fetch_all(
            sql(INVITATION, "i.id", "i.org_id"),
            with_org(args![id], only),
        )
        .await?
    {
        hits.push(invitation(&row)?);
    }
    for row in conn
        .fetch_all(
            sql(
                "SELECT r.id, r.kind, r.status, r.org_id, o.name AS org_name FROM workflow_runs r \
                 LEFT JOIN organizations o ON o.id = r.org_id",
                "r.id",
                "r.org_id",
            ),
            with_org(args![id], only),
        )
        .await?
    {
        hits.push(Hit {
            kind: HitKind::Run,
            id: row.get::<cairn_types::WorkflowId>("id")?.to_string(),
            org_id: row.get("org_id")?,
            org_name: row.get("org_name")?,
            label: row.get::<String>("kind")?.replace('_', " "),
            detail: row.get("status")?,
            subject: None,
        });
    }
    for row in conn
        .fetch_all(
            sql(
                "SELECT e.event_id, e.event_type, e.position, e.org_id, o.name AS org_name \
                 FROM domain_events e LEFT JOIN organizations o ON o.id = e.org_id",
                "e.event_id",
                "e.org_id",
            ),
            with_org(args![id], only),
        )
        .await?
    {
        hits.push(Hit {
            kind: HitKind::Event,
            id: row.get::<cairn_types::EventId>("event_id")?.to_string(),
            org_id: row.get("org_id")?,
            org_name: row.get("org_name")?,
            label: row.get("event_type")?,
            detail: format!("at position {}", row.get::<i64>("position")?),
            subject: None,
        });
    }
    let request = conn
        .fetch_one(
            cairn_log::Sql::built(format!(
                "SELECT COUNT(*) AS n FROM domain_events WHERE correlation_id = $1{}",
                confined("org_id", only, 2)
            )),
            with_org(args![id], only),
        )
        .await?;
    let events: i64 = request.get("n")?;
    if events > 0 {
        hits.push(Hit {
            kind: HitKind::Request,
            id: id.to_string(),
            org_id: None,
            org_name: None,
            label: format!("request {id}"),
            detail: match events {
                1 => "1 event".to_owned(),
                n => format!("{n} events"),
            },
            subject: None,
        });
    }
    Ok(hits)
}

async fn by_email(
    conn: &mut Conn<'_>,
    only: Option<OrgId>,
    email: &str,
) -> Result<Vec<Hit>, DbError> {
    let mut hits = Vec::new();
    let rows = conn
        .fetch_all(
            cairn_log::Sql::built(format!(
                "{PERSON} WHERE u.email = $1{} ORDER BY o.name, u.id LIMIT {MOST_HITS}",
                confined("u.org_id", only, 2)
            )),
            with_org(args![email.to_owned()], only),
        )
        .await?;
    let mut people = Vec::new();
    for row in rows {
        people.push(row.get::<UserId>("id")?);
        hits.push(person(&row)?);
    }
    // An invitation is its person's: listed only when no person of that address is
    // (an invitation whose person has another address now).
    for row in conn
        .fetch_all(
            cairn_log::Sql::built(format!(
                "{INVITATION} WHERE i.email = $1{} ORDER BY o.name, i.id LIMIT {MOST_HITS}",
                confined("i.org_id", only, 2)
            )),
            with_org(args![email.to_owned()], only),
        )
        .await?
    {
        if !people.contains(&row.get::<UserId>("user_id")?) {
            hits.push(invitation(&row)?);
        }
    }
    Ok(hits)
}

async fn by_text(
    conn: &mut Conn<'_>,
    only: Option<OrgId>,
    text: &str,
) -> Result<Vec<Hit>, DbError> {
    let mut hits = Vec::new();
    let pattern = format!(
        "%{}%",
        text.to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    // The slug's own organization first, then those whose name holds the text.
    for row in conn
        .fetch_all(
            cairn_log::Sql::built(format!(
                "SELECT id, name, slug, status FROM organizations \
                 WHERE (slug = $1 OR LOWER(name) LIKE $2 ESCAPE '\\'){} \
                 ORDER BY CASE WHEN slug = $1 THEN 0 ELSE 1 END, name, id LIMIT {MOST_HITS}",
                confined("id", only, 3)
            )),
            with_org(args![text.to_lowercase(), pattern.clone()], only),
        )
        .await?
    {
        hits.push(organization(&row)?);
    }
    for row in conn
        .fetch_all(
            cairn_log::Sql::built(format!(
                "{PERSON} WHERE u.name <> '' AND LOWER(u.name) LIKE $1 ESCAPE '\\'{} \
                 ORDER BY u.name, u.id LIMIT {MOST_HITS}",
                confined("u.org_id", only, 2)
            )),
            with_org(args![pattern], only),
        )
        .await?
    {
        hits.push(person(&row)?);
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::Term;

    #[test]
    fn what_is_typed_decides_where_the_search_looks() {
        let id = "01a2517f-1d80-7580-82be-e6b1e7039e2f";
        let uuid = uuid::Uuid::parse_str(id).expect("a valid id");
        let long = "x".repeat(201);
        // (typed, what it is read as)
        let cases: [(&str, Result<Term, &str>); 9] = [
            (id, Ok(Term::Id(uuid))),
            (
                "  01A2517F-1D80-7580-82BE-E6B1E7039E2F ",
                Ok(Term::Id(uuid)),
            ),
            (
                "Ada@Example.COM",
                Ok(Term::Email("ada@example.com".to_owned())),
            ),
            (" sunrise-care ", Ok(Term::Text("sunrise-care".to_owned()))),
            ("Sunrise Care", Ok(Term::Text("Sunrise Care".to_owned()))),
            // Not quite an id: a name or slug to look for.
            ("01a2517f-1d80", Ok(Term::Text("01a2517f-1d80".to_owned()))),
            ("   ", Err("type an email address, a slug, a name or an id")),
            (
                "a\u{7}b",
                Err("a search cannot contain the control character '\\u{7}'"),
            ),
            (
                &long,
                Err("a search is at most 200 characters; this one is 201"),
            ),
        ];
        for (typed, expected) in cases {
            assert_eq!(
                Term::parse(typed),
                expected.map_err(str::to_owned),
                "{typed:?}"
            );
        }
    }
}
