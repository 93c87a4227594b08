//! The HTTP API.
//!
//! One route table ([`routes::api`]) both serves the API and generates its OpenAPI 3.1
//! document; the AsyncAPI 3.0 document is generated from the event registry. Every
//! handler asks the one policy before it reads or acts; every error is
//! `application/problem+json` with a stable code, the field at fault and where it was
//! expected, and the request's correlation id; every request carries a correlation id
//! into every event it causes.
//!
//! Nothing below this crate knows HTTP. This crate reads projections and the log only
//! through `cairn_domain::reads`, with a grant from the policy.

pub(crate) mod access;
pub mod api;
pub mod capacity;
pub mod console;
pub mod context;
pub mod contracts;
pub mod input;
pub mod pages;
pub mod probe;
pub mod problem;
pub mod routes;
pub mod server;
mod standing;
pub mod stream;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::response::IntoResponse;
use serde_json::Value;
use tokio::net::TcpListener;

use cairn_domain::Domain;
use cairn_log::Db;
use cairn_policy::Authenticator;

use crate::problem::{Problem, ProblemCode};

struct Inner {
    domain: Domain,
    auth: Authenticator,
    feed: cairn_realtime::Feed,
    options: Options,
    /// Where this server listens, once it does: the probe calls it there.
    base_url: std::sync::OnceLock<String>,
    probe: probe::ProbeState,
    openapi: Value,
    asyncapi: Value,
    activity: console::Activity,
    subscriptions: stream::Subscriptions,
    capacity: capacity::Capacity,
    standings: standing::Standings,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("domain", &self.inner.domain)
            .finish()
    }
}

impl AppState {
    pub fn domain(&self) -> &Domain {
        &self.inner.domain
    }

    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// Where the people behind tokens stand, as this process read it lately.
    pub(crate) fn standings(&self) -> &standing::Standings {
        &self.inner.standings
    }

    pub fn feed(&self) -> &cairn_realtime::Feed {
        &self.inner.feed
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// Where this server listens, once [`AppState::set_base_url`] said so.
    pub fn base_url(&self) -> Option<&str> {
        self.inner.base_url.get().map(String::as_str)
    }

    /// Tells the application where it listens (`http://127.0.0.1:8080`).
    pub fn set_base_url(&self, url: String) {
        let _ = self.inner.base_url.set(url);
    }

    pub fn probe_state(&self) -> &probe::ProbeState {
        &self.inner.probe
    }

    pub fn db(&self) -> &Db {
        self.inner.domain.store().db()
    }

    /// The log with its registry: what reads of events go through.
    pub fn store(&self) -> &cairn_dispatch::EventStore {
        self.inner.domain.store()
    }

    pub fn openapi(&self) -> &Value {
        &self.inner.openapi
    }

    pub fn asyncapi(&self) -> &Value {
        &self.inner.asyncapi
    }

    /// The live subscriptions open, by principal.
    pub fn subscriptions(&self) -> &stream::Subscriptions {
        &self.inner.subscriptions
    }

    /// The live subscriptions open, in all and by organization.
    pub fn capacity(&self) -> &capacity::Capacity {
        &self.inner.capacity
    }

    /// The console's recent activity samples.
    pub fn activity(&self) -> &console::Activity {
        &self.inner.activity
    }

    /// Whether the database answers.
    pub async fn database_ready(&self) -> Result<(), cairn_log::DbError> {
        self.db().ping().await
    }
}

async fn no_route(method: Method, uri: axum::http::Uri) -> axum::response::Response {
    if console::owns(uri.path()) {
        return console::not_found_page(uri.path());
    }
    Problem::new(
        ProblemCode::NotFound,
        format!("there is no operation {method} {}", uri.path()),
    )
    .into_response()
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> axum::response::Response {
    if console::owns(uri.path()) {
        return console::wrong_method_page(&method, uri.path());
    }
    Problem::new(
        ProblemCode::MethodNotAllowed,
        format!(
            "{} does not take {method}; see /v1/openapi.json",
            uri.path()
        ),
    )
    .into_response()
}

/// How the application watches itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// When workflow runs count as stuck and events as unprocessed.
    pub thresholds: cairn_domain::reads::Thresholds,
    /// `GET /health/integration` answers with a probe result at most this old rather
    /// than start another.
    pub probe_max_age: std::time::Duration,
    /// Mark the console's cookies `Secure` whatever the request says (the public URL
    /// is https).
    pub secure_cookies: bool,
    /// The most live subscriptions (SSE and WebSocket) one principal may have open.
    pub max_subscriptions: usize,
    /// The origin (`https://console.example.com`) people reach the console at, besides
    /// the address a request names: a console form posted from it is the console's own.
    pub public_origin: Option<String>,
    /// The most live subscriptions open in all and per organization: below the
    /// server's connection cap, so that requests keep connections of their own.
    pub subscription_bounds: capacity::Bounds,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            thresholds: cairn_domain::reads::Thresholds {
                stuck_after: chrono::Duration::minutes(15),
                unprocessed_after: chrono::Duration::minutes(1),
            },
            probe_max_age: std::time::Duration::from_secs(5),
            secure_cookies: false,
            max_subscriptions: 100,
            public_origin: None,
            subscription_bounds: capacity::Bounds::default(),
        }
    }
}

/// The application: every route, with its state and middleware.
pub fn app(domain: Domain, auth: Authenticator) -> Result<Router, cairn_policy::TokenError> {
    Ok(build(domain, auth, Options::default())?.router)
}

/// The application and its state, for a server that also runs the feed's shutdown
/// and the integration probe.
#[derive(Debug, Clone)]
pub struct Built {
    pub router: Router,
    pub state: AppState,
}

/// Builds the application. The authenticator gets a key of this process's own, for
/// the probe's requests to itself.
pub fn build(
    domain: Domain,
    auth: Authenticator,
    options: Options,
) -> Result<Built, cairn_policy::TokenError> {
    let auth = auth.with_process_key()?;
    let (router, documented) = routes::api().finish();
    let openapi = api::openapi(&documented);
    let registry = domain.store().dispatcher().registry().clone();
    let asyncapi = contracts::asyncapi(&registry);
    let feed = cairn_realtime::Feed::new(domain.store().db().clone(), registry);
    let state = AppState {
        inner: Arc::new(Inner {
            domain,
            auth,
            feed,
            options,
            base_url: std::sync::OnceLock::new(),
            probe: probe::ProbeState::default(),
            openapi,
            asyncapi,
            activity: console::Activity::default(),
            subscriptions: stream::Subscriptions::default(),
            capacity: capacity::Capacity::default(),
            standings: standing::Standings::default(),
        }),
    };
    let router = router
        .route(
            "/invitations/accept",
            axum::routing::get(pages::accept_page).post(pages::accept_form),
        )
        .merge(console::router(&state))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            context::correlate,
        ))
        .with_state(state.clone());
    Ok(Built { router, state })
}

/// Serves the application on a bound listener until `shutdown` resolves, then stops
/// taking requests, finishes the ones in flight within `options.shutdown_grace`, and
/// drops the rest. See [`server`] for the limits and timeouts.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: server::ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, app, options, shutdown).await
}
