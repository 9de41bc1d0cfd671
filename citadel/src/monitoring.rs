//! The monitoring endpoint: `/metrics` (Prometheus/OpenMetrics text), `/healthz` and `/ready`.
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use pki::Clock;

use crate::authority::Authority;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
struct MonitoringState {
    metrics: Arc<Metrics>,
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
}

/// The monitoring router.
pub fn router(metrics: Arc<Metrics>, authority: Arc<Authority>, clock: Arc<dyn Clock>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(|| async { "ready\n" }))
        .with_state(MonitoringState {
            metrics,
            authority,
            clock,
        })
}

async fn render_metrics(State(s): State<MonitoringState>) -> impl IntoResponse {
    let (root, intermediate) = s.authority.expiries();
    let body = s.metrics.render(s.clock.now(), root, intermediate);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
