//! Prometheus metrics for the CA, rendered in the text exposition format.
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub method: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub type_url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Every metric citadel exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub issued: Family<MethodLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
    pub sign_seconds: Histogram,
    root_expiry: Gauge<f64, AtomicU64>,
    intermediate_expiry: Gauge<f64, AtomicU64>,
    /// Open watch streams, by kind (`entries`, `bundle`).
    pub watch_streams: Family<StreamLabels, Gauge>,
    /// TLS handshakes in progress on the gRPC port (bounded by --max-concurrent-handshakes).
    pub tls_handshakes: Gauge,
    /// Connections closed because their client certificate expired.
    pub expired_connections: Counter,
    /// Config directory loads, by outcome (`applied`, `rejected`).
    pub config_loads: Family<OutcomeLabels, Counter>,
    /// Objects in the configuration in force.
    pub config_objects: Gauge,
    /// Errors in the last rejected load (0 when the last load was applied).
    pub config_errors: Gauge,
    /// Configuration proxies rejected (NACKs), by resource type.
    pub xds_rejects: Family<TypeLabels, Counter>,
    /// Open ADS streams.
    pub xds_streams: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("citadel");
        let issued = Family::<MethodLabels, Counter>::default();
        let refused = Family::<RefusalLabels, Counter>::default();
        // 50 µs .. ~1.6 s
        let sign_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        let root_expiry = Gauge::<f64, AtomicU64>::default();
        let intermediate_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "svids_issued",
            "X.509-SVIDs issued, by API method",
            issued.clone(),
        );
        registry.register(
            "svid_requests_refused",
            "Signing requests refused, by API method and reason",
            refused.clone(),
        );
        registry.register(
            "sign_duration_seconds",
            "Time to authorize and sign one SVID",
            sign_seconds.clone(),
        );
        registry.register(
            "root_cert_expiry_seconds",
            "Seconds until the root CA certificate expires",
            root_expiry.clone(),
        );
        registry.register(
            "intermediate_cert_expiry_seconds",
            "Seconds until the signing (intermediate) CA certificate expires",
            intermediate_expiry.clone(),
        );
        let watch_streams = Family::<StreamLabels, Gauge>::default();
        let tls_handshakes = Gauge::default();
        let expired_connections = Counter::default();
        registry.register(
            "watch_streams",
            "Open WatchEntries and WatchTrustBundle streams",
            watch_streams.clone(),
        );
        registry.register(
            "tls_handshakes_in_progress",
            "TLS handshakes in progress on the gRPC port",
            tls_handshakes.clone(),
        );
        registry.register(
            "connections_expired",
            "Connections closed when their client certificate expired",
            expired_connections.clone(),
        );
        let config_loads = Family::<OutcomeLabels, Counter>::default();
        let config_objects = Gauge::default();
        let config_errors = Gauge::default();
        registry.register(
            "config_loads",
            "Loads of the config directory, by outcome (applied, rejected)",
            config_loads.clone(),
        );
        registry.register(
            "config_objects",
            "Objects in the configuration in force",
            config_objects.clone(),
        );
        registry.register(
            "config_errors",
            "Errors in the last rejected config load (0 once a load is applied)",
            config_errors.clone(),
        );
        let xds_rejects = Family::<TypeLabels, Counter>::default();
        let xds_streams = Gauge::default();
        registry.register(
            "xds_rejects",
            "Configuration rejected by proxies (NACKs), by resource type",
            xds_rejects.clone(),
        );
        registry.register("xds_streams", "Open ADS streams", xds_streams.clone());
        Self {
            registry,
            xds_rejects,
            xds_streams,
            config_loads,
            config_objects,
            config_errors,
            watch_streams,
            tls_handshakes,
            expired_connections,
            issued,
            refused,
            sign_seconds,
            root_expiry,
            intermediate_expiry,
        }
    }

    pub fn issued(&self, method: &str) {
        self.issued
            .get_or_create(&MethodLabels {
                method: method.into(),
            })
            .inc();
    }

    pub fn refused(&self, method: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabels {
                method: method.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Renders the exposition text, refreshing the expiry gauges against `now` first.
    pub fn render(
        &self,
        now: SystemTime,
        root_not_after: SystemTime,
        intermediate_not_after: SystemTime,
    ) -> String {
        let secs = |t: SystemTime| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        self.root_expiry.set(secs(root_not_after));
        self.intermediate_expiry.set(secs(intermediate_not_after));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Counts an open stream for as long as it lives.
#[derive(Debug)]
pub struct StreamGuard(Gauge);

impl StreamGuard {
    pub fn new(metrics: &Metrics, kind: &'static str) -> Self {
        let gauge = metrics
            .watch_streams
            .get_or_create(&StreamLabels { kind })
            .clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
