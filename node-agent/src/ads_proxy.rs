//! ADS on the agent socket, forwarded to citadel as istio-agent does: a sidecar's stream is
//! attested like any caller, and relayed over a fresh mTLS connection that presents the
//! sidecar's own SVID (`default`, whose key the agent holds), so citadel authorizes the proxy by
//! its identity. A sidecar's bootstrap then needs only the agent's Unix socket, from any network
//! namespace on the node.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use pki::tls::{SwappableCert, certified_key};
use pki::verify::SharedBundles;
use pki::{Clock, TrustBundle, X509Svid};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::attest::{Attestor, Workload};
use crate::manager::Manager;
use crate::peer::{attest_caller, describe, still_same};
use crate::state::{SlotWatch, WorkloadSvid};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How long a sidecar's stream waits for its first SVID.
const SVID_WAIT: Duration = Duration::from_secs(15);

/// The forwarding ADS service.
#[derive(Clone)]
pub struct AdsProxy {
    pub manager: Arc<Manager>,
    pub attestor: Attestor,
    /// citadel's address.
    pub server: String,
    pub trust_domain: pki::TrustDomain,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AdsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsProxy")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

fn to_x509(w: &WorkloadSvid) -> Result<X509Svid, Status> {
    let chain = pki::pem::parse_certificates(&w.chain_pem())
        .map_err(|e| Status::internal(e.to_string()))?;
    let key =
        pki::PrivateKey::from_pem(&w.key_pem()).map_err(|e| Status::internal(e.to_string()))?;
    X509Svid::from_chain(chain)
        .and_then(|s| s.with_key(key))
        .map_err(|e| Status::internal(e.to_string()))
}

impl AdsProxy {
    /// The caller's own SVID (its `default`), waiting a bounded time for the first mint.
    async fn default_svid(&self, workload: &Workload) -> Result<Arc<WorkloadSvid>, Status> {
        let mut rx = self.manager.subscribe();
        let mut slots = SlotWatch::default();
        let wait = async {
            loop {
                let state = rx.borrow_and_update().clone();
                if state.entries.is_some() {
                    let Some(id) = state.first_entitled(&workload.selectors).cloned() else {
                        return Err(Status::permission_denied(format!(
                            "no identity issued to this workload ({})",
                            describe(workload)
                        )));
                    };
                    slots.watch(&state, [&id]);
                    if let Some(svid) = state.svid(&id) {
                        return Ok(svid);
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return Err(Status::unavailable("agent is shutting down"));
                    },
                    () = slots.changed() => {}
                }
            }
        };
        tokio::time::timeout(SVID_WAIT, wait)
            .await
            .map_err(|_| Status::unavailable("the workload's SVID is not issued yet; retry"))?
    }

    /// A connection to citadel that presents `svid`.
    fn upstream(
        &self,
        svid: &WorkloadSvid,
        bundle: &TrustBundle,
    ) -> Result<AggregatedDiscoveryServiceClient<Channel>, Status> {
        let x509 = to_x509(svid)?;
        let cert = Arc::new(SwappableCert::new(
            certified_key(&x509).map_err(|e| Status::internal(e.to_string()))?,
        ));
        let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
        let cfg = citadel_api::channel::citadel_client_config(
            bundles,
            self.trust_domain.clone(),
            Some(cert),
            self.clock.clone(),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let channel = citadel_api::channel::tls_channel(&self.server, Arc::new(cfg))
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Attests the caller and opens its upstream.
    async fn open<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Workload, AggregatedDiscoveryServiceClient<Channel>), Status> {
        let workload = attest_caller(&self.attestor, req)?;
        let svid = self.default_svid(&workload).await?;
        let bundle = self.manager.snapshot().bundle.clone();
        tracing::debug!(workload = %describe(&workload), id = %svid.id(), "forwarding ADS to citadel");
        Ok((workload, self.upstream(&svid, &bundle)?))
    }
}

/// The sidecar's requests, until its stream ends or its process is no longer the one attested.
fn relayed<T: Send + 'static>(
    inbound: Streaming<T>,
    attestor: Attestor,
    workload: Workload,
) -> impl Stream<Item = T> + Send + 'static {
    inbound
        .take_while(move |r| {
            let ok = r.is_ok() && still_same(&attestor, &workload).is_ok();
            std::future::ready(ok)
        })
        .filter_map(|r| std::future::ready(r.ok()))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsProxy {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (workload, mut upstream) = self.open(&request).await?;
        let requests = relayed(request.into_inner(), self.attestor.clone(), workload);
        let responses = upstream
            .stream_aggregated_resources(requests)
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(responses)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (workload, mut upstream) = self.open(&request).await?;
        let requests = relayed(request.into_inner(), self.attestor.clone(), workload);
        let responses = upstream
            .delta_aggregated_resources(requests)
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(responses)))
    }
}
