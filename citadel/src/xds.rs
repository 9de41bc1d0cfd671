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
use sds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use sds::wire::{WireDeltaDiscoveryResponse, WireDiscoveryResponse};
use sds::{AdsStream, DeltaAdsStream, NamedResource, Publication, Resources, VersionSource};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config_store::Snapshot;
use crate::discovery::proxy::Proxy;
use crate::discovery::services::Registry;
use crate::discovery::{ProxyClass, ProxyResources, class_of, generate_for_hosts, generate_with};
use crate::metrics::{Metrics, TypeLabels};
use crate::service::CaService;

/// A configuration ready to translate: the snapshot, its service registry (built once), and the
/// resources of each proxy class, translated and encoded once and shared by its streams.
/// No derived `Debug`: its publications hold gateway and origination private keys.
#[derive(Default)]
pub struct Prepared {
    pub snapshot: Arc<Snapshot>,
    pub registry: Registry,
    classes: std::sync::Mutex<HashMap<ProxyClass, Arc<tokio::sync::OnceCell<Arc<Typed>>>>>,
    /// When only endpoints changed since the configuration before: the hosts whose endpoints
    /// did, and that configuration, whose classes this one's then derive from (istiod's
    /// incremental EDS). The one before is dropped once its successor is prepared.
    endpoint_change: Option<EndpointChange>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes = self.classes.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Prepared")
            .field("revision", &self.snapshot.revision)
            .field("classes", &classes)
            .finish_non_exhaustive()
    }
}

/// Hosts whose endpoints alone changed, and the configuration they changed from.
#[derive(Debug)]
struct EndpointChange {
    hosts: Vec<String>,
    before: std::sync::Mutex<Option<Arc<Prepared>>>,
}

impl Prepared {
    fn new(snapshot: Arc<Snapshot>, previous: Option<Arc<Prepared>>) -> Self {
        let registry = Registry::build(&snapshot.config);
        let endpoint_change = previous.and_then(|p| {
            // Only one configuration back is ever needed.
            if let Some(change) = &p.endpoint_change {
                change
                    .before
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
            }
            let hosts = crate::discovery::endpoint_only_change(
                (&p.snapshot.config, &p.registry),
                (&snapshot.config, &registry),
            )?;
            Some(EndpointChange {
                hosts,
                before: std::sync::Mutex::new(Some(p)),
            })
        });
        Self {
            registry,
            snapshot,
            classes: Default::default(),
            endpoint_change,
        }
    }

    /// This configuration's hosts with new endpoints, the one before, and `class`'s resources
    /// there, when `class` can be derived from them.
    fn derivable(&self, class: &ProxyClass) -> Option<(&[String], Arc<Prepared>, Arc<Typed>)> {
        let change = self.endpoint_change.as_ref()?;
        let before = change
            .before
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let typed = before
            .classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(class)?
            .get()?
            .clone();
        Some((&change.hosts, before, typed))
    }
}

/// Keeps a [`Prepared`] for every snapshot the store publishes.
pub fn prepare(mut store: watch::Receiver<Arc<Snapshot>>) -> watch::Receiver<Arc<Prepared>> {
    let first = store.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(Prepared::new(first, None)));
    tokio::spawn(async move {
        while store.changed().await.is_ok() {
            let snapshot = store.borrow_and_update().clone();
            let started = std::time::Instant::now();
            let previous = tx.borrow().clone();
            let prepared = Arc::new(Prepared::new(snapshot, Some(previous)));
            tracing::debug!(
                revision = prepared.snapshot.revision,
                registry_ms = started.elapsed().as_secs_f64() * 1e3,
                endpoint_only = prepared.endpoint_change.is_some(),
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
        (SECRET, of(r.secrets, |s| s.name.clone(), versions)),
    ])
}

/// A class's resources after an endpoint-only change: `base` (what it had before) with the
/// clusters and endpoints of the changed hosts as they were (`old`) replaced by what they are
/// now (`new`). Listeners and routes stay as they were.
fn derive(
    base: &Typed,
    old: &ProxyResources,
    new: ProxyResources,
    versions: &VersionSource,
) -> HashMap<&'static str, Resources> {
    let gone: HashMap<&str, Vec<&str>> = HashMap::from([
        (
            CLUSTER,
            old.clusters.iter().map(|c| c.name.as_str()).collect(),
        ),
        (
            ENDPOINT,
            old.endpoints
                .iter()
                .map(|e| e.cluster_name.as_str())
                .collect(),
        ),
    ]);
    let mut new = encode(new, versions);
    base.iter()
        .map(|(&t, publication)| {
            let mut resources = publication.resources.clone();
            for name in gone.get(t).into_iter().flatten() {
                resources.remove(*name);
            }
            resources.extend(new.remove(t).unwrap_or_default());
            (t, resources)
        })
        .collect()
}

