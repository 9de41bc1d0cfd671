//! Envoy SDS v3 (`SecretDiscoveryService`) on the agent socket: state-of-the-world, delta and
//! fetch, driven by the `sds` protocol engine and pushed on every rotation or bundle change.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use futures::Stream;
use prost::Name;
use sds::{DeltaStream, Publication, Resources, SotwStream, Step, VersionSource};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::attest::{Attestor, Workload};
use crate::manager::Manager;
use crate::metrics::{Metrics, StreamGuard};
use crate::peer::{attest_caller, describe, still_same};
use crate::secrets::{SecretView, Visible, Wanted};
use crate::state::SlotWatch;

/// The SDS service.
#[derive(Debug, Clone)]
pub struct SdsServer {
    pub manager: Arc<Manager>,
    pub attestor: Attestor,
    pub versions: Arc<VersionSource>,
    pub metrics: Arc<Metrics>,
    /// Flips to true when the agent stops, ending every stream so shutdown does not hang.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Whether this Envoy wants the SPIFFE validator (the default) rather than `trusted_ca`.
fn spiffe_validation(node: &Node) -> bool {
    sds::names::wants_spiffe_validator(node)
}

/// A stream's view as a publication of its own: each view is compared in full, and the stream
/// keeps it as the base of what its client holds.
fn published(view: Resources) -> Arc<Publication> {
    Arc::new(Publication::new(view))
}

fn secret_type() -> String {
    Secret::type_url()
}

fn no_identity(w: &Workload) -> Status {
    Status::permission_denied(format!(
        "no identity issued to this workload ({})",
        describe(w)
    ))
}

/// What wakes a stream: a client request or a new agent state.
enum Event<T> {
    Request(T),
    StateChanged,
}

/// The client's half of a stream. A half-close ends requests, not the subscription: gRPC lets the
/// server keep pushing, so a client that sends one request and closes still gets its answer.
struct Inbound<T> {
    stream: Streaming<T>,
    half_closed: bool,
}

impl<T> Inbound<T> {
    fn new(stream: Streaming<T>) -> Self {
        Self {
            stream,
            half_closed: false,
        }
    }
}

/// Waits for the next event; `None` when the client went away or the agent is stopping.
async fn next_event<T, R>(
    inbound: &mut Inbound<T>,
    tx: &mpsc::Sender<R>,
    state: &mut tokio::sync::watch::Receiver<Arc<crate::state::AgentState>>,
    slots: &mut SlotWatch,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Event<T>> {
    loop {
        tokio::select! {
            msg = inbound.stream.message(), if !inbound.half_closed => match msg {
                Ok(Some(req)) => return Some(Event::Request(req)),
                Ok(None) => inbound.half_closed = true,
                Err(_) => return None,
            },
            () = tx.closed() => return None,
            changed = state.changed() => return changed.ok().map(|()| Event::StateChanged),
            () = slots.changed() => return Some(Event::StateChanged),
            _ = stopping.wait_for(|s| *s) => return None,
        }
    }
}

impl SdsServer {
    async fn run_sotw(
        self,
        workload: Workload,
        inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let _guard = StreamGuard::new(&self.metrics.sds_streams);
        let mut state_rx = self.manager.subscribe();
        let mut stopping = self.stopping.clone();
        let mut stream = SotwStream::new();
        let mut view = SecretView::new(workload.selectors.clone());
        let mut slots = SlotWatch::default();
        let mut inbound = Inbound::new(inbound);
        loop {
            let Some(event) =
                next_event(&mut inbound, &tx, &mut state_rx, &mut slots, &mut stopping).await
            else {
                return;
            };
            if let Err(status) = still_same(&self.attestor, &workload) {
                let _ = tx.send(Err(status)).await;
                return;
            }
            if let Event::Request(req) = event {
                if let Some(node) = &req.node {
                    view.set_spiffe_validation(spiffe_validation(node));
                }
                if !req.type_url.is_empty() && req.type_url != secret_type() {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "unsupported type {}",
                            req.type_url
                        ))))
                        .await;
                    return;
                }
                match stream.handle_request(&req) {
                    Ok(Step::Respond) => {}
                    Ok(Step::Wait) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                        return;
                    }
                }
            }
            if stream.type_url().is_none() {
                continue;
            }
            let state = state_rx.borrow_and_update().clone();
            // Secrets have no wildcard: a stream gets the names it asks for.
            let wanted = Wanted::Names(stream.subscription().names());
            match view.secrets(&state, &self.versions, wanted, &mut slots) {
                Visible::Pending => continue,
                Visible::NoIdentity => {
                    let _ = tx.send(Err(no_identity(&workload))).await;
                    return;
                }
                Visible::Ready { resources, unknown } => {
                    if !unknown.is_empty() {
                        let _ = tx
                            .send(Err(Status::invalid_argument(format!(
                                "unknown or unauthorized secret names: {unknown:?}"
                            ))))
                            .await;
                        return;
                    }
                    if let Some(resp) =
                        stream.next_response(&published(resources), None, &self.versions)
                        && tx.send(Ok(resp.into())).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    async fn run_delta(
        self,
        workload: Workload,
        inbound: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let _guard = StreamGuard::new(&self.metrics.sds_streams);
        let mut state_rx = self.manager.subscribe();
        let mut stopping = self.stopping.clone();
        let mut stream = DeltaStream::new();
        let mut view = SecretView::new(workload.selectors.clone());
        let mut slots = SlotWatch::default();
        let mut inbound = Inbound::new(inbound);
        loop {
            let Some(event) =
                next_event(&mut inbound, &tx, &mut state_rx, &mut slots, &mut stopping).await
            else {
                return;
            };
            if let Err(status) = still_same(&self.attestor, &workload) {
                let _ = tx.send(Err(status)).await;
                return;
            }
            if let Event::Request(req) = event {
                if let Some(node) = &req.node {
                    view.set_spiffe_validation(spiffe_validation(node));
                }
                match stream.handle_request(&req) {
                    Ok(Step::Respond) => {}
                    Ok(Step::Wait) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                        return;
                    }
                }
            }
            if stream.type_url().is_none() {
                continue;
            }
            let state = state_rx.borrow_and_update().clone();
            let wanted = Wanted::Names(stream.subscribed());
            match view.secrets(&state, &self.versions, wanted, &mut slots) {
                Visible::Pending => continue,
                Visible::NoIdentity => {
                    let _ = tx.send(Err(no_identity(&workload))).await;
                    return;
                }
                // Unknown names need no error here: delta reports them in removed_resources.
                Visible::Ready { resources, .. } => {
                    if let Some(resp) =
                        stream.next_response(&published(resources), None, &self.versions)
                        && tx.send(Ok(resp.into())).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Waits (bounded) until the workload's secrets are known.
    async fn ready_secrets(&self, workload: &Workload, spiffe: bool) -> Result<Resources, Status> {
        let mut rx = self.manager.subscribe();
        let mut view = SecretView::new(workload.selectors.clone());
        let mut slots = SlotWatch::default();
        view.set_spiffe_validation(spiffe);
        let wait = async {
            loop {
                let state = rx.borrow_and_update().clone();
                match view.secrets(&state, &self.versions, Wanted::All, &mut slots) {
                    Visible::Ready { resources, .. } => return Ok(resources),
                    Visible::NoIdentity => return Err(no_identity(workload)),
                    Visible::Pending => tokio::select! {
                        changed = rx.changed() => if changed.is_err() {
                            return Err(Status::unavailable("agent is shutting down"));
                        },
                        () = slots.changed() => {}
                    },
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .map_err(|_| Status::unavailable("identities are not issued yet; retry"))?
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let workload = attest_caller(&self.attestor, &req)?;
        tracing::debug!(workload = %describe(&workload), "SDS stream opened");
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().run_sotw(workload, req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_secrets(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let workload = attest_caller(&self.attestor, &req)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().run_delta(workload, req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let workload = attest_caller(&self.attestor, &req)?;
        let body = req.into_inner();
        let spiffe = body.node.as_ref().is_none_or(spiffe_validation);
        let resources = self.ready_secrets(&workload, spiffe).await?;
        // Secrets have no wildcard, in a fetch as on a stream.
        if body.resource_names.is_empty() {
            return Err(Status::invalid_argument(
                "name the secrets to fetch (secrets have no wildcard)",
            ));
        }
        let names = body.resource_names.clone();
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !resources.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(Status::invalid_argument(format!(
                "unknown or unauthorized secret names: {missing:?}"
            )));
        }
        Ok(Response::new(DiscoveryResponse {
            version_info: self.versions.next(),
            resources: names.iter().map(|n| resources[n].any()).collect(),
            type_url: secret_type(),
            nonce: self.versions.next(),
            ..Default::default()
        }))
    }
}
