//! Wires the agent: node identity, citadel connection, manager and watches, the Unix socket
//! serving SDS and the Workload API, and the metrics endpoint.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use citadel_api::channel::citadel_client_config;
use citadel_api::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use pki::tls::{SwappableCert, certified_key};
use pki::verify::SharedBundles;
use pki::{Clock, RandomSource, TrustBundle};
use tokio::net::UnixListener;
use tonic::transport::Server;

use crate::attest::Attestor;
use crate::ca::GrpcCa;
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::manager::{BackoffPolicy, Manager, ManagerConfig};
use crate::metrics::Metrics;
use crate::node::{NodeStore, attest_with_token};
use crate::peer::attested_incoming;
use crate::sds_server::SdsServer;
use crate::sync::{follow_bundle, follow_entries};
use crate::workload_api::WorkloadApiServer;

fn initial_bundle(config: &AgentConfig, store: &NodeStore) -> Result<TrustBundle, AgentError> {
    if let Some(b) = store.load_bundle() {
        return Ok(b);
    }
    let path = config
        .trust_bundle
        .as_ref()
        .ok_or_else(|| AgentError::Config("--trust-bundle is required on first start".into()))?;
    let pem = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    TrustBundle::from_pem(config.trust_domain.clone(), &pem)
        .map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))
}

/// Binds the socket so every local user can connect: attestation, not file modes, decides.
/// The socket's directory must be one only the agent's user controls (created 0755 when
/// missing, refused when another user owns it or group/others may write it), so nobody can
/// swap the socket for their own.
fn bind_socket(path: &Path) -> Result<UnixListener, AgentError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    citadel_api::fs::owned_dir(dir, 0o755)
        .map_err(|e| AgentError::Config(format!("socket directory: {e}")))?;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(AgentError::Config(format!(
            "another agent is serving {}",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| AgentError::io(path, e))?;
    // Safe to set by path: nobody else can write the directory, so this is the socket we bound.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| AgentError::io(path, e))?;
    Ok(listener)
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    // First, so a hijackable socket directory stops the agent before it does anything else.
    let listener = bind_socket(&config.socket)?;
    let store = NodeStore::open(&config.data_dir, config.trust_domain.clone())?;
    let bundle = initial_bundle(&config, &store)?;
    let node_svid = match store.load_svid(clock.now()) {
        Some(svid) => {
            tracing::info!(id = %svid.spiffe_id(), "using the stored node SVID");
            svid
        }
        None => {
            let token = config.join_token.as_ref().ok_or_else(|| {
                AgentError::Config(format!(
                    "no valid node SVID in {} and no join token (--join-token-file, \
                     CITADEL_JOIN_TOKEN or --join-token)",
                    config.data_dir.display()
                ))
            })?;
            let svid = attest_with_token(
                &config.server,
                &bundle,
                &config.node_name,
                token.expose(),
                config.key_algorithm,
                clock.clone(),
                config.call_timeout,
            )
            .await?;
            store.save_svid(&svid)?;
            tracing::info!(id = %svid.spiffe_id(), "node attested with join token");
            svid
        }
    };
    store.save_bundle(&bundle)?;

    let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
    let node_cert = Arc::new(SwappableCert::new(
        certified_key(&node_svid).map_err(|e| AgentError::Internal(e.to_string()))?,
    ));
    let tls = citadel_client_config(
        bundles.clone(),
        config.trust_domain.clone(),
        Some(node_cert.clone()),
        clock.clone(),
    )
    .map_err(|e| AgentError::Internal(e.to_string()))?;
    let ca = GrpcCa::new(&config.server, Arc::new(tls), config.call_timeout)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let metrics = Arc::new(Metrics::new());
    let backoff = BackoffPolicy {
        base: Duration::from_secs(1).min(config.backoff_cap),
        cap: config.backoff_cap,
    };
    let manager = Manager::new(
        Arc::new(ca.clone()),
        bundle,
        bundles,
        clock.clone(),
        rng.clone(),
        ManagerConfig {
            key_algorithm: config.key_algorithm,
            backoff,
        },
        metrics.clone(),
    );

    let tasks = [
        tokio::spawn(
            manager
                .clone()
                .node_loop(node_svid, node_cert, store.clone()),
        ),
        tokio::spawn(follow_bundle(
            ca.clone(),
            manager.clone(),
            store,
            config.trust_domain.clone(),
            backoff,
            rng.clone(),
        )),
        tokio::spawn(follow_entries(ca.clone(), manager.clone(), backoff, rng)),
    ];

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let attestor = Attestor::default();
    let sds = SdsServer {
        manager: manager.clone(),
        attestor: attestor.clone(),
        versions: Arc::new(sds::VersionSource::new(&instance_id())),
        metrics: metrics.clone(),
        stopping: stop_rx.clone(),
    };
    let workload = WorkloadApiServer::new(
        manager.clone(),
        attestor.clone(),
        metrics.clone(),
        stop_rx.clone(),
        config.jwt_cache_size,
    );
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics)
        .await
        .map_err(|e| AgentError::Config(format!("--metrics {}: {e}", config.metrics)))?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| AgentError::Internal(e.to_string()))?;

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ads = crate::ads_proxy::AdsProxy {
        manager: manager.clone(),
        attestor: attestor.clone(),
        server: config.server.clone(),
        trust_domain: config.trust_domain.clone(),
        clock: clock.clone(),
    };
    let grpc = Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .add_service(SecretDiscoveryServiceServer::new(sds))
        .add_service(AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(64 << 20))
        .add_service(SpiffeWorkloadApiServer::new(workload))
        .serve_with_incoming_shutdown(
            attested_incoming(listener, attestor),
            stopped(stop_rx.clone()),
        );
    let monitoring = axum::serve(metrics_listener, metrics_router(manager.clone(), metrics))
        .with_graceful_shutdown(stopped(stop_rx));
    let endpoints = serde_json::json!({ "metrics": metrics_addr.to_string(), "socket": config.socket.display().to_string() });
    let _ = std::fs::write(
        config.data_dir.join("endpoints.json"),
        endpoints.to_string(),
    );
    tracing::info!(socket = %config.socket.display(), %metrics_addr, node = %config.node_name, "node agent serving");
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (grpc, monitoring) = tokio::join!(grpc, monitoring);
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&config.socket);
    grpc.map_err(|e| AgentError::Internal(e.to_string()))?;
    monitoring.map_err(|e| AgentError::Internal(e.to_string()))?;
    Ok(())
}

fn instance_id() -> Vec<u8> {
    let mut id = [0u8; 16];
    pki::SystemRandom.fill(&mut id);
    id.to_vec()
}

fn metrics_router(manager: Arc<Manager>, metrics: Arc<Metrics>) -> Router {
    let ready_manager = manager.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render(&manager.snapshot(), manager.clock().now());
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = ready_manager.snapshot().entries.is_some();
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "waiting for entries\n",
                        )
                    }
                }
            }),
        )
}
