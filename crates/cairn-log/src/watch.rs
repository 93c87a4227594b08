//! The newest committed position this process knows of, for waking subscribers.

use cairn_types::Position;

/// The newest committed position this process knows of. It is only a wake-up: readers
/// always read the log itself, so a missed update delays them and loses nothing.
#[derive(Debug)]
pub(crate) struct HeadWatch {
    pub(crate) sender: tokio::sync::watch::Sender<Position>,
    pub(crate) listening: std::sync::atomic::AtomicBool,
    /// Set by `Db::close`: the follower stops and gives its connection back.
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
}

impl HeadWatch {
    pub(crate) fn new() -> HeadWatch {
        HeadWatch {
            sender: tokio::sync::watch::channel(Position::START).0,
            listening: std::sync::atomic::AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
        }
    }

    pub(crate) fn advance(&self, position: Position) {
        self.sender.send_if_modified(|known| {
            if position > *known {
                *known = position;
                true
            } else {
                false
            }
        });
    }
}
