//! What a transaction's statements did, for the log writer.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a transaction's statements did, for the log writer: whether a unit of work
/// wrote anything (or only read), and whether any statement failed.
#[derive(Debug, Default)]
pub(crate) struct Track {
    pub(crate) writes: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Failures undone by rolling back to a savepoint opened before them.
    pub(crate) cleared: AtomicU64,
}

impl Track {
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn poisoned(&self) -> bool {
        self.failures() > self.cleared.load(Ordering::Relaxed)
    }

    /// Every failure so far is undone.
    pub(crate) fn clear(&self) {
        self.cleared.store(self.failures(), Ordering::Relaxed);
    }
}
