//! The agent's view of citadel's signing API, as a trait so rotation logic can be tested
//! against a fake CA under paused time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::ca::{CsrRequest, JwtSvidRequest};
use pki::identity::SpiffeId;
use rustls_pki_types::CertificateDer;
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
}

/// citadel over gRPC/mTLS with the node SVID.
#[derive(Debug, Clone)]
pub struct GrpcCa {
    client: NodeCaClient<Channel>,
}

impl GrpcCa {
    pub fn new(channel: Channel) -> Self {
        Self {
            client: NodeCaClient::new(channel),
        }
    }

    pub fn client(&self) -> NodeCaClient<Channel> {
        self.client.clone()
    }
}

fn chain(raw: Vec<Vec<u8>>) -> Vec<CertificateDer<'static>> {
    raw.into_iter().map(CertificateDer::from).collect()
}

#[tonic::async_trait]
impl Ca for GrpcCa {
    async fn mint_x509(&self, csr: Vec<u8>) -> Result<Vec<CertificateDer<'static>>, tonic::Status> {
        let resp = self
            .client
            .clone()
            .mint_x509_svid(CsrRequest {
                csr,
                ttl_seconds: 0,
            })
            .await?;
        Ok(chain(resp.into_inner().cert_chain))
    }

    async fn renew_node(
        &self,
        csr: Vec<u8>,
    ) -> Result<Vec<CertificateDer<'static>>, tonic::Status> {
        let resp = self
            .client
            .clone()
            .renew_svid(CsrRequest {
                csr,
                ttl_seconds: 0,
            })
            .await?;
        Ok(chain(resp.into_inner().cert_chain))
    }

    async fn mint_jwt(
        &self,
        id: &SpiffeId,
        audience: &[String],
    ) -> Result<(String, SystemTime), tonic::Status> {
        let req = JwtSvidRequest {
            spiffe_id: id.to_string(),
            audience: audience.to_vec(),
            ttl_seconds: 0,
        };
        let resp = self.client.clone().mint_jwt_svid(req).await?.into_inner();
        let exp = UNIX_EPOCH + Duration::from_secs(resp.expires_at_unix.max(0) as u64);
        Ok((resp.token, exp))
    }
}
