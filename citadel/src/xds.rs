//! The ADS server: each sidecar's stream is authenticated by its SVID, keyed by its xDS node,
//! and pushed the resources translation gives it for the configuration in force, in
//! make-before-break order, only what changed, each resource encoded once per stream version.
//! A new configuration is translated once (the service registry is shared by every stream); a
//! NACK is logged with the proxy and the error, counted, and never answered with the same
//! resource again.
use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sds::grpc::{AdsHandler, ResponseStream};
use sds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use sds::wire::{WireDeltaDiscoveryResponse, WireDiscoveryResponse};
use sds::{AdsStream, DeltaAdsStream, NamedResource, Publication, Resources, VersionSource};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config_store::Snapshot;
use crate::discovery::proxy::Proxy;
use crate::discovery::services::Registry;
use crate::discovery::{ProxyClass, ProxyResources, class_of, generate_with};
use crate::metrics::{Metrics, TypeLabels};
use crate::service::CaService;

/// A configuration ready to translate: the snapshot, its service registry (built once), and the
/// resources of each proxy class, translated and encoded once and shared by its streams.
#[derive(Debug, Default)]
pub struct Prepared {
    pub snapshot: Arc<Snapshot>,
    pub registry: Registry,
    classes: std::sync::Mutex<HashMap<ProxyClass, Arc<tokio::sync::OnceCell<Arc<Typed>>>>>,
}

impl Prepared {
    fn new(snapshot: Arc<Snapshot>) -> Self {
        Self {
            registry: Registry::build(&snapshot.config),
            snapshot,
            classes: Default::default(),
        }
    }
}

/// Keeps a [`Prepared`] for every snapshot the store publishes.
pub fn prepare(mut store: watch::Receiver<Arc<Snapshot>>) -> watch::Receiver<Arc<Prepared>> {
    let first = store.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(Prepared::new(first)));
    tokio::spawn(async move {
        while store.changed().await.is_ok() {
            let snapshot = store.borrow_and_update().clone();
            let started = std::time::Instant::now();
            let prepared = Arc::new(Prepared::new(snapshot));
            tracing::debug!(
                revision = prepared.snapshot.revision,
                registry_ms = started.elapsed().as_secs_f64() * 1e3,
                "service registry built"
            );
            if tx.send(prepared).is_err() {
                return;
            }
        }
    });
    rx
}

/// One proxy class's resources by type URL, each encoded once and versioned by its content,
/// published as the successors of the class's previous ones (so streams apply only what
/// changed, and a type that did not change is the same publication and costs nothing).
pub type Typed = HashMap<&'static str, Arc<Publication>>;

fn encode(r: ProxyResources, versions: &VersionSource) -> HashMap<&'static str, Resources> {
    fn of<M: prost::Name>(
        items: Vec<M>,
        name: impl Fn(&M) -> String,
        versions: &VersionSource,
    ) -> Resources {
        items
            .into_iter()
            .map(|m| {
                let n = name(&m);
                let mut named = NamedResource::of_message(n.as_str(), "", &m);
                named.version = versions.of_content(&named.encoded).into();
                (n, named)
            })
            .collect()
    }
    HashMap::from([
        (CLUSTER, of(r.clusters, |c| c.name.clone(), versions)),
        (
            ENDPOINT,
            of(r.endpoints, |e| e.cluster_name.clone(), versions),
        ),
        (LISTENER, of(r.listeners, |l| l.name.clone(), versions)),
        (ROUTE, of(r.routes, |rc| rc.name.clone(), versions)),
    ])
}

/// The ADS service's state (cheap to clone: every stream task holds one).
#[derive(Clone)]
pub struct Ads {
    pub service: Arc<CaService>,
    pub config: watch::Receiver<Arc<Prepared>>,
    pub versions: Arc<VersionSource>,
    pub metrics: Arc<Metrics>,
    /// The latest publications of each proxy class, which the next ones follow.
    pub latest: Arc<std::sync::Mutex<HashMap<ProxyClass, Arc<Typed>>>>,
    /// Rounds of responses being handed to streams at once (Istio's push throttle): bounds the
    /// memory of encoding a full push to every proxy at the same moment.
    pub pushes: Arc<tokio::sync::Semaphore>,
}

