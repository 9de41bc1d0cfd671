//! Wires the CA together and runs it: the TLS gRPC API, the admin socket, monitoring, and the
//! background jobs that rotate citadel's own serving certificate and intermediate.
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use citadel_api::MAX_MESSAGE_BYTES;
use citadel_api::admin::admin_server::AdminServer;
use citadel_api::ca::node_ca_server::NodeCaServer;
use citadel_api::istio::istio_certificate_service_server::IstioCertificateServiceServer;
use pki::identity::server_id;
use pki::tls::{PeerPolicy, SpiffeClientVerifier, SwappableCert, certified_key, provider};
use pki::verify::BundleSource;
use pki::{Clock, KeyAlgorithm, PrivateKey, RandomSource, SvidParams, TrustBundle, TrustDomain};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::audit::{AuditEvent, AuditLog};
use crate::authority::{Authority, AuthorityError, CaSource};
use crate::grpc::admin::AdminApi;
use crate::grpc::istio::IstioApi;
use crate::grpc::node::NodeApi;
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError};
use crate::service::{CaService, TtlPolicy};
use crate::storage::private_dir;

/// Everything `citadel serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub trust_domain: TrustDomain,
    pub listen: SocketAddr,
    pub monitoring: SocketAddr,
    pub ca: CaSource,
    pub ttl: TtlPolicy,
    /// Extra DNS names or IPs for citadel's serving certificate.
    pub server_sans: Vec<String>,
    /// Lifetime of citadel's own serving certificate.
    pub server_cert_ttl: Duration,
    pub limits: Limits,
    /// The watched directory of Istio manifests served over ADS; `None` serves an empty mesh.
    pub config_dir: Option<PathBuf>,
}

/// Bounds on what one client can make citadel hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Concurrent HTTP/2 streams per connection (calls plus open watches).
    pub max_concurrent_streams: u32,
    /// TLS handshakes in progress at once on the gRPC port.
    pub max_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_handshakes: 128,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another citadel is already running with data directory {0}")]
    Locked(PathBuf),
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server certificate: {0}")]
    ServerCert(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Config(#[from] crate::config_store::StoreError),
}

/// Bytes that differ between citadel processes, so xDS versions are never reused.
fn rng_instance(rng: &dyn RandomSource) -> Vec<u8> {
    let mut bytes = vec![0u8; 16];
    rng.fill(&mut bytes);
    bytes
}

/// The admin socket path for a data directory.
pub fn admin_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// The file where a running citadel records the addresses it actually bound.
pub fn endpoints_file(data_dir: &Path) -> PathBuf {
    data_dir.join("endpoints.json")
}

/// Reads a bundle from the authority's watch for the TLS verifier.
#[derive(Debug)]
struct WatchedBundle(watch::Receiver<Arc<TrustBundle>>);

impl BundleSource for WatchedBundle {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        let b = self.0.borrow().clone();
        (b.trust_domain() == td).then_some(b)
    }
}

