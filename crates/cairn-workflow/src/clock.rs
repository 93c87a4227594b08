//! The engine's clock, injected so that tests move time instead of sleeping.

use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// Where the engine gets "now" from, and how it waits for time to pass.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once `duration` has passed on this clock. The engine times a step's
    /// lease heartbeat with it.
    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        cairn_types::now_micros()
    }
}

/// A clock that moves only when told to; whatever sleeps on it wakes when it has been
/// moved far enough.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: watch::Sender::new(cairn_types::truncate_to_micros(start)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now += by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<'static, ()> {
        let mut now = self.now.subscribe();
        let until = Duration::from_std(duration)
            .ok()
            .and_then(|duration| now.borrow().checked_add_signed(duration));
        Box::pin(async move {
            let Some(until) = until else {
                // Further than the clock can count: never.
                return std::future::pending().await;
            };
            if now.wait_for(|now| *now >= until).await.is_err() {
                // The clock is gone, so it will never move again.
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_its_sleepers_when_moved_far_enough() {
        use futures::FutureExt as _;
        let clock = ManualClock::new(Utc::now());
        let mut nap = clock.sleep(std::time::Duration::from_secs(10));
        assert!((&mut nap).now_or_never().is_none());
        clock.advance(Duration::seconds(9));
        assert!((&mut nap).now_or_never().is_none(), "not far enough yet");
        clock.advance(Duration::seconds(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), nap)
            .await
            .expect("the sleeper wakes once the clock has moved ten seconds");

        let mut forever = clock.sleep(std::time::Duration::MAX);
        clock.advance(Duration::days(365));
        assert!((&mut forever).now_or_never().is_none());
    }
}