/// Concurrent push rounds, as istiod's `PILOT_PUSH_THROTTLE` default.
pub const PUSH_THROTTLE: usize = 100;

impl std::fmt::Debug for Ads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ads").finish_non_exhaustive()
    }
}

impl Ads {
    /// The proxy a stream's first request names, if its SVID may receive that configuration.
    fn admit<T>(
        &self,
        req: &Request<T>,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Result<Proxy, Status> {
        let node = node.ok_or_else(|| {
            Status::invalid_argument("the first request on an ADS stream must carry the node")
        })?;
        let proxy = Proxy::from_node(node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ctx = crate::grpc::context(req, "StreamAggregatedResources");
        self.service
            .authorize_proxy(&ctx, &proxy.namespace, &proxy.service_account)?;
        Ok(proxy)
    }

    /// The resources of `proxy`'s class, translated by the first stream of the class to ask.
    async fn translate(&self, proxy: &Proxy, prepared: &Prepared) -> Arc<Typed> {
        let class = class_of(&prepared.snapshot.config, &prepared.registry, proxy);
        let cell = prepared
            .classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(class.clone())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let started = std::time::Instant::now();
            let resources = generate_with(&prepared.snapshot.config, &prepared.registry, proxy);
            let encoded = encode(resources, &self.versions);
            let typed = self.publish(class, encoded);
            tracing::debug!(
                revision = prepared.snapshot.revision,
                proxy = %proxy.id,
                translate_ms = started.elapsed().as_secs_f64() * 1e3,
                "proxy class translated"
            );
            typed
        })
        .await
        .clone()
    }

    /// Publishes a class's new resources as successors of its latest ones.
    fn publish(&self, class: ProxyClass, encoded: HashMap<&'static str, Resources>) -> Arc<Typed> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let previous = latest.get(&class);
        let typed: Typed = encoded
            .into_iter()
            .map(|(t, r)| {
                let next = match previous.and_then(|p| p.get(t)) {
                    Some(prev) => Publication::successor(prev, r),
                    None => Arc::new(Publication::new(r)),
                };
                (t, next)
            })
            .collect();
        let typed = Arc::new(typed);
        latest.insert(class, typed.clone());
        typed
    }

    fn note_nack(&self, proxy: &Proxy, type_url: &str, message: &str) {
        tracing::warn!(proxy = %proxy.id, type_url, error = message, "proxy rejected configuration (NACK)");
        self.metrics
            .xds_rejects
            .get_or_create(&TypeLabels {
                type_url: type_url.to_string(),
            })
            .inc();
    }
}

/// Counts an open ADS stream while it lives.
struct StreamCount(prometheus_client::metrics::gauge::Gauge);

