//! Sending through an SMTP server.
//!
//! Every send has one deadline around all of it: connecting, the server's greeting,
//! `EHLO`, TLS, authentication, the envelope, the message and the server's reply to
//! its final `.`. A server that accepts the connection and never speaks, or that takes
//! the message and never answers, fails the send when the deadline passes; nothing
//! waits on it for longer. A deadline that passes after the message went out is an
//! in-doubt failure ([`MailError::in_doubt`]): the server may have accepted it.
//!
//! A send's connection is used again only when the send ended with the server's
//! reply: one cut off by the deadline is closed, never pooled, since the reply it was
//! waiting for could arrive later and be read as the answer to another message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use crate::{Delivery, MailConfigError, MailError, Mailer, OutboundMessage, to_lettre};

/// Sends through an SMTP server named by URL (`smtp://HOST:PORT`, with `USER:PASS@`
/// for authentication and `?tls=required` for STARTTLS; `smtps://` for implicit TLS;
/// `?timeout=10s` for the deadline of one send, 30 s by default).
///
/// Connections are pooled: a send returns as soon as the server has accepted the
/// message, and the connection waits for the next send. Waiting for the reply to
/// `QUIT` would lengthen the time in which the message is delivered and its sending
/// not yet recorded, in which a crash sends it again.
#[derive(Clone)]
pub struct SmtpMailer {
    server: Arc<Server>,
    deadline: Duration,
    idle: Arc<Mutex<Vec<Idle>>>,
    described: String,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("server", &self.described)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Idle connections kept open at most.
const POOL_SIZE: usize = 8;
/// How long an idle connection is kept: well under the five minutes after which a
/// server may drop it (RFC 5321, 4.5.3.2.7).
const POOL_IDLE: Duration = Duration::from_secs(30);
/// How long a pooled connection may take to answer the `NOOP` that checks it before
/// use; past it, a new connection is opened (within the send's deadline).
const POOL_CHECK: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the reply to its `QUIT`.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// The deadline of one send when the URL names none: RFC 5321 allows a server
/// minutes per command, but an invitation is small, and a send that waits longer
/// only holds its workflow step; it is retried.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Where and how to connect.
struct Server {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
}

enum Security {
    /// Plain text (`smtp://`).
    None,
    /// STARTTLS, required (`?tls=required`).
    Required(TlsParameters),
    /// STARTTLS when the server offers it (`?tls=opportunistic`).
    Opportunistic(TlsParameters),
    /// TLS from the first byte (`smtps://`).
    Implicit(TlsParameters),
}

/// A connection waiting in the pool, since when.
struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

impl SmtpMailer {
    /// A mailer for the server a URL names.
    pub fn from_url(url: &str) -> Result<Self, MailConfigError> {
        let invalid = |message: String| MailConfigError::Invalid {
            url: redact(url),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("the URL names no host".to_owned()))?
            .to_owned();
        let query = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned()).map_err(|e| invalid(format!("TLS: {e}")))
        };
        let (security, default_port) = match (parsed.scheme(), query("tls").as_deref()) {
            ("smtp", None) => (Security::None, 25),
            ("smtp", Some("required")) => (Security::Required(tls(&host)?), 587),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic(tls(&host)?), 587),
            ("smtps", None) => (Security::Implicit(tls(&host)?), 465),
            (scheme, tls) => {
                return Err(invalid(format!(
                    "scheme {scheme:?} with tls={tls:?}: use smtp:// (with ?tls=required or \
                     ?tls=opportunistic for STARTTLS) or smtps://"
                )));
            }
        };
        let credentials = match parsed.password() {
            Some(password) => {
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(text)
                        .decode_utf8()
                        .map(std::borrow::Cow::into_owned)
                        .map_err(|e| invalid(format!("credentials: {e}")))
                };
                Some(Credentials::new(
                    decode(parsed.username())?,
                    decode(password)?,
                ))
            }
            None => None,
        };
        // The path names this host in HELO / EHLO, as lettre's own URLs do.
        let hello = match parsed.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        let deadline = match query("timeout") {
            Some(text) => parse_deadline(&text).ok_or_else(|| {
                invalid(format!(
                    "timeout={text:?} is not a duration: use e.g. 500ms, 10s or 2m"
                ))
            })?,
            None => DEFAULT_DEADLINE,
        };
        Ok(Self {
            server: Arc::new(Server {
                port: parsed.port().unwrap_or(default_port),
                host,
                security,
                credentials,
                hello,
            }),
            deadline,
            idle: Arc::default(),
            described: redact(url),
        })
    }

    /// The same mailer with another deadline for each send.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The deadline of each send.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Sends on a pooled or new connection; sets `handed` once the message
    /// transaction has begun on a ready connection (from then on a cut-off send may
    /// have been accepted).
    async fn deliver(
        &self,
        envelope: &lettre::address::Envelope,
        raw: &[u8],
        handed: &AtomicBool,
    ) -> Result<Response, MailError> {
        let mut conn = self.connection().await?;
        handed.store(true, Ordering::SeqCst);
        let sent = conn.send(envelope, raw).await;
        // lettre marks a connection broken after any failed command; one that got
        // its reply, a refusal included, can carry the next message.
        if !conn.has_broken() {
            self.park(conn);
        }
        sent.map_err(|e| classify(&e))
    }

    /// A pooled connection that answers a `NOOP`, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, MailError> {
        while let Some(mut conn) = self.take_idle() {
            if let Ok(true) = tokio::time::timeout(POOL_CHECK, conn.test_connected()).await {
                return Ok(conn);
            }
            // Dropped, not closed with QUIT: it did not answer.
        }
        self.server.connect().await.map_err(|e| classify(&e))
    }

    /// The most recently parked connection that has not idled too long; older ones
    /// are closed.
    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = idle
            .iter()
            .take_while(|parked| parked.since.elapsed() >= POOL_IDLE)
            .count();
        let expired: Vec<Idle> = idle.drain(..stale).collect();
        let taken = idle.pop().map(|parked| parked.conn);
        drop(idle);
        for parked in expired {
            close(parked.conn);
        }
        taken
    }

    fn park(&self, conn: AsyncSmtpConnection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < POOL_SIZE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        } else {
            drop(idle);
            close(conn);
        }
    }
}

