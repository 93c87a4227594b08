//! Sending through an SMTP server.

use std::time::Duration;

use async_trait::async_trait;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};

use crate::{Delivery, MailConfigError, MailError, Mailer, OutboundMessage, to_lettre};

/// Sends through an SMTP server named by URL (`smtp://HOST:PORT`, with
/// `USER:PASS@` for authentication and `?tls=required` for STARTTLS; `smtps://` for
/// implicit TLS).
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    described: String,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("server", &self.described)
            .finish()
    }
}

impl SmtpMailer {
    /// A mailer for the server a URL names.
    pub fn from_url(url: &str) -> Result<Self, MailConfigError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailConfigError::Invalid {
                url: redact(url),
                message: e.to_string(),
            })?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Self {
            transport,
            described: redact(url),
        })
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
        let response = self.transport.send(email).await.map_err(|e| classify(&e))?;
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
