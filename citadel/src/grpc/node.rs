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

use super::{bundle_message, context, entry_message, ttl_from};
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
        _req: Request<TrustBundleRequest>,
    ) -> Result<Response<Self::WatchTrustBundleStream>, Status> {
        let stream = WatchStream::new(self.service.authority.subscribe_bundle())
            .map(|b| Ok(bundle_message(&b)));
        let stream = futures::StreamExt::take_until(stream, stopped(self.stopping.clone()));
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchEntriesStream = BoxStream<EntryList>;

    async fn watch_entries(
        &self,
        req: Request<WatchEntriesRequest>,
    ) -> Result<Response<Self::WatchEntriesStream>, Status> {
        let ctx = context(&req, "WatchEntries");
        let node = match &ctx.caller {
            Caller::Svid { id, .. } => node_name(id, self.service.authority.trust_domain())
                .map(str::to_string)
                .ok_or_else(|| Status::permission_denied(format!("{id} is not a node identity")))?,
            Caller::Anonymous => {
                return Err(Status::unauthenticated(
                    "this call needs a node SVID (mTLS)",
                ));
            }
        };
        let registry = self.service.registry.clone();
        let mut changes = WatchStream::new(registry.subscribe());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::select! {
                    change = changes.next() => if change.is_none() { break },
                    _ = stopping.wait_for(|s| *s) => break,
                }
                let (entries, revision) = registry.entries(Some(&node));
                let list: Vec<_> = entries.iter().map(entry_message).collect();
                // Other nodes' changes bump the revision too; only send when ours changed.
                if last.as_ref() == Some(&list) {
                    continue;
                }
                if tx
                    .send(Ok(EntryList {
                        entries: list.clone(),
                        revision,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
                last = Some(list);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
