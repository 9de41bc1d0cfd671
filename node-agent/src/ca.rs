//! The agent's view of citadel's signing API, as a trait so rotation logic can be tested
//! against a fake CA under paused time.
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::ca::{CsrRequest, JwtSvidRequest};
use citadel_api::channel::tls_channel;
use pki::identity::SpiffeId;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tonic::transport::Channel;

/// What the agent asks of citadel.
#[tonic::async_trait]
pub trait Ca: Send + Sync + std::fmt::Debug + 'static {
    /// A workload SVID for the identity in the CSR.
    async fn mint_x509(&self, csr: Vec<u8>) -> Result<Vec<CertificateDer<'static>>, tonic::Status>;
    /// A new node SVID.
    async fn renew_node(&self, csr: Vec<u8>)
    -> Result<Vec<CertificateDer<'static>>, tonic::Status>;
    /// A JWT-SVID and its expiry.
    async fn mint_jwt(
        &self,
        id: &SpiffeId,
        audience: &[String],
    ) -> Result<(String, SystemTime), tonic::Status>;
    /// The node SVID changed: later calls must present the new one.
    fn node_svid_renewed(&self) {}
}

/// citadel over gRPC/mTLS with the node SVID. Every call has a deadline, and a renewed node
/// SVID moves every later call (and the watch streams) to a fresh connection, because a TLS
/// connection keeps the client certificate of its handshake.
#[derive(Debug, Clone)]
pub struct GrpcCa {
    server: String,
    tls: Arc<rustls::ClientConfig>,
    channel: Arc<watch::Sender<Channel>>,
    timeout: Duration,
}

/// Why a connection to citadel could not be set up.
pub type ChannelError = citadel_api::channel::ChannelError;

impl GrpcCa {
    /// `tls` presents the node SVID through a swappable resolver, so a new connection always
    /// presents the current one.
    pub fn new(
        server: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ChannelError> {
        let channel = tls_channel(server, tls.clone())?;
        Ok(Self {
            server: server.to_string(),
            tls,
            channel: Arc::new(watch::Sender::new(channel)),
            timeout,
        })
    }

    /// A client on the current connection.
    pub fn client(&self) -> NodeCaClient<Channel> {
        NodeCaClient::new(self.channel.borrow().clone())
    }

    /// Wakes when calls move to a new connection (watch streams re-open on it).
    pub fn subscribe(&self) -> watch::Receiver<Channel> {
        self.channel.subscribe()
    }

    /// The deadline of every unary call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `call` (a unary call, or the opening of a stream), bounded by the call deadline.
    pub async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "citadel did not answer within {:?}",
                    self.timeout
                )))
            })
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.deadline(call).await.map(tonic::Response::into_inner)
    }
}

/// A request carrying this agent's version, which `citadel node list` shows.
pub fn request<T>(body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(
        citadel_api::AGENT_VERSION_HEADER,
        tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    req
}

fn chain(raw: Vec<Vec<u8>>) -> Vec<CertificateDer<'static>> {
    raw.into_iter().map(CertificateDer::from).collect()
}

#[tonic::async_trait]
impl Ca for GrpcCa {
    async fn mint_x509(&self, csr: Vec<u8>) -> Result<Vec<CertificateDer<'static>>, tonic::Status> {
        let mut client = self.client();
        let req = request(CsrRequest {
            csr,
            ttl_seconds: 0,
        });
        Ok(chain(
            self.call(client.mint_x509_svid(req)).await?.cert_chain,
        ))
    }

    async fn renew_node(
        &self,
        csr: Vec<u8>,
    ) -> Result<Vec<CertificateDer<'static>>, tonic::Status> {
        let mut client = self.client();
        let req = request(CsrRequest {
            csr,
            ttl_seconds: 0,
        });
        Ok(chain(self.call(client.renew_svid(req)).await?.cert_chain))
    }

    async fn mint_jwt(
        &self,
        id: &SpiffeId,
        audience: &[String],
    ) -> Result<(String, SystemTime), tonic::Status> {
        let mut client = self.client();
        let req = request(JwtSvidRequest {
            spiffe_id: id.to_string(),
            audience: audience.to_vec(),
            ttl_seconds: 0,
        });
        let resp = self.call(client.mint_jwt_svid(req)).await?;
        let exp = UNIX_EPOCH + Duration::from_secs(resp.expires_at_unix.max(0) as u64);
        Ok((resp.token, exp))
    }

    fn node_svid_renewed(&self) {
        match tls_channel(&self.server, self.tls.clone()) {
            Ok(channel) => {
                self.channel.send_replace(channel);
            }
            Err(e) => tracing::error!(error = %e, "cannot open a new connection to citadel"),
        }
    }
}
