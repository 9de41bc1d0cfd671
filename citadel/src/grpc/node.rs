//! `citadel.ca.v1.NodeCa`: attestation, renewal, workload SVIDs, bundle and entry watches.
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use citadel_api::ca::node_ca_server::NodeCa;
use citadel_api::ca::{
    self, AttestNodeRequest, CsrRequest, EntryList, JwtSvidRequest, JwtSvidResponse, SvidResponse,
    TrustBundleRequest, WatchEntriesRequest,
};
use futures::Stream;
use pki::TrustBundle;
use pki::identity::node_name;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tonic::{Request, Response, Status};

use super::{bundle_message, context, ttl_from, update_message};
use crate::error::CaError;
use crate::metrics::StreamGuard;
use crate::registry::NodeUpdate;
use crate::service::{CaService, Caller, Issued};

/// A bundle and its encoded wire form.
type CachedBundle = (Arc<TrustBundle>, ca::TrustBundle);

/// The NodeCa gRPC service.
#[derive(Debug, Clone)]
pub struct NodeApi {
    service: CaService,
    /// The wire form of the current bundle: encoding JWKS per response would cost more than
    /// the signature itself.
    bundle_cache: Arc<Mutex<Option<CachedBundle>>>,
    /// Flips to true when the server stops: long-lived watch streams end so that graceful
    /// shutdown does not wait on them forever.
    stopping: tokio::sync::watch::Receiver<bool>,
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl NodeApi {
    pub fn new(service: CaService, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            service,
            bundle_cache: Arc::default(),
            stopping,
        }
    }

    fn bundle(&self, bundle: &Arc<TrustBundle>) -> ca::TrustBundle {
        let mut cache = self.bundle_cache.lock().expect("bundle cache poisoned");
        match cache.as_ref() {
            Some((b, msg)) if Arc::ptr_eq(b, bundle) => msg.clone(),
            _ => {
                let msg = bundle_message(bundle);
                *cache = Some((bundle.clone(), msg.clone()));
                msg
            }
        }
    }