impl Server {
    /// A new connection, greeted, secured and authenticated as the URL asks.
    async fn connect(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let implicit = match &self.security {
            Security::Implicit(parameters) => Some(parameters.clone()),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            None,
            &self.hello,
            implicit,
            None,
        )
        .await?;
        match &self.security {
            Security::Required(parameters) => {
                conn.starttls(parameters.clone(), &self.hello).await?;
            }
            Security::Opportunistic(parameters) if conn.can_starttls() => {
                conn.starttls(parameters.clone(), &self.hello).await?;
            }
            _ => {}
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }
}

/// Closes a connection politely, in the background, waiting a few seconds at most
/// for the server's reply to `QUIT`. Outside a runtime it is simply dropped.
fn close(mut conn: AsyncSmtpConnection) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(QUIT_WAIT, conn.quit()).await;
        });
    }
}

/// `500ms`, `10s`, `2m`, or a number of seconds.
fn parse_deadline(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().ok()?;
    let deadline = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60)?),
        _ => return None,
    };
    (!deadline.is_zero()).then_some(deadline)
}

fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn classify(error: &lettre::transport::smtp::Error) -> MailError {
    let code = error
        .status()
        .and_then(|code| code.to_string().parse::<u16>().ok());
    MailError {
        // A 5xx reply will not change on a retry; a 4xx reply, a refused connection or
        // a broken one may.
        permanent: error.is_permanent(),
        // The server answered, or the failure came before the message was complete.
        in_doubt: false,
        code,
        message: error.to_string(),
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, MailError> {
        let email = to_lettre(message)?;
        let raw = email.formatted();
        let handed = AtomicBool::new(false);
        let delivered =
            tokio::time::timeout(self.deadline, self.deliver(email.envelope(), &raw, &handed))
                .await;
        let response = match delivered {
            Ok(sent) => sent?,
            Err(_) if handed.load(Ordering::SeqCst) => {
                return Err(MailError::in_doubt(format!(
                    "{} did not answer within {:?} of the send's start; it may have accepted \
                     the message",
                    self.described, self.deadline
                )));
            }
            Err(_) => {
                return Err(MailError::transient(format!(
                    "{} did not greet or answer within {:?}; the message was not handed over",
                    self.described, self.deadline
                )));
            }
        };
        Ok(Delivery {
            message_id: message.message_id.clone(),
            transport: "smtp",
            detail: format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            ),
        })
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_deadline, redact};

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("smtp://user:secret@mail.example.com:587"),
            "smtp://***@mail.example.com:587"
        );
        assert_eq!(redact("smtp://127.0.0.1:2525"), "smtp://127.0.0.1:2525");
    }

    #[test]
    fn deadlines_read_as_durations() {
        let check = |text: &str, expect: Option<Duration>| {
            assert_eq!(parse_deadline(text), expect, "{text:?}");
        };
        check("500ms", Some(Duration::from_millis(500)));
        check("10s", Some(Duration::from_secs(10)));
        check("2m", Some(Duration::from_secs(120)));
        check("7", Some(Duration::from_secs(7)));
        check("0s", None);
        check("", None);
        check("1h", None);
        check("-3s", None);
        check("99999999999999999999m", None);
    }
}