/// Runs citadel until `shutdown` resolves.
pub async fn serve(
    config: ServeConfig,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let data_dir = &config.data_dir;
    private_dir(data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let _lock = lock_data_dir(data_dir)?;

    let authority = Arc::new(Authority::load_or_create(
        data_dir,
        config.trust_domain.clone(),
        &config.ca,
        clock.now(),
        rng.as_ref(),
    )?);
    let registry = Arc::new(Registry::open(
        data_dir,
        config.trust_domain.clone(),
        clock.now(),
    )?);
    let audit_path = data_dir.join("audit.log");
    let audit = Arc::new(
        AuditLog::open(&audit_path).map_err(|source| ServeError::DataDir {
            path: audit_path,
            source,
        })?,
    );
    let metrics = Arc::new(Metrics::new());
    let service = CaService {
        authority: authority.clone(),
        registry,
        audit,
        metrics: metrics.clone(),
        clock: clock.clone(),
        rng,
        ttl: config.ttl.clone(),
    };

    // The mesh configuration: loaded (and refused if invalid) before anything listens.
    let (config_rx, _config_watch) = match &config.config_dir {
        Some(dir) => {
            let store = crate::config_store::DirStore::open(dir, metrics.clone())?;
            let guard = store.watch()?;
            tracing::info!(dir = %dir.display(), "serving the mesh configuration of this directory over ADS");
            (
                crate::config_store::ConfigStore::subscribe(store.as_ref()),
                Some(guard),
            )
        }
        None => (
            watch::channel(Arc::new(crate::config_store::Snapshot::default())).1,
            None,
        ),
    };
    let ads = crate::xds::Ads {
        service: Arc::new(service.clone()),
        config: crate::xds::prepare(config_rx),
        versions: Arc::new(sds::VersionSource::new(&rng_instance(&*service.rng))),
        latest: Default::default(),
        pushes: Arc::new(tokio::sync::Semaphore::new(crate::xds::PUSH_THROTTLE)),
        metrics: metrics.clone(),
    };

    let grpc_listener = bind_tcp(config.listen).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
    let monitoring_listener = bind_tcp(config.monitoring).await?;
    let monitoring_addr = monitoring_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            addr: config.monitoring.to_string(),
            source,
        })?;
    let admin_listener = bind_admin(&admin_socket(data_dir))?;

    let server_cert = Arc::new(SwappableCert::new(issue_server_cert(
        &service, &config, grpc_addr,
    )?));
    let tls = Arc::new(server_tls_config(
        &authority,
        server_cert.clone(),
        clock.clone(),
    )?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let node = NodeCaServer::new(NodeApi::new(service.clone(), stop_rx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let istio = IstioCertificateServiceServer::new(IstioApi {
        service: service.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let grpc = Server::builder()
        .max_concurrent_streams(config.limits.max_concurrent_streams)
        .add_service(node)
        .add_service(istio)
        .add_service(sds::grpc::AdsService::new(Arc::new(ads)))
        .serve_with_incoming_shutdown(
            crate::tls_server::tls_incoming(
                grpc_listener,
                tls,
                config.limits.max_handshakes,
                clock.clone(),
                metrics.clone(),
            ),
            stopped(stop_rx.clone()),
        );
    let admin = Server::builder()
        .add_service(AdminServer::new(AdminApi {
            service: service.clone(),
        }))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(admin_listener),
            stopped(stop_rx.clone()),
        );
    let monitoring = axum::serve(
        monitoring_listener,
        crate::monitoring::router(metrics, authority.clone(), clock.clone()),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));

    write_endpoints(data_dir, grpc_addr, monitoring_addr);
    tracing::info!(%grpc_addr, %monitoring_addr, trust_domain = %config.trust_domain, data_dir = %data_dir.display(), "citadel serving");

    let rotation = tokio::spawn(rotate_server_cert(
        service.clone(),
        config.clone(),
        grpc_addr,
        server_cert,
    ));
    let intermediate = tokio::spawn(renew_intermediate(service.clone()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let (grpc, admin, monitoring) = tokio::join!(grpc, admin, monitoring);
    rotation.abort();
    intermediate.abort();
    let _ = std::fs::remove_file(admin_socket(data_dir));
    grpc?;
    admin?;
    monitoring.map_err(|source| ServeError::Bind {
        addr: monitoring_addr.to_string(),
        source,
    })?;
    tracing::info!("citadel stopped");
    Ok(())
}

fn lock_data_dir(data_dir: &Path) -> Result<File, ServeError> {
    let path = data_dir.join("citadel.lock");
    let file = File::create(&path).map_err(|source| ServeError::DataDir {
        path: path.clone(),
        source,
    })?;
    file.try_lock()
        .map_err(|_| ServeError::Locked(data_dir.to_path_buf()))?;
    Ok(file)
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Binds the admin socket with mode 0600; the data directory itself is 0700, so there is no
/// window in which another user could connect.
fn bind_admin(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        addr: path.display().to_string(),
        source,
    };
    // We hold the data-dir lock, so a socket file left here belongs to a dead process.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

fn write_endpoints(data_dir: &Path, grpc: SocketAddr, monitoring: SocketAddr) {
    let json =
        serde_json::json!({ "grpc": grpc.to_string(), "monitoring": monitoring.to_string() });
    if let Err(e) = crate::storage::atomic_write(
        &endpoints_file(data_dir),
        json.to_string().as_bytes(),
        crate::storage::PUBLIC,
    ) {
        tracing::warn!(error = %e, "could not write endpoints.json");
    }
}

fn server_tls_config(
    authority: &Authority,
    cert: Arc<SwappableCert>,
    clock: Arc<dyn Clock>,
) -> Result<rustls::ServerConfig, ServeError> {
    let bundles: Arc<dyn BundleSource> = Arc::new(WatchedBundle(authority.subscribe_bundle()));
    // Client certificates are optional at the TLS layer: AttestNode runs before the caller has
    // one. Every other call checks the verified peer identity itself.
    let verifier = SpiffeClientVerifier::new(
        bundles,
        PeerPolicy::trust_domain(authority.trust_domain().clone()),
        true,
    );
    let mut config = rustls::ServerConfig::builder_with_details(
        provider(),
        Arc::new(pki::time::RustlsTime(clock)),
    )
    .with_protocol_versions(rustls::DEFAULT_VERSIONS)
    .map_err(|e| ServeError::ServerCert(e.to_string()))?
    .with_client_cert_verifier(Arc::new(verifier))
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: a resumed session carries the client certificate of the session it
    // resumes, so a client reconnecting with a renewed SVID would still be its old one (and be
    // cut off when that one expires). Every connection presents and proves its certificate.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Issues `spiffe://TD/citadel/server` with the listen address and configured names as SANs.
fn issue_server_cert(
    service: &CaService,
    config: &ServeConfig,
    bound: SocketAddr,
) -> Result<Arc<rustls::sign::CertifiedKey>, ServeError> {
    let err = |e: pki::Error| ServeError::ServerCert(e.to_string());
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(err)?;
    let mut params = SvidParams::ttl(config.server_cert_ttl);
    params.dns_names.push("localhost".into());
    let ips = if bound.ip().is_unspecified() {
        vec![IpAddr::from([127, 0, 0, 1])]
    } else {
        vec![bound.ip()]
    };
    params.ip_addresses.extend(ips);
    for san in &config.server_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => params.ip_addresses.push(ip),
            Err(_) => params.dns_names.push(san.clone()),
        }
    }
    let id = server_id(&config.trust_domain);
    let now = service.clock.now();
    let svid = service
        .authority
        .signing()
        .issue_svid_for_key(
            &id,
            &key.public_key_der(),
            false,
            &params,
            now,
            service.rng.as_ref(),
        )
        .map_err(err)?;
    let event = AuditEvent {
        outcome: "issued",
        method: "ServerCertificate",
        caller: "citadel".into(),
        identity: Some(id.to_string()),
        serial: Some(svid.serial().to_string()),
        expires_at: Some(
            svid.not_after()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        ),
        ..Default::default()
    };
    service.audit.record(now, &event);
    certified_key(&svid.with_key(key).map_err(err)?).map_err(err)
}

/// Re-issues the serving certificate at half its lifetime; on failure keeps the current one
/// and retries in a minute.
async fn rotate_server_cert(
    service: CaService,
    config: ServeConfig,
    bound: SocketAddr,
    cert: Arc<SwappableCert>,
) {
    loop {
        let not_after = cert
            .load()
            .end_entity_cert()
            .ok()
            .and_then(|c| pki::svid::CertInfo::parse(c).ok())
            .map(|i| i.not_after);
        let wait = not_after
            .and_then(|t| t.duration_since(service.clock.now()).ok())
            .map(|left| left / 2)
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        match issue_server_cert(&service, &config, bound) {
            Ok(next) => cert.store(next),
            Err(e) => {
                tracing::error!(error = %e, "could not rotate the serving certificate; keeping the current one");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

/// Checks hourly whether the self-signed intermediate is due for replacement.
async fn renew_intermediate(service: CaService) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = service
            .authority
            .renew_intermediate_if_due(service.clock.now(), service.rng.as_ref())
        {
            tracing::error!(error = %e, "could not renew the intermediate CA");
        }
    }
}