impl StreamCount {
    fn new(metrics: &Metrics) -> Self {
        metrics.xds_streams.inc();
        Self(metrics.xds_streams.clone())
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What wakes a stream: a request, or a new configuration.
enum Wake<T> {
    Request(T),
    Config,
}

/// The next wake-up; `None` when the client is gone.
async fn next<T>(
    inbound: &mut Streaming<T>,
    config: &mut watch::Receiver<Arc<Prepared>>,
    closed: &mpsc::Sender<impl Send>,
) -> Option<Wake<T>> {
    tokio::select! {
        msg = inbound.message() => msg.ok().flatten().map(Wake::Request),
        changed = config.changed() => changed.ok().map(|()| Wake::Config),
        () = closed.closed() => None,
    }
}

/// The two flavours of ADS stream, as the serving loop drives them.
trait Flavour: Default + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    fn handle(&mut self, req: &Self::Request) -> Result<(), sds::ProtocolError>;
    /// The type and message of a NACK.
    fn nack(req: &Self::Request) -> Option<(&str, &str)>;
    fn node(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    fn due(&mut self, current: &Typed, versions: &VersionSource) -> Vec<Self::Response>;
}

impl Flavour for AdsStream {
    type Request = DiscoveryRequest;
    type Response = WireDiscoveryResponse;
    fn handle(&mut self, req: &DiscoveryRequest) -> Result<(), sds::ProtocolError> {
        self.handle_request(req).map(drop)
    }
    fn nack(req: &DiscoveryRequest) -> Option<(&str, &str)> {
        req.error_detail
            .as_ref()
            .map(|e| (req.type_url.as_str(), e.message.as_str()))
    }
    fn node(req: &DiscoveryRequest) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }
    fn due(&mut self, current: &Typed, versions: &VersionSource) -> Vec<WireDiscoveryResponse> {
        self.next_responses(|t| current.get(t), versions)
    }
}

impl Flavour for DeltaAdsStream {
    type Request = DeltaDiscoveryRequest;
    type Response = WireDeltaDiscoveryResponse;
    fn handle(&mut self, req: &DeltaDiscoveryRequest) -> Result<(), sds::ProtocolError> {
        self.handle_request(req).map(drop)
    }
    fn nack(req: &DeltaDiscoveryRequest) -> Option<(&str, &str)> {
        req.error_detail
            .as_ref()
            .map(|e| (req.type_url.as_str(), e.message.as_str()))
    }
    fn node(
        req: &DeltaDiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }
    fn due(
        &mut self,
        current: &Typed,
        versions: &VersionSource,
    ) -> Vec<WireDeltaDiscoveryResponse> {
        self.next_responses(|t| current.get(t), versions)
    }
}

impl Ads {
    /// Admits the stream on its first request, then serves it from a task.
    async fn open<F: Flavour>(
        &self,
        request: Request<Streaming<F::Request>>,
    ) -> Result<Response<ResponseStream<F::Response>>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let identity = Request::from_parts(metadata, extensions, ());
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream ended before its first request"))?;
        let proxy = self.admit(&identity, F::node(&first))?;
        // One response queued at a time: a slow proxy holds back its own stream, not memory.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(self.clone().serve::<F>(proxy, first, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn serve<F: Flavour>(
        self,
        proxy: Proxy,
        first: F::Request,
        mut inbound: Streaming<F::Request>,
        tx: mpsc::Sender<Result<F::Response, Status>>,
    ) {
        let _open = StreamCount::new(&self.metrics);
        let mut config = self.config.clone();
        let mut stream = F::default();
        let prepared = config.borrow_and_update().clone();
        let mut current = self.translate(&proxy, &prepared).await;
        let mut pending = vec![first];
        loop {
            // Requests that arrived together are applied together, so their answers go out in
            // push order as one round.
            while let Some(Ok(Some(req))) = futures::FutureExt::now_or_never(inbound.message()) {
                pending.push(req);
            }
            for req in pending.drain(..) {
                if let Err(e) = stream.handle(&req) {
                    let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                    return;
                }
                if let Some((type_url, message)) = F::nack(&req) {
                    self.note_nack(&proxy, type_url, message);
                }
            }
            let due = stream.due(&current, &self.versions);
            if !due.is_empty() {
                let Ok(_permit) = self.pushes.acquire().await else {
                    return;
                };
                for resp in due {
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
            match next(&mut inbound, &mut config, &tx).await {
                None => return,
                Some(Wake::Request(req)) => pending.push(req),
                Some(Wake::Config) => {
                    let prepared = config.borrow_and_update().clone();
                    current = self.translate(&proxy, &prepared).await;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AdsHandler for Ads {
    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<WireDiscoveryResponse>>, Status> {
        self.open::<AdsStream>(request).await
    }

    async fn delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<WireDeltaDiscoveryResponse>>, Status> {
        self.open::<DeltaAdsStream>(request).await
    }
}
