//! The agent's Prometheus metrics.
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::AgentState;

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub rotations: Counter,
    pub rotation_failures: Counter,
    pub sds_streams: Gauge,
    pub workload_api_streams: Gauge,
    svids_held: Gauge,
    soonest_expiry: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("citadel_agent");
        let rotations = Counter::default();
        let rotation_failures = Counter::default();
        let sds_streams = Gauge::default();
        let workload_api_streams = Gauge::default();
        let svids_held = Gauge::default();
        let soonest_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "svid_rotations",
            "SVIDs obtained from citadel (first issue and rotations)",
            rotations.clone(),
        );
        registry.register(
            "svid_rotation_failures",
            "Failed attempts to obtain an SVID from citadel",
            rotation_failures.clone(),
        );
        registry.register(
            "sds_streams",
            "Connected Envoy SDS streams",
            sds_streams.clone(),
        );
        registry.register(
            "workload_api_streams",
            "Connected SPIFFE Workload API streams",
            workload_api_streams.clone(),
        );
        registry.register(
            "svids_held",
            "Workload SVIDs currently held",
            svids_held.clone(),
        );
        registry.register(
            "svid_soonest_expiry_seconds",
            "Seconds until the soonest-expiring held SVID expires",
            soonest_expiry.clone(),
        );
        Self {
            registry,
            rotations,
            rotation_failures,
            sds_streams,
            workload_api_streams,
            svids_held,
            soonest_expiry,
        }
    }

    /// Renders the exposition text, refreshing the gauges derived from `state`.
    pub fn render(&self, state: &AgentState, now: SystemTime) -> String {
        let held = state.held();
        self.svids_held.set(held.len() as i64);
        let soonest = held.iter().map(|s| s.not_after()).min();
        let secs = soonest.map(|t| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        });
        self.soonest_expiry.set(secs.unwrap_or(0.0));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Increments a gauge for the life of a stream.
#[derive(Debug)]
pub struct StreamGuard(Gauge);

impl StreamGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