    fn svid_response(&self, issued: Issued) -> Response<SvidResponse> {
        let expires = issued
            .svid
            .not_after()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Response::new(SvidResponse {
            spiffe_id: issued.svid.spiffe_id().to_string(),
            cert_chain: issued.svid.chain().iter().map(|c| c.to_vec()).collect(),
            bundle: Some(self.bundle(&issued.bundle)),
            expires_at_unix: expires.as_secs() as i64,
        })
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeCa for NodeApi {
    async fn attest_node(
        &self,
        req: Request<AttestNodeRequest>,
    ) -> Result<Response<SvidResponse>, Status> {
        let ctx = context(&req, "AttestNode");
        let body = req.into_inner();
        Ok(self.svid_response(
            self.service
                .attest_node(&ctx, &body.csr, &body.join_token)?,
        ))
    }

    async fn renew_svid(&self, req: Request<CsrRequest>) -> Result<Response<SvidResponse>, Status> {
        let ctx = context(&req, "RenewSvid");
        let body = req.into_inner();
        Ok(self.svid_response(
            self.service
                .renew(&ctx, &body.csr, ttl_from(body.ttl_seconds)?)?,
        ))
    }

    async fn mint_x509_svid(
        &self,
        req: Request<CsrRequest>,
    ) -> Result<Response<SvidResponse>, Status> {
        let ctx = context(&req, "MintX509Svid");
        let body = req.into_inner();
        Ok(self.svid_response(self.service.mint_workload(
            &ctx,
            &body.csr,
            ttl_from(body.ttl_seconds)?,
        )?))
    }

    async fn get_trust_bundle(
        &self,
        _req: Request<TrustBundleRequest>,
    ) -> Result<Response<ca::TrustBundle>, Status> {
        Ok(Response::new(self.bundle(&self.service.authority.bundle())))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<JwtSvidRequest>,
    ) -> Result<Response<JwtSvidResponse>, Status> {
        let ctx = context(&req, "MintJwtSvid");
        let body = req.into_inner();
        let jwt = self.service.mint_jwt(
            &ctx,
            &body.spiffe_id,
            &body.audience,
            ttl_from(body.ttl_seconds)?,
        )?;
        let expires_at_unix = jwt
            .expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        Ok(Response::new(JwtSvidResponse {
            token: jwt.token,
            expires_at_unix,
        }))
    }

    type WatchTrustBundleStream = BoxStream<ca::TrustBundle>;

    async fn watch_trust_bundle(
        &self,
        req: Request<TrustBundleRequest>,
    ) -> Result<Response<Self::WatchTrustBundleStream>, Status> {
        let ctx = context(&req, "WatchTrustBundle");
        // The bundle is public, but a node that presents its SVID must not be evicted, and its
        // stream ends when it is. Subscribed before authorizing, so no eviction falls between.
        let td = self.service.authority.trust_domain();
        let evicted = match &ctx.caller {
            Caller::Svid(peer) if let Some(node) = node_name(&peer.id, td) => {
                let rx = self.service.registry.subscribe_node(node);
                let epoch = rx.borrow().evictions;
                self.service.watch_node(&ctx)?;
                Some((rx, epoch))
            }
            _ => None,
        };
        let guard = StreamGuard::new(&self.service.metrics, "bundle");
        let stream = WatchStream::new(self.service.authority.subscribe_bundle()).map(move |b| {
            let _ = &guard;
            Ok(bundle_message(&b))
        });
        let stream = futures::StreamExt::take_until(stream, stopped(self.stopping.clone()));
        let stream = futures::StreamExt::take_until(stream, async move {
            match evicted {
                Some((mut rx, epoch)) => {
                    let _ = rx.wait_for(|s| s.evictions > epoch).await;
                }
                None => std::future::pending().await,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchEntriesStream = BoxStream<EntryList>;

    async fn watch_entries(
        &self,
        req: Request<WatchEntriesRequest>,
    ) -> Result<Response<Self::WatchEntriesStream>, Status> {
        let ctx = context(&req, "WatchEntries");
        let (since, history) = {
            let body = req.get_ref();
            (body.since_revision, body.history_id.clone())
        };
        let registry = self.service.registry.clone();
        // Subscribe before authorizing and before the first read, so neither an eviction nor
        // a change falls in between.
        let td = self.service.authority.trust_domain();
        let mut signal = match &ctx.caller {
            Caller::Svid(peer) if let Some(node) = node_name(&peer.id, td) => {
                Some(registry.subscribe_node(node))
            }
            _ => None,
        };
        let node = self.service.watch_node(&ctx)?;
        let mut signal = signal.take().expect("a node caller was subscribed");
        let epoch = signal.borrow_and_update().evictions;
        let first = registry
            .node_update(&node, since, &history)
            .map_err(CaError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut stopping = self.stopping.clone();
        let guard = StreamGuard::new(&self.service.metrics, "entries");
        tokio::spawn(async move {
            let _guard = guard;
            let mut held = revision(&first);
            if tx
                .send(Ok(update_message(&first, registry.history_id())))
                .await
                .is_err()
            {
                return;
            }
            loop {
                tokio::select! {
                    changed = signal.changed() => if changed.is_err() { return },
                    // The client went away: end now, not at the next change.
                    () = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
                if signal.borrow_and_update().evictions > epoch {
                    let status = Status::permission_denied(format!(
                        "node {node} is evicted; it needs a new join token"
                    ));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let update = match registry.node_update(&node, held, registry.history_id()) {
                    Ok(update) => update,
                    Err(e) => {
                        let _ = tx.send(Err(CaError::from(e).into())).await;
                        return;
                    }
                };
                let empty =
                    matches!(&update, NodeUpdate::Changes { changes, .. } if changes.is_empty());
                held = revision(&update);
                if !empty
                    && tx
                        .send(Ok(update_message(&update, registry.history_id())))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn revision(update: &NodeUpdate) -> u64 {
    match update {
        NodeUpdate::Full { revision, .. } | NodeUpdate::Changes { revision, .. } => *revision,
    }
}
