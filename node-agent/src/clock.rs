//! A wall clock driven by tokio's clock, so paused-time tests move certificate time too.
use std::time::SystemTime;

use pki::Clock;

/// `SystemTime` at construction plus tokio's elapsed time since. In production tokio's clock
/// is the monotonic clock; under `tokio::time::pause` it advances only when the test says.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(base: SystemTime) -> Self {
        Self {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn system() -> Self {
        Self::new(SystemTime::now())
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

/// Sleeps until the clock reads `at` (returns at once if it already does).
pub async fn sleep_until(clock: &dyn Clock, at: SystemTime) {
    if let Ok(d) = at.duration_since(clock.now()) {
        tokio::time::sleep(d).await;
    }
}
