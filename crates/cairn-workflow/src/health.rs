//! Whether a process's engine is alive: its loops count themselves while they run and
//! note each time they go round, so a readiness check can tell a working engine from
//! one whose loop has ended or stopped turning.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// What the engine is doing, for a readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHealth {
    /// Whether an [`Engine::run`](crate::Engine::run) loop was ever started in this
    /// process. An engine used only for one-shot passes has no loop to watch.
    pub started: bool,
    /// How many `run` loops are running now.
    pub workers: usize,
    /// How long ago a loop last went round; a loop goes round at least once per poll
    /// interval, and whenever work comes or ends.
    pub last_turn: Option<Duration>,
    /// A loop that has not gone round for longer than this is stuck.
    pub stale_after: Duration,
    /// Runs being driven now.
    pub in_flight: usize,
    /// Panics caught in workflow code (steps, compensations, `decide`) since the engine
    /// was made. Each one was recorded as a failure of its run, not of the engine.
    pub panics: u64,
}

impl EngineHealth {
    /// True when a loop is running and went round recently.
    pub fn alive(&self) -> bool {
        self.workers > 0 && self.last_turn.is_some_and(|ago| ago <= self.stale_after)
    }

    /// Whether the process can be called ready as far as the engine goes: no loop was
    /// ever started here (nothing to watch), or one is alive. False once every loop
    /// has ended (panicked, aborted or shut down) or stopped turning.
    pub fn ready(&self) -> bool {
        !self.started || self.alive()
    }
}

/// The engine's own account of its loops.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    started: AtomicBool,
    workers: AtomicUsize,
    // A std mutex: held for a copy, never across an await.
    last_turn: Mutex<Option<Instant>>,
    in_flight: AtomicUsize,
    panics: AtomicU64,
}

impl Tracker {
    /// Counts a loop for as long as the returned guard lives.
    pub(crate) fn worker(&self) -> Worker<'_> {
        self.started.store(true, Ordering::SeqCst);
        self.workers.fetch_add(1, Ordering::SeqCst);
        self.turn(0);
        Worker(self)
    }

    /// Notes that a loop went round, driving `in_flight` runs.
    pub(crate) fn turn(&self, in_flight: usize) {
        self.in_flight.store(in_flight, Ordering::SeqCst);
        let mut last = self
            .last_turn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = Some(Instant::now());
    }

    /// Counts a panic caught in workflow code.
    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn snapshot(&self, stale_after: Duration) -> EngineHealth {
        let last_turn = *self
            .last_turn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let workers = self.workers.load(Ordering::SeqCst);
        EngineHealth {
            started: self.started.load(Ordering::SeqCst),
            workers,
            last_turn: last_turn.map(|at| at.elapsed()),
            stale_after,
            in_flight: if workers == 0 {
                0
            } else {
                self.in_flight.load(Ordering::SeqCst)
            },
            panics: self.panics.load(Ordering::SeqCst),
        }
    }
}

/// A running loop; uncounts it when dropped, however the loop ends.
pub(crate) struct Worker<'t>(&'t Tracker);

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(started: bool, workers: usize, last_turn: Option<u64>) -> EngineHealth {
        EngineHealth {
            started,
            workers,
            last_turn: last_turn.map(Duration::from_secs),
            stale_after: Duration::from_secs(30),
            in_flight: 0,
            panics: 0,
        }
    }

    #[test]
    fn an_engine_is_ready_when_its_loop_runs_and_turns() {
        // (started, workers, seconds since the last turn) → (alive, ready)
        let table = [
            ((false, 0, None), (false, true)),
            ((true, 1, Some(0)), (true, true)),
            ((true, 1, Some(30)), (true, true)),
            ((true, 1, Some(31)), (false, false)),
            ((true, 0, Some(0)), (false, false)),
            ((true, 2, Some(5)), (true, true)),
        ];
        for ((started, workers, last), expected) in table {
            let h = health(started, workers, last);
            assert_eq!((h.alive(), h.ready()), expected, "{h:?}");
        }
    }

    #[test]
    fn a_loop_counts_while_its_guard_lives() {
        let tracker = Tracker::default();
        let stale = Duration::from_secs(30);
        assert!(!tracker.snapshot(stale).started);
        {
            let _one = tracker.worker();
            let _two = tracker.worker();
            tracker.turn(3);
            let h = tracker.snapshot(stale);
            assert_eq!((h.workers, h.in_flight), (2, 3));
            assert!(h.alive());
        }
        let h = tracker.snapshot(stale);
        assert!(h.started && h.workers == 0 && !h.alive() && !h.ready());
        assert_eq!(h.in_flight, 0);
    }
}
