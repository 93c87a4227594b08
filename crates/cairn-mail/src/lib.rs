//! Outbound email.
//!
//! A [`Mailer`] delivers one [`OutboundMessage`]. Two real implementations: [`SmtpMailer`]
//! (any SMTP server, by URL) and [`OutboxMailer`], the embedded default, which writes
//! standard RFC 5322 `.eml` files a mail client can open. Errors say whether a retry
//! can help ([`MailError::permanent`]): a server that answers 5xx ("domain not
//! verified") will answer the same again.
//!
//! [`registrable_domain`] finds an organization's parent domain with the Public Suffix
//! List, so `mail.clinic.example.co.uk` sends from `example.co.uk`, never from `co.uk`.
//!
//! This crate knows nothing about workflows, events or organizations.

mod address;
mod outbox;
mod smtp;

use std::sync::Arc;

use async_trait::async_trait;

pub use address::{DomainError, EmailAddress, EmailError, registrable_domain};
pub use outbox::OutboxMailer;
pub use smtp::{DEFAULT_DEADLINE, SmtpMailer};

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The Message-ID, without angle brackets: stable across retries of one send, so a
    /// repeat can be recognized.
    pub message_id: String,
    pub from: EmailAddress,
    pub from_name: Option<String>,
    pub to: EmailAddress,
    pub to_name: Option<String>,
    pub subject: String,
    /// The plain-text body.
    pub text: String,
}

/// What a mailer did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    /// `smtp`, `outbox`, …
    pub transport: &'static str,
    /// The server's reply, or the file written.
    pub detail: String,
}

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MailError {
    /// True when retrying cannot help (a 5xx reply, a malformed message).
    pub permanent: bool,
    /// True when the message may have been delivered all the same: it went out and
    /// the server's answer never came. A retry sends it again under the same
    /// Message-ID, so that a receiver can drop the copy.
    pub in_doubt: bool,
    /// The SMTP reply code, when a server answered.
    pub code: Option<u16>,
    pub message: String,
}

impl MailError {
    /// A failure a retry may fix.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            in_doubt: false,
            code: None,
            message: message.into(),
        }
    }

    /// A failure a retry will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            in_doubt: false,
            code: None,
            message: message.into(),
        }
    }

    /// A failure after which the message may have been delivered: a retry may fix it,
    /// and may send a second copy.
    pub fn in_doubt(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            in_doubt: true,
            code: None,
            message: message.into(),
        }
    }
}

/// Delivers messages.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends one message.
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, MailError>;

    /// Whether a message with this id was delivered before, for a send whose outcome
    /// is in doubt (the process stopped between sending and recording). `Ok(None)` means
    /// the transport cannot tell; the caller then sends again with the same Message-ID.
    async fn delivered(&self, message_id: &str) -> Result<Option<Delivery>, MailError> {
        let _ = message_id;
        Ok(None)
    }

    /// Removes what this transport kept of these messages (an outbox's files), for
    /// the erasure of the person they went to. Returns how many it removed; a
    /// transport that keeps nothing (a mail server) removes nothing.
    async fn forget(&self, message_ids: &[String]) -> Result<usize, MailError> {
        let _ = message_ids;
        Ok(0)
    }

    /// Where mail goes, for people.
    fn describe(&self) -> String;
}

/// Why a mail URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MailConfigError {
    #[error(
        "mail URL {url:?} is not supported: use outbox:PATH (files) or smtp://HOST:PORT, smtps://HOST:PORT"
    )]
    Unsupported { url: String },
    #[error("mail URL {url:?} is not valid: {message}")]
    Invalid { url: String, message: String },
}

/// The mailer a URL names: `outbox:PATH` (or `outbox://PATH`) writes `.eml` files;
/// `smtp://[USER:PASS@]HOST:PORT` and `smtps://…` send through a server, each send
/// within `?timeout=` (30 s by default).
pub fn mailer_from_url(url: &str) -> Result<Arc<dyn Mailer>, MailConfigError> {
    if let Some(path) = url
        .strip_prefix("outbox://")
        .or_else(|| url.strip_prefix("outbox:"))
    {
        if path.is_empty() {
            return Err(MailConfigError::Invalid {
                url: url.to_owned(),
                message: "the outbox needs a directory".to_owned(),
            });
        }
        return Ok(Arc::new(OutboxMailer::new(path)));
    }
    if url.starts_with("smtp://") || url.starts_with("smtps://") {
        return Ok(Arc::new(SmtpMailer::from_url(url)?));
    }
    Err(MailConfigError::Unsupported {
        url: url.to_owned(),
    })
}

/// The `Subject` header, which people read as the sender wrote it.
///
/// The subject carries text from outside (an organization's name). A word of plain
/// ASCII would otherwise go out as it is, and a word that is itself an RFC 2047
/// encoded-word (`=?utf-8?b?…?=`) would be decoded by the reader's mail client into
/// whatever it hides: line breaks, a fake `Bcc:` line, markup. So a subject holding
/// anything but printable ASCII words, or anything that could open an encoded-word,
/// is encoded whole, and a client decodes it exactly once, back to the text written.
fn subject(text: &str) -> lettre::message::header::HeaderValue {
    use lettre::message::header::{Header as _, HeaderName, HeaderValue, Subject};
    let plain = !text.contains("=?") && text.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if plain {
        return Subject::from(text.to_owned()).display();
    }
    let name = HeaderName::new_from_ascii_str("Subject");
    let mut encoded = String::new();
    {
        let mut writer = email_encoding::headers::writer::EmailWriter::new(
            &mut encoded,
            "Subject: ".len(),
            0,
            false,
        );
        // Writing into a `String` cannot fail.
        let _ = email_encoding::headers::rfc2047::encode(text, &mut writer);
    }
    HeaderValue::dangerous_new_pre_encoded(name, text.to_owned(), encoded)
}

/// Builds the RFC 5322 form of a message.
pub(crate) fn to_lettre(message: &OutboundMessage) -> Result<lettre::Message, MailError> {
    use lettre::message::{Mailbox, header::ContentType};
    let mailbox = |address: &EmailAddress, name: &Option<String>| -> Result<Mailbox, MailError> {
        let parsed = address
            .as_str()
            .parse()
            .map_err(|e| MailError::permanent(format!("address {address}: {e}")))?;
        Ok(Mailbox::new(name.clone(), parsed))
    };
    lettre::Message::builder()
        .message_id(Some(format!("<{}>", message.message_id)))
        .from(mailbox(&message.from, &message.from_name)?)
        .to(mailbox(&message.to, &message.to_name)?)
        .raw_header(subject(&message.subject))
        .header(ContentType::TEXT_PLAIN)
        .body(message.text.clone())
        .map_err(|e| MailError::permanent(format!("cannot build the message: {e}")))
}
