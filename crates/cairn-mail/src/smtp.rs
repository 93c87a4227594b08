//! Sending through an SMTP server.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};

use crate::{Delivery, MailConfigError, MailError, Mailer, OutboundMessage, to_lettre};

/// Sends through an SMTP server named by URL (`smtp://HOST:PORT`, with
/// `USER:PASS@` for authentication and `?tls=required` for STARTTLS; `smtps://` for
/// implicit TLS).
///
/// Connections are pooled: a send returns as soon as the server has accepted the
/// message, and the connection goes back to the pool (or is closed) in the background.
/// Waiting for the reply to `QUIT` would lengthen the time in which the message is
/// delivered and its sending not yet recorded, in which a crash sends it again.
#[derive(Clone)]
pub struct SmtpMailer {
    builder: AsyncSmtpTransportBuilder,
    /// Built at the first send, inside the runtime its pool's task needs.
    transport: Arc<tokio::sync::OnceCell<AsyncSmtpTransport<Tokio1Executor>>>,
    described: String,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("server", &self.described)
            .finish()
    }
}

/// Idle connections kept open at most.
const POOL_SIZE: u32 = 8;
/// How long an idle connection is kept: well under the five minutes after which a
/// server may drop it (RFC 5321, 4.5.3.2.7).
const POOL_IDLE: Duration = Duration::from_secs(30);

impl SmtpMailer {
    /// A mailer for the server a URL names.
    pub fn from_url(url: &str) -> Result<Self, MailConfigError> {
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailConfigError::Invalid {
                url: redact(url),
                message: e.to_string(),
            })?
            .timeout(Some(Duration::from_secs(30)))
            .pool_config(
                PoolConfig::new()
                    .max_size(POOL_SIZE)
                    .idle_timeout(POOL_IDLE),
            );
        Ok(Self {
            builder,
            transport: Arc::default(),
            described: redact(url),
        })
    }

    async fn transport(&self) -> &AsyncSmtpTransport<Tokio1Executor> {
        self.transport
            .get_or_init(|| async { self.builder.clone().build() })
            .await
    }
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
        // a timeout may.
        permanent: error.is_permanent(),
        code,
        message: error.to_string(),
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, MailError> {
        let email = to_lettre(message)?;
        let response = self
            .transport()
            .await
            .send(email)
            .await
            .map_err(|e| classify(&e))?;
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
    use super::redact;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("smtp://user:secret@mail.example.com:587"),
            "smtp://***@mail.example.com:587"
        );
        assert_eq!(redact("smtp://127.0.0.1:2525"), "smtp://127.0.0.1:2525");
    }
}
