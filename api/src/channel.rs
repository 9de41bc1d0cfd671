//! Client channels: TLS to citadel (the server must present `spiffe://TD/citadel/server`, the
//! client optionally presents its SVID) and gRPC over a Unix socket.
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use pki::identity::{SpiffeId, server_id};
use pki::tls::{PeerPolicy, SpiffeServerVerifier, SwappableCert, provider};
use pki::verify::BundleSource;
use pki::{Clock, TrustDomain};
use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid address {0:?}")]
    Address(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A rustls client config that accepts only citadel's server identity and, when `client_cert`
/// is given, presents that (swappable) SVID.
pub fn citadel_client_config(
    bundles: Arc<dyn BundleSource>,
    trust_domain: TrustDomain,
    client_cert: Option<Arc<SwappableCert>>,
    clock: Arc<dyn Clock>,
) -> Result<rustls::ClientConfig, ChannelError> {
    let expected: SpiffeId = server_id(&trust_domain);
    let verifier = SpiffeServerVerifier::new(bundles, PeerPolicy::exact(trust_domain, [expected]));
    let time = Arc::new(pki::time::RustlsTime(clock));
    let builder = rustls::ClientConfig::builder_with_details(provider(), time)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client_cert {
        Some(cert) => builder.with_client_cert_resolver(cert),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session would keep the identity of the handshake it resumes; a renewed SVID
    // must be what the next connection proves.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A lazily connecting gRPC channel to `addr` (`host:port`) over TLS. Each reconnect does a new
/// handshake, so a rotated client SVID is used from the next connection on.
pub fn tls_channel(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, ChannelError> {
    // Keepalives find a dead peer on an idle watch stream (a half-open connection would
    // otherwise hang until the next reconnect).
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ChannelError::Address(addr.into()))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(addr)
        .trim_matches(['[', ']'])
        .to_string();
    let server_name = ServerName::try_from(host).map_err(|_| ChannelError::Address(addr.into()))?;
    let target = addr.to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let config = config.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A lazily connecting gRPC channel over the Unix socket at `path`.
pub fn uds_channel(path: impl Into<PathBuf>) -> Result<Channel, ChannelError> {
    let path = Arc::new(path.into());
    // The URI is required by tonic but unused: the connector ignores it.
    let endpoint = Endpoint::from_static("http://localhost");
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path.as_path()).await?)) }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
