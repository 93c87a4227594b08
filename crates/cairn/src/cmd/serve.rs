//! `cairn serve` and `cairn token`.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context as _;
use console::style;

use cairn_log::Db;
use cairn_policy::{Authenticator, KeySource, Principal};

use crate::app;
use crate::cli::{AuthArgs, Runtime, ServeArgs, TokenArgs};
use crate::ui;

/// The name of the development HS256 secret kept in the database.
const DEV_SECRET: &str = "jwt_development_secret";

async fn secret(db: &Db, configured: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match configured {
        Some(secret) => Ok(secret.as_bytes().to_vec()),
        None => Ok(cairn_domain::tokens::load_or_create_secret(db, DEV_SECRET).await?),
    }
}

async fn key_source(db: &Db, auth: &AuthArgs) -> anyhow::Result<(KeySource, String)> {
    if let Some(path) = &auth.jwt_public_key {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading --jwt-public-key {}", path.display()))?;
        return Ok((
            KeySource::PublicKeyPem(pem),
            format!("RS256/ES256 public key {}", path.display()),
        ));
    }
    if let Some(path) = &auth.jwks {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("reading --jwks {}", path.display()))?;
        return Ok((KeySource::Jwks(json), format!("JWKS {}", path.display())));
    }
    let described = if auth.jwt_secret.is_some() {
        "HS256, the configured secret".to_owned()
    } else {
        "HS256, the development secret (cairn token mints tokens)".to_owned()
    };
    Ok((
        KeySource::Secret(secret(db, auth.jwt_secret.as_deref()).await?),
        described,
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// The bounds on live subscriptions: as given, or derived from the connection cap; in
/// all, always below it, so that requests keep connections of their own.
fn subscription_bounds(
    args: &ServeArgs,
    max_connections: usize,
) -> anyhow::Result<cairn_http::capacity::Bounds> {
    let total = args
        .max_subscriptions_total
        .unwrap_or(cairn_http::capacity::Bounds::for_connections(max_connections).total);
    anyhow::ensure!(
        total < max_connections,
        "--max-subscriptions-total ({total}) must be below --max-connections \
         ({max_connections}): a subscription holds its connection, and requests need \
         connections of their own"
    );
    let per_organization = args
        .max_subscriptions_per_organization
        .unwrap_or(cairn_http::capacity::Bounds::for_total(total).per_organization);
    Ok(cairn_http::capacity::Bounds {
        total,
        per_organization,
    })
}

pub async fn serve(url: &str, runtime: &Runtime, args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let serve_options = cairn_http::server::ServeOptions {
        header_timeout: args.header_timeout.0,
        idle_timeout: args.idle_timeout.0,
        body_timeout: args.body_timeout.0,
        send_timeout: args.send_timeout.0,
        max_connections: match args.max_connections {
            Some(0) => anyhow::bail!("--max-connections must be at least 1"),
            Some(n) => n,
            None => cairn_http::server::default_max_connections(),
        },
        shutdown_grace: args.shutdown_grace.0,
    };
    let subscription_bounds = subscription_bounds(&args, serve_options.max_connections)?;
    let development_secret = args.auth.jwt_secret.is_none()
        && args.auth.jwt_public_key.is_none()
        && args.auth.jwks.is_none();
    if development_secret && !args.addr.ip().is_loopback() && !args.dev_tokens {
        anyhow::bail!(
            "refusing to serve {} with the development token secret: it is kept in the database, \
             so anyone who can read the database or a backup of it could mint a platform \
             administrator's token. Give --jwt-secret (or CAIRN_JWT_SECRET), --jwt-public-key or \
             --jwks, or pass --dev-tokens to accept the risk",
            args.addr
        );
    }
    let domain = app::open_domain_driving(url, runtime, args.concurrency).await?;
    // An erasure whose copies outside the database were not removed before a stop.
    domain.scrub_personal_data().await;
    match domain.sweep_erased().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "finished removing the outbox files of erased people"),
        Err(error) => {
            tracing::error!(%error, "cannot finish removing the outbox files of erased people")
        }
    }
    // A build that lacks the version an unfinished run started on would strand it:
    // it refuses to serve, naming the run, before it listens or runs anything.
    domain.engine().check_definitions().await?;
    let (source, described) = key_source(domain.store().db(), &args.auth).await?;
    if development_secret && !args.addr.ip().is_loopback() {
        eprintln!(
            "{} serving {} with the development token secret (--dev-tokens): anyone who can \
             read the database can mint tokens",
            style("warning:").yellow().bold(),
            args.addr
        );
    }
    let auth = Authenticator::new(&source)?;
    let audit_checkpoints = super::audit::schedule(domain.store().db(), &args.audit)?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let address = listener.local_addr()?;
    eprintln!(
        "{} listening on http://{address}\n  console   http://{address}/console (sign in with a token from `cairn token`)\n  database  {}\n  mail      {}\n  tokens    {described}\n  contracts http://{address}/v1/openapi.json · http://{address}/v1/asyncapi.json\n  health    http://{address}/health/integration · http://{address}/metrics ({})",
        style("cairn").bold(),
        domain.store().db().describe(),
        runtime.mail_display(),
        if args.probe_interval.0.is_zero() {
            "no scheduled probe".to_owned()
        } else {
            format!(
                "a probe every {}",
                crate::ui::duration(args.probe_interval.0)
            )
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let engine = domain.engine().clone();
    let mut engine_stop = stop_rx.clone();
    // Steps in flight get the same grace as requests: a step stuck on a mail server
    // that never answers must not keep the process from stopping.
    let engine_grace = args.shutdown_grace.0;
    let worker = tokio::spawn(async move {
        engine
            .run_with_grace(
                async move {
                    let _ = engine_stop.changed().await;
                },
                engine_grace,
            )
            .await
    });
    let defaults = cairn_http::Options::default();
    let options = cairn_http::Options {
        thresholds: cairn_domain::reads::Thresholds {
            stuck_after: chrono::Duration::from_std(args.stuck_after.0)
                .context("--stuck-after is too long")?,
            ..defaults.thresholds
        },
        secure_cookies: runtime.public_url.starts_with("https://"),
        max_subscriptions: args.max_subscriptions,
        public_origin: reqwest::Url::parse(&runtime.public_url)
            .ok()
            .map(|url| url.origin().ascii_serialization())
            .filter(|origin| origin != "null"),
        subscription_bounds,
        ..defaults
    };
    let built = cairn_http::build(domain, auth, options)?;
    built.state.set_base_url(format!("http://{address}"));
    let feed = built.state.feed().clone();
    let prober = (!args.probe_interval.0.is_zero()).then(|| {
        let state = built.state.clone();
        let every = args.probe_interval.0;
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                let (_, report) = cairn_http::probe::probe(&state, std::time::Duration::ZERO).await;
                if let Some(hop) = &report.broken {
                    eprintln!(
                        "{} integration probe: the {hop} hop broke (cairn trace {})",
                        style("warning:").yellow().bold(),
                        report.correlation_id
                    );
                }
            }
        })
    });
    let sampler = {
        let state = built.state.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(cairn_http::console::run_sampler(state, async move {
            let _ = stop.changed().await;
        }))
    };
    let pruner = (!args.span_retention.0.is_zero()).then(|| {
        let db = built.state.db().clone();
        let retention =
            chrono::Duration::from_std(args.span_retention.0).unwrap_or(chrono::Duration::MAX);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let cutoff = chrono::Utc::now().checked_sub_signed(retention);
                if let Some(cutoff) = cutoff {
                    match db.prune_spans(cutoff).await {
                        Ok(pruned) => {
                            cairn_observe::metrics().spans_pruned.inc_by(pruned);
                        }
                        Err(error) => tracing::warn!(error = %error, "pruning old spans failed"),
                    };
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    });
    let access_pruner = (!args.access_retention.0.is_zero()).then(|| {
        let db = built.state.db().clone();
        let retention =
            chrono::Duration::from_std(args.access_retention.0).unwrap_or(chrono::Duration::MAX);
        let mut stop = stop_rx.clone();
        // The access log has a pruning of its own: from its oldest end, past its
        // retention only, keeping the chain verifiable (never with the spans).
        tokio::spawn(async move {
            loop {
                if let Some(cutoff) = chrono::Utc::now().checked_sub_signed(retention)
                    && let Err(error) = db.prune_access(cutoff).await
                {
                    tracing::warn!(error = %error, "pruning the access log past its retention failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(3_600)) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    });
    let db = built.state.db().clone();
    let mut http_stop = stop_rx;
    let server = cairn_http::serve(listener, built.router, serve_options, async move {
        let _ = http_stop.changed().await;
    });
    let signal = async {
        shutdown_signal().await;
        eprintln!(
            "stopping: ending subscriptions, finishing requests and workflow steps in flight"
        );
        // Open subscriptions end with a message saying where to resume; otherwise
        // the graceful shutdown would wait for them forever.
        feed.close();
        let _ = stop_tx.send(true);
    };
    let (served, ()) = tokio::join!(server, signal);
    served.context("serving HTTP")?;
    let abandoned = worker.await.context("stopping the workflow engine")?;
    if abandoned > 0 {
        eprintln!(
            "abandoned {} in flight after the grace: they run again once their leases expire",
            ui::plural(abandoned as u64, "workflow run", "workflow runs")
        );
    }
    if let Some(prober) = prober {
        prober.abort();
    }
    sampler.abort();
    if let Some(audit_checkpoints) = audit_checkpoints {
        audit_checkpoints.abort();
    }
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    if let Some(access_pruner) = access_pruner {
        access_pruner.abort();
    }
    // The last reads' access records are still queued: they are written before the
    // process ends.
    db.flush_access().await;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn token(url: &str, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let principal = if let Some(org_id) = args.org {
        Principal::User {
            user_id: args.user.unwrap_or_else(cairn_types::UserId::new_v7),
            org_id,
            roles: args.role.iter().copied().collect::<BTreeSet<_>>(),
        }
    } else if let Some(name) = args.service {
        cairn_types::Actor::service(&name).map_err(|e| anyhow::anyhow!("--service: {e}"))?;
        Principal::Service {
            name,
            scopes: args.scope.iter().copied().collect(),
        }
    } else if let Some(name) = args.platform_admin {
        cairn_types::Actor::service(&format!("platform-admin-{name}"))
            .map_err(|e| anyhow::anyhow!("--platform-admin: {e}"))?;
        Principal::PlatformAdmin { name }
    } else {
        anyhow::bail!("give --org with --role, --service with --scope, or --platform-admin");
    };
    let db = app::open_db(url, &cairn_log::DbOptions::default()).await?;
    let secret = secret(&db, args.jwt_secret.as_deref()).await?;
    anyhow::ensure!(secret.len() >= 32, "the JWT secret needs at least 32 bytes");
    let token = cairn_policy::mint(&principal, &secret, args.ttl.0)?;
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}
