//! Injected clocks: logic takes a `SystemTime`, binaries pass `SystemClock`, tests a `ManualClock`.
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The source of wall-clock time for certificate validity decisions.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> SystemTime;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().expect("clock lock poisoned");
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *self.0.lock().expect("clock lock poisoned") = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock lock poisoned")
    }
}

/// Adapts a [`Clock`] to rustls so TLS verification uses the same notion of time.
#[derive(Debug)]
pub struct RustlsTime(pub Arc<dyn Clock>);

impl rustls::time_provider::TimeProvider for RustlsTime {
    fn current_time(&self) -> Option<rustls_pki_types::UnixTime> {
        Some(unix_time(self.0.now()))
    }
}

/// Converts to the `UnixTime` that rustls and webpki take.
pub fn unix_time(t: SystemTime) -> rustls_pki_types::UnixTime {
    rustls_pki_types::UnixTime::since_unix_epoch(
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
    )
}

/// Converts to the `OffsetDateTime` that rcgen takes (second precision, as X.509 encodes).
pub fn offset_date_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).expect("timestamp in range")
}

/// Converts an X.509 time back to `SystemTime`.
pub fn system_time(t: time::OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}
