//! Keeps a timer of the runtime due soon while calls come, so that the
//! timers each call sets (when to stream its answer, its deadline) are never
//! the runtime's earliest.
//!
//! tokio wakes its I/O driver whenever a new timer is due before every timer
//! it already has: a write to an eventfd, a spurious return from
//! `epoll_wait`, and with several workers a thread woken on another core.
//! Each relayed call sets a timer a quarter second out, which between calls
//! is the earliest there is: one such wake-up per call. While calls come,
//! [`Pacer`] keeps one timer due within [`PACE`], so theirs never are; after
//! [`QUIET`] without a call it stops, and an idle service wakes for nothing.
//! (A timer due sooner than [`PACE`], a `request_timeout` under 200 ms or a
//! moment's wait for a client's answers, still wakes the driver, as it would
//! without the pacer; and at fewer than five calls a second the pacer's own
//! ticks are more wake-ups than it saves, few either way.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the pacer's timer fires while calls come: sooner than any
/// timer a call sets (`api::plain_json::MAX_WAIT`, 250 ms, is the shortest).
pub const PACE: Duration = Duration::from_millis(200);

/// How long the pacer runs on after the last call.
pub const QUIET: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Pacer {
    /// Its task runs.
    running: AtomicBool,
    /// A call came since the task last looked: it stops after [`QUIET`]
    /// without one.
    busy: AtomicBool,
}

impl Pacer {
    /// A call is about to set its timers: the pacer runs (started in the
    /// current runtime if it was not running).
    pub fn pace(self: &Arc<Self>) {
        // Read first: the common case (busy and running) writes nothing.
        if !self.busy.load(Ordering::Relaxed) {
            self.busy.store(true, Ordering::Relaxed);
        }
        if self.running.load(Ordering::Acquire) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let pacer = Arc::downgrade(self);
        let stopped = Stopped(pacer.clone());
        tokio::spawn(async move {
            // However the task ends (its runtime may shut down first), it
            // is not running any more.
            let _stopped = stopped;
            let quiet_ticks = QUIET.as_millis() / PACE.as_millis();
            let mut quiet = 0;
            loop {
                tokio::time::sleep(PACE).await;
                let Some(pacer) = pacer.upgrade() else {
                    return;
                };
                quiet = if pacer.busy.swap(false, Ordering::Relaxed) {
                    0
                } else {
                    quiet + 1
                };
                if quiet >= quiet_ticks {
                    // A call that comes between the load and the end of the
                    // task starts it again with the next one (its own timer
                    // wakes the driver once, as without a pacer).
                    return;
                }
            }
        });
    }

    /// Its task runs (for tests).
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

/// Marks the pacer stopped when its task ends.
struct Stopped(std::sync::Weak<Pacer>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(pacer) = self.0.upgrade() {
            pacer.running.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_runs_while_calls_come_and_stops_when_they_do_not() {
        let pacer = Arc::new(Pacer::default());
        assert!(!pacer.running());
        pacer.pace();
        assert!(pacer.running());
        for _ in 0..3 {
            tokio::time::sleep(QUIET / 2).await;
            assert!(pacer.running(), "calls keep it running");
            pacer.pace();
        }
        tokio::time::sleep(QUIET - PACE).await;
        assert!(pacer.running(), "running on for a while after the last call");
        tokio::time::sleep(PACE * 3).await;
        assert!(!pacer.running(), "quiet: it stopped");
        pacer.pace();
        assert!(pacer.running(), "a call starts it again");
    }

    #[test]
    fn a_runtime_that_ends_leaves_it_stopped() {
        let pacer = Arc::new(Pacer::default());
        {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async { pacer.pace() });
            assert!(pacer.running());
        }
        assert!(!pacer.running(), "its task was dropped with its runtime");
    }
}