/// The ADS service's state (cheap to clone: every stream task holds one).
#[derive(Clone)]
pub struct Ads {
    pub service: Arc<CaService>,
    pub config: watch::Receiver<Arc<Prepared>>,
    pub versions: Arc<VersionSource>,
    pub metrics: Arc<Metrics>,
    /// The latest publications of each proxy class, which the next ones follow, and the
    /// revision they were translated for.
    pub latest: Arc<std::sync::Mutex<Latest>>,
    /// Rounds of responses being handed to streams at once (Istio's push throttle): bounds the
    /// memory of encoding a full push to every proxy at the same moment.
    pub pushes: Arc<tokio::sync::Semaphore>,
}

/// Each proxy class's latest publications and the revision they were translated for.
pub type Latest = HashMap<ProxyClass, (u64, Arc<Typed>)>;

/// Revisions a class's latest publications are kept without a stream translating it.
const LATEST_KEPT: u64 = 3;

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
            let (encoded, endpoint_only) = match prepared.derivable(&class) {
                Some((hosts, before, base)) => {
                    let old =
                        generate_for_hosts(&before.snapshot.config, &before.registry, proxy, hosts);
                    let new = generate_for_hosts(
                        &prepared.snapshot.config,
                        &prepared.registry,
                        proxy,
                        hosts,
                    );
                    (derive(&base, &old, new, &self.versions), true)
                }
                None => {
                    let resources =
                        generate_with(&prepared.snapshot.config, &prepared.registry, proxy);
                    (encode(resources, &self.versions), false)
                }
            };
            let typed = self.publish(class, encoded, prepared.snapshot.revision);
            tracing::debug!(
                revision = prepared.snapshot.revision,
                proxy = %proxy.id,
                endpoint_only,
                translate_ms = started.elapsed().as_secs_f64() * 1e3,
                "proxy class translated"
            );
            typed
        })
        .await
        .clone()
    }

    /// Publishes a class's new resources as successors of its latest ones, and forgets the
    /// classes no stream translated for the last few revisions (their proxies are gone, or
    /// their configuration is; a stream of one that comes back compares in full).
    fn publish(
        &self,
        class: ProxyClass,
        encoded: HashMap<&'static str, Resources>,
        revision: u64,
    ) -> Arc<Typed> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.retain(|_, (at, _)| *at + LATEST_KEPT >= revision);
        let previous = latest.get(&class).map(|(_, typed)| typed);
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
        latest.insert(class, (revision, typed.clone()));
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
            if !due.is_empty() && send_round(&self.pushes, &tx, due).await.is_err() {
                return;
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

/// How long a round may hold its push permit: then it waits for its proxy without one, so
/// proxies that stopped reading hold back only themselves.
pub const PERMIT_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands one round of responses to a stream under a push permit; `Err` when the client is gone.
async fn send_round<R>(
    pushes: &tokio::sync::Semaphore,
    tx: &mpsc::Sender<Result<R, Status>>,
    responses: Vec<R>,
) -> Result<(), ()> {
    let mut permit = Some(pushes.acquire().await.map_err(drop)?);
    let deadline = tokio::time::Instant::now() + PERMIT_HOLD;
    for resp in responses {
        let slot = match permit {
            Some(_) => match tokio::time::timeout_at(deadline, tx.reserve()).await {
                Ok(slot) => slot,
                Err(_) => {
                    permit = None;
                    tx.reserve().await
                }
            },
            None => tx.reserve().await,
        };
        slot.map_err(drop)?.send(Ok(resp));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::discovery::proxy::{Interception, ProxyType};
    use crate::discovery::{endpoint_only_change, generate};

    /// One endpoint: its address's last octet, version label and service account.
    type Ep = (u8, bool, bool);

    fn endpoint_yaml(indent: &str, (ip, v2, sa): Ep) -> String {
        format!(
            "{indent}- address: 198.18.0.{ip}\n{indent}  labels: {{version: {}}}\n{indent}  serviceAccount: {}\n",
            if v2 { "v2" } else { "v1" },
            if sa { "a" } else { "b" },
        )
    }

    /// A mesh of three services: STATIC with inline endpoints, STATIC selecting
    /// WorkloadEntries, and DNS; subsets and ISTIO_MUTUAL on the first two.
    fn mesh(inline: &[Ep], selected: &[Ep], dns: &[Ep]) -> mesh::Config {
        let mut y = String::new();
        for (host, resolution, eps, selector) in [
            ("inline", "STATIC", inline, false),
            ("selected", "STATIC", selected, true),
            ("dns", "DNS", dns, false),
        ] {
            y += &format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {host}, namespace: default}}\nspec:\n  hosts: [{host}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: {resolution}\n  ports:\n  - {{number: 8080, name: http, protocol: HTTP}}\n  - {{number: 9000, name: tcp, protocol: TCP}}\n"
            );
            if selector {
                y += "  workloadSelector: {labels: {app: selected}}\n";
                for (i, ep) in eps.iter().enumerate() {
                    let (ip, v2, sa) = *ep;
                    y += &format!(
                        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: we-{i}, namespace: default}}\nspec:\n  address: 198.18.1.{ip}\n  labels: {{app: selected, version: {}}}\n  serviceAccount: {}\n",
                        if v2 { "v2" } else { "v1" },
                        if sa { "a" } else { "b" },
                    );
                }
            } else if !eps.is_empty() {
                y += "  endpoints:\n";
                for ep in eps {
                    y += &endpoint_yaml("  ", *ep);
                }
            }
            y += "---\n";
        }
        for host in ["inline", "selected"] {
            y += &format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {host}, namespace: default}}\nspec:\n  host: {host}\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
            );
        }
        let (objects, problems) = mesh::load_str(&y, None);
        assert!(problems.is_empty(), "{problems:?}");
        mesh::Config {
            objects: objects.into_iter().map(Arc::new).collect(),
            ..Default::default()
        }
    }

    fn proxy() -> Proxy {
        Proxy {
            kind: ProxyType::Sidecar,
            id: "sidecar~198.18.0.1~client.default~default.svc.cluster.local".into(),
            namespace: "default".into(),
            service_account: "client".into(),
            labels: Default::default(),
            ips: vec!["198.18.0.1".parse().unwrap()],
            workload_name: "client".into(),
            interception: Interception::Redirect,
        }
    }

    fn typed(resources: HashMap<&'static str, Resources>) -> Typed {
        resources
            .into_iter()
            .map(|(t, r)| (t, Arc::new(Publication::new(r))))
            .collect()
    }

    fn endpoints() -> impl Strategy<Value = Vec<Ep>> {
        prop::collection::vec((1u8..6, any::<bool>(), any::<bool>()), 0..4)
    }

    proptest! {
        /// The incremental path gives byte for byte what translating everything gives.
        #[test]
        fn an_endpoint_change_derives_what_a_full_translation_gives(
            before in (endpoints(), endpoints(), endpoints()),
            after in (endpoints(), endpoints(), endpoints()),
        ) {
            let versions = VersionSource::new(b"test");
            let (a, b) = (mesh(&before.0, &before.1, &before.2), mesh(&after.0, &after.1, &after.2));
            let (ra, rb) = (Registry::build(&a), Registry::build(&b));
            let proxy = proxy();
            let hosts = endpoint_only_change((&a, &ra), (&b, &rb));
            let hosts = hosts.expect("only endpoints differ");
            // The proxy's own address may become an endpoint: a new class, translated in full.
            prop_assume!(class_of(&a, &ra, &proxy) == class_of(&b, &rb, &proxy));
            let base = typed(encode(generate(&a, &proxy), &versions));
            let derived = derive(
                &base,
                &generate_for_hosts(&a, &ra, &proxy, &hosts),
                generate_for_hosts(&b, &rb, &proxy, &hosts),
                &versions,
            );
            let full = encode(generate(&b, &proxy), &versions);
            prop_assert_eq!(derived, full);
        }
    }

    fn snapshot(revision: u64, config: mesh::Config) -> Arc<Snapshot> {
        Arc::new(Snapshot { revision, config })
    }

    /// The server takes the incremental path: a configuration after an endpoint change derives
    /// a class from the one before (once that one translated it), holds only one configuration
    /// back, and lets it go when the next change is not endpoint-only.
    #[test]
    fn a_configuration_after_an_endpoint_change_derives_from_the_one_before() {
        let proxy = proxy();
        let a = mesh(&[(2, false, false)], &[], &[]);
        let first = Arc::new(Prepared::new(snapshot(1, a), None));
        let class = class_of(&first.snapshot.config, &first.registry, &proxy);
        let cell = Arc::new(tokio::sync::OnceCell::new_with(Some(
            Arc::new(Typed::new()),
        )));
        first.classes.lock().unwrap().insert(class.clone(), cell);

        let second = Arc::new(Prepared::new(
            snapshot(2, mesh(&[(3, true, false)], &[], &[])),
            Some(first.clone()),
        ));
        let (hosts, before, _) = second.derivable(&class).expect("derived, not translated");
        assert_eq!(hosts, ["inline.default.svc.cluster.local"]);
        assert!(Arc::ptr_eq(&before, &first));
        drop(before);

        let mut other = mesh(&[(3, true, false)], &[], &[]);
        other.mesh.connect_timeout = mesh::GoDuration(std::time::Duration::from_secs(3));
        let third = Prepared::new(snapshot(3, other), Some(second.clone()));
        assert!(third.endpoint_change.is_none(), "the mesh settings changed");
        assert!(
            second.derivable(&class).is_none(),
            "released once it has a successor"
        );
        assert_eq!(
            Arc::strong_count(&first),
            1,
            "nothing holds the first any more"
        );
    }

    #[test]
    fn anything_but_endpoints_changing_is_a_full_translation() {
        let a = mesh(&[(1, false, false)], &[], &[]);
        let mut b = a.clone();
        let dr = b
            .objects
            .iter()
            .position(|o| o.kind() == mesh::Kind::DestinationRule)
            .unwrap();
        let mut edited = (*b.objects[dr]).clone();
        edited
            .metadata
            .labels
            .insert("touched".into(), "yes".into());
        b.objects[dr] = Arc::new(edited);
        let (ra, rb) = (Registry::build(&a), Registry::build(&b));
        assert_eq!(endpoint_only_change((&a, &ra), (&b, &rb)), None);
        let c = mesh(&[(2, false, false)], &[], &[]);
        let rc = Registry::build(&c);
        assert_eq!(
            endpoint_only_change((&a, &ra), (&c, &rc)),
            Some(vec!["inline.default.svc.cluster.local".to_string()])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_proxy_that_stops_reading_gives_its_push_permit_back() {
        let pushes = Arc::new(tokio::sync::Semaphore::new(1));
        let (stuck_tx, _stuck_rx) = mpsc::channel::<Result<u32, Status>>(1);
        let stuck = tokio::spawn({
            let pushes = pushes.clone();
            async move { send_round(&pushes, &stuck_tx, vec![1, 2, 3]).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            pushes.available_permits(),
            0,
            "the stuck round holds the permit"
        );
        tokio::time::sleep(PERMIT_HOLD + std::time::Duration::from_millis(1)).await;
        assert_eq!(pushes.available_permits(), 1, "and gives it back");
        let (tx, mut rx) = mpsc::channel(1);
        let round = tokio::spawn({
            let pushes = pushes.clone();
            async move { send_round(&pushes, &tx, vec![7, 8]).await }
        });
        assert_eq!(rx.recv().await.unwrap().unwrap(), 7);
        assert_eq!(rx.recv().await.unwrap().unwrap(), 8);
        assert_eq!(round.await.unwrap(), Ok(()));
        assert!(
            !stuck.is_finished(),
            "the stuck proxy still waits for itself"
        );
        stuck.abort();
    }
}
