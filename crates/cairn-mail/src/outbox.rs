//! The embedded default: each message is a `.eml` file in a directory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Delivery, MailError, Mailer, OutboundMessage, to_lettre};

/// Writes each message as an RFC 5322 `.eml` file named after its Message-ID.
///
/// Delivery is exactly once: the file appears atomically (written aside as
/// `.sending-…`, then renamed), and [`Mailer::delivered`] finds it after a crash. A
/// process killed mid-write leaves only a hidden `.sending-…` file, which the next
/// process sweeps away once it is a minute old.
#[derive(Debug, Clone)]
pub struct OutboxMailer {
    dir: PathBuf,
    swept: Arc<AtomicBool>,
}

/// A message being written is named `.sending-…` until it is complete. One left
/// behind by a process that was killed mid-write is removed once it is this old.
const STALE_AFTER: Duration = Duration::from_secs(60);

fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let stale = entry.file_name().to_string_lossy().starts_with(".sending-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl OutboxMailer {
    /// An outbox in `dir`, created when the first message is written.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_owned(),
            swept: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a message id is written to.
    pub fn path_for(&self, message_id: &str) -> PathBuf {
        let name: String = message_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{name}.eml"))
    }
}

#[async_trait]
impl Mailer for OutboxMailer {
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, MailError> {
        let bytes = to_lettre(message)?.formatted();
        let dir = self.dir.clone();
        let path = self.path_for(&message.message_id);
        let written = path.clone();
        let sweep = !self.swept.swap(true, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            if sweep {
                sweep_stale(&dir);
            }
            let mut file = tempfile::Builder::new()
                .prefix(".sending-")
                .tempfile_in(&dir)?;
            file.write_all(&bytes)?;
            file.as_file().sync_all()?;
            file.persist(&written).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(|e| MailError::transient(format!("the outbox writer stopped: {e}")))?
        .map_err(|e| {
            MailError::transient(format!(
                "cannot write to the outbox {}: {e}",
                self.dir.display()
            ))
        })?;
        Ok(Delivery {
            message_id: message.message_id.clone(),
            transport: "outbox",
            detail: path.display().to_string(),
        })
    }

    async fn delivered(&self, message_id: &str) -> Result<Option<Delivery>, MailError> {
        let path = self.path_for(message_id);
        Ok(tokio::fs::try_exists(&path)
            .await
            .unwrap_or(false)
            .then(|| Delivery {
                message_id: message_id.to_owned(),
                transport: "outbox",
                detail: path.display().to_string(),
            }))
    }

    async fn forget(&self, message_ids: &[String]) -> Result<usize, MailError> {
        let mut removed = 0;
        for message_id in message_ids {
            match std::fs::remove_file(self.path_for(message_id)) {
                Ok(()) => removed += 1,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(MailError::transient(format!(
                        "cannot remove {}: {error}",
                        self.path_for(message_id).display()
                    )));
                }
            }
        }
        Ok(removed)
    }

    fn describe(&self) -> String {
        format!("outbox:{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmailAddress;

    fn message(id: &str) -> OutboundMessage {
        OutboundMessage {
            message_id: id.to_owned(),
            from: EmailAddress::parse("noreply@example.co.uk").unwrap(),
            from_name: Some("Sunrise Care".into()),
            to: EmailAddress::parse("ada@example.com").unwrap(),
            to_name: Some("Ada Lovelace".into()),
            subject: "You're invited".into(),
            text: "Hello Ada,\n\nJoin us.\n".into(),
        }
    }

    #[tokio::test]
    async fn writes_a_standard_message_once_and_finds_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = OutboxMailer::new(dir.path().join("outbox"));
        assert_eq!(outbox.delivered("inv-1@example.co.uk").await.unwrap(), None);
        let delivery = outbox.send(&message("inv-1@example.co.uk")).await.unwrap();
        let text = std::fs::read_to_string(&delivery.detail).unwrap();
        for header in [
            "Message-ID: <inv-1@example.co.uk>",
            "From: \"Sunrise Care\" <noreply@example.co.uk>",
            "To: \"Ada Lovelace\" <ada@example.com>",
            "Subject: You're invited",
            "Date: ",
        ] {
            assert!(text.contains(header), "missing {header:?} in:\n{text}");
        }
        assert!(
            text.contains("\r\n\r\nHello Ada,"),
            "headers end with a blank line:\n{text}"
        );
        assert!(
            outbox
                .delivered("inv-1@example.co.uk")
                .await
                .unwrap()
                .is_some()
        );
        let names: Vec<_> = std::fs::read_dir(outbox.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "no temporary file is left behind: {names:?}"
        );
    }
}
