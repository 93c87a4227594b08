//! An in-process cairn HTTP app on a test database, and requests against it.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use cairn_dispatch::EventStore;
use cairn_domain::{CommandContext, Domain, DomainConfig};
use cairn_policy::{Authenticator, KeySource, Principal, Role, Scope};
use cairn_testkit::TestDb;
use cairn_types::{OrgId, UserId};
use cairn_workflow::{EngineConfig, SystemClock};
use serde_json::{Value, json};
use tower::ServiceExt as _;

pub const SECRET: &[u8] = b"the test secret for cairn http, 32+ bytes";

pub struct Server {
    pub t: TestDb,
    pub domain: Domain,
    pub app: Router,
    pub state: cairn_http::AppState,
    pub outbox: tempfile::TempDir,
}

pub async fn server(t: TestDb) -> anyhow::Result<Server> {
    server_with(t, cairn_http::Options::default()).await
}

pub async fn server_with(t: TestDb, options: cairn_http::Options) -> anyhow::Result<Server> {
    t.migrate_sets(&cairn_domain::all_migrations()[1..]).await?;
    let store = EventStore::new(t.db().clone(), cairn_domain::registry());
    let outbox = tempfile::tempdir()?;
    let mailer = Arc::new(cairn_mail::OutboxMailer::new(outbox.path()));
    let domain = Domain::open(
        store,
        mailer,
        Arc::new(SystemClock),
        DomainConfig::default(),
        EngineConfig::default(),
    )
    .await?;
    let auth = Authenticator::new(&KeySource::Secret(SECRET.to_vec()))?;
    let built = cairn_http::build(domain.clone(), auth, options)?;
    Ok(Server {
        t,
        domain,
        app: built.router,
        state: built.state,
        outbox,
    })
}

impl Server {
    /// Serves the app on a loopback port, as `cairn serve` does; returns its base URL.
    pub async fn listen(&self) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        self.state.set_base_url(base.clone());
        let app = self.app.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(base)
    }

    /// Runs the workflow engine until the returned sender is dropped or sent to.
    pub fn run_engine(&self) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let engine = self.domain.engine().clone();
        tokio::spawn(async move {
            engine
                .run(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        stop
    }
}

pub fn token(principal: &Principal) -> String {
    cairn_policy::mint(principal, SECRET, Duration::from_secs(3600)).expect("a token")
}

pub fn platform_admin() -> Principal {
    Principal::PlatformAdmin { name: "ops".into() }
}

pub fn user(org_id: OrgId, role: Role) -> Principal {
    Principal::User {
        user_id: UserId::new_v7(),
        org_id,
        roles: BTreeSet::from([role]),
    }
}

pub fn service(scopes: &[Scope]) -> Principal {
    Principal::Service {
        name: "reporting".into(),
        scopes: scopes.iter().copied().collect(),
    }
}

/// A response: status, headers and body (JSON, or the text when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

pub struct Call<'a> {
    method: Method,
    uri: String,
    token: Option<String>,
    body: Option<Vec<u8>>,
    content_type: &'a str,
    headers: Vec<(String, String)>,
}

pub fn call(method: Method, uri: impl Into<String>) -> Call<'static> {
    Call {
        method,
        uri: uri.into(),
        token: None,
        body: None,
        content_type: "application/json",
        headers: Vec::new(),
    }
}

impl<'a> Call<'a> {
    pub fn as_(mut self, principal: &Principal) -> Self {
        if *principal != Principal::Anonymous {
            self.token = Some(token(principal));
        }
        self
    }

    pub fn bearer(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(serde_json::to_vec(&body).expect("json"));
        self
    }

    pub fn raw(mut self, body: &[u8], content_type: &'a str) -> Self {
        self.body = Some(body.to_vec());
        self.content_type = content_type;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub async fn send(self, app: &Router) -> Reply {
        let mut builder = Request::builder().method(self.method).uri(&self.uri);
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = match self.body {
            Some(bytes) => {
                builder = builder.header("content-type", self.content_type);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let response = app
            .clone()
            .oneshot(builder.body(body).expect("a request"))
            .await
            .expect("a response");
        let status = response.status();
        let headers = response.headers().clone();
        let streaming = headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streaming {
            // An event stream does not end: its status and headers are the answer.
            return Reply {
                status,
                headers,
                body: Value::String("(an event stream)".to_owned()),
            };
        }
        let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
            .await
            .expect("a body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }
}

pub fn bootstrap_body(slug: &str) -> Value {
    json!({
        "organization": {"name": format!("Org {slug}"), "slug": slug, "sender_domain": "mail.example.co.uk"},
        "admin": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "invitees": [{"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]}]
    })
}

/// Bootstraps an organization as a platform admin and runs its workflow to the end.
pub async fn bootstrapped(server: &Server, slug: &str) -> anyhow::Result<OrgId> {
    let ctx = CommandContext::new(platform_admin());
    let request = serde_json::from_value(bootstrap_body(slug))?;
    let accepted = server.domain.bootstrap(&ctx, &request).await?;
    server.domain.engine().run_until_idle().await?;
    Ok(accepted.org_id)
}

/// Asserts that a reply is the problem+json of `status` and `code`, naming its request.
#[track_caller]
pub fn assert_problem(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{:#}", reply.body);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.body["code"], json!(code), "{:#}", reply.body);
    assert_eq!(reply.body["status"], json!(status.as_u16()));
    assert_eq!(
        reply.body["type"],
        json!(format!("https://cairn.dev/problems/{code}"))
    );
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(
        reply.body["correlation_id"],
        json!(reply.header("x-correlation-id")),
        "every problem names its request"
    );
}
